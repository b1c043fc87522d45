"""When a set of source ranges counts as the whole Internet: one definition for the program's
config warnings (components/checks.py) and the policy pack (policies.py). Standard library only,
so the pack can import it from its own directory."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

# A set of ranges is world-open when, merged, it covers at least half of its address family:
# 0.0.0.0/1 + 128.0.0.0/1 is the whole IPv4 Internet in two rules, and no gateway's callers
# need 2^31 addresses.
MOST = {4: 2**31, 6: 2**127}


def world_open(ranges: Iterable) -> list[str]:
    """The ranges that together cover most of the Internet (empty when they do not)."""
    networks: dict[int, list] = {4: [], 6: []}
    open_ranges = []
    for item in ranges:
        text = str(item).strip()
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            if text.endswith("/0"):
                open_ranges.append(text)  # not an address GCP would accept, but it means "everyone"
            continue
        networks[network.version].append((text, network))
    for version, found in networks.items():
        merged = ipaddress.collapse_addresses(n for _, n in found)
        if sum(n.num_addresses for n in merged) >= MOST[version]:
            open_ranges += [text for text, _ in found]
    return open_ranges
