"""scripts/smoke_test.py against a local HTTPS server that plays Postal and a stub DNS resolver."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest

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
        text = " ".join(f'"{content[i:i + 255]}"' for i in range(0, len(content), 255)) if rdtype == "TXT" \
            else content + ("." if rdtype in ("MX", "CNAME") and not content.endswith(".") else "")
        if rdtype == "MX":
            text = "10 " + text
        self.table.setdefault((name, rdtype), []).append(
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text))

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
        if self.headers.get("X-Server-API-Key") != KEY:
            return self.reply(200, {"status": "error", "data": {"code": "InvalidServerAPIKey",
                                                               "message": "The API token provided was not valid."}})
        if self.path == "/api/v1/send/message":
            srv.sent.append(body)
            if not body["from"].endswith("@example.com"):
                return self.reply(200, {"status": "error", "data": {
                    "code": "UnauthenticatedFromAddress",
                    "message": "The From address is not authorised to send mail from this server"}})
            return self.reply(200, {"status": "success", "data": {
                "message_id": "abc@rp.postal.example.com", "messages": {body["to"][0]: {"id": 42, "token": "t"}}}})
        if self.path == "/api/v1/messages/deliveries" and body == {"id": 42}:
            deliveries = srv.deliveries.pop(0) if len(srv.deliveries) > 1 else srv.deliveries[0]
            if isinstance(deliveries, dict):
                return self.reply(200, {"status": "error", "data": {"code": deliveries["error"],
                                                                   "message": "No message found matching provided ID"}})
            return self.reply(200, {"status": "success", "data": deliveries})
        self.reply(404, "not found", "text/plain")


def delivery(status, output, details=""):
    return [{"id": 1, "status": status, "details": details, "output": output, "sent_with_ssl": True}]


SENT = delivery("Sent", "250 2.0.0 OK 1700000000 abc - gsmtp",
                "Message for ops@example.com accepted by smtp-relay.gmail.com:587")


def make_cert(tmp, days):
    cert, key = tmp / f"cert{days}.pem", tmp / f"key{days}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", str(days), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    return cert, key


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
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    return server


@pytest.fixture
def postal(certs):
    server = serve(*certs["good"])
    yield server
    server.shutdown()


def outputs(port, **changes):
    base = {"publicIp": "203.0.113.10", "hostname": "postal.example.com", "webUrl": f"https://localhost:{port}",
            "apiUrl": f"https://localhost:{port}/api/v1/send/message", "apiKey": KEY,
            "sendingDomains": ["example.com"], "adminEmail": "ops@example.com", "dnsRecords": RECORDS}
    return {**base, **changes}


def smoke(tmp_path, capsys, port, certs, resolver=None, extra=(), **changes):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs(port, **changes)))
    args = ["--outputs", str(path), "--poll", "0.01", "--timeout", "0.3", *extra]
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


def mutate(resolver, name, rdtype, value):
    resolver.table[(name, rdtype)] = value
    return resolver


@pytest.mark.parametrize("setup,line,fix", [
    (lambda r: mutate(r, "psrp.example.com", "CNAME", []), "CNAME psrp.example.com: missing", "run pulumi up"),
    (lambda r: mutate(r, "postal.example.com", "A", Resolver([{"name": "x", "type": "A",
                                                               "content": "198.51.100.1"}]).table[("x", "A")]),
     "A postal.example.com: '198.51.100.1', want '203.0.113.10'", "remove it and run pulumi up"),
    (lambda r: (r.add("postal-ABCDEF._domainkey.example.com", "TXT", "v=DKIM1; p=old"), r)[1],
     "2 TXT records, Postal needs exactly one", "delete the extra TXT records"),
    (lambda r: mutate(r, "rp.postal.example.com", "MX", "timeout"), "lookup failed (Timeout)", "--nameserver"),
    (lambda r: mutate(r, "spf.postal.example.com", "TXT", Resolver([{"name": "x", "type": "TXT",
                                                                     "content": "v=spf1 ip4:203.0.113.10 ~all"}]
                                                                   ).table[("x", "TXT")]),
     "SPF never includes _spf.google.com", "add include:spf.postal.example.com"),
    (lambda r: (r.add("example.com", "TXT", "v=spf1 -all"), r)[1], "example.com has 2 SPF records",
     "publish exactly one v=spf1 record"),
    (lambda r: mutate(r, "spf.postal.example.com", "TXT", "timeout"),
     "example.com: lookup of spf.postal.example.com failed (Timeout)", "--nameserver"),
])
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
        code, out, _ = smoke(tmp_path, capsys, server.server_port, certs,
                             extra=("--ca-bundle", str(certs["expiring"][0])))
    finally:
        server.shutdown()
    assert code == 1 and "certificate expires in 3 days" in failures(out)[0][0]


def test_unreachable_web(tmp_path, capsys, certs):
    server = serve(*certs["good"])
    port = server.server_port
    server.shutdown()
    server.server_close()
    code, out, _ = smoke(tmp_path, capsys, port, certs)
    fails = failures(out)
    assert code == 1 and "unreachable" in fails[0][0] and "webSourceRanges" in fails[0][1]
    assert "NOT delivered" in out


def test_postal_down_behind_caddy(tmp_path, capsys, postal, certs):
    postal.login_status = 502
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs)
    (fail, fix), = failures(out)
    assert code == 1 and "/login answered 502" in fail and "postal logs web" in fix


@pytest.mark.parametrize("changes,code_text,fix", [
    ({"apiKey": "wrong"}, "InvalidServerAPIKey", "rerun the provision step"),
    ({"sendingDomains": ["elsewhere.org"]}, "UnauthenticatedFromAddress", "send from one of sendingDomains"),
    ({"blocked": True}, "HTTP 403: Blocked host", "postal logs web"),
])
def test_every_send_failure_prints_its_fix(tmp_path, capsys, postal, certs, changes, code_text, fix):
    postal.blocked = changes.pop("blocked", False)
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs, resolver=Resolver(), **changes)
    send = [f for f in failures(out) if f[0].startswith("FAIL  send")]
    assert code == 1 and len(send) == 1
    assert code_text in send[0][0] and fix in send[0][1]
    assert "delivery" not in out.split("FAIL  send")[1].split("\n", 2)[2]


@pytest.mark.parametrize("status,output,diagnosis,fix", [
    ("HardFail", "550 5.7.1 Invalid credentials for relay [203.0.113.10]. The IP address you've registered in "
                 "your G Suite SMTP Relay service doesn't match domain of the account this email is being sent from.",
     "Invalid credentials for relay", "add 203.0.113.10 in Google Admin console"),
    ("SoftFail", "421 4.7.0 TLS required for RCPT domain, closing connection.", "the relay requires TLS",
     "postal-gateway:relayTls"),
    ("SoftFail", "450 4.2.1 Peak SMTP relay limit exceeded for customer", "10-minute peak relay limit",
     "Postal retries"),
    ("HardFail", "550 5.4.5 Daily SMTP relay limit exceeded for user", "daily relay limit for this envelope sender",
     "spread mail over several senders"),
    ("HardFail", "550 5.7.1 Daily SMTP relay limit exceeded for customer", "daily relay limit for the organisation",
     "Workspace licences"),
    ("SoftFail", "421 4.7.0 Try again later, closing connection. (EHLO)", "throttled the connection at HELO",
     "greet as postal.example.com"),
    ("SoftFail", "Connection refused - connect(2) for 142.250.0.1:587", "cannot reach the relay",
     "GCP blocks outbound port 25"),
    ("HardFail", "554 5.6.0 Message rejected", "the relay refused the message", "postal logs worker"),
    ("Held", "", "held by Postal", "release it in Postal's web UI"),
])
def test_every_relay_answer_is_diagnosed_with_its_fix(tmp_path, capsys, postal, certs, status, output,
                                                       diagnosis, fix):
    postal.deliveries = [[], delivery(status, output)]
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs)
    (fail, fix_line), = failures(out)
    assert code == 1 and fail.startswith(f"FAIL  delivery  {status}: ") and diagnosis in fail
    assert output in fail and fix in fix_line
    assert out.rstrip().endswith("NOT delivered")


def test_an_api_error_while_polling_is_reported_not_waited_out(tmp_path, capsys, postal, certs):
    postal.deliveries = [{"error": "MessageNotFound"}]
    code, out, _ = smoke(tmp_path, capsys, postal.server_port, certs)
    (fail, fix), = failures(out)
    assert code == 1 and "cannot read the deliveries: MessageNotFound" in fail and "postal logs web" in fix


def test_a_message_that_never_leaves_times_out(tmp_path, capsys, postal, certs):
    postal.deliveries = [delivery("SoftFail", "451 4.3.0 Temporary server error")]
    code, out, err = smoke(tmp_path, capsys, postal.server_port, certs)
    (fail, fix), = failures(out)
    assert code == 1 and "still SoftFail after 0s" in fail and "postal logs worker" in fix
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
