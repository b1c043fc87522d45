"""Config contract: defaults, normalisation, and every bad value stopping the run before any resource."""

import json

import pytest
import yaml

import program
from components import config

CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2VydA==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
NS = "postal-gateway:"

BAD = [
    # (key, value or None to remove, text the message must contain)
    ("hostname", None, "is required"),
    ("hostname", "postal", "not a fully qualified domain name"),
    ("hostname", "postal..rdo-dev.com", "not a fully qualified domain name"),
    ("hostname", "-postal.rdo-dev.com", "not a fully qualified domain name"),
    ("hostname", "postal.rdo-dev.123", "top-level label"),
    ("dataDiskSnapshot", "Daily_Snapshot", "not a snapshot name"),
    ("dataDiskSnapshot", "projects/x/global/snapshots/s1", "not a snapshot name"),
    ("sendingDomains", None, "is required"),
    ("sendingDomains", "[]", "empty"),
    ("sendingDomains", '["rdo-dev.com", "rdo-dev.com"]', "listed twice"),
    ("sendingDomains", '["not a domain"]', "not a fully qualified domain name"),
    ("sendingDomains", "rdo-dev.com", "not a list"),
    ("cloudflareZone", "example.org", "does not contain hostname"),
    ("adminEmail", None, "is required"),
    ("adminEmail", "ops.rdo-dev.com", "not an e-mail address"),
    ("adminEmail", "ops@localhost", "not a fully qualified domain name"),
    ("sshSourceRanges", None, "is required"),
    ("sshSourceRanges", '["10.0.0.1/8"]', "has host bits set"),
    ("sshSourceRanges", '["300.1.1.1/32"]', "does not appear to be an IPv4 or IPv6 network"),
    ("sshSourceRanges", '["2001:db8::/32"]', "IPv6"),
    ("smtpSourceRanges", "[]", "empty"),
    ("webSourceRanges", '["everyone"]', "does not appear to be"),
    ("tls", "acme", "not one of letsencrypt, internal, custom"),
    ("tls", "custom", "is required", "tlsCertificate"),
    ("tlsCertificate", CERT, "only used with tls=custom"),
    ("machineType", "e2-small", "4 GB"),
    ("machineType", "e2-micro", "4 GB"),
    ("machineType", "f1-micro", "4 GB"),
    ("machineType", "g1-small", "4 GB"),
    ("machineType", "custom-2-2048", "4 GB"),
    ("machineType", "big machine", "not a Compute Engine machine type"),
    ("bootDiskSizeGb", "10", "outside 20..2000"),
    ("dataDiskSizeGb", "0", "outside 10..65536"),
    ("dataDiskSizeGb", "fifty", "not a int"),
    ("snapshotRetentionDays", "-1", "outside 1..3650"),
    ("postalVersion", "latest", "not X.Y.Z"),
    ("postalVersion", "3.3.0", "3.3.1"),
    ("relayHost", "142.250.1.1", "IP address"),
    ("relayPort", "70000", "outside 1..65535"),
    ("relayPort", "587.5", "not a int"),
    ("relayTls", "STARTTLS ", None),  # normalised: accepted (see test_relay_tls_is_case_insensitive)
    ("relayTls", "ssl", "starttls | tls | none"),
    ("selinux", "disabled", "enforcing | permissive"),
    ("dmarcPolicy", "strict", "none | quarantine | reject"),
    ("manageSpf", "yes", "true or false"),
    ("labels", '{"Team": "x"}', "GCP's rules"),
    ("labels", '["team"]', "not a dict"),
    ("sshSourceRange", '["10.0.0.0/8"]', "did you mean sshSourceRanges?"),
    ("gcp:project", None, "is required"),
    ("gcp:zone", "us-east1-b", "is not a zone of region"),
]
BAD_CASES = [case if len(case) == 4 else (*case, case[0]) for case in BAD if case[2] is not None]


def key_of(name: str) -> str:
    return name if ":" in name else NS + name


@pytest.mark.parametrize("key,value,expected,reported", BAD_CASES, ids=[f"{c[0]}={c[1]}" for c in BAD_CASES])
def test_bad_value_stops_before_any_resource(key, value, expected, reported):
    run = program.run({key_of(key): value})
    assert isinstance(run.error, config.ConfigError), run.error
    message = str(run.error)
    line = next((l for l in message.splitlines() if l.strip().startswith(f"- {key_of(reported)}:")), None)
    assert line is not None, message
    assert expected in line and "Fix:" in line
    assert run.resources == [] and run.invokes == []


def test_at_least_25_bad_values_are_covered():
    assert len(BAD_CASES) >= 25


def test_all_problems_reported_together():
    run = program.run({NS + "tls": "acme", NS + "relayPort": "0", NS + "adminEmail": None})
    lines = [l for l in str(run.error).splitlines() if l.strip().startswith("- ")]
    assert sorted(l.split(":")[1] for l in lines) == ["adminEmail", "relayPort", "tls"]


def test_config_error_is_a_run_error_without_traceback():
    # pulumi.RunError makes the language host print the message only.
    assert issubclass(config.ConfigError, __import__("pulumi").RunError)


def test_custom_tls_pair_must_be_secret():
    run = program.run({NS + "tls": "custom", NS + "tlsCertificate": CERT, NS + "tlsPrivateKey": KEY},
                      secret_keys=(NS + "tlsPrivateKey",))
    assert "postal-gateway:tlsCertificate: is stored in plain text" in str(run.error)
    assert "tlsPrivateKey: is stored" not in str(run.error)


def test_custom_tls_rejects_swapped_pem():
    run = program.run({NS + "tls": "custom", NS + "tlsCertificate": KEY, NS + "tlsPrivateKey": CERT},
                      secret_keys=(NS + "tlsCertificate", NS + "tlsPrivateKey"))
    assert "tlsCertificate: " in str(run.error) and "no PEM CERTIFICATE block" in str(run.error)
    assert "no PEM PRIVATE KEY block" in str(run.error)


def load(overrides=None, secret_keys=()):
    import pulumi
    pulumi.runtime.set_mocks(program.Mocks(), project=program.PROJECT, stack=program.STACK)
    merged = {**program.BASE_CONFIG, **(overrides or {})}
    pulumi.runtime.set_all_config({k: v for k, v in merged.items() if v is not None}, list(secret_keys))
    return config.load()


def test_defaults_match_pulumi_yaml():
    declared = yaml.safe_load(open(program.ROOT / "Pulumi.yaml"))["config"]
    for key, default in config.DEFAULTS.items():
        if key in declared:
            assert declared[key].get("default") == default, key
    assert {k for k, v in declared.items() if "default" in v} <= set(config.DEFAULTS)
    assert set(declared) <= set(config.KEYS)


@pytest.mark.parametrize("project,stack", [("Pulumi.yaml", "Pulumi.prod.yaml"),
                                           ("examples/consumer/Pulumi.yaml", None)])
def test_the_cli_would_find_every_required_key(project, stack):
    """Pulumi refuses to run a stack that lacks a declared key without a default."""
    declared = yaml.safe_load(open(program.ROOT / project))["config"]
    required = {f"{yaml.safe_load(open(program.ROOT / project))['name']}:{k}"
                for k, v in declared.items() if "default" not in v}
    provided = set(yaml.safe_load(open(program.ROOT / stack))["config"]) if stack else set()
    assert required <= provided


def test_defaults_and_normalisation():
    cfg = load({NS + "hostname": "Postal.RDO-dev.com.", NS + "sshSourceRanges": '["203.0.113.7"]',
                NS + "relayTls": "STARTTLS "})
    assert cfg.hostname == "postal.rdo-dev.com"
    assert cfg.cloudflare_zone == "rdo-dev.com"
    assert cfg.ssh_source_ranges == ("203.0.113.7/32",)
    assert cfg.web_source_ranges == ("10.0.0.0/8", "198.51.100.0/24", "203.0.113.7/32")  # SMTP + SSH ranges
    assert (cfg.tls, cfg.machine_type, cfg.postal_version, cfg.selinux) == (
        "letsencrypt", "e2-medium", "3.3.6", "enforcing")
    assert (cfg.boot_disk_size_gb, cfg.data_disk_size_gb, cfg.snapshot_retention_days) == (20, 50, 14)
    assert cfg.relay_url == "smtp://smtp-relay.gmail.com:587?ssl_mode=STARTLS"
    assert cfg.dmarc_policy is None and cfg.manage_spf is True
    assert cfg.zone_for("rdo-studio.net") == "rdo-studio.net"
    assert cfg.zone_for("mail.rdo-dev.com") == "rdo-dev.com"


@pytest.mark.parametrize("mode,expected", [("starttls", "STARTLS"), ("tls", "TLS"), ("none", "None")])
def test_relay_tls_renders_postals_spelling(mode, expected):
    assert load({NS + "relayTls": mode}).relay_url.endswith(f"?ssl_mode={expected}")


def test_prod_stack_file_is_valid():
    stack = yaml.safe_load(open(program.ROOT / "Pulumi.prod.yaml"))["config"]
    values = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in stack.items()}
    cfg = load(values)
    assert cfg.hostname == "postal.rdo-dev.com" and cfg.sending_domains == ("rdo-dev.com",)
    assert not any("secure" in k.lower() or "token" in k.lower() for k in stack)


@pytest.mark.parametrize("ranges, world", [
    ('["0.0.0.0/0"]', True),
    ('["0.0.0.0/1", "128.0.0.0/1"]', True),  # the whole Internet in two rules
    ('["0.0.0.0/2", "64.0.0.0/2", "10.0.0.0/8"]', True),  # exactly half, merged
    ('["0.0.0.0/2", "128.0.0.0/3"]', False),  # three eighths
    ('["128.0.0.0/1"]', True),
    ('["10.0.0.0/8", "198.51.100.0/24"]', False),
])
def test_443_open_to_most_of_the_internet_is_a_warning(ranges, world):
    notes = config.warnings(load({NS + "webSourceRanges": ranges}))
    assert any("webSourceRanges opens port 443" in n for n in notes) == world, notes


def test_default_443_ranges_are_not_world_open_and_follow_the_smtp_and_ssh_ranges():
    cfg = load({NS + "sshSourceRanges": '["203.0.113.7/32"]', NS + "smtpSourceRanges": '["198.51.100.0/24"]'})
    assert cfg.web_source_ranges == ("198.51.100.0/24", "203.0.113.7/32")
    assert config.warnings(cfg) == []


def test_warnings_for_open_ports_and_foreign_hostname():
    cfg = load({NS + "smtpSourceRanges": '["0.0.0.0/0"]', NS + "hostname": "postal.other-zone.org",
                NS + "cloudflareZone": "other-zone.org"})
    notes = " ".join(config.warnings(cfg))
    assert "smtpSourceRanges opens port 25" in notes and "not under a sending domain" in notes
    assert "webSourceRanges opens port 443" in notes  # derived from the SMTP ranges, so world-open too
