"""A real IMAP server for the inbox tests: Debian's Dovecot (dovecot-imapd) on 127.0.0.1, unprivileged.

Its own configuration, base_dir, state and maildir in a throwaway directory; IMAPS only, with a trustme
certificate for 127.0.0.1 and localhost; users and PLAIN passwords from a passwd-file; XOAUTH2 through
Dovecot's oauth2 passdb against a loopback stand-in for Google's userinfo endpoint (Dovecot's own
example for Google: doc.dovecot.org/2.3/configuration_manual/authentication/oauth2). Run as root (CI
containers), Dovecot is started as `nobody`: its login processes refuse to run as root.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


class UserInfo(BaseHTTPRequestHandler):
    """GET /oauth2/v2/userinfo with `Authorization: Bearer …`: Google's answer for a known token, else 401."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.path.startswith("/oauth2/v3/tokeninfo?access_token="):  # Google's tokeninfo: 400 for a bad token
            token = self.path.partition("=")[2]
            if token not in self.server.tokens:
                return self.answer(400, {"error_description": "Invalid Value"})
        email = self.server.tokens.get(token)
        if email:
            code, body = 200, {"id": "1", "email": email, "verified_email": True}
        else:
            code, body = 401, {"error": {"code": 401, "message": "Invalid Credentials", "status": "UNAUTHENTICATED"}}
        self.answer(code, body)

    def answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CONFIG = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{dir}/cert.pem
ssl_key = <{dir}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login xoauth2
auth_failure_delay = 0
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
first_valid_uid = {uid}
# a refused login is answered at once: auth_failure_delay = 0 still waits for Dovecot 2.3's 500 ms check of
# delayed failures (src/auth/auth-request-handler.c, AUTH_FAILURE_DELAY_CHECK_MSECS), except when the passdb
# sets nodelay (doc.dovecot.org/2.3/configuration_manual/authentication/nodelay); a failing passdb's fields
# are dropped, so this one only adds nodelay and authenticates nothing (noauthenticate)
passdb {{
  driver = static
  args = noauthenticate nodelay
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2
  args = {dir}/oauth2.conf.ext
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
  mailbox "Smoke tests" {{
    auto = create
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # no auth penalty: the auth process cannot open this socket, so one test's refused login does not
  # delay the next logins by seconds
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


class Dovecot:
    """dovecot -F with its own config; `users` maps login -> password, `tokens` bearer token -> login."""

    def __init__(self, users: dict[str, str], tokens: dict[str, str]):
        self.ca = trustme.CA()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-dovecot-"))
        self.users = users
        self.userinfo = ThreadingHTTPServer(("127.0.0.1", 0), UserInfo)
        self.userinfo.tokens = tokens
        threading.Thread(target=self.userinfo.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.ca_file = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
        cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
        (self.dir / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in users.items()))
        (self.dir / "oauth2.conf.ext").write_text(
            "introspection_mode = auth\n"
            f"tokeninfo_url = http://127.0.0.1:{self.userinfo.server_port}/oauth2/v3/tokeninfo?access_token=\n"
            f"introspection_url = http://127.0.0.1:{self.userinfo.server_port}/oauth2/v2/userinfo\n"
            "username_attribute = email\n"
        )
        if os.getuid() == 0:  # Dovecot's login processes refuse root
            self.run_as = pwd.getpwnam("nobody")
            group = grp.getgrgid(self.run_as.pw_gid).gr_name
        else:
            self.run_as = pwd.getpwuid(os.getuid())
            group = grp.getgrgid(os.getgid()).gr_name
        self.process = None
        for _ in range(5):  # the port is free when chosen; another process may take it before Dovecot binds
            self.port = free_port()
            (self.dir / "dovecot.conf").write_text(
                CONFIG.format(
                    dir=self.dir,
                    user=self.run_as.pw_name,
                    group=group,
                    uid=self.run_as.pw_uid,
                    gid=self.run_as.pw_gid,
                    port=self.port,
                )
            )
            if self.start():
                return
        raise RuntimeError(f"dovecot did not start: {self.log()}")

    def start(self) -> bool:
        if os.getuid() == 0:
            for path in [self.dir, *self.dir.rglob("*")]:
                os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)
        user = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []} if os.getuid() == 0 else {}
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "stderr").open("w"),
            start_new_session=True,
            **user,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def log(self) -> str:
        return "".join(
            (self.dir / name).read_text(errors="replace")
            for name in ("stderr", "dovecot.log")
            if (self.dir / name).exists()
        )

    def settled_log(self, quiet: float = 0.3, limit: float = 10, since: int = 0, want: str = "") -> list[str]:
        """The log's lines once it has stopped growing for `quiet` seconds (Dovecot's log process writes
        late), and, with `want`, once a line from `since` on contains it (on a loaded machine the log
        process may write it after a quiet spell)."""
        deadline, lines = time.monotonic() + limit, None
        while time.monotonic() < deadline:
            now = self.log().splitlines()
            if now == lines and not (want and not any(want in line for line in now[since:])):
                break
            lines = now
            time.sleep(quiet)
        return lines or []

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def imap(self, user: str) -> imaplib.IMAP4_SSL:
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=self.context(), timeout=10)
        imap.login(user, self.users[user])
        return imap

    def deliver(self, user: str, raw: bytes, mailbox: str = "INBOX") -> None:
        """What the receiving server does: the message lands in the user's mailbox (here by IMAP APPEND)."""
        imap = self.imap(user)
        try:
            status, data = imap.append(f'"{mailbox}"', None, None, raw)
            assert status == "OK", data
        finally:
            imap.logout()

    def messages(self, user: str, mailbox: str = "INBOX") -> int:
        imap = self.imap(user)
        try:
            status, data = imap.select(mailbox)
            return int(data[0])
        finally:
            imap.logout()

    def empty(self, user: str) -> None:
        imap = self.imap(user)
        try:
            for mailbox in ("INBOX", "Junk", '"Smoke tests"'):
                if int(imap.select(mailbox)[1][0]):
                    imap.store("1:*", "+FLAGS", "(\\Deleted)")
                    imap.expunge()
        finally:
            imap.logout()

    def stop(self) -> None:
        """Kills Dovecot's process group: on SIGTERM its master waits a second on purpose, so that a restarted
        Dovecot can bind the ports again (src/master/service-monitor.c, services_monitor_wait_and_kill);
        this Dovecot and its directory are thrown away."""
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def close(self) -> None:
        self.stop()
        self.userinfo.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)
