"""`python -m scripts.smoke_test --bounce [ADDRESS]`: proves that a bounce comes back and Postal links it.

The message goes to an address Google's relay accepts and then cannot deliver. Google's mail servers
then send the bounce to Postal's envelope sender, `<server token>@psrp.<domain>`, through the MX of
`rp.<hostname>` to port 25 (firewall rule `postal-allow-bounce`). Postal 3.3.6 stores it as a bounce
(app/lib/smtp_server/client.rb), its worker finds the original through the `X-Postal-MsgID` header
the bounce quotes and adds a `Bounced` delivery to it ("We've received a bounce message for this
e-mail. See <msg:ID> for details.", lib/postal/message_db/message.rb#bounce!, listed by the
messages/deliveries API, app/controllers/legacy_api/messages_controller.rb).

The default address is at a random name under example.com, which does not exist (RFC 2606 reserves
example.com; RFC 6761 §6.5: software treats example names like any other, so Google gives it no
special treatment). Google's relay accepts a recipient it cannot check itself and learns only when it
delivers that the domain has no mail server; Gmail users then get the asynchronous "Delivery Status
Notification (Failure)" from mailer-daemon@googlemail.com that support.google.com/a/answer/6596
describes ("Address not found"). That the relay accepts such a recipient rather than refusing it at
RCPT is not documented by Google and was not tried from here: a recipient the relay refuses in the
SMTP dialogue (`550 5.1.1`, a HardFail in Postal) produces no bounce at all, proves nothing about the
bounce path, and the check says so instead of passing (then pass another --bounce address).
"""

from __future__ import annotations

import secrets

import dns.exception

from scripts.remote.relay_preflight import fold
from scripts.smoke_test import Check, delivery_check, diagnose_delivery, recorded

BOUNCED = "Bounced"  # the delivery status Message#bounce! writes
# smoke_test's diagnoses of a relay that refused the recipient itself (not us, not the message)
REFUSED_RECIPIENT = ("recipient-unknown", "rejected")


def default_address(token: str | None = None) -> str:
    """A fresh address at a domain that does not exist, so every run bounces (and no address repeats
    onto Postal's suppression list)."""
    token = token or secrets.token_hex(4)
    return f"postal-gateway-bounce-{token}@nxdomain-{token}.example.com"


def _check(name: str, ok: bool, detail: str, fix: str = "") -> Check:
    return Check(name, ok, detail, fix)


def refused(delivery: dict, address: str):
    """The relay refused the recipient during its dialogue: Postal recorded it, no bounce will come."""
    return _check(
        "bounce",
        False,
        f"not tested: the relay refused {address} during the SMTP dialogue ({delivery.get('status')}); "
        f"Google sends no bounce for a recipient it refuses, so this proves nothing about the bounce path; "
        f"{recorded(delivery)}",
        "pass --bounce with an address the relay accepts and then cannot deliver: one at a domain that does "
        f"not exist (the default, e.g. {default_address('0')}), or an unknown user at a domain whose own server "
        "refuses it; not an address at a Google-hosted domain, which the relay checks itself",
    )


def diagnosis(smoke, waited: float) -> Check:
    """Why no bounce was linked: the DNS route of the return path, then what cannot be seen from here."""
    outputs = smoke.o
    hostname, public_ip = outputs.get("hostname", "<hostname>"), outputs.get("publicIp", "<publicIp>")
    domain = smoke.sender.rpartition("@")[2]
    psrp, rp = f"psrp.{domain}", f"rp.{hostname}"
    route = ((psrp, "CNAME", rp), (rp, "MX", hostname), (hostname, "A", public_ip))
    found = []
    for name, rdtype, want in route:
        try:
            got = smoke.answers(name, rdtype)
        except dns.exception.DNSException as err:
            got = [f"lookup failed ({err.__class__.__name__})"]
        if want not in got:
            found.append(f"{rdtype} {name} is {', '.join(got) or 'missing'}, want {want}")
    dns_fix = (
        "publish the return path (pulumi up: the stack owns these records), then wait for DNS caches; " if found else ""
    )
    dns_state = "; ".join(found) if found else f"DNS routes {psrp} -> {rp} -> {hostname} -> {public_ip}"
    return _check(
        "bounce",
        False,
        f"no bounce linked {waited:.0f}s after the relay accepted the message ({dns_state})",
        f"{dns_fix}the firewall rule postal-allow-bounce must admit Google's outbound mail ranges "
        "(bounceSourceRanges, default; python -m scripts.google_ranges says whether the pinned ranges are "
        "current); Postal uses psrp.<domain> as the envelope sender only while the domain's return-path check "
        f"is OK (else rp.{hostname}, also routed here): check the domain in Postal's web UI (DNS records); on "
        "the VM, sudo postal logs smtp shows each connection from Google, and a bounce that arrived but "
        "matched no message is an incoming message with a HardFail in Postal's web UI (Messages). Google may "
        "retry a bounce for hours: run again with a longer --bounce-timeout",
    )


def wait(smoke, message_id: int, address: str, bounce_timeout: float) -> None:
    """Polls the message's deliveries: first the relay's verdict, then Postal's `Bounced` delivery."""
    start, accepted_at, last = smoke.clock(), None, None
    while True:
        reply = smoke.api("messages/deliveries", {"id": message_id})
        if reply.get("status") != "success":
            data = reply.get("data") or {}
            smoke.end_progress()
            smoke.report(
                _check(
                    "bounce",
                    False,
                    f"cannot read the deliveries: {data.get('code', reply.get('status'))} {data.get('message', '')}",
                    "on the VM: sudo postal logs web",
                )
            )
            return
        deliveries = reply.get("data") or []
        elapsed = smoke.clock() - start
        bounced = next((d for d in deliveries if d.get("status") == BOUNCED), None)
        latest = deliveries[-1] if deliveries else None
        if accepted_at is None:
            if latest and latest.get("status") in ("Sent", BOUNCED):
                accepted_at = elapsed
                sent = next((d for d in deliveries if d.get("status") == "Sent"), latest)
                smoke.end_progress()
                smoke.report(_check("delivery", True, f"the relay accepted it after {elapsed:.0f}s: {recorded(sent)}"))
            elif latest:
                check = delivery_check(latest, smoke.o, elapsed, timed_out=elapsed >= smoke.timeout)
                if check:
                    smoke.end_progress()
                    smoke.report(check)
                    if latest.get("status") == "HardFail" and diagnose_delivery(latest) in REFUSED_RECIPIENT:
                        smoke.report(refused(latest, address))
                    else:
                        smoke.report(
                            _check(
                                "bounce",
                                False,
                                "not tested: the relay did not accept the message",
                                "fix the delivery (above) first",
                            )
                        )
                    return
            elif elapsed >= smoke.timeout:
                smoke.end_progress()
                smoke.report(
                    _check(
                        "bounce",
                        False,
                        f"not tested: still Pending after {smoke.timeout:.0f}s",
                        "Postal's worker has not picked the message up: sudo postal status, sudo postal logs worker",
                    )
                )
                return
        if bounced:
            smoke.end_progress()
            smoke.report(
                _check(
                    "bounce",
                    True,
                    f"Postal linked Google's bounce {elapsed - accepted_at:.0f}s after the relay accepted the "
                    f"message: {fold(bounced.get('details'))}",
                )
            )
            return
        if accepted_at is not None and elapsed - accepted_at >= bounce_timeout:
            smoke.end_progress()
            smoke.report(diagnosis(smoke, elapsed - accepted_at))
            return
        phase = "the relay" if accepted_at is None else "the bounce"
        limit = smoke.timeout if accepted_at is None else bounce_timeout
        shown = elapsed if accepted_at is None else elapsed - accepted_at
        smoke.show_progress(f"waiting for {phase}: {shown:.0f}s of {limit:.0f}s", changed=phase != last)
        last = phase
        smoke.sleep(smoke.poll)
