"""Config contract: defaults, normalisation, and every bad value stopping the run before any resource."""

import json
import pathlib
import re

import certs
import pgp
import program
import pulumi
import pytest
import yaml

from components import certificate, checks, config, fields, google_ranges, reader

NS = "postal-gateway:"
CERT, KEY = certs.pair()
OTHER_CERT, OTHER_KEY = certs.issue("postal.rdo-dev.com")
TLS = {"tls": "custom"}
BACKUP_KEY = pgp.operator()


def custom(cert, key):
    return {"tls": "custom", "tlsCertificate": cert, "tlsPrivateKey": key}


# (key the error must name, overrides (key -> value, None removes it), text the key's line must contain).
# Every case also runs with its keys set as --secret: the values must then never appear.
BAD = [
    ("hostname", {"hostname": None}, "is required"),
    ("hostname", {"hostname": "mailhost"}, "not a fully qualified domain name"),
    ("hostname", {"hostname": "postal..rdo-dev.com"}, "not a fully qualified domain name"),
    ("hostname", {"hostname": "-postal.rdo-dev.com"}, "not a fully qualified domain name"),
    ("hostname", {"hostname": "postal.rdo-dev.123"}, "top-level label"),
    ("hostname", {"hostname": "postal.rdo-dev.com\n"}, "whitespace or a control character"),
    ("hostname", {"hostname": "postal.rdo-dev.com {"}, "whitespace or a control character"),
    ("hostname", {"hostname": "postal.rdo\x07-dev.com"}, "whitespace or a control character"),
    ("hostname", {"hostname": "{$HOST}.rdo-dev.com"}, "not a fully qualified domain name"),
    ("hostname", {"hostname": "p\u043estal.rdo-dev.com"}, "non-ASCII"),  # Cyrillic o
    ("hostname", {"hostname": "rdo-dev.com", "cloudflareZone": "rdo-dev.com"}, "is also a sending domain"),
    ("hostname", {"hostname": "psrp.rdo-dev.com"}, "return-path name"),
    ("sendingDomains", {"sendingDomains": None}, "is required"),
    ("sendingDomains", {"sendingDomains": "[]"}, "empty"),
    ("sendingDomains", {"sendingDomains": '["rdo-dev.com", "rdo-dev.com"]'}, "listed twice"),
    ("sendingDomains", {"sendingDomains": '["rdo-dev.com", "RDO-Dev.com."]'}, "listed twice"),
    ("sendingDomains", {"sendingDomains": '["not-a-domain"]'}, "not a fully qualified domain name"),
    ("sendingDomains", {"sendingDomains": '["rdo dev.com"]'}, "whitespace or a control character"),
    ("sendingDomains", {"sendingDomains": '["rdo-dev.com\\n"]'}, "whitespace or a control character"),
    ("sendingDomains", {"sendingDomains": "rdo-dev.com"}, "not a list"),
    ("sendingDomains", {"sendingDomains": '["rp.postal.rdo-dev.com"]'}, "rp. name Postal derives from hostname"),
    ("sendingDomains", {"sendingDomains": '["rdo-dev.com", "track.postal.rdo-dev.com"]'}, "track. name"),
    ("sendingDomains", {"sendingDomains": '["rdo-dev.com", "psrp.rdo-dev.com"]'}, "return-path name"),
    ("cloudflareZone", {"cloudflareZone": "example.org"}, "does not contain hostname"),
    ("cloudflareZone", {"cloudflareZone": "rdo-dev.com\r\n"}, "whitespace or a control character"),
    ("adminEmail", {"adminEmail": None}, "is required"),
    ("adminEmail", {"adminEmail": "ops.rdo-dev.com"}, "not an e-mail address"),
    ("adminEmail", {"adminEmail": "ops@localhost"}, "not a fully qualified domain name"),
    ("adminEmail", {"adminEmail": "{$HOME}@rdo-dev.com"}, "not an e-mail address"),
    ("adminEmail", {"adminEmail": '"ops"@rdo-dev.com'}, "not an e-mail address"),
    ("adminEmail", {"adminEmail": "#ops@rdo-dev.com"}, "not an e-mail address"),
    ("adminEmail", {"adminEmail": "ops@rdo-dev.com\n"}, "whitespace or a control character"),
    ("adminEmail", {"adminEmail": "ops @rdo-dev.com"}, "whitespace or a control character"),
    ("sshSourceRanges", {"sshSourceRanges": '["10.0.0.1/8"]'}, "has host bits set"),
    ("sshSourceRanges", {"sshSourceRanges": '["300.1.1.1/32"]'}, "not an IPv4 CIDR range"),
    ("sshSourceRanges", {"sshSourceRanges": '["10.0.0.0/33"]'}, "not an IPv4 CIDR range"),
    ("sshSourceRanges", {"sshSourceRanges": '["10.1.2.3/0.0.0.255"]'}, "has host bits set"),
    ("sshSourceRanges", {"sshSourceRanges": '["2001:db8::/32"]'}, "IPv6"),
    ("sshSourceRanges", {"sshSourceRanges": '["10.0.0.0/8\\n"]'}, "whitespace or a control character"),
    ("smtpSourceRanges", {"smtpSourceRanges": "[]"}, "empty"),
    ("webSourceRanges", {"webSourceRanges": '["everyone"]'}, "not an IPv4 CIDR range"),
    ("bounceSourceRanges", {"bounceSourceRanges": "[]"}, "empty"),
    ("bounceRateAlertPercent", {"bounceRateAlertPercent": "0"}, "outside 1..100"),
    ("bounceRateAlertPercent", {"bounceRateAlertPercent": "5%"}, "not a whole number"),
    ("bounceSourceRanges", {"bounceSourceRanges": '["209.85.128.1/17"]'}, "has host bits set"),
    ("bounceSourceRanges", {"bounceSourceRanges": '["2a00:1450:4000::/36"]'}, "IPv6"),
    ("bounceSourceRanges", {"bounceSourceRanges": '"209.85.128.0/17"'}, "not a list"),
    ("tls", {"tls": "acme"}, "not one of letsencrypt, internal, custom"),
    ("tls", {"tls": "internal\n"}, "whitespace or a control character"),
    ("tlsCertificate", {"tls": "custom"}, "is required"),
    ("tlsCertificate", {"tlsCertificate": CERT}, "only used with tls=custom"),
    ("tlsCertificate", custom(KEY, CERT), "no PEM CERTIFICATE block"),
    ("tlsCertificate", custom(CERT + KEY, KEY), "holds a PEM EC PRIVATE KEY block besides the CERTIFICATE"),
    ("tlsPrivateKey", custom(KEY, CERT), "no PEM PRIVATE KEY block"),
    (
        "tlsCertificate",
        custom("-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n", KEY),
        "does not parse as an X.509 certificate",
    ),
    (
        "tlsPrivateKey",
        custom(CERT, "-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n"),
        "does not parse as a private key",
    ),
    ("tlsPrivateKey", custom(CERT, OTHER_KEY), "does not belong to any certificate"),
    (
        "tlsPrivateKey",
        custom(CERT, certs.encrypted(KEY)),
        "encrypted with a passphrase, which Caddy cannot use. Fix: openssl pkey",
    ),
    ("tlsCertificate", custom(*certs.issue("www.rdo-dev.com")), "does not cover hostname"),
    ("tlsCertificate", custom(*certs.issue("*.postal.rdo-dev.com")), "does not cover hostname"),
    ("tlsCertificate", custom(*certs.common_name_only()), "the common name is ignored"),
    ("tlsCertificate", custom(*certs.issue("postal.rdo-dev.com", days=-1, start_days=-30)), "the certificate expired"),
    ("tlsCertificate", custom(*certs.issue("postal.rdo-dev.com", start_days=2)), "not valid before"),
    ("tlsCertificate", custom(CERT + certs.common_name_only()[0], KEY), "do not belong to the chain"),
    ("machineType", {"machineType": "e2-small"}, "2 GB of memory"),
    ("machineType", {"machineType": "e2-micro"}, "1 GB of memory"),
    ("machineType", {"machineType": "f1-micro"}, "0.6 GB of memory"),
    ("machineType", {"machineType": "g1-small"}, "1.7 GB of memory"),
    ("machineType", {"machineType": "n1-standard-1"}, "3.75 GB of memory"),
    ("machineType", {"machineType": "n1-highcpu-4"}, "3.6 GB of memory"),
    ("machineType", {"machineType": "c4d-highcpu-2"}, "3 GB of memory"),
    ("machineType", {"machineType": "custom-2-2048"}, "2 GB of memory"),
    ("machineType", {"machineType": "e2-custom-2-3840"}, "3.75 GB of memory"),
    ("machineType", {"machineType": "n2-custom-2-3072-ext"}, "3 GB of memory"),
    ("machineType", {"machineType": "e2-custom-small-2048"}, "2 GB of memory"),
    ("machineType", {"machineType": "t2a-standard-4"}, "Arm (arm64)"),
    ("machineType", {"machineType": "c4a-standard-8"}, "Arm (arm64)"),
    ("machineType", {"machineType": "big machine"}, "whitespace or a control character"),
    ("machineType", {"machineType": "e2-medium\n"}, "whitespace or a control character"),
    ("bootDiskSizeGb", {"bootDiskSizeGb": "10"}, "outside 20..2000"),
    ("dataDiskSizeGb", {"dataDiskSizeGb": "0"}, "outside 10..65536"),
    ("dataDiskSizeGb", {"dataDiskSizeGb": "fifty"}, "not a whole number"),
    ("snapshotRetentionDays", {"snapshotRetentionDays": "-1"}, "outside 1..3650"),
    ("postalVersion", {"postalVersion": "latest"}, "not X.Y.Z"),
    ("postalVersion", {"postalVersion": "3.3.0"}, "3.3.1"),
    ("postalVersion", {"postalVersion": "\uff13.3.6"}, "non-ASCII"),  # fullwidth digit
    ("relayHost", {"relayHost": "142.250.1.1"}, "IP address"),
    ("relayHost", {"relayHost": "smtp-relay.gmail.com\n"}, "whitespace or a control character"),
    ("relayPort", {"relayPort": "70000"}, "outside 1..65535"),
    ("relayPort", {"relayPort": "587.5"}, "not a whole number"),
    ("relayPort", {"relayTls": "tls"}, "587 is the STARTTLS port"),
    ("relayPort", {"relayPort": "465"}, "is the implicit TLS port"),
    ("relayPort", {"relayPort": "465", "relayTls": "none"}, "is the implicit TLS port"),
    ("relayHost", {"relayHost": "postal.rdo-dev.com"}, "relay to itself"),
    ("relayTls", {"relayTls": "ssl"}, "not one of starttls, tls, none"),
    ("relayTls", {"relayTls": "STARTTLS "}, "whitespace or a control character"),
    ("selinux", {"selinux": "disabled"}, "not one of enforcing, permissive"),
    ("dmarcPolicy", {"dmarcPolicy": "strict"}, "not one of none, quarantine, reject"),
    ("manageSpf", {"manageSpf": "yes"}, "not one of true, false"),
    ("labels", {"labels": '{"Team": "x"}'}, "GCP's rules"),
    ("labels", {"labels": '{"team": "plat form"}'}, "GCP's rules"),
    ("labels", {"labels": '["team"]'}, "not a map"),
    ("labels", {"labels": '{"app": "billing"}'}, "app is the stack's own label"),
    ("labels", {"labels": '{"stack": "staging"}'}, "stack is the stack's own label"),
    ("dataDiskSnapshot", {"dataDiskSnapshot": "Daily_Snapshot"}, "not a snapshot name"),
    ("dataDiskSnapshot", {"dataDiskSnapshot": "projects/x/global/snapshots/s1"}, "not a snapshot name"),
    ("dataDiskSnapshot", {"dataDiskSnapshot": "postal-data-1\n"}, "whitespace or a control character"),
    ("sshSourceRange", {"sshSourceRange": '["10.0.0.0/8"]'}, "did you mean sshSourceRanges?"),
    ("alertEmail", {"alertEmail": "oncall"}, "not an e-mail address"),
    ("mariadbImage", {"mariadbImage": "mariadb"}, "no tag or digest"),
    ("mariadbImage", {"mariadbImage": "MariaDB:11.4"}, "not an image reference"),
    ("caddyImage", {"caddyImage": "caddy:2.10 --privileged"}, "whitespace or a control character"),
    ("maintenanceWindow", {"maintenanceWindow": "Sunday 02:00"}, "not <Day> HH:MM"),
    ("maintenanceWindow", {"maintenanceWindow": "Sun 25:00"}, "not <Day> HH:MM"),
    ("maintenanceWindow", {"maintenanceWindow": "Sun 02:00\n"}, "not <Day> HH:MM"),
    ("diskAlertPercent", {"diskAlertPercent": "100"}, "outside 50..99"),
    ("queueLatencyAlertSeconds", {"queueLatencyAlertSeconds": "0"}, "outside 10..86400"),
    ("relayFailureAlertCount", {"relayFailureAlertCount": "0"}, "outside 1..100000"),
    ("workerErrorAlertCount", {"workerErrorAlertCount": "many"}, "not a whole number"),
    ("backupRetentionDays", {"backupRetentionDays": "0"}, "outside 1..30"),
    ("backupPublicKey", {"backupPublicKey": None}, "is required"),
    ("backupPublicKey", {"backupPublicKey": BACKUP_KEY.secret}, "is a PRIVATE key"),
    ("backupPublicKey", {"backupPublicKey": BACKUP_KEY.public + BACKUP_KEY.public}, "holds 2 keys"),
    (
        "backupPublicKey",
        {"backupPublicKey": pgp.make("signer <s@rdo-dev.com>", subkey=None).public},
        "no valid encryption",
    ),
    (
        "backupPublicKey",
        {"backupPublicKey": pgp.make("old <o@rdo-dev.com>", expire="1y", when="20200101T000000").public},
        "the key expired on 2020-12-31",
    ),
    (
        "backupPublicKey",
        {"backupPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq ops"},
        "no ASCII-armored OpenPGP",
    ),
    (
        "backupPublicKey",
        {"backupPublicKey": BACKUP_KEY.public.replace("\n\n", "\n\n!!", 1)},
        "not a readable OpenPGP key",
    ),
    ("backupBucket", {"backupBucket": "Acme_Backups"}, "not a bucket name"),
    ("backupBucket", {"backupBucket": "google-mail-backups"}, 'contain "google"'),
    ("backupBucket", {"backupBucket": "gs://acme-backups/postal"}, "a path inside a bucket"),
    ("backupLockDays", {"backupLockDays": "5"}, "longer than backupRetentionDays"),
    ("backupLockDays", {"backupLockDays": "-1"}, "outside 0..30"),
    ("backupLockDays", {"backupBucket": "acme-backups", "backupLockDays": "2"}, "only applies to the bucket"),
    ("gcp:project", {"gcp:project": None}, "is required"),
    ("gcp:project", {"gcp:project": "Acme Mail"}, "whitespace or a control character"),
    ("gcp:region", {"gcp:region": "europe-west1\n"}, "whitespace or a control character"),
    ("gcp:zone", {"gcp:zone": "us-east1-b"}, "is not a zone of region"),
    ("gcp:zone", {"gcp:zone": "europe-west1"}, "not a zone name"),
    # Values pasted from documents, chats and other tools (a review with configs the first table had not seen)
    ("hostname", {"hostname": "postal\u200b.rdo-dev.com"}, "invisible character"),  # zero-width space
    ("hostname", {"hostname": "postal.rdo-dev.com\u00a0"}, "invisible character"),  # non-breaking space
    ("hostname", {"hostname": "\ufeffpostal.rdo-dev.com"}, "invisible character"),  # byte-order mark
    ("hostname", {"hostname": "p\u00f6stal.rdo-dev.com"}, "write an international domain name in its xn-- form"),
    ("hostname", {"hostname": "postal_gw.rdo-dev.com"}, "not a fully qualified domain name"),
    ("hostname", {"hostname": "https://postal.rdo-dev.com"}, "a URL; give the host name alone"),
    ("hostname", {"hostname": "postal.rdo-dev.com:443"}, "includes a :port"),
    ("hostname", {"hostname": "*.rdo-dev.com"}, "not a fully qualified domain name"),
    ("hostname", {"hostname": "p" * 64 + ".rdo-dev.com"}, "not a fully qualified domain name"),
    ("sendingDomains", {"sendingDomains": "rdo-dev.com,rdo-studio.net"}, "not a list"),
    ("sendingDomains", {"sendingDomains": '[["rdo-dev.com"]]'}, "not a quoted string"),
    ("sendingDomains", {"sendingDomains": '["rdo-dev.com", null]'}, "not a quoted string"),
    ("sendingDomains", {"sendingDomains": '["ops@rdo-dev.com"]'}, "not a fully qualified domain name"),
    ("sendingDomains", {"sendingDomains": '["rdo\u2011dev.com"]'}, "non-ASCII"),  # non-breaking hyphen
    ("sendingDomains", {"sendingDomains": '["spf.postal.rdo-dev.com."]'}, "spf. name Postal derives"),
    ("adminEmail", {"adminEmail": "ops(comment)@rdo-dev.com"}, "not an e-mail address"),
    ("adminEmail", {"adminEmail": "Ops <ops@rdo-dev.com>"}, "whitespace or a control character"),
    ("adminEmail", {"adminEmail": "mailto:ops@rdo-dev.com"}, "not an e-mail address"),
    ("adminEmail", {"adminEmail": "ops{x}@rdo-dev.com"}, "not an e-mail address"),
    ("adminEmail", {"adminEmail": "ops@@rdo-dev.com"}, "not an e-mail address"),
    ("adminEmail", {"adminEmail": "ops\u200b@rdo-dev.com"}, "invisible character"),
    ("sshSourceRanges", {"sshSourceRanges": '["0.0.0.0"]'}, "never the source of a connection"),
    ("sshSourceRanges", {"sshSourceRanges": '["127.0.0.1/32"]'}, "never the source of a connection"),
    ("sshSourceRanges", {"sshSourceRanges": "[10]"}, "not a quoted string"),
    ("sshSourceRanges", {"sshSourceRanges": '["010.0.0.0/8"]'}, "not an IPv4 CIDR range"),
    ("sshSourceRanges", {"sshSourceRanges": '"203.0.113.7/32"'}, "not a list"),
    ("smtpSourceRanges", {"smtpSourceRanges": '["224.0.0.0/4"]'}, "never the source of a connection"),
    ("relayPort", {"relayPort": "587.0"}, "not a whole number"),
    ("relayPort", {"relayPort": "true"}, "not a whole number"),
    ("relayPort", {"relayPort": '"587"'}, "not a whole number"),
    ("dataDiskSizeGb", {"dataDiskSizeGb": "50GB"}, "not a whole number"),
    ("labels", {"labels": '{"team": "' + "p" * 64 + '"}'}, "GCP's rules"),
    ("labels", {"labels": '{"\u00e9quipe": "mail"}'}, "non-ASCII"),
    ("labels", {"labels": '{"team": {"name": "mail"}}'}, "GCP's rules"),
    ("labels", {"labels": "team=platform"}, "not a map"),
    ("dataDiskSnapshot", {"dataDiskSnapshot": "s" * 64}, "not a snapshot name"),
    (
        "dataDiskSnapshot",
        {"dataDiskSnapshot": "https://www.googleapis.com/compute/v1/projects/x/global/snapshots/s1"},
        "not a snapshot name",
    ),
    ("postalVersion", {"postalVersion": "v3.3.6"}, "not X.Y.Z"),
    ("postalVersion", {"postalVersion": "3.3"}, "not X.Y.Z"),
    ("postalVersion", {"postalVersion": "3.2.9"}, "3.3.1"),
    ("postalVersion", {"postalVersion": "03.3.6"}, "not X.Y.Z"),  # no such image tag
    ("machineType", {"machineType": "c4a-highcpu-1"}, "Arm (arm64)"),
    ("machineType", {"machineType": "n4a-standard-2"}, "Arm (arm64)"),
    ("machineType", {"machineType": "n2d-custom-2-3840"}, "3.75 GB of memory"),
    ("relayHost", {"relayHost": "localhost"}, "not a fully qualified domain name"),
    ("relayHost", {"relayHost": "smtp-relay.gmail.com:587"}, "includes a :port"),
    ("relayHost", {"relayHost": "smtp://smtp-relay.gmail.com"}, "a URL"),
    ("relayTls", {"relayTls": "STARTLS"}, "not one of starttls, tls, none"),  # Postal's spelling
    ("dmarcPolicy", {"dmarcPolicy": "p=reject"}, "not one of none, quarantine, reject"),
    ("cloudflareZone", {"cloudflareZone": "com"}, "not a fully qualified domain name"),
    (
        "tlsPrivateKey",
        custom(CERT, KEY.replace("EC PRIVATE KEY", "OPENSSH PRIVATE KEY")),
        "does not parse as a private key",
    ),
    ("ephemeral", {"ephemeral": "true"}, "is true on stack 'prod'"),  # program.STACK is prod
    ("ephemeral", {"ephemeral": "sometimes"}, "expected true or false"),
    (
        "tlsCertificate",
        custom(CERT.replace("CERTIFICATE", "TRUSTED CERTIFICATE"), KEY),
        "does not parse as an X.509 certificate",
    ),
]


def key_of(name: str) -> str:
    return name if ":" in name else NS + name


# Text a message may contain whatever the value: the validator's own words.
VOCABULARY = "".join(
    pathlib.Path(module.__file__).read_text() for module in (config, reader, fields, checks, certificate)
)


def fragments(value: str) -> set:
    """The value and every part of it a message could quote (JSON items, PEM lines), minus the
    validator's own words: whatever else of it shows up in a message came from the value."""
    parts = {value, value.strip()} | set(value.splitlines())
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, list):
        parts |= {str(item) for item in parsed}
    elif isinstance(parsed, dict):
        parts |= {str(item) for pair in parsed.items() for item in pair}
    return {p for p in parts if len(p.strip()) >= 4 and p not in VOCABULARY}


def case_id(case):
    return f"{case[0]}:{'+'.join(case[1])}={'|'.join(str(v)[:30] for v in case[1].values())}"


@pytest.mark.parametrize("secret", [False, True], ids=["plain", "secret"])
@pytest.mark.parametrize("reported,overrides,expected", BAD, ids=[case_id(c) for c in BAD])
def test_bad_config_stops_before_any_resource(reported, overrides, expected, secret):
    config_values = {key_of(k): v for k, v in overrides.items()}
    secret_keys = [k for k, v in config_values.items() if v is not None] if secret else []
    if TLS.items() <= overrides.items():  # the PEM pair is always set as secret, as the fix says
        secret_keys = sorted(set(secret_keys) | {k for k in config_values if k.endswith(("Certificate", "Key"))})
    run = program.run(config_values, secret_keys=tuple(secret_keys))
    # a pulumi.RunError: the CLI prints the message alone, without a traceback
    assert isinstance(run.error, config.ConfigError) and isinstance(run.error, pulumi.RunError), run.error
    assert run.resources == [] and run.invokes == []
    header, *lines = str(run.error).splitlines()
    assert header == "postal-gateway: invalid configuration"
    assert all(re.fullmatch(r"  - (postal-gateway|gcp):\w+: .+\. Fix: .+", line) for line in lines), lines
    line = next((item for item in lines if item.startswith(f"  - {key_of(reported)}:")), None)
    assert line is not None and expected in line, lines
    for key in secret_keys:
        for part in fragments(config_values[key]):
            assert part not in str(run.error), (key, part)


def test_the_table_covers_every_key_and_at_least_40_configs():
    assert len(BAD) >= 40
    reported = {key_of(case[0]) for case in BAD}
    assert {NS + k for k in config.KEYS} | {"gcp:project", "gcp:region", "gcp:zone"} <= reported


def test_all_problems_reported_together():
    run = program.run({NS + "tls": "acme", NS + "relayPort": "0", NS + "adminEmail": None})
    lines = [item for item in str(run.error).splitlines() if item.strip().startswith("- ")]
    assert sorted(item.split(":")[1] for item in lines) == ["adminEmail", "relayPort", "tls"]


def test_custom_tls_pair_must_be_secret():
    run = program.run(
        {NS + "tls": "custom", NS + "tlsCertificate": CERT, NS + "tlsPrivateKey": KEY},
        secret_keys=(NS + "tlsPrivateKey",),
    )
    assert "postal-gateway:tlsCertificate: is stored in plain text" in str(run.error)
    assert "tlsPrivateKey: is stored" not in str(run.error)
    assert not any(line in str(run.error) for line in CERT.splitlines()[1:-1])


def load(overrides=None, secret_keys=()):
    import pulumi

    pulumi.runtime.set_mocks(program.Mocks(), project=program.PROJECT, stack=program.STACK)
    merged = {**program.BASE_CONFIG, **(overrides or {})}
    pulumi.runtime.set_all_config({k: v for k, v in merged.items() if v is not None}, list(secret_keys))
    return config.load()


def test_defaults_match_pulumi_yaml():
    declared = yaml.safe_load((program.ROOT / "Pulumi.yaml").read_text())["config"]
    for key, default in config.DEFAULTS.items():
        if key in declared:
            assert declared[key].get("default") == default, key
    assert {k for k, v in declared.items() if "default" in v} <= set(config.DEFAULTS)
    assert set(declared) <= set(config.KEYS)


@pytest.mark.parametrize(
    "project,stack", [("Pulumi.yaml", "Pulumi.prod.yaml"), ("examples/consumer/Pulumi.yaml", None)]
)
def test_the_cli_would_find_every_required_key(project, stack):
    """Pulumi refuses to run a stack that lacks a declared key without a default."""
    declared = yaml.safe_load((program.ROOT / project).read_text())["config"]
    required = {
        f"{yaml.safe_load((program.ROOT / project).read_text())['name']}:{k}"
        for k, v in declared.items()
        if "default" not in v
    }
    provided = set(yaml.safe_load((program.ROOT / stack).read_text())["config"]) if stack else set()
    assert required <= provided


def test_defaults_and_normalisation():
    cfg = load(
        {NS + "hostname": "Postal.RDO-dev.com.", NS + "sshSourceRanges": '["203.0.113.7"]', NS + "relayTls": "STARTTLS"}
    )
    assert cfg.hostname == "postal.rdo-dev.com"
    assert cfg.cloudflare_zone == "rdo-dev.com"
    assert cfg.ssh_source_ranges == ("203.0.113.7/32",)
    assert cfg.web_source_ranges == ("10.0.0.0/8", "198.51.100.0/24", "203.0.113.7/32")  # SMTP + SSH ranges
    assert (cfg.tls, cfg.machine_type, cfg.postal_version, cfg.selinux) == (
        "letsencrypt",
        "e2-medium",
        "3.3.6",
        "enforcing",
    )
    assert (cfg.boot_disk_size_gb, cfg.data_disk_size_gb, cfg.snapshot_retention_days) == (20, 50, 14)
    assert cfg.relay_url == "smtp://smtp-relay.gmail.com:587?ssl_mode=STARTLS"
    assert cfg.dmarc_policy is None and cfg.manage_spf is True
    assert cfg.zone_for("rdo-studio.net") == "rdo-studio.net"
    assert cfg.zone_for("mail.rdo-dev.com") == "rdo-dev.com"
    assert cfg.alert_email == cfg.admin_email == "ops@rdo-dev.com"
    assert (cfg.mariadb_image, cfg.caddy_image) == ("mariadb:11.4", "caddy:2.10")
    assert (cfg.maintenance_window, cfg.disk_alert_percent, cfg.backup_retention_days) == ("Sun 02:00", 80, 3)
    custom = load({NS + "alertEmail": "oncall@rdo-dev.com", NS + "maintenanceWindow": "sat 01:30"})
    assert (custom.alert_email, custom.maintenance_window) == ("oncall@rdo-dev.com", "Sat 01:30")


@pytest.mark.parametrize(
    "mode,port,expected",
    [
        ("starttls", 587, "STARTLS"),
        ("tls", 465, "TLS"),
        ("none", 25, "None"),
        ("none", 587, "None"),
        ("starttls", 2525, "STARTLS"),
    ],
)
def test_relay_tls_renders_postals_spelling(mode, port, expected):
    cfg = load({NS + "relayTls": mode, NS + "relayPort": str(port)})
    assert cfg.relay_url == f"smtp://smtp-relay.gmail.com:{port}?ssl_mode={expected}"


def test_prod_stack_file_is_valid():
    stack = yaml.safe_load((program.ROOT / "Pulumi.prod.yaml").read_text())["config"]
    values = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in stack.items()}
    cfg = load(values)
    assert cfg.hostname == "postal.rdo-dev.com" and cfg.sending_domains == ("rdo-dev.com",)
    assert not any("secure" in k.lower() or "token" in k.lower() for k in stack)


@pytest.mark.parametrize(
    "ranges, world",
    [
        ('["0.0.0.0/0"]', True),
        ('["0.0.0.0/1", "128.0.0.0/1"]', True),  # the whole Internet in two rules
        ('["0.0.0.0/2", "64.0.0.0/2", "10.0.0.0/8"]', True),  # exactly half, merged
        ('["0.0.0.0/2", "128.0.0.0/3"]', False),  # three eighths
        ('["128.0.0.0/1"]', True),
        ('["10.0.0.0/8", "198.51.100.0/24"]', False),
    ],
)
def test_443_open_to_most_of_the_internet_is_a_warning(ranges, world):
    notes = config.warnings(load({NS + "webSourceRanges": ranges}))
    assert any("webSourceRanges opens port 443" in n for n in notes) == world, notes


def test_default_443_ranges_are_not_world_open_and_follow_the_smtp_and_ssh_ranges():
    cfg = load({NS + "sshSourceRanges": '["10.30.0.0/16"]', NS + "smtpSourceRanges": '["10.20.0.0/16"]'})
    assert cfg.web_source_ranges == ("10.20.0.0/16", "10.30.0.0/16")
    assert config.warnings(cfg) == []


def test_warnings_for_open_ports_and_foreign_hostname():
    cfg = load(
        {
            NS + "smtpSourceRanges": '["0.0.0.0/0"]',
            NS + "hostname": "postal.other-zone.org",
            NS + "cloudflareZone": "other-zone.org",
        }
    )
    notes = " ".join(config.warnings(cfg))
    assert "smtpSourceRanges opens port 25" in notes and "not under a sending domain" in notes
    assert "webSourceRanges opens port 443" in notes  # derived from the SMTP ranges, so world-open too


def test_bounces_come_from_googles_mail_ranges_by_default_and_are_not_warned():
    cfg = load()
    assert cfg.bounce_source_ranges == google_ranges.DEFAULT_BOUNCE_RANGES
    assert "209.85.128.0/17" in cfg.bounce_source_ranges and "35.191.0.0/16" not in cfg.bounce_source_ranges
    assert not [n for n in config.warnings(cfg) if "bounceSourceRanges" in n]


@pytest.mark.parametrize("ranges", ['["0.0.0.0/1", "128.0.0.0/1"]', '["0.0.0.0/2", "64.0.0.0/2"]'])
def test_world_open_bounce_ranges_are_accepted_with_what_they_expose(ranges):
    cfg = load({NS + "bounceSourceRanges": ranges})
    (note,) = [n for n in config.warnings(cfg) if "bounceSourceRanges" in n]
    assert "opens port 25 (SMTP, for bounces) to the whole Internet" in note
    assert "SMTP AUTH to every client, before STARTTLS too" in note and "failed SMTP AUTH" in note
    assert "pulumi config rm bounceSourceRanges" in note
    secret = config.warnings(load({NS + "bounceSourceRanges": ranges}, secret_keys=(NS + "bounceSourceRanges",)))
    assert not [n for n in secret if "0.0.0.0" in n]


@pytest.mark.parametrize(
    "machine",
    [
        "e2-medium",
        "e2-highcpu-4",
        "n1-standard-2",
        "n2-highcpu-4",
        "n4-highcpu-2",
        "c4-highcpu-2",
        "c2d-highcpu-2",
        "t2d-standard-1",
        "custom-2-4096",
        "e2-custom-medium-4096",
        "n2-custom-2-8192-ext",
    ],
)
def test_machine_types_with_4_gb_are_accepted(machine):
    assert load({NS + "machineType": machine}).machine_type == machine


@pytest.mark.parametrize(
    "pattern,host,covered",
    [
        ("postal.rdo-dev.com", "postal.rdo-dev.com", True),
        ("POSTAL.rdo-dev.com.", "postal.rdo-dev.com", True),
        ("*.rdo-dev.com", "postal.rdo-dev.com", True),
        ("*.rdo-dev.com", "rdo-dev.com", False),  # a wildcard never covers its own parent
        ("*.rdo-dev.com", "a.postal.rdo-dev.com", False),  # one label only
        ("*.com", "rdo-dev.com", False),  # no wildcard over a top-level domain
        ("p*.rdo-dev.com", "postal.rdo-dev.com", False),  # partial wildcards: Go does not match them
    ],
)
def test_certificate_name_matching(pattern, host, covered):
    assert certificate.covers(pattern, host) is covered


def custom_load(chain, key):
    keys = (NS + "tlsCertificate", NS + "tlsPrivateKey")
    return load({NS + "tls": "custom", keys[0]: chain, keys[1]: key}, secret_keys=keys)


def test_a_wildcard_certificate_is_accepted():
    cfg = custom_load(*certs.issue("*.rdo-dev.com"))
    assert cfg.tls == "custom" and cfg.tls_certificate is not None


def test_a_chain_in_the_wrong_order_is_reordered_leaf_first():
    chain, key = CERT, KEY
    leaf, intermediate = certs.blocks(chain)
    assert custom_load(intermediate + leaf, key).tls_certificate is not None
    pair, problems = certificate.check_pair(intermediate + leaf, key, certs.HOST, certs.NOW)
    assert problems == [] and pair.chain_pem == leaf + intermediate


def test_a_leaf_without_its_intermediate_is_a_warning():
    leaf, intermediate = certs.blocks(CERT)
    assert not any("without its issuer" in n for n in config.warnings(custom_load(CERT, KEY)))
    notes = config.warnings(custom_load(leaf, KEY))
    assert any("tlsCertificate holds the server certificate without its issuer" in n for n in notes)


def test_relay_port_25_is_a_warning():
    notes = config.warnings(load({NS + "relayPort": "25"}))
    assert any("relayPort 25: Google Cloud blocks" in n for n in notes)
    assert not any("relayPort" in n for n in config.warnings(load()))


@pytest.mark.parametrize("days,warned", [(5, True), (13, True), (30, False)])
def test_a_certificate_expiring_within_14_days_is_a_warning(days, warned):
    cfg = custom_load(*certs.issue(certs.HOST, days=days))
    notes = [n for n in config.warnings(cfg) if "tlsCertificate" in n]
    assert bool(notes) is warned
    if warned:
        assert f"expires on {cfg.tls_certificate_expires:%Y-%m-%d}" in notes[0] and "renew it" in notes[0]


@pytest.mark.parametrize(
    "ranges,flagged",
    [
        ('["203.0.113.7/32"]', "203.0.113.7/32"),
        ('["10.0.0.0/8", "198.51.100.0/28"]', "198.51.100.0/28"),
        ('["192.0.2.0/24"]', "192.0.2.0/24"),
        ('["203.0.0.0/16"]', None),  # contains a documentation range but is not inside one
        ('["34.90.1.7/32"]', None),
    ],
)
def test_documentation_ranges_are_a_warning(ranges, flagged):
    notes = [n for n in config.warnings(load({NS + "sshSourceRanges": ranges})) if "RFC 5737" in n]
    ssh = [n for n in notes if n.startswith(NS + "sshSourceRanges")]
    assert bool(ssh) == bool(flagged)
    if flagged:
        assert f"({flagged})" in ssh[0] and "replace them with your real egress range" in ssh[0]


def test_warnings_never_show_a_secret_value():
    cfg = load(
        {
            NS + "sshSourceRanges": '["203.0.113.7/32"]',
            NS + "hostname": "postal.other-zone.org",
            NS + "cloudflareZone": "other-zone.org",
        },
        secret_keys=(NS + "sshSourceRanges", NS + "hostname"),
    )
    notes = " ".join(config.warnings(cfg))
    assert "sshSourceRanges lists RFC 5737" in notes and "hostname is not under a sending domain" in notes
    assert "203.0.113.7" not in notes and "other-zone" not in notes


def test_user_labels_join_ours():
    cfg = load({NS + "labels": '{"team": "platform", "cost-center": "c42"}'})
    assert cfg.gcp_labels == {"app": "postal-gateway", "stack": "prod", "team": "platform", "cost-center": "c42"}


@pytest.mark.parametrize(
    "stack, value, ephemeral",
    [("e2e-3f9a1c", "true", True), ("staging", "True", True), ("prod", "false", False), ("e2e-3f9a1c", None, False)],
)
def test_ephemeral_is_a_bool_off_production_and_labels_the_stack(stack, value, ephemeral):
    pulumi.runtime.set_mocks(program.Mocks(), project=program.PROJECT, stack=stack)
    merged = {**program.BASE_CONFIG, NS + "ephemeral": value, NS + "labels": '{"ephemeral": "false"}'}
    pulumi.runtime.set_all_config({k: v for k, v in merged.items() if v is not None}, [])
    cfg = config.load()
    assert cfg.stack == stack and cfg.ephemeral is ephemeral
    # ours wins over a user label of the same name: the policy pack reads it
    assert cfg.gcp_labels["ephemeral"] == ("true" if ephemeral else "false")


# Values that reach the Caddyfile, rendered as they are and given to the real Caddy: each one the
# config refuses would have broken the Caddyfile or been changed by it ({$VAR} expands when the
# Caddyfile is adapted); each one it accepts comes out unchanged.
CADDY_REFUSED = [
    ("adminEmail", "{$HOME}@rdo-dev.com"),
    ("adminEmail", '"ops"@rdo-dev.com'),
    ("adminEmail", "#ops@rdo-dev.com"),
    ("adminEmail", "ops @rdo-dev.com"),
    ("adminEmail", "ops@rdo-dev.com\n}\nevil.example.com {"),
    ("hostname", "{$HOME}.rdo-dev.com"),
    ("hostname", "postal.rdo-dev.com, evil.example.com"),
    ("hostname", "postal.rdo-dev.com {\n}\nevil.rdo-dev.com"),
]
CADDY_ACCEPTED = [
    ("adminEmail", "first.last+postal@rdo-dev.com"),
    ("adminEmail", "ops_team%eu-1@mail.rdo-dev.com"),
    ("hostname", "postal-1.mail.rdo-dev.com"),
    ("hostname", "POSTAL.rdo-dev.com."),
]


def adapted(tmp_path, key, value):
    """(Caddy's JSON or None when Caddy refuses the file) for the Caddyfile rendered with `value`."""
    import subprocess

    from components import render

    fields = {
        "hostname": certs.HOST,
        "admin_email": "ops@rdo-dev.com",
        {"adminEmail": "admin_email", "hostname": "hostname"}[key]: value,
    }
    path = tmp_path / "Caddyfile"
    path.write_text(render.caddyfile(tls="letsencrypt", **fields))
    result = subprocess.run(
        [program.tool("caddy"), "adapt", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"HOME": "/home/caddy", "PATH": "/usr/bin:/bin"},
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


def rendered(caddy_json):
    """(ACME account e-mail, site host names) in Caddy's JSON."""
    policy = caddy_json["apps"]["tls"]["automation"]["policies"][0]
    routes = caddy_json["apps"]["http"]["servers"]["srv0"]["routes"]
    return policy["issuers"][0].get("email"), [h for r in routes for m in r.get("match", []) for h in m.get("host", [])]


@pytest.mark.parametrize("key,value", CADDY_REFUSED, ids=[repr(v) for _, v in CADDY_REFUSED])
def test_caddy_syntax_is_refused_and_would_have_broken_or_changed_the_caddyfile(key, value, tmp_path):
    with pytest.raises(config.ConfigError, match=f"{NS}{key}: "):
        load({NS + key: value})
    result = adapted(tmp_path, key, value)
    intended = (value, [certs.HOST]) if key == "adminEmail" else ("ops@rdo-dev.com", [value])
    assert result is None or rendered(result) != intended  # refused by Caddy, or expanded / another site


@pytest.mark.parametrize("key,value", CADDY_ACCEPTED, ids=[v for _, v in CADDY_ACCEPTED])
def test_accepted_values_render_unchanged_in_caddy(key, value, tmp_path):
    cfg = load({NS + key: value, NS + "cloudflareZone": "rdo-dev.com"})
    normalised = cfg.admin_email if key == "adminEmail" else cfg.hostname
    intended = (normalised, [certs.HOST]) if key == "adminEmail" else ("ops@rdo-dev.com", [normalised])
    assert rendered(adapted(tmp_path, key, normalised)) == intended


# Legitimate values in the forms operators and tools write them: accepted, normalised where GCP, Cloudflare or
# Caddy want one spelling (a false refusal is as bad as a miss).
ACCEPTED = [
    ({"hostname": "xn--pstal-mua.rdo-dev.com"}, "hostname", "xn--pstal-mua.rdo-dev.com"),
    (
        {"sendingDomains": '["RDO-DEV.COM.", "mail.rdo-dev.com"]'},
        "sending_domains",
        ("rdo-dev.com", "mail.rdo-dev.com"),
    ),
    ({"adminEmail": "Ops.Team@RDO-dev.com."}, "admin_email", "Ops.Team@rdo-dev.com"),
    ({"sshSourceRanges": '["34.90.0.0/255.255.255.0"]'}, "ssh_source_ranges", ("34.90.0.0/24",)),
    (
        {"smtpSourceRanges": '["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]'},
        "smtp_source_ranges",
        ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"),
    ),
    (
        {"bounceSourceRanges": '["209.85.128.0/255.255.128.0", "74.125.0.0/16"]'},
        "bounce_source_ranges",
        ("209.85.128.0/17", "74.125.0.0/16"),
    ),
    ({"manageSpf": "False"}, "manage_spf", False),
    (
        {"labels": '{"cost": 42, "critical": true, "tier": ""}'},
        "labels",  # YAML numbers and booleans
        (("cost", "42"), ("critical", "true"), ("tier", "")),
    ),
    ({"dataDiskSnapshot": "global/snapshots/postal-data-1"}, "data_disk_snapshot", "global/snapshots/postal-data-1"),
    (
        {"dataDiskSnapshot": "https://www.googleapis.com/compute/v1/projects/acme-mail/global/snapshots/postal-data-1"},
        "data_disk_snapshot",
        "https://www.googleapis.com/compute/v1/projects/acme-mail/global/snapshots/postal-data-1",
    ),
    ({"machineType": "E2-Medium"}, "machine_type", "e2-medium"),
    ({"machineType": "e2-standard-2"}, "machine_type", "e2-standard-2"),
    ({"machineType": "custom-1-4096-ext"}, "machine_type", "custom-1-4096-ext"),
    ({"relayHost": "SMTP-Relay.Gmail.com."}, "relay_host", "smtp-relay.gmail.com"),
    ({"relayTls": "TLS", "relayPort": "465"}, "relay_url", "smtp://smtp-relay.gmail.com:465?ssl_mode=TLS"),
    ({"dmarcPolicy": "Reject"}, "dmarc_policy", "reject"),
    (
        {"cloudflareZone": "RDO-dev.com.", "sendingDomains": '["rdo-studio.net"]'},
        "zones",
        ("rdo-dev.com", "rdo-studio.net"),
    ),
]


@pytest.mark.parametrize("overrides,attribute,expected", ACCEPTED, ids=[case_id(("", c[0])) for c in ACCEPTED])
def test_legitimate_values_are_accepted_and_normalised(overrides, attribute, expected):
    assert getattr(load({NS + k: v for k, v in overrides.items()}), attribute) == expected


# The pair as editors and tools write it: Caddy loads the key with Go's tls.X509KeyPair, which skips PEM blocks
# before the key (crypto/tls/tls.go) and decodes CRLF and text around blocks (encoding/pem).
LEAF, INTERMEDIATE = certs.blocks(CERT)
BAG = "Bag Attributes\n    localKeyID: 01 00 00 00\nsubject=CN = postal.rdo-dev.com\n"  # openssl pkcs12 -nodes
PAIRS_ACCEPTED = {
    "rsa-pkcs1": certs.rsa_issue(),
    "rsa-pkcs8": certs.rsa_issue(pkcs8=True),
    "crlf": (CERT.replace("\n", "\r\n"), KEY.replace("\n", "\r\n")),
    "byte-order-mark": ("\ufeff" + CERT, "\ufeff" + KEY),
    "blank-lines": ("\n\n" + CERT + "\n\n", KEY + "\n\n"),
    "ec-parameters": (CERT, certs.with_ec_parameters(KEY)),
    "pkcs12-export": (BAG + LEAF + BAG + INTERMEDIATE, "Key Attributes: <No Attributes>\n" + KEY),
    "leaf-twice": (LEAF + CERT, KEY),  # cat cert.pem fullchain.pem
}


@pytest.mark.parametrize("name", PAIRS_ACCEPTED)
def test_certificates_as_tools_write_them_are_accepted(name):
    chain, key = PAIRS_ACCEPTED[name]
    assert custom_load(chain, key).tls == "custom"
    pair, problems = certificate.check_pair(chain, key, certs.HOST, certs.NOW)
    assert problems == [] and pair.chain_pem == (chain if name.startswith("rsa") else CERT)  # leaf, intermediate


def test_caddy_loads_the_accepted_pairs_as_delivered(tmp_path):
    """The chain as check_pair orders it and the key as parse_pem passes it on, loaded by the real Caddy
    (`caddy validate` provisions the TLS app, which reads and matches the pair); a mismatched pair is the control."""
    import subprocess

    def loads(name, chain, key):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "cert.pem").write_text(chain)
        (folder / "key.pem").write_text(key)
        (folder / "Caddyfile").write_text(
            f"{certs.HOST} {{\n\ttls {folder}/cert.pem {folder}/key.pem\n\trespond ok\n}}\n"
        )
        return (
            subprocess.run(
                [program.tool("caddy"), "validate", "--config", str(folder / "Caddyfile"), "--adapter", "caddyfile"],
                capture_output=True,
                text=True,
                timeout=60,
            ).returncode
            == 0
        )

    for name, (chain, key) in PAIRS_ACCEPTED.items():
        pair, problems = certificate.check_pair(chain, key, certs.HOST, certs.NOW)
        assert loads(name, pair.chain_pem, config.parse_pem("PRIVATE KEY")(key)), name
    assert not loads("mismatched", CERT, OTHER_KEY)


def test_a_self_signed_certificate_is_a_warning():
    notes = config.warnings(custom_load(*certs.self_signed()))
    assert any("tlsCertificate is self-signed" in n for n in notes)
    assert not any("without its issuer" in n for n in notes)
    assert not any("self-signed" in n for n in config.warnings(custom_load(CERT, KEY)))


def test_direct_ssh_from_public_addresses_is_a_warning():
    def warned(ranges):
        notes = config.warnings(load({NS + "sshSourceRanges": ranges} if ranges else {}))
        return [n for n in notes if "sshSourceRanges opens port 22 to public addresses" in n]

    assert not warned(None) and not warned('["10.0.0.0/8", "192.168.1.0/24"]')  # IAP only; private networks
    (note,) = warned('["10.0.0.0/8", "34.90.1.7/32"]')
    assert "(34.90.1.7/32) besides IAP's range" in note and "gcloud compute ssh --tunnel-through-iap" in note


def test_ssh_source_ranges_are_optional_and_443_follows_smtp_without_them():
    cfg = load({NS + "sshSourceRanges": None})
    assert cfg.ssh_source_ranges == ()
    assert cfg.web_source_ranges == ("10.0.0.0/8", "198.51.100.0/24")


def test_short_secret_values_are_not_echoed():
    run = program.run(
        {NS + "relayPort": "465", NS + "relayTls": "none"}, secret_keys=(NS + "relayPort", NS + "relayTls")
    )
    assert "relayPort: the secret relayPort is the implicit TLS port" in str(run.error)
    assert "465 " not in str(run.error) and "none " not in str(run.error)


SECRET_NAMES = {NS + "hostname": "postal.secret-co.com", NS + "sendingDomains": '["secret-co.com"]'}


@pytest.mark.parametrize("problem", ["missing-zone", "conflict"])
def test_the_zone_lookup_never_shows_secret_names(problem):
    records = [
        {"name": "spf.postal.secret-co.com", "type": "TXT", "content": "v=spf1 -all"},
        {"name": "Postal.secret-co.com", "type": "CNAME", "content": "old.secret-co.com"},
    ]
    run = program.run(
        SECRET_NAMES,
        secret_keys=tuple(SECRET_NAMES),
        dns_records=records,
        missing_zones=("secret-co.com",) if problem == "missing-zone" else (),
    )
    assert run.resources == [] and "secret-co" not in str(run.error).lower()
    if problem == "missing-zone":
        assert "Cloudflare zone '<cloudflareZone>' (" in str(run.error) and "could not be read" in str(run.error)
    else:
        assert "  - <hostname> already has 'old.<cloudflareZone>' (CNAME)" in str(run.error)
        assert "  - spf.<hostname> already has 'v=spf1 -all' (TXT)" in str(run.error)
    plain = program.run(SECRET_NAMES, dns_records=records)
    assert "spf.postal.secret-co.com already has" in str(plain.error)
