"""Smoke test of a deployed postal-gateway: DNS, HTTPS, the send API, delivery through the relay.

    python -m scripts.smoke_test --stack prod --recipient you@example.com

Reads the stack outputs (`pulumi stack output --json --show-secrets`, a JSON file, or the
POSTAL_GATEWAY_OUTPUTS environment variable), prints one PASS/FAIL line per check with the fix
for each failure, and exits 0 only when the test message was delivered to the relay.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlsplit

import dns.exception
import dns.resolver
import requests
import urllib3

from scripts.remote.relay_preflight import diagnose

GOOGLE_SPF = "_spf.google.com"
ALLOWLIST_PATH = ("Google Admin console → Apps → Google Workspace → Gmail → Routing → SMTP relay service "
                  "→ Only accept mail from the specified IP addresses")
DONE, FAILED = {"Sent"}, {"HardFail", "Bounced"}
HELD_FIX = ("Postal held the message (a Development-mode server, a send limit or spam checks): "
            "release it in Postal's web UI and check the server's mode and limits")
CERT_WARN_DAYS = 14
RESOLVER_FIX = "check this machine's resolver, or pass --nameserver 1.1.1.1"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


# --- diagnosis of Postal's delivery output (Google's answers) ---

def relay_fix(text: str, outputs: dict) -> tuple[str, str]:
    """(diagnosis, fix) for a delivery that the relay refused or that could not reach it."""
    lowered = text.lower()
    ip, host = outputs.get("publicIp", "<publicIp>"), outputs.get("hostname", "<hostname>")
    status = diagnose(text, 550)[1]
    if status == "not-allowlisted":
        return ("Google does not accept this IP / HELO / sender domain (Invalid credentials for relay)",
                f"add {ip} in {ALLOWLIST_PATH} (changes take up to an hour); check that the sender's domain is a "
                f"Workspace domain and that Postal's HELO is {host}")
    if status == "tls-failed":
        return ("the relay requires TLS",
                "set postal-gateway:relayTls to starttls (port 587) and run pulumi up; Postal's mode must be STARTLS")
    if "for user" in lowered and "limit" in lowered:
        return ("Google's daily relay limit for this envelope sender is used up (10,000 / 24 h)",
                "wait for the 24-hour window to pass or spread mail over several senders")
    if "peak" in lowered:
        return ("Google's 10-minute peak relay limit for the organisation is used up",
                "slow down; Postal retries soft failures by itself")
    if status == "rate-limited":
        return ("Google's daily relay limit for the organisation is used up",
                "wait for the 24-hour window; the limit grows with the number of Workspace licences")
    if "try again later" in lowered:
        return ("Google throttled the connection at HELO",
                f"Postal must greet as {host} (dns.helo_hostname, postal step); never localhost")
    if any(m in lowered for m in ("connection refused", "timed out", "timeout", "unreachable", "no route")):
        return ("Postal cannot reach the relay",
                "check relayHost/relayPort (GCP blocks outbound port 25: use 587) and the VM's egress; "
                "on the VM: sudo postal logs worker")
    return "the relay refused the message", "read the relay's answer above; on the VM: sudo postal logs worker"


# --- stack outputs ---

def load_outputs(args: argparse.Namespace) -> dict:
    if args.outputs:
        with (sys.stdin if args.outputs == "-" else open(args.outputs)) as f:
            return json.load(f)
    if os.environ.get("POSTAL_GATEWAY_OUTPUTS"):
        return json.loads(os.environ["POSTAL_GATEWAY_OUTPUTS"])
    command = ["pulumi", "stack", "output", "--json", "--show-secrets"] + (["--stack", args.stack] if args.stack else [])
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"cannot read the stack outputs ({' '.join(command)}): "
                         f"{getattr(err, 'stderr', '') or err}\nfix: log in with `pulumi login` and select the "
                         "stack, or pass --outputs FILE / POSTAL_GATEWAY_OUTPUTS")
    return json.loads(result.stdout)


# --- the checks ---

class SmokeTest:
    def __init__(self, outputs: dict, *, recipient: str, sender: str, timeout: float, poll: float,
                 verify, resolver, out=None, progress=None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.o, self.recipient, self.sender = outputs, recipient, sender
        self.timeout, self.poll, self.verify, self.resolver = timeout, poll, verify, resolver
        self.out, self.progress = out or sys.stdout, progress or sys.stderr
        self.clock, self.sleep = clock, sleep
        self.results: list[Check] = []

    def report(self, check: Check) -> Check:
        self.results.append(check)
        print(f"{'PASS' if check.ok else 'FAIL'}  {check.name:<9} {check.detail}", file=self.out)
        if not check.ok:
            print(f"      fix: {check.fix}", file=self.out)
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
                self.report(Check("dns", False, f"{label}: lookup failed ({err.__class__.__name__})",
                                  RESOLVER_FIX))
                continue
            norm = [g.strip().rstrip(";") for g in got]
            if want.strip().rstrip(";") in norm:
                if "._domainkey." in name and len(got) > 1:
                    self.report(Check("dns", False, f"{label}: {len(got)} TXT records, Postal needs exactly one",
                                      f"delete the extra TXT records at {name} in Cloudflare"))
                else:
                    self.report(Check("dns", True, f"{label} -> {want[:60]}"))
            elif not got:
                self.report(Check("dns", False, f"{label}: missing (want {want[:60]})",
                                  "run pulumi up; if Cloudflare has the record, check the zone's nameservers "
                                  "and wait for caching to expire"))
            else:
                self.report(Check("dns", False, f"{label}: {got[0][:60]!r}, want {want[:60]!r}",
                                  "another record at this name differs from the stack's: remove it and run pulumi up"))
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
                return Check("spf", False, f"{domain}: lookup of {name} failed ({err.__class__.__name__})",
                             RESOLVER_FIX)
            if len(spf) != 1:
                return Check("spf", False, f"{domain}: {name} has {len(spf)} SPF records",
                             f"publish exactly one v=spf1 record at {name} (postal-gateway:manageSpf)")
            includes = [t.split(":", 1)[1] for t in spf[0].split() if t.lstrip("+~?-").startswith("include:")]
            if GOOGLE_SPF in includes:
                if lookups + 1 > 10:
                    return Check("spf", False, f"{domain}: Google reached after {lookups + 1} lookups (> 10)",
                                 "flatten the SPF includes")
                return Check("spf", True, f"{domain}: {' -> '.join(seen + [GOOGLE_SPF])}")
            queue += includes
        return Check("spf", False, f"{domain}: SPF never includes {GOOGLE_SPF} ({' -> '.join(seen)})",
                     f"add include:spf.{self.o.get('hostname')} (or include:{GOOGLE_SPF}) to {domain}'s SPF")

    # HTTPS: a trusted certificate on webUrl and Postal behind it.
    def check_https(self) -> bool:
        url = urlsplit(self.o["webUrl"])
        host, port = url.hostname, url.port or 443
        context = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)
        if self.verify is False:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with socket.create_connection((host, port), timeout=10) as sock, \
                    context.wrap_socket(sock, server_hostname=host) as tls:
                cert = tls.getpeercert()
        except ssl.SSLCertVerificationError as err:
            return not self.report(Check("https", False, f"{host}: certificate not trusted ({err.verify_message})",
                                         "tls=letsencrypt: ports 80/443 must be reachable from the internet "
                                         "(webSourceRanges) and the A record right; see sudo docker logs postal-caddy. "
                                         "tls=internal: pass --ca-bundle with Caddy's root or --insecure"))
        except OSError as err:
            return not self.report(Check("https", False, f"{host}:{port} unreachable ({err})",
                                         "check webSourceRanges and that postal-caddy runs (sudo docker ps on the VM)"))
        days = ""
        if cert:
            left = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
            if left < CERT_WARN_DAYS:
                return not self.report(Check("https", False, f"{host}: certificate expires in {left:.0f} days",
                                             "Caddy renews 30 days ahead: see sudo docker logs postal-caddy"))
            days = f", expires in {left:.0f} days"
        try:
            response = requests.get(f"{self.o['webUrl']}/login", timeout=15, verify=self.verify)
        except requests.RequestException as err:
            return not self.report(Check("https", False, f"{self.o['webUrl']}/login: {err}",
                                         "see sudo docker logs postal-caddy"))
        if response.status_code != 200:
            return not self.report(Check("https", False, f"{self.o['webUrl']}/login answered {response.status_code}",
                                         "502: Postal's web server is down (sudo postal status; sudo postal logs web)"))
        return self.report(Check("https", True, f"{self.o['webUrl']} certificate valid{days}, Postal answers")).ok

    # Send API: Postal answers HTTP 200 even for errors; `status` tells.
    def api(self, path: str, body: dict) -> dict:
        base = self.o["apiUrl"].split("/api/v1/")[0]
        response = requests.post(f"{base}/api/v1/{path}", json=body, timeout=30, verify=self.verify,
                                 headers={"X-Server-API-Key": self.o["apiKey"]})
        try:
            return response.json()
        except ValueError:
            return {"status": "http-error", "data": {"code": f"HTTP {response.status_code}",
                                                     "message": response.text[:200]}}

    SEND_FIXES = {
        "InvalidServerAPIKey": "the apiKey output is not Postal's key: rerun the provision step "
                               "(pulumi up --replace <urn of postal-provision>)",
        "UnauthenticatedFromAddress": "send from one of sendingDomains (--sender), and check that the provision "
                                      "step created the domain",
        "AccessDenied": "the credential is on hold or the server is suspended: check Postal's web UI",
        "ServerSuspended": "unsuspend the mail server in Postal's web UI",
    }

    def send(self) -> Optional[int]:
        try:
            reply = self.api("send/message", {
                "to": [self.recipient], "from": self.sender, "subject": "postal-gateway smoke test",
                "plain_body": f"Sent by scripts/smoke_test.py through {self.o.get('hostname')}.",
                "tag": "smoke-test"})
        except requests.RequestException as err:
            self.report(Check("send", False, f"{self.o['apiUrl']}: {err}", "see the https check above"))
            return None
        data = reply.get("data") or {}
        if reply.get("status") != "success":
            code = data.get("code", reply.get("status"))
            self.report(Check("send", False, f"{code}: {data.get('message', '')}",
                              self.SEND_FIXES.get(code, "read Postal's answer; on the VM: sudo postal logs web")))
            return None
        message = (data.get("messages") or {}).get(self.recipient) or {}
        self.report(Check("send", True, f"accepted as message {message.get('id')} ({data.get('message_id')})"))
        return message.get("id")

    # Delivery: poll the message's deliveries until the relay took it, refused it, or time ran out.
    def wait_for_delivery(self, message_id: int) -> None:
        check = self.poll_delivery(message_id)
        self.end_progress()
        self.report(check)

    def poll_delivery(self, message_id: int) -> Check:
        """Polls the message's deliveries until the relay took it, refused it, or time ran out."""
        start, last = self.clock(), None
        while True:
            try:
                reply = self.api("messages/deliveries", {"id": message_id})
            except requests.RequestException as err:
                return Check("delivery", False, f"cannot read the deliveries: {err}", "see the https check")
            if reply.get("status") != "success":
                data = reply.get("data") or {}
                return Check("delivery", False, f"cannot read the deliveries: {data.get('code', reply.get('status'))}"
                                                f" {data.get('message', '')}".rstrip(),
                             self.SEND_FIXES.get(data.get("code"), "on the VM: sudo postal logs web"))
            deliveries = reply.get("data") or []
            latest = deliveries[-1] if deliveries else None
            status = latest["status"] if latest else "Pending"
            text = f"{latest.get('details') or ''} {latest.get('output') or ''}".strip() if latest else ""
            elapsed = self.clock() - start
            if status in DONE:
                return Check("delivery", True, f"{status} after {elapsed:.0f}s: {text}")
            diagnosis, fix = relay_fix(text, self.o) if latest else ("", "")
            if status == "Held":
                diagnosis, fix = "held by Postal", HELD_FIX
            if status in FAILED | {"Held"} or (status == "SoftFail" and diagnosis != "the relay refused the message"):
                return Check("delivery", False, f"{status}: {diagnosis}: {text}", fix)
            if elapsed >= self.timeout:
                return Check("delivery", False, f"still {status} after {self.timeout:.0f}s {text}".strip(),
                             "Postal's worker has not delivered it: on the VM, sudo postal status and "
                             "sudo postal logs worker")
            self.show_progress(f"waiting for delivery: {status}, {elapsed:.0f}s of {self.timeout:.0f}s",
                               changed=status != last)
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
        message_id = self.send()
        if message_id is not None:
            self.wait_for_delivery(message_id)
        failed = [c for c in self.results if not c.ok]
        delivered = any(c.name == "delivery" and c.ok for c in self.results)
        print(f"{len(self.results) - len(failed)} passed, {len(failed)} failed; "
              f"{'delivered' if delivered else 'NOT delivered'}", file=self.out)
        return 0 if delivered and not failed else 1


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None, resolver=None) -> int:
    args = parse_args(argv)
    outputs = load_outputs(args)
    missing = [k for k in ("webUrl", "apiUrl", "apiKey", "sendingDomains", "hostname") if not outputs.get(k)]
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
    smoke = SmokeTest(outputs, recipient=args.recipient or outputs.get("adminEmail", ""),
                      sender=args.sender or f"smoke-test@{outputs['sendingDomains'][0]}",
                      timeout=args.timeout, poll=args.poll, resolver=resolver,
                      verify=False if args.insecure else (args.ca_bundle or True))
    if not smoke.recipient:
        print("no recipient: pass --recipient", file=sys.stderr)
        return 2
    return smoke.run()


if __name__ == "__main__":
    sys.exit(main())
