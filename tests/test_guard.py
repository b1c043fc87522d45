"""The port-25 brute-force guard (scripts/remote/smtp_guard.py): its counting, and the installed script
on the fake host, fed Postal's own log lines through a stub `journalctl`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import fakehost
import pytest

from components import units

ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / "scripts" / "remote" / "smtp_guard.py"
sys.path.insert(0, str(GUARD.parent))
import smtp_guard  # noqa: E402  (scripts/remote is not a package on the VM)

# Postal 3.3.6's failure lines (app/lib/smtp_server/client.rb: authenticate, auth_cram_md5, rcpt_to) as
# Klogger writes them: time, severity, message, tags.
ATTACKER, OTHER, SENDER = "198.51.100.9", "198.51.100.77", "10.20.0.5"


def failure(ip: str, kind: int = 0) -> str:
    message = [
        f"Authentication failure for {ip}",
        f"Authentication failure for {ip} (no server found matching admin)",
        f"Authentication failure for {ip} (invalid credential)",
    ][kind]
    return f"2026-12-07 13:00:00 +0000 WARN  {message} component=smtp-server trace_id=3f2a1b\n"


def ok(ip: str) -> str:
    return f"2026-12-07 13:00:00 +0000 DEBUG Connection opened from {ip} component=smtp-server trace_id=9c\n"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def guard(codes=None):
    calls, clock = [], Clock()

    def run(argv, **_):
        calls.append(argv)
        return SimpleNamespace(returncode=(codes or {}).get(argv[0], 0), stderr=f"{argv[0]}: refused")

    return smtp_guard.Guard(5, 600, 3600, run=run, clock=clock), calls, clock


def test_the_fifth_failure_within_ten_minutes_blocks_the_address_and_ends_its_connections():
    g, calls, clock = guard()
    for kind in (0, 1, 2, 0):
        assert g.line(failure(ATTACKER, kind)) is None
        clock.now += 60
    assert calls == []
    assert g.line(failure(ATTACKER)) == ATTACKER
    assert calls == [
        [
            "firewall-cmd",
            f'--add-rich-rule=rule family="ipv4" source address="{ATTACKER}" port port="25" protocol="tcp" reject',
            "--timeout=3600",
        ],
        ["ss", "-K", "dst", ATTACKER, "sport", "=", ":25"],
    ]


def test_slow_failures_other_addresses_and_other_lines_do_not_count():
    g, calls, clock = guard()
    for _ in range(10):  # one failure every 3 minutes: never 5 within 10 minutes
        g.line(failure(ATTACKER))
        clock.now += 180
    for ip in (OTHER, SENDER):
        for _ in range(4):
            g.line(failure(ip))
    for _ in range(20):
        g.line(ok(ATTACKER))
        g.line("Authentication failure for nobody\n")
    assert calls == []


def test_a_banned_address_that_still_fails_has_its_connections_ended_again_then_is_counted_anew():
    g, calls, clock = guard()
    for _ in range(5):
        g.line(failure(ATTACKER))
    calls.clear()
    g.line(failure(ATTACKER))  # a connection survived the first ss -K
    assert calls == [["ss", "-K", "dst", ATTACKER, "sport", "=", ":25"]]
    clock.now += 3601  # the ban (firewalld's timeout) is over
    calls.clear()
    for _ in range(4):
        g.line(failure(ATTACKER))
    assert calls == []
    g.line(failure(ATTACKER))
    assert calls[0][0] == "firewall-cmd"


def test_a_failed_action_is_reported_and_the_next_still_runs(capsys):
    g, calls, _ = guard({"firewall-cmd": 13})
    for _ in range(5):
        g.line(failure(ATTACKER))
    assert [c[0] for c in calls] == ["firewall-cmd", "ss"]
    err = capsys.readouterr().err
    assert f"{ATTACKER}: firewall-cmd --add-rich-rule" in err and "failed (13): firewall-cmd: refused" in err


@pytest.fixture
def fake_host(tmp_path):
    """The fake host's firewall-cmd and ss as executables on PATH (the guard runs them as processes), and a
    journalctl that prints the given lines for CONTAINER_NAME=postal-smtp-1 and ends."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    root.mkdir()
    bin_dir.mkdir()
    for name in ("firewall-cmd", "ss"):
        (bin_dir / name).write_text(f'#!/usr/bin/env bash\n_fakehost {name} "$@"\n')
    (bin_dir / "journalctl").write_text(
        '#!/usr/bin/env bash\necho "journalctl $*" >>"$PG_ROOT/journalctl.args"\ncat "$PG_ROOT/journal"\n'
    )
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    env = {**os.environ, **fakehost.serve(), "PG_ROOT": str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return root, env


def run_installed(root, env, lines):
    (root / "journal").write_text("".join(lines))
    unit = units.guard()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    assert argv[0] == units.GUARD_SCRIPT
    return subprocess.run([sys.executable, str(GUARD), *argv[1:]], env=env, capture_output=True, text=True, timeout=60)


def test_on_the_fake_host_repeated_auth_failures_are_refused_by_firewalld(fake_host):
    root, env = fake_host
    lines = [ok(SENDER)] + [failure(ATTACKER, i % 3) for i in range(7)] + [failure(OTHER)] * 4 + [ok(SENDER)]
    result = run_installed(root, env, lines)
    assert result.returncode == 1 and "journalctl ended" in result.stderr  # systemd restarts it
    assert (root / "journalctl.args").read_text().split()[1:] == [
        "--follow",
        "--lines=0",
        "--output=cat",
        f"CONTAINER_NAME={units.SMTP_CONTAINER}",
    ]
    host = fakehost.Host(root)
    rule = f'rule family="ipv4" source address="{ATTACKER}" port port="25" protocol="tcp" reject'
    assert host.state["firewall_runtime"] == [f"rich-rule={rule} timeout=3600"]  # the sender and OTHER pass
    assert host.state.get("firewall", []) == []  # runtime only: a firewalld reload or reboot forgets it
    changes = [c[2:] for c in (root / ".fake/calls.log").read_text().splitlines() if c.startswith("M ")]
    assert changes[0].startswith("firewall-cmd '--add-rich-rule=") and changes[0].endswith("--timeout=3600")
    # the 6th and 7th failures came on a connection still open: it is ended again
    assert changes[1:] == [f"ss -K dst {ATTACKER} sport = :25"] * 3
    assert f"{ATTACKER}: 5 failed SMTP AUTH attempts within 600s, refused on 25/tcp for 3600s" in result.stderr


def test_firewalld_refusing_the_rule_is_reported_on_the_fake_host(fake_host, monkeypatch):
    root, env = fake_host
    result = run_installed(root, {**env, "STUB_FAIL": "firewall-cmd"}, [failure(ATTACKER)] * 5)
    assert "firewall-cmd --add-rich-rule" in result.stderr and "failed (1)" in result.stderr
    assert "simulated failure" in result.stderr
    assert [c for c in (root / ".fake/calls.log").read_text().splitlines() if c.startswith("M ")] == [
        f"M ss -K dst {ATTACKER} sport = :25"
    ]


def test_the_rule_the_guard_writes_is_valid_firewalld_syntax():
    check = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            "import sys; from firewall.core.rich import Rich_Rule; r = Rich_Rule(rule_str=sys.argv[1]); "
            "print(type(r.action).__name__, r.element.port, r.element.protocol, r.source.addr, r.family)",
            smtp_guard.rich_rule(ATTACKER),
        ],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == ["Rich_Reject", "25", "tcp", ATTACKER, "ipv4"]


def test_the_unit_restarts_the_guard_and_names_the_thresholds_the_config_warning_states():
    unit = units.guard()
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit and "Requires=firewalld.service" in unit
    assert f"--failures {units.GUARD_FAILURES} --window {units.GUARD_WINDOW_S}" in unit
    from components import config

    assert f"{units.GUARD_FAILURES} failed SMTP AUTH attempts within 10 minutes" in config.BRUTE_FORCE_NOTE
    assert "for 60 minutes" in config.BRUTE_FORCE_NOTE
