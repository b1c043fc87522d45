"""The real program under mocks: resources, properties, parenting, zones, outputs and secrecy."""

import ipaddress

import program
import pytest

from components import dns, google_ranges

NS = "postal-gateway:"
CONTRACT = {
    "publicIp",
    "hostname",
    "webUrl",
    "apiUrl",
    "smtpHost",
    "smtpPort",
    "sendingDomains",
    "dnsRecords",
    "apiKey",
    "smtpUsername",
    "smtpPassword",
    "adminEmail",
    "adminPassword",
    "sshUser",
    "sshPrivateKey",
    "instanceName",
    "relayStatus",
    "relayStatusByDomain",
}
SECRET_OUTPUTS = {"apiKey", "smtpPassword", "adminPassword", "sshPrivateKey"}
COMPONENT_PREFIX = "postal-gateway:index:"


def records(run):
    return [r.inputs for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")]


def test_one_protected_static_ip_used_by_one_rocky_vm(run):
    (address,) = run.of_type("gcp:compute/address:Address")
    assert address.protect and address.inputs["addressType"] == "EXTERNAL"
    (vm,) = run.of_type("gcp:compute/instance:Instance")
    nic = vm.inputs["networkInterfaces"][0]
    assert nic["accessConfigs"][0]["natIp"] == program.FAKE_IP
    assert nic["stackType"] == "IPV4_ONLY" and "ipv6AccessConfigs" not in nic
    boot = next(d for d in run.of_type("gcp:compute/disk:Disk") if vm.inputs["bootDisk"]["source"].endswith(d.name))
    assert boot.inputs["image"] == "projects/rocky-linux-cloud/global/images/family/rocky-linux-9"
    assert boot.ignore_changes == ["image"] and boot.inputs["size"] == 20 and not boot.protect
    assert vm.inputs["bootDisk"]["autoDelete"] is False
    assert vm.inputs["machineType"] == "e2-medium" and vm.inputs["zone"] == "europe-west1-b"
    assert vm.inputs["shieldedInstanceConfig"] == {
        "enableSecureBoot": True,
        "enableVtpm": True,
        "enableIntegrityMonitoring": True,
    }
    meta = vm.inputs["metadata"]
    assert meta["block-project-ssh-keys"] == "true"
    assert meta["ssh-keys"].startswith("postal-ops:ssh-ed25519 ") and meta["ssh-keys"].endswith(" postal-ops")
    assert vm.inputs["labels"]["app"] == "postal-gateway"


def test_protected_data_disk_with_daily_snapshots(run):
    (disk,) = [d for d in run.of_type("gcp:compute/disk:Disk") if d.protect]
    assert disk.inputs["size"] == 50 and "image" not in disk.inputs
    (vm,) = run.of_type("gcp:compute/instance:Instance")
    (attached,) = vm.inputs["attachedDisks"]
    assert attached["deviceName"] == "postal-data" and attached["source"].endswith(disk.name)
    (policy,) = run.of_type("gcp:compute/resourcePolicy:ResourcePolicy")
    schedule = policy.inputs["snapshotSchedulePolicy"]
    assert schedule["schedule"]["dailySchedule"] == {"daysInCycle": 1, "startTime": "04:00"}
    assert schedule["retentionPolicy"]["maxRetentionDays"] == 14
    (attachment,) = run.of_type("gcp:compute/diskResourcePolicyAttachment:DiskResourcePolicyAttachment")
    assert attachment.inputs["disk"] == disk.name and attachment.inputs["name"] == policy.name
    assert attachment.delete_before_replace  # a disk takes one schedule: a new policy must not collide
    assert vm.delete_before_replace  # a replacement VM needs the IP and the disk the old one holds


def keeps(run):
    """(protected, retained) resource names of a run."""
    return ({r.name for r in run.resources if r.protect}, {r.name for r in run.resources if r.retain_on_delete})


def test_restore_recreates_the_data_disk_and_never_deletes_the_live_one(run):
    restored = program.run({NS + "dataDiskSnapshot": "postal-data-20261120"})
    (disk,) = [d for d in restored.of_type("gcp:compute/disk:Disk") if d.protect]
    assert disk.inputs["snapshot"] == "postal-data-20261120"  # a new input: forces a new disk (once unprotected)
    # The old disk is only dropped from the state; the new one gets a fresh auto-name (the engine
    # re-runs Check without the old inputs on a replacement), so the two never collide, and it is
    # created before the old one is let go (no delete_before_replace), while the VM swaps the attachment.
    assert disk.retain_on_delete and "name" not in disk.inputs and not disk.delete_before_replace
    (vm,) = restored.of_type("gcp:compute/instance:Instance")
    assert vm.inputs["attachedDisks"][0]["source"].endswith(disk.name)
    # a restore protects and retains exactly what a normal run does: the static IP, the data disk and
    # the off-site backup bucket
    assert (
        keeps(restored)
        == keeps(run)
        == (
            {"postal-ip", "postal-data", "postal-backups"},
            {"postal-data", "postal-backups"},
        )
    )


def firewall_sources(run, port):
    """Every range that may reach `port`, over all the rules that open it."""
    rules = run.of_type("gcp:compute/firewall:Firewall")
    return sorted({s for r in rules if port in r.inputs["allows"][0]["ports"] for s in r.inputs["sourceRanges"]})


def test_ssh_is_open_only_to_iap_by_default(run):
    """22 from IAP's TCP forwarding range alone (no sshSourceRanges): pulumi up and people tunnel through IAP."""
    assert firewall_sources(run, "22") == ["35.235.240.0/20"]
    assert [r.name for r in run.of_type("gcp:compute/firewall:Firewall") if "22" in r.inputs["allows"][0]["ports"]] == [
        "postal-allow-ssh"
    ]


def test_ssh_source_ranges_add_direct_ssh_besides_iap():
    run = program.shared_run({NS + "sshSourceRanges": '["203.0.113.7/32"]'})
    assert run.error is None, run.error
    assert firewall_sources(run, "22") == ["203.0.113.7/32", "35.235.240.0/20"]
    assert run.named("postal-allow-ssh-direct").inputs["sourceRanges"] == ["203.0.113.7/32"]
    assert run.named("postal-allow-https").inputs["sourceRanges"] == ["10.0.0.0/8", "198.51.100.0/24", "203.0.113.7/32"]


def test_firewall_rules_exactly_as_configured(run):
    firewalls = run.of_type("gcp:compute/firewall:Firewall")
    rules = {tuple(r.inputs["allows"][0]["ports"]): r.inputs for r in firewalls if r.name != "postal-allow-bounce"}
    assert set(rules) == {("22",), ("25",), ("80",), ("443",)}
    # sorted: the uptime-check rule waits for Google's checker list, so registration order varies
    assert sorted(r.name for r in firewalls if r.inputs["allows"][0]["ports"] == ["443"]) == [
        "postal-allow-https",
        "postal-allow-uptime-checks",  # Google's checkers: Caddy lets them GET /login only
    ]
    assert rules[("22",)]["sourceRanges"] == ["35.235.240.0/20"]
    assert rules[("25",)]["sourceRanges"] == ["10.0.0.0/8", "198.51.100.0/24"]
    # port 25 also admits bounces, by default from Google's outbound mail servers only
    bounce = run.named("postal-allow-bounce").inputs
    assert bounce["allows"] == [{"protocol": "tcp", "ports": ["25"]}]
    assert bounce["sourceRanges"] == list(google_ranges.DEFAULT_BOUNCE_RANGES)
    assert rules[("80",)]["sourceRanges"] == ["0.0.0.0/0"]  # ACME HTTP-01 from anywhere; Caddy redirects the rest
    assert run.named("postal-allow-https").inputs["sourceRanges"] == ["10.0.0.0/8", "198.51.100.0/24"]  # never IAP's
    (vm,) = run.of_type("gcp:compute/instance:Instance")
    assert all(r.inputs["targetTags"] == vm.inputs["tags"] for r in firewalls)
    assert all(r.inputs["direction"] == "INGRESS" and r.inputs["allows"][0]["protocol"] == "tcp" for r in firewalls)


def test_port_25_admits_no_customer_drivable_google_range_by_default(run):
    """Cloud Load Balancing proxies and health checks (35.191.0.0/16, 130.211.0.0/22) connect wherever a
    customer points them; the rules that carry mail (SMTP intake, bounces) never admit them."""
    drivable = [ipaddress.ip_network(r) for r in google_ranges.CUSTOMER_DRIVABLE]
    for name in ("postal-allow-smtp", "postal-allow-bounce"):
        rule = run.named(name).inputs
        assert rule["allows"][0]["ports"] == ["25"]
        sources = [ipaddress.ip_network(r) for r in rule["sourceRanges"]]
        assert not [(s, d) for s in sources for d in drivable if s.overlaps(d)], name


def test_port_80_is_open_only_for_lets_encrypt():
    """Only tls=letsencrypt needs port 80 (the HTTP-01 challenge); the other modes leave it closed."""
    run = program.shared_run({NS + "tls": "internal"})
    assert run.error is None, run.error
    assert firewall_sources(run, "80") == []
    assert "postal-allow-http" not in {r.name for r in run.of_type("gcp:compute/firewall:Firewall")}


def test_service_account_has_only_log_and_metric_roles(run):
    roles = sorted(r.inputs["role"] for r in run.of_type("gcp:projects/iAMMember:IAMMember"))
    assert roles == ["roles/logging.logWriter", "roles/monitoring.metricWriter"]
    (vm,) = run.of_type("gcp:compute/instance:Instance")
    (sa,) = run.of_type("gcp:serviceaccount/account:Account")
    assert vm.inputs["serviceAccount"]["email"].startswith(sa.inputs["accountId"] + "@")


def test_dns_records_in_the_right_zones(run):
    by_name = {}
    for record in records(run):
        by_name.setdefault((record["name"], record["type"]), []).append(record)
        assert record["proxied"] is False and record["ttl"] == 1
        assert record["comment"] == "managed by postal-gateway (prod)"
    zone = {name: rs[0]["zoneId"] for (name, _), rs in by_name.items()}
    assert by_name[("postal.rdo-dev.com", "A")][0]["content"] == program.FAKE_IP
    assert by_name[("spf.postal.rdo-dev.com", "TXT")][0]["content"] == "v=spf1 include:_spf.google.com ~all"
    assert by_name[("rp.postal.rdo-dev.com", "MX")][0]["content"] == "postal.rdo-dev.com"
    for domain in ("rdo-dev.com", "rdo-studio.net"):
        assert by_name[(domain, "TXT")][0]["content"] == "v=spf1 include:spf.postal.rdo-dev.com ~all"
        assert by_name[(f"psrp.{domain}", "CNAME")][0]["content"] == "rp.postal.rdo-dev.com"
        (dkim,) = [
            r
            for (n, t), rs in by_name.items()
            for r in rs
            if n.startswith("postal-") and n.endswith(f"._domainkey.{domain}")
        ]
        dkim_text = dns.txt_text(dkim["content"])  # published as quoted 255-byte strings (tests/test_dns.py)
        assert dkim_text.startswith("v=DKIM1; t=s; h=sha256; p=") and dkim_text.endswith(";")
        assert len(dkim["name"].split(".")[0]) == len("postal-ABCDEF")
        assert zone[domain] == zone[f"psrp.{domain}"] == dkim["zoneId"] == f"zone-{domain}"
    assert zone["postal.rdo-dev.com"] == zone["spf.postal.rdo-dev.com"] == "zone-rdo-dev.com"
    assert not any(n.startswith("_dmarc.") for n, _ in by_name)


def test_components_parent_everything(run):
    components = {r.urn: r for r in run.resources if r.type.startswith(COMPONENT_PREFIX)}
    assert {r.type for r in components.values()} >= {
        COMPONENT_PREFIX + t for t in ("MailNetwork", "MailHost", "MailSecrets", "MailDns", "PostalBootstrap")
    }
    for resource in run.resources:
        if resource.custom:
            assert resource.parent in components, resource.name


def test_every_output_of_the_contract_and_secrets_stay_secret(run):
    assert set(run.outputs) >= CONTRACT
    assert {name for name, (_, secret) in run.outputs.items() if secret} == SECRET_OUTPUTS
    assert run.outputs["publicIp"][0] == program.FAKE_IP
    assert run.outputs["apiUrl"][0] == "https://postal.rdo-dev.com/api/v1/send/message"
    assert run.outputs["smtpPort"][0] == 25
    published = run.outputs["dnsRecords"][0]
    assert {(r["name"], r["type"]) for r in published} == {(r["name"], r["type"]) for r in records(run)}


def test_generated_secrets_never_appear_in_plain_inputs_or_outputs(run):
    generated = [v for name, (v, secret) in run.outputs.items() if secret]
    generated += [program._fake_key(r.name)["privateKeyPem"] for r in run.of_type("tls:index/privateKey:PrivateKey")]
    for resource in run.resources:
        for key, value in resource.inputs.items():
            if key in resource.secret_inputs:
                continue
            text = repr(value)
            assert not any(g.strip() in text for g in generated), (resource.name, key)
    for name, (value, secret) in run.outputs.items():
        if not secret:
            assert not any(g.strip() in repr(value) for g in generated), name


def test_foreign_spf_record_stops_before_any_resource():
    run = program.run(
        txt_records={"rdo-dev.com": [{"content": "v=spf1 include:_spf.google.com ~all", "comment": None}]}
    )
    assert isinstance(run.error, dns.DnsConflictError)
    assert "rdo-dev.com already has 'v=spf1 include:_spf.google.com ~all'" in str(run.error)
    assert "manageSpf false" in str(run.error)
    assert run.resources == []


def test_own_spf_record_does_not_trip_the_guard():
    ours = {"content": "v=spf1 include:spf.postal.rdo-dev.com ~all", "comment": "managed by postal-gateway (prod)"}
    other = {"content": "google-site-verification=abc", "comment": None}
    run = program.run(txt_records={"rdo-dev.com": [ours, other]})
    assert run.error is None


def test_manage_spf_false_skips_the_apex_spf_and_its_guard():
    foreign = {"rdo-dev.com": [{"content": "v=spf1 -all", "comment": None}]}
    run = program.run({NS + "manageSpf": "false"}, txt_records=foreign)
    assert run.error is None
    names = {(r["name"], r["type"]) for r in records(run)}
    assert ("rdo-dev.com", "TXT") not in names and ("spf.postal.rdo-dev.com", "TXT") in names


def test_dmarc_is_published_when_configured_and_guarded():
    run = program.run({NS + "dmarcPolicy": "quarantine"})
    dmarc = {r["name"]: r["content"] for r in records(run) if r["name"].startswith("_dmarc.")}
    assert dmarc == {"_dmarc.rdo-dev.com": "v=DMARC1; p=quarantine", "_dmarc.rdo-studio.net": "v=DMARC1; p=quarantine"}
    clash = program.run(
        {NS + "dmarcPolicy": "reject"},
        txt_records={"_dmarc.rdo-studio.net": [{"content": "v=DMARC1; p=none", "comment": ""}]},
    )
    assert isinstance(clash.error, dns.DnsConflictError) and clash.resources == []


def test_unknown_cloudflare_zone_is_a_clear_error():
    run = program.run(missing_zones=("rdo-studio.net",))
    assert isinstance(run.error, dns.DnsConflictError)
    message = str(run.error)
    assert "Cloudflare zone 'rdo-studio.net' (the zone of sendingDomains[1] 'rdo-studio.net'" in message
    assert "Zone:Read + DNS:Read for pulumi preview and Zone:Read + DNS:Edit for pulumi up" in message
    assert "remove that domain from sendingDomains" in message and run.resources == []
    host_zone = program.run(missing_zones=("rdo-dev.com",))
    assert "Cloudflare zone 'rdo-dev.com' (cloudflareZone, the zone of hostname 'postal.rdo-dev.com')" in str(
        host_zone.error
    )
    assert "set postal-gateway:cloudflareZone" in str(host_zone.error)


def test_sizes_and_labels_flow_to_resources():
    run = program.run(
        {
            NS + "machineType": "n2-standard-2",
            NS + "dataDiskSizeGb": "200",
            NS + "snapshotRetentionDays": "30",
            NS + "labels": '{"team": "platform"}',
        }
    )
    (vm,) = run.of_type("gcp:compute/instance:Instance")
    (disk,) = [d for d in run.of_type("gcp:compute/disk:Disk") if d.protect]
    (policy,) = run.of_type("gcp:compute/resourcePolicy:ResourcePolicy")
    assert vm.inputs["machineType"] == "n2-standard-2" and vm.inputs["labels"]["team"] == "platform"
    assert disk.inputs["size"] == 200 and disk.inputs["labels"]["team"] == "platform"
    assert policy.inputs["snapshotSchedulePolicy"]["retentionPolicy"]["maxRetentionDays"] == 30


FOREIGN = None  # no comment: a record someone made by hand
COLLISIONS = [
    # (existing record, words its error line must contain)
    ({"name": "postal.rdo-dev.com", "type": "A", "content": "192.0.2.80"}, "choose another postal-gateway:hostname"),
    ({"name": "postal.rdo-dev.com", "type": "AAAA", "content": "2001:db8::80"}, "another address"),
    ({"name": "Postal.RDO-dev.com", "type": "CNAME", "content": "old.example.net"}, "a CNAME excludes"),
    ({"name": "spf.postal.rdo-dev.com", "type": "TXT", "content": "v=spf1 -all"}, "left by an earlier Postal"),
    ({"name": "rp.postal.rdo-dev.com", "type": "MX", "content": "mx.example.net"}, "left by an earlier Postal"),
    (
        {"name": "postal._domainkey.rp.postal.rdo-dev.com", "type": "TXT", "content": "v=DKIM1; p=MIIB"},
        "left by an earlier Postal",
    ),
    (
        {"name": "psrp.rdo-studio.net", "type": "CNAME", "content": "rp.old-postal.rdo-studio.net"},
        "return-path CNAME needs the name",
    ),
    ({"name": "psrp.rdo-dev.com", "type": "TXT", "content": "hello"}, "return-path CNAME needs the name"),
    ({"name": "rdo-dev.com", "type": "TXT", "content": '"v=spf1 include:_spf.google.com ~all"'}, "manageSpf false"),
    ({"name": "rdo-dev.com", "type": "CNAME", "content": "elsewhere.example.net"}, "a CNAME excludes"),
    (
        {
            "name": "postal.rdo-dev.com",
            "type": "A",
            "content": "192.0.2.80",
            "comment": "managed by postal-gateway (staging)",
        },
        "choose another postal-gateway:hostname",
    ),  # another stack's
]


@pytest.mark.parametrize("record,fix", COLLISIONS, ids=[f"{c[0]['type']}@{c[0]['name']}" for c in COLLISIONS])
def test_a_foreign_record_at_a_name_we_publish_stops_the_run(record, fix):
    run = program.run(dns_records=[{"comment": FOREIGN, **record}])
    assert isinstance(run.error, dns.DnsConflictError) and run.resources == []
    header, *lines = str(run.error).splitlines()
    assert "managed by postal-gateway (prod)" in header
    (line,) = lines
    content = dns.txt_text(record["content"])
    assert line.startswith(f"  - {record['name'].lower()} already has {content!r} ({record['type']}). Fix: ")
    assert fix in line


@pytest.mark.parametrize(
    "record",
    [
        {"name": "postal.rdo-dev.com", "type": "MX", "content": "mx.example.net"},  # no clash with an A record
        {"name": "postal.rdo-dev.com", "type": "TXT", "content": "google-site-verification=abc"},
        {"name": "rdo-dev.com", "type": "MX", "content": "aspmx.l.google.com"},
        {"name": "_dmarc.rdo-dev.com", "type": "TXT", "content": "v=DMARC1; p=none"},  # dmarcPolicy unset
        {
            "name": "psrp.rdo-dev.com",
            "type": "CNAME",
            "content": "rp.postal.rdo-dev.com",
            "comment": "managed by postal-gateway (prod)",
        },  # ours, from the last run
        {
            "name": "rp.postal.rdo-dev.com",
            "type": "TXT",
            "content": "v=spf1 include:spf.postal.rdo-dev.com ~all",
            "comment": "managed by postal-gateway (prod)",
        },
        {"name": "psrp.rdo-dev.com", "type": "A", "content": "192.0.2.1", "zone": "elsewhere"},
    ],
    ids=lambda r: f"{r['type']}@{r['name']}",
)
def test_records_that_do_not_collide_pass_the_guard(record):
    zone = record.pop("zone", None)
    if zone:  # the same name in a zone the stack does not use: Cloudflare lists it in that zone only
        record = {**record, "name": record["name"].replace("rdo-dev.com", "rdo-dev.org")}
    zone_ids, error, invokes = program.lookup(dns_records=[{"comment": FOREIGN, **record}])
    assert error is None and zone_ids == {z: f"zone-{z}" for z in ("rdo-dev.com", "rdo-studio.net")}


def test_the_guard_reads_every_published_name_in_its_zone(run):
    queries = {
        (a["zoneId"], a["name"]["exact"]): a
        for t, a in run.invokes
        if t == "cloudflare:index/getDnsRecords:getDnsRecords"
    }
    assert all("type" not in a for a in queries.values())  # every type at the name
    names = {(r["zoneId"], r["name"]) for r in records(run) if not r["name"].startswith("postal-")}  # DKIM: random
    names.add(("zone-rdo-dev.com", "postal._domainkey.rp.postal.rdo-dev.com"))
    assert set(queries) == names


def test_dmarc_cname_collides_when_the_stack_publishes_dmarc():
    cname = {"name": "_dmarc.rdo-studio.net", "type": "CNAME", "content": "dmarc.vendor.example", "comment": None}
    assert program.lookup(dns_records=[cname])[1] is None
    _, error, _ = program.lookup({NS + "dmarcPolicy": "reject"}, dns_records=[cname])
    assert isinstance(error, dns.DnsConflictError) and "_dmarc.rdo-studio.net already has" in str(error)
    assert "a CNAME excludes" in str(error)
