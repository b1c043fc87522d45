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
from pathlib import Path

import pytest

import certs
import fakehost
import program
from components import render
from program import commands

STEPS = ("os", "database", "postal", "caddy", "provision")  # preflight: tests/test_preflight.py
SCRIPTS = render.SCRIPTS
CERT, KEY = certs.pair()


@pytest.fixture(scope="module")
def registered():
    """Step -> (command line, stdin) from the program under mocks, for the default and variant configs."""
    def steps(config=None, secret_keys=()):
        run = program.run(config, secret_keys)
        assert run.error is None, run.error
        return {step: (c.inputs["create"], c.inputs.get("stdin") or "") for step, c in commands(run).items()}
    return {"base": steps(), "upgrade": steps({"postal-gateway:postalVersion": "3.3.7"}),
            "permissive": steps({"postal-gateway:selinux": "permissive"}),
            "internal": steps({"postal-gateway:tls": "internal"}),
            "custom": steps({"postal-gateway:tls": "custom", "postal-gateway:tlsCertificate": CERT,
                             "postal-gateway:tlsPrivateKey": KEY},
                            secret_keys=("postal-gateway:tlsCertificate", "postal-gateway:tlsPrivateKey"))}


class Machine:
    def __init__(self, tmp: Path, bin_dir: Path, like: "Machine | None" = None):
        self.root, self.bin = tmp / "root", bin_dir
        if like is not None:
            shutil.copytree(like.root, self.root, symlinks=True)
            self.output = like.output
            return
        for d in ("etc/selinux", "dev/disk/by-id", "usr/bin", "tmp"):
            (self.root / d).mkdir(parents=True)
        (self.root / "etc/selinux/config").write_text("SELINUX=enforcing\nSELINUXTYPE=targeted\n")
        (self.root / "etc/fstab").write_text("UUID=0b0e7f5c / xfs defaults 0 0\n")
        (self.root / "dev/disk/by-id/google-postal-data").write_text("")

    def run(self, command: tuple[str, str], fail: str = "", **extra: str) -> subprocess.CompletedProcess:
        create, stdin = command
        env = {"PATH": f"{self.bin}:{os.environ['PATH']}", "PG_ROOT": str(self.root),
               "TMPDIR": str(self.root / "tmp"), "STUB_FAIL": fail, **extra}
        return subprocess.run(["bash", "-c", create], input=stdin, env=env, capture_output=True, text=True,
                              timeout=60)

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
        """Every file (content hash and mode) and the host state, but not the call log."""
        files = {}
        for path in sorted(self.root.rglob("*")):
            rel = str(path.relative_to(self.root))
            if rel != ".fake/calls.log" and path.is_file():
                files[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {stat.S_IMODE(path.stat().st_mode):o}"
        return files

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def index(calls: list[str], pattern: str) -> int:
    matches = [i for i, c in enumerate(calls) if re.search(pattern, c)]
    assert matches, f"no call matches {pattern!r} in:\n" + "\n".join(calls)
    return matches[0]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    bin_dir = tmp_path_factory.mktemp("stubs")
    fakehost.install(bin_dir)
    return bin_dir


def decode(stdin: str) -> dict[str, str]:
    """A step's stdin payload: file name -> text."""
    return {n: base64.b64decode(d).decode() for n, d in (line.split() for line in stdin.splitlines())}


@pytest.fixture
def machine(tmp_path, stubs):
    return Machine(tmp_path, stubs)


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory, stubs, registered):
    """A host after one run of every step (built once, copied for each test)."""
    host = Machine(tmp_path_factory.mktemp("fresh"), stubs)
    host.output = host.up(registered["base"])
    return host


@pytest.fixture
def fresh(tmp_path, stubs, provisioned):
    return Machine(tmp_path / "copy", stubs, like=provisioned)


# --- static checks with the real tools ---

@pytest.mark.parametrize("step", [*STEPS, "preflight"])
def test_composed_step_script_passes_shellcheck(step):
    result = subprocess.run([program.tool("shellcheck"), "--shell=bash", "--severity=style", "-"],
                            input=render.step_script(step), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_every_shell_file_passes_shellcheck():
    files = [*SCRIPTS.glob("*.sh"), program.ROOT / ".ci/run"]
    result = subprocess.run([program.tool("shellcheck"), "--shell=bash", "--exclude=SC2154", *map(str, files)],
                            capture_output=True, text=True)  # SC2154: steps use lib.sh's variables
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
    assert index(calls, r"^dnf config-manager --add-repo https://download.docker.com/") < \
        index(calls, r"^dnf .*install .*docker-compose-plugin")
    assert index(calls, r"^mkfs.xfs -q -L postal-data .*/dev/disk/by-id/google-postal-data$") < \
        index(calls, r"^mount .*/opt/postal$") < index(calls, r"^semanage fcontext --add --type container_file_t")
    assert index(calls, r"^mount ") < index(calls, r"^systemctl enable docker$") < \
        index(calls, r"^docker run .*--name postal-mariadb")
    assert index(calls, r"^docker exec --interactive postal-mariadb") < index(calls, r"^git clone ")
    assert index(calls, r"^git .* checkout --quiet --force " + render.INSTALL_COMMIT) < \
        index(calls, r"^postal set-version 3.3.6$") < index(calls, r"^docker compose -p postal pull") < \
        index(calls, r"runner postal initialize$") < index(calls, r"^docker compose -p postal up ")
    assert index(calls, r"^docker compose -p postal up ") < index(calls, r"^docker run .*--name postal-caddy") < \
        index(calls, r"rails runner /config/provision.rb$")
    assert not any("postal upgrade" in c for c in calls)
    queries = fresh.calls()
    assert index(queries, r"^M docker compose -p postal up ") < index(queries, r"^Q curl .*9091/health") < \
        index(queries, r"^M docker run .*--name postal-caddy")


def test_fresh_host_ends_in_the_configured_state(fresh, registered):
    state = fresh.state()
    assert state["selinux"] == "Enforcing"
    assert sorted(state["firewall"]) == ["25/tcp", "http", "https"]
    assert state["units"]["docker"] == {"is-enabled": True, "is-active": True}
    assert "UUID=" + fakehost.DISK_UUID + " /opt/postal xfs defaults,nofail 0 2" in \
        fresh.file("/etc/fstab").read_text()
    assert "RequiresMountsFor=/opt/postal" in \
        fresh.file("/etc/systemd/system/docker.service.d/postal-gateway.conf").read_text()
    assert '"selinux-enabled": true' in fresh.file("/etc/docker/daemon.json").read_text()
    mariadb = state["containers"]["postal-mariadb"]
    assert mariadb["image"] == render.MARIADB_IMAGE and mariadb["network"] == "host"
    assert {"--bind-address=127.0.0.1", "--innodb-log-file-size=512M"} <= set(mariadb["args"])
    assert mariadb["volumes"] == ["/opt/postal/mariadb:/var/lib/mysql"]
    caddy = state["containers"]["postal-caddy"]
    assert caddy["image"] == render.CADDY_IMAGE and caddy["network"] == "host"
    assert "/opt/postal/config/Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
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
    caddyfile = fresh.file("/opt/postal/config/Caddyfile").read_text()
    assert caddyfile == render.caddyfile(hostname="postal.rdo-dev.com", tls="letsencrypt",
                                         admin_email=program.BASE_CONFIG["postal-gateway:adminEmail"])
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
    values |= {provision["admin"]["password"],
               *(c["key"] for c in provision["credentials"] if c["type"] != "SMTP-IP")}
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
    assert mariadb["env"] == {"MARIADB_ROOT_PASSWORD": sent["db_root_password"]}
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
    assert index(calls, r"^postal set-version 3.3.7$") < index(calls, r"pull") < \
        index(calls, r"runner postal upgrade$") < index(calls, r"up --detach --remove-orphans --force-recreate")
    assert not any("initialize" in c or "git clone" in c for c in calls)
    state = fresh.state()["postal"]
    assert state["tasks"] == ["initialize 3.3.6", "upgrade 3.3.7"] and state["version"] == "3.3.7"
    assert fresh.file("/opt/postal/config/postal-gateway.version").read_text() == "3.3.7\n"


@pytest.mark.parametrize("variant", ["custom", "internal"])
def test_tls_change_rewrites_caddy_and_restarts_it(fresh, registered, variant):
    start = len(fresh.calls())
    fresh.up(registered[variant], ["caddy"])
    calls = fresh.changes(start)
    assert "docker restart postal-caddy" in calls and not any("docker run" in c for c in calls)
    assert fresh.state()["containers"]["postal-caddy"]["restarts"] == 1
    caddyfile = fresh.file("/opt/postal/config/Caddyfile").read_text()
    certs = fresh.file("/opt/postal/config/certs")
    if variant == "custom":
        assert "tls /certs/cert.pem /certs/key.pem" in caddyfile
        assert (certs / "cert.pem").read_text() == CERT and (certs / "key.pem").read_text() == KEY
        assert {stat.S_IMODE((certs / f).stat().st_mode) for f in ("cert.pem", "key.pem")} == {0o600}
        fresh.up(registered["internal"], ["caddy"])
        assert not (certs / "key.pem").exists()  # a mode change away from custom removes the key
    else:
        assert "tls internal" in caddyfile


@pytest.mark.parametrize("variant,step,applied", [("internal", "caddy", r"^docker restart postal-caddy$"),
                                                  ("upgrade", "postal", r" up --detach .*--force-recreate$")])
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
    host.state["disks"] = {"/dev/disk/by-id/google-postal-data": {"TYPE": "xfs", "UUID": fakehost.DISK_UUID}}
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
    assert any(c.endswith("up --detach --remove-orphans") for c in calls)


def test_postal_step_fails_when_postal_never_becomes_healthy(fresh, registered):
    host = fakehost.Host(fresh.root)
    host.state["postal"].update(running=["web", "smtp"], crashing=["worker"])
    host.save()
    result = fresh.run(registered["base"]["postal"], PG_WAIT_TRIES="2")
    assert result.returncode != 0
    assert "Postal's worker did not answer http://127.0.0.1:9090/health in 5 minutes" in result.stderr


@pytest.mark.parametrize("step,stub,not_after", [
    ("os", "dnf", r"^systemctl enable docker"),
    ("os", "mkfs.xfs", r"^mount "),
    ("database", "docker", r"^docker exec --interactive"),
    ("postal", "git", r"^docker compose"),
    ("caddy", "docker", r"^docker run"),
])
def test_a_failing_command_fails_the_step_with_its_message(machine, fresh, registered, step, stub, not_after):
    machine = machine if step == "os" else fresh  # a later step fails on a host the earlier ones prepared
    start = len(machine.calls())
    result = machine.run(registered["base"][step], fail=stub)
    assert result.returncode != 0
    assert f"{stub}: simulated failure" in result.stderr
    assert f"[postal-gateway:{step}] ERROR" in result.stderr
    assert not any(re.search(not_after, c) for c in
                   machine.changes(start))


# --- provision.rb against Postal's models (tests/fake_postal.rb) ---

class FakePostal:
    def __init__(self, tmp: Path):
        self.db, self.log = tmp / "postal.db", tmp / "postal.log"

    def run(self, spec: dict) -> str:
        self.log.unlink(missing_ok=True)
        result = subprocess.run([program.tool("ruby"), "-r", str(program.ROOT / "tests/fake_postal.rb"),
                                 str(SCRIPTS / "provision.rb")], input=json.dumps(spec), capture_output=True,
                                text=True, env={**os.environ, "FAKE_POSTAL_DB": str(self.db),
                                                "FAKE_POSTAL_LOG": str(self.log)}, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

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
    assert {c["name"]: (c["type"], c["key"]) for c in credentials.values()} == \
        {c["name"]: (c["type"], c["key"]) for c in provision_spec["credentials"]}
    secrets = [provision_spec["admin"]["password"],
               *(c["key"] for c in provision_spec["credentials"] if c["type"] != "SMTP-IP")]
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
        "update_column Credential API/postal-gateway-api key"]
    assert postal.records("Credential")["postal-gateway-api"]["key"] == "rotated-api-key-0123456789"
    assert "reset the admin password" in out
