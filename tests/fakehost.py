"""A fake Rocky 9 host for the bootstrap scripts: one stub for every system command they call.

`serve()` starts the fake in this process (a thread answering on 127.0.0.1) and returns the
environment that makes every command in COMMANDS a bash function forwarding its argv, working
directory and (for the commands that read it) stdin there: a call costs a TCP round trip, not a
process start. Each call is appended to `$PG_ROOT/.fake/calls.log` as `M <argv>` (it changes the
host) or `Q <argv>` (it only looks), and the host's state (packages, units, disks, containers,
Postal) lives in `.fake/state` (marshal).
`STUB_FAIL=<command>` makes that command fail with a message on stderr. Fault injection
(tests/test_scripts.py): `STUB_FAIL_CHANGE=<n>` makes the n-th change of the log (counting every
`M` line so far, 1-based) fail instead of happening, logged as `F <argv>`; `STUB_REDO=<line>`
stops a rerun, logged as `R <argv>`, as soon as it repeats that change (mktemp names aside), or,
with `STUB_THEN_FAIL=<m> <run>` (<run> names this run), lets the repeat happen and makes the m-th
change after it fail (logged as `F`, as every change after that one).
"""

from __future__ import annotations

import contextlib
import functools
import io
import marshal
import os
import socket
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = (
    "sudo",
    "sleep",
    "curl",
    "systemctl",
    "getenforce",
    "setenforce",
    "rpm",
    "dnf",
    "firewall-cmd",
    "blkid",
    "mkfs.xfs",
    "findmnt",
    "mount",
    "umount",
    "blockdev",
    "xfs_info",
    "xfs_growfs",
    "semanage",
    "restorecon",
    "chown",
    "chmod",
    "mv",
    "ln",
    "git",
    "docker",
    "ss",
    "needs-restarting",
)
GIB = 1 << 30
DISK_UUID = "6f1c2a7e-0d2b-4c39-9a51-3c1f0e2b7d44"
# The client: argv, cwd and settings out as NUL-terminated fields; exit code, stdout, stderr back.
CLIENT = r"""() {
  local code out err input=""
  if [[ $1 == docker && " $* " =~ \ (--interactive|runner)\  ]]; then input=$(cat; printf .); input=${input%.}; fi
  {
    printf '%s\0' "$PWD" "${PG_ROOT:-}" "${STUB_FAIL:-}" "${STUB_FAIL_CHANGE:-}" "${STUB_REDO:-}" "${STUB_THEN_FAIL:-}" "$input" "$@" $'\1'
    IFS= read -r -d '' code
    IFS= read -r -d '' out
    IFS= read -r -d '' err
  } <>"/dev/tcp/127.0.0.1/$FAKEHOST_PORT" >&0
  printf '%s' "$out"
  printf '%s' "$err" >&2
  return "$code"
}"""
# Postal's install helper (bin/postal), made by the fake `git clone`.
HELPER = '#!/usr/bin/env bash\ncd "$(dirname "$0")/.." && _fakehost postal "$@"\n'


@dataclass
class Call:
    """The call being answered: where it runs and what it was given."""

    cwd: str = ""
    env: dict = field(default_factory=dict)
    stdin: str = ""


CALL = Call()
_CHANGES: dict[str, tuple] = {}  # calls.log -> (inode, bytes counted, `M` lines in them)
_RERUNS: dict[tuple[str, str], dict] = {}  # (root, STUB_THEN_FAIL) -> whether the run redid, changes since
LOCK = threading.Lock()  # one call at a time: CALL and sys.stdout/stderr are process-wide


def _respond(conn) -> None:
    data = b""
    while not data.endswith(b"\1\0"):
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    cwd, root, stub_fail, fail_change, redo, then, stdin, *argv = data[:-2].decode().split("\0")[:-1]
    out, err = io.StringIO(), io.StringIO()
    with LOCK, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        CALL.cwd, CALL.stdin = cwd, stdin
        CALL.env = {
            "PG_ROOT": root,
            "STUB_FAIL": stub_fail,
            "STUB_FAIL_CHANGE": fail_change,
            "STUB_REDO": redo,
            "STUB_THEN_FAIL": then,
        }
        try:
            code = answer(argv[0], argv[1:])
        except SystemExit as exit_:
            code = exit_.code or 0
        except Exception:  # a fault of the fake: the step sees it on stderr, the server goes on
            traceback.print_exc()
            code = 70
    conn.sendall(f"{code}\0{out.getvalue()}\0{err.getvalue()}\0".encode())


def _serve(listener: socket.socket) -> None:
    """One call at a time, in one thread: the answers are serialised by LOCK anyway, and a thread
    per connection cost more than the answer itself. A client that stalls is dropped after 60 s."""
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(60)
            with contextlib.suppress(OSError):
                _respond(conn)


@functools.cache
def _port() -> int:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    threading.Thread(target=_serve, args=(listener,), daemon=True).start()
    return listener.getsockname()[1]


def serve() -> dict[str, str]:
    """Starts the fake host (once per process); returns the environment that routes the commands to it."""
    env = {
        "FAKEHOST_PORT": str(_port()),
        "BASH_FUNC__fakehost%%": CLIENT,
        "BASH_FUNC_sudo%%": '() { "$@"; }',
    }
    for name in COMMANDS[1:]:
        env[f"BASH_FUNC_{name}%%"] = f'() {{ _fakehost {name} "$@"; }}'
    return env


SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,@%+")


def quote(arg: str) -> str:
    return arg if arg and set(arg) <= SAFE else "'" + arg.replace("'", "'\"'\"'") + "'"


class Host:
    def __init__(self, root):
        self.root = str(root)
        self.dir = os.path.join(self.root, ".fake")
        self.logged = False
        try:
            with open(os.path.join(self.dir, "state"), "rb") as f:
                self.saved = f.read()
        except FileNotFoundError:
            os.makedirs(self.dir, exist_ok=True)
            self.saved = b""
        self.state = marshal.loads(self.saved) if self.saved else {}

    def path(self, path: str) -> str:
        return self.root + "/" + path.lstrip("/")

    def save(self) -> None:
        data = marshal.dumps(self.state)
        if data != self.saved:  # a call that changed nothing leaves the file alone
            # rewritten in place: truncating to zero first costs ext4 ten times more
            fd = os.open(os.path.join(self.dir, "state"), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)
            self.saved = data

    def log(self, kind: str, argv: list[str]) -> None:
        """One line per call, with paths as the real host sees them (without the test's root)."""
        line = f"{kind} {' '.join(quote(a.replace(self.root, '')) for a in argv)}\n"
        fd = os.open(os.path.join(self.dir, "calls.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        self.logged = True

    def changes_logged(self) -> int:
        """How many `M` lines calls.log holds: counted once per log file, then only what was appended."""
        path = os.path.join(self.dir, "calls.log")
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            inode, size, count = _CHANGES.get(path, (None, 0, 0))
            if inode != stat.st_ino or stat.st_size < size:  # another log under that name
                size, count = 0, 0
            f.seek(size)
            new = f.read()
        _CHANGES[path] = stat.st_ino, size + len(new), count + (b"\n" + new).count(b"\nM ")  # size: a line's start
        return _CHANGES[path][2]

    def rel(self, path: str) -> str:
        """A path as the real host would see it (without the test's root)."""
        return path.removeprefix(self.root) or "/"

    def get(self, key: str, default):
        return self.state.setdefault(key, default)


def fail(message: str, code: int = 1):
    print(message, file=sys.stderr)
    sys.exit(code)


def answer(name: str, args: list[str]) -> int:
    host = Host(CALL.env["PG_ROOT"])
    if CALL.env.get("STUB_FAIL") == name:
        host.log("Q", [name, *args])
        fail(f"{name}: simulated failure: {' '.join(args)}")
    try:
        return HANDLERS.get(name, lambda h, a: None)(host, args) or 0
    finally:
        host.save()
        if not host.logged:  # every call leaves a log behind
            open(os.path.join(host.dir, "calls.log"), "a").close()


def _query(host: Host, argv: list[str]) -> None:
    host.log("Q", argv)


def action(line: str) -> str:
    """A change as a rerun repeats it: the random suffix of a mktemp name aside."""
    import re

    return re.sub(r"\.[A-Za-z0-9]{6}\b", ".XXXXXX", line)


def _fault(host: Host, argv: list[str]) -> None:
    """An injected fault: the change fails instead of happening, logged as `F`."""
    host.log("F", argv)
    fail(f"{argv[0]}: simulated failure: {' '.join(argv[1:])}")


def _change(host: Host, argv: list[str]) -> None:
    line = " ".join(quote(a.replace(host.root, "")) for a in argv)
    redo, then = CALL.env.get("STUB_REDO"), CALL.env.get("STUB_THEN_FAIL")
    if redo and then:
        run = _RERUNS.setdefault((host.root, then), {"redone": False, "after": 0})
        if not run["redone"] and action(line) == redo:
            run["redone"] = True
            host.log("R", argv)
            return
        if run["redone"]:
            run["after"] += 1
            if run["after"] >= int(then.split()[0]):
                _fault(host, argv)
    elif redo and action(line) == redo:
        host.log("R", argv)
        fail(f"{argv[0]}: redone; the fault-injection rerun stops here")
    target = CALL.env.get("STUB_FAIL_CHANGE")
    if target and host.changes_logged() + 1 == int(target):
        _fault(host, argv)
    host.log("M", argv)


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def systemctl(host, args):
    units = host.get("units", {})
    verb, unit = args[0], args[-1]
    if verb == "show":
        _query(host, ["systemctl", *args])
        print("inactive")
    elif verb in ("is-enabled", "is-active"):
        _query(host, ["systemctl", *args])
        return 0 if units.get(unit, {}).get(verb) else 1
    elif verb in ("enable", "start", "restart", "stop"):
        _change(host, ["systemctl", *args])
        units.setdefault(unit, {})["is-enabled" if verb == "enable" else "is-active"] = verb != "stop"
        if unit == "docker" and verb != "enable":
            docker_daemon(host, verb)
    elif verb == "daemon-reload":
        _change(host, ["systemctl", *args])
    elif verb == "reboot":
        _change(host, ["systemctl", *args])
        host.state["reboots"] = host.state.get("reboots", 0) + 1
    else:
        fail(f"systemctl stub: unsupported {args}")


def docker_daemon(host, verb: str) -> None:
    """Stopping Docker stops every container; starting it again restarts those that were running
    (their restart policy is unless-stopped)."""
    containers, postal = host.get("containers", {}), host.get("postal", {})
    if verb in ("stop", "restart"):
        host.state["was_running"] = [n for n, c in containers.items() if c["running"]], postal.get("running", [])
        for container in containers.values():
            container["running"] = False
        postal["running"] = []
    if verb in ("start", "restart") and "was_running" in host.state:
        names, services = host.state.pop("was_running")
        for name in names:
            containers[name]["running"] = True
        postal["running"] = services


def getenforce(host, args):
    _query(host, ["getenforce"])
    print(host.get("selinux", "Enforcing"))


def setenforce(host, args):
    _change(host, ["setenforce", *args])
    host.state["selinux"] = "Enforcing" if args == ["1"] else "Permissive"


def rpm(host, args):
    _query(host, ["rpm", *args])
    installed = host.get("packages", [])
    return 0 if all(p in installed for p in args if not p.startswith("-")) else 1


def dnf(host, args):
    _change(host, ["dnf", *args])
    if "install" in args:
        host.get("packages", []).extend(a for a in args[args.index("install") + 1 :] if not a.startswith("-"))
    elif args[:2] == ["config-manager", "--add-repo"]:
        repo = host.path("etc/yum.repos.d/docker-ce.repo")
        os.makedirs(os.path.dirname(repo), exist_ok=True)
        with open(repo, "w") as f:
            f.write(f"# from {args[2]}\n")
    else:
        fail(f"dnf stub: unsupported {args}")


def firewall_cmd(host, args):
    """Rules go to the permanent configuration; `--reload` makes them the runtime one. A runtime rich rule
    (`--add-rich-rule=<rule> [--timeout=<s>]`, firewall-cmd(1)) goes to the runtime configuration only,
    checked with firewalld's own parser (firewall.core.rich, Debian's python3-firewall) when one is given."""
    permanent, runtime = host.get("firewall", []), host.get("firewall_runtime", [])
    (action,) = [a for a in args if a.startswith("--") and a != "--permanent" and not a.startswith("--timeout=")]
    if action.startswith("--add-rich-rule=") and "--permanent" not in args:
        _change(host, ["firewall-cmd", *args])
        rule = action.split("=", 1)[1]
        check = subprocess.run(
            [
                "/usr/bin/python3",
                "-c",
                "import sys; from firewall.core.rich import Rich_Rule; Rich_Rule(rule_str=sys.argv[1])",
                rule,
            ],
            capture_output=True,
            text=True,
        )
        if check.returncode:
            fail(f"Error: INVALID_RULE: {check.stderr.strip().splitlines()[-1]}")
        timeout = [a.split("=", 1)[1] for a in args if a.startswith("--timeout=")]
        runtime.append(f"rich-rule={rule}" + (f" timeout={timeout[0]}" if timeout else ""))
        return 0
    if action.startswith("--query-"):
        _query(host, ["firewall-cmd", *args])
        return 0 if action.split("=", 1)[1] in (permanent if "--permanent" in args else runtime) else 1
    _change(host, ["firewall-cmd", *args])
    if action.startswith("--add-") and "--permanent" in args:
        permanent.append(action.split("=", 1)[1])
    elif action == "--reload":
        runtime[:] = permanent
    else:
        fail(f"firewall-cmd stub: unsupported {args}")


def disk_of(host, device: str) -> dict:
    """A disk's state; a new disk is blank and 50 GiB (dataDiskSizeGb's default)."""
    disk = host.get("disks", {}).setdefault(host.rel(device), {})
    disk.setdefault("SIZE", 50 * GIB)
    return disk


def blkid(host, args):
    _query(host, ["blkid", *args])
    value = disk_of(host, args[-1]).get(args[args.index("--match-tag") + 1])
    if not value:
        return 2
    print(value)


def mkfs_xfs(host, args):
    _change(host, ["mkfs.xfs", *args])
    if not os.path.exists(args[-1]):
        fail(f"mkfs.xfs: {args[-1]}: no such device")
    disk = disk_of(host, args[-1])
    disk.update(TYPE="xfs", UUID=DISK_UUID, FS_BYTES=disk["SIZE"])


def mounted(host, path: str) -> dict | None:
    """The disk mounted at path (mounts: mount point -> [device, filesystem UUID when mounted])."""
    mount = host.get("mounts", {}).get(host.rel(path))
    return None if mount is None else disk_of(host, mount[0])


def findmnt(host, args):
    """The UUID of the filesystem mounted there (a disk swapped underneath keeps the old one)."""
    _query(host, ["findmnt", *args])
    mount = host.get("mounts", {}).get(host.rel(args[args.index("--mountpoint") + 1]))
    if mount is None:
        return 1
    print(mount[1])


def mount(host, args):
    _change(host, ["mount", *args])
    with open(host.path("etc/fstab")) as f:
        lines = [line.split() for line in f if f" {host.rel(args[-1])} " in line]
    if not lines:
        fail(f"mount: {args[-1]}: can't find in /etc/fstab")
    uuid = lines[-1][0].removeprefix("UUID=")
    devices = [d for d, disk in host.get("disks", {}).items() if disk.get("UUID") == uuid]
    if not devices:
        fail(f"mount: {args[-1]}: can't find UUID={uuid}")
    host.get("mounts", {})[host.rel(args[-1])] = [devices[0], uuid]


def umount(host, args):
    _change(host, ["umount", *args])
    if host.get("mounts", {}).pop(host.rel(args[-1]), None) is None:
        fail(f"umount: {args[-1]}: not mounted")


def blockdev(host, args):
    _query(host, ["blockdev", *args])
    print(disk_of(host, args[-1])["SIZE"])


def xfs_info(host, args):
    _query(host, ["xfs_info", *args])
    disk = mounted(host, args[-1])
    if disk is None:
        fail(f"xfs_info: {args[-1]} is not a mounted XFS filesystem")
    print(
        f"meta-data=/dev/sdb               isize=512    agcount=4, agsize=655360 blks\n"
        f"data     =                       bsize=4096   blocks={disk['FS_BYTES'] // 4096}, imaxpct=25\n"
        f"naming   =version 2              bsize=4096   ascii-ci=0, ftype=1"
    )


def xfs_growfs(host, args):
    _change(host, ["xfs_growfs", *args])
    disk = mounted(host, args[-1])
    disk["FS_BYTES"] = disk["SIZE"]


def semanage(host, args):
    rules = host.get("fcontext", [])
    if "--list" in args:
        _query(host, ["semanage", *args])
        print("\n".join(rules))
    else:
        _change(host, ["semanage", *args])
        rules.append(f"{args[-1]} all files system_u:object_r:{args[args.index('--type') + 1]}:s0")


def chmod(host, args):
    _change(host, ["chmod", *args])
    os.chmod(args[-1], int(args[0], 8))


def mv(host, args):
    _change(host, ["mv", *args])
    os.replace(args[-2], args[-1])


def ln(host, args):
    _change(host, ["ln", *args])
    if os.path.lexists(args[-1]):
        os.remove(args[-1])
    os.symlink(args[-2], args[-1])


def git(host, args):
    if args[0] == "clone":
        _change(host, ["git", *args])
        repo = args[-1]
        os.makedirs(repo + "/.git")
        os.makedirs(repo + "/bin")
        write(repo + "/.git/FAKE_HEAD", "0" * 40)
        write(repo + "/bin/postal", HELPER)
        os.chmod(repo + "/bin/postal", 0o755)
        return
    repo, verb = args[1], args[2]
    if verb == "rev-parse":
        _query(host, ["git", *args])
        with open(repo + "/.git/FAKE_HEAD") as f:
            print(f.read())
    elif verb in ("fetch", "checkout"):
        _change(host, ["git", *args])
        if verb == "checkout":
            write(repo + "/.git/FAKE_HEAD", args[-1])
    else:
        fail(f"git stub: unsupported {args}")


def postal(host, args):
    """Postal's install helper (bin/postal), as far as postal.sh uses it: set-version."""
    if args[0] != "set-version":
        fail(f"fake helper: unsupported {args}")
    _change(host, ["postal", *args])
    compose = os.path.join(CALL.cwd, "docker-compose.yml")
    write(
        compose,
        "".join(
            f"  {svc}:\n    image: ghcr.io/postalserver/postal:{args[1]}\n"
            for svc in ("web", "smtp", "worker", "runner")
        ),
    )


RUN_OPTIONS_WITH_VALUE = {
    "--name",
    "--restart",
    "--network",
    "--env",
    "--volume",
    "--label",
    "--workdir",
    "--cap-drop",
    "--cap-add",
    "--security-opt",
    "--tmpfs",
}
# mariadb-backup, as the MariaDB image runs it: `--backup --stream=xbstream` writes an mbstream
# archive of the data directory to stdout, `mbstream -x` unpacks one into the working directory,
# `--prepare` applies the redo log (the backup's checkpoints file then says log-applied).
# https://mariadb.com/kb/en/mariabackup-overview/ ; the fake archive lists the files it holds.
CHECKPOINTS = "mariadb_backup_checkpoints"


SYSTEM_FILES = ("ibdata1", "mysql/global_priv.frm", "mysql/global_priv.MAD", "mysql/global_priv.MAI")


def _mbstream(host, datadir: str) -> str:
    files = {CHECKPOINTS: "backup_type = full-backuped\n"}
    for top, _, names in sorted(os.walk(datadir)):
        for name in sorted(names):
            with open(os.path.join(top, name)) as f:
                files[os.path.relpath(os.path.join(top, name), datadir)] = f.read()
    return "MBSTREAM1\n" + "".join(f"{name}\t{text.encode().hex()}\n" for name, text in files.items())


def _one_off(host, options, argv):
    """`docker run --rm` of a tool in the MariaDB image, with /restore bind-mounted."""
    mounts = dict(v.split(":")[1::-1] for v in options.get("--volume", []))
    restore = host.path(mounts.get("/restore", "/nonexistent"))
    if argv[:2] == ["mbstream", "-x"]:
        data = CALL.stdin
        if not data.startswith("MBSTREAM1\n"):
            fail("mbstream: incorrect stream chunk")
        for line in data.splitlines()[1:]:
            name, text = line.split("\t")
            os.makedirs(os.path.dirname(os.path.join(restore, name)), exist_ok=True)
            write(os.path.join(restore, name), bytes.fromhex(text).decode())
    elif argv[:2] == ["mariadb-backup", "--prepare"]:
        checkpoints = os.path.join(restore, CHECKPOINTS)
        if not os.path.exists(checkpoints):
            fail(f"mariadb-backup: cannot open {CHECKPOINTS}")
        write(checkpoints, "backup_type = log-applied\n")
    elif argv[:2] == ["chown", "-R"]:
        host.get("owners", {})[host.rel(restore)] = argv[2]
    else:
        fail(f"docker run stub: unsupported one-off {argv}")


def root_password_ok(host, container: dict) -> bool:
    """The password in the mounted root-only file is the one MariaDB initialised with."""
    with open(host_path(container["volumes"], "/run/secrets/mariadb-root-password")) as f:
        return f.read() == host.state.get("mariadb_root_password")


def run_options(args: list[str]) -> tuple[dict, int]:
    """`docker run` options (name -> values) and the index of the image."""
    i, options = 1, {}
    while args[i].startswith("--"):
        if args[i] in RUN_OPTIONS_WITH_VALUE:
            options.setdefault(args[i], []).append(args[i + 1])
            i += 2
        else:
            options.setdefault(args[i], []).append("")
            i += 1
    return options, i


def host_path(volumes: list[str], path: str) -> str:
    """The host path behind a container path, through the bind mounts."""
    for volume in volumes:
        source, target = volume.split(":")[:2]
        if path == target or path.startswith(target + "/"):
            return CALL.env["PG_ROOT"] + source + path[len(target) :]
    return ""


def caddy_validate(host, volumes: list[str], config: str) -> int:
    """The real caddy parses the staged Caddyfile (`caddy adapt`: the certificates stay unread)."""
    with open(host_path(volumes, config)) as f:
        code, stderr = _caddy_adapt(f.read())
    print(stderr, file=sys.stderr, end="")
    if code == 0:
        print("Valid configuration", file=sys.stderr)
    return code


@functools.cache
def _caddy_adapt(text: str) -> tuple[int, str]:
    import subprocess
    import tempfile

    caddy = os.path.join(os.path.dirname(sys.executable), "caddy")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "Caddyfile")
        write(path, text)
        result = subprocess.run(
            [caddy, "adapt", "--config", path, "--adapter", "caddyfile"], capture_output=True, text=True
        )
    return result.returncode, result.stderr.replace(path, "/etc/caddy/Caddyfile")


# Caddy's storage (/data/caddy in the caddy image) keeps each certificate under its issuer.
CADDY_ISSUER_DIRS = {"letsencrypt": "acme-v02.api.letsencrypt.org-directory", "internal": "local"}


def caddy_load(host, container: dict) -> None:
    """Caddy (re)reads /etc/caddy/Caddyfile and obtains its site's certificate into
    /data/caddy/certificates/<issuer>/<site>/<site>.crt|.key, unless it has one: tls internal from
    its local CA (root in /data/caddy/pki/authorities/local/root.crt), letsencrypt a stand-in
    (self-signed) unless `acme_error` is set; tls=custom names its files."""
    with open(host_path(container["volumes"], "/etc/caddy/Caddyfile")) as f:
        text = f.read()
    site = [line for line in text.splitlines() if line.endswith(" {") and not line.startswith("{")]
    container["site"] = site[0].split()[0] if site else ""
    internal = "tls internal" in text or "issuer internal" in text
    container["tls"] = "internal" if internal else "custom" if "tls /" in text else "letsencrypt"
    if container["tls"] == "letsencrypt" and host.state.get("acme_error"):
        container["logs"] = container.get("logs", "") + (
            '{"level":"error","logger":"tls.obtain","msg":"could not get certificate from issuer",'
            f'"identifier":"{container["site"]}","error":"{host.state["acme_error"]}"}}\n'
        )
        return
    if container["tls"] == "custom" or not container["site"]:
        return
    storage = host_path(container["volumes"], "/data/caddy")
    ca = None
    if container["tls"] == "internal":
        ca = f"{storage}/pki/authorities/local/root"
        if not os.path.exists(ca + ".crt"):
            issue_certificate(ca, "Caddy Local Authority - 2026 ECC Root")
    leaf = f"{storage}/certificates/{CADDY_ISSUER_DIRS[container['tls']]}/{container['site']}/{container['site']}"
    if not os.path.exists(leaf + ".crt"):
        issue_certificate(leaf, container["site"], ca)


def docker(host, args):
    containers = host.get("containers", {})
    if args[0] == "compose":
        return compose(host, args)
    if args[0] in ("inspect", "logs"):
        _query(host, ["docker", *args])
        container = containers.get(args[-1])
        if container is None:
            fail(f"Error: No such object: {args[-1]}")
        if args[0] == "logs":
            print(container.get("logs", ""), end="")
            return
        fields = {
            ".Config.Image": container["image"],
            ".State.Running": str(container["running"]).lower(),
            'index .Config.Labels "postal-gateway.spec"': container.get("labels", {}).get("postal-gateway.spec", ""),
        }
        out = args[args.index("--format") + 1]
        for field, value in fields.items():
            out = out.replace("{{" + field + "}}", value)
        print(out)
        return
    if args[0] == "run" and "--rm" in args and args[-6:-4] == ["caddy", "validate"]:
        _query(host, ["docker", *args])
        options, _ = run_options(args)
        return caddy_validate(host, options["--volume"], args[-3])
    # readiness probe and backup stream: they only read
    readiness = args[0] == "exec" and (
        args[2:4] == ["healthcheck.sh", "--connect"] or "mariadb-backup --backup" in args[-1]
    )
    (_query if readiness else _change)(host, ["docker", *args])
    if args[0] == "run":
        options, i = run_options(args)
        if "--rm" in options and "--name" not in options:
            return _one_off(host, options, args[i + 1 :])
        name = options["--name"][0]
        env = dict(e.split("=", 1) for e in options.get("--env", []))
        container = {
            "image": args[i],
            "args": args[i + 1 :],
            "running": True,
            "env": env,
            "volumes": options.get("--volume", []),
            "network": options.get("--network", [""])[0],
            "labels": dict(label.split("=", 1) for label in options.get("--label", [])),
            "restart": options.get("--restart", ["no"])[0],
            "confinement": {
                key: options.get(f"--{key}", [])
                for key in ("cap-drop", "cap-add", "security-opt", "read-only", "tmpfs")
                if f"--{key}" in options
            },
        }
        containers[name] = container
        if "MARIADB_ROOT_PASSWORD_FILE" in env:  # the image initialises an empty data dir with it
            data = host_path(container["volumes"], "/var/lib/mysql")
            if not os.path.exists(data + "/mysql"):
                with open(host_path(container["volumes"], env["MARIADB_ROOT_PASSWORD_FILE"])) as f:
                    host.state["mariadb_root_password"] = f.read()
                # what mariadb-install-db leaves: the InnoDB system tablespace and the system
                # tables (mysql.global_priv holds the accounts since MariaDB 10.4, an Aria table)
                os.makedirs(data + "/mysql")
                for name in SYSTEM_FILES:
                    write(os.path.join(data, name), "")
        if container["image"].startswith("caddy:"):
            caddy_load(host, container)
    elif args[0] in ("rm", "start", "restart", "stop"):
        name = args[-1]
        if name not in containers:
            fail(f"Error: No such container: {name}")
        if args[0] == "rm":
            del containers[name]
        elif args[0] == "stop":
            containers[name]["running"] = False
        else:
            containers[name]["running"] = True
            containers[name]["restarts"] = containers[name].get("restarts", 0) + (args[0] == "restart")
            if containers[name]["image"].startswith("caddy:"):
                caddy_load(host, containers[name])
    elif args[0] == "exec":
        name = args[2] if args[1] == "--interactive" else args[1]
        container = containers.get(name, {})
        if not container.get("running"):
            fail(f"Error response from daemon: container {name} is not running")
        if args[2:5] == ["caddy", "reload", "--config"]:
            container["reloads"] = container.get("reloads", 0) + 1
            caddy_load(host, container)
        elif "--interactive" in args and "mariadb --user=root" in args[-1]:
            if not root_password_ok(host, container):
                fail("ERROR 1045 (28000): Access denied for user 'root'@'localhost'")
            container["sql"] = CALL.stdin
        elif "mariadb-backup --backup" in args[-1]:
            if "MYSQL_PWD=$(cat /run/secrets/mariadb-root-password)" not in args[-1] or not root_password_ok(
                host, container
            ):
                fail("mariadb-backup: Got error: 1045: Access denied for user 'root'@'localhost'")
            volume = next(v for v in container["volumes"] if v.endswith(":/var/lib/mysql"))
            sys.stdout.write(_mbstream(host, host.path(volume.split(":")[0])))
        elif not readiness:
            fail(f"docker exec stub: unsupported {args}")
    else:
        fail(f"docker stub: unsupported {args}")


def issue_certificate(prefix: str, name: str, ca: str | None = None, days: int = 90) -> None:
    """<prefix>.crt and <prefix>.key: an EC certificate for `name` (a CA when no `ca` signs it)."""
    import subprocess

    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    ext = ["-addext", f"subjectAltName=DNS:{name}"] if ca else ["-addext", "basicConstraints=critical,CA:TRUE"]
    sign = ["-CA", ca + ".crt", "-CAkey", ca + ".key"] if ca else []
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            prefix + ".key",
            "-out",
            prefix + ".crt",
            "-days",
            str(days),
            "-subj",
            f"/CN={name}",
            *ext,
            *sign,
        ],
        check=True,
        capture_output=True,
    )


def compose(host, args):
    postal = host.get("postal", {})
    rest = args[3:]  # compose -p postal ...
    compose_file = os.path.join(CALL.cwd, "docker-compose.yml")
    if not os.path.exists(compose_file):
        fail("no configuration file provided: not found")
    with open(compose_file) as f:
        version = f.read().split("postal:")[1].split()[0]
    if rest[0] == "ps":
        _query(host, ["docker", *args])
        print("\n".join(postal.get("running", [])))
        return
    _change(host, ["docker", *args])
    if rest[0] == "pull":
        postal["pulled"] = version
    elif rest[0] == "stop":
        postal["running"] = []
    elif rest[0] == "start":
        postal["running"] = ["web", "smtp", "worker"]
    elif rest[0] == "up":  # `up [options] [service...]`: the named services, or all of them
        named = [a for a in rest[1:] if not a.startswith("-")] or ["web", "smtp", "worker"]
        crashing, running = postal.get("crashing", []), postal.get("running", [])
        postal.update(
            running=[s for s in ("web", "smtp", "worker") if (s in running or s in named) and s not in crashing],
            version=version,
        )
    elif rest[0] == "restart":  # `restart service...`: only those; a stopped one starts
        for service in rest[1:]:
            if service not in postal.setdefault("running", []):
                postal["running"].append(service)
            restarts = postal.setdefault("restarts", {})
            restarts[service] = restarts.get(service, 0) + 1
    elif rest[:5] == ["run", "--rm", "-T", "runner", "postal"]:
        if postal.get("pulled") != version:
            fail(f"Unable to find image 'ghcr.io/postalserver/postal:{version}' locally")
        postal.setdefault("tasks", []).append(f"{rest[5]} {version}")
    elif rest[:3] == ["run", "--rm", "-T"] and rest[-5:] == [
        "bundle",
        "exec",
        "rails",
        "runner",
        "/config/provision.rb",
    ]:
        _provision(host, postal, rest[3:-5])
    else:
        fail(f"docker compose stub: unsupported {rest}")


def _provision(host, postal, options: list[str]) -> None:
    """`compose run --rm -T [-e NAME=VALUE]... runner bundle exec rails runner /config/provision.rb`:
    the installed provision.rb really runs, under Ruby against Postal's models (tests/fake_postal.rb,
    kept in .fake/postal.db), with only the environment the -e options give the container. The
    host's `postal_dns` ({domain: n}) says at which check Postal's resolver sees a domain's records."""
    import json
    import shutil
    import subprocess

    config = host.path("opt/postal/config")
    if not os.path.exists(config + "/provision.rb") or not os.path.exists(config + "/postal.yml"):
        fail("provision: /config/provision.rb or /config/postal.yml missing")
    if options[-1:] != ["runner"] or len(options[:-1]) % 2 or any(o != "-e" for o in options[:-1:2]):
        fail(f"docker compose stub: unsupported run options {options}")
    env = dict(e.split("=", 1) for e in options[1:-1:2])
    env |= {
        "PATH": os.environ["PATH"],
        "FAKE_POSTAL_DB": os.path.join(host.dir, "postal.db"),
        "FAKE_POSTAL_LOG": os.path.join(host.dir, "postal.log"),
        "FAKE_POSTAL_DNS": json.dumps(host.get("postal_dns", {})),
    }
    fake_models = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_postal.rb")
    result = subprocess.run(
        [shutil.which("ruby"), "-r", fake_models, config + "/provision.rb"],
        input=CALL.stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode:
        sys.exit(result.returncode)
    postal["provisioned"] = json.loads(CALL.stdin)


HEALTH = {"5000": "web", "9090": "worker", "9091": "smtp"}
HEALTH_NAMES = {"worker": "worker", "smtp": "smtp-server"}  # script/worker.rb, script/smtp_server.rb


def curl(host, args):
    """Postal's web server (right Host only) and health servers (`GET /` names the process, as
    app/util/health_server.rb does) once its service runs; https through postal-caddy; the metadata
    server and Cloud Storage's upload endpoint."""
    url = args[-1]
    if url.startswith(("http://metadata.google.internal/", "https://storage.googleapis.com/")):
        return cloud(host, args, url)
    _query(host, ["curl", *args])
    if url.startswith("https://"):
        return curl_https(host, args, url)
    port = url.split(":")[2].split("/")[0]
    other = host.get("listeners", {}).get(port)  # another process holds the port
    if other is not None:
        print(other["body"], end="")
        return
    service = HEALTH.get(port)
    if service not in host.get("postal", {}).get("running", []):
        return 7
    if service == "web" and "Host: localhost" in args:
        return 22  # 403 Blocked host
    if service != "web":
        print(f"{HEALTH_NAMES[service]} (pid: 4242, host: postal-vm)", end="")


def curl_https(host, args, url):
    hostname = url.split("/")[2]
    caddy = host.get("containers", {}).get("postal-caddy")
    if f"{hostname}:443:127.0.0.1" not in args or caddy is None or not caddy["running"]:
        return 7
    if caddy.get("site") != hostname:
        return 35  # no certificate for this name
    if caddy["tls"] != "letsencrypt":
        if "--cacert" not in args or not os.path.exists(args[args.index("--cacert") + 1]):
            return 60  # a certificate curl's default CA bundle cannot verify
    elif host.state.get("acme_error"):
        return 35
    if "--write-out" in args:  # Caddy answers 502 until Postal's web server runs
        print("200" if "web" in host.get("postal", {}).get("running", []) else "502", end="")


# The VM's side of Google Cloud, as documented:
# - the metadata server answers the default service account's token only with `Metadata-Flavor:
#   Google` (https://cloud.google.com/compute/docs/access/authenticate-workloads#applications);
# - Cloud Storage's JSON API simple upload (POST …/upload/storage/v1/b/<bucket>/o?uploadType=media&name=)
#   answers the object resource (size as a string, md5Hash base64); ifGenerationMatch=0 on an existing
#   name is 412; without it, replacing needs storage.objects.delete, which roles/storage.objectCreator
#   lacks: 403. Every other request of the VM's account (get, list, delete) is 403 as well
#   (https://cloud.google.com/storage/docs/json_api/v1/objects/insert, …/status-codes).
# A bucket exists when its directory does: `.fake/gcs/<bucket>/` (the test creates it, as pulumi up does).
VM_TOKEN = "ya29.c.fake-postal-gateway-vm-token"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"


def _gcs_error(code: int, message: str) -> int:
    import json

    print(json.dumps({"error": {"code": code, "message": message, "errors": [{"message": message}]}}))
    return 22  # curl --fail-with-body: HTTP >= 400


def gcs_dir(root: str) -> str:
    return os.path.join(str(root), ".fake", "gcs")


def cloud(host, args, url):
    import base64
    import hashlib
    import json
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(url)
    if parts.hostname == "metadata.google.internal":
        _query(host, ["curl", *args])
        if "Metadata-Flavor: Google" not in args or parts.path != TOKEN_PATH:
            return 22
        print(json.dumps({"access_token": VM_TOKEN, "expires_in": 3599, "token_type": "Bearer"}))
        return
    header_files = [args[i + 1][1:] for i, a in enumerate(args[:-1]) if a == "--header" and args[i + 1][:1] == "@"]
    headers = "".join(Path(path).read_text() for path in header_files if os.path.exists(path))
    if f"Authorization: Bearer {VM_TOKEN}" not in headers:
        _query(host, ["curl", *args])
        return _gcs_error(401, "Invalid Credentials")
    query = parse_qs(parts.query)
    path = parts.path.split("/")
    if not parts.path.startswith("/upload/storage/v1/b/") or "--upload-file" not in args:
        _query(host, ["curl", *args])
        return _gcs_error(403, "postal-gateway-vm does not have storage.objects.get access")
    bucket, name = path[5], unquote(query["name"][0])
    _change(host, ["curl", *args])
    store = os.path.join(gcs_dir(host.root), bucket)
    if not os.path.isdir(store):
        return _gcs_error(404, "The specified bucket does not exist.")
    target = os.path.join(store, name)
    if os.path.exists(target):
        if query.get("ifGenerationMatch") == ["0"]:
            return _gcs_error(412, "At least one of the pre-conditions you specified did not hold.")
        return _gcs_error(403, "postal-gateway-vm does not have storage.objects.delete access")
    with open(args[args.index("--upload-file") + 1], "rb") as f:
        data = f.read()
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as f:
        f.write(data)
    print(
        json.dumps(
            {
                "kind": "storage#object",
                "name": name,
                "bucket": bucket,
                "generation": "1765078200000001",
                "size": str(len(data)),
                "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
                "contentType": "application/pgp-encrypted",
            }
        )
    )


def ss(host, args):
    if "-K" in args:  # ss -K <filter>: ends the matching sockets (none are open on the fake host)
        _change(host, ["ss", *args])
        return 0
    _query(host, ["ss", *args])
    port = args[-1].split(":")[-1]
    other = host.get("listeners", {}).get(port)
    if other is not None:
        print(f'LISTEN 0 128 127.0.0.1:{port} 0.0.0.0:* users:(("{other["process"]}",pid=777,fd=3))')


# What a reboot does to the host, for the reboot path (tests/test_operations.py). systemd at boot:
# mounts /etc/fstab (a `nofail` entry whose disk is missing is skipped), starts the enabled units,
# and a unit with RequiresMountsFor= fails when that path is not mounted (systemd.unit(5)).
# Docker then starts the containers whose restart policy brings them back (docker run --restart:
# unless-stopped and always, not the ones stopped by hand under unless-stopped); Postal's compose
# services are `restart: unless-stopped` (postalserver/install templates/docker-compose.v3.yml).
def boot(root) -> None:
    host = Host(root)
    state = host.state
    before = {n: c["running"] for n, c in state.get("containers", {}).items()}
    postal_before = state.get("postal", {}).get("running", [])
    state["mounts"] = {}
    with open(host.path("etc/fstab")) as f:
        entries = [line.split() for line in f if line.strip() and not line.startswith("#")]
    for spec, point, *_ in entries:
        devices = [d for d, disk in state.get("disks", {}).items() if f"UUID={disk.get('UUID')}" == spec]
        if devices:
            state["mounts"][point] = [devices[0], spec.removeprefix("UUID=")]
    units = state.get("units", {})
    for name, unit in units.items():
        unit["is-active"] = bool(unit.get("is-enabled")) and _requirements_mounted(host, name)
    docker_up = units.get("docker", {}).get("is-active", False)
    for name, container in state.get("containers", {}).items():
        policy = container.get("restart", "no")
        container["running"] = docker_up and (policy == "always" or (policy == "unless-stopped" and before[name]))
    if "postal" in state:
        state["postal"]["running"] = list(postal_before) if docker_up else []
    state["boots"] = state.get("boots", 0) + 1
    host.save()


def _requirements_mounted(host, unit: str) -> bool:
    dropins = host.path(f"etc/systemd/system/{unit}.service.d")
    paths = []
    for name in sorted(os.listdir(dropins)) if os.path.isdir(dropins) else []:
        with open(os.path.join(dropins, name)) as f:
            paths += [line.split("=", 1)[1].strip() for line in f if line.startswith("RequiresMountsFor=")]
    return all(p in host.state["mounts"] for p in paths)


def needs_restarting(host, args):
    """dnf-utils' needs-restarting -r: exit 1 and say so when a core package changed since boot."""
    _query(host, ["needs-restarting", *args])
    if args != ["-r"]:
        fail(f"needs-restarting stub: unsupported {args}")
    if host.get("dnf_broken", False):  # dnf/cli/main.py ex_Error: "Error: <message>" on stderr, exit 1
        fail("Error: Failed to download metadata for repo 'baseos': Cannot download repomd.xml")
    if host.get("needs_reboot", False):
        print(  # plugins/needs_restarting.py (dnf-plugins-core), then dnf.exceptions.Error()
            "Core libraries or services have been updated since boot-up:\n  * kernel\n\n"
            "Reboot is required to fully utilize these updates.\n"
            "More information: https://access.redhat.com/solutions/27943"
        )
        return 1
    print("No core libraries or services have been updated since boot-up.\nReboot should not be necessary.")


HANDLERS = {
    "needs-restarting": needs_restarting,
    "curl": curl,
    "sleep": lambda h, a: _query(h, ["sleep", *a]),
    "restorecon": lambda h, a: _change(h, ["restorecon", *a]),
    "chown": lambda h, a: _change(h, ["chown", *a]),
    "systemctl": systemctl,
    "getenforce": getenforce,
    "setenforce": setenforce,
    "rpm": rpm,
    "dnf": dnf,
    "firewall-cmd": firewall_cmd,
    "blkid": blkid,
    "mkfs.xfs": mkfs_xfs,
    "findmnt": findmnt,
    "mount": mount,
    "umount": umount,
    "blockdev": blockdev,
    "xfs_info": xfs_info,
    "xfs_growfs": xfs_growfs,
    "semanage": semanage,
    "chmod": chmod,
    "mv": mv,
    "ln": ln,
    "git": git,
    "postal": postal,
    "docker": docker,
    "ss": ss,
}
