"""Smoke test of a deployed postal-gateway: DNS, HTTPS, the SMTP intake, the send API, delivery through the relay.

    python -m scripts.smoke_test --stack prod --recipient you@example.com
    python -m scripts.smoke_test --stack prod --bounce      # the bounce path instead (scripts/bounce.py)

Reads the stack outputs (`pulumi stack output --json --show-secrets`, a JSON file, or the
POSTAL_GATEWAY_OUTPUTS environment variable), prints one PASS/FAIL line per check with the fix
for each failure, and exits 0 only when the test message was delivered to the relay; with
`--inbox imaps://USER@HOST[:PORT][/MAILBOX]`, only when every sending domain's message was read back
from that mailbox authenticated and aligned (scripts/inbox.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import dns.exception
import dns.resolver
import requests
import urllib3

from scripts import inbox
from scripts.inbox import Check
from scripts.remote.relay_preflight import diagnose, fold, unwrap

GOOGLE_SPF = "_spf.google.com"
ALLOWLIST_PATH = (
    "Google Admin console → Apps → Google Workspace → Gmail → Routing → SMTP relay service "
    "→ Only accept mail from the specified IP addresses"
)
CERT_WARN_DAYS = 14
RESOLVER_FIX = "check this machine's resolver, or pass --nameserver 1.1.1.1"


# --- diagnosis of Postal's deliveries (Google's answers as Postal 3.3.6 stores them) ---


@dataclass(frozen=True)
class Diagnosis:
    headline: str
    fix: str  # may name {publicIp} and {hostname}
    stop: bool = True  # waiting cannot help: report at once instead of polling until --timeout


RETRIES = "Postal retries by itself; run the smoke test again later"
DIAGNOSES = {
    # relay answers and connection errors: keys of relay_preflight.MARKERS, then by reply code
    "not-allowlisted": Diagnosis(
        "Google does not accept this IP, HELO or sender domain (Invalid credentials for relay)",
        f"add {{publicIp}} in {ALLOWLIST_PATH}, Allowed senders: Only addresses in my domains (changes take up "
        "to an hour); every sending domain must be a Workspace domain and Postal must greet as {hostname}",
    ),
    "tls-required": Diagnosis(
        "the relay requires TLS and Postal did not start it",
        "set postal-gateway:relayTls to starttls (port 587) or tls (465) and run pulumi up "
        "(Postal's ssl_mode must be STARTLS or TLS)",
    ),
    "tls-handshake": Diagnosis(
        "the TLS handshake with the relay failed (no STARTTLS offered, untrusted certificate, or reset or "
        "timed out during the handshake)",
        "check relayHost/relayPort/relayTls (smtp-relay.gmail.com, 587 starttls or 465 tls) and that nothing on "
        "the VM's egress intercepts TLS; on the VM: openssl s_client -starttls smtp -connect smtp-relay.gmail.com:587",
    ),
    "sender-limit": Diagnosis(
        "Google's daily relay limit for this envelope sender is used up (10,000 messages / 24 h per user)",
        "wait for the 24-hour window to pass, or spread the mail over more senders",
    ),
    "customer-limit": Diagnosis(
        "Google's daily relay limit for the whole organisation is used up",
        "wait for the 24-hour window; the limit grows with the number of Workspace licences",
    ),
    "peak-limit": Diagnosis(
        "Google's 10-minute peak relay limit for the organisation is exceeded (temporary)",
        f"send more slowly; {RETRIES}",
        stop=False,
    ),
    "unusual-rate": Diagnosis(
        "Google temporarily blocks mail from {publicIp} for an unusual rate of unsolicited mail",
        f"find what sent the burst (Postal's web UI → Messages) and stop it; {RETRIES}",
        stop=False,
    ),
    "helo-rejected": Diagnosis(
        "Google refused Postal's HELO name",
        "Postal must greet as {hostname} (dns.helo_hostname in postal.yml, written by the postal step): pulumi up",
    ),
    "wrong-relay": Diagnosis(
        "the server answered like Gmail's inbound MX, not the SMTP relay",
        "set postal-gateway:relayHost to smtp-relay.gmail.com and run pulumi up",
    ),
    "unauthenticated": Diagnosis(
        "Google refused the message as unauthenticated (SPF/DKIM/DMARC)",
        "the dns and spf checks above must pass: the sending domain's SPF includes spf.{hostname}, its "
        "postal-<selector>._domainkey record is published and Postal's DKIM check is OK (provision step)",
    ),
    "unreachable": Diagnosis(
        "Postal cannot reach the relay (connection refused or timed out, or the relay stopped answering)",
        "check relayHost/relayPort (GCP blocks outbound port 25: use 587) and the VM's egress firewall; "
        "on the VM: sudo postal logs worker",
    ),
    "recipient-gateway": Diagnosis(
        "the recipient's domain takes mail only from the IPs on its own inbound allowlist (421 IP not in whitelist "
        "for RCPT domain); the relay accepted {publicIp} and the sender, so this is not the relay allowlist",
        "send the smoke test to a mailbox outside that domain (--recipient), or have its admin allow Google's "
        "relay: Admin console → Gmail → Spam, phishing and malware → Inbound gateway / Email allowlist",
    ),
    "connection-dropped": Diagnosis(
        "the relay closed the connection during the greeting, without an answer (Google does so after a 421 at EHLO)",
        f"{RETRIES}; if it persists, check that Postal greets as {{hostname}} and that {{publicIp}} is allowlisted",
        stop=False,
    ),
    "session-dropped": Diagnosis(
        "the relay closed the connection in the middle of the transaction, after it had accepted the session "
        "(not an allowlist or HELO refusal: those come as answers)",
        f"{RETRIES}; if it persists, look for what cuts connections on the VM's egress path (proxy, firewall, "
        "MTU) and at the message's size; on the VM: sudo postal logs worker",
        stop=False,
    ),
    "recipient-unknown": Diagnosis(
        "the relay says the recipient address does not exist (the relay accepted our IP and sender)",
        "check the address passed as --recipient (default: adminEmail) for typos",
    ),
    "too-large": Diagnosis(
        "the message exceeds Google's message size limit",
        "send a smaller message (fewer or smaller attachments, or links instead)",
    ),
    "transient": Diagnosis("the relay deferred the message (a temporary 4xx answer)", RETRIES, stop=False),
    "rejected": Diagnosis(
        "the relay refused the message",
        "read the relay's answer; `gcdp` marks a Workspace admin rule (Admin console → Gmail → Compliance); "
        "on the VM: sudo postal logs worker",
    ),
    # deliveries Postal writes itself (app/lib/message_dequeuer/*.rb at 3.3.6)
    "held-suppressed": Diagnosis(
        "the recipient is on Postal's suppression list (after two hard fails in 24 hours, for 30 days)",
        "fix the cause of the earlier failures, then remove the address: Postal web UI → the mail server → "
        "Suppressions → delete it, and send again",
    ),
    "held-development": Diagnosis(
        "the mail server is in Development mode: Postal holds every message",
        "set the server to Live in Postal's web UI (Settings), or rerun the provision step",
    ),
    "held-limit": Diagnosis(
        "the mail server's send limit is reached",
        "raise or remove the send limit in Postal's web UI (Settings), then release the held messages",
    ),
    "held-credential": Diagnosis(
        "the credential used is set to hold its messages",
        "turn Hold off for the credential in Postal's web UI (Credentials), then release the message",
    ),
    "held-suspended": Diagnosis(
        "the mail server is suspended", "unsuspend it in Postal's web UI (admin), then release the message"
    ),
    "held": Diagnosis("Postal held the message", "read the details; release it in Postal's web UI"),
    "internal-error": Diagnosis(
        "Postal hit an internal error while sending (it retries automatically)",
        "on the VM: sudo postal logs worker (the output above is the exception)",
    ),
    "max-attempts": Diagnosis(
        "Postal gave up after its maximum number of delivery attempts",
        "fix the cause of the soft failures, remove the address from the suppression list (Postal web UI → "
        "Suppressions) and send again",
    ),
    "spam": Diagnosis(
        "Postal's own spam check refused the message",
        "change the message, or raise the server's outbound spam threshold in Postal's web UI",
    ),
    "bounced": Diagnosis(
        "the recipient's server bounced the message", "read the bounce in Postal's web UI; check the recipient address"
    ),
}
HELD = (
    ("suppression list", "held-suppressed"),
    ("development mode", "held-development"),
    ("send limit", "held-limit"),
    ("credential is configured to hold", "held-credential"),
    ("suspended", "held-suspended"),
)


def bare_address(address: str) -> str:
    """Postal's key for a recipient in `data.messages`: Postal::Helpers.strip_name_from_address (3.3.6)."""
    return re.sub(r"\(.+?\)", "", re.sub(r">.*", "", re.sub(r".*<", "", address))).strip()


def diagnose_delivery(delivery: dict) -> str:
    """Diagnosis key for a delivery that is not Sent, from Postal's status, details and output."""
    status, details = delivery.get("status"), fold(delivery.get("details"))
    lowered = details.lower()
    if status == "Held":
        return next((key for marker, key in HELD if marker in lowered), "held")
    if status == "Error":
        return "internal-error"
    if status == "Bounced":
        return "bounced"
    if lowered.startswith("maximum number of delivery attempts"):
        return "max-attempts"
    if lowered.startswith("message is likely spam"):
        return "spam"
    key = diagnose(f"{details}\n{delivery.get('output') or ''}")[0]
    # Postal 3.3.6 (app/senders/smtp_sender.rb): "No SMTP servers were available" when connecting, greeting or
    # starting TLS failed; "An error occurred while sending" for an error once the session was up
    if key == "connection-dropped" and lowered.startswith("an error occurred while sending"):
        return "session-dropped"
    return key


SHOWN_IP = re.compile(r"\[(\d{1,3}(?:\.\d{1,3}){3})\]")


def names_for(delivery: dict, outputs: dict) -> dict:
    """{publicIp} and {hostname} for a diagnosis; publicIp is the address Google shows in its answer, if any."""
    public_ip = outputs.get("publicIp", "<publicIp>")
    shown = SHOWN_IP.search(f"{delivery.get('details') or ''} {delivery.get('output') or ''}")
    if shown and shown.group(1) != public_ip:
        public_ip = f"{shown.group(1)} (the address Google saw; publicIp is {public_ip}: the VM's egress differs)"
    return {"publicIp": public_ip, "hostname": outputs.get("hostname", "<hostname>")}


def recorded(delivery: dict) -> str:
    """What Postal recorded, on one line: its details, then the relay's answer (or the error) it kept."""
    output = unwrap(delivery.get("output"))
    return f"Postal recorded: {fold(delivery.get('details'))}" + (f"; the relay said: {output}" if output else "")


def delivery_check(delivery: dict, outputs: dict, elapsed: float, timed_out: bool = False) -> Check | None:
    """The delivery's Check; None while waiting can still help (a temporary SoftFail before --timeout)."""
    status = delivery["status"]
    if status == "Sent":
        return Check("delivery", True, f"Sent after {elapsed:.0f}s: {recorded(delivery)}")
    diagnosis = DIAGNOSES[diagnose_delivery(delivery)]
    names = names_for(delivery, outputs)
    headline, fix = diagnosis.headline.format(**names), diagnosis.fix.format(**names)
    if status == "SoftFail" and not diagnosis.stop:
        if not timed_out:
            return None
        return Check(
            "delivery",
            False,
            f"still SoftFail after {elapsed:.0f}s: {headline}; Postal will retry; {recorded(delivery)}",
            fix,
        )
    retry = "; Postal will retry, but that cannot help until this is fixed" if status == "SoftFail" else ""
    return Check("delivery", False, f"{status}: {headline}{retry}; {recorded(delivery)}", fix)


# --- stack outputs ---


def load_outputs(args: argparse.Namespace) -> dict:
    if args.outputs:
        with sys.stdin if args.outputs == "-" else open(args.outputs) as f:
            return json.load(f)
    if os.environ.get("POSTAL_GATEWAY_OUTPUTS"):
        return json.loads(os.environ["POSTAL_GATEWAY_OUTPUTS"])
    command = ["pulumi", "stack", "output", "--json", "--show-secrets"] + (
        ["--stack", args.stack] if args.stack else []
    )
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(
            f"cannot read the stack outputs ({' '.join(command)}): "
            f"{getattr(err, 'stderr', '') or err}\nfix: log in with `pulumi login` and select the "
            "stack, or pass --outputs FILE / POSTAL_GATEWAY_OUTPUTS"
        ) from err
    return json.loads(result.stdout)


# --- the checks ---


class SmokeTest:
    def __init__(
        self,
        outputs: dict,
        *,
        recipient: str,
        sender: str,
        timeout: float,
        poll: float,
        verify,
        resolver,
        out=None,
        progress=None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        check_smtp_intake: bool = True,
        bounce_timeout: float | None = None,  # --bounce: wait this long for Postal to link the bounce
        proof: inbox.Proof | None = None,
    ):
        self.bounce_timeout = bounce_timeout
        self.o, self.recipient, self.sender = outputs, recipient, sender
        self.check_smtp_intake = check_smtp_intake
        self.timeout, self.poll, self.verify, self.resolver = timeout, poll, verify, resolver
        self.out, self.progress = out or sys.stdout, progress or sys.stderr
        self.clock, self.sleep = clock, sleep
        self.results: list[Check] = []
        self.proof, self.sent = proof, []  # --inbox; each message sent: sender, token, id, postal_token

    def report(self, check: Check) -> Check:
        self.results.append(check)
        print(f"{'PASS' if check.ok else 'FAIL'}  {check.name:<9} {fold(check.detail)}", file=self.out)
        if not check.ok:
            print(f"      fix: {fold(check.fix)}", file=self.out)
        return check

    # DNS: every record the stack published resolves to what it published; SPF reaches Google.
    def answers(self, name: str, rdtype: str) -> list[str]:
        try:
            answer = self.resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        values = []
        for rdata in answer:
            if rdtype == "TXT":
                values.append(b"".join(rdata.strings).decode())
            elif rdtype == "A":
                values.append(rdata.address)
            else:
                values.append((rdata.exchange if rdtype == "MX" else rdata.target).to_text().rstrip("."))
        return values

    def check_dns(self) -> None:
        for record in self.o.get("dnsRecords", []):
            name, rdtype, want = record["name"], record["type"], record["content"]
            label = f"{rdtype} {name}"
            try:
                got = self.answers(name, rdtype)
            except dns.exception.DNSException as err:
                self.report(Check("dns", False, f"{label}: lookup failed ({err.__class__.__name__})", RESOLVER_FIX))
                continue
            norm = [g.strip().rstrip(";") for g in got]
            if want.strip().rstrip(";") in norm:
                if "._domainkey." in name and len(got) > 1:
                    self.report(
                        Check(
                            "dns",
                            False,
                            f"{label}: {len(got)} TXT records, Postal needs exactly one",
                            f"delete the extra TXT records at {name} in Cloudflare",
                        )
                    )
                else:
                    self.report(Check("dns", True, f"{label} -> {want[:60]}"))
            elif not got:
                self.report(
                    Check(
                        "dns",
                        False,
                        f"{label}: missing (want {want[:60]})",
                        "run pulumi up; if Cloudflare has the record, check the zone's nameservers "
                        "and wait for caching to expire",
                    )
                )
            else:
                self.report(
                    Check(
                        "dns",
                        False,
                        f"{label}: {got[0][:60]!r}, want {want[:60]!r}",
                        "another record at this name differs from the stack's: remove it and run pulumi up",
                    )
                )
        for domain in self.o.get("sendingDomains", []):
            self.report(self.spf_chain(domain))

    def spf_chain(self, domain: str) -> Check:
        """Follows include: from the domain's SPF record until Google's (RFC 7208: at most 10 lookups)."""
        seen, queue, lookups = [], [domain], 0
        while queue:
            name = queue.pop(0)
            if name in seen:
                continue
            seen.append(name)
            lookups += name != domain
            try:
                spf = [t for t in self.answers(name, "TXT") if t.startswith("v=spf1")]
            except dns.exception.DNSException as err:
                return Check(
                    "spf", False, f"{domain}: lookup of {name} failed ({err.__class__.__name__})", RESOLVER_FIX
                )
            if len(spf) != 1:
                return Check(
                    "spf",
                    False,
                    f"{domain}: {name} has {len(spf)} SPF records",
                    f"publish exactly one v=spf1 record at {name} (postal-gateway:manageSpf)",
                )
            includes = [t.split(":", 1)[1] for t in spf[0].split() if t.lstrip("+~?-").startswith("include:")]
            if GOOGLE_SPF in includes:
                if lookups + 1 > 10:
                    return Check(
                        "spf",
                        False,
                        f"{domain}: Google reached after {lookups + 1} lookups (> 10)",
                        "flatten the SPF includes",
                    )
                return Check("spf", True, f"{domain}: {' -> '.join(seen + [GOOGLE_SPF])}")
            queue += includes
        return Check(
            "spf",
            False,
            f"{domain}: SPF never includes {GOOGLE_SPF} ({' -> '.join(seen)})",
            f"add include:spf.{self.o.get('hostname')} (or include:{GOOGLE_SPF}) to {domain}'s SPF",
        )

    # HTTPS: a trusted certificate on webUrl and Postal behind it.
    def tls_context(self) -> ssl.SSLContext:
        """Verifies chain and host name, against --ca-bundle if given; --insecure turns both off."""
        context = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)
        if self.verify is False:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context

    def check_https(self) -> bool:
        url = urlsplit(self.o["webUrl"])
        host, port = url.hostname, url.port or 443
        context = self.tls_context()
        try:
            with (
                socket.create_connection((host, port), timeout=10) as sock,
                context.wrap_socket(sock, server_hostname=host) as tls,
            ):
                cert = tls.getpeercert()
        except ssl.SSLCertVerificationError as err:
            return not self.report(
                Check(
                    "https",
                    False,
                    f"{host}: certificate not trusted ({err.verify_message})",
                    "tls=letsencrypt: ports 80/443 must be reachable from the internet "
                    "(webSourceRanges) and the A record right; see sudo docker logs postal-caddy. "
                    "tls=internal: pass --ca-bundle with Caddy's root or --insecure",
                )
            )
        except OSError as err:
            return not self.report(
                Check(
                    "https",
                    False,
                    f"{host}:{port} unreachable ({err})",
                    "check webSourceRanges and that postal-caddy runs (sudo docker ps on the VM)",
                )
            )
        days = ""
        if cert:
            left = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
            if left < CERT_WARN_DAYS:
                return not self.report(
                    Check(
                        "https",
                        False,
                        f"{host}: certificate expires in {left:.0f} days",
                        "Caddy renews 30 days ahead: see sudo docker logs postal-caddy",
                    )
                )
            days = f", expires in {left:.0f} days"
        try:
            response = requests.get(f"{self.o['webUrl']}/login", timeout=15, verify=self.verify)
        except requests.RequestException as err:
            return not self.report(
                Check("https", False, f"{self.o['webUrl']}/login: {err}", "see sudo docker logs postal-caddy")
            )
        if response.status_code != 200:
            return not self.report(
                Check(
                    "https",
                    False,
                    f"{self.o['webUrl']}/login answered {response.status_code}",
                    "502: Postal's web server is down (sudo postal status; sudo postal logs web)",
                )
            )
        return self.report(Check("https", True, f"{self.o['webUrl']} certificate valid{days}, Postal answers")).ok

    # SMTP intake: STARTTLS on smtpHost:smtpPort with a certificate valid for smtpHost, then the
    # stack's credential through CRAM-MD5, the one mechanism that needs smtpUsername to be right.
    def check_smtp(self) -> bool:
        host, port = self.o["smtpHost"], int(self.o.get("smtpPort") or 25)
        user, password = self.o.get("smtpUsername", ""), self.o.get("smtpPassword", "")
        where = f"{host}:{port}"
        try:
            with smtplib.SMTP(host, port, timeout=15) as smtp:
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    return not self.report(
                        Check(
                            "smtp",
                            False,
                            f"{where} offers no STARTTLS: the SMTP password would cross the network in clear",
                            "Postal's SMTP TLS is off: smtp_server.tls_enabled with the web certificate (postal step, "
                            "pulumi up); until then send only over trusted networks",
                        )
                    )
                smtp.starttls(context=self.tls_context())
                cert = smtp.sock.getpeercert()
                smtp.ehlo()
                smtp.user, smtp.password = user, password
                code, answer = smtp.auth("CRAM-MD5", smtp.auth_cram_md5, initial_response_ok=False)
        except ssl.SSLCertVerificationError as err:
            return not self.report(
                Check(
                    "smtp",
                    False,
                    f"{where}: certificate not valid for {host} ({err.verify_message})",
                    "Postal's SMTP server must present the web certificate for the hostname "
                    "(postal step); tls=internal: pass --ca-bundle with Caddy's root",
                )
            )
        except smtplib.SMTPAuthenticationError as err:
            return not self.report(
                Check(
                    "smtp",
                    False,
                    f"AUTH CRAM-MD5 as {user!r} refused: {err.smtp_code} "
                    f"{fold(err.smtp_error.decode(errors='replace'))}",
                    "smtpUsername must be <organization>/<server> (postal-gateway/gateway) and "
                    "smtpPassword the SMTP credential's key: rerun the provision step",
                )
            )
        except (OSError, smtplib.SMTPException) as err:
            return not self.report(
                Check(
                    "smtp",
                    False,
                    f"{where}: {fold(err) or type(err).__name__}",
                    "this machine must be inside smtpSourceRanges and Postal's smtp container "
                    "running (sudo postal status on the VM)",
                )
            )
        left = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400 if cert else None
        expires = f", expires in {left:.0f} days" if left is not None else ""
        return self.report(
            Check(
                "smtp",
                True,
                f"{where} STARTTLS, certificate valid for {host}{expires}; AUTH CRAM-MD5 as {user} accepted ({code})",
            )
        ).ok

    # Send API: Postal answers HTTP 200 even for errors; `status` tells.
    def api(self, path: str, body: dict) -> dict:
        base = self.o["apiUrl"].split("/api/v1/")[0]
        response = requests.post(
            f"{base}/api/v1/{path}",
            json=body,
            timeout=30,
            verify=self.verify,
            headers={"X-Server-API-Key": self.o["apiKey"].strip()},
        )
        try:
            return response.json()
        except ValueError:
            return {
                "status": "http-error",
                "data": {"code": f"HTTP {response.status_code}", "message": response.text[:200]},
            }

    SEND_FIXES = {
        "AccessDenied": "AccessDenied means the X-Server-API-Key header was missing or blank: the apiKey output is "
        "empty (read the outputs with --show-secrets, or pass --outputs FILE)",
        "InvalidServerAPIKey": "the apiKey output is not Postal's key: rerun the provision step "
        "(pulumi up --replace <urn of postal-provision>)",
        "UnauthenticatedFromAddress": "send from one of sendingDomains (--sender), and check that the provision "
        "step created the domain",
        "ServerSuspended": "unsuspend the mail server in Postal's web UI",
    }

    def send(self, sender: str | None = None) -> int | None:
        sender, token = sender or self.sender, inbox.new_token()  # the token finds the message in --inbox
        try:
            reply = self.api(
                "send/message",
                {
                    "to": [self.recipient],
                    "from": sender,
                    "subject": f"postal-gateway smoke test {token}",
                    "plain_body": f"Sent by scripts/smoke_test.py through {self.o.get('hostname')}.",
                    "tag": "smoke-test",
                },
            )
        except requests.RequestException as err:
            self.report(Check("send", False, f"{self.o['apiUrl']}: {err}", "see the https check above"))
            return None
        data = reply.get("data") or {}
        if reply.get("status") != "success":
            code = data.get("code", reply.get("status"))
            self.report(
                Check(
                    "send",
                    False,
                    f"{code}: {data.get('message', '')}",
                    self.SEND_FIXES.get(code, "read Postal's answer; on the VM: sudo postal logs web"),
                )
            )
            return None
        message = (data.get("messages") or {}).get(bare_address(self.recipient)) or {}
        self.report(Check("send", True, f"accepted as message {message.get('id')} ({data.get('message_id')})"))
        self.sent.append(
            {"sender": sender, "token": token, "id": message.get("id"), "postal_token": message.get("token")}
        )
        return message.get("id")

    # Delivery: poll the message's deliveries until the relay took it, refused it, or time ran out.
    def wait_for_delivery(self, message_id: int) -> Check:
        check = self.poll_delivery(message_id)
        self.end_progress()
        return self.report(check)

    def poll_delivery(self, message_id: int) -> Check:
        """Polls the message's deliveries until a verdict: Sent, a failure waiting cannot cure, or --timeout."""
        start, last = self.clock(), None
        while True:
            try:
                reply = self.api("messages/deliveries", {"id": message_id})
            except requests.RequestException as err:
                return Check("delivery", False, f"cannot read the deliveries: {err}", "see the https check")
            if reply.get("status") != "success":
                data = reply.get("data") or {}
                return Check(
                    "delivery",
                    False,
                    f"cannot read the deliveries: {data.get('code', reply.get('status'))}"
                    f" {data.get('message', '')}".rstrip(),
                    self.SEND_FIXES.get(data.get("code"), "on the VM: sudo postal logs web"),
                )
            deliveries = reply.get("data") or []
            latest = deliveries[-1] if deliveries else None
            elapsed = self.clock() - start
            check = delivery_check(latest, self.o, elapsed) if latest else None
            if check:
                return check
            status = latest["status"] if latest else "Pending"
            if elapsed >= self.timeout:
                if latest:  # a temporary SoftFail that did not clear in time
                    return delivery_check(latest, self.o, self.timeout, timed_out=True)
                return Check(
                    "delivery",
                    False,
                    f"still Pending after {self.timeout:.0f}s: Postal has not tried it",
                    "Postal's worker has not picked the message up: on the VM, sudo postal status and "
                    "sudo postal logs worker",
                )
            said = f" ({unwrap(latest.get('output'))[:80]})" if latest else ""
            self.show_progress(
                f"waiting for delivery: {status}{said}, {elapsed:.0f}s of {self.timeout:.0f}s", changed=status != last
            )
            last = status
            self.sleep(self.poll)

    def show_progress(self, text: str, changed: bool) -> None:
        if self.progress.isatty():
            print(f"\r{text}\033[K", end="", file=self.progress, flush=True)
        elif changed:
            print(text, file=self.progress, flush=True)

    def end_progress(self) -> None:
        if self.progress.isatty():
            print("\r\033[K", end="", file=self.progress, flush=True)

    def run(self) -> int:
        self.check_dns()
        self.check_https()
        if self.check_smtp_intake:
            self.check_smtp()
        else:
            print("SKIP  smtp      --skip-smtp: the SMTP intake (STARTTLS, credential) was not checked", file=self.out)
        message_id = self.send()
        if message_id is not None and self.bounce_timeout is not None:
            from scripts import bounce  # --bounce (scripts/bounce.py)

            bounce.wait(self, message_id, self.recipient, self.bounce_timeout)
        else:
            delivered = message_id is not None and self.wait_for_delivery(message_id).ok
            if self.proof is not None:  # --inbox: read back and judged, one message per sending domain
                self.proof.run(self, self.sent[-1] if delivered else None)
        failed = [c for c in self.results if not c.ok]
        goal = "bounce" if self.bounce_timeout is not None else "delivery"
        delivered = any(c.name == goal and c.ok for c in self.results)
        verdict = ("bounce linked" if delivered else "NO bounce linked") if goal == "bounce" else None
        if any("on the VM" in (c.fix or "") for c in failed):
            print(f"on the VM: {vm_shell(self.o)}", file=self.out)
        print(
            f"{len(self.results) - len(failed)} passed, {len(failed)} failed; "
            f"{verdict or ('delivered' if delivered else 'NOT delivered')}",
            file=self.out,
        )
        return 0 if delivered and not failed else 1


def vm_shell(outputs: dict) -> str:
    """How to get a shell on the VM: through IAP, port 22 being open to nothing else by default."""
    user, vm = outputs.get("sshUser") or "postal-ops", outputs.get("instanceName") or "<instanceName>"
    return (
        f"gcloud compute ssh {user}@{vm} --tunnel-through-iap --zone <gcp:zone> "
        "--ssh-key-file ~/.ssh/postal-gateway (docs/runbook.md, SSH in)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.smoke_test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", help="stack to read outputs from (default: the selected stack)")
    parser.add_argument("--outputs", help="JSON file of the stack outputs ('-' for stdin)")
    parser.add_argument("--recipient", help="who receives the test message (default: adminEmail)")
    parser.add_argument("--sender", help="From address (default: smoke-test@<first sending domain>)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for delivery (default 300)")
    parser.add_argument("--poll", type=float, default=5, help="seconds between delivery checks (default 5)")
    parser.add_argument("--nameserver", action="append", help="DNS server to ask (default: the system's)")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", help="CA file to trust (tls=internal: Caddy's root certificate)")
    tls.add_argument("--insecure", action="store_true", help="do not verify the HTTPS certificate")
    parser.add_argument(
        "--bounce",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="send to an address the relay accepts and then bounces (default: a fresh one at a domain that "
        "does not exist) and wait until Postal links the bounce (scripts/bounce.py)",
    )
    parser.add_argument(
        "--bounce-timeout", type=float, default=900, help="seconds to wait for the bounce (default 900)"
    )
    parser.add_argument(
        "--skip-smtp", action="store_true", help="skip the SMTP intake check (this machine is outside smtpSourceRanges)"
    )
    inbox.add_arguments(parser)
    return parser.parse_args(argv)


def bounce_recipient(args: argparse.Namespace) -> str | None:
    if args.bounce is None:
        return None
    from scripts import bounce

    return args.bounce or bounce.default_address()


def main(argv: list[str] | None = None, resolver=None) -> int:
    args = parse_args(argv)
    outputs = load_outputs(args)
    needed = ("webUrl", "apiUrl", "apiKey", "sendingDomains", "hostname") + (
        () if args.skip_smtp else ("smtpHost", "smtpPassword")
    )
    missing = [k for k in needed if not outputs.get(k)]
    if missing:
        print(f"the outputs lack {', '.join(missing)}: run pulumi up first (or pass --show-secrets)", file=sys.stderr)
        return 2
    if args.insecure:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        print("WARN  https     certificate verification is off (--insecure)")
    if resolver is None:
        resolver = dns.resolver.Resolver()
        if args.nameserver:
            resolver.nameservers = args.nameserver
    try:
        proof = inbox.from_args(args, os.environ)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if proof and args.bounce is not None:
        print("--inbox and --bounce exclude each other: the bounce test's message goes nowhere", file=sys.stderr)
        return 2
    smoke = SmokeTest(
        outputs,
        recipient=bounce_recipient(args)
        or args.recipient
        or (proof.inbox.address if proof else "")
        or outputs.get("adminEmail", ""),
        sender=args.sender or f"smoke-test@{outputs['sendingDomains'][0]}",
        timeout=args.timeout,
        poll=args.poll,
        resolver=resolver,
        verify=False if args.insecure else (args.ca_bundle or True),
        check_smtp_intake=not args.skip_smtp,
        bounce_timeout=None if args.bounce is None else args.bounce_timeout,
        proof=proof,
    )
    if not smoke.recipient:
        print("no recipient: pass --recipient", file=sys.stderr)
        return 2
    return smoke.run()


if __name__ == "__main__":
    sys.exit(main())
