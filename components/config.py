"""Typed, validated stack configuration: the contract (every key, its default, the typed
`MailConfig`) and `load`.

`load()` reads every key of the contract (docs/configuration.md), applies the defaults and checks
each value: components/fields.py reads each key with its parser from components/parse.py, and
components/checks.py checks the keys that depend on each other and lists the warnings. All
problems are reported together in one `ConfigError` (a `pulumi.RunError`, so the CLI prints the
message without a traceback) before any resource is registered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pulumi

from components import checks, fields, google_ranges, render

# Re-exported: the program calls config.warnings; tests name BRUTE_FORCE_NOTE and parse_pem here.
from components.checks import BRUTE_FORCE_NOTE as BRUTE_FORCE_NOTE
from components.checks import warnings as warnings
from components.fields import RELAY_TLS_MODES
from components.parse import openpgp_fingerprint
from components.parse import parse_pem as parse_pem
from components.reader import NAMESPACE, Reader

# A new key: add it to KEYS (and DEFAULTS when it has a default), its read to components/fields.py,
# its field to MailConfig, then its Doc in components/config_docs.py.
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
        return self.cloudflare_zone if checks.within(domain, self.cloudflare_zone) else domain

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


def _label_value(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def load(stack: str | None = None) -> MailConfig:
    """Build the validated config, or raise ConfigError listing every problem."""
    r = Reader(NAMESPACE, DEFAULTS)
    r.unknown_keys(KEYS)
    gcp = Reader("gcp")
    place = fields.gcp(gcp)
    values = fields.read(r, stack or pulumi.get_stack())
    pair = checks.custom_tls(r, values["tls"], values["hostname"])

    errors = r.errors + gcp.errors
    if errors:
        raise ConfigError("postal-gateway: invalid configuration\n  - " + "\n  - ".join(errors))

    return MailConfig(
        **place,
        **values,
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
        backup_key_fingerprint=openpgp_fingerprint(values["backup_public_key"]),
    )
