"""The ops step: Ops Agent config (checked against the agent's schema), patching and reboot window,
MariaDB backups and the restore drill — rendered by the program and run against the fake host."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shlex
import subprocess
from types import SimpleNamespace

import fakehost
import jsonschema
import program
import pytest
import yaml
from program import commands, env_of
from test_scripts import Machine, index

from components import operations, render
from components.host import SNAPSHOT_START_UTC
from components.units import BACKUP_DIR, GUARD_SCRIPT

NS = "postal-gateway:"
SCHEMA = program.ROOT / "tests" / "ops_agent.schema.json"


def units_of(command) -> dict[str, str]:
    return units_from(command.inputs["create"])


def units_from(create: str) -> dict[str, str]:
    return {
        path: base64.b64decode(data).decode()
        for path, data in (line.split() for line in env_from(create)["PG_UNITS"].splitlines())
    }


def unit_value(text: str, key: str) -> str:
    (value,) = re.findall(rf"^{key}=(.*)$", text, re.M)
    return value


@pytest.fixture(scope="module")
def steps(run):
    return {step: (c.inputs["create"], c.inputs.get("stdin") or "") for step, c in commands(run).items()}


@pytest.fixture(scope="module")
def changed():
    """One run with the ops and image settings changed: step -> (command line, stdin)."""
    result = program.run(
        {
            NS + "maintenanceWindow": "wed 23:30",
            NS + "mariadbImage": "registry.example.com/db/mariadb:11.8",
            NS + "caddyImage": "caddy:2.11@sha256:" + "a" * 64,
        }
    )
    assert result.error is None, result.error
    return {step: (c.inputs["create"], c.inputs.get("stdin") or "") for step, c in commands(result).items()}


def env_from(create: str) -> dict[str, str]:
    return env_of(SimpleNamespace(inputs={"create": create}))


@pytest.fixture(scope="module")
def units(run):
    return units_of(commands(run)["ops"])


@pytest.fixture(scope="module")
def host(tmp_path_factory, steps):
    """A host after every step but the preflight (built once, copied for each test)."""
    machine = Machine(tmp_path_factory.mktemp("ops-host"), fakehost.serve())
    machine.output = machine.up(steps, ("os", "database", "postal", "caddy", "smtp-tls", "ops"))
    return machine


@pytest.fixture
def fresh(tmp_path, host):
    return Machine(tmp_path / "copy", host.fake_env, like=host)


def sbin(machine: Machine, tool: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(machine.file(f"/usr/local/sbin/{tool}")), *args],
        capture_output=True,
        text=True,
        env={**machine.fake_env, "PATH": "/usr/bin:/bin", "PG_ROOT": str(machine.root), **env},
        timeout=60,
    )


# --- what the program renders ---


def test_agent_config_passes_the_agents_schema(tmp_path):
    rendered = tmp_path / "config.yaml"
    rendered.write_text(operations.ops_agent_config())
    result = program.check_jsonschema("--schemafile", str(SCHEMA), str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = yaml.safe_load(rendered.read_text())
    broken["metrics"]["receivers"]["postal"]["config"]["scrape_configs"][0]["honor_labels"] = True
    broken["logging"]["receivers"]["journald"]["include_units"] = ["docker"]
    broken["logging"]["processors"]["postal_debug"]["match_all"] = ["severity = DEBUG"]
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert len(list(validator.iter_errors(broken))) == 3  # the schema refuses what the agent refuses


def test_agent_ships_the_journal_host_metrics_and_postals_prometheus_metrics():
    config = yaml.safe_load(operations.ops_agent_config())
    for section in ("logging", "metrics"):  # confgenerator/config.go: a pipeline's receiver must be defined
        receivers = config[section]["receivers"]
        for pipeline in config[section]["service"]["pipelines"].values():
            assert set(pipeline["receivers"]) <= set(receivers)
    assert config["logging"]["receivers"]["journald"] == {"type": "systemd_journald"}
    assert config["logging"]["service"]["pipelines"]["default_pipeline"] == {
        "receivers": ["journald"],
        "processors": ["postal_debug"],
    }
    scrapes = config["metrics"]["receivers"]["postal"]["config"]["scrape_configs"]
    # Postal's worker and SMTP health servers (postal.yml defaults 9090 / 9091) serve /metrics
    assert {(s["metrics_path"], s["static_configs"][0]["targets"][0]) for s in scrapes} == {
        ("/metrics", "127.0.0.1:9090"),
        ("/metrics", "127.0.0.1:9091"),
    }
    assert config["metrics"]["service"]["pipelines"]["default_pipeline"] == {"receivers": ["hostmetrics"]}


def klogger_line(severity: str, message: str, **tags: str) -> str:
    """A Postal log line as Klogger's default "go" formatter writes it (klogger-logger 1.4.0,
    lib/klogger/formatters/go.rb: time, severity padded to 7 and upper-cased, message, key=value tags)."""
    return f"2026-12-07 13:00:00 +0000 {severity.ljust(7).upper()}{message} " + " ".join(
        f"{k}={v}" for k, v in tags.items()
    )


def shipped_by_agent(record: dict) -> bool:
    """The agent's exclude_logs processors on a journal record (jsonPayload fields): this config's
    filters are `field =~ "regex"` terms joined by AND (ops-agent confgenerator/filter; RE2 syntax,
    which these expressions share with Python's re)."""
    config = yaml.safe_load(operations.ops_agent_config())
    pipeline = config["logging"]["service"]["pipelines"]["default_pipeline"]
    for name in pipeline.get("processors", []):
        for expression in config["logging"]["processors"][name]["match_any"]:
            terms = expression.split(" AND ")
            parsed = [re.fullmatch(r'jsonPayload\.(\w+) =~ "([^"\\]*)"', term) for term in terms]
            assert all(parsed), expression  # a form this evaluator does not know
            if all(re.search(m[2], record.get(m[1], "")) for m in parsed):
                return False
    return True


@pytest.mark.parametrize(
    "container,message,shipped",
    [
        ("postal-smtp-1", klogger_line("debug", "\x1b[32m<= MAIL FROM:<alice@rdo-dev.com>\x1b[0m"), False),
        ("postal-smtp-1", klogger_line("debug", "\x1b[32m<= RCPT TO:<bob@example.net>\x1b[0m"), False),
        ("postal-smtp-1", klogger_line("debug", "Connection opened from 10.1.2.3"), False),
        ("postal-worker-1", klogger_line("debug", "Added external address 'bob@example.net'"), False),
        ("postal-smtp-1", klogger_line("info", "Listening on 0.0.0.0:25"), True),
        ("postal-smtp-1", klogger_line("warn", "Authentication failure for 10.1.2.3"), True),
        ("postal-worker-1", klogger_line("error", "Cannot connect to smtp-relay.gmail.com", log_id="ABC123"), True),
        ("postal-caddy", '{"level":"debug","logger":"http","msg":"DEBUG in a JSON line"}', True),
        ("postal-mariadb", "2026-12-07 13:00:00 0 [Note] DEBUG mariadbd: ready", True),
    ],
)
def test_the_agent_ships_postals_lines_at_info_and_above_only(container, message, shipped):
    """Postal's SMTP dialogue (MAIL FROM / RCPT TO at debug) stays on the VM; what alerts read (the
    worker's ERROR lines for relay-errors) and every other container's lines are shipped."""
    assert shipped_by_agent({"CONTAINER_NAME": container, "MESSAGE": message}) is shipped
    if "log_id=" in message:
        from components.monitoring import RELAY_ERROR_RE

        assert re.search(RELAY_ERROR_RE, message)  # the line the relay-errors metric counts is shipped


def test_docker_logs_containers_to_the_journal_under_their_names():
    os_script = render.step_script("os")
    assert '"log-driver": "journald"' in os_script and '"tag": "{{.Name}}"' in os_script


def test_security_updates_daily_reboots_only_in_the_window(run, changed):
    ops = commands(run)["ops"]
    automatic = env_of(ops)["PG_AUTOMATIC_CONF"]
    assert re.search(r"^upgrade_type = security$", automatic, re.M)
    assert re.search(r"^apply_updates = yes$", automatic, re.M) and "reboot" not in automatic  # default: never
    units = units_of(ops)
    reboot = units["/etc/systemd/system/postal-gateway-reboot.timer"]
    assert unit_value(reboot, "OnCalendar") == "Sun *-*-* 02:00:00 UTC"  # default: early Sunday UTC
    assert (
        unit_value(units["/etc/systemd/system/postal-gateway-reboot.service"], "ExecStart")
        == "/usr/local/sbin/postal-gateway-reboot"
    )
    custom = units_from(changed["ops"][0])
    assert (
        unit_value(custom["/etc/systemd/system/postal-gateway-reboot.timer"], "OnCalendar") == "Wed *-*-* 23:30:00 UTC"
    )


def test_backup_runs_daily_before_the_snapshot(run):
    units = units_of(commands(run)["ops"])
    backup = unit_value(units["/etc/systemd/system/postal-gateway-backup.timer"], "OnCalendar")
    assert backup == "*-*-* 03:30:00 UTC" and SNAPSHOT_START_UTC == "04:00"
    service = units["/etc/systemd/system/postal-gateway-backup.service"]
    assert "Environment=PG_BACKUP_RETENTION_DAYS=3" in service
    assert "Environment=PG_BACKUP_DIR=/opt/postal/backup/mariadb" in service  # on the snapshotted disk


def test_timer_calendars_are_valid_systemd_calendars(units):
    for path, text in units.items():
        if path.endswith(".timer"):
            spec = unit_value(text, "OnCalendar")
            result = subprocess.run([program.tool("systemd-analyze"), "calendar", spec], capture_output=True, text=True)
            assert result.returncode == 0 and f"Normalized form: {spec}" in result.stdout, result.stderr


# --- on the fake host ---


def test_composed_ops_step_passes_shellcheck():
    result = subprocess.run(
        [program.tool("shellcheck"), "--shell=bash", "--severity=style", "-"],
        input=render.step_script("ops"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_ops_step_without_its_settings_stops_before_doing_anything(tmp_path, host):
    machine = Machine(tmp_path, host.fake_env)
    result = machine.run((f"bash -c {shlex.quote(render.step_script('ops'))} ops", ""))
    assert result.returncode != 0 and "PG_AGENT_CONFIG: parameter null or not set" in result.stderr
    assert machine.changes() == []


def test_images_are_settings_of_their_own_step(changed):
    assert env_from(changed["database"][0])["PG_MARIADB_IMAGE"] == "registry.example.com/db/mariadb:11.8"
    assert env_from(changed["caddy"][0])["PG_CADDY_IMAGE"] == "caddy:2.11@sha256:" + "a" * 64


def test_a_new_image_recreates_only_that_container(fresh, changed):
    start = len(fresh.calls())
    fresh.up(changed, ("database",))
    calls = fresh.changes(start)
    assert index(calls, r"^docker rm -f postal-mariadb$") < index(
        calls, r"^docker run .*--name postal-mariadb .*registry.example.com/db/mariadb:11.8"
    )
    assert fresh.state()["containers"]["postal-mariadb"]["image"] == "registry.example.com/db/mariadb:11.8"
    assert not any("postal-caddy" in c or "compose" in c for c in calls)
    start = len(fresh.calls())
    fresh.up(changed, ("caddy",))
    calls = fresh.changes(start)
    assert index(calls, r"^docker rm -f postal-caddy$") < index(calls, r"^docker run .*--name postal-caddy ")
    assert fresh.state()["containers"]["postal-caddy"]["image"] == "caddy:2.11@sha256:" + "a" * 64
    assert not any("postal-mariadb" in c or "compose" in c for c in calls)


def test_ops_step_installs_and_enables_everything(host, units):
    state = host.state()
    assert {"google-cloud-ops-agent", "dnf-automatic", "yum-utils"} <= set(state["packages"])
    for unit in (
        "google-cloud-ops-agent",
        "dnf-automatic.timer",
        "postal-gateway-reboot.timer",
        "postal-gateway-backup.timer",
        "postal-gateway-guard.service",
    ):
        assert state["units"][unit] == {"is-enabled": True, "is-active": True}, unit
    assert host.file(operations.AGENT_CONFIG).read_text() == operations.ops_agent_config()
    assert (
        "packages.cloud.google.com/yum/repos/google-cloud-ops-agent-el9-$basearch-all"
        in host.file("/etc/yum.repos.d/google-cloud-ops-agent.repo").read_text()
    )
    guard = host.file(GUARD_SCRIPT)
    assert guard.read_text() == (program.ROOT / "scripts/remote/smtp_guard.py").read_text()
    for tool in ("postal-gateway-reboot", "postal-gateway-backup", "postal-gateway-restore-db", "postal-gateway-guard"):
        assert host.file(f"/usr/local/sbin/{tool}").stat().st_mode & 0o777 == 0o755
    for path, text in units.items():
        assert host.file(path).read_text() == text


def test_ops_step_rerun_changes_nothing(fresh, steps):
    before, start = fresh.tree(), len(fresh.calls())
    fresh.up(steps, ("ops",))
    assert fresh.changes(start) == [] and fresh.tree() == before


def test_new_window_rewrites_the_timer_and_restarts_it_only(fresh, changed):
    start = len(fresh.calls())
    fresh.up(changed, ("ops",))
    calls = fresh.changes(start)
    assert "systemctl daemon-reload" in calls
    assert "systemctl restart postal-gateway-reboot.timer postal-gateway-backup.timer" in calls
    assert not any("ops-agent" in c for c in calls)  # the agent's config did not change
    assert (
        "OnCalendar=Wed *-*-* 23:30:00 UTC" in fresh.file("/etc/systemd/system/postal-gateway-reboot.timer").read_text()
    )


@pytest.mark.parametrize("needed", [False, True])
def test_reboot_only_when_needs_restarting_says_so(fresh, needed):
    state = fakehost.Host(fresh.root)
    state.state["needs_reboot"] = needed
    state.save()
    result = sbin(fresh, "postal-gateway-reboot")
    assert result.returncode == 0, result.stderr
    assert ("systemctl reboot" in fresh.changes()) is needed
    assert fresh.state().get("reboots", 0) == int(needed)


def test_a_dnf_error_is_reported_and_never_reboots(fresh):
    """needs-restarting -r exits 1 on a dnf error too (a broken repository, a held lock)."""
    state = fakehost.Host(fresh.root)
    state.state["dnf_broken"] = state.state["needs_reboot"] = True
    state.save()
    result = sbin(fresh, "postal-gateway-reboot")
    assert result.returncode == 1
    assert "FAILED: needs-restarting -r exited 1 without asking for a reboot" in result.stderr
    assert "Failed to download metadata for repo 'baseos'" in result.stderr
    assert "systemctl reboot" not in fresh.changes() and fresh.state().get("reboots", 0) == 0


def test_everything_comes_back_after_a_reboot(fresh):
    """The reboot path: what systemd and Docker do at boot (fakehost.boot) on the deployed host."""
    before = fresh.state()
    assert before["containers"]["postal-mariadb"]["restart"] == "unless-stopped"
    assert before["containers"]["postal-caddy"]["restart"] == "unless-stopped"
    fakehost.boot(fresh.root)
    state = fresh.state()
    assert state["mounts"]["/opt/postal"][0] == "/dev/disk/by-id/google-postal-data"
    for unit in (
        "docker",
        "google-cloud-ops-agent",
        "dnf-automatic.timer",
        "postal-gateway-reboot.timer",
        "postal-gateway-backup.timer",
    ):
        assert state["units"][unit]["is-active"], unit
    assert state["containers"]["postal-mariadb"]["running"] and state["containers"]["postal-caddy"]["running"]
    assert state["postal"]["running"] == before["postal"]["running"] == ["web", "smtp", "worker"]


def test_without_its_data_disk_docker_stays_down_after_a_reboot(fresh):
    """RequiresMountsFor: containers never start on the boot disk's empty /opt/postal."""
    state = fakehost.Host(fresh.root)
    state.state["disks"].pop("/dev/disk/by-id/google-postal-data")  # detached (restore, or a fault)
    state.save()
    fakehost.boot(fresh.root)
    after = fresh.state()
    assert "/opt/postal" not in after["mounts"] and not after["units"]["docker"]["is-active"]
    assert not any(c["running"] for c in after["containers"].values()) and after["postal"]["running"] == []
    assert after["units"]["google-cloud-ops-agent"]["is-active"]  # the agent still reports (and alerts)


def backups(machine: Machine) -> list[str]:
    return sorted(p.name for p in machine.file(BACKUP_DIR).glob("mariadb-*.mbstream.gz"))


def backup_env(units) -> dict[str, str]:
    """The Environment= lines of the backup service, as systemd hands them to the script."""
    service = units["/etc/systemd/system/postal-gateway-backup.service"]
    return dict(line.split("=", 2)[1:] for line in service.splitlines() if line.startswith("Environment="))


def test_backup_streams_mariadb_onto_the_data_disk_and_keeps_n_days(fresh, units):
    fresh.file("/opt/postal/mariadb/ibdata1").write_text("pages")
    old = fresh.file(BACKUP_DIR) / "mariadb-20200101T033000Z.mbstream.gz"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"old")
    subprocess.run(["touch", "-d", "2020-01-01", str(old)], check=True)
    result = sbin(fresh, "postal-gateway-backup", **backup_env(units))
    assert result.returncode == 0, result.stderr
    (name,) = backups(fresh)  # the old one is past backupRetentionDays
    archive = gzip.decompress((fresh.file(BACKUP_DIR) / name).read_bytes()).decode()
    assert archive.startswith("MBSTREAM1\n") and "ibdata1" in archive and "mysql/global_priv.frm" in archive
    # checked by unpacking it with the image's mbstream into a scratch directory, removed afterwards
    assert any(re.search(r"^M docker run --rm --interactive .*:/restore .* mbstream -x$", c) for c in fresh.calls())
    assert {p.name for p in fresh.file(BACKUP_DIR).iterdir()} == {name, "last-backup.log"}
    assert any(c.startswith("Q docker exec postal-mariadb sh -c ") and "--stream=xbstream" in c for c in fresh.calls())
    assert "MARIADB_ROOT_PASSWORD=" not in "\n".join(fresh.calls())  # no secret on a command line


def test_failed_backup_says_why_and_leaves_no_file(fresh, units):
    fakehost_state = fakehost.Host(fresh.root)
    fakehost_state.state["containers"]["postal-mariadb"]["running"] = False
    fakehost_state.save()
    result = sbin(fresh, "postal-gateway-backup", **backup_env(units))
    assert result.returncode != 0
    # stderr is what systemd puts in the journal (and the Ops Agent in Cloud Logging)
    assert "postal-gateway-backup: FAILED: mariadb-backup in postal-mariadb did not complete" in result.stderr
    assert "container postal-mariadb is not running" in result.stderr  # mariadb-backup's own words, from its log
    assert backups(fresh) == [] and list(fresh.file(BACKUP_DIR).glob(".*")) == []


def test_wrong_password_reaches_the_journal(fresh, units):
    fresh.file("/opt/postal/secrets/mariadb-root-password").write_text("not the one")
    result = sbin(fresh, "postal-gateway-backup", **backup_env(units))
    assert result.returncode != 0 and "Access denied for user 'root'" in result.stderr
    assert backups(fresh) == []


@pytest.mark.parametrize("lost", ["ibdata1", "mysql/global_priv.frm"])
def test_a_stream_without_the_system_tables_fails_loudly(fresh, units, lost):
    """mariadb-backup exited 0 but its stream is not a MariaDB backup: refused, nothing kept."""
    fresh.file(f"/opt/postal/mariadb/{lost}").unlink()
    result = sbin(fresh, "postal-gateway-backup", **backup_env(units))
    assert result.returncode != 0
    assert f"FAILED: the backup stream lacks {lost}: not a MariaDB backup" in result.stderr
    assert backups(fresh) == [] and list(fresh.file(BACKUP_DIR).glob(".*")) == []


def test_a_stream_that_does_not_unpack_fails_loudly(fresh, units, monkeypatch):
    monkeypatch.setattr(fakehost, "_mbstream", lambda host, datadir: "garbage\n")
    result = sbin(fresh, "postal-gateway-backup", **backup_env(units))
    assert result.returncode != 0 and "FAILED: the backup stream does not unpack" in result.stderr
    assert "mbstream: incorrect stream chunk" in result.stderr
    assert backups(fresh) == []


def test_restore_drill_puts_the_backup_back(fresh, units):
    """docs/operations.md "Restore MariaDB from its backup", step by step on the fake host."""
    fresh.file("/opt/postal/mariadb/ibdata1").write_text("good pages")
    assert sbin(fresh, "postal-gateway-backup", **backup_env(units)).returncode == 0
    fresh.file("/opt/postal/mariadb/ibdata1").write_text("torn pages")  # what a crash left
    start = len(fresh.calls())
    result = sbin(fresh, "postal-gateway-restore-db")
    assert result.returncode == 0, result.stderr
    calls = fresh.changes(start)
    assert (
        index(calls, r"^docker compose -p postal stop$")
        < index(calls, r"^docker stop postal-mariadb$")
        < index(calls, r"^docker run --rm --interactive .* mbstream -x$")
        < index(calls, r"mariadb-backup --prepare --target-dir=/restore$")
        < index(calls, r"^docker start postal-mariadb$")
        < index(calls, r"^docker compose -p postal start$")
    )
    assert fresh.file("/opt/postal/mariadb/ibdata1").read_text() == "good pages"
    assert fresh.file(f"/opt/postal/mariadb/{fakehost.CHECKPOINTS}").read_text() == "backup_type = log-applied\n"
    (kept,) = fresh.file("/opt/postal").glob("mariadb.before-restore-*")
    assert (kept / "ibdata1").read_text() == "torn pages"
    state = fresh.state()
    assert state["containers"]["postal-mariadb"]["running"] and state["postal"]["running"]


def test_restore_without_a_backup_stops_before_touching_anything(fresh):
    start = len(fresh.calls())
    result = sbin(fresh, "postal-gateway-restore-db")
    assert result.returncode != 0 and "no backup in /opt/postal/backup/mariadb" in result.stderr
    assert fresh.changes(start) == []


# --- the staging stack ---


def stack_values(name: str) -> dict[str, str]:
    stack = yaml.safe_load((program.ROOT / f"Pulumi.{name}.yaml").read_text())["config"]
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in stack.items()}


def test_staging_stack_is_valid_and_apart_from_prod():
    staging, prod = stack_values("staging"), stack_values("prod")
    run = program.run(staging, replace=True)
    assert run.error is None, run.error
    for key in ("gcp:project", NS + "hostname", NS + "sendingDomains", NS + "alertEmail"):
        assert staging[key] != prod.get(key), key
    assert staging[NS + "tls"] == "internal"
    assert int(staging[NS + "dataDiskSizeGb"]) < 50 and int(staging[NS + "bootDiskSizeGb"]) <= 20
    # none of its DNS names is one prod publishes
    prod_run = program.run(prod, replace=True)
    names = {(r.inputs["name"], r.inputs["type"]) for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")}
    prod_names = {
        (r.inputs["name"], r.inputs["type"]) for r in prod_run.of_type("cloudflare:index/dnsRecord:DnsRecord")
    }
    assert names and not names & prod_names
    units = units_of(commands(run)["ops"])  # staging reboots for updates a day before prod
    assert (
        unit_value(units["/etc/systemd/system/postal-gateway-reboot.timer"], "OnCalendar") == "Sat *-*-* 02:00:00 UTC"
    )
