"""The bootstrap scripts, run as Pulumi would run them, against a fake host (tests/fakehost.py).

Each step gets the exact command line and stdin the program registers under mocks; the host's
system commands are stubs that log their calls and keep state in a temporary root.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import certs
import fakehost
import program
import pytest
import yaml
from program import commands

from components import render

STEPS = ("os", "database", "postal", "caddy", "smtp-tls", "provision")  # preflight: tests/test_preflight.py
SCRIPTS = render.SCRIPTS
CERT, KEY = certs.pair()


# Configurations the steps are registered under (the default one is the session's `run`).
VARIANTS = {
    "upgrade": ({"postal-gateway:postalVersion": "3.3.7"}, ()),
    "permissive": ({"postal-gateway:selinux": "permissive"}, ()),
    "internal": ({"postal-gateway:tls": "internal"}, ()),
    "custom": (
        {"postal-gateway:tls": "custom", "postal-gateway:tlsCertificate": CERT, "postal-gateway:tlsPrivateKey": KEY},
        ("postal-gateway:tlsCertificate", "postal-gateway:tlsPrivateKey"),
    ),
}


def steps_of(run) -> dict[str, tuple[str, str]]:
    assert run.error is None, run.error
    return {step: (c.inputs["create"], c.inputs.get("stdin") or "") for step, c in commands(run).items()}


class Registered(dict):
    """Variant -> step -> (command line, stdin), from the program under mocks; a variant's program
    runs when a test first asks for it (a worker that runs a few of these tests pays for those)."""

    def __missing__(self, variant: str) -> dict[str, tuple[str, str]]:
        self[variant] = steps_of(program.shared_run(*VARIANTS[variant]))
        return self[variant]


@pytest.fixture(scope="module")
def registered(run):
    return Registered(base=steps_of(run))


class Machine:
    def __init__(self, tmp: Path, fake_env: dict, like: Machine | None = None):
        self.root, self.fake_env = tmp / "root", fake_env
        if like is not None:
            shutil.copytree(like.root, self.root, symlinks=True)
            self.output = getattr(like, "output", "")
            return
        for d in ("etc/selinux", "dev/disk/by-id", "usr/bin", "tmp"):
            (self.root / d).mkdir(parents=True)
        (self.root / "etc/selinux/config").write_text("SELINUX=enforcing\nSELINUXTYPE=targeted\n")
        (self.root / "etc/fstab").write_text("UUID=0b0e7f5c / xfs defaults 0 0\n")
        (self.root / "dev/disk/by-id/google-postal-data").write_text("")

    def run(self, command: tuple[str, str], fail: str = "", **extra: str) -> subprocess.CompletedProcess:
        create, stdin = command
        env = {
            "PATH": os.environ["PATH"],
            **self.fake_env,
            "PG_ROOT": str(self.root),
            "TMPDIR": str(self.root / "tmp"),
            "STUB_FAIL": fail,
            **extra,
        }
        return subprocess.run(["bash", "-c", create], input=stdin, env=env, capture_output=True, text=True, timeout=60)

    def up(self, steps: dict, names=STEPS) -> str:
        """Runs the steps in order; returns everything they printed."""
        out = ""
        for step in names:
            result = self.run(steps[step])
            assert result.returncode == 0, f"{step} failed:\n{result.stdout}\n{result.stderr}"
            out += result.stdout + result.stderr
        return out

    def calls(self) -> list[str]:
        log = self.root / ".fake/calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def changes(self, since: int = 0) -> list[str]:
        """The calls that changed the host, from call number `since` on."""
        return [c[2:] for c in self.calls()[since:] if c.startswith("M ")]

    def state(self) -> dict:
        return fakehost.Host(self.root).state

    def tree(self) -> dict[str, str]:
        """Every file (content hash and mode) and the host state, but not the call and bootstrap logs,
        nor Postal's database, where a rerun's check_dns records its time (the only write a rerun
        makes there: test_provision_rerun_only_rechecks_dns)."""
        files = {}
        skip = (".fake/calls.log", "opt/postal/log/bootstrap.log", *POSTAL_DB)
        for path in sorted(self.root.rglob("*")):
            rel = str(path.relative_to(self.root))
            if rel not in skip and path.is_file():
                files[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {stat.S_IMODE(path.stat().st_mode):o}"
        return files

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def index(calls: list[str], pattern: str) -> int:
    matches = [i for i, c in enumerate(calls) if re.search(pattern, c)]
    assert matches, f"no call matches {pattern!r} in:\n" + "\n".join(calls)
    return matches[0]


@pytest.fixture(scope="module")
def stubs():
    return fakehost.serve()


def decode(stdin: str) -> dict[str, str]:
    """A step's stdin payload: file name -> text."""
    return {n: base64.b64decode(d).decode() for n, d in (line.split() for line in stdin.splitlines())}


@pytest.fixture
def machine(tmp_path, stubs):
    return Machine(tmp_path, stubs)


@pytest.fixture(scope="module")
def first_deploy(tmp_path_factory, stubs, registered):
    """A first deploy, step by step (built once): step -> a copy of the host before it ran, with
    `made`, the changes the step then made, and `actions`, those with mktemp names aside."""
    hosts, host, output = {}, Machine(tmp_path_factory.mktemp("first"), stubs), ""
    for step in (*STEPS, "ops"):
        hosts[step] = Machine(tmp_path_factory.mktemp(step), stubs, like=host)
        hosts[step].output = output
        start = len(host.calls())
        output += host.up(registered["base"], [step])
        hosts[step].made = host.changes(start)
        hosts[step].actions = {fakehost.action(a) for a in hosts[step].made}
    return hosts


@pytest.fixture(scope="module")
def provisioned(first_deploy):
    """A host after one run of every step (copied for each test), with `output`, all they printed."""
    return first_deploy["ops"]


@pytest.fixture
def fresh(tmp_path, stubs, provisioned):
    return Machine(tmp_path / "copy", stubs, like=provisioned)


# --- static checks with the real tools ---


@pytest.mark.parametrize("step", [*STEPS, "preflight"])
def test_composed_step_script_passes_shellcheck(step):
    result = subprocess.run(
        [program.tool("shellcheck"), "--shell=bash", "--severity=style", "-"],
        input=render.step_script(step),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_every_shell_file_passes_shellcheck():
    files = [*SCRIPTS.glob("*.sh"), program.ROOT / ".ci/run", program.ROOT / ".ci/check-stack"]
    result = subprocess.run(
        [program.tool("shellcheck"), "--shell=bash", "--exclude=SC2154", *map(str, files)],
        capture_output=True,
        text=True,
    )  # SC2154: steps use lib.sh's variables
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("step", [*STEPS, "preflight"])
def test_a_step_without_its_settings_stops_before_doing_anything(machine, step):
    result = machine.run((f"bash -c {shlex.quote(render.step_script(step))} {step}", ""))
    assert result.returncode != 0
    assert re.search(r"PG_[A-Z_]+: parameter null or not set", result.stderr), result.stderr
    assert machine.changes() == []


def test_provision_rb_is_valid_ruby():
    result = subprocess.run([program.tool("ruby"), "-c", str(SCRIPTS / "provision.rb")], capture_output=True, text=True)
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr


# --- a fresh host, then a rerun ---


def test_fresh_host_runs_every_step_in_order(fresh):
    calls = fresh.changes()
    assert index(calls, r"^dnf .*install .*docker-ce ") < index(calls, r"^systemctl enable docker$")
    assert index(calls, r"^dnf config-manager --add-repo https://download.docker.com/") < index(
        calls, r"^dnf .*install .*docker-compose-plugin"
    )
    assert (
        index(calls, r"^mkfs.xfs -q -L postal-data .*/dev/disk/by-id/google-postal-data$")
        < index(calls, r"^mount .*/opt/postal$")
        < index(calls, r"^semanage fcontext --add --type container_file_t")
    )
    assert (
        index(calls, r"^mount ")
        < index(calls, r"^systemctl enable docker$")
        < index(calls, r"^docker run .*--name postal-mariadb")
    )
    assert index(calls, r"^docker exec --interactive postal-mariadb") < index(calls, r"^git clone ")
    assert (
        index(calls, r"^git .* checkout --quiet --force " + render.INSTALL_COMMIT)
        < index(calls, r"^postal set-version 3.3.6$")
        < index(calls, r"^docker compose -p postal pull")
        < index(calls, r"runner postal initialize$")
        < index(calls, r"^docker compose -p postal up ")
    )
    assert (
        index(calls, r"^docker compose -p postal up ")
        < index(calls, r"^docker run .*--name postal-caddy")
        < index(calls, r"rails runner /config/provision.rb$")
    )
    assert not any("postal upgrade" in c for c in calls)
    queries = fresh.calls()
    assert (
        index(queries, r"^M docker compose -p postal up ")
        < index(queries, r"^Q curl .*5000/login")
        < index(queries, r"^M docker run .*--name postal-caddy")
    )
    # Postal's SMTP server starts only after Caddy's certificate reached it (smtp-tls step)
    assert "smtp" not in calls[index(calls, r"^docker compose -p postal up ")]
    assert (
        index(calls, r"^docker run .*--name postal-caddy")
        < index(calls, r"^chown 999:999 .*/smtp-tls/key.pem")
        < index(calls, r"^docker compose -p postal up --detach smtp$")
        < index(calls, r"rails runner")
    )
    assert index(queries, r"^M docker compose -p postal up --detach smtp$") < index(queries, r"^Q curl .*9091/")


def test_fresh_host_ends_in_the_configured_state(fresh, registered):
    state = fresh.state()
    assert state["selinux"] == "Enforcing"
    assert sorted(state["firewall"]) == ["25/tcp", "http", "https"]
    assert state["units"]["docker"] == {"is-enabled": True, "is-active": True}
    assert "UUID=" + fakehost.DISK_UUID + " /opt/postal xfs defaults,nofail 0 2" in fresh.file("/etc/fstab").read_text()
    assert (
        "RequiresMountsFor=/opt/postal"
        in fresh.file("/etc/systemd/system/docker.service.d/postal-gateway.conf").read_text()
    )
    assert '"selinux-enabled": true' in fresh.file("/etc/docker/daemon.json").read_text()
    mariadb = state["containers"]["postal-mariadb"]
    assert mariadb["image"] == render.MARIADB_IMAGE and mariadb["network"] == "host"
    assert {"--bind-address=127.0.0.1", "--innodb-log-file-size=512M"} <= set(mariadb["args"])
    assert mariadb["volumes"] == [
        "/opt/postal/mariadb:/var/lib/mysql",
        "/opt/postal/secrets/mariadb-root-password:/run/secrets/mariadb-root-password:ro",
    ]
    caddy = state["containers"]["postal-caddy"]
    assert caddy["image"] == render.CADDY_IMAGE and caddy["network"] == "host"
    assert "/opt/postal/caddy/live:/etc/caddy:ro" in caddy["volumes"]
    # Internet-facing: binding 80/443 is its only capability, nothing gained through exec, read-only
    # image with its writable places (the caddy image's XDG_CONFIG_HOME=/config; /run holds the admin
    # socket, render.CADDY_ADMIN) in memory and /data on the data disk
    assert caddy["confinement"] == {
        "cap-drop": ["ALL"],
        "cap-add": ["NET_BIND_SERVICE"],
        "security-opt": ["no-new-privileges"],
        "read-only": [""],
        "tmpfs": ["/config", "/run", "/tmp"],
    }
    assert render.CADDY_ADMIN.startswith("unix//run/") and "/opt/postal/caddy-data:/data" in caddy["volumes"]
    assert state["postal"]["running"] == ["web", "smtp", "worker"] and state["postal"]["version"] == "3.3.6"
    assert state["postal"]["tasks"] == ["initialize 3.3.6"]
    assert state["postal"]["provisioned"]["server"]["mode"] == "Live"


def test_files_on_the_host_are_what_the_program_rendered(fresh, registered):
    sent = decode(registered["base"]["postal"][1])
    assert fresh.file("/opt/postal/config/postal.yml").read_text() == sent["postal_yml"]
    assert fresh.file("/opt/postal/config/signing.key").read_text() == sent["signing_key"]
    for name in ("postal.yml", "signing.key"):
        assert stat.S_IMODE(fresh.file(f"/opt/postal/config/{name}").stat().st_mode) == 0o640
    assert "chown 999:999" in " ".join(fresh.changes())  # owned by the container user (uid 999)
    caddyfile = fresh.file("/opt/postal/caddy/live/Caddyfile").read_text()
    assert caddyfile == render.caddyfile(
        hostname="postal.rdo-dev.com",
        tls="letsencrypt",
        admin_email=program.BASE_CONFIG["postal-gateway:adminEmail"],
        uptime_checkers=["34.94.157.51/32", "35.186.144.97/32", "35.187.242.246/32", "35.198.221.49/32"],
    )
    assert fresh.file("/opt/postal/config/provision.rb").read_text() == render.script_text("provision.rb")
    assert fresh.file("/usr/bin/postal").is_symlink()
    assert fresh.file("/etc/selinux/config").read_text().startswith("SELINUX=enforcing\n")


# The two declarative steps a rerun repeats: idempotent SQL grants and find-or-create provision.rb.
DECLARATIVE = (r"^docker exec --interactive postal-mariadb ", r" rails runner /config/provision.rb$")


def test_second_run_changes_nothing(fresh, registered):
    before, calls_before = fresh.tree(), len(fresh.calls())
    fresh.up(registered["base"])
    changes = fresh.changes(calls_before)
    assert len(fresh.calls()) > calls_before
    assert [c for c in changes if not any(re.search(p, c) for p in DECLARATIVE)] == []
    assert fresh.tree() == before  # files, modes and host state (incl. the SQL and provision input) unchanged


def test_provisioning_reruns_with_the_same_input(fresh, registered):
    """provision.rb is find-or-create; the step itself always hands it the stack's spec."""
    first = fresh.state()["postal"]["provisioned"]
    fresh.up(registered["base"], ["provision"])
    assert fresh.state()["postal"]["provisioned"] == first


# --- secrets ---


def secret_values(steps: dict) -> set[str]:
    values = set()
    for _, stdin in steps.values():
        for name, text in decode(stdin).items():
            if name in ("db_root_password", "db_password", "signing_key", "tls_private_key"):
                values.add(text.strip())
    provision = json.loads(decode(steps["provision"][1])["provision_json"])
    values |= {provision["admin"]["password"], *(c["key"] for c in provision["credentials"] if c["type"] != "SMTP-IP")}
    values |= {d["dkim_private_key"].strip() for d in provision["domains"]}
    return {v for v in values if v}


def test_secrets_stay_out_of_argv_logs_and_disk_leftovers(fresh, registered):
    secrets = secret_values(registered["base"])
    assert len(secrets) >= 7
    log = "\n".join(fresh.calls())
    for value in secrets:
        for line in value.splitlines():
            if len(line) > 8:
                assert line not in log and line not in fresh.output
    assert list(fresh.file("/tmp").iterdir()) == []  # the payload directory is removed on exit
    sent = decode(registered["base"]["database"][1])
    mariadb = fresh.state()["containers"]["postal-mariadb"]
    # the root password is not in the container's configuration (`docker inspect`): the image
    # reads it from a root-only file on the data disk, mounted read-only
    assert mariadb["env"] == {"MARIADB_ROOT_PASSWORD_FILE": "/run/secrets/mariadb-root-password"}
    assert sent["db_root_password"] not in repr(mariadb)
    password_file = fresh.file("/opt/postal/secrets/mariadb-root-password")
    assert password_file.read_text() == sent["db_root_password"]
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(password_file.parent.stat().st_mode) == 0o700
    assert fresh.state()["mariadb_root_password"] == sent["db_root_password"]  # what MariaDB initialised with
    assert f"IDENTIFIED BY '{sent['db_password']}'" in mariadb["sql"]  # via stdin, not argv
    assert "GRANT ALL PRIVILEGES ON `postal-%`.*" in mariadb["sql"]
    provisioned = fresh.state()["postal"]["provisioned"]
    assert [c["type"] for c in provisioned["credentials"]] == ["API", "SMTP", "SMTP-IP"]


def test_a_step_without_its_payload_fails_before_doing_anything(machine, registered):
    create, _ = registered["base"]["database"]
    result = machine.run((create, ""))
    assert result.returncode != 0
    assert "stdin payload lacks db_root_password" in result.stderr
    assert machine.changes() == []


# --- reruns caused by one setting ---


def test_new_postal_version_upgrades_in_place(fresh, registered):
    start = len(fresh.calls())
    fresh.up(registered["upgrade"], ["postal"])
    calls = fresh.changes(start)
    assert (
        index(calls, r"^postal set-version 3.3.7$")
        < index(calls, r"pull")
        < index(calls, r"runner postal upgrade$")
        < index(calls, r"up --detach --remove-orphans --force-recreate smtp web worker$")
    )
    assert not any("initialize" in c or "git clone" in c for c in calls)
    state = fresh.state()["postal"]
    assert state["tasks"] == ["initialize 3.3.6", "upgrade 3.3.7"] and state["version"] == "3.3.7"
    assert fresh.file("/opt/postal/config/postal-gateway.version").read_text() == "3.3.7\n"


@pytest.mark.parametrize("variant", ["custom", "internal"])
def test_tls_change_is_validated_then_reloaded_gracefully(fresh, registered, variant):
    start = len(fresh.calls())
    fresh.up(registered[variant], ["caddy"])
    calls = fresh.changes(start)
    reload = (
        "docker exec postal-caddy caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile "
        "--address unix//run/caddy-admin.sock"
    )
    assert reload in calls and not any(re.match("docker (run|restart|rm)", c) for c in calls)
    queries = fresh.calls()[start:]
    assert (
        index(queries, r"^Q docker run --rm .* caddy validate --config /etc/caddy/Caddyfile")
        < index(queries, r"^M mv -f /opt/postal/caddy/live/Caddyfile\.")
        < index(queries, "^M " + re.escape(reload))
        < index(queries, r"^Q curl .*--resolve postal.rdo-dev.com:443:127.0.0.1 https://postal.rdo-dev.com/login$")
    )
    assert fresh.state()["containers"]["postal-caddy"]["reloads"] == 1
    caddyfile = fresh.file("/opt/postal/caddy/live/Caddyfile").read_text()
    certs = fresh.file("/opt/postal/caddy/live/certs")
    if variant == "custom":
        assert "tls /certs/cert.pem /certs/key.pem" in caddyfile
        assert (certs / "cert.pem").read_text() == CERT and (certs / "key.pem").read_text() == KEY
        assert {stat.S_IMODE((certs / f).stat().st_mode) for f in ("cert.pem", "key.pem")} == {0o600}
        assert any("--cacert /opt/postal/caddy/live/certs/cert.pem" in q for q in queries)
        fresh.up(registered["internal"], ["caddy"])
        assert not (certs / "key.pem").exists()  # a mode change away from custom removes the key
        assert not fresh.file("/opt/postal/caddy/next/certs/key.pem").exists()
    else:
        # leaves from the root, 90 days: the SMTP certificate (and Postal's smtp restart) every ~60 days
        assert "issuer internal {\n\t\t\tlifetime 90d\n\t\t\tsign_with_root\n" in caddyfile
        # https is checked against Caddy's own internal root
        assert any("--cacert /opt/postal/caddy-data/caddy/pki/authorities/local/root.crt" in q for q in queries)


# --- SMTP TLS: the web's certificate reaches Postal's SMTP server, and again after each renewal ---

# Every Postal service mounts /opt/postal/config at /config (postalserver/install
# templates/docker-compose.v3.yml at render.INSTALL_COMMIT).
POSTAL_MOUNT = ("/config/", "/opt/postal/config/")
SMTP_TLS = "postal-gateway-smtp-tls"


def on_host(container_path: str) -> str:
    assert container_path.startswith(POSTAL_MOUNT[0]), container_path
    return POSTAL_MOUNT[1] + container_path.removeprefix(POSTAL_MOUNT[0])


def systemd_starts(machine: Machine, service: str, trace: Path | None = None) -> subprocess.CompletedProcess:
    """What systemd does for the oneshot service: its ExecStart with its Environment= assignments
    (each split like a shell word, as systemd.exec(5) describes); with `trace`, under strace, every
    file system call of every process it starts written there."""
    lines = machine.file(f"/etc/systemd/system/{service}").read_text().splitlines()
    unit = dict(line.split("=", 1) for line in lines if "=" in line)
    env = dict(
        word.split("=", 1)
        for line in lines
        if line.startswith("Environment=")
        for word in shlex.split(line.removeprefix("Environment="))
    )
    tracer = [program.tool("strace"), "-f", "-qq", "-e", "trace=%file", "-o", str(trace)] if trace else []
    return subprocess.run(
        [*tracer, str(machine.file(unit["ExecStart"]))],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": os.environ["PATH"],
            **machine.fake_env,
            "PG_ROOT": str(machine.root),
            "TMPDIR": str(machine.root / "tmp"),
            **env,
        },
    )


@pytest.mark.parametrize("variant,tls", [("base", "letsencrypt"), ("internal", "internal"), ("custom", "custom")])
def test_postal_smtp_server_offers_the_web_certificate_in_every_tls_mode(fresh, registered, variant, tls):
    if variant != "base":  # a mode change: Caddy's step, then the certificate for Postal
        fresh.up(registered[variant], ["caddy", "smtp-tls"])
    smtp = yaml.safe_load(decode(registered[variant]["postal"][1])["postal_yml"])["smtp_server"]
    assert smtp["tls_enabled"] is True
    cert, key = fresh.file(on_host(smtp["tls_certificate_path"])), fresh.file(on_host(smtp["tls_private_key_path"]))
    (web_cert, web_key), *_ = render.web_certificates(hostname="postal.rdo-dev.com", tls=tls)
    assert cert.read_text() == fresh.file(web_cert).read_text() and key.read_text() == fresh.file(web_key).read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert any(re.match(r"chown 999:999 .*/opt/postal/config/smtp-tls/key.pem", c) for c in fresh.changes())
    if tls == "custom":
        assert cert.read_text() == CERT and key.read_text() == KEY
    if tls == "internal":  # clients trust Caddy's local root (docs/security.md)
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(fresh.file(render.CADDY_ROOT_CA)), str(cert)],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stderr
    postal = fresh.state()["postal"]
    assert postal["running"] == ["web", "smtp", "worker"]
    assert postal.get("restarts", {}) == ({} if variant == "base" else {"smtp": 1})


def test_a_renewed_certificate_restarts_only_postals_smtp_container(fresh):
    (cert, key), *_ = render.web_certificates(hostname="postal.rdo-dev.com", tls="letsencrypt")
    path_unit = fresh.file(f"/etc/systemd/system/{SMTP_TLS}.path").read_text()
    assert f"PathChanged={cert}\n" in path_unit and f"PathChanged={key}\n" in path_unit
    assert f"Unit={SMTP_TLS}.service" in path_unit
    assert "OnCalendar=hourly" in fresh.file(f"/etc/systemd/system/{SMTP_TLS}.timer").read_text()
    units = fresh.state()["units"]
    assert all(units[f"{SMTP_TLS}.{kind}"] == {"is-enabled": True, "is-active": True} for kind in ("path", "timer"))
    caddy_restarts = fresh.state()["containers"]["postal-caddy"].get("restarts", 0)
    old_key = fresh.file(key).read_text()
    fakehost.issue_certificate(str(fresh.file(cert)).removesuffix(".crt"), "postal.rdo-dev.com")  # Caddy renews
    new_key = fresh.file(key).read_text()
    fresh.file(key).write_text(old_key)  # Caddy writes the certificate first: the path unit fires before the key

    start = len(fresh.calls())
    early = systemd_starts(fresh, f"{SMTP_TLS}.service")
    assert early.returncode == 0, early.stderr
    assert "its key does not match (yet)" in early.stdout and fresh.changes(start) == []
    fresh.file(key).write_text(new_key)
    renewed = systemd_starts(fresh, f"{SMTP_TLS}.service")
    assert renewed.returncode == 0, renewed.stderr
    assert [c for c in fresh.changes(start) if c.startswith(("docker", "systemctl"))] == [
        "docker compose -p postal restart smtp"
    ]
    assert fresh.file("/opt/postal/config/smtp-tls/cert.pem").read_text() == fresh.file(cert).read_text()
    assert fresh.file("/opt/postal/config/smtp-tls/key.pem").read_text() == new_key
    state = fresh.state()
    assert state["postal"]["restarts"] == {"smtp": 1} and state["postal"]["running"] == ["web", "smtp", "worker"]
    assert state["containers"]["postal-caddy"].get("restarts", 0) == caddy_restarts
    again = len(fresh.calls())
    assert systemd_starts(fresh, f"{SMTP_TLS}.service").returncode == 0
    assert fresh.changes(again) == []  # the hourly timer finds nothing to do


def renew(machine: Machine) -> tuple[str, str]:
    """Caddy renews the web certificate (tls=letsencrypt): its paths on the host."""
    (cert, key), *_ = render.web_certificates(hostname="postal.rdo-dev.com", tls="letsencrypt")
    fakehost.issue_certificate(str(machine.file(cert)).removesuffix(".crt"), "postal.rdo-dev.com")
    return cert, key


@pytest.mark.parametrize("link", ["key", "certificate", "directory"])
def test_the_renewal_hook_refuses_a_symlink_in_caddys_storage(fresh, link):
    """A compromised Caddy points the certificate store at a root-only secret: nothing is copied."""
    cert, key = renew(fresh)
    secret = "/opt/postal/secrets/mariadb-root-password"
    installed = {f: fresh.file(f"/opt/postal/config/smtp-tls/{f}").read_text() for f in ("cert.pem", "key.pem")}
    if link == "directory":
        site = fresh.file(key).parent
        shutil.move(site, site.with_name("elsewhere"))
        site.symlink_to(site.with_name("elsewhere"))
        shown = os.path.dirname(key)
    else:
        path = fresh.file(key if link == "key" else cert)
        path.unlink()
        path.symlink_to(fresh.file(secret))
        shown = key if link == "key" else cert
    start = len(fresh.calls())
    result = systemd_starts(fresh, f"{SMTP_TLS}.service")
    assert result.returncode != 0
    refused = key if link == "key" else cert  # a linked directory: the certificate, read first
    assert f"ERROR: refusing {refused}: {shown} is a symbolic link" in result.stderr
    assert fresh.changes(start) == []
    assert {f: fresh.file(f"/opt/postal/config/smtp-tls/{f}").read_text() for f in installed} == installed
    assert list(fresh.file("/tmp").iterdir()) == []


def traced(trace: Path, root: Path) -> list[tuple[str, str, str]]:
    """(system call, path as the host sees it, flags) for each file system call strace recorded."""
    calls = []
    for line in trace.read_text().splitlines():
        match = re.match(r'^\d+ +(\w+)\((?:AT_FDCWD, )?"([^"]*)"(.*)$', line)
        if match:
            name, path, rest = match.groups()
            calls.append((name, path.replace(str(root), "", 1) if path.startswith(str(root)) else path, rest))
    return calls


def test_the_renewal_hook_reads_each_file_once_and_writes_only_what_its_sandbox_allows(fresh, tmp_path):
    """strace on the hook and every program it runs: Caddy's files are opened once each (the copy);
    nothing outside the service's ReadWritePaths (and its private /tmp) is written; the hidden
    secrets are never touched."""
    cert, key = renew(fresh)
    trace = tmp_path / "trace"
    start = len(fresh.calls())
    result = systemd_starts(fresh, f"{SMTP_TLS}.service", trace=trace)
    assert result.returncode == 0, result.stderr
    assert "restarting Postal's smtp container" in result.stdout  # the renewed pair was installed
    calls = traced(trace, fresh.root)
    opens = [(path, flags) for name, path, flags in calls if name in ("open", "openat", "openat2")]
    for source in (cert, key):
        flags = [flags for path, flags in opens if path == source]
        assert len(flags) == 1, f"{source} opened {len(flags)} times"
        assert "O_NOFOLLOW" in flags[0]
    unit = fresh.file(f"/etc/systemd/system/{SMTP_TLS}.service").read_text()
    setting = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    # PrivateTmp=yes: a private /tmp; /dev stays writable (bash's process substitutions, /dev/null)
    writable = (*setting["ReadWritePaths"].split(), "/tmp/", "/dev/")
    hidden = [p.lstrip("-") for p in setting["InaccessiblePaths"].split()]
    written = [
        path
        for name, path, flags in calls
        if name in ("mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "creat")
        or (name.startswith("open") and re.search(r"O_WRONLY|O_RDWR|O_CREAT", flags))
    ]
    written += [c.split()[-1] for c in fresh.changes(start) if c.startswith(("mv ", "chmod ", "chown "))]
    outside = sorted({path for path in written if not path.startswith(writable)})
    assert written and outside == [], outside
    assert not any(path.startswith(tuple(hidden)) for _, path, _ in calls)
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit


def test_smtp_tls_step_fails_when_caddy_has_no_certificate(fresh, registered):
    fresh.up(registered["internal"], ["caddy"])
    ((cert, key),) = render.web_certificates(hostname="postal.rdo-dev.com", tls="internal")
    fresh.file(cert).unlink()  # e.g. Caddy still obtaining it, or storage elsewhere
    start = len(fresh.calls())
    result = fresh.run(registered["internal"]["smtp-tls"], PG_WAIT_TRIES="2")
    assert result.returncode != 0
    assert "ERROR: no certificate for postal.rdo-dev.com (tls internal) in 5 minutes" in result.stderr
    assert not any("docker compose" in c for c in fresh.changes(start))  # smtp keeps its last certificate


def test_smtp_tls_step_fails_when_another_process_holds_the_smtp_health_port(fresh, registered):
    fresh.up(registered["internal"], ["caddy"])
    host = fakehost.Host(fresh.root)
    host.state["listeners"] = {"9091": {"process": "node", "body": "ok"}}
    host.save()
    result = fresh.run(registered["internal"]["smtp-tls"])
    assert result.returncode != 0
    assert "127.0.0.1:9091 is held by a process that is not Postal's smtp service" in result.stderr


@pytest.mark.parametrize(
    "variant,step,applied",
    [
        ("internal", "caddy", r"^docker exec postal-caddy caddy reload "),
        ("upgrade", "postal", r" up --detach .*--force-recreate smtp web worker$"),
    ],
)
def test_a_change_written_by_a_failed_run_is_applied_by_the_next(fresh, registered, variant, step, applied):
    failed = fresh.run(registered[variant][step], fail="docker")
    assert failed.returncode != 0
    start = len(fresh.calls())
    fresh.up(registered[variant], [step])
    assert any(re.search(applied, c) for c in fresh.changes(start))


def test_permissive_selinux_is_set_now_and_persistently(fresh, registered):
    start = len(fresh.calls())
    fresh.up(registered["permissive"], ["os"])
    calls = fresh.changes(start)
    assert "setenforce 0" in calls and not any(c.startswith("semanage") for c in calls)
    assert '"selinux-enabled": false' in fresh.file("/etc/docker/daemon.json").read_text()
    assert "systemctl restart docker" in calls  # Docker drops SELinux confinement now
    assert fresh.state()["selinux"] == "Permissive"
    assert fresh.file("/etc/selinux/config").read_text().startswith("SELINUX=permissive\n")


def test_an_existing_data_disk_is_mounted_not_formatted(machine, registered):
    host = fakehost.Host(machine.root)
    host.state["disks"] = {
        "/dev/disk/by-id/google-postal-data": {
            "TYPE": "xfs",
            "UUID": fakehost.DISK_UUID,
            "SIZE": 50 << 30,
            "FS_BYTES": 50 << 30,
        }
    }
    host.save()
    machine.up(registered["base"], ["os"])
    assert not any(c.startswith("mkfs") for c in machine.changes())
    assert any(re.match(r"mount .*/opt/postal$", c) for c in machine.changes())


def test_stopped_containers_are_started_again(fresh, registered):
    host = fakehost.Host(fresh.root)
    host.state["containers"]["postal-mariadb"]["running"] = False
    host.state["postal"]["running"] = []
    host.save()
    start = len(fresh.calls())
    fresh.up(registered["base"], ["database", "postal"])
    calls = fresh.changes(start)
    assert "docker start postal-mariadb" in calls
    assert any(c.endswith("up --detach --remove-orphans smtp web worker") for c in calls)


def test_postal_step_fails_when_postal_never_becomes_healthy(fresh, registered):
    host = fakehost.Host(fresh.root)
    host.state["postal"].update(running=["web", "smtp"], crashing=["worker"])
    host.save()
    result = fresh.run(registered["base"]["postal"], PG_WAIT_TRIES="2")
    assert result.returncode != 0
    assert "Postal's worker service did not answer http://127.0.0.1:9090/ in 5 minutes" in result.stderr


@pytest.mark.parametrize(
    "step,stub,not_after",
    [
        ("os", "dnf", r"^systemctl enable docker"),
        ("os", "mkfs.xfs", r"^mount "),
        ("database", "docker", r"^docker exec --interactive"),
        ("postal", "git", r"^docker compose"),
        ("caddy", "docker", r"^docker run"),
    ],
)
def test_a_failing_command_fails_the_step_with_its_message(machine, fresh, registered, step, stub, not_after):
    machine = machine if step == "os" else fresh  # a later step fails on a host the earlier ones prepared
    start = len(machine.calls())
    result = machine.run(registered["base"][step], fail=stub)
    assert result.returncode != 0
    assert f"{stub}: simulated failure" in result.stderr
    assert f"[postal-gateway:{step}] ERROR" in result.stderr
    assert not any(re.search(not_after, c) for c in machine.changes(start))


# --- provision.rb against Postal's models (tests/fake_postal.rb) ---


POSTAL_DB = (".fake/postal.db", ".fake/postal.db.json", ".fake/postal.log")  # fakehost._provision


class FakePostal:
    def __init__(self, tmp: Path):
        self.db, self.log = tmp / "postal.db", tmp / "postal.log"

    def run(self, spec: dict, ok: bool = True, **env: str) -> str:
        self.log.unlink(missing_ok=True)
        result = self.ruby(str(SCRIPTS / "provision.rb"), json.dumps(spec), **env)
        assert (result.returncode == 0) == ok, result.stderr
        return result.stdout if ok else result.stderr

    def ruby(self, script: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
        """A script (or `-e` code) with Postal's fake models loaded and kept in this database."""
        args = ["-e", script[3:]] if script.startswith("-e ") else [script]
        return subprocess.run(
            [program.tool("ruby"), "-r", str(program.ROOT / "tests/fake_postal.rb"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "FAKE_POSTAL_DB": str(self.db),
                "FAKE_POSTAL_LOG": str(self.log),
                "PG_DNS_CHECK_INTERVAL": "0",
                **env,
            },
        )

    def writes(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def records(self, model: str) -> dict[str, dict]:
        rows = json.loads(Path(f"{self.db}.json").read_text()).get(model, [])
        key = {"User": "email_address", "Domain": "name", "Credential": "name"}.get(model, "permalink")
        return {row[key]: row for row in rows}


@pytest.fixture
def provision_spec(registered):
    return json.loads(decode(registered["base"]["provision"][1])["provision_json"])


def test_provision_creates_everything_with_the_stacks_keys(tmp_path, provision_spec):
    postal = FakePostal(tmp_path)
    out = postal.run(provision_spec)
    admin = postal.records("User")["ops@rdo-dev.com"]
    assert admin["admin"] == "true" and admin["email_verified_at"]
    assert postal.records("Organization")["postal-gateway"]["owner"] == "ops@rdo-dev.com"
    assert postal.records("Server")["gateway"]["mode"] == "Live"
    domains = postal.records("Domain")
    for spec in provision_spec["domains"]:
        domain = domains[spec["name"]]
        assert domain["owner"] == "gateway" and domain["verified_at"] and domain["dkim_status"] == "OK"
        assert domain["dkim_private_key"] == spec["dkim_private_key"]  # not Postal's generated key
        assert domain["dkim_identifier_string"] == spec["dkim_selector"]
    credentials = postal.records("Credential")
    assert {c["name"]: (c["type"], c["key"]) for c in credentials.values()} == {
        c["name"]: (c["type"], c["key"]) for c in provision_spec["credentials"]
    }
    secrets = [
        provision_spec["admin"]["password"],
        *(c["key"] for c in provision_spec["credentials"] if c["type"] != "SMTP-IP"),
    ]
    assert credentials["postal-gateway-localhost"]["key"] == "127.0.0.1"  # Postal's own mail may relay
    assert not any(s in out for s in secrets)
    assert "domain rdo-dev.com: spf OK, dkim OK, return path OK" in out


def test_provision_rerun_only_rechecks_dns(tmp_path, provision_spec):
    postal = FakePostal(tmp_path)
    postal.run(provision_spec)
    postal.run(provision_spec)
    assert postal.writes() == [f"check_dns {d['name']}" for d in provision_spec["domains"]]


def test_provision_applies_a_rotated_key_and_password_only(tmp_path, provision_spec):
    postal = FakePostal(tmp_path)
    postal.run(provision_spec)
    rotated = json.loads(json.dumps(provision_spec))
    rotated["credentials"][0]["key"] = "rotated-api-key-0123456789"
    rotated["admin"]["password"] = "rotated-admin-password"
    out = postal.run(rotated)
    assert [w for w in postal.writes() if not w.startswith("check_dns")] == [
        "update User ops@rdo-dev.com password_digest",
        "update_column Credential API/postal-gateway-api key",
    ]
    assert postal.records("Credential")["postal-gateway-api"]["key"] == "rotated-api-key-0123456789"
    assert "reset the admin password" in out


# --- fault injection: every change a step makes, made to fail once ---

DATA_DEVICE = "/dev/disk/by-id/google-postal-data"
RESTORED_UUID = "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"


def grow_disk(host: Machine) -> None:
    state = fakehost.Host(host.root)
    state.state["disks"][DATA_DEVICE]["SIZE"] = 80 << 30  # dataDiskSizeGb 50 -> 80, resized by GCE
    state.save()


def restore_disk(host: Machine) -> None:
    """A disk made from a snapshot replaced the mounted one: same data, new filesystem UUID."""
    state = fakehost.Host(host.root)
    state.state["disks"][DATA_DEVICE] = {"TYPE": "xfs", "UUID": RESTORED_UUID, "SIZE": 50 << 30, "FS_BYTES": 50 << 30}
    state.save()


@pytest.fixture(scope="module")
def before_step(tmp_path_factory, stubs, first_deploy, provisioned):
    """Hosts to run a step on: before each step of a first deploy, and a deployed host changed."""
    hosts = {(step, "first deploy"): host for step, host in first_deploy.items()}
    for change, prepare in (("grown disk", grow_disk), ("restored disk", restore_disk)):
        hosts["os", change] = Machine(tmp_path_factory.mktemp(change.replace(" ", "-")), stubs, like=provisioned)
        prepare(hosts["os", change])
    for step, change in (("postal", "upgrade"), ("caddy", "internal")):
        hosts[step, change] = provisioned
    return hosts


FAULT_CASES = [
    *((step, "first deploy") for step in (*STEPS, "ops")),
    ("os", "grown disk"),
    ("os", "restored disk"),
    ("postal", "upgrade"),
    ("caddy", "internal"),
]


@pytest.mark.parametrize("step,change", FAULT_CASES)
def test_every_change_that_fails_fails_the_step_and_the_next_run_redoes_it(
    tmp_path, stubs, registered, before_step, step, change
):
    """The changes are the `M` lines of a successful run, so a new action is covered by itself; a
    change to a deployed host tries those a first deploy does not make. The runs go in chains, each
    on the host the previous one left: the first fails a change; each next one redoes the change that
    failed, makes the changes that followed it in the successful run, exactly those, and fails the
    next change tried; the last one stops once it has redone its change."""
    command = registered[{"upgrade": "upgrade", "internal": "internal"}.get(change, "base")][step]
    base = before_step[step, change]
    done_before, calls_before = len(base.changes()), len(base.calls())
    if change == "first deploy":  # what the step made in the first deploy, from this very host
        actions = base.made
    else:
        ok = Machine(tmp_path / "ok", stubs, like=base)
        ok.up({step: command}, [step])
        actions = ok.changes(calls_before)
    tried = [
        k
        for k, a in enumerate(actions)
        if change == "first deploy" or fakehost.action(a) not in before_step[step, "first deploy"].actions
    ]
    assert tried

    def chain(ks: list[int]) -> list[tuple]:
        """Per change: (the change before it in the chain or None, the run that failed it, that run's
        calls, what it left in TMPDIR, the next run's calls)."""
        host, runs, previous = Machine(tmp_path / f"chain-{ks[0]}", stubs, like=base), [], None
        for k in [*ks, None]:
            mark = len(host.calls())
            if previous is None:
                run = host.run(command, STUB_FAIL_CHANGE=str(done_before + k + 1))
            elif k is None:
                run = host.run(command, STUB_REDO=fakehost.action(actions[previous]))
            else:
                redo = fakehost.action(actions[previous])
                run = host.run(command, STUB_REDO=redo, STUB_THEN_FAIL=f"{k - previous} {k}")
            calls = host.calls()[mark:]
            if runs:
                runs[-1][1][-1].extend(calls)
            if k is not None:
                runs.append((k, (previous, run, calls, sorted(p.name for p in host.file("/tmp").iterdir()), [])))
            previous = k
        return runs

    # a chain per CPU: n + 2 runs for n changes (a run per fault, then one that only redoes), not 2n
    half = (len(tried) + 1) // 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(r for runs in pool.map(chain, [ks for ks in (tried[:half], tried[half:]) if ks]) for r in runs)
    assert sorted(results) == tried
    for k, (previous, failed, calls, left, after) in results.items():
        action = actions[k]
        faults = [c[2:] for c in calls if c.startswith("F ")]
        assert [fakehost.action(f) for f in faults] == [fakehost.action(action)]
        assert failed.returncode != 0, f"{step} ({change}) exited 0 although `{action}` failed:\n{failed.stdout}"
        assert f"[postal-gateway:{step}] ERROR" in failed.stderr
        assert left == [], f"{step} ({change}): a failed `{action}` left {left} in TMPDIR (payload, output)"
        redone = [c[2:] for c in after if c.startswith("R ")]
        assert redone, f"{step} ({change}): the run after a failed `{action}` did not redo it"
        if previous is not None:  # the run redid the previous change, then went on as the successful run
            kinds = [c[:2] for c in calls]
            between = calls[kinds.index("R ") + 1 : kinds.index("F ")]
            assert [fakehost.action(c) for c in between if c.startswith("M ")] == [
                "M " + fakehost.action(a) for a in actions[previous + 1 : k]
            ], f"{step} ({change}): after redoing `{actions[previous]}` the run went another way:\n" + "\n".join(
                between
            )


# --- disks, versions, ports, Caddy ---


def test_a_grown_data_disk_grows_the_filesystem_and_nothing_else(fresh, registered):
    grow_disk(fresh)
    start = len(fresh.calls())
    out = fresh.up(registered["base"], ["os"])
    assert fresh.changes(start) == ["xfs_growfs /opt/postal"]
    assert "growing the filesystem on /opt/postal to 80 GiB" in out
    assert fresh.state()["disks"][DATA_DEVICE]["FS_BYTES"] == 80 << 30


def test_a_data_disk_smaller_than_configured_stops_the_os_step(fresh, registered):
    create, stdin = registered["base"]["os"]
    result = fresh.run((create.replace("PG_DATA_DISK_GB=50", "PG_DATA_DISK_GB=80"), stdin))
    assert result.returncode != 0
    assert "the data disk shows 50 GiB, dataDiskSizeGb is 80" in result.stderr


def test_a_restored_data_disk_is_remounted_and_postal_comes_back(fresh, registered):
    restore_disk(fresh)
    start = len(fresh.calls())
    fresh.up(registered["base"], ["os"])
    calls = fresh.changes(start)
    assert (
        index(calls, r"^systemctl stop docker$")
        < index(calls, r"^umount --lazy /opt/postal$")
        < index(calls, r"^mount /opt/postal$")
        < index(calls, r"^restorecon -R /opt/postal$")
        < index(calls, r"^systemctl start docker$")
    )
    assert f"UUID={RESTORED_UUID} /opt/postal xfs defaults,nofail 0 2" in fresh.file("/etc/fstab").read_text()
    assert fakehost.DISK_UUID not in fresh.file("/etc/fstab").read_text()
    state = fresh.state()
    assert state["mounts"]["/opt/postal"] == [DATA_DEVICE, RESTORED_UUID]
    assert all(c["running"] for c in state["containers"].values())
    assert state["postal"]["running"] == ["web", "smtp", "worker"]
    start = len(fresh.calls())
    fresh.up(registered["base"], ["os"])
    assert fresh.changes(start) == []  # remounted once


def test_a_lower_postal_version_is_refused(fresh, registered):
    fresh.file("/opt/postal/config/postal-gateway.version").write_text("3.3.7\n")
    start = len(fresh.calls())
    result = fresh.run(registered["base"]["postal"])
    assert result.returncode != 0
    assert (
        "postalVersion 3.3.6 is lower than 3.3.7, which the data disk was initialised or upgraded with" in result.stderr
    )
    assert fresh.changes(start) == []


@pytest.mark.parametrize("port,process", [("9090", "cockpit-ws"), ("9091", "node")])
def test_postal_step_fails_when_another_process_holds_a_health_port(fresh, registered, port, process):
    host = fakehost.Host(fresh.root)
    host.state["listeners"] = {port: {"process": process, "body": "<html>Cockpit</html>"}}
    host.save()
    result = fresh.run(registered["base"]["postal"])
    assert result.returncode != 0
    assert f"127.0.0.1:{port} is held by a process that is not Postal's" in result.stderr
    assert f'users:(("{process}"' in result.stderr


def test_a_caddyfile_caddy_rejects_keeps_the_running_configuration(fresh, registered):
    create, stdin = registered["internal"]["caddy"]
    broken = create.replace("\treverse_proxy 127.0.0.1:5000", "\tbogus_directive on\n\treverse_proxy 127.0.0.1:5000")
    assert broken != create
    live = fresh.file("/opt/postal/caddy/live/Caddyfile").read_text()
    start = len(fresh.calls())
    result = fresh.run((broken, stdin))
    assert result.returncode != 0
    assert "Caddy rejects the new configuration (the running one is kept)" in result.stderr
    assert "unrecognized directive: bogus_directive" in result.stderr  # Caddy's own message
    assert fresh.file("/opt/postal/caddy/live/Caddyfile").read_text() == live
    assert not any("caddy reload" in c or "/live/" in c for c in fresh.changes(start))


def test_letsencrypt_failure_is_reported_with_caddys_acme_error(fresh, registered):
    host = fakehost.Host(fresh.root)
    del host.state["containers"]["postal-caddy"]  # a first deploy of Caddy
    fresh.file("/var/lib/postal-gateway/caddy.applied").unlink()
    host.state["acme_error"] = "HTTP 400 urn:ietf:params:acme:error:connection - Timeout during connect"
    host.save()
    result = fresh.run(registered["base"]["caddy"], PG_CADDY_TRIES="2")
    assert result.returncode != 0
    assert "https://postal.rdo-dev.com did not answer through Caddy in 10 s" in result.stderr
    assert "port 80 must be open to the internet" in result.stderr
    assert "urn:ietf:params:acme:error:connection - Timeout during connect" in result.stderr
    start = len(fresh.calls())
    host = fakehost.Host(fresh.root)
    del host.state["acme_error"]
    host.save()
    fresh.up(registered["base"], ["caddy"])
    assert any("caddy reload" in c for c in fresh.changes(start))  # not recorded as applied: reloaded now


def test_provision_waits_for_dns_until_every_domain_checks_ok(tmp_path, provision_spec):
    """Postal signs with a domain's own key only once check_dns passed (app/lib/dkim_header.rb)."""
    postal = FakePostal(tmp_path)
    out = postal.run(provision_spec, FAKE_POSTAL_DNS='{"rdo-studio.net": 3}')
    assert postal.writes().count("check_dns rdo-studio.net") == 3
    assert postal.writes().count("check_dns rdo-dev.com") == 1
    assert "domain rdo-studio.net: spf OK, dkim OK, return path OK" in out and "dns-pending" not in out


def test_each_dns_pass_loads_the_domain_afresh(tmp_path, provision_spec):
    """A Domain keeps the resolver of its first lookup (app/models/domain.rb:141 at 3.3.6, modelled in
    fake_postal.rb): checking the same object again repeats a bad first lookup; a newly loaded one
    looks again."""
    postal = FakePostal(tmp_path)
    out = postal.run(provision_spec, FAKE_POSTAL_DNS='{"rdo-studio.net": 2}', PG_DNS_CHECK_INTERVAL="0.1")
    assert "domain rdo-studio.net: spf OK, dkim OK, return path OK" in out and "dns-pending" not in out
    assert postal.writes().count("check_dns rdo-studio.net") == 2
    same = postal.ruby(
        '-e d = Domain.find_by(name: "rdo-dev.com"); d.attributes[:checks] = 0; d.check_dns; d.check_dns; '
        "again = d.spf_status; f = Domain.find(d.id); f.check_dns; print [again, f.spf_status].inspect",
        FAKE_POSTAL_DNS='{"rdo-dev.com": 2}',
    )
    assert same.stdout == '["Missing", "OK"]', same.stderr


def test_the_dns_wait_settings_reach_the_runner_container(fresh, registered):
    """The step hands PG_DNS_WAIT_SECONDS / PG_DNS_CHECK_INTERVAL to the container with `compose run -e`;
    the fake host runs the installed provision.rb with only that environment (fakehost._provision)."""
    host = fakehost.Host(fresh.root)
    host.state["postal_dns"] = {"rdo-studio.net": -1}  # its records never become visible
    host.save()
    result = fresh.run(registered["base"]["provision"], PG_DNS_WAIT_SECONDS="1", PG_DNS_CHECK_INTERVAL="0.2")
    assert result.returncode == 0, result.stderr  # without the -e it would wait 600 s and time out
    assert "WARNING dns-pending rdo-studio.net" in result.stdout
    assert any(
        re.search(r"compose -p postal run --rm -T -e PG_DNS_WAIT_SECONDS=1 -e PG_DNS_CHECK_INTERVAL=0.2 runner ", c)
        for c in fresh.changes()
    )
    checks = fresh.file(".fake/postal.log").read_text().splitlines().count("check_dns rdo-studio.net")
    assert 3 <= checks <= 7  # every 0.2 s for 1 s


def test_credentials_exist_before_the_dns_wait(tmp_path, provision_spec):
    postal = FakePostal(tmp_path)
    postal.run(provision_spec, FAKE_POSTAL_DNS='{"rdo-studio.net": -1}', PG_DNS_WAIT_SECONDS="0")
    writes = postal.writes()
    first_check = next(i for i, w in enumerate(writes) if w.startswith("check_dns "))
    credentials = [i for i, w in enumerate(writes) if w.startswith(("create Credential", "update_column Credential"))]
    assert len(credentials) >= len(provision_spec["credentials"]) and max(credentials) < first_check


@pytest.mark.parametrize("record", ["organization", "server"])
def test_a_suspended_organization_or_server_fails_the_step(tmp_path, provision_spec, record):
    """Postal refuses all mail of a suspended server or organization (Server#suspended?, server.rb)."""
    postal = FakePostal(tmp_path)
    postal.run(provision_spec)
    target = 'o = Organization.find_by(permalink: "postal-gateway")'
    if record == "server":
        target += '; o = o.servers.find_by(permalink: "gateway")'
    made = postal.ruby(
        f"-e {target}; o.attributes[:suspended_at] = Time.utc(2026, 12, 1); o.attributes[:suspension_reason] = 'abuse'"
    )
    assert made.returncode == 0, made.stderr
    err = postal.run(provision_spec, ok=False)
    what = "organization postal-gateway" if record == "organization" else "mail server postal-gateway/gateway"
    assert f"ERROR: {what} is suspended since 2026-12-01 00:00:00 UTC (abuse): Postal refuses all its mail" in err
    kept = (
        postal.records("Organization")["postal-gateway"]
        if record == "organization"
        else postal.records("Server")["gateway"]
    )
    assert kept["suspended_at"]  # reported, never undone


def test_provision_reports_a_domain_whose_dns_never_passes_without_failing(tmp_path, provision_spec):
    postal = FakePostal(tmp_path)
    out = postal.run(provision_spec, FAKE_POSTAL_DNS='{"rdo-studio.net": -1}', PG_DNS_WAIT_SECONDS="0")
    assert (
        "WARNING dns-pending rdo-studio.net: No SPF record exists for this domain; No TXT records were "
        "returned for postal-" in out
    )
    assert "dns-pending rdo-dev.com" not in out and "[postal-gateway:provision] done" in out
    assert postal.records("Domain")["rdo-studio.net"]["dkim_status"] == "Missing"


def test_a_new_admin_email_renames_the_stacks_admin(tmp_path, provision_spec):
    postal = FakePostal(tmp_path)
    postal.run(provision_spec)
    changed = json.loads(json.dumps(provision_spec))
    changed["admin"]["email"] = "platform@rdo-dev.com"
    out = postal.run(changed)
    assert "admin e-mail changed: ops@rdo-dev.com -> platform@rdo-dev.com (same account)" in out
    users = postal.records("User")
    assert list(users) == ["platform@rdo-dev.com"]  # the old address no longer logs in
    assert postal.records("Organization")["postal-gateway"]["owner"] == "platform@rdo-dev.com"


def handover_to_an_existing_account(tmp_path, provision_spec):
    """A provisioned Postal where platform@rdo-dev.com already has an account, and the spec naming it admin."""
    postal = FakePostal(tmp_path)
    postal.run(provision_spec)
    made = postal.ruby(
        '-e User.create!(email_address: "platform@rdo-dev.com", first_name: "P", last_name: "O", '
        'password: "someone-elses", admin: false)'
    )
    assert made.returncode == 0, made.stderr
    changed = json.loads(json.dumps(provision_spec))
    changed["admin"]["email"] = "platform@rdo-dev.com"
    return postal, changed


def test_a_new_admin_email_with_its_own_account_demotes_the_previous_admin(tmp_path, provision_spec):
    postal, changed = handover_to_an_existing_account(tmp_path, provision_spec)
    out = postal.run(changed)
    assert "previous admin ops@rdo-dev.com: admin rights and password removed" in out
    password = provision_spec["admin"]["password"]
    check = postal.ruby(
        '-e u = User.find_by(email_address: "ops@rdo-dev.com"); n = User.find_by(email_address: '
        '"platform@rdo-dev.com"); p = $stdin.read; print [u.admin?, !!u.authenticate(p), n.admin?, '
        "!!n.authenticate(p)].inspect",
        password,
    )
    assert check.stdout == "[false, false, true, true]"
    assert postal.records("Organization")["postal-gateway"]["owner"] == "platform@rdo-dev.com"
    writes = postal.writes()  # promoted, then demoted: never a moment without an admin
    assert writes.index("update User platform@rdo-dev.com admin") < writes.index(
        "update User ops@rdo-dev.com admin,password_digest"
    )


def test_a_failed_demotion_rolls_the_handover_back(tmp_path, provision_spec):
    postal, changed = handover_to_an_existing_account(tmp_path, provision_spec)
    err = postal.run(changed, ok=False, FAKE_POSTAL_FAIL="User#update!(admin,password_digest)")
    assert "ERROR: ActiveRecord::StatementInvalid" in err
    assert "rollback" in postal.writes()
    users = postal.records("User")  # one transaction: the promotion went with the failed demotion
    assert users["ops@rdo-dev.com"]["admin"] == "true" and users["platform@rdo-dev.com"]["admin"] == "false"


def test_a_soft_deleted_organization_and_server_are_restored(tmp_path, provision_spec):
    postal = FakePostal(tmp_path)
    postal.run(provision_spec)
    deleted = postal.ruby(
        '-e o = Organization.find_by(permalink: "postal-gateway"); o.attributes[:deleted_at] = '
        'Time.now; o.servers.find_by(permalink: "gateway").attributes[:deleted_at] = Time.now'
    )
    assert deleted.returncode == 0, deleted.stderr
    out = postal.run(provision_spec)
    assert "restored the deleted organization postal-gateway" in out
    assert "restored the deleted mail server gateway" in out
    assert postal.records("Organization")["postal-gateway"]["deleted_at"] == ""
    assert postal.records("Server")["gateway"]["deleted_at"] == ""
    assert not any(w.startswith("create ") for w in postal.writes())


@pytest.mark.parametrize(
    "fault,shown",
    [
        ({"FAKE_POSTAL_FAIL": "Domain#update!"}, "ERROR: ActiveRecord::StatementInvalid (its message is withheld"),
        ({}, "ERROR: ActiveRecord::RecordInvalid: Mode is not included in the list"),
    ],
)
def test_provision_errors_show_the_class_never_sql_or_keys(tmp_path, provision_spec, fault, shown):
    spec = json.loads(json.dumps(provision_spec))
    if not fault:
        spec["server"]["mode"] = "Sandbox"
    err = FakePostal(tmp_path).run(spec, ok=False, **fault)
    assert shown in err
    assert "UPDATE" not in err and "Traceback" not in err and ".rb:" not in err
    for value in secret_values(
        {"provision": ("", f"provision_json {base64.b64encode(json.dumps(spec).encode()).decode()}")}
    ):
        for line in value.splitlines():
            assert len(line) <= 8 or line not in err


# --- the bootstrap log on the VM ---


def test_every_steps_output_is_kept_in_a_root_only_bootstrap_log(fresh, registered):
    log = fresh.file("/opt/postal/log/bootstrap.log")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    text = log.read_text()
    for step in STEPS:
        assert re.search(rf"^=== \S+ {step} exit 0$", text, re.M)
    assert "[postal-gateway:os] done" in text and "[postal-gateway:provision] done" in text
    for value in secret_values(registered["base"]):
        assert not any(len(line) > 8 and line in text for line in value.splitlines())
    failed = fresh.run(registered["base"]["postal"], fail="git", PG_WAIT_TRIES="1")
    assert failed.returncode != 0
    assert re.search(r"^=== \S+ postal exit 1\n(.*\n)*.*git: simulated failure", log.read_text(), re.M)


def test_a_line_holding_a_secret_is_withheld_from_the_bootstrap_log(fresh, registered):
    create, stdin = registered["base"]["database"]
    password = decode(stdin)["db_password"]
    leaky = create.replace("pg_need db_password", 'pg_need db_password; cat "$PG_PAYLOAD/db_password"; echo', 1)
    assert leaky != create
    result = fresh.run((leaky, stdin))
    assert result.returncode == 0 and password in result.stdout
    text = fresh.file("/opt/postal/log/bootstrap.log").read_text()
    assert password not in text and "(line withheld: it held a secret)" in text


@pytest.fixture(scope="module")
def generated(run):
    """Every secret value the program generated under mocks (passwords, private keys)."""
    return program.generated_secrets(run)


def secret_lines(value: str) -> list[str]:
    """A secret's lines without the PEM armour (-----BEGIN … KEY-----, which every key shares)."""
    return [line for line in value.strip().splitlines() if not line.startswith("-----")]


def with_code_after_payload(command: tuple[str, str], code: str) -> tuple[str, str]:
    """The step's command with `code` run right after it read its payload."""
    create, stdin = command
    words = shlex.split(create)
    script = words[words.index("-c") + 1]
    assert "\npg_read_payload\n" in script
    words[words.index("-c") + 1] = script.replace("\npg_read_payload\n", f"\npg_read_payload\n{code}\n", 1)
    return shlex.join(words), stdin


def test_no_generated_secret_reaches_the_bootstrap_log_even_inside_other_lines(fresh, registered, generated):
    """Each step prints every secret value it holds inside lines of its own (a connection error with
    the DB password, a key in an SQL line, a PEM line in a message): the log keeps none of them."""
    held = set()
    for variant, step in (("base", "database"), ("base", "postal"), ("custom", "caddy"), ("base", "provision")):
        # the documents as the step receives them (a PEM inside JSON has its newlines escaped)
        texts = [text for name, text in decode(registered[variant][step][1]).items() if name != "withhold"]
        lines = []
        for name, value in generated.items():
            ours = [line for line in secret_lines(value) if any(line in text for text in texts)]
            if ours or any(json.dumps(value)[1:-1] in text for text in texts):
                held.add(name)
                lines += secret_lines(value)
        leak = "\n".join(f"printf 'ERROR 1045 (28000) near %s: retrying\\n' {shlex.quote(line)}" for line in lines)
        result = fresh.run(with_code_after_payload(registered[variant][step], leak))
        assert result.returncode == 0, result.stderr
        assert all(f"near {line}: retrying" in result.stdout for line in lines)
    # every password and key the program made was printed by a step (the SSH key never reaches the VM)
    assert held == {name for name in generated if not name.endswith("-ssh")} and len(held) >= 9
    text = fresh.file("/opt/postal/log/bootstrap.log").read_text()
    for name, value in generated.items():
        for line in secret_lines(value):
            assert line not in text, f"{name} reached the bootstrap log"
    assert text.count("(line withheld: it held a secret)") >= len(generated)


@pytest.mark.parametrize("variant,step", [(v, s) for v in ("base",) for s in (*STEPS, "ops")] + [("custom", "caddy")])
def test_a_bootstrap_log_that_cannot_be_written_fails_the_step_and_leaves_no_secret_behind(
    fresh, registered, variant, step
):
    """A full or dead data disk: the log write fails; the payload and the raw output are gone anyway."""
    log = fresh.file("/opt/postal/log/bootstrap.log")
    log.unlink()
    log.mkdir()  # writing to it fails (even for root)
    result = fresh.run(registered[variant][step])
    assert result.returncode != 0
    assert f"[postal-gateway:{step}] ERROR: could not write /opt/postal/log/bootstrap.log" in result.stderr
    assert list(fresh.file("/tmp").iterdir()) == []


def test_the_restore_drill_unmounted_disk_comes_back_without_a_reboot(fresh, registered):
    """docs/runbook.md: Docker stopped and /opt/postal unmounted by hand, then a disk made from a
    snapshot of this one (same filesystem UUID) is attached: the os step mounts it and starts Docker."""
    host = fakehost.Host(fresh.root)
    del host.state["mounts"]["/opt/postal"]
    host.state["units"]["docker"]["is-active"] = False
    for container in host.state["containers"].values():
        container["running"] = False
    host.state["was_running"] = (list(host.state["containers"]), ["web", "smtp", "worker"])
    host.save()
    start = len(fresh.calls())
    fresh.up(registered["base"], ["os"])
    calls = fresh.changes(start)
    assert index(calls, r"^mount /opt/postal$") < index(calls, r"^systemctl start docker$")
    assert not any(c.startswith(("umount", "mkfs", "systemctl stop")) for c in calls)
    state = fresh.state()
    assert all(c["running"] for c in state["containers"].values())
    assert state["postal"]["running"] == ["web", "smtp", "worker"]


# --- lib.sh: no action is ever masked ---


def test_no_script_masks_a_command_with_or_true():
    for path in SCRIPTS.glob("*.sh"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"\|\|\s*true\b", line), f"{path.name}:{number}: {line.strip()}"
            assert not re.search(
                r"\b(pg_install|pg_install_text|pg_mark_applied|pg_dir|pg_container)\b.*(\|\||&&)", line
            ) or line.lstrip().startswith("#"), f"{path.name}:{number}: {line.strip()}"


BROKEN = {  # a command inside pg_install, and the failure it meets
    **{
        c: f'{c}() {{ echo "{c}: No space left on device" >&2; return 1; }}' for c in ("mktemp", "chmod", "chown", "mv")
    },
    # the new file's content: the kernel refuses the write itself (EFBIG past a file-size limit of 0)
    "write": "trap '' XFSZ; ulimit -f 0",
}


@pytest.mark.parametrize("broken", BROKEN)
def test_a_failing_write_inside_pg_install_fails_the_step(tmp_path, broken):
    """Helpers run where `set -e` applies: a failing command inside pg_install ends the step."""
    result = run_lib(
        tmp_path,
        f"""
        {BROKEN[broken]}
        pg_install 0644 root:root /etc/example.conf <<<"content"
        pg_mark_applied example "$PG_RESULT"
        echo "not reached"
        """,
    )
    assert result.returncode != 0 and "not reached" not in result.stdout
    failure = "File too large" if broken == "write" else f"{broken}: No space left on device"
    assert failure in result.stderr and "[postal-gateway:lib] ERROR" in result.stderr
    assert not (tmp_path / "var/lib/postal-gateway/example.applied").exists()
    assert list((tmp_path / "etc").iterdir()) == []  # neither the file nor a temporary one


def run_lib(tmp_path, body: str) -> subprocess.CompletedProcess:
    """lib.sh and `body` in one bash, on a temporary root, with the real coreutils."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", "-c", render.script_text("lib.sh") + "findmnt() { return 1; }\n" + textwrap.dedent(body), "lib"],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=30,
        env={"PATH": os.environ["PATH"], "PG_ROOT": str(tmp_path), "TMPDIR": str(tmp_path / "tmp"), "PG_STEP": "lib"},
    )


# (what is on disk: content and mode, or None; what pg_install is given) -> changed or not
INSTALL_CASES = {
    "absent": (None, b"a\n", True),
    "same": ((b"a\n", 0o644), b"a\n", False),
    "same, empty": ((b"", 0o644), b"", False),
    "same content, other mode": ((b"a\n", 0o600), b"a\n", True),
    "one more trailing newline": ((b"a\n", 0o644), b"a\n\n", True),
    "one trailing newline less": ((b"a\n\n", 0o644), b"a\n", True),
    "no trailing newline": ((b"a\n", 0o644), b"a", True),
    "a NUL byte on disk": ((b"a\0b\n", 0o644), b"ab\n", True),
    "a NUL byte at the end on disk": ((b"ab\n\0", 0o644), b"ab\n", True),  # the shell's read drops a last NUL
    "leading and inner blank lines": ((b"\na\n\nb\n", 0o644), b"\na\n\nb\n", False),
}


def test_pg_install_writes_exactly_the_content_and_mode_and_only_when_they_differ(tmp_path):
    body = ""
    for n, (before, content, _) in enumerate(INSTALL_CASES.values()):
        dest = tmp_path / f"etc/{n}.conf"
        if before is not None:
            dest.parent.mkdir(exist_ok=True)
            dest.write_bytes(before[0])
            dest.chmod(before[1])
        (tmp_path / f"{n}.in").write_bytes(content)
        body += f'pg_install 0644 root:root /etc/{n}.conf <"$PG_ROOT/{n}.in"; echo "{n} $PG_RESULT"\n'
    result = run_lib(tmp_path, body)
    assert result.returncode == 0, result.stderr
    changed = dict(line.split() for line in result.stdout.splitlines() if not line.startswith("["))
    for n, (case, (_, content, change)) in enumerate(INSTALL_CASES.items()):
        assert changed[str(n)] == ("changed" if change else "unchanged"), case
        dest = tmp_path / f"etc/{n}.conf"
        assert (dest.read_bytes(), stat.S_IMODE(dest.stat().st_mode)) == (content, 0o644), case
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == [f"{n}.conf" for n in range(len(INSTALL_CASES))]


@pytest.mark.parametrize(
    "source,error",
    [
        (b"key\0material", "binary content (a NUL byte), not installed"),
        (b"key\n\0", "read 4 of its 5 bytes"),  # a last NUL, which the shell's read drops
        (None, "pg_install reads a file or a pipe on stdin"),  # a directory: the read fails, so does the step
    ],
)
def test_pg_install_refuses_what_it_cannot_read_whole_as_text(tmp_path, source, error):
    if source is None:
        (tmp_path / "in").mkdir()
    else:
        (tmp_path / "in").write_bytes(source)
    result = run_lib(tmp_path, 'pg_install 0600 root:root /etc/x.bin <"$PG_ROOT/in"\necho "not reached"\n')
    assert result.returncode != 0 and "not reached" not in result.stdout
    assert f"[postal-gateway:lib] ERROR: /etc/x.bin: {error}" in result.stderr
    assert not (tmp_path / "etc/x.bin").exists()


def test_pg_fingerprint_hashes_each_name_and_content_as_deployed_stamps_expect(tmp_path):
    """The stamps in /var/lib/postal-gateway hold this hash: a new way of computing it must give the
    same value, or the first run after an upgrade restarts what did not change."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/a").write_bytes(b"x\n\n")
    (tmp_path / "etc/c").write_bytes(b"y")
    result = run_lib(tmp_path, 'pg_fingerprint /etc/a /etc/b /etc/c\necho "= $PG_FINGERPRINT"\n')
    assert result.returncode == 0, result.stderr
    expected = hashlib.sha256(b"/etc/a\nx\n\n/etc/b\n/etc/c\ny").hexdigest()
    assert f"= {expected}\n" in result.stdout


@pytest.mark.parametrize(
    "data", ["!!!notbase64", *(base64.b64encode(unit).decode() for unit in (b"[Unit]\0\n", b"[Unit]\n\0", b"\0"))]
)
def test_a_unit_that_does_not_decode_to_text_stops_before_anything_is_written(tmp_path, data):
    path = "/etc/systemd/system/postal-gateway-example.service"
    result = run_lib(tmp_path, f'PG_UNITS="{path} {data}"\npg_install_units example\necho "not reached"\n')
    assert result.returncode != 0 and "not reached" not in result.stdout
    assert "[postal-gateway:lib] ERROR" in result.stderr
    assert not (tmp_path / path.lstrip("/")).exists()
