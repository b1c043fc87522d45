"""A stand-in `pulumi` CLI for tests/test_e2e.py: answers the commands pulumi.automation runs, as the CLI does.

What the SDK runs and reads (pulumi 3.272.0, pulumi/automation/):
- `_cmd.py` PulumiCommand: `pulumi version` (a `v`-prefixed semver at least `_minimum_version.py`'s 3.1.0);
  every other command gets `--non-interactive` first and PULUMI_AUTOMATION_API=true.
- `_local_workspace.py`: `stack init NAME`, `config set-all --stack NAME [--path] --plaintext K=V ...`,
  `config set K --plaintext --stack NAME --non-interactive -- V`, `stack output --json [--show-secrets]`
  (secrets masked as "[secret]" without --show-secrets: `_config.py` _SECRET_SENTINEL),
  `stack export --show-secrets` ({"version": 3, "deployment": {...}}), `stack rm --yes NAME`.
- `_stack.py`: `up --yes --skip-preview ... --exec-kind auto.local --event-log LOG --stack NAME`,
  `destroy --skip-preview --yes ...`, `stack history --json --show-secrets --page-size 1 --page 1`
  (startTime/endTime in `_DATETIME_FORMAT`). With a CLI newer than 3.205.0 LOG is `tcp://127.0.0.1:PORT`, the
  SDK's gRPC Events service (proto/events.proto: StreamEvents(stream EventRequest{event: JSON})); older CLIs get
  a file the SDK tails line by line until a cancelEvent (`_watch_logs`).
- Engine events are apitype.EngineEvent JSON (pulumi/pulumi sdk/go/common/apitype/events.go): `sequence`,
  `timestamp` (Unix seconds), one of preludeEvent, resourcePreEvent / resOutputsEvent / resOpFailedEvent
  ({metadata: StepEventMetadata{op, urn, type, old, new, provider}}), diagnosticEvent, summaryEvent, and
  cancelEvent last (documented as EngineEvent in https://www.pulumi.com/docs/reference/cloud-rest-api/schema/appengineevent/).

State lives in $FAKE_PULUMI_HOME/state.json, every call is logged to calls.jsonl. $FAKE_PULUMI_FAIL
(comma-separated) makes a stage fail: stack-init, up, up-pending (the CLI dies mid-create, leaving a
pending operation), hang-up (the first up writes `hanging` and waits for SIGINT/SIGTERM, then cancels as the
CLI does; every up writes `cancellable` once it takes them), up2,
destroy (every time), destroy-once. $FAKE_PULUMI_VERSION overrides the version.
Event timestamps follow a made-up clock with DURATIONS, so the timing table is deterministic.

`python fake_pulumi.py ARGS` answers one call. The tests run `fake_pulumi.py --serve SOCKET` once instead, with
`pulumi` on PATH being tests/fake_pulumi_client.py: each call then runs main() in a fork of the server, which
has imported what the commands need (json, grpc, the SDK's events_pb2) once; the client hands it its argv,
environment, working directory and stdin/stdout/stderr, forwards SIGINT and SIGTERM, and exits with its code.
(A new interpreter per call spent ~30 ms, ~0.2 s more for grpc: most of what a test's e2e run cost.)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time


def configure() -> None:
    """The settings of this call, from its environment."""
    global HOME, STATE, FAIL, VERSION
    HOME = os.environ.get("FAKE_PULUMI_HOME", ".")
    STATE = os.path.join(HOME, "state.json")
    FAIL = set(filter(None, os.environ.get("FAKE_PULUMI_FAIL", "").split(",")))
    VERSION = os.environ.get("FAKE_PULUMI_VERSION", "3.272.0")


configure()
PROJECT = "postal-gateway"
SECRET_VALUE = "fake-api-key-Zk39QnR7vT2m"  # a secret output: never to be printed by the e2e run
ERROR_CODE = 255

# (type, name, parent component type or None, custom): a subset of what __main__.py registers
# (tests/test_e2e.py checks it against the program under mocks).
RESOURCES = [
    ("postal-gateway:index:ProjectApis", "postal", None, False),
    ("gcp:projects/service:Service", "postal-compute-api", "postal-gateway:index:ProjectApis", True),
    ("postal-gateway:index:MailNetwork", "postal", None, False),
    ("gcp:compute/network:Network", "postal-vpc", "postal-gateway:index:MailNetwork", True),
    ("gcp:compute/address:Address", "postal-ip", "postal-gateway:index:MailNetwork", True),
    ("postal-gateway:index:MailHost", "postal", None, False),
    ("gcp:compute/disk:Disk", "postal-data", "postal-gateway:index:MailHost", True),
    ("gcp:compute/disk:Disk", "postal-boot", "postal-gateway:index:MailHost", True),
    ("gcp:compute/instance:Instance", "postal-vm", "postal-gateway:index:MailHost", True),
    ("postal-gateway:index:PostalBootstrap", "postal", None, False),
    ("command:remote:Command", "postal-os", "postal-gateway:index:PostalBootstrap", True),
    ("command:remote:Command", "postal-postal", "postal-gateway:index:PostalBootstrap", True),
    ("command:remote:Command", "postal-ops", "postal-gateway:index:PostalBootstrap", True),
]
DURATIONS = {
    "postal-compute-api": 21,
    "postal-vpc": 24,
    "postal-ip": 4,
    "postal-data": 7,
    "postal-boot": 9,
    "postal-vm": 38,
    "postal-os": 141,
    "postal-postal": 205,
    "postal-ops": 66,
}
KNOB = "postal-gateway:maintenanceWindow"
KNOB_STEP = "postal-ops"  # the step the maintenance window reruns
UP2_SECONDS = 31
DESTROY_SECONDS = 3


def urn(stack: str, typ: str, name: str, parent: str | None) -> str:
    chain = f"{parent}${typ}" if parent else typ
    return f"urn:pulumi:{stack}::{PROJECT}::{chain}::{name}"


def load() -> dict:
    if not os.path.exists(STATE):
        return {"stacks": {}, "clock": 1_800_000_000}
    with open(STATE) as f:
        return json.load(f)


def save(state: dict) -> None:
    with open(STATE, "w") as f:
        json.dump(state, f)


def fail(message: str, code: int = ERROR_CODE) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


class Events:
    """The event log the SDK asked for: its gRPC Events service (tcp://) or a file it tails."""

    def __init__(self, target: str | None):
        self.sequence, self.target = 0, target
        self.queue: list[str] = []
        self.closed = False
        self.call = None
        if target and target.startswith("tcp://"):
            import threading

            import grpc
            from google.protobuf import empty_pb2

            self.cond = threading.Condition()
            self.pb = sdk_events_pb2()
            self.channel = grpc.insecure_channel(target.removeprefix("tcp://"))
            # what events_pb2_grpc.EventsStub(channel).StreamEvents is, without importing the whole SDK
            stream = self.channel.stream_unary(
                "/pulumirpc.Events/StreamEvents",
                request_serializer=self.pb.EventRequest.SerializeToString,
                response_deserializer=empty_pb2.Empty.FromString,
            )
            self.call = stream.future(self.requests())

    def requests(self):
        while True:
            with self.cond:
                while not self.queue and not self.closed:
                    self.cond.wait()
                if not self.queue:
                    return
                event = self.queue.pop(0)
            yield self.pb.EventRequest(event=event)

    def emit(self, timestamp: int, **payload) -> None:
        line = json.dumps({"sequence": self.sequence, "timestamp": timestamp, **payload})
        self.sequence += 1
        if not self.target:
            return
        if self.call is not None:
            with self.cond:
                self.queue.append(line)
                self.cond.notify()
        else:
            with open(self.target, "a") as f:
                f.write(line + "\n")

    def close(self) -> None:
        if self.call is not None:
            with self.cond:
                self.closed = True
                self.cond.notify()
            self.call.result(timeout=60)  # a loaded machine can take seconds to drain the stream
            self.channel.close()


@functools.cache
def sdk_events_pb2():
    """The SDK's own pulumi/runtime/proto/events_pb2.py (EventRequest{string event = 1}), loaded from its file:
    importing it as pulumi.runtime.proto.events_pb2 would first import the whole `pulumi` package (~0.2 s)."""
    import importlib.util

    package = importlib.util.find_spec("pulumi")  # finds the installed SDK without importing it
    path = os.path.join(package.submodule_search_locations[0], "runtime", "proto", "events_pb2.py")
    spec = importlib.util.spec_from_file_location("pulumi_events_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step(op: str, res: dict, stack: str, planning: bool = False) -> dict:
    state = {"type": res["type"], "urn": res["urn"], "custom": res["custom"], "id": res.get("id", ""), "parent": ""}
    metadata = {
        "op": op,
        "urn": res["urn"],
        "type": res["type"],
        "old": state if op in ("delete", "update", "same") else None,
        "new": state if op != "delete" else None,
        "provider": "",
        "detailedDiff": None,
    }
    return {"metadata": metadata, **({"planning": True} if planning else {})}


class Cancel:
    """The CLI's first SIGINT (or SIGTERM) cancels gracefully: the operation in flight still ends."""

    def __init__(self) -> None:
        import signal
        import threading

        self.event = threading.Event()
        signal.signal(signal.SIGINT, self.on_interrupt)
        signal.signal(signal.SIGTERM, self.on_interrupt)
        with open(os.path.join(HOME, "cancellable"), "w") as f:  # from here on a SIGINT cancels the up
            f.write(str(os.getpid()))

    def on_interrupt(self, signum, _frame) -> None:
        print("^C received; cancelling. If you would like to terminate immediately, press ^C again.", flush=True)
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def hang(self) -> None:
        with open(os.path.join(HOME, "hanging"), "w") as f:
            f.write(str(os.getpid()))
        # short waits: a signal that another thread (grpc's) took runs its handler only once this one wakes
        for _ in range(600):
            if self.event.wait(0.1):
                return
        fail("stand-in: nobody interrupted the hanging up within 60 s")


def up(args: list[str], state: dict, name: str, cancel: Cancel) -> None:
    stack = state["stacks"][name]
    events = Events(option(args, "--event-log"))
    clock = state["clock"]
    first = not stack["ups"]
    stack["ups"] += 1
    events.emit(clock, preludeEvent={"config": {k: "[secret]" if v[1] else v[0] for k, v in stack["config"].items()}})
    print(f"Updating ({name}):")
    changes = {"create": 0, "update": 0, "same": 0}
    existing = {r["urn"]: r for r in stack["resources"]}
    code, message = 0, None
    try:
        for typ, rname, parent, custom in RESOURCES:
            res = {"type": typ, "urn": urn(name, typ, rname, parent), "custom": custom, "id": f"{rname}-id"}
            if res["urn"] in existing:
                changed = rname == KNOB_STEP and stack["config"].get(KNOB) != stack.get("applied", {}).get(KNOB)
                op, seconds = ("update", UP2_SECONDS) if changed else ("same", 0)
            else:
                op, seconds = "create", DURATIONS.get(rname, 0)
            events.emit(clock, resourcePreEvent=step(op, res, name))
            if first and "up-pending" in FAIL and rname == "postal-vm":
                stack["pending"] = [{"resource": res, "type": "creating"}]
                save({**state, "clock": clock})
                print("panic: stand-in CLI killed mid-create", file=sys.stderr)
                os._exit(2)  # no event, no state write after this: what a killed CLI leaves
            if first and "hang-up" in FAIL and rname == "postal-os":
                cancel.hang()
            fails = (first and "up" in FAIL) or (not first and "up2" in FAIL and op == "update")
            if fails and rname in ("postal-postal", KNOB_STEP):
                clock += seconds
                diag = {"urn": res["urn"], "message": f"{rname}: step failed: exit 1\n", "color": "never"}
                events.emit(clock, diagnosticEvent={**diag, "severity": "error"})
                events.emit(clock, resOpFailedEvent={**step(op, res, name), "status": 1, "steps": 1})
                code, message = ERROR_CODE, "update failed"
                break
            clock += seconds
            if op == "create":
                stack["resources"].append(res)
            changes[op] = changes.get(op, 0) + 1
            events.emit(clock, resOutputsEvent=step(op, res, name))
            print(f"    {op} {typ} {rname}" + (f" ({seconds}s)" if seconds else ""))
            if cancel.is_set():
                code, message = ERROR_CODE, "update canceled"
                break
        else:
            stack["applied"] = dict(stack["config"])
            stack["outputs"] = {
                "publicIp": ["203.0.113.10", False],
                "hostname": ["postal-e2e.example.net", False],
                "apiKey": [SECRET_VALUE, True],
            }
    finally:
        summary = {"maybeCorrupt": False, "durationSeconds": clock - state["clock"], "resourceChanges": changes}
        events.emit(clock, summaryEvent={**summary, "PolicyPacks": {}})
        events.emit(clock, cancelEvent={})
        events.close()
        stack["history"].append(history("update", state["clock"], clock, "failed" if code else "succeeded"))
        state["clock"] = clock
        save(state)
    print("Outputs:\n    apiKey: [secret]")
    if code:
        fail(message, code)


def destroy(args: list[str], state: dict, name: str) -> None:
    stack = state["stacks"][name]
    events = Events(option(args, "--event-log"))
    clock = state["clock"]
    stack["destroys"] = stack.get("destroys", 0) + 1
    failing = "destroy" in FAIL or ("destroy-once" in FAIL and stack["destroys"] == 1)
    events.emit(clock, preludeEvent={"config": {}})
    if stack.get("pending"):
        print("warning: Attempting to deploy or update resources with 1 pending operations from previous deployment.")
        stack["pending"] = []
    deleted = 0
    for res in list(reversed(stack["resources"])):
        events.emit(clock, resourcePreEvent=step("delete", res, name))
        clock += DESTROY_SECONDS
        if failing and res["type"] == "gcp:compute/disk:Disk":
            # a provider error may echo a credential back: the e2e run must not print it
            token = os.environ.get("CLOUDFLARE_API_TOKEN", "")
            events.emit(clock, resOpFailedEvent={**step("delete", res, name), "status": 1, "steps": 1})
            stack["history"].append(history("destroy", state["clock"], clock, "failed"))
            state["clock"] = clock
            events.emit(clock, cancelEvent={})
            events.close()
            save(state)
            fail(f"deleting {res['urn']}: googleapi: Error 400: resource is in use (request token {token})")
        stack["resources"].remove(res)
        deleted += 1
        events.emit(clock, resOutputsEvent=step("delete", res, name))
    stack["outputs"] = {}
    summary = {"maybeCorrupt": False, "durationSeconds": clock - state["clock"], "resourceChanges": {"delete": deleted}}
    events.emit(clock, summaryEvent={**summary, "PolicyPacks": {}})
    events.emit(clock, cancelEvent={})
    events.close()
    stack["history"].append(history("destroy", state["clock"], clock, "succeeded"))
    state["clock"] = clock
    save(state)
    print(f"Resources:\n    - {deleted} deleted")


def history(kind: str, start: int, end: int, result: str) -> dict:
    def stamp(t: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(t))

    return {
        "kind": kind,
        "startTime": stamp(start),
        "endTime": stamp(end),
        "message": "",
        "environment": {"exec.kind": "auto.local"},
        "config": {},
        "result": result,
        "version": 1,
        "resourceChanges": {},
    }


def main(argv: list[str]) -> None:
    os.makedirs(HOME, exist_ok=True)
    with open(os.path.join(HOME, "calls.jsonl"), "a") as log:
        log.write(json.dumps({"argv": argv, "automation": os.environ.get("PULUMI_AUTOMATION_API")}) + "\n")
    args = [a for a in argv if a != "--non-interactive"]
    if args == ["version"]:
        print(f"v{VERSION}")
        return
    state = load()
    name = option(args, "--stack")
    words = [a for a in args if not a.startswith("-")]
    if words[:2] == ["stack", "init"]:
        name = words[2]
        if "stack-init" in FAIL:
            fail("could not create stack: the backend is not reachable (stand-in)")
        if name in state["stacks"]:
            fail(f"stack '{name}' already exists")
        state["stacks"][name] = {"config": {}, "resources": [], "outputs": {}, "history": [], "ups": 0, "pending": []}
        save(state)
        print(f"Created stack '{name}'")
        return
    if words[:2] == ["stack", "rm"]:
        name = words[-1]
        if name not in state["stacks"]:
            fail(f"no stack named '{name}' found")
        if state["stacks"][name]["resources"] and "--force" not in args:
            fail(f"'{name}' still has resources; removal rejected. Possible actions: run `pulumi destroy` first")
        del state["stacks"][name]
        save(state)
        print(f"Stack '{name}' has been removed!")
        return
    if name not in state["stacks"]:
        fail(f"no stack named '{name}' found")
    stack = state["stacks"][name]
    if words[:2] == ["config", "set-all"]:
        values = [args[i + 1] for i, a in enumerate(args) if a in ("--plaintext", "--secret")]
        secret = [args[i] == "--secret" for i, a in enumerate(args) if a in ("--plaintext", "--secret")]
        for value, is_secret in zip(values, secret, strict=True):
            key, _, text = value.partition("=")
            stack["config"][key] = [text, is_secret]
        save(state)
    elif words[:2] == ["config", "set"]:
        stack["config"][words[2]] = [args[args.index("--") + 1], "--secret" in args]
        save(state)
    elif words[:1] == ["up"]:
        up(args, state, name, Cancel())
    elif words[:1] == ["destroy"]:
        destroy(args, state, name)
    elif words[:2] == ["stack", "output"]:
        show = "--show-secrets" in args
        print(json.dumps({k: v if (show or not s) else "[secret]" for k, (v, s) in stack["outputs"].items()}))
    elif words[:2] == ["stack", "history"]:
        print(json.dumps(list(reversed(stack["history"]))[: int(option(args, "--page-size") or 1000)]))
    elif words[:2] == ["stack", "export"]:
        resources = [
            {"urn": urn(name, "pulumi:pulumi:Stack", f"{PROJECT}-{name}", None), "type": "pulumi:pulumi:Stack"}
        ]
        resources += [{"urn": r["urn"], "type": r["type"], "custom": r["custom"]} for r in stack["resources"]]
        deployment = {"manifest": {}, "resources": resources}
        if stack["pending"]:
            deployment["pending_operations"] = stack["pending"]
        print(json.dumps({"version": 3, "deployment": deployment}))
    else:
        fail(f"stand-in pulumi: unexpected command {argv}")


def call(argv: list[str]) -> int:
    """main() as a process runs it: its exit code."""
    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to a process
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(path: str) -> None:
    """Answers tests/fake_pulumi_client.py: each connection is one CLI call (see the module's docstring)."""
    import signal
    import socket

    import grpc  # noqa: F401 - imported, no channel made: each call makes its own after the fork
    from google.protobuf import empty_pb2  # noqa: F401

    sdk_events_pb2()
    calls: dict[int, socket.socket] = {}  # pid of a call -> its client

    def ended(_signum, _frame) -> None:
        with contextlib.suppress(ChildProcessError):
            while (ended := os.waitpid(-1, os.WNOHANG))[0]:
                conn = calls.pop(ended[0])
                with contextlib.suppress(OSError):  # a client that is gone
                    conn.sendall(b"%d" % os.waitstatus_to_exitcode(ended[1]))
                conn.close()

    signal.signal(signal.SIGCHLD, ended)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as server:
        server.bind(path)
        server.listen(16)
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            request, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            cwd, count, *rest = request.decode("utf-8", "surrogateescape").split("\0")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # until the call is in `calls`
            child = os.fork()
            if child == 0:
                code = 1
                try:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                    for other in (server, conn, *calls.values()):
                        other.close()
                    for target, fd in enumerate(fds):
                        os.dup2(fd, target)
                        os.close(fd)
                    os.chdir(cwd)
                    os.environ.clear()
                    os.environ.update(item.split("=", 1) for item in rest[int(count) :])
                    configure()
                    code = call(rest[: int(count)])
                finally:
                    os._exit(code)
            for fd in fds:
                os.close(fd)
            calls[child] = conn
            conn.sendall(b"%d" % child)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    sys.exit(call(sys.argv[1:]))
