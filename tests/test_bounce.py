"""`smoke_test --bounce` (scripts/bounce.py) against the fake Postal API of test_smoke.py.

The deliveries are Postal 3.3.6's own: the relay's verdicts are recorded by running Postal's sender
(tests/vendor/postal-3.3.6) against the fake relay (tests/relay_scenarios.py); the `Bounced` delivery is
what Message#bounce! writes when the worker links a bounce (lib/postal/message_db/message.rb at 3.3.6:
create_delivery("Bounced", details: "We've received a bounce message for this e-mail. See <msg:ID> for
details.")), listed by the messages/deliveries API (app/controllers/legacy_api/messages_controller.rb).
"""

from __future__ import annotations

import re

from test_smoke import RECORDS, Resolver, certs, failures, postal, postal_smtp, smoke  # noqa: F401 (fixtures)

from scripts import bounce

BOUNCED = {
    "id": 3,
    "status": "Bounced",
    "details": "We've received a bounce message for this e-mail. See <msg:43> for details.",
    "output": None,
    "sent_with_ssl": False,
}


def delivery(record, n=1):
    return {"id": n, "sent_with_ssl": True, "output": None, **record}


def run(tmp_path, capsys, postal, certs, deliveries, extra=(), records=RECORDS):  # noqa: F811
    postal.deliveries = deliveries
    return smoke(tmp_path, capsys, postal.server_port, certs, resolver=Resolver(records), extra=("--bounce", *extra))


def test_arrived_the_bounce_linked_to_the_message_passes(tmp_path, capsys, postal, certs, recorded):  # noqa: F811
    sent = delivery(recorded["accepted"])
    code, out, err = run(tmp_path, capsys, postal, certs, [[], [sent], [sent], [sent, BOUNCED]])
    assert code == 0, out
    assert failures(out) == []
    assert "PASS  delivery  the relay accepted it after" in out and "accepted by" in out
    assert "PASS  bounce    Postal linked Google's bounce" in out and "See <msg:43> for details." in out
    assert out.rstrip().endswith("bounce linked")
    assert "waiting for the bounce" in err
    (to,) = postal.sent[0]["to"]
    assert re.fullmatch(r"postal-gateway-bounce-([0-9a-f]{8})@nxdomain-\1\.example\.com", to), to


def test_an_address_given_is_used(tmp_path, capsys, postal, certs, recorded):  # noqa: F811
    sent = delivery(recorded["accepted"])
    code, out, _ = run(tmp_path, capsys, postal, certs, [[sent, BOUNCED]], extra=("nobody@bounces.example.net",))
    assert code == 0, out
    assert postal.sent[0]["to"] == ["nobody@bounces.example.net"]


def test_not_arrived_fails_with_the_return_path_route_and_what_to_check(tmp_path, capsys, postal, certs, recorded):  # noqa: F811
    sent = delivery(recorded["accepted"])
    code, out, _ = run(tmp_path, capsys, postal, certs, [[sent]], extra=("--bounce-timeout", "0.2"))
    assert code == 1
    ((fail, fix),) = failures(out)
    assert fail.startswith("FAIL  bounce    no bounce linked")
    assert "DNS routes psrp.example.com -> rp.postal.example.com -> postal.example.com -> 203.0.113.10" in fail
    assert "postal-allow-bounce" in fix and "bounceSourceRanges" in fix and "return-path check" in fix
    assert "failed; NO bounce linked" in out


def test_not_arrived_names_a_broken_return_path_record(tmp_path, capsys, postal, certs, recorded):  # noqa: F811
    sent = delivery(recorded["accepted"])
    records = [r for r in RECORDS if r["name"] != "psrp.example.com"]
    code, out, _ = run(tmp_path, capsys, postal, certs, [[sent]], extra=("--bounce-timeout", "0.2"), records=records)
    ((fail, fix),) = [f for f in failures(out) if f[0].startswith("FAIL  bounce")]  # the dns check fails too
    assert code == 1 and "CNAME psrp.example.com is missing, want rp.postal.example.com" in fail
    assert fix.startswith("      fix: publish the return path")


def test_a_refusal_in_the_relay_dialogue_proves_nothing_and_fails(tmp_path, capsys, postal, certs, recorded):  # noqa: F811
    refused = delivery(recorded["recipient-unknown"])
    assert refused["status"] == "HardFail" and "550-5.1.1" in refused["output"]
    code, out, _ = run(tmp_path, capsys, postal, certs, [[], [refused]])
    assert code == 1
    found = dict(failures(out))
    (delivery_line,) = [f for f in found if f.startswith("FAIL  delivery  HardFail")]
    (bounce_line,) = [f for f in found if f.startswith("FAIL  bounce")]
    assert "proves nothing about the bounce path" in bounce_line and "550-5.1.1" in bounce_line
    assert "an address the relay accepts and then cannot deliver" in found[bounce_line]
    assert "PASS  bounce" not in out and "failed; NO bounce linked" in out


def test_a_relay_that_refuses_us_is_not_blamed_on_the_address(tmp_path, capsys, postal, certs, recorded):  # noqa: F811
    refused = delivery(recorded["invalid-credentials"])
    code, out, _ = run(tmp_path, capsys, postal, certs, [[refused]])
    found = dict(failures(out))
    (bounce_line,) = [f for f in found if f.startswith("FAIL  bounce")]
    assert code == 1 and "not tested: the relay did not accept the message" in bounce_line
    assert any("Invalid credentials for relay" in f or "allowlist" in x for f, x in found.items())


def test_default_addresses_are_fresh_and_under_example_com():
    first, second = bounce.default_address(), bounce.default_address()
    assert first != second and first.endswith(".example.com") and second.endswith(".example.com")
