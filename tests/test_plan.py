"""scripts/plan.py: the offline plan a newcomer reads before having credentials."""

import asyncio
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import program
import pytest
import yaml

from scripts import offline, plan

ROOT = program.ROOT
PROD = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]


@pytest.fixture(scope="module")
def prod():
    code, text = plan.plan("prod")
    assert code == 0, text
    return text


@pytest.fixture(scope="module")
def prod_run():
    """The committed prod stack under the same mocks, to compare the plan with what was registered."""
    values, secret, _ = plan.stack_config_from(PROD)
    run = offline.execute(offline.Mocks(), values, tuple(secret), "prod", preview=True)
    assert run.error is None, run.error
    return run


def section(text: str, title: str) -> str:
    (body,) = [s for s in text.split("\n\n") if s.startswith(title)]
    return body


def test_plan_of_the_committed_prod_stack_shows_what_up_creates(prod, prod_run):
    resources = section(prod, "Resources:")
    listed = re.findall(r"^ +(\S+)  (\S+)", resources, re.M)
    assert sorted(listed) == sorted((r.type, r.name) for r in prod_run.resources)
    assert re.search(r"gcp:compute/address:Address  postal-ip  \[protected\]", resources)
    assert re.search(r"gcp:compute/disk:Disk  postal-data  \[protected, retained on delete\]", resources)
    assert re.search(r"gcp:storage/bucket:Bucket  postal-backups  \[protected, retained on delete\]", resources)
    assert resources.count("[protected") == sum(r.protect for r in prod_run.resources) == 3


def test_every_firewall_rule_is_listed_with_its_sources(prod, prod_run):
    rules = section(prod, "Firewall rules")
    assert "postal-allow-ssh: ingress tcp:22 from IAP TCP forwarding (35.235.240.0/20)" in rules
    assert f"postal-allow-smtp: ingress tcp:25 from {', '.join(PROD['postal-gateway:smtpSourceRanges'])}" in rules
    assert "postal-allow-http: ingress tcp:80 from 0.0.0.0/0" in rules
    assert "postal-allow-uptime-checks: ingress tcp:443 from Google's uptime-check addresses" in rules
    listed = {line.split(":")[0].strip() for line in rules.splitlines()[1:]}
    assert listed == {r.name for r in prod_run.of_type("gcp:compute/firewall:Firewall")}


def test_dns_records_per_zone_with_unknowns_marked(prod, prod_run):
    dns = section(prod, "DNS records")
    listed = re.findall(r"^    (\w+) +(\S+)  ", dns, re.M)
    records = prod_run.of_type("cloudflare:index/dnsRecord:DnsRecord")
    assert sorted(listed) == sorted((r.inputs["type"], r.inputs["name"]) for r in records)
    assert "  zone rdo-dev.com:" in dns
    assert re.search(r"A +postal\.rdo-dev\.com  <publicIp>", dns)
    assert re.search(r"MX +rp\.postal\.rdo-dev\.com  10 postal\.rdo-dev\.com", dns)
    assert re.search(r"TXT +postal-[A-Z]{6}\._domainkey\.rdo-dev\.com  v=DKIM1; t=s; h=sha256; p=<public key", dns)
    assert program.FAKE_IP not in prod  # a mock's value is never shown as if it were real
    assert "Existing records" in dns  # says what it could not check offline


def test_bootstrap_steps_in_dependency_order_with_what_each_does(prod, prod_run):
    steps = section(prod, "Bootstrap steps")
    order = re.findall(r"^  \d+\. ([\w-]+)", steps, re.M)
    commands = program.commands(prod_run)
    assert sorted(order) == sorted(commands)
    by_urn = {c.urn: step for step, c in commands.items()}
    for step, command in commands.items():
        for dep in command.depends_on:
            if dep in by_urn:
                assert order.index(by_urn[dep]) < order.index(step), f"{step} listed before {by_urn[dep]}"
    for step in order:
        described = steps.split(f". {step}")[1].splitlines()[1].strip()
        assert len(described) > 20 and not described.startswith("PG_"), step
    assert "caddy (after os, the A record postal.rdo-dev.com)" in steps


def test_outputs_are_listed_secrets_hidden(prod, prod_run):
    outputs = section(prod, "Outputs:")
    names = re.findall(r"^  (\w+) = ", outputs, re.M)
    assert names == list(prod_run.outputs)
    for secret in ("apiKey", "smtpPassword", "adminPassword", "sshPrivateKey"):
        assert f"  {secret} = [secret]" in outputs
    assert "publicIp = <the static IP, known after up>" in outputs
    assert re.search(r"instanceName = <postal-vm-…", outputs)  # Pulumi's auto-name, not the mock's
    assert "PRIVATE" not in prod


def test_config_warnings_come_first(prod):
    warnings = section(prod, "Config warnings:")
    assert "smtpSourceRanges lists RFC 5737 documentation addresses" in warnings


def test_secure_values_get_placeholders_and_are_never_shown():
    stack = dict(PROD)
    cipher = "v1:AAAAAAAAAAAAAAAA:c2VjcmV0LWNpcGhlcnRleHQ="
    stack.update(
        {
            "postal-gateway:tls": "custom",
            "postal-gateway:tlsCertificate": {"secure": cipher},
            "postal-gateway:tlsPrivateKey": {"secure": cipher},
            "postal-gateway:smtpSourceRanges": {"secure": cipher},
            "cloudflare:apiToken": {"secure": cipher},
        }
    )
    values, secret, notes = plan.stack_config_from(stack)
    assert "postal-gateway:smtpSourceRanges" in secret and "cloudflare:apiToken" in secret
    assert any("smtpSourceRanges is secret and not decrypted" in n for n in notes)
    assert any("tlsCertificate/tlsPrivateKey" in n for n in notes)
    code, text = plan.render("test", values, secret, notes)
    assert code == 0, text
    assert cipher not in text and plan.PLACEHOLDERS["smtpSourceRanges"][2:-2] not in text
    assert "postal-allow-smtp: ingress tcp:25 from <secret smtpSourceRanges>" in text
    assert "Config warnings:" in text and "tlsCertificate/tlsPrivateKey are secret" in text


def test_a_config_error_is_the_programs_own_message():
    stack = dict(PROD)
    stack["postal-gateway:sshSourceRanges"] = ["10.0.0.1/8"]
    code, text = plan.render("test", *plan.stack_config_from(stack))
    assert code == 1
    assert "postal-gateway:sshSourceRanges: '[\"10.0.0.1/8\"]' is not valid" in text and "Fix: " in text


def test_an_unknown_stack_names_the_stacks_there():
    code, text = plan.plan("nosuch")
    assert code == 2 and "Pulumi.nosuch.yaml not found" in text and "prod" in text


def test_plan_runs_on_a_clean_clone_without_the_tests(tmp_path):
    """A checkout's files (tracked or new, not ignored) minus tests/: the script needs nothing else."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if name.startswith("tests/") or not (ROOT / name).is_file():
            continue
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    code, out, err = run_script_alone(tmp_path, "scripts/plan.py", "-s", "prod")
    assert code == 0, err[-2000:]
    assert "Bootstrap steps" in out and "Outputs:" in out


def run_script_alone(checkout, script: str, *args: str) -> tuple[int, str, str]:
    """`python <script> <args>` in `checkout`, as a process of its own that has none of this repository's
    modules loaded and no path to them: a fork of this process that forgets every module loaded from
    the repository (tests, components, scripts) and its sys.path entries, so the script imports its
    own from `checkout` (a file it read from tests/ would be missing there). The third-party modules
    (the SDK, the providers: 4 s to import) stay loaded; they are not what is checked."""
    out, err = checkout / ".stdout", checkout / ".stderr"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            fd_out, fd_err = os.open(out, os.O_WRONLY | os.O_CREAT), os.open(err, os.O_WRONLY | os.O_CREAT)
            os.dup2(fd_out, 1)
            os.dup2(fd_err, 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)  # noqa: SIM115 (until os._exit)
            ours = {str(ROOT), str(ROOT / "tests"), str(ROOT / "policy"), ""}
            sys.path[:] = [str(checkout / Path(script).parent)] + [p for p in sys.path if p not in ours]
            for name, module in list(sys.modules.items()):
                origin = getattr(module, "__file__", None) or ""
                if Path(origin).is_relative_to(ROOT) and not Path(origin).is_relative_to(sys.prefix):
                    del sys.modules[name]
            # the parent's event loop runs calls in its thread pool, whose threads the fork did not copy
            asyncio.set_event_loop(asyncio.new_event_loop())
            os.chdir(checkout)
            sys.argv = [script, *args]
            try:
                runpy.run_path(script, run_name="__main__")
                code = 0
            except SystemExit as exit_:  # as the interpreter reads it: None is 0, a message is printed and 1
                if exit_.code is None or isinstance(exit_.code, int):
                    code = exit_.code or 0
                else:
                    print(exit_.code, file=sys.stderr)
                    code = 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + 300  # a fork of a threaded process could hang: fail, never wait forever
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"{script} did not finish in 300 s:\n{err.read_text()[-2000:]}")
        time.sleep(0.02)
    return os.waitstatus_to_exitcode(done[1]), out.read_text(), err.read_text()


def test_the_plan_is_the_readmes_first_command_after_install():
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploy") :]
    block = re.search(r"```\n(.*?)```", deploy, re.S)[1]
    first = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert first[-1] == "venv/bin/python scripts/plan.py -s prod"
    assert all(line.startswith("pulumi install") for line in first[:-1])
