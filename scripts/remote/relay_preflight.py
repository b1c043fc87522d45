"""Relay preflight, run on the VM: an SMTP dialogue with the relay that sends no message.

    relay_preflight.py [--timeout SECONDS] HOST PORT starttls|tls|none HELO RCPT_TO DOMAIN=MAIL_FROM...

Presents Postal's identity — EHLO <hostname>, STARTTLS (certificate verified), EHLO again, then for
each sending domain MAIL FROM:<…@psrp.<domain>>, RCPT TO, RSET — and prints one line per domain,
`relay-domain: <domain> <status> <detail>`, then the summary `relay-status: <status> <detail>`.
Statuses: allowlisted, not-allowlisted, tls-failed, rate-limited, transient, rejected, unreachable.
It never sends DATA, so a relay that refuses only the message itself looks allowlisted here.
Exits 0 for any relay answer (not-allowlisted is the normal first run), 2 for bad arguments.
Python 3.9 (Rocky 9); the smoke test imports `diagnose` to read what Postal stored.
"""

import re
import smtplib
import socket
import ssl
import sys

USAGE = "usage: relay_preflight.py [--timeout SECONDS] HOST PORT starttls|tls|none HELO RCPT_TO DOMAIN=MAIL_FROM..."
TLS_MODES = ("starttls", "tls", "none")
# Worst first: the summary is the worst verdict of any domain.
STATUSES = ("not-allowlisted", "tls-failed", "rejected", "rate-limited", "unreachable", "transient", "allowlisted")
# (diagnosis, status, lower-case markers), first match wins. Google's texts: tests/data/relay_scenarios.yaml;
# the connection texts are what Postal 3.3.6 stores from Net::SMTP 0.4.0.1 and OpenSSL.
MARKERS = (
    ("tls-required", "tls-failed", ("tls required", "must issue a starttls")),
    (
        "not-allowlisted",
        "not-allowlisted",
        ("invalid credentials for relay", "mail relay denied"),
    ),
    # the recipient domain's inbound gateway allowlist, not the relay's (Sisimai's Rhost/Google.pm files it
    # under "blocked", Google's relay refusals under "norelaying"): support.google.com/a/answer/60752
    ("recipient-gateway", "rejected", ("ip not in whitelist for rcpt domain",)),
    ("sender-limit", "rate-limited", ("limit exceeded for user", "sending quota exceeded", "sending limit exceeded")),
    ("customer-limit", "rate-limited", ("daily smtp relay limit exceeded for customer",)),
    ("peak-limit", "rate-limited", ("peak smtp relay limit",)),
    ("unusual-rate", "rate-limited", ("unusual rate", "rate limited")),
    ("helo-rejected", "rejected", ("helo/ehlo argument", "helo command rejected")),
    ("wrong-relay", "rejected", ("not authorized to send email directly",)),
    (
        "unauthenticated",
        "rejected",
        ("sender is unauthenticated", "unauthenticated email", "dmarc policy", "5.7.26", "5.7.27"),
    ),
    (
        "tls-handshake",
        "tls-failed",
        (
            "ssl_connect",
            "certificate verify failed",
            "starttls is not supported",
            "wrong version number",
            "net::opentimeout",
            "tls handshake",
            "does not offer starttls",
            "tls not available",
        ),
    ),
    (
        "unreachable",
        "unreachable",
        (
            "execution expired",
            "connection refused",
            "network is unreachable",
            "no route to host",
            "no hosts to try",
            "net::readtimeout",
            "timed out",
            "name or service not known",
            "getaddrinfo",
            "cannot connect",
        ),
    ),
    (
        "connection-dropped",
        "transient",
        ("connection reset by peer", "end of file reached", "broken pipe", "closed the connection", "unexpected eof"),
    ),
    ("recipient-unknown", "rejected", ("does not exist", "user unknown", "no such user")),
    ("too-large", "rejected", ("message size", "size limit", "message too large")),
)
# A reply code opening a line (with or without an enhanced code), or one followed by an enhanced code anywhere
REPLY_CODE = re.compile(r"(?m)^\s*([245]\d\d)(?=[ -]|$)|(?<![\d.])([245]\d\d)[ -]\d\.\d")
# What opens a continuation line: `550-5.7.1 ` as Postal keeps it, `5.7.1 ` as smtplib leaves it
CONTINUATION = re.compile(r"^\s*(?:[245]\d\d[ -])?(?:[245]\.\d{1,3}\.\d{1,3}\s+)?")


def unwrap(text):
    """One line from a multi-line reply: continuation lines lose their `550-5.7.1 ` prefix."""
    lines = str(text or "").splitlines() or [""]
    return fold(" ".join([lines[0]] + [CONTINUATION.sub("", line) for line in lines[1:]]))


def reply_code(text):
    match = REPLY_CODE.search(text)
    return int(match.group(1) or match.group(2)) if match else None


def diagnose(text, code=None):
    """(diagnosis, status) for a relay answer or a connection error, from its text (any case, any lines)."""
    lowered = unwrap(text).lower()
    for key, status, markers in MARKERS:
        if any(marker in lowered for marker in markers):
            return key, status
    code = code or reply_code(text)
    if code and 400 <= code < 500:
        return "transient", "transient"
    return "rejected", "rejected"


def fold(text):
    """One line: whitespace (newlines included) folded to single spaces; None is empty."""
    return " ".join(str(text if text is not None else "").split())


def _reply(code, message):
    text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
    return unwrap(f"{code} {text}")


class HandshakeFailed(Exception):
    """The TLS handshake of an implicit-TLS connection failed (the TCP connection itself worked)."""


class ImplicitTLS(smtplib.SMTP_SSL):
    """SMTP_SSL that tells a failed connection from a failed TLS handshake (a reset, a timeout, a bad certificate)."""

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout, self.source_address)
        try:
            return self.context.wrap_socket(sock, server_hostname=host)
        except (OSError, ssl.CertificateError) as err:
            sock.close()
            raise HandshakeFailed(err or type(err).__name__) from err


class Refused(Exception):
    """The dialogue ended with a verdict: status and detail."""

    def __init__(self, status, detail, code=None):
        super().__init__(detail)
        self.status, self.detail, self.closes = status, detail, code in (None, 421)


def _broke_off(err, when):
    """Refused for a dialogue that broke off: a timeout as unreachable (Postal records Net::ReadTimeout),
    a closed or reset connection as transient."""
    if isinstance(err, socket.timeout) or "timed out" in str(err):
        return Refused("unreachable", f"the relay stopped answering {when}: timed out")
    return Refused("transient", f"the relay closed the connection {when}: {err or type(err).__name__}")


def _answer(stage, code, message):
    """Raises Refused for a reply >= 400 at a stage; returns otherwise."""
    if code >= 400 or code < 0:
        text = _reply(code, message)
        raise Refused(diagnose(text, code)[1], f"{stage}: {text}", code)


def open_session(host, port, tls_mode, helo, timeout, context):
    """A connected, greeted (and encrypted) SMTP session, or Refused."""
    try:
        if tls_mode == "tls":
            smtp = ImplicitTLS(host, port, local_hostname=helo, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout)
    except smtplib.SMTPConnectError as err:
        _answer("greeting", err.smtp_code, err.smtp_error)
    except HandshakeFailed as err:
        raise Refused("tls-failed", f"TLS handshake with {host}:{port} failed: {err}") from err
    except (OSError, smtplib.SMTPException) as err:
        raise Refused("unreachable", f"cannot connect to {host}:{port}: {err or type(err).__name__}") from err
    try:
        _answer(f"EHLO {helo}", *smtp.ehlo())
        if tls_mode == "starttls":
            if not smtp.has_extn("starttls"):
                raise Refused("tls-failed", f"{host}:{port} does not offer STARTTLS")
            code, message = smtp.docmd("STARTTLS")
            if code != 220:  # part of the TLS negotiation, whatever the code says
                raise Refused("tls-failed", f"STARTTLS: {_reply(code, message)}", code)
            try:
                smtp.sock = context.wrap_socket(smtp.sock, server_hostname=host)
            except (OSError, ssl.CertificateError) as err:  # SSLError, a reset or a timeout mid-handshake
                raise Refused(
                    "tls-failed", f"TLS handshake after STARTTLS failed: {err or type(err).__name__}"
                ) from err
            smtp.file = None
            smtp.helo_resp = smtp.ehlo_resp = None
            smtp.esmtp_features = {}
            smtp.does_esmtp = False
            _answer(f"EHLO {helo} after STARTTLS", *smtp.ehlo())
        return smtp
    except Refused:
        smtp.close()
        raise
    except (OSError, smtplib.SMTPException) as err:
        smtp.close()
        raise _broke_off(err, "during the greeting") from err


def check_sender(smtp, mail_from, rcpt_to):
    """(status, detail) for one envelope sender on an open session; Refused when the session ended."""
    stage = f"MAIL FROM:<{mail_from}>"
    try:
        _answer(stage, *smtp.mail(mail_from))
        stage = f"RCPT TO:<{rcpt_to}>"
        _answer(stage, *smtp.rcpt(rcpt_to))
        stage = "RSET"
        smtp.rset()
    except (OSError, smtplib.SMTPException) as err:
        raise _broke_off(err, "at " + stage) from err
    return "allowlisted", f"accepted MAIL FROM:<{mail_from}> and RCPT TO:<{rcpt_to}>"


def preflight(host, port, tls_mode, helo, rcpt_to, senders, timeout=20.0, context=None):
    """{domain: (status, detail)} for each (domain, MAIL FROM) in senders, over as few sessions as needed."""
    context = context or ssl.create_default_context()
    verdicts, smtp = {}, None
    for index, (domain, mail_from) in enumerate(senders):
        try:
            if smtp is None:
                smtp = open_session(host, port, tls_mode, helo, timeout, context)
        except Refused as refused:  # nothing past the greeting differs per domain
            for rest, _ in senders[index:]:
                verdicts[rest] = (refused.status, refused.detail)
            break
        try:
            verdicts[domain] = check_sender(smtp, mail_from, rcpt_to)
        except Refused as refused:
            verdicts[domain] = (refused.status, refused.detail)
            try:
                if refused.closes:  # 421 or a broken connection: the next domain needs a new session
                    raise OSError
                smtp.rset()
            except (OSError, smtplib.SMTPException):
                smtp.close()
                smtp = None
    if smtp is not None:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    return verdicts


def summary(verdicts):
    """The worst verdict of any domain: (status, detail)."""
    if not verdicts:
        return "unknown", "no sending domain"
    worst = min(STATUSES.index(status) for status, _ in verdicts.values())
    domain, (status, detail) = next(item for item in verdicts.items() if item[1][0] == STATUSES[worst])
    return status, (f"{domain}: {detail}") if len(verdicts) > 1 else detail


def parse_args(argv):
    args = list(argv[1:])
    timeout = 20.0
    if args[:1] == ["--timeout"]:
        try:
            timeout = float(args[1])
        except (IndexError, ValueError):
            raise ValueError("--timeout needs a number of seconds") from None
        args = args[2:]
    if len(args) < 6:
        raise ValueError(f"expected at least 6 arguments, got {len(args)}")
    host, port, tls_mode, helo, rcpt_to = args[:5]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"PORT must be a number from 1 to 65535, not {port!r}")
    if tls_mode not in TLS_MODES:
        raise ValueError("TLS mode must be one of {}, not {!r}".format("|".join(TLS_MODES), tls_mode))
    senders = []
    for pair in args[5:]:
        domain, _, mail_from = pair.partition("=")
        if not domain or "@" not in mail_from:
            raise ValueError(f"expected DOMAIN=MAIL_FROM, not {pair!r}")
        senders.append((domain, mail_from))
    return host, int(port), tls_mode, helo, rcpt_to, senders, timeout


def main(argv):
    try:
        host, port, tls_mode, helo, rcpt_to, senders, timeout = parse_args(argv)
    except ValueError as err:
        print(f"relay_preflight.py: {err}\n{USAGE}", file=sys.stderr)
        return 2
    socket.setdefaulttimeout(timeout)
    verdicts = preflight(host, port, tls_mode, helo, rcpt_to, senders, timeout=timeout)
    for domain, (status, detail) in verdicts.items():
        print(f"relay-domain: {domain} {status} {fold(detail)}")
    print("relay-status: {} {}".format(*tuple(fold(part) for part in summary(verdicts))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
