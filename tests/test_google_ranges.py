"""Google's outbound mail ranges (components/google_ranges.py) and their live check (scripts/google_ranges.py)."""

from __future__ import annotations

import io
import ipaddress

import dns.resolver
import pytest
import requests

from components import google_ranges
from scripts import google_ranges as live_check

# Google's customer ranges as cloud.json lists them (a few real entries of its format: "prefixes" of
# {"ipv4Prefix" | "ipv6Prefix", "service": "Google Cloud", "scope"}; www.gstatic.com/ipranges/cloud.json).
CLOUD = {
    "syncToken": "1",
    "creationTime": "2026-12-07T00:00:00",
    "prefixes": [
        {"ipv4Prefix": "34.0.0.0/15", "service": "Google Cloud", "scope": "us-central1"},
        {"ipv4Prefix": "35.190.0.0/17", "service": "Google Cloud", "scope": "us-east1"},
        {"ipv6Prefix": "2600:1900::/35", "service": "Google Cloud", "scope": "global"},
    ],
}


def test_the_default_is_googles_ipv4_mail_ranges_without_the_load_balancer_ranges():
    every = google_ranges.spf_ranges(google_ranges.SPF_RECORDS)
    default = google_ranges.DEFAULT_BOUNCE_RANGES
    assert "74.125.0.0/16" in default and "209.85.128.0/17" in default and "172.253.112.0/20" in default
    # customer-drivable: Cloud Load Balancing proxies and health checks connect from these
    assert set(google_ranges.CUSTOMER_DRIVABLE) <= set(every)
    assert not set(google_ranges.CUSTOMER_DRIVABLE) & set(default)
    assert all(":" not in r for r in default)  # the VM has no IPv6
    assert set(default) == {r for r in every if ":" not in r} - set(google_ranges.CUSTOMER_DRIVABLE)
    for text in default:
        network = ipaddress.ip_network(text)
        assert not any(network.overlaps(ipaddress.ip_network(d)) for d in google_ranges.CUSTOMER_DRIVABLE)


def test_spf_ranges_follow_includes_once_and_keep_order():
    records = {
        "a": "v=spf1 ip4:10.0.0.0/8 include:b include:c ~all",
        "b": "v=spf1 +ip4:192.0.2.0/24 include:a ip6:2001:db8::/32 ~all",
        "c": "v=spf1 ip4:10.0.0.0/8 ~all",
    }
    assert google_ranges.spf_ranges(records, "a") == ["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]


def test_ranges_overlapping_cloud_json_are_excluded():
    records = {"_spf.google.com": "v=spf1 ip4:35.190.247.0/24 ip4:35.190.0.0/24 ip4:74.125.0.0/16 ~all"}
    cloud = live_check.cloud_prefixes(CLOUD)
    assert google_ranges.bounce_ranges(records, cloud) == ("35.190.247.0/24", "74.125.0.0/16")


def resolver_for(records):
    def resolve(name):
        if name not in records:
            raise dns.resolver.NXDOMAIN()
        return ["google-site-verification=x", records[name]]

    return resolve


def run(records, cloud=CLOUD):
    out = io.StringIO()
    code = live_check.compare(live_check.live_records(resolver_for(records)), live_check.cloud_prefixes(cloud), out)
    return code, out.getvalue()


def test_the_live_check_passes_when_googles_records_match_the_pin():
    code, out = run(google_ranges.SPF_RECORDS)
    assert code == 0, out
    assert f"OK: the {len(google_ranges.DEFAULT_BOUNCE_RANGES)} pinned ranges" in out
    assert "excluded  35.191.0.0/16: Cloud Load Balancing proxies" in out


def test_the_live_check_names_missing_and_extra_ranges_and_prints_the_new_records():
    records = dict(google_ranges.SPF_RECORDS)
    records["_spf.google.com"] = "v=spf1 include:_netblocks.google.com include:_netblocks2.google.com ~all"
    records["_netblocks.google.com"] = records["_netblocks.google.com"].replace("~all", "ip4:192.178.0.0/15 ~all")
    del records["_netblocks3.google.com"]
    code, out = run(records)
    assert code == 1
    assert "missing   192.178.0.0/15: Google sends mail from it" in out
    assert "extra     172.217.0.0/19: pinned, but no longer in Google's record" in out
    assert "'_netblocks3.google.com'" not in out.split("Update SPF_RECORDS")[1]
    assert "ip4:192.178.0.0/15" in out.split("Update SPF_RECORDS")[1]


def test_a_pinned_range_that_moved_into_cloud_json_is_reported():
    cloud = {"prefixes": [*CLOUD["prefixes"], {"ipv4Prefix": "74.125.0.0/16"}]}
    code, out = run(google_ranges.SPF_RECORDS, cloud)
    assert code == 1
    assert "excluded  74.125.0.0/16: overlaps cloud.json" in out and "extra     74.125.0.0/16" in out


@pytest.mark.parametrize(
    "resolve,fetch",
    [
        (resolver_for({}), lambda url: CLOUD),  # NXDOMAIN
        (resolver_for(google_ranges.SPF_RECORDS), lambda url: (_ for _ in ()).throw(requests.ConnectionError("x"))),
        (lambda name: ["v=spf1 ~all", "v=spf1 -all"], lambda url: CLOUD),  # two SPF records
    ],
)
def test_the_live_check_says_when_it_cannot_read_googles_data(resolve, fetch, capsys):
    assert live_check.main([], resolve=resolve, fetch=fetch) == 2
    assert "cannot read Google's live data" in capsys.readouterr().err
