"""Real OpenPGP keys made by the real gpg (GnuPG, as Rocky Linux 9 and Debian ship it) in throwaway
home directories: the config's key checks and the backup's encryption round trip use them."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    home: str  # GNUPGHOME holding the private key (the operator's machine)
    fingerprint: str
    public: str  # gpg --armor --export
    secret: str  # gpg --armor --export-secret-keys


def gpg(home: str, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["gpg", "--homedir", home, "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "", *args],
        capture_output=True,
        text=kwargs.pop("text", True),
        check=check,
        timeout=60,
        **kwargs,
    )


def forget(home: str) -> None:
    """Stops the gpg-agent that key generation (and the restore drill's decryption) started for a home,
    then removes the home: each one otherwise outlives the test process."""
    subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True, timeout=60)
    shutil.rmtree(home, ignore_errors=True)


@functools.cache
def make(
    uid: str, primary: str = "ed25519", subkey: str | None = "cv25519", expire: str = "never", when: str = ""
) -> Key:
    """A key pair: `primary` certifies (and signs), `subkey` encrypts (None: no encryption subkey);
    `when` (gpg --faked-system-time) dates its creation, to make one that has already expired."""
    home = tempfile.mkdtemp(prefix="pg-gpg-")
    os.chmod(home, 0o700)
    atexit.register(forget, home)
    faked = ("--faked-system-time", when) if when else ()
    gpg(home, *faked, "--quick-gen-key", uid, primary, "cert,sign", expire)
    fingerprint = next(
        line.split(":")[9]
        for line in gpg(home, "--list-keys", "--with-colons").stdout.splitlines()
        if line.startswith("fpr")
    )
    if subkey:
        gpg(home, *faked, "--quick-add-key", fingerprint, subkey, "encr", expire)
    return Key(
        home,
        fingerprint,
        gpg(home, "--armor", "--export", fingerprint).stdout,
        gpg(home, "--armor", "--export-secret-keys", fingerprint).stdout,
    )


def operator() -> Key:
    """The backup key pair an operator makes (docs/operations.md#backups)."""
    return make("postal-gateway backups <ops@rdo-dev.com>")
