"""Compares the pinned bounce ranges (components/google_ranges.py) with Google's live records.

    python -m scripts.google_ranges [--nameserver 8.8.8.8]

Resolves `_spf.google.com` and every record it includes, downloads Google's cloud.json (the ranges
customers' resources may use), computes the ranges that may deliver bounces the way the program
does, and prints the difference with the pin. Exit 0: the pin matches; 1: it differs (the output
says which ranges to add or drop, and prints the records to paste into SPF_RECORDS); 2: the live
data could not be read. Needs DNS and HTTPS: run it on a workstation or in CI, not in the tests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import dns.exception
import dns.resolver
import requests

from components import google_ranges


def live_records(resolve: Callable[[str], list[str]], root: str = google_ranges.SPF_ROOT) -> dict[str, str]:
    """The v=spf1 TXT record of `root` and of every record it includes, by name."""
    records, queue = {}, [root]
    while queue:
        name = queue.pop(0)
        if name in records:
            continue
        spf = [t for t in resolve(name) if t.startswith("v=spf1")]
        if len(spf) != 1:
            raise LookupError(f"{name} has {len(spf)} SPF records")
        records[name] = spf[0]
        queue += [t[len("include:") :] for t in spf[0].split() if t.lstrip("+").startswith("include:")]
    return records


def cloud_prefixes(document: dict) -> list[str]:
    """ipv4Prefix/ipv6Prefix of every entry of cloud.json."""
    return [p.get("ipv4Prefix") or p.get("ipv6Prefix") for p in document.get("prefixes", [])]


def compare(records: dict[str, str], cloud: list[str], out=sys.stdout) -> int:
    live = google_ranges.bounce_ranges(records, cloud)
    pinned = google_ranges.DEFAULT_BOUNCE_RANGES
    overlapping = [r for r in google_ranges.spf_ranges(records) if r not in live and ":" not in r]
    for text in overlapping:
        why = google_ranges.CUSTOMER_DRIVABLE.get(text, "overlaps cloud.json (customer resources)")
        print(f"excluded  {text}: {why}", file=out)
    missing, extra = [r for r in live if r not in pinned], [r for r in pinned if r not in live]
    for text in missing:
        print(f"missing   {text}: Google sends mail from it; bounces from it are refused until it is pinned", file=out)
    for text in extra:
        print(f"extra     {text}: pinned, but no longer in Google's record (or now in cloud.json)", file=out)
    if not (missing or extra):
        print(f"OK: the {len(pinned)} pinned ranges are Google's live outbound mail ranges", file=out)
        return 0
    print("\nUpdate SPF_RECORDS in components/google_ranges.py (with today's date in SNAPSHOT) to:", file=out)
    for name, text in records.items():
        print(f"    {name!r}: {text!r},", file=out)
    return 1


def main(argv: list[str] | None = None, resolve=None, fetch=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.google_ranges", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nameserver", action="append", help="DNS server to ask (default: the system's)")
    args = parser.parse_args(argv)
    if resolve is None:
        resolver = dns.resolver.Resolver()
        if args.nameserver:
            resolver.nameservers = args.nameserver

        def resolve(name: str) -> list[str]:
            return [b"".join(r.strings).decode() for r in resolver.resolve(name, "TXT")]

    if fetch is None:

        def fetch(url: str) -> dict:
            response = requests.get(url, timeout=30)
            response.raise_for_status()
            return response.json()

    try:
        records = live_records(resolve)
        cloud = cloud_prefixes(fetch(google_ranges.CLOUD_JSON))
    except (dns.exception.DNSException, requests.RequestException, LookupError, ValueError) as err:
        print(f"cannot read Google's live data: {err}", file=sys.stderr)
        return 2
    return compare(records, cloud)


if __name__ == "__main__":
    sys.exit(main())
