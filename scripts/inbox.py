"""The smoke test's messages read back from a real mailbox, and judged on their authentication.

`python -m scripts.smoke_test --inbox imaps://USER@HOST[:PORT][/MAILBOX]` sends one message per sending
domain, each with a unique token in its subject, then reads them over IMAP with TLS (never in clear:
the certificate is verified before the password or token is sent). The password comes from
PG_INBOX_PASSWORD, or an OAuth2 bearer token for AUTHENTICATE XOAUTH2 from PG_INBOX_TOKEN (Google
Workspace mailboxes). Each message is judged on:
  dkim   the sending domain's signature, verified here with dkimpy against the record the stack published
         (its dnsRecords output) and against public DNS, with d= aligned with the From domain;
  spf, dmarc  the receiving server's own Authentication-Results (authserv-id, default mx.google.com),
         parsed with authres: only a header above Postal's own (DKIM-Signature, X-Postal-MsgID), never one
         that was in the message when it was sent; smtp.mailfrom must be under psrp.<domain>;
  arc    when the message was forwarded: the chain verified with dkimpy, and the first receiver's results.
Header shapes: RFC 8601 (Authentication-Results), RFC 8617 (ARC), Gmail's "Show original".
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import email.utils
import imaplib
import ipaddress
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import authres
import authres.arc
import authres.dmarc
import dkim
import dkim.util

DEFAULT_AUTHSERV_ID = "mx.google.com"
GOOGLE_SPF = "_spf.google.com"
IMAPS_PORT = 993
TOKEN_PREFIX = "pg-smoke-"
AUTHRES = authres.FeatureContext(authres.arc, authres.dmarc)
OUTSIDE = "read the proof from a mailbox outside the Workspace (a personal Gmail address, or another provider's)"


@dataclass
class Check:  # one line of the smoke test's report (smoke_test.py imports this module, so it lives here)
    name: str
    ok: bool
    detail: str
    fix: str = ""


# --- the mailbox ---


@dataclass(frozen=True)
class Inbox:
    user: str
    host: str
    port: int = IMAPS_PORT
    mailbox: str = "INBOX"

    def __str__(self) -> str:
        return f"imaps://{self.user}@{self.host}:{self.port}/{self.mailbox}"

    @property
    def address(self) -> str:
        """The mailbox's address when USER is one (Gmail, Workspace), else ''."""
        return self.user if "@" in self.user else ""


def parse_url(url: str) -> Inbox:
    """imaps://USER@HOST[:PORT][/MAILBOX]; USER may hold an unescaped @ (an address). ValueError with the fix."""
    parts = urlsplit(url)
    if parts.scheme != "imaps":
        raise ValueError(f"--inbox must be an imaps:// URL (IMAP over TLS, port 993), not {url!r}")
    user, at, hostport = parts.netloc.rpartition("@")
    if not at or not user:
        raise ValueError(f"--inbox needs the login: imaps://USER@HOST, not {url!r}")
    if ":" in user:
        raise ValueError("--inbox takes no password in the URL: set PG_INBOX_PASSWORD or PG_INBOX_TOKEN")
    host, _, port = hostport.partition(":")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"--inbox: bad host or port in {url!r}")
    mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
    return Inbox(unquote(user), host.lower(), int(port or IMAPS_PORT), mailbox)


def credentials(environ) -> tuple[str, str]:
    """("token", …) from PG_INBOX_TOKEN, else ("password", …) from PG_INBOX_PASSWORD; ValueError if neither."""
    if environ.get("PG_INBOX_TOKEN"):
        return "token", environ["PG_INBOX_TOKEN"].strip()
    if environ.get("PG_INBOX_PASSWORD"):
        return "password", environ["PG_INBOX_PASSWORD"]
    raise ValueError(
        "--inbox needs PG_INBOX_PASSWORD (the mailbox password or an app password) or PG_INBOX_TOKEN "
        "(an OAuth2 access token with the https://mail.google.com/ scope, for Google Workspace)"
    )


class MailboxError(Exception):
    def __init__(self, detail: str, fix: str):
        super().__init__(detail)
        self.detail, self.fix = detail, fix


def _text(data) -> str:
    parts = data if isinstance(data, list | tuple) else [data]
    return " ".join(p.decode(errors="replace") if isinstance(p, bytes) else str(p) for p in parts if p)


class Mailbox:
    """An IMAP session over TLS (certificate and host name verified before anything is sent)."""

    def __init__(self, inbox: Inbox, secret: tuple[str, str], context: ssl.SSLContext | None = None, timeout=30.0):
        self.inbox, self.secret, self.timeout = inbox, secret, timeout
        self.context = context or ssl.create_default_context()
        self.imap: imaplib.IMAP4_SSL | None = None

    def __enter__(self) -> Mailbox:
        where = f"{self.inbox.host}:{self.inbox.port}"
        try:
            self.imap = imaplib.IMAP4_SSL(
                self.inbox.host, self.inbox.port, ssl_context=self.context, timeout=self.timeout
            )
        except ssl.SSLCertVerificationError as err:
            raise MailboxError(
                f"{where}: TLS certificate not valid ({err.verify_message}); nothing was sent",
                "check the IMAP host name (Gmail and Workspace: imap.gmail.com); a proxy that intercepts TLS "
                "must not sit between this machine and the mailbox",
            ) from err
        except (OSError, imaplib.IMAP4.error) as err:
            raise MailboxError(
                f"{where}: cannot connect over TLS ({err or type(err).__name__})",
                "check the host and port of --inbox (IMAPS is 993) and this machine's egress",
            ) from err
        kind, value = self.secret
        try:
            if kind == "token":  # Google's XOAUTH2: developers.google.com/gmail/imap/xoauth2-protocol
                initial = f"user={self.inbox.user}\x01auth=Bearer {value}\x01\x01".encode()
                sent = []
                self.imap.authenticate("XOAUTH2", lambda _: b"" if sent else (sent.append(1), initial)[1])
            else:
                self.imap.login(self.inbox.user, value)
        except (imaplib.IMAP4.error, OSError) as err:
            self.close()
            said = _text(err.args[0] if err.args else err)
            fix = (
                "the token is expired or lacks the https://mail.google.com/ scope, or belongs to another user: "
                "get a fresh one (docs/troubleshooting.md#reading-the-proof-from-a-mailbox)"
                if kind == "token"
                else "check PG_INBOX_PASSWORD and that IMAP is on for the mailbox; Gmail needs an app password "
                "(2-Step Verification), Google Workspace accounts XOAUTH2 (PG_INBOX_TOKEN)"
            )
            raise MailboxError(f"{self.inbox}: login as {self.inbox.user} refused: {said}", fix) from err
        self.select(self.inbox.mailbox)
        return self

    def select(self, mailbox: str) -> None:
        quoted = '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'  # RFC 3501 quoted string
        status, data = self.imap.select(quoted)
        if status != "OK":
            raise MailboxError(
                f"{self.inbox}: no mailbox {mailbox!r} ({_text(data)})", "name an existing mailbox after the host"
            )

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.imap is not None:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                self.imap.logout()
            self.imap = None

    def find(self, token: str) -> list[tuple[bytes, bytes]]:
        """[(uid, raw message)] whose Subject holds the token (the search narrows, the Subject decides)."""
        self.imap.noop()
        status, data = self.imap.uid("SEARCH", None, "SUBJECT", f'"{token}"')
        uids = (data[0] or b"").split() if status == "OK" and data else []
        found = []
        for uid in uids:
            status, parts = self.imap.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts or [] if isinstance(p, tuple)), None)
            if status == "OK" and raw and token in str(email.message_from_bytes(raw).get("Subject", "")):
                found.append((uid, raw))
        return found

    def junk(self) -> list[str]:
        """Mailboxes marked \\Junk (RFC 6154; Gmail's [Gmail]/Spam), other than the one read."""
        status, data = self.imap.list()
        names = []
        for line in data if status == "OK" else []:
            text = _text(line)
            if "\\junk" in text.lower():
                name = text.rsplit(' "', 1)[-1].rstrip('"') if text.endswith('"') else text.rsplit(" ", 1)[-1]
                if name != self.inbox.mailbox:
                    names.append(name)
        return names

    def delete(self, uid: bytes) -> None:
        """\\Deleted and expunged (Gmail then archives or trashes it, by its IMAP settings)."""
        self.imap.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
        self.imap.expunge()


# --- the verdict ---


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_hex(8)


def domain_of(address: str) -> str:
    return email.utils.parseaddr(address or "")[1].rpartition("@")[2].lower().rstrip(".")


def aligned(a: str, b: str) -> bool:
    """DMARC relaxed alignment, approximated without the public suffix list: one domain is the other or
    under it (the stack's names are: psrp.<domain>, rp.<hostname>)."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


@dataclass
class Expect:
    """What the stack published and what a good message from `domain` looks like."""

    domain: str
    records: dict  # TXT name -> content, from the dnsRecords output
    public_ip: str
    hostname: str
    authserv_id: str = DEFAULT_AUTHSERV_ID
    postal_token: str | None = None  # Postal's X-Postal-MsgID for the message
    internal: bool = False  # the recipient is in a sending domain (same Workspace as the relay)
    google: list = field(default_factory=list)  # Google's outbound networks (_spf.google.com)


@dataclass
class Parsed:
    headers: list  # [(name, value)] top to bottom
    boundary: int  # index of the first header of the message as Postal sent it
    from_domain: str


def parse(raw: bytes, postal_token: str | None) -> Parsed:
    """Headers and the boundary: Postal prepends DKIM-Signature then X-Postal-MsgID to what it sends
    (lib/postal/message_db/message.rb add_outgoing_headers, 3.3.6); everything above was added on the way."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    headers = [(k, str(v)) for k, v in msg.items()]
    ids = [i for i, (k, v) in enumerate(headers) if k.lower() == "x-postal-msgid" and v.strip()]
    chosen = [i for i in ids if headers[i][1].strip() == postal_token] if postal_token else ids
    if chosen:
        boundary = chosen[0]
        if boundary > 0 and headers[boundary - 1][0].lower() == "dkim-signature":
            boundary -= 1
    else:  # not from Postal: nothing inside the message is trusted beyond its Subject's place
        boundary = next((i for i, (k, _) in enumerate(headers) if k.lower() == "subject"), len(headers))
    return Parsed(headers, boundary, domain_of(msg.get("From", "")))


def receiver_results(parsed: Parsed, authserv_id: str):
    """(the receiving server's Authentication-Results, authserv-ids seen above the boundary, ids only below)."""
    above, below = [], []
    for i, (name, value) in enumerate(parsed.headers):
        if name.lower() != "authentication-results":
            continue
        try:
            header = AUTHRES.parse_value(value)
        except authres.AuthResError:
            continue
        (above if i < parsed.boundary else below).append(header)
    mine = next((h for h in above if h.authserv_id.lower() == authserv_id.lower()), None)
    return mine, [h.authserv_id for h in above], [h.authserv_id for h in below]


def results_of(header, method: str) -> list:
    return [r for r in (header.results if header else []) if r.method == method]


def prop(result, ptype: str, name: str) -> str:
    return next((p.value for p in result.properties if p.type == ptype and p.name == name), "") or ""


def dkim_domain(result) -> str:
    return (prop(result, "header", "d") or prop(result, "header", "i").rpartition("@")[2]).lower()


def spf_client_ip(parsed: Parsed) -> str:
    """client-ip= of the receiver's Received-SPF (RFC 7208 §9.1), the topmost above the boundary."""
    for name, value in parsed.headers[: parsed.boundary]:
        if name.lower() == "received-spf":
            for part in value.replace("\n", " ").split(";"):
                key, _, val = part.strip().rpartition(" ")[2].partition("=")
                if key.lower() == "client-ip":
                    return val.strip()
    return ""


def google_networks(txt: Callable[[str], list[str]], name: str = GOOGLE_SPF, budget: list | None = None) -> list:
    """Google's outbound networks from its SPF record (ip4:/ip6: through include:, at most 10 lookups)."""
    budget = budget if budget is not None else [10]
    if budget[0] <= 0:
        return []
    budget[0] -= 1
    nets = []
    for record in txt(name):
        if not record.startswith("v=spf1"):
            continue
        for term in record.split()[1:]:
            mech, _, value = term.lstrip("+").partition(":")
            if mech in ("ip4", "ip6"):
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(value, strict=False))
            elif mech == "include":
                nets += google_networks(txt, value, budget)
    return nets


def quiet(txt: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    """A TXT lookup where a resolver error reads as no record (the checks say what is missing)."""

    def lookup(name: str) -> list[str]:
        try:
            return txt(name)
        except Exception:  # noqa: BLE001 - NXDOMAIN, timeouts, SERVFAIL alike
            return []

    return lookup


class Verdict:
    """The checks of one message."""

    def __init__(self, raw: bytes, expect: Expect, txt: Callable[[str], list[str]]):
        self.raw, self.e, self.lookup = raw, expect, quiet(txt)
        self.parsed = parse(raw, expect.postal_token)
        self.checks: list[Check] = []

    def add(self, name, ok, detail, fix=""):
        self.checks.append(Check(name, ok, f"{self.e.domain}: {detail}", fix))

    def run(self) -> list[Check]:
        p, e = self.parsed, self.e
        if p.from_domain != e.domain:
            self.add("inbox", False, f"From is {p.from_domain or 'missing'}, want {e.domain}", "send with --sender")
            return self.checks
        ar, above, below = receiver_results(p, e.authserv_id)
        forwarded = self.arc(ar)
        judged = forwarded or ar
        self.dkim(ar, forwarded)
        if ar is None:
            self.no_results(above, below)
        else:
            self.spf(judged, via_arc=forwarded is not None)
            self.dmarc(judged, ar)
        return self.checks

    # DKIM, verified here
    def dkim_with(self, sig_index: int, record: str | None) -> str:
        """'pass', 'missing', 'body' (body hash mismatch), 'fail' or 'error: …' for one signature and key record."""
        if not record:
            return "missing"

        def dnsfunc(name, timeout=5):
            return record.encode()

        try:
            return "pass" if dkim.DKIM(self.raw, minkey=1024).verify(idx=sig_index, dnsfunc=dnsfunc) else "fail"
        except dkim.ValidationError as err:
            return "body" if "body hash mismatch" in str(err) else f"error: {err}"
        except dkim.DKIMException as err:
            return f"error: {err}"

    def dkim(self, ar, forwarded) -> None:
        e, headers = self.e, self.parsed.headers
        sigs = []
        for name, value in headers:
            if name.lower() == "dkim-signature":
                try:
                    tags = dkim.util.parse_tag_value(value.encode())
                except dkim.util.InvalidTagValueList:
                    tags = {}
                sigs.append((len(sigs), tags.get(b"d", b"").decode().lower(), tags.get(b"s", b"").decode()))
        mine = [s for s in sigs if s[1] and aligned(s[1], e.domain)]
        stack_selectors = [n for n in e.records if n.endswith(f"._domainkey.{e.domain}")]
        want = stack_selectors[0].split(".")[0] if stack_selectors else "postal-<selector>"
        if not sigs:
            return self.add(
                "dkim",
                False,
                "the message carries no DKIM signature",
                f"Postal signs once its DNS check of {e.domain} passes: rerun the provision step (check_dns)",
            )
        if not mine:
            others = ", ".join(f"d={d} s={s}" for _, d, s in sigs)
            rp = f"rp.{e.hostname}"
            cause = (
                f"Postal signed with its own return-path key ({rp}), as it does while {e.domain}'s DKIM check is not OK"
                if any(d == rp for _, d, _ in sigs)
                else "another system signed it"
            )
            return self.add(
                "dkim",
                False,
                f"no signature with d= aligned with From ({others}): {cause}",
                f"Postal must sign with {want}._domainkey.{e.domain}: rerun the provision step and check the domain "
                "in Postal's web UI (Domains → DNS records)",
            )
        index, d, selector = mine[0]
        name = f"{selector}._domainkey.{d}"
        what = f"d={d} s={selector}"
        if name not in e.records:
            return self.add(
                "dkim",
                False,
                f"signed {what}, a selector the stack did not publish (its record: {want}._domainkey.{e.domain})",
                "Postal signs with a key that is not the stack's: rerun the provision step (it sets the domain's "
                "key and selector)",
            )
        stack = self.dkim_with(index, e.records[name])
        public_records = [t for t in self.lookup(name) if t.strip()]
        public = self.dkim_with(index, public_records[0]) if len(public_records) == 1 else "missing"
        receiver = [r.result for r in results_of(ar, "dkim") if dkim_domain(r) and aligned(dkim_domain(r), e.domain)]
        said = f"; {e.authserv_id} says dkim={receiver[0]}" if receiver else ""
        if "body" in (stack, public):
            return self.add(
                "dkim",
                False,
                f"{what}: the body changed in transit (dkimpy: body hash mismatch){said}",
                "find what rewrites mail between Postal and the mailbox: a footer or disclaimer (Admin console → "
                "Gmail → Compliance → Append footer), a gateway or a forwarder",
            )
        if stack != "pass":
            h = next((v for n, v in headers if n.lower() == "dkim-signature"), "")
            signed = dkim.util.parse_tag_value(h.encode()).get(b"h", b"").decode() if h else ""
            return self.add(
                "dkim",
                False,
                f"{what} does not verify with the stack's key ({stack}): a signed header (h={signed}) was "
                f"changed in transit, or Postal signs with another key than the stack's{said}",
                "compare the headers with what was sent (Postal's web UI → Messages → the message → Raw); "
                "rerun the provision step if the key differs",
            )
        if public == "missing":
            return self.add(
                "dkim",
                False,
                f"{what} verifies with the stack's key, but public DNS has {len(public_records)} records at {name}",
                "run pulumi up (the DKIM record) and keep exactly one TXT record at that name; check the zone's "
                "nameservers",
            )
        if public != "pass":
            return self.add(
                "dkim",
                False,
                f"{what} verifies with the stack's key, but {name} in public DNS holds another key ({public}), "
                f"so receivers fail it{said}",
                f"the record at {name} must be the stack's (dnsRecords): remove the other one and run pulumi up",
            )
        if receiver and receiver[0] != "pass" and forwarded is None:
            return self.add(
                "dkim",
                False,
                f"{what} verifies here (stack and public DNS), yet {e.authserv_id} says dkim={receiver[0]}",
                "the receiver changed the message or could not read the key: wait for DNS caches, send again",
            )
        self.add("dkim", True, f"{what} verified by dkimpy with the stack's key and public DNS's{said}")

    # the receiver's view
    def no_results(self, above: list, below: list) -> None:
        e = self.e
        cause = f"no Authentication-Results from {e.authserv_id} added on the way"
        if above:
            cause += f" (found: {', '.join(above)})"
        if below:
            cause += f"; only inside the message as sent, by {', '.join(below)}: ignored, a sender can write those"
        if e.internal:
            cause += "; the recipient is in the relay's Workspace: delivered internally, unchecked"
        self.add(
            "auth",
            False,
            cause,
            (OUTSIDE if e.internal else "pass --authserv-id with the first word of the receiver's own header, or ")
            + ("" if e.internal else OUTSIDE),
        )

    def spf(self, ar, via_arc: bool) -> None:
        e = self.e
        results = results_of(ar, "spf")
        who = "ARC i=1" if via_arc else e.authserv_id
        if not results:
            return self.add(
                "spf",
                False,
                f"{who} reports no SPF result"
                + (
                    "; the recipient is in the relay's Workspace: delivered internally, unchecked" if e.internal else ""
                ),
                OUTSIDE,
            )
        result = results[0]
        mailfrom = prop(result, "smtp", "mailfrom") or getattr(result, "smtp_mailfrom", "") or ""
        mf_domain = mailfrom.rpartition("@")[2].lower()
        return_path = f"psrp.{e.domain}"
        if result.result != "pass":
            ip = spf_client_ip(self.parsed) if not via_arc else ""
            self.add(
                "spf", False, f"{who}: spf={result.result} for {mailfrom or '?'}{self.ip_cause(ip)}", self.ip_fix(ip)
            )
            return
        if mf_domain != return_path:
            return self.add(
                "spf",
                False,
                f"{who}: spf=pass, but smtp.mailfrom={mailfrom}, not under {return_path}: Postal's return path "
                f"for {e.domain} is not in use",
                f"psrp.{e.domain} (CNAME to rp.{e.hostname}, in dnsRecords) must resolve and Postal's return-path "
                "check pass: rerun the provision step",
            )
        self.add("spf", True, f"{who}: spf=pass smtp.mailfrom={mailfrom}")

    def ip_cause(self, ip: str) -> str:
        if not ip:
            return ""
        e = self.e
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return f" from {ip}"
        if ip == e.public_ip:
            return f" from {ip}, the VM's own address (publicIp): it bypassed Google's relay"
        if any(address in net for net in e.google):
            return f" from {ip}, Google's relay (in {GOOGLE_SPF}), which the return path's SPF does not authorise"
        return f" from {ip}: neither publicIp {e.public_ip} nor Google's relay ({GOOGLE_SPF}); a forwarder re-sent it"

    def ip_fix(self, ip: str) -> str:
        e = self.e
        if ip == e.public_ip:
            return "Postal must relay through smtp-relay.gmail.com: relayHost, then pulumi up"
        if ip and any(ipaddress.ip_address(ip) in net for net in e.google):
            return (
                f"the SPF at rp.{e.hostname} (psrp.{e.domain} points there) must include spf.{e.hostname} → "
                f"{GOOGLE_SPF}: pulumi up; dig TXT rp.{e.hostname}"
            )
        return f"look at the Received headers for the hop in between; {OUTSIDE}, or one that honours ARC"

    def dmarc(self, judged, ar) -> None:
        e = self.e
        results = results_of(judged, "dmarc")
        if not results:
            return self.add(
                "dmarc",
                False,
                f"{e.authserv_id} reports no DMARC result",
                f"publish a DMARC record for {e.domain} (postal-gateway:dmarcPolicy none|quarantine|reject)",
            )
        result = results[0]
        if result.result == "pass":
            return self.add("dmarc", True, f"dmarc=pass header.from={prop(result, 'header', 'from') or e.domain}")
        dkim_pass = [dkim_domain(r) for r in results_of(judged, "dkim") if r.result == "pass"]
        spf_pass = [
            prop(r, "smtp", "mailfrom").rpartition("@")[2] for r in results_of(judged, "spf") if r.result == "pass"
        ]
        if (dkim_pass or spf_pass) and not any(aligned(d, e.domain) for d in dkim_pass + spf_pass if d):
            return self.add(
                "dmarc",
                False,
                f"dmarc={result.result} only through alignment: dkim passed for {', '.join(dkim_pass) or '-'}, "
                f"spf for {', '.join(spf_pass) or '-'}, neither is {e.domain}",
                f"Postal must sign with d={e.domain} and send from psrp.{e.domain}: its DNS checks for the domain "
                "must pass (provision step, check_dns)",
            )
        self.add(
            "dmarc",
            False,
            f"dmarc={result.result}: neither an aligned DKIM signature nor aligned SPF passed",
            "fix the dkim and spf failures above",
        )

    def arc(self, ar):
        """The first receiver's results when the message was forwarded with a passing ARC chain, else None."""
        e = self.e
        sets = [(n, v) for n, v in self.parsed.headers[: self.parsed.boundary] if n.lower() == "arc-seal"]
        verdict = [r.result for r in results_of(ar, "arc")]
        if not verdict:  # the receiver found no chain on arrival (Gmail seals every message it takes: i=1 is its own)
            return None
        cv, _, reason = dkim.arc_verify(self.raw, dnsfunc=lambda name, timeout=5: self.arc_key(name))
        first = self.aar(1)
        if cv == dkim.CV_Pass and verdict[:1] == ["pass"] and first is not None:
            sealer = min(
                ((dkim.util.parse_tag_value(v.encode()), v) for _, v in sets),
                key=lambda t: int(t[0].get(b"i", b"0")),
            )[0]
            self.add(
                "arc",
                True,
                f"forwarded: ARC chain of {len(sets)} verified by dkimpy, {e.authserv_id} says arc=pass; judged on "
                f"the first receiver's results ({first.authserv_id}, sealed by {sealer.get(b'd', b'?').decode()})",
            )
            return first
        self.add(
            "arc",
            False,
            f"forwarded, but the ARC chain does not hold (dkimpy: {reason}; {e.authserv_id}: "
            f"arc={verdict[0] if verdict else 'none'}): the final receiver's SPF/DMARC reflect the forwarder",
            f"{OUTSIDE} that receives the message directly",
        )
        return None

    def arc_key(self, name) -> bytes | None:
        name = name.decode() if isinstance(name, bytes) else name
        records = self.lookup(name.rstrip("."))
        return records[0].encode() if records else None

    def aar(self, instance: int):
        for name, value in self.parsed.headers[: self.parsed.boundary]:
            if name.lower() == "arc-authentication-results":
                head, _, rest = value.partition(";")
                if head.strip().replace(" ", "") == f"i={instance}":
                    try:
                        return AUTHRES.parse_value(rest)
                    except authres.AuthResError:
                        return None
        return None


def judge(raw: bytes, expect: Expect, txt: Callable[[str], list[str]]) -> list[Check]:
    return Verdict(raw, expect, txt).run()


# --- the run: send per domain, wait, judge ---


@dataclass
class Sent:
    domain: str
    token: str
    postal_token: str | None


def wait_for(
    mailbox: Mailbox,
    tokens: list[str],
    wait: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """{token: (uid, raw)} for the tokens that arrived within `wait` seconds."""
    start, found = clock(), {}
    while True:
        for token in tokens:
            if token not in found:
                hits = mailbox.find(token)
                if hits:
                    found[token] = hits[0]
        if len(found) == len(tokens) or clock() - start >= wait:
            return found
        sleep(poll)


class Proof:
    """--inbox: one message per sending domain read back from the mailbox and judged; checks go to the smoke test."""

    def __init__(
        self,
        inbox: Inbox,
        secret: tuple[str, str],
        *,
        authserv_id: str = DEFAULT_AUTHSERV_ID,
        wait: float = 300,
        delete: bool = False,
        context: ssl.SSLContext | None = None,
    ):
        self.inbox, self.secret, self.authserv_id = inbox, secret, authserv_id
        self.wait, self.delete, self.context = wait, delete, context

    def run(self, smoke, first: dict | None) -> None:
        """`first`: the smoke test's message if the relay took it; each other sending domain gets its own."""
        o = smoke.o
        attempted = {domain_of(m["sender"]) for m in smoke.sent}
        delivered = [first] if first else []
        for domain in o.get("sendingDomains", []):
            if domain not in attempted:
                message_id = smoke.send(f"smoke-test@{domain}")
                if message_id is not None and smoke.wait_for_delivery(message_id).ok:
                    delivered.append(smoke.sent[-1])
        if not delivered:
            return
        records = {r["name"]: r["content"] for r in o.get("dnsRecords", []) if r.get("type") == "TXT"}

        def txt(name: str) -> list[str]:
            return smoke.answers(name, "TXT")

        google = google_networks(quiet(txt))
        internal = domain_of(smoke.recipient) in o.get("sendingDomains", [])
        if internal:
            print(
                f"NOTE  inbox     {smoke.recipient} is in a sending domain: Google may deliver it inside the "
                f"Workspace without the checks an outside receiver makes; {OUTSIDE}",
                file=smoke.out,
            )
        try:
            with Mailbox(self.inbox, self.secret, self.context, timeout=30) as mailbox:
                start = smoke.clock()
                found = wait_for(
                    mailbox, [m["token"] for m in delivered], self.wait, smoke.poll, smoke.clock, smoke.sleep
                )
                waited = smoke.clock() - start
                for message in delivered:
                    domain, token = domain_of(message["sender"]), message["token"]
                    hit, folder = found.get(token), self.inbox.mailbox
                    if hit is None:
                        hit, folder = self.in_junk(mailbox, token)
                    if hit is None:
                        smoke.report(
                            Check(
                                "inbox",
                                False,
                                f"{domain}: {token} not in {self.inbox.mailbox} after {waited:.0f}s, nor in a spam "
                                "folder; Postal reported it Sent, so Google took it",
                                "look in Spam and in the Workspace quarantine (Admin console → Reporting → Email "
                                f"log search for the subject's {token}); rerun with a longer --inbox-wait",
                            )
                        )
                        continue
                    uid, raw = hit
                    if folder != self.inbox.mailbox:
                        smoke.report(
                            Check(
                                "inbox",
                                False,
                                f"{domain}: {token} arrived in {folder} (spam), not {self.inbox.mailbox}",
                                "the checks below say why; a new domain or IP also needs reputation: mark it "
                                "Not spam and keep volumes low at first",
                            )
                        )
                    else:
                        smoke.report(Check("inbox", True, f"{domain}: {token} arrived in {folder}"))
                    expect = Expect(
                        domain,
                        records,
                        o.get("publicIp", ""),
                        o.get("hostname", ""),
                        self.authserv_id,
                        message.get("postal_token"),
                        internal,
                        google,
                    )
                    for check in judge(raw, expect, txt):
                        smoke.report(check)
                    if self.delete:
                        mailbox.select(folder)
                        mailbox.delete(uid)
                        mailbox.select(self.inbox.mailbox)
        except MailboxError as err:
            smoke.report(Check("inbox", False, err.detail, err.fix))

    @staticmethod
    def in_junk(mailbox: Mailbox, token: str):
        for folder in mailbox.junk():
            try:
                mailbox.select(folder)
                hits = mailbox.find(token)
            finally:
                mailbox.select(mailbox.inbox.mailbox)
            if hits:
                return hits[0], folder
        return None, None


def add_arguments(parser) -> None:
    group = parser.add_argument_group("reading the message back (--inbox)")
    group.add_argument(
        "--inbox",
        metavar="imaps://USER@HOST[:PORT][/MAILBOX]",
        help="read each sending domain's message back from this mailbox and judge DKIM, SPF and DMARC "
        "(password in PG_INBOX_PASSWORD, or an OAuth2 token for XOAUTH2 in PG_INBOX_TOKEN); "
        "--recipient defaults to USER when it is an address",
    )
    group.add_argument(
        "--inbox-wait", type=float, default=300, help="seconds to wait for the messages in the mailbox (default 300)"
    )
    group.add_argument("--inbox-delete", action="store_true", help="delete the messages once judged")
    group.add_argument(
        "--authserv-id",
        default=DEFAULT_AUTHSERV_ID,
        help=f"the receiving server's Authentication-Results id (default {DEFAULT_AUTHSERV_ID})",
    )


def from_args(args, environ) -> Proof | None:
    """The Proof for --inbox, or None; ValueError (with the fix) for a bad URL or missing credentials."""
    if not args.inbox:
        return None
    return Proof(
        parse_url(args.inbox),
        credentials(environ),
        authserv_id=args.authserv_id,
        wait=args.inbox_wait,
        delete=args.inbox_delete,
    )
