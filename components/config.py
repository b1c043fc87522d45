"""Typed, validated stack configuration.

`load()` reads every key of the config contract (README.md, Configuration), applies the
defaults and checks each value. All problems are reported together in one `ConfigError` (a
`pulumi.RunError`, so the CLI prints the message without a traceback) before any
resource is registered.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from components import certificate, google_ranges, render, units
from components.parse import (
    _PROJECT,
    _REGION,
    _ZONE,
    Invalid,
    _pattern,
    openpgp_fingerprint,
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
    parse_pem,
    parse_relay_host,
    parse_snapshot,
    parse_version,
    parse_window,
)
from policy.netranges import world_open

NAMESPACE = "postal-gateway"

TLS_MODES = ("letsencrypt", "internal", "custom")
RELAY_TLS_MODES = {"starttls": "STARTLS", "tls": "TLS", "none": "None"}  # Postal's spelling
SELINUX_MODES = ("enforcing", "permissive")
DMARC_POLICIES = ("none", "quarantine", "reject")
# RFC 5737 documentation ranges: never anybody's real egress.
DOCUMENTATION_RANGES = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
PRIVATE_RANGES = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))  # RFC 1918
CERT_WARNING_DAYS = 14
BRUTE_FORCE_NOTE = (
    f"the VM refuses an address on port 25 for {units.GUARD_BAN_S // 60} minutes after "
    f"{units.GUARD_FAILURES} failed SMTP AUTH attempts within {units.GUARD_WINDOW_S // 60} minutes "
    "(postal-gateway-guard)"
)
# Stacks that may never be ephemeral (nothing protected, nothing retained).
PRODUCTION_STACKS = ("prod",)
# The backup key committed in the example stack files (Pulumi.prod.yaml, Pulumi.staging.yaml): its
# private key was discarded when it was made, so nobody can ever decrypt backups encrypted to it.
EXAMPLE_BACKUP_KEY = "669ED3CC5B8A6F62C862A9A747E30448D1F4A65E"
# Keys whose values are secret whether or not they were set with --secret.
SECRET_KEYS = ("tlsCertificate", "tlsPrivateKey")

# A new key: add it to KEYS (and here when it has a default), then its Doc in components/config_docs.py.
DEFAULTS: dict[str, Any] = {
    "tls": "letsencrypt",
    "machineType": "e2-medium",
    "bootDiskSizeGb": 20,
    "dataDiskSizeGb": 50,
    "snapshotRetentionDays": 14,
    "postalVersion": "3.3.6",
    "relayHost": "smtp-relay.gmail.com",
    "relayPort": 587,
    "relayTls": "starttls",
    "selinux": "enforcing",
    "manageSpf": True,
    "labels": {},
    "mariadbImage": render.MARIADB_IMAGE,
    "caddyImage": render.CADDY_IMAGE,
    "maintenanceWindow": "Sun 02:00",
    "diskAlertPercent": 80,
    "queueLatencyAlertSeconds": 300,
    "relayFailureAlertCount": 5,
    "workerErrorAlertCount": 5,
    "bounceRateAlertPercent": 5,
    "backupRetentionDays": 3,
    "ephemeral": False,
}
KEYS = (
    "hostname",
    "sendingDomains",
    "cloudflareZone",
    "adminEmail",
    "sshSourceRanges",
    "smtpSourceRanges",
    "bounceSourceRanges",
    "webSourceRanges",
    "tls",
    "tlsCertificate",
    "tlsPrivateKey",
    "machineType",
    "bootDiskSizeGb",
    "dataDiskSizeGb",
    "snapshotRetentionDays",
    "postalVersion",
    "relayHost",
    "relayPort",
    "relayTls",
    "selinux",
    "dmarcPolicy",
    "manageSpf",
    "labels",
    "dataDiskSnapshot",
    "alertEmail",
    "mariadbImage",
    "caddyImage",
    "maintenanceWindow",
    "diskAlertPercent",
    "queueLatencyAlertSeconds",
    "relayFailureAlertCount",
    "workerErrorAlertCount",
    "bounceRateAlertPercent",
    "backupRetentionDays",
    "ephemeral",
    "backupPublicKey",
    "backupBucket",
    "backupLockDays",
)


class ConfigError(pulumi.RunError):
    """Invalid stack configuration; the message names every bad key and its fix."""


@dataclass(frozen=True)
class MailConfig:
    project: str
    region: str
    zone: str
    stack: str
    hostname: str
    sending_domains: tuple[str, ...]
    cloudflare_zone: str
    admin_email: str
    ssh_source_ranges: tuple[str, ...]
    smtp_source_ranges: tuple[str, ...]
    web_source_ranges: tuple[str, ...]
    tls: str
    tls_certificate: pulumi.Output | None
    tls_private_key: pulumi.Output | None
    machine_type: str
    boot_disk_size_gb: int
    data_disk_size_gb: int
    snapshot_retention_days: int
    postal_version: str
    relay_host: str
    relay_port: int
    relay_tls: str
    selinux: str
    dmarc_policy: str | None
    manage_spf: bool
    labels: tuple[tuple[str, str], ...]
    data_disk_snapshot: str | None = None  # restore: the data disk is (re)created from this snapshot
    alert_email: str = ""  # Cloud Monitoring notifications (default adminEmail)
    mariadb_image: str = render.MARIADB_IMAGE
    caddy_image: str = render.CADDY_IMAGE
    maintenance_window: str = "Sun 02:00"  # "<Day> HH:MM" UTC: reboots for updates
    disk_alert_percent: int = 80
    queue_latency_alert_seconds: int = 300
    relay_failure_alert_count: int = 5  # per monitoring.ALERT_WINDOW
    worker_error_alert_count: int = 5  # per monitoring.ALERT_WINDOW
    bounce_rate_alert_percent: int = 5  # bounces received per message sent, over monitoring.BOUNCE_WINDOW
    backup_retention_days: int = 3  # on the data disk, and in the backup bucket (lifecycle deletion)
    backup_public_key: str = ""  # armored OpenPGP public key the VM encrypts its backups to
    backup_key_fingerprint: str = ""
    backup_bucket: str | None = None  # an existing bucket (any project); unset = the program creates one
    backup_lock_days: int = 3  # the created bucket's retention policy; 0 = none (object versioning instead)
    # who may deliver bounces on port 25: Google's outbound mail ranges (components/google_ranges.py)
    bounce_source_ranges: tuple[str, ...] = google_ranges.DEFAULT_BOUNCE_RANGES
    ephemeral: bool = False  # throwaway stack (scripts/e2e.py): static IP and data disk neither protected nor retained
    tls_certificate_expires: datetime | None = None  # tls=custom: the leaf's notAfter
    tls_chain_incomplete: bool = False  # tls=custom: a CA-issued leaf without its issuer
    tls_self_signed: bool = False  # tls=custom: a leaf that is its own issuer
    secret_keys: frozenset = frozenset()  # keys whose values no message may show

    @property
    def relay_url(self) -> str:
        """The `postal.smtp_relays` entry, in the form Postal parses."""
        return f"smtp://{self.relay_host}:{self.relay_port}?ssl_mode={RELAY_TLS_MODES[self.relay_tls]}"

    @property
    def spf_include(self) -> str:
        return render.derived_names(self.hostname)["spf"]

    @property
    def return_path_domain(self) -> str:
        return render.derived_names(self.hostname)["rp"]

    def zone_for(self, domain: str) -> str:
        """Cloudflare zone holding `domain`: cloudflareZone, or the zone named like the domain."""
        return self.cloudflare_zone if _within(domain, self.cloudflare_zone) else domain

    @property
    def zones(self) -> tuple[str, ...]:
        names = [self.cloudflare_zone] + [self.zone_for(d) for d in self.sending_domains]
        return tuple(dict.fromkeys(names))

    def redact(self, text: str) -> str:
        """`text` with the DNS names set as secrets (and the zone derived from them) replaced by their key."""
        names = {}
        if "sendingDomains" in self.secret_keys:
            names.update({d: f"<sendingDomains[{i}]>" for i, d in enumerate(self.sending_domains)})
        if {"hostname", "cloudflareZone"} & self.secret_keys:
            names[self.cloudflare_zone] = "<cloudflareZone>"
        if "hostname" in self.secret_keys:
            names[self.hostname] = "<hostname>"
        for name in sorted(names, key=len, reverse=True):
            text = re.sub(re.escape(name), names[name], text, flags=re.IGNORECASE)
        return text

    @property
    def gcp_labels(self) -> dict[str, str]:
        labels = {"app": "postal-gateway", "stack": _label_value(self.stack), **dict(self.labels)}
        # the policy pack admits an unprotected static IP or data disk only with this label, off production
        return {**labels, "ephemeral": "true"} if self.ephemeral else labels


def _within(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _label_value(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


class _Reader:
    """Reads raw values and collects one message per bad key; secret values are never shown."""

    def __init__(self, namespace: str = NAMESPACE):
        self.namespace = namespace
        self.errors: list[str] = []

    def key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def raw(self, key: str) -> str | None:
        value = runtime_config.get_config(self.key(key))
        return None if value is None or value == "" else str(value)

    def secret(self, key: str) -> bool:
        return (self.namespace == NAMESPACE and key in SECRET_KEYS) or runtime_config.is_config_secret(self.key(key))

    def show(self, key: str, value: Any) -> str:
        """`value` as a message may show it: quoted, or only the key's name when it is secret."""
        return f"the secret {key}" if self.secret(key) else repr(value)

    def fail(self, key: str, message: str, fix: str) -> None:
        self.errors.append(f"{self.key(key)}: {message}. Fix: {fix}")

    def value(self, key: str, parse: Callable[[Any], Any], expected: str, fix: str, required: bool = False) -> Any:
        raw = self.raw(key)
        if raw is None:
            if required:
                self.fail(key, f"is required ({expected})", fix)
                return None
            default = DEFAULTS.get(key)
            if default is None:
                return None
            raw = json.dumps(default) if isinstance(default, (list, dict, bool)) else str(default)
        try:
            return parse(raw)
        except ValueError as err:
            problem, item = (err.problem, err.item) if isinstance(err, Invalid) else (str(err), None)
            if self.secret(key):
                self.fail(key, f"the secret value is not valid ({problem}); expected {expected}", fix)
            else:
                detail = f"{item!r}: {problem}" if item is not None and str(item) != raw else problem
                self.fail(key, f"{raw!r} is not valid ({detail}); expected {expected}", fix)
            return None


def _unknown_keys(reader: _Reader) -> None:
    names = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = reader.namespace + ":"
    for name in sorted(n for n in names if n.startswith(prefix)):
        key = name[len(prefix) :]
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(KEYS)}"
            reader.fail(key, "is not a postal-gateway setting", f"{hint} (pulumi config rm {name})")


def load(stack: str | None = None) -> MailConfig:
    """Build the validated config, or raise ConfigError listing every problem."""
    r = _Reader()
    _unknown_keys(r)
    gcp = _Reader("gcp")
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
    if zone and region and _ZONE.fullmatch(zone).group(1) != region:
        gcp.fail(
            "zone",
            f"{gcp.show('zone', zone)} is not a zone of region {gcp.show('region', region)}",
            "use <region>-<letter>, e.g. europe-west1-b",
        )

    hostname = r.value(
        "hostname",
        parse_domain,
        "a fully qualified domain name such as postal.example.com",
        "pulumi config set hostname postal.example.com",
        required=True,
    )
    domains = r.value(
        "sendingDomains",
        parse_domains,
        "a non-empty list of domains",
        "pulumi config set --path 'sendingDomains[0]' example.com",
        required=True,
    )
    email = r.value(
        "adminEmail", parse_email, "an e-mail address", "pulumi config set adminEmail ops@example.com", required=True
    )
    cidr = 'a list of IPv4 CIDR ranges such as ["203.0.113.0/24"]'
    ssh = r.value(
        "sshSourceRanges",
        parse_cidrs,
        cidr,
        "pulumi config set --path 'sshSourceRanges[0]' 203.0.113.7/32, or unset it: SSH through IAP only",
    )
    smtp = r.value(
        "smtpSourceRanges",
        parse_cidrs,
        cidr,
        "pulumi config set --path 'smtpSourceRanges[0]' 10.0.0.0/8",
        required=True,
    )
    bounce = r.value(
        "bounceSourceRanges",
        parse_cidrs,
        cidr,
        "pulumi config set --path 'bounceSourceRanges[0]' 209.85.128.0/17 (or unset it: Google's outbound mail ranges)",
    )
    if bounce is None and r.raw("bounceSourceRanges") is None:
        bounce = google_ranges.DEFAULT_BOUNCE_RANGES  # pinned, reviewed (components/google_ranges.py)
    web = r.value(
        "webSourceRanges",
        parse_cidrs,
        cidr,
        "pulumi config set --path 'webSourceRanges[0]' 203.0.113.0/24 (or unset it: the SMTP and SSH ranges)",
    )
    if web is None and r.raw("webSourceRanges") is None and smtp:
        # 443: the networks that already talk to the gateway. Never IAP's range: it forwards only to 22.
        web = tuple(dict.fromkeys(smtp + (ssh or ())))
    tls = r.value("tls", parse_choice(TLS_MODES), " | ".join(TLS_MODES), "pulumi config set tls letsencrypt")
    machine = r.value(
        "machineType",
        parse_machine_type,
        "a machine type with at least 4 GB, e.g. e2-medium",
        "pulumi config set machineType e2-medium",
    )
    boot = r.value(
        "bootDiskSizeGb", parse_int(20, 2000), "whole gigabytes, 20..2000", "pulumi config set bootDiskSizeGb 20"
    )
    data = r.value(
        "dataDiskSizeGb", parse_int(10, 65536), "whole gigabytes, 10..65536", "pulumi config set dataDiskSizeGb 50"
    )
    retention = r.value(
        "snapshotRetentionDays", parse_int(1, 3650), "days, 1..3650", "pulumi config set snapshotRetentionDays 14"
    )
    version = r.value(
        "postalVersion",
        parse_version,
        "a Postal release X.Y.Z, at least 3.3.1",
        "pulumi config set postalVersion 3.3.6",
    )
    relay_host = r.value(
        "relayHost",
        parse_relay_host,
        "a DNS name such as smtp-relay.gmail.com",
        "pulumi config set relayHost smtp-relay.gmail.com",
    )
    relay_port = r.value("relayPort", parse_int(1, 65535), "a TCP port, 1..65535", "pulumi config set relayPort 587")
    relay_tls = r.value(
        "relayTls", parse_choice(tuple(RELAY_TLS_MODES)), "starttls | tls | none", "pulumi config set relayTls starttls"
    )
    selinux = r.value(
        "selinux", parse_choice(SELINUX_MODES), "enforcing | permissive", "pulumi config set selinux enforcing"
    )
    dmarc = r.value(
        "dmarcPolicy",
        parse_choice(DMARC_POLICIES),
        "none | quarantine | reject, or unset",
        "pulumi config set dmarcPolicy none, or pulumi config rm dmarcPolicy",
    )
    manage_spf = r.value("manageSpf", parse_bool, "true or false", "pulumi config set manageSpf true")
    labels = r.value("labels", parse_labels, "a map of GCP labels", "pulumi config set --path 'labels.team' platform")
    snapshot = r.value(
        "dataDiskSnapshot",
        parse_snapshot,
        "a snapshot name (or projects/<project>/global/snapshots/<name>)",
        "gcloud compute snapshots list; pulumi config set dataDiskSnapshot <name>",
    )

    alert_email = r.value(
        "alertEmail", parse_email, "an e-mail address", "pulumi config set alertEmail oncall@example.com"
    )
    mariadb_image = r.value(
        "mariadbImage",
        parse_image,
        "an image reference with a tag, e.g. mariadb:11.4",
        "pulumi config set mariadbImage mariadb:11.4",
    )
    caddy_image = r.value(
        "caddyImage",
        parse_image,
        "an image reference with a tag, e.g. caddy:2.10",
        "pulumi config set caddyImage caddy:2.10",
    )
    window = r.value(
        "maintenanceWindow",
        parse_window,
        "a weekday and a UTC time such as Sun 02:00",
        "pulumi config set maintenanceWindow 'Sun 02:00'",
    )
    disk_alert = r.value(
        "diskAlertPercent", parse_int(50, 99), "a percentage, 50..99", "pulumi config set diskAlertPercent 80"
    )
    latency_alert = r.value(
        "queueLatencyAlertSeconds",
        parse_int(10, 86400),
        "seconds, 10..86400",
        "pulumi config set queueLatencyAlertSeconds 300",
    )
    relay_alert = r.value(
        "relayFailureAlertCount",
        parse_int(1, 100000),
        "a count, 1..100000",
        "pulumi config set relayFailureAlertCount 5",
    )
    worker_alert = r.value(
        "workerErrorAlertCount", parse_int(1, 100000), "a count, 1..100000", "pulumi config set workerErrorAlertCount 5"
    )
    bounce_alert = r.value(
        "bounceRateAlertPercent",
        parse_int(1, 100),
        "a percentage, 1..100",
        "pulumi config set bounceRateAlertPercent 5",
    )
    backup_days = r.value(
        "backupRetentionDays", parse_int(1, 30), "days, 1..30", "pulumi config set backupRetentionDays 3"
    )
    ephemeral = r.value(
        "ephemeral", parse_bool, "true or false", "pulumi config set ephemeral false (true only for e2e stacks)"
    )
    stack = stack or pulumi.get_stack()
    if ephemeral and stack in PRODUCTION_STACKS:
        r.fail(
            "ephemeral",
            f"is true on stack {stack!r}: production's static IP and data disk must stay protected and retained",
            "pulumi config rm ephemeral (ephemeral is for throwaway stacks such as scripts/e2e.py's e2e-<id>)",
        )
    backup_key, backup_bucket, lock_days = _backup(r, backup_days)

    zone_fix = "pulumi config set cloudflareZone example.com"
    cf_zone = r.value("cloudflareZone", parse_domain, "a Cloudflare zone name such as example.com", zone_fix)
    if hostname and cf_zone is None and r.raw("cloudflareZone") is None:
        parent = hostname.partition(".")[2]
        if parent.count(".") >= 1:
            cf_zone = parent
        else:
            r.fail("cloudflareZone", f"cannot be derived from hostname {r.show('hostname', hostname)}", zone_fix)
    if hostname and cf_zone and not _within(hostname, cf_zone):
        r.fail(
            "cloudflareZone",
            f"{r.show('cloudflareZone', cf_zone)} does not contain hostname {r.show('hostname', hostname)}",
            zone_fix,
        )
    if hostname and domains:
        _check_names(r, hostname, domains)
    if relay_tls and relay_port:
        _check_relay(r, relay_tls, relay_port)
    if relay_host and relay_host == hostname:
        r.fail(
            "relayHost", "is hostname: Postal would relay to itself", "pulumi config set relayHost smtp-relay.gmail.com"
        )

    pair = _custom_tls(r, tls, hostname)

    errors = r.errors + gcp.errors
    if errors:
        raise ConfigError("postal-gateway: invalid configuration\n  - " + "\n  - ".join(errors))

    return MailConfig(
        project=project,
        region=region,
        zone=zone,
        stack=stack,
        hostname=hostname,
        sending_domains=domains,
        cloudflare_zone=cf_zone,
        admin_email=email,
        ssh_source_ranges=ssh or (),
        smtp_source_ranges=smtp,
        web_source_ranges=web,
        tls=tls,
        tls_certificate=pulumi.Output.secret(pair[0].chain_pem) if pair else None,
        tls_private_key=pulumi.Output.secret(pair[1]) if pair else None,
        tls_certificate_expires=pair[0].expires if pair else None,
        tls_chain_incomplete=bool(pair and pair[0].incomplete),
        tls_self_signed=bool(pair and pair[0].self_signed),
        secret_keys=frozenset(k for k in KEYS if r.secret(k))
        | (  # a default web range is an SSH or SMTP one
            {"webSourceRanges"}
            if r.raw("webSourceRanges") is None and (r.secret("sshSourceRanges") or r.secret("smtpSourceRanges"))
            else set()
        ),
        machine_type=machine,
        boot_disk_size_gb=boot,
        data_disk_size_gb=data,
        snapshot_retention_days=retention,
        postal_version=version,
        relay_host=relay_host,
        relay_port=relay_port,
        relay_tls=relay_tls,
        selinux=selinux,
        dmarc_policy=dmarc,
        manage_spf=manage_spf,
        labels=labels,
        data_disk_snapshot=snapshot,
        alert_email=alert_email or email,
        mariadb_image=mariadb_image,
        caddy_image=caddy_image,
        maintenance_window=window,
        disk_alert_percent=disk_alert,
        queue_latency_alert_seconds=latency_alert,
        relay_failure_alert_count=relay_alert,
        worker_error_alert_count=worker_alert,
        backup_retention_days=backup_days,
        bounce_source_ranges=bounce,
        bounce_rate_alert_percent=bounce_alert,
        ephemeral=ephemeral,
        backup_public_key=backup_key,
        backup_key_fingerprint=openpgp_fingerprint(backup_key),
        backup_bucket=backup_bucket,
        backup_lock_days=lock_days,
    )


BACKUP_KEY_FIX = (
    "generate a key pair on an operator machine, never on the VM: gpg --quick-gen-key "
    "'postal-gateway backups <you@example.com>' default default never; then pulumi config set backupPublicKey -- "
    '"$(gpg --armor --export <fingerprint>)" and keep the private key offline (docs/operations.md#backups)'
)


def _backup(r: _Reader, retention: int | None) -> tuple[str | None, str | None, int | None]:
    """The backup key, the existing bucket (or None) and the created bucket's retention-policy days."""
    key = r.value(
        "backupPublicKey",
        parse_openpgp_public_key,
        "an ASCII-armored OpenPGP public key that can encrypt (gpg --armor --export)",
        BACKUP_KEY_FIX,
        required=True,
    )
    bucket = r.value(
        "backupBucket",
        parse_bucket,
        "the name of an existing Cloud Storage bucket, or unset (the program creates one)",
        "pulumi config set backupBucket <bucket>, or pulumi config rm backupBucket",
    )
    lock = r.value(
        "backupLockDays",
        parse_int(0, 30),
        "days, 0..backupRetentionDays (0: no retention policy, object versioning instead)",
        "pulumi config set backupLockDays 3",
    )
    if bucket is not None and r.raw("backupLockDays") is not None:
        r.fail(
            "backupLockDays",
            "only applies to the bucket the program creates; an existing backupBucket keeps its own policy",
            "pulumi config rm backupLockDays",
        )
    if lock is None and r.raw("backupLockDays") is None:
        lock = retention  # every backup is locked for its whole life
    if lock is not None and retention is not None and lock > retention:
        r.fail(
            "backupLockDays",
            f"{r.show('backupLockDays', lock)} is longer than backupRetentionDays "
            f"({r.show('backupRetentionDays', retention)}): the lifecycle rule could not delete a "
            "backup that the retention policy still locks",
            f"pulumi config set backupLockDays {retention}, or raise backupRetentionDays",
        )
    return key, bucket, lock


def _check_names(r: _Reader, hostname: str, domains: tuple[str, ...]) -> None:
    """Names that would collide in DNS or in Postal."""
    host = r.show("hostname", hostname)
    if hostname in domains:
        r.fail(
            "hostname",
            f"{host} is also a sending domain: its A record and Postal's web host would share the domain's name",
            "use a host under the domain, e.g. pulumi config set hostname postal.<domain>",
        )
    if any(hostname == render.custom_return_path(d) for d in domains):
        r.fail(
            "hostname",
            f"{host} is the return-path name (psrp.<domain>) of a sending domain",
            "pulumi config set hostname postal.<domain>",
        )
    taken = {
        name: f"the {prefix}. name Postal derives from hostname"
        for prefix, name in render.derived_names(hostname).items()
    }  # no sending domain may take them
    taken.update(
        {
            render.custom_return_path(d): "the return-path name (psrp.<domain>) of another sending domain"
            for d in domains
        }
    )
    for domain in domains:
        if domain in taken:
            r.fail(
                "sendingDomains",
                f"{r.show('sendingDomains', domain)} is {taken[domain]}",
                "remove it from sendingDomains (pulumi config set --path 'sendingDomains[N]' …), "
                "or choose another hostname",
            )


def _check_relay(r: _Reader, relay_tls: str, relay_port: int) -> None:
    """Implicit TLS listens on 465, STARTTLS on 587 (RFC 8314): the other pairings never connect."""
    port, mode = r.show("relayPort", relay_port), r.show("relayTls", relay_tls)
    if relay_tls == "tls" and relay_port == 587:
        r.fail(
            "relayPort",
            f"{port} is the STARTTLS port, but relayTls is {mode} (implicit TLS, port 465)",
            "pulumi config set relayTls starttls, or pulumi config set relayPort 465",
        )
    if relay_tls in ("starttls", "none") and relay_port == 465:
        r.fail(
            "relayPort",
            f"{port} is the implicit TLS port, but relayTls is {mode} (a plain connection)",
            "pulumi config set relayPort 587, or pulumi config set relayTls tls",
        )


def _custom_tls(r: _Reader, tls: str | None, hostname: str | None) -> tuple | None:
    """tls=custom: (checked chain, key PEM); otherwise the PEM keys must be unset."""
    names = certificate.CERT, certificate.KEY
    if tls != "custom":
        for name in names:
            if r.raw(name) is not None:
                r.fail(
                    name,
                    f"is only used with tls=custom (tls is {r.show('tls', tls)})",
                    f"pulumi config rm {name}, or pulumi config set tls custom",
                )
        return None
    fix = "pulumi config set --secret tlsCertificate < fullchain.pem (and tlsPrivateKey < key.pem)"
    chain = r.value(names[0], parse_pem("CERTIFICATE"), "a PEM certificate chain", fix, required=True)
    key = r.value(names[1], parse_pem("PRIVATE KEY"), "a PEM private key", fix, required=True)
    for name in names:
        if r.raw(name) is not None and not runtime_config.is_config_secret(r.key(name)):
            r.fail(name, "is stored in plain text", f"pulumi config set --secret {name} < file.pem")
    if not (chain and key and hostname):
        return None
    pair, problems = certificate.check_pair(chain, key, hostname, datetime.now(UTC), r.show("hostname", hostname))
    for name, problem, *own_fix in problems:
        r.fail(
            name,
            problem,
            own_fix[0]
            if own_fix
            else f"{fix}, with a certificate for hostname and its own key, leaf first then intermediates",
        )
    return (pair, key) if pair else None


def warnings(cfg: MailConfig, now: datetime | None = None) -> list[str]:
    """Legal but risky settings, logged as warnings by the program (never showing a secret value)."""
    notes = []
    ranges_by_key = (
        ("sshSourceRanges", "22 (SSH)", cfg.ssh_source_ranges),
        ("smtpSourceRanges", "25 (SMTP)", cfg.smtp_source_ranges),
        ("webSourceRanges", "443 (Postal's web UI and API)", cfg.web_source_ranges),
        ("bounceSourceRanges", "25 (SMTP, for bounces)", cfg.bounce_source_ranges),
    )
    for name, port, ranges in ranges_by_key:
        hidden = name in cfg.secret_keys
        if world_open(ranges) and name in ("smtpSourceRanges", "bounceSourceRanges"):
            notes.append(
                f"{NAMESPACE}:{name} opens port {port} to the whole Internet ("
                f"{'its ranges' if hidden else ', '.join(world_open(ranges))} cover most of it): Postal offers "
                "SMTP AUTH to every client, before STARTTLS too, so anyone may try to guess the SMTP password "
                f"(and read it in clear from a client that skips STARTTLS); {BRUTE_FORCE_NOTE}. Bounces need only "
                "Google's outbound mail ranges: pulumi config rm bounceSourceRanges"
            )
        elif world_open(ranges):
            notes.append(
                f"{NAMESPACE}:{name} opens port {port} to the whole Internet ("
                f"{'its ranges' if hidden else ', '.join(world_open(ranges))} cover most of it); "
                "narrow it to the networks that need it"
            )
        documentation = [r for r in ranges if any(ipaddress.ip_network(r).subnet_of(d) for d in DOCUMENTATION_RANGES)]
        if documentation:
            notes.append(
                f"{NAMESPACE}:{name} lists RFC 5737 documentation addresses"
                f"{'' if hidden else ' (' + ', '.join(documentation) + ')'}, which are nobody's real "
                "address: replace them with your real egress range"
            )
    public = [r for r in cfg.ssh_source_ranges if not any(ipaddress.ip_network(r).subnet_of(p) for p in PRIVATE_RANGES)]
    if public:
        shown = "" if "sshSourceRanges" in cfg.secret_keys else f" ({', '.join(public)})"
        notes.append(
            f"{NAMESPACE}:sshSourceRanges opens port 22 to public addresses{shown} besides IAP's range: "
            "pulumi up and operators reach the VM through IAP (gcloud compute ssh --tunnel-through-iap), "
            "so keep it only if something must SSH directly (pulumi config rm sshSourceRanges)"
        )
    if not any(_within(cfg.hostname, d) for d in cfg.sending_domains):
        host = "" if "hostname" in cfg.secret_keys else f" {cfg.hostname}"
        notes.append(
            f"{NAMESPACE}:hostname{host} is not under a sending domain; Google identifies "
            "the relay customer by HELO, so it must sit under the Workspace primary domain"
        )
    if cfg.tls_certificate_expires is not None:
        left = cfg.tls_certificate_expires - (now or datetime.now(UTC))
        if left < timedelta(days=CERT_WARNING_DAYS):
            notes.append(
                f"{NAMESPACE}:tlsCertificate expires on {cfg.tls_certificate_expires:%Y-%m-%d} "
                f"(in {max(left.days, 0)} days): renew it and set it again with pulumi config set "
                "--secret tlsCertificate < fullchain.pem"
            )
    if cfg.relay_port == 25:
        notes.append(
            f"{NAMESPACE}:relayPort 25: Google Cloud blocks connections to port 25 of external addresses, "
            "so only a relay inside the VPC answers there; the Workspace relay listens on 587"
        )
    if cfg.tls_chain_incomplete:
        notes.append(
            f"{NAMESPACE}:tlsCertificate holds the server certificate without its issuer: clients that "
            "lack the intermediate certificate fail; set the full chain (fullchain.pem)"
        )
    if cfg.tls_self_signed:
        notes.append(
            f"{NAMESPACE}:tlsCertificate is self-signed: every client must be told to trust it; "
            "use a CA-issued certificate, or tls internal (Caddy's own CA)"
        )
    if cfg.relay_tls == "none":
        notes.append(f"{NAMESPACE}:relayTls none sends mail to the relay in plain text")
    if cfg.backup_key_fingerprint == EXAMPLE_BACKUP_KEY:
        notes.append(
            f"{NAMESPACE}:backupPublicKey is the example key from the committed stack files: nobody holds its "
            "private key, so no backup encrypted to it can ever be restored; " + BACKUP_KEY_FIX
        )
    return notes
