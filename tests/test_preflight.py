"""relay_preflight.py against the fake Google relay: every scenario of tests/data/relay_scenarios.yaml."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from fake_relay import FakeRelay
from relay_scenarios import SCENARIOS, TIMEOUT, client_timeout

from components import render
from components.bootstrap import parse_relay_status, parse_relay_statuses, preflight_senders
from scripts.remote import relay_preflight

HELO, RCPT = "postal.example.com", "ops@example.com"
SENDERS = [("example.com", "relay-preflight@psrp.example.com")]
# the scenarios that wait out the client's timeout or a slow greeting: run all at once, so the waits overlap
WAITS = [sid for sid, s in SCENARIOS.items() if client_timeout(s) < TIMEOUT]


@pytest.fixture(scope="module")
def relay():
    server = FakeRelay()
    yield server
    server.close()


def run(relay, scenario, senders=SENDERS, context=None):
    port = relay.serve(scenario["relay"])
    verdicts = relay_preflight.preflight(
        "127.0.0.1",
        port,
        scenario.get("mode", "starttls"),
        HELO,
        RCPT,
        senders,
        timeout=client_timeout(scenario),
        context=context or relay.client_context(),
    )
    return verdicts, relay.commands.get(port, [])


@pytest.fixture(scope="module")
def waited(relay):
    """{scenario id: a future of run()} for the WAITS, each in its own thread, all started by the first
    scenario's test: the waits overlap each other and the other scenarios."""
    pool = ThreadPoolExecutor(len(WAITS))
    yield {sid: pool.submit(run, relay, SCENARIOS[sid]) for sid in WAITS}
    pool.shutdown()


# the WAITS come last: their waits pass while the other scenarios run
@pytest.mark.parametrize("sid", sorted(SCENARIOS, key=lambda sid: sid in WAITS))
def test_every_relay_answer_gets_its_status(relay, waited, sid):
    verdicts, commands = waited[sid].result() if sid in WAITS else run(relay, SCENARIOS[sid])
    ((status, detail),) = verdicts.values()
    assert status == SCENARIOS[sid]["preflight"], detail
    assert "\n" not in detail
    assert not any(c.upper().startswith("DATA") for c in commands)  # no message is ever sent
    if status == "tls-failed" and SCENARIOS[sid].get("mode", "starttls") == "starttls":
        assert not any(c.upper().startswith(("MAIL", "RCPT")) for c in commands), commands  # no plaintext fallback


def test_presents_postals_identity_once_per_sending_domain(relay):
    senders = [("example.com", "relay-preflight@psrp.example.com"), ("example.org", "relay-preflight@psrp.example.org")]
    verdicts, commands = run(relay, {"relay": {}}, senders)
    assert {d: v[0] for d, v in verdicts.items()} == {"example.com": "allowlisted", "example.org": "allowlisted"}
    assert [c.upper() for c in commands] == [
        c.upper()
        for c in [
            f"EHLO {HELO}",
            "STARTTLS",
            f"EHLO {HELO}",
            "MAIL FROM:<relay-preflight@psrp.example.com>",
            f"RCPT TO:<{RCPT}>",
            "RSET",
            "MAIL FROM:<relay-preflight@psrp.example.org>",
            f"RCPT TO:<{RCPT}>",
            "RSET",
            "QUIT",
        ]
    ]


def test_one_verdict_per_domain_and_the_worst_is_the_summary(relay):
    denied = SCENARIOS["mail-relay-denied"]["relay"]["mail"]
    senders = [
        ("example.com", "a@psrp.example.com"),
        ("example.org", "a@psrp.example.org"),
        ("example.net", "a@psrp.example.net"),
    ]
    verdicts, _ = run(
        relay,
        {"relay": {"senders": {"example.org": denied, "example.net": "421 4.4.5 Server busy, try again later."}}},
        senders,
    )
    assert {d: v[0] for d, v in verdicts.items()} == {
        "example.com": "allowlisted",
        "example.org": "not-allowlisted",
        "example.net": "transient",
    }
    status, detail = relay_preflight.summary(verdicts)
    assert status == "not-allowlisted" and detail.startswith(
        "example.org: MAIL FROM:<a@psrp.example.org>: 550 5.7.0 Mail relay denied"
    )


def test_the_ehlo_answer_after_starttls_is_checked(relay):
    ((status, detail),) = run(relay, SCENARIOS["ehlo-after-tls-throttled"])[0].values()
    assert status == "transient" and "after STARTTLS" in detail and "421 4.7.0 Try again later" in detail


def test_a_multi_line_refusal_is_folded_into_one_line(relay):
    ((_, detail),) = run(relay, SCENARIOS["invalid-credentials"])[0].values()
    assert detail.startswith("RCPT TO:<ops@example.com>: 550 5.7.1 Invalid credentials for relay [203.0.113.10].")
    assert "#invalidcred" in detail


def script(*args, env=None):
    return subprocess.run(
        [sys.executable, str(render.SCRIPTS / "relay_preflight.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize(
    "args,complaint",
    [
        (("relay", "x587", "starttls", HELO, RCPT, "example.com=a@psrp.example.com"), "PORT must be a number"),
        (("relay", "587", "STARTTLS", HELO, RCPT, "example.com=a@psrp.example.com"), "TLS mode must be one of"),
        (("relay", "587", "starttls", HELO, RCPT, "a@psrp.example.com"), "expected DOMAIN=MAIL_FROM"),
        (("relay", "587", "starttls"), "expected at least 6 arguments"),
        (
            ("--timeout", "soon", "relay", "587", "starttls", HELO, RCPT, "example.com=a@psrp.example.com"),
            "--timeout needs a number",
        ),
    ],
)
def test_bad_arguments_exit_2_with_usage_and_no_traceback(args, complaint):
    result = script(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert complaint in result.stderr and "usage: relay_preflight.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_preflight_step_reports_each_domain_and_exits_zero_when_refused(relay):
    port = relay.serve({"senders": {"example.org": SCENARIOS["invalid-credentials"]["relay"]["rcpt"]}})
    env = {
        **os.environ,
        "PG_HOSTNAME": HELO,
        "PG_RELAY_HOST": "localhost",
        "PG_RELAY_PORT": str(port),
        "PG_RELAY_TLS": "starttls",
        "PG_SENDERS": preflight_senders(["example.com", "example.org"]),
        "PG_RCPT_TO": RCPT,
        "PG_PREFLIGHT_PY": render.script_text("relay_preflight.py"),
        "PG_PREFLIGHT_TIMEOUT": "2",
        "SSL_CERT_FILE": str(relay.ca_file),
    }
    result = subprocess.run(
        ["bash", "-c", (render.SCRIPTS / "preflight.sh").read_text(), "preflight"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert parse_relay_status(result.stdout) == "not-allowlisted"
    assert parse_relay_statuses(result.stdout, ["example.com", "example.org", "example.net"]) == {
        "example.com": "allowlisted",
        "example.org": "not-allowlisted",
        "example.net": "unknown",
    }
    assert "mail FROM:<relay-preflight@psrp.example.org>" in relay.commands[port]


def test_parse_relay_status_defaults_to_unknown():
    assert parse_relay_status(None) == "unknown"
    assert parse_relay_status("noise\nrelay-status: allowlisted ok\n") == "allowlisted"
