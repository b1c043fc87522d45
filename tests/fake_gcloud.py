"""A fake `gcloud compute start-iap-tunnel` for tests/test_tunnel.py, run as `gcloud` from PATH.

Shaped after the documented command (https://cloud.google.com/sdk/gcloud/reference/compute/start-iap-tunnel:
INSTANCE_NAME INSTANCE_PORT, --local-host-port=LOCAL_HOST:LOCAL_PORT, --zone, --project,
--iap-tunnel-disable-connection-check) and its behaviour: it binds the local port, prints
`Listening on port [N].`, then forwards each connection; it exits 1 with an `ERROR: (gcloud...)`
line when the port is taken. Each argv is appended to $FAKE_GCLOUD_LOG. Instead of IAP, every
connection is answered with an SSH banner naming the instance.
FAKE_GCLOUD_MODE: `deny` (IAP refuses: error and exit 1), `silent` (runs, never listens).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
        log.write(" ".join(argv) + "\n")
    if argv[:2] != ["compute", "start-iap-tunnel"]:
        print(f"ERROR: (gcloud) fake gcloud knows only start-iap-tunnel, not {argv[:2]}", file=sys.stderr)
        return 2
    instance, port_arg = argv[2], argv[3]
    flags = dict(a.split("=", 1) for a in argv[4:] if "=" in a)
    host, local_port = flags.get("--local-host-port", "localhost:0").rsplit(":", 1)
    mode = os.environ.get("FAKE_GCLOUD_MODE", "")
    if mode == "deny":
        print(
            "ERROR: (gcloud.compute.start-iap-tunnel) Error while connecting [4033: 'not authorized'].",
            file=sys.stderr,
        )
        return 1
    if mode == "silent":
        time.sleep(3600)
        return 0
    server = socket.socket()
    try:
        server.bind((host, int(local_port)))
    except OSError as err:
        print(f"ERROR: (gcloud.compute.start-iap-tunnel) Unable to bind [{host}:{local_port}]: {err}", file=sys.stderr)
        return 1
    server.listen()
    print(f"Listening on port [{server.getsockname()[1]}].")  # unbuffered: PYTHONUNBUFFERED=1

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.sendall(f"SSH-2.0-fake-{instance}-{port_arg}\r\n".encode())

    while True:
        conn, _ = server.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
