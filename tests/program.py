"""Runs the real __main__.py under Pulumi mocks (scripts/offline.py, shared with scripts/plan.py)
with the tests' configuration and records what it registers."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pulumi

from components import tunnel
from scripts import offline
from scripts.offline import FAKE_IP, MAIN, PROJECT, ROOT, SECRET, Registered, Run, _fake_key, unwrap  # noqa: F401

STACK = "prod"
# What relay_preflight.py prints when the second domain's sender is refused (tests/test_preflight.py runs it)
PREFLIGHT_STDOUT = (
    "relay-domain: rdo-dev.com allowlisted accepted MAIL FROM:<relay-preflight@psrp.rdo-dev.com>\n"
    "relay-domain: rdo-studio.net not-allowlisted RCPT TO:<ops@rdo-dev.com>: 550-5.7.1 Invalid "
    "credentials for relay\n"
    "relay-status: not-allowlisted rdo-studio.net: RCPT TO:<ops@rdo-dev.com>: 550-5.7.1 Invalid\n"
)


# The IAP tunnels the program asked for, (project, zone, instance, port) each: gcloud itself is
# exercised by tests/test_tunnel.py against a fake gcloud.
TUNNELS: list[tuple] = []
REAL_TUNNEL_START = tunnel.start
tunnel.start = lambda project, zone, instance, port: TUNNELS.append((project, zone, instance, port))


def tool(name: str) -> str:
    """A validator installed with requirements-dev.txt (in this interpreter's bin/) or on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is missing: install requirements-dev.txt (or run .ci/run)"
    return found


def check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    """check-jsonschema (requirements-dev.txt), its own command line run in this process through click's
    test runner: the same exit code and output, without an interpreter start (0.3 s) per call."""
    from check_jsonschema import main
    from click.testing import CliRunner

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return subprocess.CompletedProcess(["check-jsonschema", *args], result.exit_code, result.stdout, result.stderr)


class Mocks(offline.Mocks):
    preflight_stdout = PREFLIGHT_STDOUT


BASE_CONFIG: dict[str, Any] = {
    "gcp:project": "acme-mail",
    "gcp:region": "europe-west1",
    "gcp:zone": "europe-west1-b",
    "postal-gateway:hostname": "postal.rdo-dev.com",
    "postal-gateway:sendingDomains": '["rdo-dev.com", "rdo-studio.net"]',
    "postal-gateway:adminEmail": "ops@rdo-dev.com",
    "postal-gateway:smtpSourceRanges": '["10.0.0.0/8", "198.51.100.0/24"]',
    # public half only; its private key was discarded (the restore drill makes its own pair)
    "postal-gateway:backupPublicKey": (ROOT / "tests" / "data" / "test-backup-key.asc").read_text(),
}


def run(
    config: dict | None = None,
    secret_keys: tuple = (),
    txt_records: dict | None = None,
    missing_zones: tuple = (),
    replace: bool = False,
    dns_records: list | None = None,
    stack: str = STACK,
) -> Run:
    """Run __main__.py as `stack` with BASE_CONFIG updated by `config` (None values remove keys)."""
    merged = dict(config or {}) if replace else {**copy.deepcopy(BASE_CONFIG), **(config or {})}
    merged = {k: v for k, v in merged.items() if v is not None}
    TUNNELS.clear()
    run = offline.execute(Mocks(txt_records, missing_zones, dns_records), merged, secret_keys, stack)
    run.tunnels = list(TUNNELS)
    return run


_SHARED: dict[tuple, Run] = {}


def shared_run(config: dict | None = None, secret_keys: tuple = ()) -> Run:
    """`run(config, secret_keys)` for tests that only read what was registered: one run per
    configuration and process (test_bootstrap and test_scripts both ask for tls internal and selinux permissive)."""
    key = (repr(sorted((config or {}).items())), tuple(secret_keys))
    if key not in _SHARED:
        _SHARED[key] = run(config, secret_keys)
    return _SHARED[key]


def lookup(config: dict | None = None, dns_records: list | None = None):
    """config.load and dns.lookup_zones alone (what __main__.py runs before any resource), under the
    same mocks: (zone ids or None, the error or None, invokes)."""
    from components import config as config_module
    from components import dns

    mock = Mocks(dns_records=dns_records)
    pulumi.runtime.set_mocks(mock, project=PROJECT, stack=STACK, preview=False)
    merged = {k: v for k, v in {**BASE_CONFIG, **(config or {})}.items() if v is not None}
    pulumi.runtime.set_all_config(merged, [])
    try:
        return dns.lookup_zones(config_module.load()), None, mock.invokes
    except pulumi.RunError as err:
        return None, err, mock.invokes


# Bootstrap commands of a run: step name -> Registered, and what each one sends to the VM.
def commands(run):
    return {r.name.split("-", 1)[1]: r for r in run.of_type("command:remote:Command")}


@functools.lru_cache(maxsize=64)
def _split(text: str) -> tuple[str, ...]:
    return tuple(shlex.split(text))


def shell_split(text: str) -> list[str]:
    """shlex.split, remembered: the tests split the same long command lines (30 kB, ~20 ms each) often."""
    return list(_split(text))


def env_of(command):
    words = shell_split(command.inputs["create"])
    assert words[:2] == ["sudo", "env"]
    return dict(w.split("=", 1) for w in words[2 : words.index("bash")])


def generated_secrets(run) -> dict[str, str]:
    """Resource name -> every secret value the program generated (what the mocks answered): the
    random passwords and the private keys."""
    values = {}
    for resource in run.resources:
        if resource.type == "random:index/randomPassword:RandomPassword":
            values[resource.name] = (hashlib.sha256(resource.name.encode()).hexdigest() * 4)[
                : int(resource.inputs["length"])
            ]
        elif resource.type == "tls:index/privateKey:PrivateKey":
            values[resource.name] = _fake_key(resource.name)["privateKeyPem"]
    return values


def payload_of(command):
    return {
        name: base64.b64decode(data).decode()
        for name, data in (line.split() for line in (command.inputs.get("stdin") or "").splitlines())
    }
