"""The IAP tunnel pulumi up opens (components/tunnel.py), against a fake gcloud (tests/fake_gcloud.py)."""

import os
import shlex
import socket
import sys
from pathlib import Path

import program
import pulumi
import pytest
from program import commands

from components import tunnel

HERE = Path(__file__).resolve().parent
start = program.REAL_TUNNEL_START  # tests/program.py records the program's calls instead


@pytest.fixture
def gcloud(tmp_path, monkeypatch):
    """`gcloud` on PATH is the fake; returns the file where it logs each argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "gcloud"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(HERE / "fake_gcloud.py"))} "$@"\n')
    shim.chmod(0o755)
    log = tmp_path / "gcloud.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(log))
    yield log
    tunnel.close_all()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banner(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.recv(100).decode()


def test_start_waits_until_gcloud_listens_and_stops_it_at_exit(gcloud):
    port = free_port()
    start("acme-mail", "europe-west1-b", "postal-vm-1", port)
    assert banner(port) == "SSH-2.0-fake-postal-vm-1-22\r\n"  # the VM's port 22, through the tunnel
    assert gcloud.read_text().splitlines() == [
        f"compute start-iap-tunnel postal-vm-1 22 --local-host-port=127.0.0.1:{port} --zone=europe-west1-b "
        "--project=acme-mail --iap-tunnel-disable-connection-check"
    ]
    start("acme-mail", "europe-west1-b", "postal-vm-1", port)  # every step shares the one tunnel
    assert len(gcloud.read_text().splitlines()) == 1
    (proc,) = tunnel._open.values()
    tunnel.close_all()
    assert proc.poll() is not None and not tunnel._open
    with pytest.raises(OSError):
        banner(port)


@pytest.mark.parametrize(
    "mode, said",
    [
        ("deny", "Error while connecting [4033: 'not authorized']"),
        ("taken", "Unable to bind [127.0.0.1:"),
    ],
)
def test_a_failing_gcloud_fails_the_run_with_its_words(gcloud, monkeypatch, mode, said):
    port = free_port()
    holder = socket.socket()
    if mode == "taken":  # a tunnel left behind by an interrupted run, or anything else
        holder.bind(("127.0.0.1", port))
        holder.listen()
    else:
        monkeypatch.setenv("FAKE_GCLOUD_MODE", mode)
    with holder, pytest.raises(pulumi.RunError) as err:
        start("acme-mail", "europe-west1-b", "postal-vm-1", port)
    message = str(err.value)
    assert said in message and f"did not open on 127.0.0.1:{port}" in message
    assert "roles/iap.tunnelResourceAccessor" in message and not tunnel._open


def test_a_gcloud_that_never_listens_is_stopped(gcloud, monkeypatch):
    monkeypatch.setenv("FAKE_GCLOUD_MODE", "silent")
    with pytest.raises(pulumi.RunError, match=r"within 0\.2 s"):  # waited out: short, it never listens
        start("acme-mail", "europe-west1-b", "postal-vm-1", free_port(), timeout=0.2)
    assert not tunnel._open


def test_without_gcloud_the_run_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pulumi.RunError, match="needs the Google Cloud CLI: install gcloud"):
        start("acme-mail", "europe-west1-b", "postal-vm-1", free_port())


def test_the_local_port_depends_on_project_and_stack_only():
    port = tunnel.local_port("acme-mail", "prod")
    assert port == tunnel.local_port("acme-mail", "prod") and 20000 <= port < 30000
    assert len({port, tunnel.local_port("acme-mail", "staging"), tunnel.local_port("other", "prod")}) == 3


def connection_and_inputs(run):
    assert run.error is None, run.error
    return {step: c.inputs for step, c in commands(run).items()}


def test_a_no_op_up_through_the_tunnel_reruns_nothing(gcloud, monkeypatch, tmp_path):
    """The program opens the real tunnel code's gcloud, twice, from two working directories and
    homes (two machines): every step's inputs, its connection included, are identical, so
    pulumi-command (which reruns a step on any changed input) reruns nothing."""
    monkeypatch.setattr(tunnel, "start", program.REAL_TUNNEL_START)
    monkeypatch.setenv("HOME", str(tmp_path))
    first = connection_and_inputs(program.run())
    (opened,) = gcloud.read_text().splitlines()
    tunnel.close_all()  # the first deployment is over
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    monkeypatch.setenv("HOME", str(other))
    second = connection_and_inputs(program.run())
    assert gcloud.read_text().splitlines() == [opened, opened]  # the same tunnel, to the same VM
    assert second == first
    port = tunnel.local_port("acme-mail", "prod")
    assert {(i["connection"]["host"], i["connection"]["port"]) for i in first.values()} == {("127.0.0.1", port)}
    assert f"--local-host-port=127.0.0.1:{port}" in opened


def test_every_step_waits_for_the_iap_firewall_rule(run):
    """The tunnel's host is derived from the IAP rule: no step dials before 22 is open to IAP."""
    rule = run.named("postal-allow-ssh")
    for step, command in commands(run).items():
        assert rule.urn in command.depends_on, step


def test_a_preview_opens_no_tunnel(monkeypatch):
    """`pulumi preview` never connects: ssh_host answers 127.0.0.1 without starting gcloud."""
    opened = []
    monkeypatch.setattr(tunnel, "start", lambda *key: opened.append(key))
    pulumi.runtime.set_mocks(program.Mocks(), project=program.PROJECT, stack=program.STACK, preview=True)

    @pulumi.runtime.test
    def check():
        host = tunnel.ssh_host("acme-mail", "europe-west1-b", pulumi.Output.from_input("postal-vm-1"), 20001)
        return host.apply(lambda value: assert_preview(value))

    def assert_preview(value):
        assert value == "127.0.0.1" and opened == []

    check()
    pulumi.runtime.set_mocks(program.Mocks(), project=program.PROJECT, stack=program.STACK, preview=False)

    @pulumi.runtime.test
    def check_up():
        host = tunnel.ssh_host("acme-mail", "europe-west1-b", pulumi.Output.from_input("postal-vm-1"), 20001)
        return host.apply(lambda value: assert_up(value))

    def assert_up(value):
        assert value == "127.0.0.1" and opened == [("acme-mail", "europe-west1-b", "postal-vm-1", 20001)]

    check_up()
