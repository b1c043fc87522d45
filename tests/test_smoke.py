"""scripts/smoke_test.py against a local HTTPS server that plays Postal and a stub DNS resolver."""

from __future__ import annotations

import io
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest
from certs import openssl_self_signed
from fake_postal_smtp import FakePostalSMTP
from fake_relay import closed_port
from relay_scenarios import DOC, POSTAL_ONLY, SCENARIOS, render_doc

from scripts import smoke_test

KEY = "k3y-0f-the-stack"
DKIM = "v=DKIM1; t=s; h=sha256; p=MIIBIjANBgkq" + "A" * 300 + ";"
RECORDS = [
    {"name": "postal.example.com", "type": "A", "content": "203.0.113.10"},
    {"name": "spf.postal.example.com", "type": "TXT", "content": "v=spf1 include:_spf.google.com ~all"},
    {"name": "rp.postal.example.com", "type": "MX", "content": "postal.example.com"},
    {"name": "example.com", "type": "TXT", "content": "v=spf1 include:spf.postal.example.com ~all"},
    {"name": "postal-ABCDEF._domainkey.example.com", "type": "TXT", "content": DKIM},
    {"name": "psrp.example.com", "type": "CNAME", "content": "rp.postal.example.com"},
]


class Resolver:
    """dnspython's resolve() over a table; real rdata objects, real exceptions."""

    def __init__(self, records=RECORDS):
        self.table: dict = {}
        for r in records:
            self.add(r["name"], r["type"], r["content"])
        self.add("_spf.google.com", "TXT", "v=spf1 include:_netblocks.google.com ~all")
        self.add("example.com", "TXT", "google-site-verification=abc")

    def add(self, name, rdtype, content):
        text = (
            " ".join(f'"{content[i : i + 255]}"' for i in range(0, len(content), 255))
            if rdtype == "TXT"
            else content + ("." if rdtype in ("MX", "CNAME") and not content.endswith(".") else "")
        )
        if rdtype == "MX":
            text = "10 " + text
        self.table.setdefault((name, rdtype), []).append(
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
        )

    def resolve(self, name, rdtype):
        value = self.table.get((name, rdtype))
        if value == "timeout":
            raise dns.exception.Timeout()
        if not value:
            raise dns.resolver.NXDOMAIN()
        return value


class Postal(BaseHTTPRequestHandler):
    """Postal's legacy API as far as the smoke test uses it; behaviour set on the server."""

    def log_message(self, *args):
        pass

    def reply(self, code, body, content_type="application/json"):
        data = (json.dumps(body) if content_type == "application/json" else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply(self.server.login_status, "<html>Login</html>", "text/html")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        if srv.blocked:
            return self.reply(403, "Blocked host", "text/plain")
        key = self.headers.get("X-Server-API-Key", "")  # LegacyAPI::BaseController#authenticate_as_server
        if not key.strip():
            return self.reply(
                200,
                {"status": "error", "data": {"code": "AccessDenied", "message": "Must be authenticated as a server."}},
            )
        if key != KEY:
            return self.reply(
                200,
                {
                    "status": "error",
                    "data": {
                        "code": "InvalidServerAPIKey",
                        "token": key,
                        "message": "The API token provided in X-Server-API-Key was not valid.",
                    },
                },
            )
        if self.path == "/api/v1/send/message":
            srv.sent.append(body)
            if not body["from"].endswith("@example.com"):
                return self.reply(
                    200,
                    {
                        "status": "error",
                        "data": {
                            "code": "UnauthenticatedFromAddress",
                            "message": "The From address is not authorised to send mail from this server",
                        },
                    },
                )
            if srv.on_send:  # the relay took it and the recipient's server filed it (tests/test_inbox.py)
                srv.on_send(body)
            # keyed by the bare address: Postal::Helpers.strip_name_from_address (lib/postal/helpers.rb)
            bare = re.sub(r"\(.+?\)", "", re.sub(r">.*", "", re.sub(r".*<", "", body["to"][0]))).strip()
            return self.reply(
                200,
                {
                    "status": "success",
                    "data": {"message_id": "abc@rp.postal.example.com", "messages": {bare: {"id": 42, "token": "t"}}},
                },
            )
        if self.path == "/api/v1/messages/deliveries" and body == {"id": 42}:
            deliveries = srv.deliveries.pop(0) if len(srv.deliveries) > 1 else srv.deliveries[0]
            if isinstance(deliveries, dict):
                return self.reply(
                    200,
                    {
                        "status": "error",
                        "data": {"code": deliveries["error"], "message": "No message found matching provided ID"},
                    },
                )
            return self.reply(200, {"status": "success", "data": deliveries})
        self.reply(404, "not found", "text/plain")


def delivery(status, output, details=""):
    return [{"id": 1, "status": status, "details": details, "output": output, "sent_with_ssl": True}]


SENT = delivery(
    "Sent", "250 2.0.0 OK 1700000000 abc - gsmtp", "Message for ops@example.com accepted by smtp-relay.gmail.com:587"
)


def make_cert(tmp, days):
    return openssl_self_signed(tmp / f"cert{days}.pem", tmp / f"key{days}.pem", "localhost", days)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("certs")
    return {"good": make_cert(tmp, 90), "expiring": make_cert(tmp, 3)}


def serve(cert, key):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Postal)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.login_status, server.blocked, server.sent, server.deliveries = 200, False, [], [[], SENT]
    server.on_send = None
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    return server


@pytest.fixture
def postal(certs):
    server = serve(*certs["good"])
    yield server
    server.shutdown()


SMTP_KEY = "smtp-k3y-0f-the-stack"
SMTP = {"port": 0}  # the module's fake Postal SMTP server (postal_smtp)


def server_context(cert, key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture(scope="module", autouse=True)
def postal_smtp(certs):
    """Postal's SMTP intake with TLS on (the web certificate) and the stack's SMTP credential."""
    server = FakePostalSMTP({("postal-gateway", "gateway"): [SMTP_KEY]}, context=server_context(*certs["good"]))
    SMTP["port"] = server.port
    yield server
    server.close()


def outputs(port, **changes):
    base = {
        "publicIp": "203.0.113.10",
        "hostname": "postal.example.com",
        "webUrl": f"https://localhost:{port}",
        "apiUrl": f"https://localhost:{port}/api/v1/send/message",
        "apiKey": KEY,
        "sendingDomains": ["example.com"],
        "adminEmail": "ops@example.com",
        "dnsRecords": RECORDS,
        "smtpHost": "localhost",
        "smtpPort": SMTP["port"],
        "smtpUsername": "postal-gateway/gateway",
        "smtpPassword": SMTP_KEY,
    }
    return {**base, **changes}


def smoke(tmp_path, capsys, port, certs, resolver=None, extra=(), **changes):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs(port, **changes)))
    # the delivery poll stops at Sent: a long --timeout costs nothing and holds on a loaded machine
    args = ["--outputs", str(path), "--poll", "0.01", "--timeout", "60", *extra]
    if not {"--insecure", "--no-ca", "--ca-bundle"} & set(extra):
        args += ["--ca-bundle", str(certs["good"][0])]
    args = [a for a in args if a != "--no-ca"]
    code = smoke_test.main(args, resolver=resolver or Resolver())
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def failures(out):
    """FAIL lines, each with the fix printed under it."""
    lines = out.splitlines()
    result = []
    for i, line in enumerate(lines):
        if line.startswith("FAIL"):
            assert lines[i + 1].startswith("      fix: ") and len(lines[i + 1]) > 20, out
            result.append((line, lines[i + 1]))
    return result


def test_a_healthy_gateway_passes_and_exits_0(tmp_path, capsys, postal, certs):
    code, out, err = smoke(tmp_path, capsys, postal.server_port, certs)
    assert code == 0, out
    assert failures(out) == []
    assert "PASS  dns       A postal.example.com -> 203.0.113.10" in out
    assert "PASS  spf       example.com: example.com -> spf.postal.example.com -> _spf.google.com" in out
    assert "certificate valid, expires in 8" in out or "certificate valid, expires in 9" in out
    assert "PASS  send      accepted as message 42" in out
    assert "PASS  delivery  Sent" in out and out.rstrip().endswith("delivered")
    assert "waiting for delivery: Pending" in err  # progress while the worker is busy
    sent = postal.sent[0]
    assert sent["to"] == ["ops@example.com"] and sent["from"] == "smoke-test@example.com"


def test_smtp_intake_offers_starttls_and_takes_the_stacks_credential_by_cram_md5(
    tmp_path, capsys, postal, certs, postal_smtp
):
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs)
    assert code == 0, out
    assert (
        f"PASS  smtp      localhost:{postal_smtp.port} STARTTLS, certificate valid for localhost, expires in 8" in out
        or "expires in 9" in out
    ) and "AUTH CRAM-MD5 as postal-gateway/gateway accepted (235)" in out
    commands = postal_smtp.commands[postal_smtp.port]
    assert [c.split()[0].upper() for c in commands[:4]] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]


@pytest.mark.parametrize(
    "changes,line,fix",
    [
        (
            {"smtpUsername": "postal-gateway"},
            "AUTH CRAM-MD5 as 'postal-gateway' refused: 535 Denied",
            "smtpUsername must be <organization>/<server>",
        ),  # the username before <org>/<server>: no server found
        ({"smtpPassword": "not-the-key"}, "refused: 535 Denied", "rerun the provision step"),
        ({"smtpPort": 1}, "localhost:1: ", "smtpSourceRanges"),
    ],
)
def test_every_smtp_failure_prints_its_fix(tmp_path, capsys, postal, certs, changes, line, fix):
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs, **changes)
    ((fail, fix_line),) = [f for f in failures(out) if f[0].startswith("FAIL  smtp")]
    assert code == 1 and line in fail and fix in fix_line
    assert "PASS  delivery" in out  # the other checks still ran


def test_smtp_without_starttls_or_with_a_certificate_for_another_name(tmp_path, capsys, postal, certs):
    plain = FakePostalSMTP({}, tls_enabled=False)
    other = FakePostalSMTP({})  # its certificate is for postal.example.com, not localhost
    other.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.trusted_ca.issue_cert("other.example.com").configure_cert(other.tls)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(certs["good"][0].read_bytes() + other.trusted_ca.cert_pem.bytes())
    try:
        _, out, _ = smoke(tmp_path, capsys, postal.server_port, certs, smtpPort=plain.port)
        _, out2, _ = smoke(
            tmp_path, capsys, postal.server_port, certs, smtpPort=other.port, extra=("--ca-bundle", str(bundle))
        )
    finally:
        plain.close()
        other.close()
    ((fail, fix),) = [f for f in failures(out) if f[0].startswith("FAIL  smtp")]
    assert "offers no STARTTLS" in fail and "smtp_server.tls_enabled" in fix
    ((fail, fix),) = [f for f in failures(out2) if f[0].startswith("FAIL  smtp")]
    assert "certificate not valid for localhost (Hostname mismatch" in fail and "web certificate" in fix


def test_skip_smtp_for_a_machine_outside_smtp_source_ranges(tmp_path, capsys, postal, certs):
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs, smtpPort=1, extra=("--skip-smtp",))
    assert code == 0 and "SKIP  smtp      --skip-smtp" in out and "FAIL" not in out


def test_a_recipient_with_a_display_name(tmp_path, capsys, postal, certs):
    code, out, _ = smoke(
        tmp_path, capsys, postal.server_port, certs, extra=("--recipient", "Ops Team <ops@example.com>")
    )
    assert code == 0 and "PASS  send      accepted as message 42" in out, out
    assert postal.sent[0]["to"] == ["Ops Team <ops@example.com>"]


def mutate(resolver, name, rdtype, value):
    resolver.table[(name, rdtype)] = value
    return resolver


@pytest.mark.parametrize(
    "setup,line,fix",
    [
        (lambda r: mutate(r, "psrp.example.com", "CNAME", []), "CNAME psrp.example.com: missing", "run pulumi up"),
        (
            lambda r: mutate(
                r,
                "postal.example.com",
                "A",
                Resolver([{"name": "x", "type": "A", "content": "198.51.100.1"}]).table[("x", "A")],
            ),
            "A postal.example.com: '198.51.100.1', want '203.0.113.10'",
            "remove it and run pulumi up",
        ),
        (
            lambda r: (r.add("postal-ABCDEF._domainkey.example.com", "TXT", "v=DKIM1; p=old"), r)[1],
            "2 TXT records, Postal needs exactly one",
            "delete the extra TXT records",
        ),
        (lambda r: mutate(r, "rp.postal.example.com", "MX", "timeout"), "lookup failed (Timeout)", "--nameserver"),
        (
            lambda r: mutate(
                r,
                "spf.postal.example.com",
                "TXT",
                Resolver([{"name": "x", "type": "TXT", "content": "v=spf1 ip4:203.0.113.10 ~all"}]).table[("x", "TXT")],
            ),
            "SPF never includes _spf.google.com",
            "add include:spf.postal.example.com",
        ),
        (
            lambda r: (r.add("example.com", "TXT", "v=spf1 -all"), r)[1],
            "example.com has 2 SPF records",
            "publish exactly one v=spf1 record",
        ),
        (
            lambda r: mutate(r, "spf.postal.example.com", "TXT", "timeout"),
            "example.com: lookup of spf.postal.example.com failed (Timeout)",
            "--nameserver",
        ),
    ],
)
def test_every_dns_failure_prints_its_fix(tmp_path, capsys, postal, certs, setup, line, fix):
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs, resolver=setup(Resolver()))
    assert code == 1
    [(fail_line, fix_line)] = [f for f in failures(out) if line in f[0]]
    assert line in fail_line and fix in fix_line
    assert "PASS  delivery" in out and "NOT delivered" not in out  # the other checks still ran


def test_untrusted_certificate(tmp_path, capsys, postal, certs):
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs, extra=("--no-ca",))
    (fail, fix), *_ = failures(out)
    assert code == 1 and "certificate not trusted (self-signed certificate)" in fail
    assert "tls=letsencrypt" in fix and "--ca-bundle" in fix


def test_insecure_skips_verification_only(tmp_path, capsys, postal, certs):
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs, extra=("--insecure",))
    assert code == 0, out


def test_expiring_certificate(tmp_path, capsys, certs):
    server = serve(*certs["expiring"])
    try:
        code, out, _ = smoke(
            tmp_path, capsys, server.server_port, certs, extra=("--ca-bundle", str(certs["expiring"][0]))
        )
    finally:
        server.shutdown()
    assert code == 1 and "certificate expires in 3 days" in failures(out)[0][0]


def test_unreachable_web(tmp_path, capsys, certs):
    with closed_port() as closed:
        code, out, _ = smoke(tmp_path, capsys, closed.getsockname()[1], certs)
    fails = failures(out)
    assert code == 1 and "unreachable" in fails[0][0] and "webSourceRanges" in fails[0][1]
    assert "NOT delivered" in out


def test_postal_down_behind_caddy(tmp_path, capsys, postal, certs):
    postal.login_status = 502
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs)
    ((fail, fix),) = failures(out)
    assert code == 1 and "/login answered 502" in fail and "postal logs web" in fix


@pytest.mark.parametrize(
    "changes,code_text,fix",
    [
        ({"apiKey": "wrong"}, "InvalidServerAPIKey", "rerun the provision step"),
        (
            {"apiKey": " "},
            "AccessDenied: Must be authenticated as a server.",
            "X-Server-API-Key header was missing or blank",
        ),
        ({"sendingDomains": ["elsewhere.org"]}, "UnauthenticatedFromAddress", "send from one of sendingDomains"),
        ({"blocked": True}, "HTTP 403: Blocked host", "postal logs web"),
    ],
)
def test_every_send_failure_prints_its_fix(tmp_path, capsys, postal, certs, changes, code_text, fix):
    postal.blocked = changes.pop("blocked", False)
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs, resolver=Resolver(), **changes)
    send = [f for f in failures(out) if f[0].startswith("FAIL  send")]
    assert code == 1 and len(send) == 1
    assert code_text in send[0][0] and fix in send[0][1]
    assert "delivery" not in out.split("FAIL  send")[1].split("\n", 2)[2]


def test_the_recorded_texts_are_what_postal_stores(recorded):  # tests/conftest.py
    for sid, scenario in SCENARIOS.items():
        assert recorded[sid]["status"] == scenario["postal"], (sid, recorded[sid])
        assert len(recorded[sid]["output"] or "") <= 250 and len(recorded[sid]["details"]) <= 250
    # Postal's Net::SMTP patch keeps the whole multi-line reply (then cut to 250 characters)
    assert recorded["invalid-credentials"]["output"].startswith(
        "550-5.7.1 Invalid credentials for relay [203.0.113.10]. The IP address you've\n550-5.7.1 registered"
    )
    connect = [sid for sid, d in recorded.items() if d["details"].startswith("No SMTP servers were available")]
    assert all(
        recorded[sid]["details"] == "No SMTP servers were available for example.com. Tried smtp-relay.gmail.com."
        for sid in connect
    )
    assert recorded["connect-timeout"]["output"] == "execution expired"
    assert "certificate verify failed" in recorded["untrusted-certificate"]["output"]
    assert recorded["reset-during-handshake"]["output"] == "Connection reset by peer - SSL_connect"
    # a 421 at EHLO is lost: net-smtp retries with HELO on the closed connection
    assert "421" not in recorded["ehlo-throttled"]["output"]


CASES = {
    **{sid: (s["diagnosis"], None) for sid, s in SCENARIOS.items() if "diagnosis" in s},
    **{sid: (s["diagnosis"], s["delivery"]) for sid, s in POSTAL_ONLY.items()},
}


def poll(deliveries, timeout=300.0):
    """SmokeTest.wait_for_delivery over a scripted deliveries API and a fake clock: (output, polls, seconds)."""
    now, polls, out = [0.0], [], io.StringIO()
    smoke = smoke_test.SmokeTest(
        outputs(0),
        recipient="ops@example.com",
        sender="smoke-test@example.com",
        timeout=timeout,
        poll=5,
        verify=True,
        resolver=None,
        out=out,
        progress=io.StringIO(),
        clock=lambda: now[0],
        sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
    )
    smoke.api = lambda path, body: (
        polls.append(body),
        {"status": "success", "data": deliveries[min(len(polls), len(deliveries)) - 1]},
    )[1]
    smoke.wait_for_delivery(42)
    return out.getvalue(), len(polls), now[0]


@pytest.mark.parametrize("sid", CASES)
def test_every_delivery_postal_records_is_diagnosed_with_its_fix(recorded, sid):
    key, delivery = CASES[sid]
    delivery = {"id": 1, "sent_with_ssl": True, "output": None, **(delivery or recorded[sid])}
    diagnosis = smoke_test.DIAGNOSES[key]
    out, polls, waited = poll([[], [delivery]])
    ((fail, fix_line),) = failures(out)
    names = smoke_test.names_for(delivery, outputs(0))
    if diagnosis.stop or delivery["status"] != "SoftFail":
        assert fail.startswith(f"FAIL  delivery  {delivery['status']}: ") and polls == 2, fail  # stopped at once
    else:  # temporary: Postal's retry may still deliver it, so the test waits for it until --timeout
        assert fail.startswith("FAIL  delivery  still SoftFail after 300s: ") and waited >= 300, fail
    assert diagnosis.headline.format(**names) in fail and diagnosis.fix.format(**names) in fix_line
    said = (delivery["output"] or delivery["details"]).splitlines()[0]
    assert smoke_test.fold(said)[:60] in fail  # what Google or Postal said
    if delivery["status"] == "SoftFail":
        assert "Postal will retry" in fail


def test_the_allowlist_fix_names_the_address_google_saw(recorded):
    out, _, _ = poll([[recorded["relay-denied-other-ip"]]])
    ((fail, fix),) = failures(out)
    assert "mail relay denied [198.51.100.7]" in fail
    assert "add 198.51.100.7 (the address Google saw; publicIp is 203.0.113.10" in fix
    out, _, _ = poll([[recorded["invalid-credentials"]]])
    assert "add 203.0.113.10 in Google Admin console" in failures(out)[0][1]


def test_answers_that_are_not_the_relay_allowlist(recorded):
    """421 IP not in whitelist for RCPT domain is the recipient domain's gateway; a close once the session was
    up (Postal: "An error occurred while sending", end of file reached) is not a HELO or allowlist problem."""
    out, _, _ = poll([[recorded["ip-not-in-whitelist"]]])
    ((fail, fix),) = failures(out)
    assert "recipient's domain takes mail only from" in fail and "not the relay allowlist" in fail
    assert "Only accept mail from the specified IP addresses" not in fix and "--recipient" in fix
    out, _, _ = poll([[recorded["close-after-mail-from"]]])
    ((fail, fix),) = failures(out)
    assert "An error occurred while sending" in fail and "end of file reached" in fail
    assert "after it had accepted the session" in fail and "allowlisted" not in fix and "greets" not in fix
    out, _, _ = poll([[recorded["close-after-greeting"]]])
    ((fail, fix),) = failures(out)
    assert "No SMTP servers were available" in fail and "during the greeting" in fail and "allowlisted" in fix


def test_a_delivery_that_postal_retries_into_sent_passes(recorded):
    out, polls, _ = poll([[], [recorded["peak-limit"]], [recorded["peak-limit"], recorded["accepted"]]])
    assert out.startswith("PASS  delivery  Sent after 10s: Postal recorded: Message for ops@example.com accepted")
    assert polls == 3


def test_every_diagnosis_has_a_scenario():
    assert set(smoke_test.DIAGNOSES) - {key for key, _ in CASES.values()} <= {"held", "bounced"}


def test_an_api_error_while_polling_is_reported_not_waited_out(tmp_path, capsys, postal, certs):
    postal.deliveries = [{"error": "MessageNotFound"}]
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs)
    ((fail, fix),) = failures(out)
    assert code == 1 and "cannot read the deliveries: MessageNotFound" in fail and "postal logs web" in fix


def test_a_message_that_never_leaves_times_out(tmp_path, capsys, postal, certs):
    postal.deliveries = [delivery("SoftFail", "451 4.3.0 Temporary server error")]
    code, out, err = smoke(tmp_path, capsys, postal.server_port, certs, extra=("--timeout", "0.3"))
    ((fail, fix),) = failures(out)
    # the seconds are the poll's own wall time: 0 on an idle machine, more on a loaded one
    assert code == 1 and re.search(r"still SoftFail after \d+s: the relay deferred the message", fail), fail
    assert "Postal will retry; Postal recorded: " in fail and "the relay said: 451 4.3.0 Temporary server error" in fail
    assert "Postal retries" in fix
    assert "waiting for delivery: SoftFail" in err


def test_outputs_from_the_environment_and_missing_outputs(tmp_path, capsys, monkeypatch, postal, certs):
    monkeypatch.setenv("POSTAL_GATEWAY_OUTPUTS", json.dumps(outputs(postal.server_port)))
    assert smoke_test.main(["--ca-bundle", str(certs["good"][0]), "--poll", "0.01"], resolver=Resolver()) == 0
    monkeypatch.setenv("POSTAL_GATEWAY_OUTPUTS", json.dumps({"publicIp": "203.0.113.10"}))
    assert smoke_test.main([], resolver=Resolver()) == 2
    assert "the outputs lack webUrl, apiUrl, apiKey" in capsys.readouterr().err


def test_without_pulumi_it_says_how_to_get_outputs(monkeypatch, tmp_path):
    monkeypatch.delenv("POSTAL_GATEWAY_OUTPUTS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        smoke_test.main(["--stack", "prod"])
    assert "pulumi login" in str(exit_.value) and "--outputs FILE" in str(exit_.value)


def test_the_troubleshooting_doc_has_the_generated_table():
    assert render_doc(DOC.read_text()) == DOC.read_text(), "run: python -m tests.relay_scenarios"


def test_the_smtplib_example_in_docs_sends_over_starttls_with_the_stack_credential(monkeypatch, certs, postal_smtp):
    doc = (DOC.parent / "sending.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["good"][0]))  # ssl.create_default_context() trusts it
    for name, value in {
        "SMTP_HOST": "localhost",
        "SMTP_PORT": str(postal_smtp.port),
        "SMTP_USERNAME": "postal-gateway/gateway",
        "SMTP_PASSWORD": SMTP_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    before, seen = len(postal_smtp.received), len(postal_smtp.commands[postal_smtp.port])
    exec(compile(code, "docs/sending.md", "exec"), {})
    ((mail_from, rcpt_to, data),) = postal_smtp.received[before:]
    assert (mail_from, rcpt_to) == ("<noreply@rdo-dev.com>", ["<artist@example.com>"])
    assert "Subject: Render complete: shot 001" in data
    commands = [c.split()[0].upper() for c in postal_smtp.commands[postal_smtp.port][seen:]]
    assert commands[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]  # the password never crosses in clear


def test_a_fix_on_the_vm_says_how_to_get_there_through_iap(tmp_path, capsys, postal, certs):
    postal.blocked = True  # the send fails with a fix to read on the VM
    code, out, _ = smoke(
        tmp_path, capsys, postal.server_port, certs, instanceName="postal-vm-1a2b3c4", sshUser="postal-ops"
    )
    assert code == 1 and any("on the VM" in fix for _, fix in failures(out))
    assert out.splitlines()[-1].endswith("NOT delivered")  # the verdict stays the last line
    assert out.splitlines()[-2] == (
        "on the VM: gcloud compute ssh postal-ops@postal-vm-1a2b3c4 --tunnel-through-iap --zone <gcp:zone> "
        "--ssh-key-file ~/.ssh/postal-gateway (docs/runbook.md, SSH in)"
    )


def test_a_passing_run_names_no_vm_command(tmp_path, capsys, postal, certs):
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs, instanceName="postal-vm-1a2b3c4")
    assert code == 0 and "gcloud compute ssh" not in out
