"""Every key read into MailConfig's fields: its parser, what a good value looks like and the command
that fixes a bad one, and the defaults derived from other keys. Keys are read in the order their
messages are listed; each cross-key check (components/checks.py) runs once its keys are read. A bad
value leaves None behind (load raises before it is used).
"""

from __future__ import annotations

from typing import Any

from components import checks, google_ranges
from components.parse import (
    _PROJECT,
    _REGION,
    _ZONE,
    _pattern,
    parse_bool,
    parse_bucket,
    parse_choice,
    parse_cidrs,
    parse_domain,
    parse_domains,
    parse_email,
    parse_image,
    parse_int,
    parse_labels,
    parse_machine_type,
    parse_openpgp_public_key,
    parse_relay_host,
    parse_snapshot,
    parse_version,
    parse_window,
)
from components.reader import Reader

TLS_MODES = ("letsencrypt", "internal", "custom")
RELAY_TLS_MODES = {"starttls": "STARTLS", "tls": "TLS", "none": "None"}  # Postal's spelling
SELINUX_MODES = ("enforcing", "permissive")
DMARC_POLICIES = ("none", "quarantine", "reject")


def _int(r: Reader, key: str, low: int, high: int, unit: str) -> int | None:
    """A whole number in low..high; the fix sets the key's default."""
    return r.value(key, parse_int(low, high), f"{unit}, {low}..{high}", f"pulumi config set {key} {r.defaults[key]}")


def _choice(r: Reader, key: str, choices: tuple[str, ...]) -> str | None:
    """One of `choices`; the fix sets the key's default."""
    return r.value(key, parse_choice(choices), " | ".join(choices), f"pulumi config set {key} {r.defaults[key]}")


def gcp(gcp: Reader) -> dict[str, Any]:
    """The provider's gcp:project, gcp:region and gcp:zone."""
    project = gcp.value(
        "project",
        _pattern(_PROJECT, "not a project ID"),
        "a project ID: 6 to 30 lowercase letters, digits and hyphens",
        "pulumi config set gcp:project <project-id>",
        required=True,
    )
    region = gcp.value(
        "region",
        _pattern(_REGION, "not a region name"),
        "a region such as europe-west1",
        "pulumi config set gcp:region europe-west1",
        required=True,
    )
    zone = gcp.value(
        "zone",
        _pattern(_ZONE, "not a zone name"),
        "a zone such as europe-west1-b",
        "pulumi config set gcp:zone europe-west1-b",
        required=True,
    )
    checks.zone_in_region(gcp, zone, region)
    return {"project": project, "region": region, "zone": zone}


def read(r: Reader, stack: str) -> dict[str, Any]:
    """MailConfig's fields from the postal-gateway keys (the TLS pair aside: checks.custom_tls)."""
    v: dict[str, Any] = {"stack": stack}
    # names and who may connect
    v["hostname"] = r.value(
        "hostname",
        parse_domain,
        "a fully qualified domain name such as postal.example.com",
        "pulumi config set hostname postal.example.com",
        required=True,
    )
    v["sending_domains"] = r.value(
        "sendingDomains",
        parse_domains,
        "a non-empty list of domains",
        "pulumi config set --path 'sendingDomains[0]' example.com",
        required=True,
    )
    v["admin_email"] = r.value(
        "adminEmail", parse_email, "an e-mail address", "pulumi config set adminEmail ops@example.com", required=True
    )
    cidr = 'a list of IPv4 CIDR ranges such as ["203.0.113.0/24"]'
    ssh = r.value(
        "sshSourceRanges",
        parse_cidrs,
        cidr,
        "pulumi config set --path 'sshSourceRanges[0]' 203.0.113.7/32, or unset it: SSH through IAP only",
    )
    v["ssh_source_ranges"] = ssh or ()  # unset: 22 only from IAP (components/network.py)
    v["smtp_source_ranges"] = r.value(
        "smtpSourceRanges",
        parse_cidrs,
        cidr,
        "pulumi config set --path 'smtpSourceRanges[0]' 10.0.0.0/8",
        required=True,
    )
    v["bounce_source_ranges"] = r.value(
        "bounceSourceRanges",
        parse_cidrs,
        cidr,
        "pulumi config set --path 'bounceSourceRanges[0]' 209.85.128.0/17 (or unset it: Google's outbound mail ranges)",
    )
    if v["bounce_source_ranges"] is None and r.raw("bounceSourceRanges") is None:
        # Google's outbound mail ranges, pinned and reviewed (components/google_ranges.py)
        v["bounce_source_ranges"] = google_ranges.DEFAULT_BOUNCE_RANGES
    v["web_source_ranges"] = r.value(
        "webSourceRanges",
        parse_cidrs,
        cidr,
        "pulumi config set --path 'webSourceRanges[0]' 203.0.113.0/24 (or unset it: the SMTP and SSH ranges)",
    )
    if v["web_source_ranges"] is None and r.raw("webSourceRanges") is None and v["smtp_source_ranges"]:
        # 443: the networks that already talk to the gateway. Never IAP's range: it forwards only to 22.
        v["web_source_ranges"] = tuple(dict.fromkeys(v["smtp_source_ranges"] + v["ssh_source_ranges"]))
    # the VM and Postal
    v["tls"] = _choice(r, "tls", TLS_MODES)
    v["machine_type"] = r.value(
        "machineType",
        parse_machine_type,
        "a machine type with at least 4 GB, e.g. e2-medium",
        "pulumi config set machineType e2-medium",
    )
    v["boot_disk_size_gb"] = _int(r, "bootDiskSizeGb", 20, 2000, "whole gigabytes")
    v["data_disk_size_gb"] = _int(r, "dataDiskSizeGb", 10, 65536, "whole gigabytes")
    v["snapshot_retention_days"] = _int(r, "snapshotRetentionDays", 1, 3650, "days")
    v["postal_version"] = r.value(
        "postalVersion",
        parse_version,
        "a Postal release X.Y.Z, at least 3.3.1",
        "pulumi config set postalVersion 3.3.6",
    )
    v["relay_host"] = r.value(
        "relayHost",
        parse_relay_host,
        "a DNS name such as smtp-relay.gmail.com",
        "pulumi config set relayHost smtp-relay.gmail.com",
    )
    v["relay_port"] = _int(r, "relayPort", 1, 65535, "a TCP port")
    v["relay_tls"] = _choice(r, "relayTls", tuple(RELAY_TLS_MODES))
    v["selinux"] = _choice(r, "selinux", SELINUX_MODES)
    v["dmarc_policy"] = r.value(
        "dmarcPolicy",
        parse_choice(DMARC_POLICIES),
        "none | quarantine | reject, or unset",
        "pulumi config set dmarcPolicy none, or pulumi config rm dmarcPolicy",
    )
    v["manage_spf"] = r.value("manageSpf", parse_bool, "true or false", "pulumi config set manageSpf true")
    v["labels"] = r.value(
        "labels", parse_labels, "a map of GCP labels", "pulumi config set --path 'labels.team' platform"
    )
    v["data_disk_snapshot"] = r.value(
        "dataDiskSnapshot",
        parse_snapshot,
        "a snapshot name (or projects/<project>/global/snapshots/<name>)",
        "gcloud compute snapshots list; pulumi config set dataDiskSnapshot <name>",
    )
    # operations: alerts, images, maintenance
    v["alert_email"] = (
        r.value("alertEmail", parse_email, "an e-mail address", "pulumi config set alertEmail oncall@example.com")
        or v["admin_email"]
    )
    v["mariadb_image"] = r.value(
        "mariadbImage",
        parse_image,
        "an image reference with a tag, e.g. mariadb:11.4",
        "pulumi config set mariadbImage mariadb:11.4",
    )
    v["caddy_image"] = r.value(
        "caddyImage",
        parse_image,
        "an image reference with a tag, e.g. caddy:2.10",
        "pulumi config set caddyImage caddy:2.10",
    )
    v["maintenance_window"] = r.value(
        "maintenanceWindow",
        parse_window,
        "a weekday and a UTC time such as Sun 02:00",
        "pulumi config set maintenanceWindow 'Sun 02:00'",
    )
    v["disk_alert_percent"] = _int(r, "diskAlertPercent", 50, 99, "a percentage")
    v["queue_latency_alert_seconds"] = _int(r, "queueLatencyAlertSeconds", 10, 86400, "seconds")
    v["relay_failure_alert_count"] = _int(r, "relayFailureAlertCount", 1, 100000, "a count")
    v["worker_error_alert_count"] = _int(r, "workerErrorAlertCount", 1, 100000, "a count")
    v["bounce_rate_alert_percent"] = _int(r, "bounceRateAlertPercent", 1, 100, "a percentage")
    # backups, and what a destroy keeps
    v["backup_retention_days"] = _int(r, "backupRetentionDays", 1, 30, "days")
    v["ephemeral"] = r.value(
        "ephemeral", parse_bool, "true or false", "pulumi config set ephemeral false (true only for e2e stacks)"
    )
    checks.ephemeral_stack(r, v["ephemeral"], stack)
    v["backup_public_key"] = r.value(
        "backupPublicKey",
        parse_openpgp_public_key,
        "an ASCII-armored OpenPGP public key that can encrypt (gpg --armor --export)",
        checks.BACKUP_KEY_FIX,
        required=True,
    )
    v["backup_bucket"] = r.value(
        "backupBucket",
        parse_bucket,
        "the name of an existing Cloud Storage bucket, or unset (the program creates one)",
        "pulumi config set backupBucket <bucket>, or pulumi config rm backupBucket",
    )
    v["backup_lock_days"] = r.value(
        "backupLockDays",
        parse_int(0, 30),
        "days, 0..backupRetentionDays (0: no retention policy, object versioning instead)",
        "pulumi config set backupLockDays 3",
    )
    if v["backup_lock_days"] is None and r.raw("backupLockDays") is None:
        v["backup_lock_days"] = v["backup_retention_days"]  # every backup is locked for its whole life
    checks.backup_lock(r, v["backup_bucket"], v["backup_lock_days"], v["backup_retention_days"])

    # the Cloudflare zone; then the names and the relay, checked across keys
    hostname = v["hostname"]
    zone_fix = "pulumi config set cloudflareZone example.com"
    zone = r.value("cloudflareZone", parse_domain, "a Cloudflare zone name such as example.com", zone_fix)
    if hostname and zone is None and r.raw("cloudflareZone") is None:
        parent = hostname.partition(".")[2]
        if parent.count(".") >= 1:
            zone = parent
        else:
            r.fail("cloudflareZone", f"cannot be derived from hostname {r.show('hostname', hostname)}", zone_fix)
    v["cloudflare_zone"] = zone
    checks.dns_names(r, hostname, zone, v["sending_domains"])
    checks.relay(r, v["relay_host"], v["relay_port"], v["relay_tls"], hostname)
    return v
