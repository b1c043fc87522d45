"""Relay preflight, run on the VM: an SMTP dialogue with the relay that sends no message.

EHLO <hostname>, STARTTLS (verified), EHLO, MAIL FROM, RCPT TO, RSET, QUIT — the same identity
Postal presents — then one line `relay-status: <status> <detail>`. Statuses: allowlisted,
not-allowlisted, tls-failed, rate-limited, rejected, unreachable. Always exits 0 for a relay
answer: an IP that is not yet allowlisted is the normal first run. Python 3.9 (Rocky 9).
"""

import smtplib
import socket
import ssl
import sys

NOT_ALLOWLISTED = ("invalid credentials for relay", "mail relay denied")


def classify(code, text):
    """Status for a relay refusal (code >= 400) at any stage of the dialogue."""
    lowered = text.lower()
    if any(marker in lowered for marker in NOT_ALLOWLISTED):
        return "not-allowlisted"
    if "tls required" in lowered or "must issue a starttls" in lowered:
        return "tls-failed"
    if "limit exceeded" in lowered:
        return "rate-limited"
    return "rejected"


def _reply(code, message):
    text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
    return "%s %s" % (code, " ".join(text.split()))


def preflight(host, port, tls_mode, helo, mail_from, rcpt_to, timeout=20.0, context=None):
    """Return (status, detail) for one dialogue with the relay."""
    context = context or ssl.create_default_context()
    try:
        if tls_mode == "tls":
            smtp = smtplib.SMTP_SSL(host, port, local_hostname=helo, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout)
    except ssl.SSLError as err:
        return "tls-failed", "TLS handshake with %s:%s failed: %s" % (host, port, err)
    except smtplib.SMTPConnectError as err:
        return classify(err.smtp_code, _reply(err.smtp_code, err.smtp_error)), _reply(err.smtp_code, err.smtp_error)
    except (OSError, smtplib.SMTPException) as err:
        return "unreachable", "cannot connect to %s:%s: %s" % (host, port, err)
    try:
        code, message = smtp.ehlo()
        if code >= 400:
            return classify(code, _reply(code, message)), "EHLO %s: %s" % (helo, _reply(code, message))
        if tls_mode == "starttls":
            if not smtp.has_extn("starttls"):
                return "tls-failed", "%s:%s does not offer STARTTLS" % (host, port)
            try:
                smtp.starttls(context=context)
            except (ssl.SSLError, ssl.CertificateError, smtplib.SMTPException) as err:
                return "tls-failed", "STARTTLS failed: %s" % err
            smtp.ehlo()
        for verb, argument in (("MAIL FROM", mail_from), ("RCPT TO", rcpt_to)):
            code, message = smtp.mail(argument) if verb == "MAIL FROM" else smtp.rcpt(argument)
            if code >= 400:
                return classify(code, _reply(code, message)), "%s:<%s>: %s" % (verb, argument, _reply(code, message))
        smtp.rset()
        return "allowlisted", "%s:%s accepted MAIL FROM:<%s> and RCPT TO:<%s> from HELO %s" % (
            host, port, mail_from, rcpt_to, helo)
    except smtplib.SMTPResponseException as err:
        return classify(err.smtp_code, _reply(err.smtp_code, err.smtp_error)), _reply(err.smtp_code, err.smtp_error)
    except (OSError, smtplib.SMTPException) as err:
        return "rejected", "the relay closed the dialogue: %s" % err
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()


def main(argv):
    if len(argv) != 7:
        print("usage: relay_preflight.py HOST PORT starttls|tls|none HELO MAIL_FROM RCPT_TO", file=sys.stderr)
        return 2
    host, port, tls_mode, helo, mail_from, rcpt_to = argv[1:]
    socket.setdefaulttimeout(30)
    status, detail = preflight(host, int(port), tls_mode, helo, mail_from, rcpt_to)
    print("relay-status: %s %s" % (status, detail))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
