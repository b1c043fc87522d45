"""Cross-key checks and warnings.

The checks run as soon as their keys are read (components/fields.py; the TLS pair last, from
config.load) and add one message per problem to the reader: a value may be good alone and wrong
beside another (a lock longer than the retention, a hostname outside its zone, a relay port that
does not speak the chosen TLS). `warnings` lists the legal but risky settings the program logs.
No message shows a secret value.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pulumi.runtime import config as runtime_config

from components import certificate, render, units
from components.parse import _ZONE, parse_pem
from components.reader import NAMESPACE, Reader
from policy.netranges import world_open

if TYPE_CHECKING:
    from components.config import MailConfig

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

BACKUP_KEY_FIX = (
    "generate a key pair on an operator machine, never on the VM: gpg --quick-gen-key "
    "'postal-gateway backups <you@example.com>' default default never; then pulumi config set backupPublicKey -- "
    '"$(gpg --armor --export <fingerprint>)" and keep the private key offline (docs/operations.md#backups)'
)


def within(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def zone_in_region(gcp: Reader, zone: str | None, region: str | None) -> None:
    """gcp:zone is a zone of gcp:region."""
    if zone and region and _ZONE.fullmatch(zone).group(1) != region:
        gcp.fail(
            "zone",
            f"{gcp.show('zone', zone)} is not a zone of region {gcp.show('region', region)}",
            "use <region>-<letter>, e.g. europe-west1-b",
        )


def ephemeral_stack(r: Reader, ephemeral: bool | None, stack: str) -> None:
    """A production stack is never ephemeral."""
    if ephemeral and stack in PRODUCTION_STACKS:
        r.fail(
            "ephemeral",
            f"is true on stack {stack!r}: production's static IP and data disk must stay protected and retained",
            "pulumi config rm ephemeral (ephemeral is for throwaway stacks such as scripts/e2e.py's e2e-<id>)",
        )


def backup_lock(r: Reader, bucket: str | None, lock: int | None, retention: int | None) -> None:
    """backupLockDays applies to the bucket the program creates, and never outlasts backupRetentionDays."""
    if bucket is not None and r.raw("backupLockDays") is not None:
        r.fail(
            "backupLockDays",
            "only applies to the bucket the program creates; an existing backupBucket keeps its own policy",
            "pulumi config rm backupLockDays",
        )
    if lock is not None and retention is not None and lock > retention:
        r.fail(
            "backupLockDays",
            f"{r.show('backupLockDays', lock)} is longer than backupRetentionDays "
            f"({r.show('backupRetentionDays', retention)}): the lifecycle rule could not delete a "
            "backup that the retention policy still locks",
            f"pulumi config set backupLockDays {retention}, or raise backupRetentionDays",
        )


def dns_names(r: Reader, hostname: str | None, cf_zone: str | None, domains: tuple[str, ...] | None) -> None:
    """hostname lies in cloudflareZone; no two names collide in DNS or in Postal."""
    if hostname and cf_zone and not within(hostname, cf_zone):
        r.fail(
            "cloudflareZone",
            f"{r.show('cloudflareZone', cf_zone)} does not contain hostname {r.show('hostname', hostname)}",
            "pulumi config set cloudflareZone example.com",
        )
    if not (hostname and domains):
        return
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


def relay(
    r: Reader, relay_host: str | None, relay_port: int | None, relay_tls: str | None, hostname: str | None
) -> None:
    """The relay is another host, on the port of its TLS mode: implicit TLS listens on 465, STARTTLS on
    587 (RFC 8314), the other pairings never connect."""
    if relay_tls and relay_port:
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
    if relay_host and relay_host == hostname:
        r.fail(
            "relayHost", "is hostname: Postal would relay to itself", "pulumi config set relayHost smtp-relay.gmail.com"
        )


def custom_tls(r: Reader, tls: str | None, hostname: str | None) -> tuple | None:
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
    if not any(within(cfg.hostname, d) for d in cfg.sending_domains):
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
