"""Relay preflight against a loopback SMTP server that plays Google's relay."""

import importlib.util
import os
import socket
import ssl
import subprocess
import threading

import pytest

from components import render
from components.bootstrap import parse_relay_status

spec = importlib.util.spec_from_file_location("relay_preflight", render.SCRIPTS / "relay_preflight.py")
relay_preflight = importlib.util.module_from_spec(spec)
spec.loader.exec_module(relay_preflight)

DENIED = ("550 5.7.1 Mail relay denied [203.0.113.10]. Invalid credentials for relay for one of the domains in: "
          "rdo-dev.com (as obtained from HELO and MAIL FROM).")


class FakeRelay:
    """One SMTP server on 127.0.0.1 with scripted replies; records the commands it got."""

    def __init__(self, *, starttls=True, tls_context=None, mail="250 2.1.0 OK", rcpt="250 2.1.5 OK",
                 banner="220 smtp-relay.gmail.com ESMTP", implicit_tls=False):
        self.starttls, self.tls_context, self.implicit_tls = starttls, tls_context, implicit_tls
        self.replies = {"MAIL": mail, "RCPT": rcpt}
        self.banner = banner
        self.commands: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.sock.accept()
        conn.settimeout(5)
        if self.implicit_tls:
            conn = self.tls_context.wrap_socket(conn, server_side=True)
        stream = conn.makefile("rwb")

        def say(text):
            stream.write(text.encode() + b"\r\n")
            stream.flush()

        say(self.banner)
        if not self.banner.startswith("220"):
            conn.close()
            return
        while True:
            line = stream.readline().decode().strip()
            if not line:
                break
            self.commands.append(line)
            verb = line.split()[0].upper()
            if verb == "EHLO":
                offer = ["250-STARTTLS"] if self.starttls and self.tls_context and not self.implicit_tls else []
                for text in ["250-smtp-relay.gmail.com at your service", *offer, "250 SIZE 35882577"]:
                    say(text)
            elif verb == "STARTTLS":
                say("220 2.0.0 Ready to start TLS")
                try:
                    conn = self.tls_context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                stream = conn.makefile("rwb")
            elif verb in self.replies:
                say(self.replies[verb])
            elif verb == "RSET":
                say("250 2.1.5 Flushed")
            elif verb == "QUIT":
                say("221 2.0.0 closing connection")
                break
            else:
                say("502 5.5.1 Unrecognized command")
        conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    path = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=relay",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(path / "key.pem"),
                    "-out", str(path / "cert.pem")], check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(path / "cert.pem", path / "key.pem")
    client = ssl.create_default_context(cafile=str(path / "cert.pem"))
    return server, client


def dialogue(relay, mode="starttls", context=None):
    try:
        return relay_preflight.preflight("127.0.0.1", relay.port, mode, "postal.rdo-dev.com",
                                         "relay-preflight@rp.postal.rdo-dev.com", "ops@rdo-dev.com",
                                         timeout=5, context=context)
    finally:
        relay.thread.join(5)
        relay.close()


def test_allowlisted_after_verified_starttls(tls):
    relay = FakeRelay(tls_context=tls[0])
    status, detail = dialogue(relay, context=tls[1])
    assert status == "allowlisted", detail
    assert [c.upper() for c in relay.commands] == ["EHLO POSTAL.RDO-DEV.COM", "STARTTLS", "EHLO POSTAL.RDO-DEV.COM",
                              "MAIL FROM:<RELAY-PREFLIGHT@RP.POSTAL.RDO-DEV.COM>", "RCPT TO:<OPS@RDO-DEV.COM>",
                              "RSET", "QUIT"]
    assert not any(c.upper().startswith("DATA") for c in relay.commands)


def test_not_allowlisted_is_recognised_from_googles_text(tls):
    status, detail = dialogue(FakeRelay(tls_context=tls[0], rcpt=DENIED), context=tls[1])
    assert status == "not-allowlisted" and "Invalid credentials for relay" in detail and "RCPT TO" in detail


def test_refusal_at_mail_from_is_classified_too(tls):
    status, _ = dialogue(FakeRelay(tls_context=tls[0], mail=DENIED), context=tls[1])
    assert status == "not-allowlisted"


@pytest.mark.parametrize("reply,expected", [
    ("421 4.7.0 TLS required for RCPT domain, closing connection.", "tls-failed"),
    ("450 4.2.1 Peak SMTP relay limit exceeded for customer.", "rate-limited"),
    ("550 5.7.1 Daily SMTP relay limit exceeded for customer.", "rate-limited"),
    ("553 5.1.2 The sender address is not valid.", "rejected"),
])
def test_other_google_answers(tls, reply, expected):
    assert dialogue(FakeRelay(tls_context=tls[0], rcpt=reply), context=tls[1])[0] == expected


def test_no_starttls_offered_is_a_tls_failure():
    status, detail = dialogue(FakeRelay(starttls=False))
    assert status == "tls-failed" and "does not offer STARTTLS" in detail


def test_untrusted_certificate_is_a_tls_failure(tls):
    status, detail = dialogue(FakeRelay(tls_context=tls[0]), context=ssl.create_default_context())
    assert status == "tls-failed" and "STARTTLS failed" in detail


def test_implicit_tls_mode(tls):
    assert dialogue(FakeRelay(tls_context=tls[0], implicit_tls=True), mode="tls", context=tls[1])[0] == "allowlisted"


def test_greeting_refusal_is_rejected():
    status, detail = dialogue(FakeRelay(banner="421 4.7.0 Try again later, closing connection. (EHLO)"))
    assert status == "rejected" and "421" in detail


def test_unreachable_relay():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    status, _ = relay_preflight.preflight("127.0.0.1", port, "starttls", "h.example.com", "a@b.example.com",
                                          "c@d.example.com", timeout=2)
    assert status == "unreachable"


def test_preflight_step_prints_the_status_and_exits_zero_when_refused(tls):
    relay = FakeRelay(starttls=False, rcpt=DENIED)
    env = {**os.environ, "PG_HOSTNAME": "postal.rdo-dev.com", "PG_RELAY_HOST": "127.0.0.1",
           "PG_RELAY_PORT": str(relay.port), "PG_RELAY_TLS": "none", "PG_MAIL_FROM": "x@rp.postal.rdo-dev.com",
           "PG_RCPT_TO": "ops@rdo-dev.com", "PG_PREFLIGHT_PY": render.script_text("relay_preflight.py")}
    script = (render.SCRIPTS / "preflight.sh").read_text()
    result = subprocess.run(["bash", "-c", script, "postal-gateway-preflight"], env=env, capture_output=True,
                            text=True, timeout=20)
    relay.thread.join(5)
    relay.close()
    assert result.returncode == 0, result.stderr
    assert parse_relay_status(result.stdout) == "not-allowlisted"


def test_parse_relay_status_defaults_to_unknown():
    assert parse_relay_status(None) == "unknown"
    assert parse_relay_status("noise\nrelay-status: allowlisted ok\n") == "allowlisted"
