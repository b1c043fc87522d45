"""examples/consumer: the StackReference program under mocks, and send_example.py against a fake Postal."""

import importlib.util
import json
import os
import runpy
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import program
import pulumi
import pytest
from pulumi.runtime import settings

CONSUMER = program.ROOT / "examples" / "consumer"
GATEWAY = {
    "publicIp": program.FAKE_IP,
    "apiUrl": "https://postal.rdo-dev.com/api/v1/send/message",
    "apiKey": "k3y-from-gateway",
    "sendingDomains": ["rdo-dev.com"],
    "hostname": "postal.rdo-dev.com",
}


class GatewayMocks(pulumi.runtime.Mocks):
    def __init__(self, secret_names):
        self.references, self.secret_names = [], list(secret_names)

    def new_resource(self, args):
        assert args.typ == "pulumi:pulumi:StackReference", args.typ
        self.references.append(args.inputs["name"])
        # what the engine answers for a stack reference: plain outputs plus the names of the secret ones
        return args.name, {
            "name": args.inputs["name"],
            "outputs": dict(GATEWAY),
            "secretOutputNames": self.secret_names,
        }

    def call(self, args):
        return {}


def run_consumer(config=None, secret_names=("apiKey",)):
    """Run examples/consumer/__main__.py under mocks; (exports as {name: (value, secret)}, referenced stacks).

    program.run() shares the runtime's global state: this uses a root stack of its own and puts the previous
    one back, and every program.run() starts with a fresh set_mocks and its own config."""
    mocks, outputs = GatewayMocks(secret_names), {}
    previous_root = settings.ROOT.get()
    settings.ROOT.set(None)
    try:
        pulumi.runtime.set_mocks(mocks, project="postal-gateway-consumer", stack="dev", preview=False)
        pulumi.runtime.set_all_config({f"postal-gateway-consumer:{k}": v for k, v in (config or {}).items()}, [])
        root = settings.ROOT.get()

        async def collect():
            for name, value in root.outputs.items():
                out = pulumi.Output.from_input(value)
                outputs[name] = (await out.future(), await out.is_secret())

        @pulumi.runtime.test
        def consumer():
            runpy.run_path(str(CONSUMER / "__main__.py"), run_name="__main__")
            return collect()

        consumer()
    finally:
        settings.ROOT.set(previous_root)
    return outputs, mocks.references


@pytest.mark.parametrize("secret_names", [("apiKey",), ()], ids=["key-secret", "key-not-marked-secret"])
def test_consumer_reads_the_gateway_outputs_and_keeps_the_key_secret(secret_names):
    outputs, references = run_consumer(secret_names=secret_names)  # mailEnv is secret even if the gateway forgot
    assert references == ["organization/postal-gateway/prod"]
    assert outputs["mailEnv"] == (
        {
            "POSTAL_API_URL": GATEWAY["apiUrl"],
            "POSTAL_API_KEY": "k3y-from-gateway",
            "POSTAL_FROM": "noreply@rdo-dev.com",
        },
        True,
    )
    assert outputs["allowlistCidr"] == (f"{program.FAKE_IP}/32", False)


def test_consumer_config_picks_the_stack_and_the_sender():
    outputs, references = run_consumer(
        {"gatewayStack": "acme/postal-gateway/staging", "fromAddress": "renders@rdo-dev.com"}
    )
    assert references == ["acme/postal-gateway/staging"]
    assert outputs["mailEnv"][0]["POSTAL_FROM"] == "renders@rdo-dev.com" and outputs["mailEnv"][1]


def test_the_consumer_leaves_the_main_programs_root_stack_alone():
    # set_mocks and the config are reset by every program.run(); the root stack is the one thing that lingers
    before = settings.ROOT.get()
    run_consumer()
    assert settings.ROOT.get() is before


# --- send_example.py against a fake Postal ---

API_KEY = "good-key"


class FakePostal(BaseHTTPRequestHandler):
    """Postal's send API: HTTP 200 for everything, the verdict is in the JSON `status`."""

    received: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakePostal.received.append((self.path, self.headers.get("X-Server-API-Key"), body))
        if self.path != "/api/v1/send/message":
            self.send_error(404)
            return
        if self.headers.get("X-Server-API-Key") != API_KEY:
            answer = {
                "status": "error",
                "time": 0.0,
                "flags": {},
                "data": {
                    "code": "InvalidServerAPIKey",
                    "message": "The API token provided in X-Server-API-Key was not valid.",
                },
            }
        elif not body["from"].endswith("@rdo-dev.com"):
            answer = {
                "status": "error",
                "time": 0.01,
                "flags": {},
                "data": {
                    "code": "UnauthenticatedFromAddress",
                    "message": "The From address is not authorised to send mail from this server",
                },
            }
        else:
            answer = {
                "status": "success",
                "time": 0.02,
                "flags": {},
                "data": {
                    "message_id": "0f1e2d3c@rp.postal.rdo-dev.com",
                    "messages": {to: {"id": 37171 + i, "token": "a4udnay1"} for i, to in enumerate(body["to"])},
                },
            }
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def postal():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePostal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/send/message"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def send_example():
    spec = importlib.util.spec_from_file_location("send_example", CONSUMER / "send_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def env(monkeypatch, postal):
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("POSTAL_API_URL", postal)
    monkeypatch.setenv("POSTAL_API_KEY", API_KEY)
    monkeypatch.delenv("POSTAL_FROM", raising=False)
    FakePostal.received.clear()


def test_send_prints_the_message_id(send_example, env, capsys):
    assert send_example.main(["--to", "artist@gmail.com", "--from", "noreply@rdo-dev.com"]) == 0
    out = capsys.readouterr().out
    assert "sent: 0f1e2d3c@rp.postal.rdo-dev.com" in out and "artist@gmail.com: id 37171" in out
    ((path, key, body),) = FakePostal.received
    assert (path, key) == ("/api/v1/send/message", API_KEY)
    assert body == {
        "to": ["artist@gmail.com"],
        "from": "noreply@rdo-dev.com",
        "subject": "Render Complete: Shot 001",
        "plain_body": "Your render has finished successfully.",
    }


def test_a_refused_sender_exits_non_zero_with_postals_code(env, postal):
    # as a script, the way a developer runs it; HTTP 200 but status "error"
    result = subprocess.run(
        [
            sys.executable,
            str(CONSUMER / "send_example.py"),
            "--to",
            "artist@gmail.com",
            "--from",
            "noreply@elsewhere.example",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "UnauthenticatedFromAddress" in result.stderr and "not authorised" in result.stderr
    assert "sent:" not in result.stdout


def test_a_wrong_api_key_is_an_error(send_example, env, monkeypatch, capsys):
    monkeypatch.setenv("POSTAL_API_KEY", "wrong-key")
    monkeypatch.setenv("POSTAL_FROM", "noreply@rdo-dev.com")
    assert send_example.main(["--to", "artist@gmail.com"]) == 1
    assert "InvalidServerAPIKey" in capsys.readouterr().err
    assert FakePostal.received[0][1] == "wrong-key"


def test_stack_outputs_come_from_pulumi_with_secrets(send_example, env, monkeypatch, tmp_path, postal, capsys):
    fake = tmp_path / "pulumi"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path / "args"}\n'
        f"echo '{json.dumps({**GATEWAY, 'apiUrl': postal, 'apiKey': API_KEY})}'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("POSTAL_API_URL")
    assert send_example.main(["--stack", "prod", "--to", "artist@gmail.com"]) == 0
    assert (tmp_path / "args").read_text().split() == ["stack", "output", "--json", "--show-secrets", "--stack", "prod"]
    assert FakePostal.received[0][2]["from"] == "noreply@rdo-dev.com"
    assert "sent:" in capsys.readouterr().out


def test_missing_settings_are_a_usage_error(send_example, env, monkeypatch, capsys):
    monkeypatch.delenv("POSTAL_API_KEY")
    assert send_example.main(["--to", "artist@gmail.com", "--from", "noreply@rdo-dev.com"]) == 2
    assert "POSTAL_API_KEY" in capsys.readouterr().err and not FakePostal.received
