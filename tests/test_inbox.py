"""--inbox: the smoke test's messages read back from a real IMAP server (Dovecot on 127.0.0.1) and judged.

Each case builds what the mailbox would hold — Postal's message signed with dkimpy (tests/gmail.py), passed
on by Google's relay and filed by a Gmail-like receiver with its Authentication-Results — and delivers it
into Dovecot when the smoke test sends; the smoke test then finds it over IMAPS by its token.
"""

from __future__ import annotations

import io
import itertools
import json

import dkim
import pytest
from dovecot import Dovecot
from gmail import RELAY_IP, key, postal, received, relayed, results, selector
from test_smoke import Resolver, make_cert, serve
from test_smoke import outputs as smoke_outputs

from scripts import inbox, smoke_test

RCPT = "ops@example.net"  # outside the Workspace: the proof an outside receiver gives
PASSWORD = "c0rrect-h0rse"
TOKEN = "ya29.a0-good-token"
HOST = "postal.example.com"
PUBLIC_IP = "203.0.113.10"


def stack_records(domains=("example.com",)) -> list[dict]:
    """The dnsRecords output's TXT records: each domain's DKIM record and the return-path key (rp.<hostname>)."""
    records = [{"name": f"postal._domainkey.rp.{HOST}", "type": "TXT", "content": key(f"rp.{HOST}")[1]}]
    for d in domains:
        records.append({"name": f"postal-{selector(d)}._domainkey.{d}", "type": "TXT", "content": key(d)[1]})
        records.append({"name": d, "type": "TXT", "content": f"v=spf1 include:spf.{HOST} ~all"})
    return records


def public_dns(records, **overrides) -> Resolver:
    """Public DNS: the stack's records, Google's SPF chain, the ARC sealers' keys; overrides name -> content|None."""
    resolver = Resolver(records=[])
    table = {r["name"]: r["content"] for r in records}
    table.update(
        {
            f"spf.{HOST}": "v=spf1 include:_spf.google.com ~all",
            "_netblocks.google.com": "v=spf1 ip4:209.85.128.0/17 ip4:74.125.0.0/16 ~all",
            "arc-20240605._domainkey.google.com": key("google.com")[1],
            "arc-20240605._domainkey.forwarder.example": key("forwarder.example")[1],
        }
    )
    table.update(overrides)
    resolver.table.pop(("example.com", "TXT"), None)
    for name, content in table.items():
        if content is not None:
            resolver.add(name, "TXT", content)
    return resolver


@pytest.fixture(scope="module")
def dovecot():
    server = Dovecot({RCPT: PASSWORD, "ops@example.com": PASSWORD}, {TOKEN: RCPT})
    yield server
    server.close()


@pytest.fixture
def certs_and_postal(tmp_path):
    """test_smoke.py's Postal (HTTPS, send API) with the stack's DKIM records in its outputs."""
    cert, private = make_cert(tmp_path, 90)
    server = serve(cert, private)
    yield server, str(cert), smoke_outputs(server.server_port, dnsRecords=stack_records())
    server.shutdown()


@pytest.fixture(autouse=True)
def empty_mailboxes(dovecot):
    yield
    for user in dovecot.users:
        dovecot.empty(user)


def gmail(msg: dict, domain: str, **kw) -> bytes:
    """The default path: Postal signs, the relay passes it on, Gmail checks and files it (everything passes)."""
    sender, token = msg["from"], msg["postal_token"]
    mailfrom = f"{token}@psrp.{domain}"
    message = relayed(postal(sender, msg["to"][0], msg["subject"], token), msg["to"][0])
    return received(message, msg["to"][0], results(domain, mailfrom), mailfrom=mailfrom, **kw)


class Run:
    """The smoke test's send, delivery and --inbox steps against a scripted Postal API and the real Dovecot."""

    def __init__(self, dovecot, build, *, domains=("example.com",), rcpt=RCPT, secret=("password", PASSWORD), **kw):
        self.dovecot, self.build, self.rcpt, self.sent = dovecot, build, rcpt, []
        self.ids = itertools.count(101)
        self.outputs = {
            "publicIp": PUBLIC_IP,
            "hostname": HOST,
            "sendingDomains": list(domains),
            "dnsRecords": stack_records(domains),
            "apiUrl": "https://postal.example.com/api/v1/send/message",
        }
        self.resolver = kw.pop("resolver", None) or public_dns(self.outputs["dnsRecords"])
        self.inbox_url = kw.pop("url", f"imaps://{RCPT}@127.0.0.1:{dovecot.port}")
        self.proof = inbox.Proof(
            inbox.parse_url(self.inbox_url),
            secret,
            wait=kw.pop("wait", 10),
            context=kw.pop("context", dovecot.context()),
            **kw,
        )

    def api(self, path, body):
        if path == "send/message":
            message_id, token = next(self.ids), f"pt{len(self.sent)}"
            msg = {**body, "postal_token": token}
            self.sent.append(msg)
            built = self.build(msg, body["from"].rpartition("@")[2])
            if built is not None:
                raw, mailbox = built if isinstance(built, tuple) else (built, "INBOX")
                self.dovecot.deliver(self.rcpt, raw, mailbox)
            return {
                "status": "success",
                "data": {
                    "message_id": f"{token}@rp.{HOST}",
                    "messages": {self.rcpt: {"id": message_id, "token": token}},
                },
            }
        assert path == "messages/deliveries"
        return {"status": "success", "data": [{"id": 1, "status": "Sent", "details": "accepted", "output": "250 OK"}]}

    def __call__(self) -> tuple[int, str]:
        out, now = io.StringIO(), [0.0]
        smoke = smoke_test.SmokeTest(
            self.outputs,
            recipient=self.rcpt,
            sender=f"smoke-test@{self.outputs['sendingDomains'][0]}",
            timeout=5,
            poll=0.05,
            verify=True,
            resolver=self.resolver,
            out=out,
            progress=io.StringIO(),
            proof=self.proof,
            clock=lambda: now[0],  # a fake clock: a wait for a message that never comes polls Dovecot, sleeps not
            sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
        )
        smoke.api = self.api
        smoke.check_dns = smoke.check_https = smoke.check_smtp = lambda: None  # tested in test_smoke.py
        code = smoke.run()
        return code, out.getvalue()


def lines(out: str, status: str, name: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{status}  {name} ")]


def fix_of(out: str, line: str) -> str:
    rows = out.splitlines()
    following = rows[rows.index(line) + 1]
    assert following.startswith("      fix: ") and len(following) > 20, out
    return following


def failed(out: str) -> dict:
    """{check name: [(line, fix)]} of the FAIL lines."""
    result: dict = {}
    for line in out.splitlines():
        if line.startswith("FAIL"):
            result.setdefault(line.split()[1], []).append((line, fix_of(out, line)))
    return result


# --- every domain's message arrived authenticated and aligned ---


def test_all_pass_for_every_sending_domain(dovecot):
    run = Run(dovecot, gmail, domains=("example.com", "example.org"))
    code, out = run()
    assert code == 0, out
    assert [m["from"] for m in run.sent] == ["smoke-test@example.com", "smoke-test@example.org"]
    tokens = [m["subject"].split()[-1] for m in run.sent]
    assert all(t.startswith("pg-smoke-") for t in tokens) and len(set(tokens)) == 2
    for domain in ("example.com", "example.org"):
        (dkim_line,) = [line for line in lines(out, "PASS", "dkim") if f" {domain}: " in line]
        assert f"d={domain} s=postal-{selector(domain)} verified by dkimpy" in dkim_line
        assert "mx.google.com says dkim=pass" in dkim_line
        assert any(f"{domain}: mx.google.com: spf=pass smtp.mailfrom=pt" in x for x in lines(out, "PASS", "spf"))
        assert any(f"{domain}: dmarc=pass header.from={domain}" in x for x in lines(out, "PASS", "dmarc"))
    assert "FAIL" not in out and not lines(out, "PASS", "arc")  # Gmail's own ARC set is no forwarding
    assert dovecot.messages(RCPT) == 2  # kept unless --inbox-delete


def test_xoauth2_token_and_delete(dovecot):
    code, out = Run(dovecot, gmail, secret=("token", TOKEN), delete=True)()
    assert code == 0, out
    assert dovecot.messages(RCPT) == 0
    assert "method=XOAUTH2" in dovecot.log()


# --- each failure prints its cause and fix ---


def test_body_modified_in_transit(dovecot):
    def footer(msg, domain):
        return gmail(msg, domain).replace(b"postal.example.com.\r\n", b"postal.example.com.\r\n-- \r\nDisclaimer\r\n")

    code, out = Run(dovecot, footer)()
    (line, fix), *_ = failed(out)["dkim"]
    assert code == 1 and "the body changed in transit (dkimpy: body hash mismatch)" in line
    assert "Append footer" in fix


def test_selector_record_differs_from_the_stacks(dovecot):
    records = stack_records()
    name = f"postal-{selector('example.com')}._domainkey.example.com"
    code, out = Run(dovecot, gmail, resolver=public_dns(records, **{name: key("someone-else")[1]}))()
    ((line, fix),) = failed(out)["dkim"]
    assert code == 1 and f"verifies with the stack's key, but {name} in public DNS holds another key" in line
    assert "must be the stack's (dnsRecords)" in fix
    code, out = Run(dovecot, gmail, resolver=public_dns(records, **{name: None}))()
    ((line, fix),) = failed(out)["dkim"]
    assert f"but public DNS has 0 records at {name}" in line and "pulumi up" in fix


def test_postal_signs_with_a_key_the_stack_did_not_publish(dovecot):
    def other_selector(msg, domain):
        token, mailfrom = msg["postal_token"], f"{msg['postal_token']}@psrp.{domain}"
        signed = postal(msg["from"], RCPT, msg["subject"], token, sign_selector="postal-ZZZZZZ")
        return received(relayed(signed, RCPT), RCPT, results(domain, mailfrom), mailfrom=mailfrom)

    code, out = Run(dovecot, other_selector)()
    ((line, fix),) = failed(out)["dkim"]
    assert "signed d=example.com s=postal-ZZZZZZ, a selector the stack did not publish" in line
    assert "rerun the provision step" in fix


def test_d_not_aligned_postal_signs_with_its_return_path_key(dovecot):
    """example.org's DKIM check in Postal is not OK: Postal signs with rp.<hostname>'s key (app/lib/dkim_header.rb)."""

    def fallback(msg, domain):
        token, mailfrom = msg["postal_token"], f"{msg['postal_token']}@psrp.{domain}"
        signed = postal(msg["from"], RCPT, msg["subject"], token, sign_domain=f"rp.{HOST}", sign_selector="postal")
        said = results(domain, mailfrom, dkim_domain=f"rp.{HOST}")
        return received(relayed(signed, RCPT), RCPT, said, mailfrom=mailfrom)

    code, out = Run(dovecot, fallback, domains=("example.org",))()
    ((line, fix),) = failed(out)["dkim"]
    assert code == 1 and "no signature with d= aligned with From (d=rp.postal.example.com s=postal)" in line
    assert "Postal signed with its own return-path key" in line and "Domains → DNS records" in fix
    assert lines(out, "PASS", "dmarc")  # DMARC passes through SPF: the dkim line alone fails the proof


@pytest.mark.parametrize(
    "client_ip, cause, fix",
    [
        (RELAY_IP, "Google's relay (in _spf.google.com), which the return path's SPF does not authorise", "dig TXT"),
        (PUBLIC_IP, "the VM's own address (publicIp): it bypassed Google's relay", "smtp-relay.gmail.com"),
        ("198.51.100.9", "neither publicIp 203.0.113.10 nor Google's relay", "Received headers"),
    ],
)
def test_spf_softfail_names_the_ip_the_receiver_saw(dovecot, client_ip, cause, fix):
    def softfail(msg, domain):
        mailfrom = f"{msg['postal_token']}@psrp.{domain}"
        signed = relayed(postal(msg["from"], RCPT, msg["subject"], msg["postal_token"]), RCPT)
        said = results(domain, mailfrom, spf="softfail")
        return received(signed, RCPT, said, mailfrom=mailfrom, spf="softfail", client_ip=client_ip)

    code, out = Run(dovecot, softfail)()
    ((line, fix_line),) = failed(out)["spf"]
    assert code == 1 and f"spf=softfail for pt0@psrp.example.com from {client_ip}" in line and cause in line
    assert fix in fix_line


def test_dmarc_fails_only_through_alignment(dovecot):
    """SPF and DKIM pass, for other domains: Postal's fallback return path, Google's proxy signature."""

    def unaligned(msg, domain):
        mailfrom = f"{msg['postal_token']}@rp.{HOST}"
        proxy = "example-org.20230601.gappssmtp.com"
        signed = postal(
            msg["from"], RCPT, msg["subject"], msg["postal_token"], sign_domain=proxy, sign_selector="20230601"
        )
        said = results(domain, mailfrom, dmarc="fail", dkim_domain=proxy)
        return received(relayed(signed, RCPT), RCPT, said, mailfrom=mailfrom)

    code, out = Run(dovecot, unaligned, domains=("example.org",))()
    ((line, fix),) = failed(out)["dmarc"]
    assert code == 1 and "dmarc=fail only through alignment" in line
    assert f"dkim passed for example-org.20230601.gappssmtp.com, spf for rp.{HOST}, neither is example.org" in line
    assert "d=example.org" in fix and "psrp.example.org" in fix
    assert "not under psrp.example.org" in failed(out)["spf"][0][0]
    assert "another system signed it" in failed(out)["dkim"][0][0]


def test_a_forged_pass_below_the_receivers_fail_does_not_count(dovecot):
    forged = "Authentication-Results: mx.google.com; dkim=pass header.i=@example.com; spf=pass smtp.mailfrom=x@psrp.example.com; dmarc=pass header.from=example.com"

    def forgery(msg, domain):
        mailfrom = f"{msg['postal_token']}@psrp.{domain}"
        signed = postal(msg["from"], RCPT, msg["subject"], msg["postal_token"], extra_headers=(forged,))
        said = results(domain, mailfrom, spf="fail", dmarc="fail")
        return received(relayed(signed, RCPT), RCPT, said, mailfrom=mailfrom, spf="fail", seal=False)

    code, out = Run(dovecot, forgery)()
    assert code == 1 and "spf=fail" in failed(out)["spf"][0][0] and "dmarc=fail" in failed(out)["dmarc"][0][0]
    assert not lines(out, "PASS", "spf") and not lines(out, "PASS", "dmarc")


def test_a_forged_header_alone_is_ignored(dovecot):
    """The receiver writes no header of its own (another authserv-id): the sender's copy is not taken for it."""
    forged = "Authentication-Results: mx.google.com; dkim=pass header.i=@example.com; spf=pass smtp.mailfrom=x@psrp.example.com; dmarc=pass header.from=example.com"

    def forgery(msg, domain):
        mailfrom = f"{msg['postal_token']}@psrp.{domain}"
        signed = postal(msg["from"], RCPT, msg["subject"], msg["postal_token"], extra_headers=(forged,))
        return received(
            relayed(signed, RCPT),
            RCPT,
            results(domain, mailfrom),
            mailfrom=mailfrom,
            authserv_id="mx.example.net",
            seal=False,
        )

    code, out = Run(dovecot, forgery)()
    ((line, fix),) = failed(out)["auth"]
    assert code == 1 and "no Authentication-Results from mx.google.com added on the way (found: mx.example.net)" in line
    assert "only inside the message as sent, by mx.google.com: ignored" in line and "--authserv-id" in fix
    code, out = Run(dovecot, forgery, authserv_id="mx.example.net")()
    assert code == 0, out


def forwarded(msg, domain, *, break_chain=False):
    """Delivered to a forwarding mailbox (mx.forwarder.example seals ARC i=1), forwarded to Gmail (i=2)."""
    mailfrom = f"{msg['postal_token']}@psrp.{domain}"
    first = received(
        relayed(postal(msg["from"], RCPT, msg["subject"], msg["postal_token"]), RCPT),
        "ops@forwarder.example",
        results(domain, mailfrom),
        mailfrom=mailfrom,
        authserv_id="mx.forwarder.example",
        seal_domain="forwarder.example",
    )
    if break_chain:
        first = first.replace(b"Subject: postal-gateway", b"Subject: [fwd] postal-gateway")
    srs = f"SRS0=ab12=X7=psrp.{domain}={msg['postal_token']}@forwarder.example"
    arc = "fail" if break_chain else "pass"
    said = results(
        domain,
        srs,
        dkim_="fail" if break_chain else "pass",
        arc=f"{arc} (i=1 spf=pass spfdomain=psrp.{domain} dkim=pass dkdomain={domain} dmarc=pass fromdomain={domain})",
    )
    return received(first, RCPT, said, mailfrom=srs, client_ip="198.51.100.25")


def test_arc_forwarded_is_judged_on_the_first_receivers_results(dovecot):
    code, out = Run(dovecot, forwarded)()
    assert code == 0, out
    (arc,) = lines(out, "PASS", "arc")
    assert "forwarded: ARC chain of 2 verified by dkimpy, mx.google.com says arc=pass" in arc
    assert "first receiver's results (mx.forwarder.example, sealed by forwarder.example)" in arc
    assert any("ARC i=1: spf=pass smtp.mailfrom=pt0@psrp.example.com" in x for x in lines(out, "PASS", "spf"))


def test_a_broken_arc_chain_fails(dovecot):
    code, out = Run(dovecot, lambda m, d: forwarded(m, d, break_chain=True))()
    ((line, fix),) = failed(out)["arc"]
    assert code == 1 and "forwarded, but the ARC chain does not hold" in line and "arc=fail" in line
    assert "outside the Workspace" in fix


def test_internal_delivery_is_said_and_not_taken_for_proof(dovecot):
    """A recipient in a sending domain: Google may deliver inside the Workspace, with no SPF/DMARC check."""

    def internal(msg, domain):
        signed = relayed(postal(msg["from"], msg["to"][0], msg["subject"], msg["postal_token"]), msg["to"][0])
        d = f"dkim=pass header.i=@{domain} header.s=postal-{selector(domain)} header.b=AbCdEfGh"
        return received(signed, msg["to"][0], d, mailfrom=f"{msg['postal_token']}@psrp.{domain}", seal=False)

    code, out = Run(
        dovecot, internal, rcpt="ops@example.com", url=f"imaps://ops@example.com@127.0.0.1:{dovecot.port}"
    )()
    assert code == 1
    assert "NOTE  inbox     ops@example.com is in a sending domain" in out
    ((line, fix),) = failed(out)["spf"]
    assert "delivered internally, unchecked" in line and "outside the Workspace" in fix


# --- the mailbox ---


def test_no_message_within_the_wait(dovecot):
    code, out = Run(dovecot, lambda m, d: None, wait=0.3)()
    ((line, fix),) = failed(out)["inbox"]
    assert code == 1 and "not in INBOX after 0s, nor in a spam folder" in line
    assert "Email log search" in fix and "--inbox-wait" in fix


def test_a_message_in_the_spam_folder(dovecot):
    code, out = Run(dovecot, lambda m, d: (gmail(m, d), "Junk"), wait=0.3)()
    ((line, fix),) = failed(out)["inbox"]
    assert code == 1 and "arrived in Junk (spam), not INBOX" in line
    assert lines(out, "PASS", "dkim")  # judged all the same


def test_a_named_mailbox(dovecot):
    url = f"imaps://{RCPT.replace('@', '%40')}@127.0.0.1:{dovecot.port}/Smoke%20tests"
    code, out = Run(dovecot, lambda m, d: (gmail(m, d), "Smoke tests"), url=url)()
    assert code == 0 and "arrived in Smoke tests" in out, out
    code, out = Run(dovecot, gmail, url=url.replace("Smoke%20tests", "Nowhere"))()
    ((line, fix),) = failed(out)["inbox"]
    assert "no mailbox 'Nowhere'" in line and "existing mailbox" in fix


def test_imap_login_refused(dovecot):
    code, out = Run(dovecot, gmail, secret=("password", "wrong"))()
    ((line, fix),) = failed(out)["inbox"]
    assert code == 1 and f"login as {RCPT} refused: [AUTHENTICATIONFAILED]" in line
    assert "app password" in fix and "PG_INBOX_TOKEN" in fix
    code, out = Run(dovecot, gmail, secret=("token", "ya29.expired"))()
    ((line, fix),) = failed(out)["inbox"]
    assert "refused" in line and "https://mail.google.com/ scope" in fix


def test_an_invalid_certificate_is_refused_before_anything_is_sent(dovecot):
    before = len(dovecot.settled_log())
    untrusted = inbox.ssl.create_default_context()  # the system's CAs: the trustme CA is not among them
    code, out = Run(dovecot, lambda m, d: None, context=untrusted)()
    ((line, fix),) = failed(out)["inbox"]
    assert code == 1 and "TLS certificate not valid (unable to get local issuer certificate); nothing was sent" in line
    assert "imap.gmail.com" in fix
    new = dovecot.settled_log(since=before, want="TLS handshaking")[before:]
    # one connection, closed during the TLS handshake: no LOGIN or AUTHENTICATE reached the server. Dovecot
    # 2.3.19 says why without auth in one of two ways, depending on whether its login process had reached
    # the auth service yet (client_get_extra_disconnect_reason, src/login-common/client-common.c)
    no_auth = ("(no auth attempts in ", "(disconnected before auth was ready, ")
    assert len(new) == 1 and any(r in new[0] for r in no_auth) and "TLS handshaking" in new[0], new


# --- the URL and the credentials ---


@pytest.mark.parametrize(
    "url, want",
    [
        ("imaps://ops@example.com@imap.gmail.com", inbox.Inbox("ops@example.com", "imap.gmail.com", 993, "INBOX")),
        (
            "imaps://ops%40example.com@imap.gmail.com:1993/Smoke%20tests",
            inbox.Inbox("ops@example.com", "imap.gmail.com", 1993, "Smoke tests"),
        ),
    ],
)
def test_inbox_url(url, want):
    assert inbox.parse_url(url) == want


@pytest.mark.parametrize(
    "url, message",
    [
        ("imap://ops@example.com@imap.gmail.com", "must be an imaps:// URL"),
        ("imaps://imap.gmail.com", "needs the login"),
        ("imaps://ops:pw@imap.gmail.com", "no password in the URL"),
        ("imaps://ops@imap.gmail.com:99999", "bad host or port"),
    ],
)
def test_bad_inbox_urls_are_refused_before_anything_runs(url, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PG_INBOX_PASSWORD", PASSWORD)
    path = tmp_path / "outputs.json"
    path.write_text(
        json.dumps({"webUrl": "x", "apiUrl": "x", "apiKey": "k", "sendingDomains": ["example.com"], "hostname": HOST})
    )
    assert smoke_test.main(["--outputs", str(path), "--skip-smtp", "--inbox", url]) == 2
    assert message in capsys.readouterr().err


def test_inbox_and_bounce_exclude_each_other(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PG_INBOX_PASSWORD", PASSWORD)
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(smoke_outputs(1, dnsRecords=stack_records())))
    args = ["--outputs", str(path), "--skip-smtp", "--bounce", "--inbox", f"imaps://{RCPT}@imap.example.net"]
    assert smoke_test.main(args) == 2
    assert "--inbox and --bounce exclude each other" in capsys.readouterr().err


def test_credentials_come_from_the_environment():
    assert inbox.credentials({"PG_INBOX_TOKEN": "t ", "PG_INBOX_PASSWORD": "p"}) == ("token", "t")
    assert inbox.credentials({"PG_INBOX_PASSWORD": "p"}) == ("password", "p")
    with pytest.raises(ValueError, match="PG_INBOX_PASSWORD .* or PG_INBOX_TOKEN"):
        inbox.credentials({})


def test_the_full_smoke_test_with_inbox(dovecot, tmp_path, capsys, monkeypatch, certs_and_postal):
    """main() end to end: --inbox sets the recipient, reads PG_INBOX_PASSWORD, trusts the system's CAs."""
    server, ca_bundle, outputs = certs_and_postal
    server.on_send = lambda body: dovecot.deliver(RCPT, gmail({**body, "postal_token": "t"}, "example.com"))
    monkeypatch.setenv("PG_INBOX_PASSWORD", PASSWORD)
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    args = [
        "--outputs",
        str(path),
        "--skip-smtp",
        "--poll",
        "0.05",
        "--ca-bundle",
        ca_bundle,
        "--inbox",
        f"imaps://{RCPT}@127.0.0.1:{dovecot.port}",
    ]
    code = smoke_test.main(args, resolver=public_dns(outputs["dnsRecords"]))
    out = capsys.readouterr().out
    assert server.sent[0]["to"] == [RCPT]
    assert code == 0, out
    assert lines(out, "PASS", "inbox") and lines(out, "PASS", "dkim")


def test_dkimpy_verifies_what_the_test_signs():
    """The control: a message signed here verifies against the record made like the stack's."""
    raw = postal("a@example.com", RCPT, "s", "pt")
    name = f"postal-{selector('example.com')}._domainkey.example.com."
    assert dkim.verify(raw, dnsfunc=lambda n, timeout=5: key("example.com")[1].encode() if n.decode() == name else None)
