"""`pulumi` on PATH in tests/test_e2e.py: hands this call to the stand-in CLI's server (tests/fake_pulumi.py
--serve SOCKET), which runs it in a fork with this process's argv, environment, working directory and
stdin/stdout/stderr; forwards SIGINT and SIGTERM to it (the e2e run's Ctrl-C and deadline) and exits with its
code. Run as `python -I -S fake_pulumi_client.py SOCKET ARGS`: only C modules are imported, to start fast."""

import _signal
import _socket
import os
import sys

pending: list[int] = []  # signals that came before the call's pid was known
pid = 0


def forward(signum, _frame) -> None:
    if not pid:
        pending.append(signum)
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # it has ended
        return


for signum in (_signal.SIGINT, _signal.SIGTERM):
    _signal.signal(signum, forward)
conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
conn.connect(sys.argv[1])
argv = sys.argv[2:]
request = "\0".join([os.getcwd(), str(len(argv)), *argv, *(f"{k}={v}" for k, v in os.environ.items())])
fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
conn.sendmsg([request.encode("utf-8", "surrogateescape")], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
pid = int(conn.recv(32))
for signum in pending:
    forward(signum, None)
code = int(conn.recv(32))
sys.exit(code if code >= 0 else 128 - code)
