"""A fake Rocky 9 host for the bootstrap scripts: one stub for every system command they call.

`install(bin_dir)` links the stubs into a directory put first on PATH. Each call is appended to
`$PG_ROOT/.fake/calls.log` as `M <argv>` (it changes the host) or `Q <argv>` (it only looks),
and the host's state (packages, units, disks, containers, Postal) lives in `.fake/state` (marshal).
`STUB_FAIL=<command>` makes that command fail with a message on stderr.
"""

from __future__ import annotations

import marshal
import os
import sys

# Each stub call is a new process: stdlib imports that pull in `re` (json, shlex, pathlib) would
# double its start-up time, so they are imported only where needed.

COMMANDS = ("sudo", "sleep", "curl", "systemctl", "getenforce", "setenforce", "rpm", "dnf", "firewall-cmd", "blkid",
            "mkfs.xfs", "mountpoint", "mount", "semanage", "restorecon", "chown", "git", "docker", "needs-restarting")
DISK_UUID = "6f1c2a7e-0d2b-4c39-9a51-3c1f0e2b7d44"
FAKE_POSTAL_HELPER = """#!/usr/bin/env bash
# Postal's install helper, as far as postal.sh uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $1 == set-version ]] || { echo "fake helper: unsupported $*" >&2; exit 1; }
printf 'M postal set-version %s\\n' "$2" >>"$PG_ROOT/.fake/calls.log"
for svc in web smtp worker runner; do printf '  %s:\\n    image: ghcr.io/postalserver/postal:%s\\n' "$svc" "$2"; done \\
  >docker-compose.yml
"""


def install(bin_dir) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / "_fakehost"
    stub.write_text(f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                    "import fakehost\nfakehost.main()\n")
    stub.chmod(0o755)
    for name in COMMANDS:
        (bin_dir / name).symlink_to(stub)


SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,@%+")


def quote(arg: str) -> str:
    """shlex.quote without importing re."""
    return arg if arg and set(arg) <= SAFE else "'" + arg.replace("'", "'\"'\"'") + "'"


class Host:
    def __init__(self, root):
        self.root = str(root)
        self.dir = os.path.join(self.root, ".fake")
        os.makedirs(self.dir, exist_ok=True)
        try:
            with open(os.path.join(self.dir, "state"), "rb") as f:
                self.state = marshal.load(f)
        except FileNotFoundError:
            self.state = {}

    def path(self, path: str) -> str:
        return self.root + "/" + path.lstrip("/")

    def save(self) -> None:
        with open(os.path.join(self.dir, "state"), "wb") as f:
            marshal.dump(self.state, f)

    def log(self, kind: str, argv: list[str]) -> None:
        with open(os.path.join(self.dir, "calls.log"), "a") as f:
            f.write(f"{kind} {' '.join(map(quote, argv))}\n")

    def rel(self, path: str) -> str:
        """A path as the real host would see it (without the test's root)."""
        return path.removeprefix(self.root) or "/"

    def get(self, key: str, default):
        return self.state.setdefault(key, default)


def fail(message: str, code: int = 1):
    print(message, file=sys.stderr)
    sys.exit(code)


def main() -> None:
    name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    if name == "sudo":
        os.execvp(args[0], args)
    host = Host(os.environ["PG_ROOT"])
    if os.environ.get("STUB_FAIL") == name:
        host.log("Q", [name, *args])
        fail(f"{name}: simulated failure: {' '.join(args)}")
    code = HANDLERS.get(name, lambda h, a: None)(host, args) or 0
    host.save()
    sys.exit(code)


def _query(host: Host, argv: list[str]) -> None:
    host.log("Q", argv)


def _change(host: Host, argv: list[str]) -> None:
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
    elif verb in ("enable", "start"):
        _change(host, ["systemctl", *args])
        units.setdefault(unit, {})["is-enabled" if verb == "enable" else "is-active"] = True
    elif verb in ("daemon-reload", "restart"):
        _change(host, ["systemctl", *args])
    elif verb == "reboot":
        _change(host, ["systemctl", *args])
        host.state["reboots"] = host.state.get("reboots", 0) + 1
    else:
        fail(f"systemctl stub: unsupported {args}")


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
        host.get("packages", []).extend(a for a in args[args.index("install") + 1:] if not a.startswith("-"))
    elif args[:2] == ["config-manager", "--add-repo"]:
        repo = host.path("etc/yum.repos.d/docker-ce.repo")
        os.makedirs(os.path.dirname(repo), exist_ok=True)
        with open(repo, "w") as f:
            f.write(f"# from {args[2]}\n")
    else:
        fail(f"dnf stub: unsupported {args}")


def firewall_cmd(host, args):
    rules = host.get("firewall", [])
    (action,) = [a for a in args if a.startswith("--") and a != "--permanent"]
    if action.startswith("--query-"):
        _query(host, ["firewall-cmd", *args])
        return 0 if action.split("=", 1)[1] in rules else 1
    _change(host, ["firewall-cmd", *args])
    if action.startswith("--add-"):
        rules.append(action.split("=", 1)[1])


def blkid(host, args):
    _query(host, ["blkid", *args])
    disk = host.get("disks", {}).get(host.rel(args[-1]))
    if not disk:
        return 2
    print(disk[args[args.index("--match-tag") + 1]])


def mkfs_xfs(host, args):
    _change(host, ["mkfs.xfs", *args])
    if not os.path.exists(args[-1]):
        fail(f"mkfs.xfs: {args[-1]}: no such device")
    host.get("disks", {})[host.rel(args[-1])] = {"TYPE": "xfs", "UUID": DISK_UUID}


def mountpoint(host, args):
    _query(host, ["mountpoint", *args])
    return 0 if host.rel(args[-1]) in host.get("mounts", []) else 32


def mount(host, args):
    _change(host, ["mount", *args])
    with open(host.path("etc/fstab")) as f:
        fstab = f.read()
    if f" {host.rel(args[-1])} " not in fstab:
        fail(f"mount: {args[-1]}: can't find in /etc/fstab")
    host.get("mounts", []).append(host.rel(args[-1]))


def semanage(host, args):
    rules = host.get("fcontext", [])
    if "--list" in args:
        _query(host, ["semanage", *args])
        print("\n".join(rules))
    else:
        _change(host, ["semanage", *args])
        rules.append(f"{args[-1]} all files system_u:object_r:{args[args.index('--type') + 1]}:s0")


def git(host, args):
    if args[0] == "clone":
        _change(host, ["git", *args])
        repo = args[-1]
        os.makedirs(repo + "/.git")
        os.makedirs(repo + "/bin")
        write(repo + "/.git/FAKE_HEAD", "0" * 40)
        write(repo + "/bin/postal", FAKE_POSTAL_HELPER)
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


RUN_OPTIONS_WITH_VALUE = {"--name", "--restart", "--network", "--env-file", "--volume", "--workdir"}
# mariadb-backup, as the MariaDB image runs it: `--backup --stream=xbstream` writes an mbstream
# archive of the data directory to stdout, `mbstream -x` unpacks one into the working directory,
# `--prepare` applies the redo log (the backup's checkpoints file then says log-applied).
# https://mariadb.com/kb/en/mariabackup-overview/ ; the fake archive lists the files it holds.
CHECKPOINTS = "mariadb_backup_checkpoints"


def _mbstream(host, datadir: str) -> str:
    files = {CHECKPOINTS: "backup_type = full-backuped\n"}
    for name in sorted(os.listdir(datadir)) if os.path.isdir(datadir) else []:
        with open(os.path.join(datadir, name)) as f:
            files[name] = f.read()
    return "MBSTREAM1\n" + "".join(f"{name}\t{text.encode().hex()}\n" for name, text in files.items())


def _one_off(host, options, argv):
    """`docker run --rm` of a tool in the MariaDB image, with /restore bind-mounted."""
    mounts = dict(v.split(":")[1::-1] for v in options.get("--volume", []))
    restore = host.path(mounts.get("/restore", "/nonexistent"))
    if argv[:2] == ["mbstream", "-x"]:
        data = sys.stdin.read()
        if not data.startswith("MBSTREAM1\n"):
            fail("mbstream: incorrect stream chunk")
        for line in data.splitlines()[1:]:
            name, text = line.split("\t")
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


def docker(host, args):
    containers = host.get("containers", {})
    if args[0] == "compose":
        return compose(host, args)
    if args[0] == "inspect":
        _query(host, ["docker", *args])
        container = containers.get(args[-1])
        if container is None:
            fail(f"Error: No such object: {args[-1]}")
        print(container["image"] if "Image" in args[2] else str(container["running"]).lower())
        return
    read_only = args[0] == "exec" and "--interactive" not in args  # the readiness probe
    (_query if read_only else _change)(host, ["docker", *args])
    if args[0] == "run":
        i, options = 1, {}
        while args[i].startswith("--"):
            if args[i] in RUN_OPTIONS_WITH_VALUE:
                options.setdefault(args[i], []).append(args[i + 1])
                i += 2
            else:
                i += 1
        if "--rm" in args[1:i] and "--name" not in options:
            return _one_off(host, options, args[i + 1:])
        env = {}
        for env_file in options.get("--env-file", []):
            with open(env_file) as f:
                env.update(line.split("=", 1) for line in f.read().splitlines())
        containers[options["--name"][0]] = {"image": args[i], "args": args[i + 1:], "running": True, "env": env,
                                            "volumes": options.get("--volume", []),
                                            "network": options.get("--network", [""])[0],
                                            "restart": options.get("--restart", ["no"])[0]}
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
    elif args[0] == "exec":
        name = args[2] if args[1] == "--interactive" else args[1]
        if not containers.get(name, {}).get("running"):
            fail(f"Error response from daemon: container {name} is not running")
        if "--interactive" in args:
            if "MARIADB_ROOT_PASSWORD" not in containers[name]["env"]:
                fail("ERROR 1045 (28000): Access denied for user 'root'@'localhost'")
            containers[name]["sql"] = sys.stdin.read()
        elif "mariadb-backup --backup" in args[-1]:
            if 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD"' not in args[-1]:
                fail("mariadb-backup: Got error: 1045: Access denied for user 'root'@'localhost'")
            volume = next(v for v in containers[name]["volumes"] if v.endswith(":/var/lib/mysql"))
            sys.stdout.write(_mbstream(host, host.path(volume.split(":")[0])))
    else:
        fail(f"docker stub: unsupported {args}")


def compose(host, args):
    postal = host.get("postal", {})
    rest = args[3:]  # compose -p postal ...
    if not os.path.exists("docker-compose.yml"):
        fail("no configuration file provided: not found")
    with open("docker-compose.yml") as f:
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
    elif rest[0] == "up":
        crashing = postal.get("crashing", [])
        postal.update(running=[s for s in ("web", "smtp", "worker") if s not in crashing], version=version)
    elif rest[:5] == ["run", "--rm", "-T", "runner", "postal"]:
        if postal.get("pulled") != version:
            fail(f"Unable to find image 'ghcr.io/postalserver/postal:{version}' locally")
        postal.setdefault("tasks", []).append(f"{rest[5]} {version}")
    elif rest[4:] == ["bundle", "exec", "rails", "runner", "/config/provision.rb"]:
        import json

        config = host.path("opt/postal/config")
        if not os.path.exists(config + "/provision.rb") or not os.path.exists(config + "/postal.yml"):
            fail("provision: /config/provision.rb or /config/postal.yml missing")
        spec = json.loads(sys.stdin.read())
        postal["provisioned"] = spec
        print("[postal-gateway:provision] done")
    else:
        fail(f"docker compose stub: unsupported {rest}")


HEALTH = {"5000": "web", "9090": "worker", "9091": "smtp"}


def curl(host, args):
    """Postal's health endpoints answer once its service runs (and, for web, with the right Host)."""
    _query(host, ["curl", *args])
    url = args[-1]
    service = HEALTH.get(url.split(":")[2].split("/")[0]) if url.startswith("http://127.0.0.1:") else None
    if service not in host.get("postal", {}).get("running", []):
        return 7
    if service == "web" and "Host: localhost" in args:
        return 22  # 403 Blocked host


def needs_restarting(host, args):
    """dnf-utils' needs-restarting -r: exit 1 and say so when a core package changed since boot."""
    _query(host, ["needs-restarting", *args])
    if args != ["-r"]:
        fail(f"needs-restarting stub: unsupported {args}")
    if host.get("needs_reboot", False):
        print("Core libraries or services have been updated since boot-up:\n  * kernel\n\n"
              "Reboot is required to fully utilize these updates.")
        return 1
    print("No core libraries or services have been updated since boot-up.\nReboot should not be necessary.")


HANDLERS = {"needs-restarting": needs_restarting, "curl": curl, "sleep": lambda h, a: _query(h, ["sleep", *a]), "restorecon": lambda h, a: _change(h, ["restorecon", *a]),
            "chown": lambda h, a: _change(h, ["chown", *a]), "systemctl": systemctl, "getenforce": getenforce,
            "setenforce": setenforce, "rpm": rpm, "dnf": dnf, "firewall-cmd": firewall_cmd, "blkid": blkid,
            "mkfs.xfs": mkfs_xfs, "mountpoint": mountpoint, "mount": mount, "semanage": semanage, "git": git,
            "docker": docker}
