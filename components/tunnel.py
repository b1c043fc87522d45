"""How `pulumi up` reaches the VM: an IAP TCP forwarding tunnel the program opens itself.

Port 22 is open only to IAP's forwarding range, so the bootstrap steps connect to
`gcloud compute start-iap-tunnel <vm> 22 --local-host-port=127.0.0.1:<port>`, started here once
the VM and its firewall rule exist and stopped when the program exits (the Python program lives
until the engine has finished every remote step). A preview never connects, so it opens nothing.

The connection a step records must not change between runs or machines: pulumi-command 1.2.1's
remote Command has no Diff of its own (provider/pkg/provider/remote/commandController.go), so
pulumi-go-provider v1.3.0's default diff (infer/resource.go, `diff`) compares every input,
`connection` included, and `Command.Update` runs `create` again. Host and port are therefore fixed:
127.0.0.1 and a port derived from the project and stack only.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence

import pulumi

LOCAL_HOST = "127.0.0.1"
PORT_BASE, PORT_SPAN = 20000, 10000  # below Linux's ephemeral range (32768-60999)
READY_SECONDS = 60
# What gcloud prints once its local socket is bound (and only then).
LISTENING = "Listening on port [{port}]."

_open: dict[tuple[str, str, str, int], subprocess.Popen] = {}


def local_port(project: str, stack: str) -> int:
    """The tunnel's local port: the same for a stack on every machine and every run."""
    digest = hashlib.sha256(f"{project}/{stack}".encode()).digest()
    return PORT_BASE + int.from_bytes(digest[:4], "big") % PORT_SPAN


def command(project: str, zone: str, instance: str, port: int) -> list[str]:
    # The connection check is off: a new VM's sshd is not up yet. A dial through the tunnel then fails
    # at the SSH handshake, which pulumi-command 1.2.1 retries like a refused connection
    # (remote/connection.go: dialWithRetry around ssh.Dial, up to the step's dial_error_limit).
    return [
        "gcloud",
        "compute",
        "start-iap-tunnel",
        instance,
        "22",
        f"--local-host-port={LOCAL_HOST}:{port}",
        f"--zone={zone}",
        f"--project={project}",
        "--iap-tunnel-disable-connection-check",
    ]


def start(project: str, zone: str, instance: str, port: int, timeout: float = READY_SECONDS) -> None:
    """Start the tunnel (once per process) and wait until gcloud listens; fail with gcloud's words."""
    key = (project, zone, instance, port)
    running = _open.get(key)
    if running is not None and running.poll() is None:
        return
    argv = command(*key)
    found = shutil.which(argv[0])
    if found is None:
        raise pulumi.RunError(
            "pulumi up reaches the VM through IAP and needs the Google Cloud CLI: install gcloud "
            "(https://cloud.google.com/sdk/docs/install) and log in (gcloud auth login, or "
            "google-github-actions/auth in CI)"
        )
    # gcloud is Python: unbuffered, its "Listening" line arrives when it is printed.
    proc = subprocess.Popen(
        [found, *argv[1:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    ready = threading.Event()
    listening = LISTENING.format(port=port)

    def drain() -> None:  # reads to the end, so gcloud never blocks on a full pipe
        for line in proc.stdout:
            lines.append(line.rstrip())
            if listening in line:
                ready.set()
        lines.append("")  # end of output: gcloud exited
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    ready.wait(timeout)
    if not any(listening in line for line in lines):
        stop(proc)
        said = "\n    ".join(line for line in lines[-8:] if line) or "(nothing)"
        raise pulumi.RunError(
            f"the IAP tunnel to {instance} did not open on {LOCAL_HOST}:{port} within {timeout:g} s; "
            f"{' '.join(argv)} said:\n    {said}\n"
            "Check: gcloud auth list (who you are), roles/iap.tunnelResourceAccessor and "
            "compute.instances.get for that identity, and that nothing else listens on the port."
        )
    _open[key] = proc


@atexit.register
def close_all() -> None:
    """Stop every tunnel this process opened (at exit: the deployment is over)."""
    while _open:
        stop(_open.popitem()[1])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def ssh_host(
    project: str, zone: str, instance: pulumi.Output[str], port: int, after: Sequence[pulumi.Resource] = ()
) -> pulumi.Output[str]:
    """`127.0.0.1`, once the tunnel listens (never during a preview); waits for `after` (the firewall
    rule IAP needs), so every step that connects depends on it too."""
    ids = [resource.id for resource in after]

    def open_tunnel(values: list) -> str:
        if not pulumi.runtime.is_dry_run():
            start(project, zone, values[0], port)
        return LOCAL_HOST

    return pulumi.Output.all(instance, *ids).apply(open_tunnel)
