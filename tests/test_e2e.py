"""scripts/e2e.py against a stand-in `pulumi` on PATH (tests/fake_pulumi.py: the commands pulumi.automation
runs, the CLI's answers and its engine events, over gRPC or the event-log file) and a stand-in smoke test.
Each `pulumi` call is a fork of one stand-in server (see fake_pulumi.py); runs that are not interrupted call
scripts.e2e's main() in this process.

Every failure path must still destroy and remove the stack, nothing secret may be printed, and the
timing table comes from the engine's events.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import fake_pulumi
import program
import pytest
import yaml
from pulumi.automation import PulumiCommand
from pulumi.automation.errors import InvalidVersionError
from pulumi.automation.events import EngineEvent

from scripts import e2e

TESTS = Path(__file__).resolve().parent
TOKEN = "cf-token-7Hq2LmZ9xR4wP1sV"  # a CLOUDFLARE_API_TOKEN the run must never print
FILLED = {
    "gcp:project": "acme-e2e",
    "postal-gateway:hostname": "postal-e2e.test.rdo-dev.com",
    "postal-gateway:cloudflareZone": "rdo-dev.com",
    "postal-gateway:sendingDomains": ["e2e.rdo-dev.com"],
    "postal-gateway:adminEmail": "ops@rdo-dev.com",
    "postal-gateway:alertEmail": "ops@rdo-dev.com",
    "postal-gateway:smtpSourceRanges": ["198.51.100.7/32"],
}


@pytest.fixture(scope="session")
def stand_in_server(tmp_path_factory):
    """The stand-in CLI's server (tests/fake_pulumi.py --serve): every test's `pulumi` calls are forks of it."""
    path = tmp_path_factory.mktemp("stand-in") / "pulumi.sock"
    server = subprocess.Popen(
        [sys.executable, "-I", str(TESTS / "fake_pulumi.py"), "--serve", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout.readline() == "ready\n"
    yield path
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def cli(tmp_path, monkeypatch, capfd, stand_in_server):
    """PATH with the stand-in `pulumi`, its state directory, and a filled-in template."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "pulumi"
    client = TESTS / "fake_pulumi_client.py"
    stand_in.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{client}" "{stand_in_server}" "$@"\n')
    stand_in.chmod(0o755)
    template = yaml.safe_load(e2e.TEMPLATE.read_text())
    template["config"].update(FILLED)
    filled = tmp_path / "Pulumi.e2e.yaml"
    filled.write_text(yaml.safe_dump(template))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_PULUMI_HOME": str(tmp_path / "home"),
        "CLOUDFLARE_API_TOKEN": TOKEN,
        "PYTHONPATH": str(TESTS),
    }
    env.pop("GITHUB_STEP_SUMMARY", None)
    return {
        "env": env,
        "home": tmp_path / "home",
        "template": filled,
        "tmp": tmp_path,
        "monkeypatch": monkeypatch,
        "capfd": capfd,
    }


def command(cli, *extra, smoke=True):
    smoke_cmd = f"{sys.executable} -I {TESTS / 'stand_in_smoke.py'}"
    base = [sys.executable, "-m", "scripts.e2e", "--template", str(cli["template"]), "--id", "t1"]
    base += ["--summary", str(cli["tmp"] / "summary.md")] + (["--smoke-test", smoke_cmd] if smoke else [])
    return base + list(extra)


def run(cli, *extra, fail="", version=None, smoke_exit=0):
    """`python -m scripts.e2e` as main(argv) in this process, which has imported the SDK already (a new
    process would spend ~0.3 s importing it again; the interrupted runs below are real processes): with the
    environment a shell would give it, its signal handlers put back afterwards. Returns the exit code and all it
    printed, warnings included (a process would print them to stderr)."""
    env = {**cli["env"], "FAKE_PULUMI_FAIL": fail, "FAKE_SMOKE_EXIT": str(smoke_exit)}
    if version:
        env["FAKE_PULUMI_VERSION"] = version
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    cli["capfd"].readouterr()
    with cli["monkeypatch"].context() as patch, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("default")
        for name in set(os.environ) - set(env):
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        patch.chdir(program.ROOT)
        try:
            code = e2e.main(command(cli, *extra)[3:])
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    out, err = cli["capfd"].readouterr()
    return code, out + err + "".join(
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in warned
    )


def calls(cli):
    path = cli["home"] / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [[a for a in json.loads(line)["argv"] if a != "--non-interactive"] for line in lines]


def verbs(cli):
    """The CLI commands run, without flags: ['version'], ['stack', 'init', 'e2e-t1'], ['up'], ..."""
    words = [[w for w in argv if not w.startswith("-")] for argv in calls(cli)]
    return [w[:1] if w[0] in ("version", "up", "destroy") else w[:2] for w in words]


def stacks(cli):
    state = cli["home"] / "state.json"
    return json.loads(state.read_text())["stacks"] if state.exists() else {}


def assert_no_secret(output, cli):
    assert fake_pulumi.SECRET_VALUE not in output and TOKEN not in output
    summary = cli["tmp"] / "summary.md"
    if summary.exists():
        assert fake_pulumi.SECRET_VALUE not in summary.read_text() and TOKEN not in summary.read_text()


def test_the_stand_in_passes_the_sdks_version_check(cli, monkeypatch):
    monkeypatch.setenv("PATH", cli["env"]["PATH"])
    monkeypatch.setenv("FAKE_PULUMI_HOME", str(cli["home"]))
    monkeypatch.delenv("PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK", raising=False)
    assert str(PulumiCommand().version) == "3.272.0"
    monkeypatch.setenv("FAKE_PULUMI_VERSION", "3.0.9")  # below _minimum_version.py's 3.1.0
    with pytest.raises(InvalidVersionError, match="Minimum version requirement failed"):
        PulumiCommand()


@pytest.mark.parametrize("version, log", [("3.272.0", "tcp://127.0.0.1:"), ("3.205.0", "eventlog.txt")])
def test_a_full_run_is_clean_timed_and_prints_no_secret(cli, version, log):
    code, output = run(cli, version=version)
    assert code == 0, output
    assert verbs(cli) == [
        ["version"],
        ["stack", "init"],
        ["config", "set-all"],
        ["up"],
        ["stack", "output"],
        ["stack", "output"],
        ["stack", "history"],
        ["stack", "output"],
        ["stack", "output"],
        ["stack", "output"],  # the smoke test's own read
        ["config", "set"],
        ["up"],
        ["stack", "output"],
        ["stack", "output"],
        ["stack", "history"],
        ["stack", "export"],
        ["destroy"],
        ["stack", "history"],
        ["stack", "export"],
        ["stack", "export"],
        ["stack", "rm"],
    ]
    argv = calls(cli)
    init, set_all, up, knob, second_up = argv[1], argv[2], argv[3], argv[10], argv[11]
    assert init == ["stack", "init", "e2e-t1"]
    assert "--path" in set_all and "postal-gateway:ephemeral=true" in set_all
    assert "postal-gateway:sendingDomains[0]=e2e.rdo-dev.com" in set_all and "gcp:project=acme-e2e" in set_all
    assert up[up.index("--policy-pack") : up.index("--policy-pack") + 2] == ["--policy-pack", "policy"]
    assert up[up.index("--event-log") + 1].startswith("/") == (log == "eventlog.txt")
    assert log in up[up.index("--event-log") + 1] and up[-2:] == ["--stack", "e2e-t1"]
    assert knob[knob.index("--") + 1 :] == ["Sat 03:00"] and "postal-gateway:maintenanceWindow" in knob
    assert "--policy-pack" in second_up
    assert stacks(cli) == {}  # destroyed and removed
    assert "e2e: clean: stack e2e-t1 destroyed and removed" in output
    assert_no_secret(output, cli)
    assert "(key [secret])" in output  # the smoke test's echo of the API key, redacted
    # the table: each resource's and bootstrap step's own duration, from the events
    for row in (
        "| postal-vm (gcp:compute/instance:Instance) | create | 38 |",
        "| postal-os (bootstrap step) | create | 141 |",
        "| postal-postal (bootstrap step) | create | 205 |",
        "| postal-ops (bootstrap step) | update | 31 |",
        "| postal-ip (gcp:compute/address:Address) | delete | 3 |",
    ):
        assert row in output, row
    assert "| postal-vm (gcp:compute/instance:Instance) | same |" not in output  # unchanged: not listed
    assert "ProjectApis" not in output.split("Timings")[1]  # components take no time of their own
    for total in ("to the first successful `up`", "to the first Sent", "second `up`", "| destroy |"):
        line = next(x for x in output.splitlines() if total in x)
        assert line.rstrip(" |").split("|")[-1].strip().isdigit(), line
    summary = (cli["tmp"] / "summary.md").read_text()
    assert "| postal-os (bootstrap step) | create | 141 |" in summary and "e2e: clean" in summary


@pytest.mark.parametrize(
    "fail, smoke_exit, reached, says, code",
    [
        ("up", 0, ["up"], "pulumi failed", 1),
        ("", 1, ["up"], "the smoke test failed (exit 1)", 1),
        ("up2", 0, ["up", "up"], "pulumi failed", 1),
        ("destroy-once", 0, ["up", "up"], "destroy failed", 0),  # the second destroy cleans up
    ],
)
def test_every_failure_still_destroys_and_removes_the_stack(cli, fail, smoke_exit, reached, says, code):
    exit_code, output = run(cli, fail=fail, smoke_exit=smoke_exit)
    assert exit_code == code, output
    ran = [v[0] for v in verbs(cli) if v[0] in ("up", "destroy")]
    assert ran[: len(reached)] == reached and ran[len(reached) :] in (["destroy"], ["destroy", "destroy"])
    assert verbs(cli)[-1] == ["stack", "rm"] and stacks(cli) == {}
    assert says in output and "e2e: clean: stack e2e-t1 destroyed and removed" in output
    assert_no_secret(output, cli)
    if code:  # the job summary names the failure on one line, with the CLI's own error
        summary = (cli["tmp"] / "summary.md").read_text()
        assert "\n- " in summary and ("error: update failed" in summary or "smoke test failed" in summary)


def test_a_stack_that_cannot_be_created_has_nothing_to_destroy(cli):
    code, output = run(cli, fail="stack-init")
    assert code == 1
    assert [v[0] for v in verbs(cli)] == ["version", "stack"]
    assert "no stack was created: nothing to destroy" in output and "e2e: nothing was created" in output


def test_a_destroy_that_keeps_failing_lists_what_is_left_and_keeps_the_stack(cli):
    code, output = run(cli, fail="destroy")
    assert code == 1
    assert [v[0] for v in verbs(cli)].count("destroy") == 2 and ["stack", "rm"] not in verbs(cli)
    left = stacks(cli)["e2e-t1"]["resources"]
    assert left and "e2e: NOT clean: the stack e2e-t1 still holds" in output
    for res in left:
        assert f"{res['type']} {res['urn'].rsplit('::', 1)[-1]}" in output
    assert "pulumi destroy -s e2e-t1 && pulumi stack rm e2e-t1" in output
    assert "nothing it created is left" not in output
    assert "request token [secret]" in output  # the provider's echo of the token, redacted
    assert_no_secret(output, cli)


def test_a_killed_update_reports_its_pending_operation(cli):
    code, output = run(cli, fail="up-pending")
    assert code == 1
    assert "left operations pending on: gcp:compute/instance:Instance postal-vm" in output
    assert "e2e: NOT clean" in output and "postal-vm (pending operation)" in output


def start(cli, *extra, fail="hang-up", wait=True):
    env = {**cli["env"], "FAKE_PULUMI_FAIL": fail}
    proc = subprocess.Popen(
        command(cli, *extra),
        cwd=program.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    deadline = time.time() + 90
    while wait and not (cli["home"] / "hanging").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize(
    "how, says",
    [
        ("ctrl-c", "SIGINT received"),  # the terminal sends SIGINT to the whole foreground group
        ("sigterm", "SIGTERM received"),  # to the script only: it asks the CLI to stop
        ("timeout", "--timeout"),
    ],
)
def test_an_interrupted_up_is_cancelled_then_destroyed(cli, how, says):
    if how == "timeout":
        # The deadline may come before or during the hanging step: either way the CLI cancels. A run whose
        # deadline came before its `up` could take a Ctrl-C (a loaded machine) proves nothing here: it is
        # tried again from scratch with a longer deadline.
        for timeout in (0.5, 4, 16):
            proc = start(cli, "--timeout", str(timeout), wait=False)
            output, _ = proc.communicate(timeout=120)
            if (cli["home"] / "cancellable").exists():
                break
            shutil.rmtree(cli["home"])
            (cli["tmp"] / "summary.md").unlink(missing_ok=True)
    else:
        proc = start(cli)
        os.killpg(proc.pid, signal.SIGINT) if how == "ctrl-c" else os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert says in output and "^C received; cancelling" in output and "update canceled" in output
    assert f"- interrupted: {says}" in (cli["tmp"] / "summary.md").read_text()
    assert [v[0] for v in verbs(cli) if v[0] in ("up", "destroy")] == ["up", "destroy"]  # no second up
    assert stacks(cli) == {} and "e2e: clean: stack e2e-t1 destroyed and removed" in output
    if how != "timeout":
        assert "| postal-os (bootstrap step) | create | 141 |" in output  # the step in flight finished


def test_placeholders_stop_the_run_before_anything_is_created(cli):
    code, output = run(cli, "--template", str(e2e.TEMPLATE))
    assert code == 2 and calls(cli) == []
    for key in ("gcp:project", "postal-gateway:hostname", "postal-gateway:sendingDomains", "postal-gateway:adminEmail"):
        assert key in output
    assert "Nothing was created" in output and "--set KEY=VALUE" in output
    # --set fills them (YAML values: lists too); a key without a namespace is the program's
    sets = [f"{k}={json.dumps(v)}" for k, v in FILLED.items()] + ["maintenanceWindow=Sat 03:00"]
    config = e2e.load_template(e2e.TEMPLATE, sets)
    assert e2e.placeholders(config) == []
    assert config["postal-gateway:sendingDomains"] == ["e2e.rdo-dev.com"]
    assert config["postal-gateway:maintenanceWindow"] == "Sat 03:00"


def test_the_template_is_the_programs_config_once_filled():
    template = yaml.safe_load(e2e.TEMPLATE.read_text())["config"]
    assert {k.split(":")[0] for k in template} == {"gcp", "postal-gateway"}
    left = {entry.split(" ")[0] for entry in e2e.placeholders(template)}
    assert {"gcp:project", "postal-gateway:hostname", "postal-gateway:cloudflareZone"} <= left
    assert {"postal-gateway:sendingDomains", "postal-gateway:adminEmail", "postal-gateway:alertEmail"} <= left
    # filled in, it is a valid configuration for an e2e stack (and ephemeral is refused on prod)
    filled = {**template, **FILLED, "postal-gateway:ephemeral": True}
    flat = {
        k: json.dumps(v) if isinstance(v, (list, dict)) else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in filled.items()
    }
    result = program.run(flat, replace=True, stack="e2e-t1")
    assert result.error is None, result.error
    assert not program.run(flat, replace=True, stack="prod").resources


def test_flatten_gives_set_all_path_keys():
    flat = e2e.flatten({"a:list": ["x", "y"], "a:map": {"k": 1}, "a:flag": True, "a:n": 20})
    assert flat == {"a:list[0]": "x", "a:list[1]": "y", "a:map.k": "1", "a:flag": "true", "a:n": "20"}


def test_the_stand_ins_resources_are_the_programs(run):
    registered = {(r.type, r.name): r for r in run.resources}
    by_urn = {r.urn: r for r in run.resources}
    for typ, name, parent, custom in fake_pulumi.RESOURCES:
        res = registered[(typ, name)]
        assert res.custom == custom
        assert (by_urn[res.parent].type if res.parent in by_urn else None) == parent


# The events of a first up, a second up and a destroy, in the CLI's event-log format (one apitype.EngineEvent
# JSON per line), as the stand-in CLI wrote them: recorded here, not from a real deployment.
RECORDED = TESTS / "data" / "e2e_events.jsonl"


def test_the_timing_table_from_a_recorded_event_stream():
    timings = e2e.Timings()
    phases = iter(("up", "up2", "destroy"))
    for line in RECORDED.read_text().splitlines():
        event = EngineEvent.from_json(json.loads(line))
        if event.prelude_event:
            timings.phase = next(phases)
        timings.on_event(event)
    rows = {(s.phase, s.name, s.op): (s.end - s.start if s.end else None, s.failed) for s in timings.steps}
    assert rows[("up", "postal-vm", "create")] == (38, False)
    assert rows[("up", "postal-os", "create")] == (141, False)
    assert rows[("up2", "postal-ops", "update")] == (31, False)
    assert ("up2", "postal-vm", "same") not in rows and not any(name == "postal" for _, name, _ in rows)
    assert all(end is not None for end, _ in rows.values())
    table = timings.table()
    assert "| postal-postal (bootstrap step) | create | 205 |" in table
    assert "| to the first Sent (smoke test) |  | not reached |" in table  # no marks: only events


def test_overlapping_operations_and_a_failure_are_timed_by_urn():
    """The engine runs independent resources in parallel: their events interleave, each pair is matched by URN."""

    def event(seq, ts, kind, name, typ, op="create", custom=True):
        urn = f"urn:pulumi:e2e-t1::postal-gateway::{typ}::{name}"
        state = {"type": typ, "urn": urn, "custom": custom, "id": "", "parent": ""}
        meta = {"op": op, "urn": urn, "type": typ, "old": None, "new": state, "provider": "", "detailedDiff": None}
        body = {"metadata": meta} if kind != "resOpFailedEvent" else {"metadata": meta, "status": 1, "steps": 1}
        return EngineEvent.from_json({"sequence": seq, "timestamp": ts, kind: body})

    disk, ip, step = "gcp:compute/disk:Disk", "gcp:compute/address:Address", "command:remote:Command"
    timings = e2e.Timings(phase="up")
    for args in [
        (0, 100, "resourcePreEvent", "postal-data", disk),
        (1, 101, "resourcePreEvent", "postal-ip", ip),
        (2, 104, "resOutputsEvent", "postal-ip", ip),
        (3, 109, "resOutputsEvent", "postal-data", disk),
        (4, 110, "resourcePreEvent", "postal-os", step),
        (5, 250, "resOpFailedEvent", "postal-os", step),
        (6, 110, "resourcePreEvent", "postal", "postal-gateway:index:MailHost", "create", False),
    ]:
        timings.on_event(event(*args))
    table = timings.table()
    assert "| postal-data (gcp:compute/disk:Disk) | create | 9 |" in table
    assert "| postal-ip (gcp:compute/address:Address) | create | 3 |" in table
    assert "| postal-os (bootstrap step) | create | 140 (failed) |" in table
    assert "MailHost" not in table  # a component has no time of its own
