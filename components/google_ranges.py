"""Who delivers the bounces of mail relayed through Google: Google's outbound mail ranges, pinned.

When the recipient's server refuses a message the Workspace relay had accepted, Google's own mail
servers send the delivery status notification to Postal's envelope sender (`<token>@psrp.<domain>`),
whose MX is the gateway's port 25. Google publishes the addresses its mail servers use in its SPF
record `_spf.google.com` and the records it includes (support.google.com/a/answer/60764, "Gather IP
address ranges"). Those ranges also carry other Google services; what matters here is whether a
Google Cloud customer can make traffic come from them, because such a customer could then reach
Postal's port 25 (and its SMTP AUTH) through our firewall.

Decision: pinned here, not resolved at deploy time. A `pulumi preview` then shows exactly the
reviewed list, runs without DNS, and a change of Google's record reaches the firewall only through
a reviewed commit. `python -m scripts.google_ranges` compares the pin with the live records and
Google's cloud.json when run for real (docs/operations.md, "Bounces").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

SPF_ROOT = "_spf.google.com"
# The TXT records as published, from the last full public captures of all four: gist.github.com/
# kljensen/4ac38b1f0b28dada82bd87d05745be18 (2020-04, every range of the three includes) and
# gist.github.com/iHTCboy/68326d5c1526691b4276487dc54a6d94 (2019-12, the `_netblocks` text). Since
# 2025-11 `_spf.google.com` no longer includes `_netblocks3` (spamresource.com/2025/11/peeking-into-
# googles-spf-record.html); its ranges stay pinned until the live check shows where they went: a
# Google-only range too many costs nothing, one too few refuses bounces.
SNAPSHOT = "2020-04 captures; _netblocks3 dropped from the live record 2025-11"
SPF_RECORDS = {
    "_spf.google.com": "v=spf1 include:_netblocks.google.com include:_netblocks2.google.com "
    "include:_netblocks3.google.com ~all",
    "_netblocks.google.com": "v=spf1 ip4:35.190.247.0/24 ip4:64.233.160.0/19 ip4:66.102.0.0/20 ip4:66.249.80.0/20 "
    "ip4:72.14.192.0/18 ip4:74.125.0.0/16 ip4:108.177.8.0/21 ip4:173.194.0.0/16 ip4:209.85.128.0/17 "
    "ip4:216.58.192.0/19 ip4:216.239.32.0/19 ~all",
    "_netblocks2.google.com": "v=spf1 ip6:2001:4860:4000::/36 ip6:2404:6800:4000::/36 ip6:2607:f8b0:4000::/36 "
    "ip6:2800:3f0:4000::/36 ip6:2a00:1450:4000::/36 ip6:2c0f:fb50:4000::/36 ~all",
    "_netblocks3.google.com": "v=spf1 ip4:172.217.0.0/19 ip4:172.217.32.0/20 ip4:172.217.128.0/19 "
    "ip4:172.217.160.0/20 ip4:172.217.192.0/19 ip4:172.253.56.0/21 ip4:172.253.112.0/20 ip4:108.177.96.0/19 "
    "ip4:35.191.0.0/16 ip4:130.211.0.0/22 ~all",
}
# Ranges of the SPF record that Google Cloud customers can make connections come from, with why.
LB_DOC = "https://cloud.google.com/load-balancing/docs/health-check-concepts (probe IP ranges)"
CUSTOMER_DRIVABLE = {
    "35.191.0.0/16": f"Cloud Load Balancing proxies and health-check probes of any customer's load balancer ({LB_DOC})",
    "130.211.0.0/22": f"Cloud Load Balancing proxies and health-check probes of any customer's load balancer ({LB_DOC})",
}
# Google publishes every range a customer's resources (VM external IPs, Cloud NAT, serverless egress)
# can use in cloud.json; goog.json minus cloud.json is what only Google's own services use
# (cloud.google.com/appengine/docs/standard/outbound-ip-addresses). The live check excludes any SPF
# range that overlaps cloud.json.
CLOUD_JSON = "https://www.gstatic.com/ipranges/cloud.json"


def spf_ranges(records: Mapping[str, str], root: str = SPF_ROOT) -> list[str]:
    """Every ip4:/ip6: range of `root` and the records it includes, in order, without repeats."""
    found, seen, queue = [], set(), [root]
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        for term in records.get(name, "").split()[1:]:
            term = term.lstrip("+")
            if term.startswith(("ip4:", "ip6:")):
                found.append(str(ipaddress.ip_network(term[4:], strict=False)))
            elif term.startswith("include:"):
                queue.append(term[len("include:") :])
    return list(dict.fromkeys(found))


def bounce_ranges(records: Mapping[str, str], cloud: Iterable[str] = ()) -> tuple[str, ...]:
    """The IPv4 ranges that may deliver bounces: Google's SPF ranges minus the customer-drivable ones
    (CUSTOMER_DRIVABLE, and any range overlapping `cloud`, the prefixes of cloud.json). IPv6 ranges
    are left out: the VM has no IPv6 address (components/network.py, IPV4_ONLY)."""
    clouds = [ipaddress.ip_network(c) for c in cloud]
    kept = []
    for text in spf_ranges(records):
        network = ipaddress.ip_network(text)
        if network.version != 4 or text in CUSTOMER_DRIVABLE:
            continue
        if any(network.version == c.version and network.overlaps(c) for c in clouds):
            continue
        kept.append(text)
    return tuple(kept)


DEFAULT_BOUNCE_RANGES = bounce_ranges(SPF_RECORDS)
