"""End-to-end run on your own cloud: a throwaway stack up, the smoke test, one knob changed, then destroy.

    python -m scripts.e2e [--set KEY=VALUE ...] [--inbox imaps://USER@HOST/MAILBOX] [-- SMOKE TEST OPTIONS]

Creates the stack `e2e-<short id>` from the committed template Pulumi.e2e.yaml (placeholders must be
filled, in the file or with --set), runs `pulumi up`, the smoke test, a second `up` with
maintenanceWindow changed, and ALWAYS `destroy` and `stack rm` afterwards: after a failure, the
--timeout, Ctrl-C (SIGINT) or SIGTERM too. It ends with the resources still in the stack (none,
or the list) and a timing table built from the engine's events.

Pulumi's Automation API (pulumi.automation, the pinned SDK) drives the `pulumi` CLI on PATH: log in
to the backend and export PULUMI_CONFIG_PASSPHRASE and CLOUDFLARE_API_TOKEN first. Exit 0 = the
stack came up, the smoke test passed, the knob changed, and nothing was left in the stack.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "Pulumi.e2e.yaml"
PROJECT = "postal-gateway"
PLACEHOLDER = re.compile(r"<[^<>]+>")
SHORT_ID = re.compile(r"[a-z0-9]{1,16}")  # the VM's service account id (postal-gw-e2e-<id>) takes 30
KNOB = f"{PROJECT}:maintenanceWindow"
KNOB_VALUES = ("Sun 02:00", "Sat 03:00")  # the default, and the value the second up sets
SMOKE_TEST = [sys.executable, "-m", "scripts.smoke_test"]
SENT = re.compile(r"^PASS\s+delivery\s+Sent\b")  # the smoke test's line for a delivery Postal marked Sent
BOOTSTRAP = "command:remote:Command"
# Environment values that are secret whatever prints them.
SECRET_ENV = (
    "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_ACCESS_TOKEN",
    "CLOUDFLARE_API_TOKEN",
    "PG_INBOX_PASSWORD",
    "PG_INBOX_TOKEN",
)
# Not billable, not deletable: the stack itself and the providers.
BOOKKEEPING = re.compile(r"^(pulumi:pulumi:Stack|pulumi:providers:.*)$")


class Stop(Exception):
    """The run cannot go on; the message says why (never a secret)."""


# --- template ---


def load_template(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The template's `config:` map with --set KEY=VALUE applied (VALUE is YAML; KEY without a namespace is ours)."""
    try:
        config = dict((yaml.safe_load(path.read_text()) or {}).get("config") or {})
    except (OSError, yaml.YAMLError) as err:
        raise Stop(
            f"{path.name}: cannot read the template ({err}). Fix: restore it with git checkout {path.name}"
        ) from err
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Stop(f"--set {item!r}: expected KEY=VALUE, e.g. --set gcp:project=my-sandbox")
        config[key if ":" in key else f"{PROJECT}:{key}"] = yaml.safe_load(value) if value else ""
    return config


def placeholders(config: dict[str, Any]) -> list[str]:
    """`key (<placeholder>)` for every value that still holds one."""

    def found(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [p for v in value.values() for p in found(v)]
        if isinstance(value, list):
            return [p for v in value for p in found(v)]
        return PLACEHOLDER.findall(str(value))

    return [f"{key} ({', '.join(found(value))})" for key, value in config.items() if found(value)]


def flatten(config: dict[str, Any]) -> dict[str, str]:
    """Config as `pulumi config set-all --path` takes it: lists and maps as path keys, YAML scalars as text."""
    flat: dict[str, str] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{key}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                put(f"{key}[{i}]", v)
        else:
            flat[key] = str(value).lower() if isinstance(value, bool) else str(value)

    for key, value in config.items():
        put(key, value)
    return flat


# --- output that never shows a secret ---


class Redactor:
    """Replaces every known secret value with [secret] in what the run prints."""

    def __init__(self) -> None:
        self.values: set[str] = {v for name in SECRET_ENV if len(v := os.environ.get(name, "")) >= 4}

    def add(self, value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                self.add(v)
        elif isinstance(value, list):
            for v in value:
                self.add(v)
        elif value is not None and len(text := str(value)) >= 4:
            self.values.add(text)
            self.values.update(line for line in text.splitlines() if len(line.strip()) >= 8)

    def __call__(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, "[secret]")
        return text


# --- timings from the engine's events ---


@dataclass
class Step:
    phase: str
    urn: str
    type: str
    op: str
    start: int
    end: int | None = None
    failed: bool = False

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass
class Timings:
    """Wall time of each resource operation, from ResourcePreEvent to ResOutputsEvent (or ResOpFailedEvent).

    Events are pulumi.automation.events.EngineEvent: `timestamp` is the engine's Unix time in whole
    seconds (sdk/go/common/apitype/events.go). They may arrive on the SDK's gRPC server threads.
    """

    phase: str = ""
    steps: list[Step] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event) -> None:
        pre, done, failed = event.resource_pre_event, event.res_outputs_event, event.res_op_failed_event
        with self.lock:
            if pre and not pre.planning and pre.metadata.op.value not in ("same", "read"):
                m = pre.metadata
                state = m.new or m.old
                if state is not None and state.custom and not BOOKKEEPING.match(m.type):  # not components
                    self.steps.append(Step(self.phase, m.urn, m.type, m.op.value, event.timestamp))
            for ended, fail in ((done, False), (failed, True)):
                if ended and not getattr(ended, "planning", False):
                    for step in reversed(self.steps):
                        if step.phase == self.phase and step.urn == ended.metadata.urn and step.end is None:
                            step.end, step.failed = event.timestamp, fail
                            break

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks[name] = time.time() if at is None else at

    def span(self, start: str, end: str) -> float | None:
        return self.marks[end] - self.marks[start] if start in self.marks and end in self.marks else None

    def table(self) -> str:
        """A markdown table: the totals, then each resource and bootstrap step per phase."""
        rows = [("**total**", "", "")]
        for label, start, end in (
            ("to the first successful `up`", "start", "up"),
            ("to the first Sent (smoke test)", "start", "sent"),
            ("second `up` (maintenanceWindow changed)", "up2-start", "up2"),
            ("destroy", "destroy-start", "destroy"),
        ):
            seconds = self.span(start, end)
            rows.append((label, "", "not reached" if seconds is None else f"{seconds:.0f}"))
        titles = {"up": "first `up`", "up2": "second `up`", "destroy": "destroy"}
        for phase, title in titles.items():
            steps = [s for s in self.steps if s.phase == phase]
            if not steps:
                continue
            rows.append((f"**{title}**", "", ""))
            for s in sorted(steps, key=lambda s: (s.start, s.end or 0)):
                kind = "bootstrap step" if s.type == BOOTSTRAP else s.type
                seconds = "unfinished" if s.end is None else f"{s.end - s.start}" + (" (failed)" if s.failed else "")
                rows.append((f"{s.name} ({kind})", s.op, seconds))
        lines = ["| what | op | seconds |", "|---|---|---:|"]
        lines += [f"| {what} | {op} | {seconds} |" for what, op, seconds in rows]
        return "\n".join(lines)


# --- interruption: SIGINT, SIGTERM, --timeout ---


class Interrupt:
    """Turns SIGINT/SIGTERM and the deadline into a flag checked between steps.

    No KeyboardInterrupt is raised inside the SDK: it would close the CLI's pipes mid-update and the
    CLI could die holding the stack lock. Instead the running CLI is asked to stop the way Ctrl-C asks
    it (one SIGINT: it finishes the operations in flight, saves the state and exits), and the run goes
    on to destroy. A terminal's Ctrl-C reaches the CLI by itself (same process group), so only
    SIGTERM and the deadline forward a SIGINT to it.
    """

    def __init__(self, say: Callable[[str], None]):
        self.reason: str | None = None
        self.say = say
        self.cleaning = False

    def install(self, timeout: float) -> threading.Timer:
        signal.signal(signal.SIGINT, self.handler)
        signal.signal(signal.SIGTERM, self.handler)
        timer = threading.Timer(timeout, self.trip, args=(f"--timeout {timeout:g}s reached", True))
        timer.daemon = True
        timer.start()
        return timer

    def handler(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        self.trip(f"{name} received", forward=signum != signal.SIGINT)

    def trip(self, reason: str, forward: bool) -> None:
        if self.reason is None:
            self.reason = reason
            then = "destroy continues" if self.cleaning else "stopping the current step, then destroy"
            self.say(f"e2e: {reason}: {then} (a second Ctrl-C also stops the CLI's destroy: avoid it)")
        if forward and not self.cleaning:
            _signal_children(signal.SIGINT)

    def check(self) -> None:
        if self.reason:
            raise Stop(f"interrupted: {self.reason}")


def _signal_children(signum: int) -> None:
    """Send `signum` to this process's direct children (the pulumi CLI, the smoke test)."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signum)


# --- the run ---


@dataclass
class Options:
    template: Path
    overrides: list[str]
    short_id: str
    timeout: float
    inbox: str | None
    recipient: str | None
    smoke_test: list[str]
    smoke_args: list[str]
    policy_pack: str | None
    summary: Path | None


class Run:
    def __init__(self, opts: Options, out=None):
        self.opts = opts
        self.out = out or sys.stdout
        self.redact = Redactor()
        self.timings = Timings()
        self.interrupt = Interrupt(self.say)
        self.failures: list[str] = []
        self.stack = None
        self.stack_name = f"e2e-{opts.short_id}"

    def say(self, text: str) -> None:
        print(self.redact(str(text)), file=self.out, flush=True)

    def cli_line(self, line: str) -> None:
        self.say(f"  {line}")

    def operation(self, phase: str, action: Callable[..., Any], **kwargs) -> Any:
        self.timings.phase = phase
        self.timings.mark(f"{phase}-start")
        result = action(
            on_event=self.timings.on_event, on_output=self.cli_line, on_error=self.cli_line, color="never", **kwargs
        )
        self.timings.mark(phase)
        return result

    def main(self) -> int:
        from pulumi import automation as auto

        config = load_template(self.opts.template, self.opts.overrides)
        left = placeholders(config)
        if left:
            self.say(
                f"e2e: {self.opts.template.name} still holds placeholders: {'; '.join(left)}. Fix: edit "
                f"{self.opts.template.name} or pass --set KEY=VALUE for each (a sandbox project, a hostname under "
                "a test zone, a sending domain of your Workspace, your e-mail). Nothing was created."
            )
            return 2
        config[f"{PROJECT}:ephemeral"] = True  # destroyable: the program refuses it on prod
        knob = str(config.get(KNOB, KNOB_VALUES[0]))
        changed = next(v for v in KNOB_VALUES if v != knob)

        timer = self.interrupt.install(self.opts.timeout)
        self.timings.mark("start")
        try:
            try:
                # PulumiCommand runs `pulumi version` and refuses a CLI older than the SDK's minimum
                workspace = auto.LocalWorkspace(work_dir=str(ROOT))
                self.say(f"e2e: creating stack {self.stack_name} (pulumi CLI {workspace.pulumi_version})")
                self.stack = auto.Stack.create(self.stack_name, workspace)
                self.interrupt.check()
                workspace.set_all_config(
                    self.stack_name, {k: auto.ConfigValue(v) for k, v in flatten(config).items()}, path=True
                )
                self.interrupt.check()
                packs = {"policy_packs": [self.opts.policy_pack]} if self.opts.policy_pack else {}
                self.say(f"e2e: pulumi up -s {self.stack_name}")
                self.operation("up", self.stack.up, **packs)
                self.interrupt.check()
                self.learn_secrets()
                self.smoke()
                self.interrupt.check()
                self.say(f"e2e: second up with {KNOB} {knob!r} -> {changed!r}")
                self.stack.set_config(KNOB, auto.ConfigValue(changed))
                self.operation("up2", self.stack.up, **packs)
                self.interrupt.check()
            except Stop as err:
                self.failures.append(str(err))
            except auto.CommandError as err:
                self.failures.append(f"pulumi failed: {err}")
            except Exception as err:  # noqa: BLE001 - whatever failed, destroy still runs
                self.failures.append(f"{type(err).__name__}: {err}")
            if self.interrupt.reason and not any(f.startswith("interrupted") for f in self.failures):
                self.failures.append(f"interrupted: {self.interrupt.reason}")
            for failure in self.failures:
                self.say(f"e2e: FAILED: {failure}")
            left_over = self.cleanup()
        finally:
            timer.cancel()
        self.report(left_over)
        return 0 if not self.failures and not left_over else 1

    def learn_secrets(self) -> None:
        """Every secret output is redacted from here on (the smoke test reads them itself)."""
        for value in self.stack.outputs().values():
            if value.secret:
                self.redact.add(value.value)

    def smoke(self) -> None:
        opts = self.opts
        command = [*opts.smoke_test, "--stack", self.stack_name]
        if opts.recipient:
            command += ["--recipient", opts.recipient]
        if opts.inbox:
            command += ["--inbox", opts.inbox]
        command += opts.smoke_args
        self.say(f"e2e: smoke test: {shlex.join(command[len(opts.smoke_test) :])}")
        with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                if "sent" not in self.timings.marks and SENT.match(line):
                    self.timings.mark("sent")
                self.cli_line(line.rstrip("\n"))
        if proc.returncode != 0:
            raise Stop(f"the smoke test failed (exit {proc.returncode}); its lines above say which check and the fix")

    def cleanup(self) -> list[str]:
        """destroy (twice if needed) and stack rm; the resources the stack still holds."""
        from pulumi import automation as auto

        self.interrupt.cleaning = True
        if self.stack is None:
            self.say("e2e: no stack was created: nothing to destroy")
            return []
        pending = self.resources(pending=True)
        for attempt in (1, 2):
            self.say(f"e2e: pulumi destroy -s {self.stack_name}" + (" (again)" if attempt > 1 else ""))
            try:
                self.operation("destroy", self.stack.destroy)
                break
            except auto.CommandError as err:
                self.say(f"e2e: destroy failed: {err}")
                if attempt == 2:
                    self.failures.append(f"destroy failed twice: {str(err).strip().splitlines()[-1]}")
        left = self.resources()
        if pending:
            self.say(
                "e2e: the interrupted update left operations pending on: "
                + ", ".join(pending)
                + ". Pulumi may not know whether they exist: look for them in the console (label ephemeral=true)"
            )
            left += [f"{p} (pending operation)" for p in pending]
        if not self.resources():
            try:
                self.stack.workspace.remove_stack(self.stack_name)
                self.say(f"e2e: stack {self.stack_name} removed")
            except auto.CommandError as err:
                self.failures.append(f"stack rm failed: {err}")
        return left

    def resources(self, pending: bool = False) -> list[str]:
        """`type name` of each resource in the stack's state (only names and types are read)."""
        try:
            deployment = self.stack.export_stack().deployment or {}
        except Exception as err:  # noqa: BLE001
            return [f"(could not read the stack: {type(err).__name__})"]
        if pending:
            items = [p.get("resource") or {} for p in deployment.get("pending_operations") or []]
        else:
            items = deployment.get("resources") or []
        return [
            f"{r.get('type')} {str(r.get('urn', '')).rsplit('::', 1)[-1]}"
            for r in items
            if not BOOKKEEPING.match(str(r.get("type", "")))
        ]

    def report(self, left: list[str]) -> None:
        table = self.timings.table()
        self.say("\nTimings (from the engine's events; seconds):\n" + table)
        if left:
            verdict = (
                f"e2e: NOT clean: the stack {self.stack_name} still holds {len(left)} resource(s), which may cost "
                f"money: {'; '.join(left)}. Fix: pulumi destroy -s {self.stack_name} && pulumi stack rm "
                f"{self.stack_name}"
            )
        elif self.stack is None:
            verdict = "e2e: nothing was created"
        else:
            verdict = (
                f"e2e: clean: stack {self.stack_name} destroyed and removed; nothing it created is left "
                "(the enabled Google APIs stay on; they cost nothing)"
            )
            if self.spanned_snapshot_time():
                verdict += (
                    "; the run spanned 04:00 UTC, so the data disk's daily snapshot may exist until "
                    "snapshotRetentionDays expires it"
                )
        self.say(verdict)
        if self.opts.summary:
            with self.opts.summary.open("a") as f:
                f.write(self.redact(f"## e2e {self.stack_name}\n\n{table}\n\n{verdict}\n"))
                for failure in self.failures:
                    f.write(self.redact(f"\n- {brief(failure)}"))
                f.write("\n")

    def spanned_snapshot_time(self) -> bool:
        start, end = self.timings.marks.get("start"), time.time()
        if start is None:
            return False
        day = dt.datetime.fromtimestamp(start, dt.UTC).replace(hour=4, minute=0, second=0, microsecond=0)
        return any(start <= (day + dt.timedelta(days=d)).timestamp() <= end for d in (0, 1))


def brief(failure: str) -> str:
    """One line of a failure for the job summary: its kind and the CLI's last error line."""
    lines = [line.strip() for line in failure.splitlines() if line.strip()]
    kind = lines[0] if lines else failure
    errors = [line[line.index("error:") :] for line in lines if "error:" in line]  # CommandError: " stderr: error: …"
    return kind if not errors or errors[-1] in kind else f"{kind} {errors[-1]}"


def parse_args(argv: list[str] | None) -> Options:
    argv = list(sys.argv[1:] if argv is None else argv)
    smoke_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m scripts.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="template stack config (Pulumi.e2e.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--id", dest="short_id", help="the stack is e2e-<id> (default: 6 random hex digits)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before up/smoke test stop (default 3600)")
    parser.add_argument(
        "--inbox", default=os.environ.get("PG_E2E_INBOX") or None, help="smoke test --inbox (default $PG_E2E_INBOX)"
    )
    parser.add_argument("--recipient", help="smoke test --recipient (default: the stack's adminEmail)")
    parser.add_argument("--no-policy-pack", action="store_true", help="run up without the policy pack in policy/")
    parser.add_argument(
        "--smoke-test",
        default=shlex.join(SMOKE_TEST),
        help="smoke test command (default: this Python's scripts.smoke_test)",
    )
    parser.add_argument(
        "--summary",
        type=Path,
        default=os.environ.get("GITHUB_STEP_SUMMARY") or None,
        help="append the timing table to this markdown file (default $GITHUB_STEP_SUMMARY)",
    )
    args = parser.parse_args(argv)
    short_id = args.short_id or secrets.token_hex(3)
    if not SHORT_ID.fullmatch(short_id):
        parser.error(f"--id {short_id!r}: 1 to 16 lowercase letters and digits (the stack is e2e-<id>)")
    return Options(
        template=args.template,
        overrides=args.overrides,
        short_id=short_id,
        timeout=args.timeout,
        inbox=args.inbox,
        recipient=args.recipient,
        smoke_test=shlex.split(args.smoke_test),
        smoke_args=smoke_args,
        policy_pack=None if args.no_policy_pack else "policy",
        summary=args.summary,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        return Run(opts).main()
    except Stop as err:
        print(f"e2e: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
