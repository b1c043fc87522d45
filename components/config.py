"""Typed, validated stack configuration.

`load()` reads every key of the config contract (README.md, Configuration), applies the
defaults and checks each value. All problems are reported together in one `ConfigError` (a
`pulumi.RunError`, so the CLI prints the message without a traceback) before any
resource is registered.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pulumi
from pulumi.runtime import config as runtime_config

from policy.netranges import world_open

NAMESPACE = "postal-gateway"

TLS_MODES = ("letsencrypt", "internal", "custom")
RELAY_TLS_MODES = {"starttls": "STARTLS", "tls": "TLS", "none": "None"}  # Postal's spelling
SELINUX_MODES = ("enforcing", "permissive")
DMARC_POLICIES = ("none", "quarantine", "reject")
MIN_POSTAL_VERSION = (3, 3, 1)  # smtp_relays were broken before 3.3.1
# Machine types with less than the 4 GB Postal needs.
SMALL_MACHINE_TYPES = frozenset({
    "e2-micro", "e2-small", "f1-micro", "g1-small", "e2-highcpu-2", "n1-standard-1",
    "n1-highcpu-2", "n1-highcpu-4", "n2-highcpu-2", "n2d-highcpu-2",
})

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
}
KEYS = (
    "hostname", "sendingDomains", "cloudflareZone", "adminEmail", "sshSourceRanges",
    "smtpSourceRanges", "webSourceRanges", "tls", "tlsCertificate", "tlsPrivateKey",
    "machineType", "bootDiskSizeGb", "dataDiskSizeGb", "snapshotRetentionDays", "postalVersion",
    "relayHost", "relayPort", "relayTls", "selinux", "dmarcPolicy", "manageSpf", "labels",
    "dataDiskSnapshot",
)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9-]+$")
_CUSTOM_MACHINE = re.compile(r"^(?:[a-z0-9]+-)?custom-(\d+)-(\d+)(?:-ext)?$")
_GCP_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_GCP_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_ZONE = re.compile(r"^([a-z]+-[a-z]+\d+)-[a-z]$")
_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END \1-----")


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
    tls_certificate: Optional[pulumi.Output]
    tls_private_key: Optional[pulumi.Output]
    machine_type: str
    boot_disk_size_gb: int
    data_disk_size_gb: int
    snapshot_retention_days: int
    postal_version: str
    relay_host: str
    relay_port: int
    relay_tls: str
    selinux: str
    dmarc_policy: Optional[str]
    manage_spf: bool
    labels: tuple[tuple[str, str], ...]
    data_disk_snapshot: Optional[str] = None  # restore: the data disk is (re)created from this snapshot

    @property
    def relay_url(self) -> str:
        """The `postal.smtp_relays` entry, in the form Postal parses."""
        return f"smtp://{self.relay_host}:{self.relay_port}?ssl_mode={RELAY_TLS_MODES[self.relay_tls]}"

    @property
    def spf_include(self) -> str:
        return f"spf.{self.hostname}"

    @property
    def return_path_domain(self) -> str:
        return f"rp.{self.hostname}"

    def zone_for(self, domain: str) -> str:
        """Cloudflare zone holding `domain`: cloudflareZone, or the zone named like the domain."""
        return self.cloudflare_zone if _within(domain, self.cloudflare_zone) else domain

    @property
    def zones(self) -> tuple[str, ...]:
        names = [self.cloudflare_zone] + [self.zone_for(d) for d in self.sending_domains]
        return tuple(dict.fromkeys(names))

    @property
    def gcp_labels(self) -> dict[str, str]:
        return {"app": "postal-gateway", "stack": _label_value(self.stack), **dict(self.labels)}


def _within(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _label_value(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


class _Reader:
    """Reads raw values and collects one message per bad key."""

    def __init__(self, namespace: str = NAMESPACE):
        self.namespace = namespace
        self.errors: list[str] = []

    def key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def raw(self, key: str) -> Optional[str]:
        value = runtime_config.get_config(self.key(key))
        return None if value is None or value == "" else str(value)

    def fail(self, key: str, message: str, fix: str) -> None:
        self.errors.append(f"{self.key(key)}: {message}. Fix: {fix}")

    def value(self, key: str, parse: Callable[[Any], Any], expected: str, fix: str,
              required: bool = False) -> Any:
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
            detail = f" ({err})" if str(err) else ""
            self.fail(key, f"{raw!r} is not valid{detail}; expected {expected}", fix)
            return None


def _json(raw: str, kind: type) -> Any:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw if kind is str else None
    if not isinstance(value, kind):
        raise ValueError(f"not a {kind.__name__}")
    return value


def parse_domain(raw: str) -> str:
    name = raw.strip().lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError("not a fully qualified domain name")
    if not re.match(r"^[a-z][a-z0-9-]*[a-z0-9]$", labels[-1]):
        raise ValueError("the top-level label must be alphabetic")
    return name


def parse_domains(raw: str) -> tuple[str, ...]:
    items = _json(raw, list)
    if not items:
        raise ValueError("the list is empty")
    domains = tuple(parse_domain(str(item)) for item in items)
    if len(set(domains)) != len(domains):
        raise ValueError("a domain is listed twice")
    return domains


def parse_email(raw: str) -> str:
    local, sep, domain = raw.strip().rpartition("@")
    if not sep or not _EMAIL_LOCAL.match(local) or local.startswith(".") or ".." in local:
        raise ValueError("not an e-mail address")
    return f"{local}@{parse_domain(domain)}"


def parse_cidrs(raw: str) -> tuple[str, ...]:
    items = _json(raw, list)
    if not items:
        raise ValueError("the list is empty")
    ranges = []
    for item in items:
        try:
            network = ipaddress.ip_network(str(item).strip(), strict=True)
        except ValueError as err:
            raise ValueError(str(err)) from None
        if network.version != 4:
            raise ValueError(f"{item} is IPv6; the VM has no IPv6 address")
        ranges.append(str(network))
    return tuple(dict.fromkeys(ranges))


def parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = _json(raw, int)
        if isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"outside {low}..{high}")
        return value
    return parse


def parse_choice(choices) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return value
    return parse


def parse_bool(raw: str) -> bool:
    value = str(raw).strip().lower()
    if value not in ("true", "false"):
        raise ValueError("not true or false")
    return value == "true"


def parse_version(raw: str) -> str:
    match = _VERSION.match(raw.strip())
    if not match:
        raise ValueError("not X.Y.Z")
    if tuple(int(part) for part in match.groups()) < MIN_POSTAL_VERSION:
        raise ValueError("Postal's smtp_relays work from 3.3.1 on")
    return raw.strip()


def parse_machine_type(raw: str) -> str:
    value = raw.strip()
    if not _MACHINE_TYPE.match(value):
        raise ValueError("not a Compute Engine machine type")
    custom = _CUSTOM_MACHINE.match(value)
    if value in SMALL_MACHINE_TYPES or (custom and int(custom.group(2)) < 4096):
        raise ValueError("less than the 4 GB of memory Postal needs")
    return value


def parse_relay_host(raw: str) -> str:
    try:
        ipaddress.ip_address(raw.strip())
    except ValueError:
        return parse_domain(raw)
    raise ValueError("an IP address; Postal resolves the relay by DNS name")


def parse_labels(raw: str) -> tuple[tuple[str, str], ...]:
    labels = _json(raw, dict)
    for key, value in labels.items():
        if not _GCP_LABEL_KEY.match(str(key)) or not _GCP_LABEL_VALUE.match(str(value)):
            raise ValueError(f"label {key}={value} breaks GCP's rules (lowercase letters, digits, _ and -)")
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


_SNAPSHOT = re.compile(r"^(projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/global/snapshots/)?[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def parse_snapshot(raw: str) -> str:
    if not _SNAPSHOT.match(raw.strip()):
        raise ValueError(f"{raw!r} is not a snapshot name")
    return raw.strip()


def parse_pem(kind: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        blocks = _PEM.findall(raw)
        if not blocks or not all(label.endswith(kind) for label, _ in blocks):
            raise ValueError(f"no PEM {kind} block")
        for _, body in blocks:
            try:
                base64.b64decode("".join(body.split()), validate=True)
            except binascii.Error:
                raise ValueError("the PEM body is not base64") from None
        return raw.strip() + "\n"
    return parse


def _unknown_keys(reader: _Reader) -> None:
    names = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = reader.namespace + ":"
    for name in sorted(n for n in names if n.startswith(prefix)):
        key = name[len(prefix):]
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(KEYS)}"
            reader.fail(key, "is not a postal-gateway setting", f"{hint} (pulumi config rm {name})")


def load(stack: Optional[str] = None) -> MailConfig:
    """Build the validated config, or raise ConfigError listing every problem."""
    r = _Reader()
    _unknown_keys(r)
    gcp = _Reader("gcp")
    project = gcp.raw("project")
    if project is None:
        gcp.fail("project", "is required", "pulumi config set gcp:project <project-id>")
    region = gcp.raw("region")
    if region is None:
        gcp.fail("region", "is required", "pulumi config set gcp:region europe-west1")
    zone = gcp.raw("zone")
    zone_match = _ZONE.match(zone or "")
    if zone is None:
        gcp.fail("zone", "is required", "pulumi config set gcp:zone europe-west1-b")
    elif not zone_match or (region and zone_match.group(1) != region):
        gcp.fail("zone", f"{zone!r} is not a zone of region {region!r}", "use <region>-<letter>, e.g. europe-west1-b")

    hostname = r.value("hostname", parse_domain, "a fully qualified domain name such as postal.example.com",
                       "pulumi config set hostname postal.example.com", required=True)
    domains = r.value("sendingDomains", parse_domains, "a non-empty list of domains",
                      "pulumi config set --path 'sendingDomains[0]' example.com", required=True)
    email = r.value("adminEmail", parse_email, "an e-mail address",
                    "pulumi config set adminEmail ops@example.com", required=True)
    cidr = "a list of IPv4 CIDR ranges such as [\"203.0.113.0/24\"]"
    ssh = r.value("sshSourceRanges", parse_cidrs, cidr,
                  "pulumi config set --path 'sshSourceRanges[0]' 203.0.113.7/32 (the machine running pulumi up)",
                  required=True)
    smtp = r.value("smtpSourceRanges", parse_cidrs, cidr,
                   "pulumi config set --path 'smtpSourceRanges[0]' 10.0.0.0/8", required=True)
    web = r.value("webSourceRanges", parse_cidrs, cidr,
                  "pulumi config set --path 'webSourceRanges[0]' 203.0.113.0/24 (or unset it: the SMTP and SSH ranges)")
    if web is None and r.raw("webSourceRanges") is None and smtp and ssh:
        web = tuple(dict.fromkeys(smtp + ssh))  # 443: the networks that already talk to the gateway
    tls = r.value("tls", parse_choice(TLS_MODES), " | ".join(TLS_MODES), "pulumi config set tls letsencrypt")
    machine = r.value("machineType", parse_machine_type, "a machine type with at least 4 GB, e.g. e2-medium",
                      "pulumi config set machineType e2-medium")
    boot = r.value("bootDiskSizeGb", parse_int(20, 2000), "whole gigabytes, 20..2000",
                   "pulumi config set bootDiskSizeGb 20")
    data = r.value("dataDiskSizeGb", parse_int(10, 65536), "whole gigabytes, 10..65536",
                   "pulumi config set dataDiskSizeGb 50")
    retention = r.value("snapshotRetentionDays", parse_int(1, 3650), "days, 1..3650",
                        "pulumi config set snapshotRetentionDays 14")
    version = r.value("postalVersion", parse_version, "a Postal release X.Y.Z, at least 3.3.1",
                      "pulumi config set postalVersion 3.3.6")
    relay_host = r.value("relayHost", parse_relay_host, "a DNS name such as smtp-relay.gmail.com",
                         "pulumi config set relayHost smtp-relay.gmail.com")
    relay_port = r.value("relayPort", parse_int(1, 65535), "a TCP port, 1..65535",
                         "pulumi config set relayPort 587")
    relay_tls = r.value("relayTls", parse_choice(tuple(RELAY_TLS_MODES)), "starttls | tls | none",
                        "pulumi config set relayTls starttls")
    selinux = r.value("selinux", parse_choice(SELINUX_MODES), "enforcing | permissive",
                      "pulumi config set selinux enforcing")
    dmarc = r.value("dmarcPolicy", parse_choice(DMARC_POLICIES), "none | quarantine | reject, or unset",
                    "pulumi config set dmarcPolicy none, or pulumi config rm dmarcPolicy")
    manage_spf = r.value("manageSpf", parse_bool, "true or false", "pulumi config set manageSpf true")
    labels = r.value("labels", parse_labels, "a map of GCP labels",
                     "pulumi config set --path 'labels.team' platform")
    snapshot = r.value("dataDiskSnapshot", parse_snapshot,
                       "a snapshot name (or projects/<project>/global/snapshots/<name>)",
                       "gcloud compute snapshots list; pulumi config set dataDiskSnapshot <name>")

    zone_fix = "pulumi config set cloudflareZone example.com"
    cf_zone = r.value("cloudflareZone", parse_domain, "a Cloudflare zone name such as example.com", zone_fix)
    if hostname and cf_zone is None and r.raw("cloudflareZone") is None:
        parent = hostname.partition(".")[2]
        if parent.count(".") >= 1:
            cf_zone = parent
        else:
            r.fail("cloudflareZone", f"cannot be derived from hostname {hostname!r}", zone_fix)
    if hostname and cf_zone and not _within(hostname, cf_zone):
        r.fail("cloudflareZone", f"{cf_zone!r} does not contain hostname {hostname!r}", zone_fix)

    certificate = key = None
    pem_fix = "pulumi config set --secret tlsCertificate < fullchain.pem (and tlsPrivateKey < key.pem)"
    if tls == "custom":
        certificate = r.value("tlsCertificate", parse_pem("CERTIFICATE"), "a PEM certificate chain", pem_fix,
                              required=True)
        key = r.value("tlsPrivateKey", parse_pem("PRIVATE KEY"), "a PEM private key", pem_fix, required=True)
        for name in ("tlsCertificate", "tlsPrivateKey"):
            if r.raw(name) is not None and not runtime_config.is_config_secret(r.key(name)):
                r.fail(name, "is stored in plain text", f"pulumi config set --secret {name} < file.pem")
    else:
        for name in ("tlsCertificate", "tlsPrivateKey"):
            if r.raw(name) is not None:
                r.fail(name, f"is only used with tls=custom (tls is {tls})",
                       f"pulumi config rm {name}, or pulumi config set tls custom")

    errors = r.errors + gcp.errors
    if errors:
        raise ConfigError("postal-gateway: invalid configuration\n  - " + "\n  - ".join(errors))

    return MailConfig(
        project=project, region=region, zone=zone, stack=stack or pulumi.get_stack(),
        hostname=hostname, sending_domains=domains, cloudflare_zone=cf_zone, admin_email=email,
        ssh_source_ranges=ssh, smtp_source_ranges=smtp, web_source_ranges=web, tls=tls,
        tls_certificate=pulumi.Output.secret(certificate) if certificate else None,
        tls_private_key=pulumi.Output.secret(key) if key else None,
        machine_type=machine, boot_disk_size_gb=boot, data_disk_size_gb=data,
        snapshot_retention_days=retention, postal_version=version, relay_host=relay_host,
        relay_port=relay_port, relay_tls=relay_tls, selinux=selinux, dmarc_policy=dmarc,
        manage_spf=manage_spf, labels=labels, data_disk_snapshot=snapshot,
    )


def warnings(cfg: MailConfig) -> list[str]:
    """Legal but risky settings, logged as warnings by the program."""
    notes = []
    for name, port, ranges in (("sshSourceRanges", "22 (SSH)", cfg.ssh_source_ranges),
                               ("smtpSourceRanges", "25 (SMTP)", cfg.smtp_source_ranges),
                               ("webSourceRanges", "443 (Postal's web UI and API)", cfg.web_source_ranges)):
        if world_open(ranges):
            notes.append(f"{NAMESPACE}:{name} opens port {port} to the whole Internet "
                         f"({', '.join(world_open(ranges))} cover most of it); narrow it to the networks that need it")
    if not any(_within(cfg.hostname, d) for d in cfg.sending_domains):
        notes.append(f"{NAMESPACE}:hostname {cfg.hostname} is not under a sending domain; Google identifies "
                     "the relay customer by HELO, so it must sit under the Workspace primary domain")
    if cfg.relay_tls == "none":
        notes.append(f"{NAMESPACE}:relayTls none sends mail to the relay in plain text")
    return notes
