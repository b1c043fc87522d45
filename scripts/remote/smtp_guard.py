#!/usr/bin/python3
"""postal-gateway-guard: blocks an address on port 25 after repeated failed SMTP AUTH attempts.

    postal-gateway-guard --failures 5 --window 600 --ban 3600 --container postal-smtp-1

Postal offers SMTP AUTH to every client, before STARTTLS too, and a client may retry AUTH on one
connection as often as it likes. Postal 3.3.6 logs every failure as "Authentication failure for
<ip>" (app/lib/smtp_server/client.rb: authenticate, auth_cram_md5, rcpt_to), with the client's IPv4
address stripped of `::ffff:` (app/lib/smtp_server/server.rb). Docker writes the smtp container's
output to the journal under its name (os step), so this follows that journal and, when one address
fails `--failures` times within `--window` seconds, adds a runtime firewalld rich rule rejecting it
on 25/tcp for `--ban` seconds (`firewall-cmd --add-rich-rule … --timeout`; firewalld puts a reject
rich rule in the zone's deny chain, before its allowed ports: firewall/core/nftables.py,
_rich_rule_chain_suffix) and ends its open connections
(`ss -K`), which the rule alone would let continue. fail2ban would do the same, but Rocky 9 ships it
only in EPEL, an extra repository. Runs under systemd (postal-gateway-guard.service, Restart=always);
each ban and each failed action is one line on stderr, in the journal. Python 3.9: Rocky 9's.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time

FAILURE = re.compile(r"Authentication failure for (\d{1,3}(?:\.\d{1,3}){3})\b")


def rich_rule(address: str) -> str:
    return f'rule family="ipv4" source address="{address}" port port="25" protocol="tcp" reject'


class Guard:
    def __init__(self, failures: int, window: float, ban: float, run=subprocess.run, clock=time.monotonic):
        self.failures, self.window, self.ban = failures, window, ban
        self.run, self.clock = run, clock
        self.seen: dict[str, collections.deque] = {}
        self.banned: dict[str, float] = {}  # address -> when its ban ends

    def line(self, text: str) -> str | None:
        """Counts a failure in one journal line; returns the address when this line bans it."""
        match = FAILURE.search(text)
        if not match:
            return None
        address, now = match.group(1), self.clock()
        if self.banned.get(address, 0) > now:  # refused, yet still failing: a connection survived
            self.act(address, ["ss", "-K", "dst", address, "sport", "=", ":25"])
            return None
        times = self.seen.setdefault(address, collections.deque())
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        for other in [a for a, t in self.seen.items() if not t or t[-1] <= now - self.window]:
            del self.seen[other]  # forget quiet addresses
        if len(times) < self.failures:
            return None
        self.seen.pop(address, None)
        self.block(address)
        self.banned[address] = now + self.ban
        return address

    def block(self, address: str) -> None:
        say(
            f"{address}: {self.failures} failed SMTP AUTH attempts within {self.window:.0f}s, refused on 25/tcp "
            f"for {self.ban:.0f}s"
        )
        self.act(address, ["firewall-cmd", f"--add-rich-rule={rich_rule(address)}", f"--timeout={int(self.ban)}"])
        self.act(address, ["ss", "-K", "dst", address, "sport", "=", ":25"])

    def act(self, address: str, argv: list[str]) -> bool:
        """Runs one action; a failure is reported (and the next action still tried)."""
        result = self.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            say(f"{address}: {' '.join(argv[:2])} failed ({result.returncode}): {result.stderr.strip()}")
        return result.returncode == 0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postal-gateway-guard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--failures", type=int, required=True)
    parser.add_argument("--window", type=float, required=True, help="seconds")
    parser.add_argument("--ban", type=float, required=True, help="seconds")
    parser.add_argument("--container", required=True, help="the journal's CONTAINER_NAME of Postal's smtp")
    args = parser.parse_args(argv)
    guard = Guard(args.failures, args.window, args.ban)
    command = ["journalctl", "--follow", "--lines=0", "--output=cat", f"CONTAINER_NAME={args.container}"]
    say(f"watching {' '.join(command)}")
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, errors="replace") as journal:
        for text in journal.stdout:
            guard.line(text)
    say(f"journalctl ended ({journal.returncode}): systemd restarts the guard")
    return 1


if __name__ == "__main__":
    sys.exit(main())
