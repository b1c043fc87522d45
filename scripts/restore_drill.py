#!/usr/bin/env python3
"""Restore drill, operator side: fetch an encrypted off-site backup, decrypt it, check it.

    scripts/restore_drill.py gs://BUCKET/STACK/ [--object NAME] [--out DIR]

Takes the newest `postal-backup-<time>.tar.gpg` under the prefix (or --object), copies it with
`gcloud storage cp` (your identity: the VM's cannot read the bucket), decrypts it with `gpg` and the
operators' private key (your keyring, or GNUPGHOME; never on the VM), then reads the whole archive
and checks every file against its SHA256SUMS line. Only then is DIR/postal-backup-<time>.tar
written; copy it to the VM and run `sudo postal-gateway-restore <file>` there (docs/runbook.md,
"Restore from the off-site backup").

Exit 0: the archive is complete and verified. Exit 1: refused (a corrupt or truncated object, a key
that does not decrypt it, a foreign archive); nothing is left in DIR. Each phase's time is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

OBJECT = re.compile(r"postal-backup-(\d{8}T\d{6}Z)\.tar\.gpg")
MEMBER = re.compile(r"SHA256SUMS|mariadb-\d{8}T\d{6}Z\.mbstream\.gz|postal\.yml|signing\.key|postal-gateway\.version")


class Refused(Exception):
    """The backup cannot be used; the message says why."""


def run(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError:
        raise Refused(f"{argv[0]} is not installed ({what})") from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.strip().splitlines()[-3:])
        raise Refused(f"{what} failed: {detail}")
    return done.stdout


def newest(prefix: str) -> str:
    listed = run(["gcloud", "storage", "ls", prefix], f"listing {prefix}").split()
    names = sorted(url for url in listed if OBJECT.fullmatch(url.rsplit("/", 1)[-1]))
    if not names:
        raise Refused(f"no postal-backup-<time>.tar.gpg under {prefix}")
    return names[-1]


def verify(path: Path) -> list[str]:
    """Every member read to its end and matched against SHA256SUMS; the member names."""
    sums: dict[str, str] = {}
    digests: dict[str, str] = {}
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                if not member.isfile() or not MEMBER.fullmatch(member.name):
                    raise Refused(f"the archive holds {member.name!r}, which no postal-gateway backup holds")
                data = archive.extractfile(member)
                if member.name == "SHA256SUMS":
                    for line in data.read().decode().splitlines():
                        digest, _, name = line.partition("  ")
                        sums[name] = digest
                    continue
                h = hashlib.sha256()
                for chunk in iter(lambda: data.read(1 << 20), b""):  # noqa: B023 (used at once)
                    h.update(chunk)
                digests[member.name] = h.hexdigest()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise Refused(f"the archive is not complete ({err})") from None
    if not sums:
        raise Refused("the archive has no SHA256SUMS: not a postal-gateway backup")
    if set(sums) != set(digests):
        raise Refused(f"the archive holds {sorted(digests)}, its SHA256SUMS lists {sorted(sums)}")
    bad = sorted(name for name in sums if sums[name] != digests[name])
    if bad:
        raise Refused(f"corrupt: {', '.join(bad)} do not match SHA256SUMS")
    if not any(name.startswith("mariadb-") for name in digests):
        raise Refused("the archive holds no MariaDB backup")
    return sorted(digests)


def fetch(prefix: str, obj: str | None, out: Path) -> Path:
    timings = {}
    start = time.monotonic()
    url = f"{prefix.rstrip('/')}/{obj}" if obj else newest(prefix)
    match = OBJECT.fullmatch(url.rsplit("/", 1)[-1])
    if not match:
        raise Refused(f"{url} is not a postal-backup-<time>.tar.gpg object")
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"postal-backup-{match.group(1)}.tar"
    if final.exists():
        raise Refused(f"{final} already exists")
    with tempfile.TemporaryDirectory(dir=out, prefix=".restore-drill-") as work:
        encrypted, plain = Path(work) / "object.tar.gpg", Path(work) / "backup.tar"
        run(["gcloud", "storage", "cp", url, str(encrypted)], f"copying {url}")
        timings["fetch"] = time.monotonic() - start
        start = time.monotonic()
        # gpg checks the message's integrity (MDC/AEAD) and exits non-zero on a damaged or cut one
        run(
            ["gpg", "--batch", "--no-tty", "--quiet", "--output", str(plain), "--decrypt", str(encrypted)],
            f"decrypting {url} (is the operators' private key in your keyring?)",
        )
        timings["decrypt"] = time.monotonic() - start
        start = time.monotonic()
        members = verify(plain)
        timings["verify"] = time.monotonic() - start
        os.replace(plain, final)
    print(f"verified {final} from {url}: {', '.join(members)}")
    print("timings: " + ", ".join(f"{phase} {seconds:.2f}s" for phase, seconds in timings.items()))
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", help="gs://BUCKET/STACK/ (pulumi stack output backupLocation)")
    parser.add_argument("--object", help="an object name under the prefix (default: the newest)")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the verified .tar goes")
    args = parser.parse_args(argv)
    if not args.prefix.startswith("gs://"):
        parser.error("the prefix is a gs://BUCKET/STACK/ URL")
    try:
        fetch(args.prefix, args.object, args.out)
    except Refused as err:
        print(f"restore_drill: refused: {err}; nothing was written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
