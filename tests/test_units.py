"""Every systemd unit the steps ship (components/units.py), checked by `systemd-analyze verify`."""

import base64
import os
import re
import subprocess

import certs
import program
import pytest
from program import commands, env_of

STEPS_WITH_UNITS = ("ops", "smtp-tls")
NS = "postal-gateway:"
CERT, KEY = certs.pair()
TLS = {
    "letsencrypt": ({}, ()),
    "internal": ({NS + "tls": "internal"}, ()),
    "custom": (
        {NS + "tls": "custom", NS + "tlsCertificate": CERT, NS + "tlsPrivateKey": KEY},
        (NS + "tlsCertificate", NS + "tlsPrivateKey"),
    ),
}


def shipped(run) -> dict[str, str]:
    """path -> content of every unit in the steps' PG_UNITS payloads."""
    found = {}
    for step in STEPS_WITH_UNITS:
        for line in env_of(commands(run)[step])["PG_UNITS"].splitlines():
            path, data = line.split()
            found[path] = base64.b64decode(data).decode()
    return found


def verify(tmp_path, units: dict[str, str]) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on the units as files. Their ExecStart(Post) programs are installed by the
    steps, so each points at a stub here; docker.service (the backup requires it) and firewalld.service
    (the guard requires it) are stub units."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    names = []
    for path, text in units.items():
        for key, program_path in re.findall(r"^(ExecStart(?:Post)?)=(\S+)", text, re.M):
            stub = stubs / os.path.basename(program_path)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
            text = text.replace(f"{key}={program_path}", f"{key}={stub}")
        (tmp_path / os.path.basename(path)).write_text(text)
        names.append(os.path.basename(path))
    for needed in ("docker.service", "firewalld.service"):  # the guard requires firewalld
        (tmp_path / needed).write_text("[Unit]\nDescription=stub\n[Service]\nExecStart=/bin/true\n")
    return subprocess.run(
        [program.tool("systemd-analyze"), "verify", *(f"./{name}" for name in names)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},  # the trailing colon keeps the system's own
    )


@pytest.mark.parametrize("tls", ["letsencrypt", "internal", "custom"])
def test_every_shipped_unit_passes_systemd_analyze_verify(tmp_path, tls):
    run = program.shared_run(*TLS[tls])
    assert run.error is None, run.error
    units = shipped(run)
    assert {os.path.basename(p) for p in units} >= {
        "postal-gateway-reboot.timer",
        "postal-gateway-backup.service",
        "postal-gateway-smtp-tls.path",
        "postal-gateway-smtp-tls.timer",
        "postal-gateway-guard.service",
    }
    result = verify(tmp_path, units)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_verify_reports_a_bad_unit(tmp_path, run):
    units = shipped(run)
    path = next(p for p in units if p.endswith(".timer"))
    units[path] = units[path].replace("OnCalendar=", "OnCalender=")
    result = verify(tmp_path, units)
    assert "Unknown key 'OnCalender'" in result.stdout + result.stderr
