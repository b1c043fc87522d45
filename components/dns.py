"""MailDns: Cloudflare records for the host, the relay SPF chain, DKIM, return path and DMARC.

`lookup_zones` runs first (before any resource): it resolves every zone, reads every record at
every name the stack publishes, and stops on a record this stack did not create that would
collide with one of ours (a second SPF or DMARC record, another address or a CNAME at `hostname`,
anything at the names the stack owns: spf./rp. of `hostname`, psrp.<domain>).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi

from components.config import MailConfig
from components.render import custom_return_path, dkim_txt

GOOGLE_SPF = "include:_spf.google.com"
GUARDED_PREFIXES = ("v=spf1", "v=DMARC1")
TXT_STRING_MAX = 255  # bytes in one DNS character-string (RFC 1035 3.3)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def cloudflare_txt(text: str) -> str:
    """TXT content as Cloudflare stores it, so that reading it back shows no diff.

    Cloudflare's API: TXT content "must consist of quoted 'character strings' (RFC 1035), each
    with a length of up to 255 bytes. Strings exceeding this allowed maximum length are
    automatically split" (DNS records API, TXTRecord.content). A longer value (a 2048-bit DKIM
    key) is therefore published as quoted 255-byte strings separated by spaces; a short one as is.
    """
    data = text.encode()
    if len(data) <= TXT_STRING_MAX:
        return text
    chunks = [data[i : i + TXT_STRING_MAX].decode() for i in range(0, len(data), TXT_STRING_MAX)]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def txt_text(content: str) -> str:
    """The value a resolver returns for TXT content, quoted or not: the strings joined, unescaped."""
    content = (content or "").strip()
    if not content.startswith('"'):
        return content
    return "".join(re.sub(r"\\(.)", r"\1", s) for s in _QUOTED.findall(content))


def _guarded_prefix(text: str) -> str | None:
    """v=spf1 / v=DMARC1 when `text` is such a record (the version tag is case-insensitive)."""
    head = text.split(";")[0].split()[0].lower() if text.strip() else ""
    return next((p for p in GUARDED_PREFIXES if head == p.lower()), None)


class DnsConflictError(pulumi.RunError):
    """A record this stack would publish already exists and is not ours."""


@dataclass(frozen=True)
class RecordSpec:
    key: str  # stable logical name suffix
    name: Any  # FQDN (str or Output)
    type: str
    content: Any  # str or Output; None while only names are needed
    zone: str
    priority: int | None = None


def comment_for(cfg: MailConfig) -> str:
    return f"managed by postal-gateway ({cfg.stack})"


def record_specs(
    cfg: MailConfig, public_ip: Any = None, dkim: dict | None = None, rp_dkim_public_key: Any = None
) -> list[RecordSpec]:
    """Every record the stack publishes. With no keys given, DKIM records are left out."""
    host, rp = cfg.hostname, cfg.return_path_domain
    zone = cfg.cloudflare_zone
    specs = [
        RecordSpec("host-a", host, "A", public_ip, zone),
        RecordSpec("spf-include", cfg.spf_include, "TXT", f"v=spf1 {GOOGLE_SPF} ~all", zone),
        RecordSpec("rp-spf", rp, "TXT", f"v=spf1 include:{cfg.spf_include} ~all", zone),
        RecordSpec("rp-mx", rp, "MX", host, zone, priority=10),
    ]
    if rp_dkim_public_key is not None:
        specs.append(
            RecordSpec(
                "rp-dkim",
                f"postal._domainkey.{rp}",
                "TXT",
                pulumi.Output.from_input(rp_dkim_public_key).apply(dkim_txt),
                zone,
            )
        )
    for domain in cfg.sending_domains:
        dzone = cfg.zone_for(domain)
        if cfg.manage_spf:
            specs.append(RecordSpec(f"{domain}-spf", domain, "TXT", f"v=spf1 include:{cfg.spf_include} ~all", dzone))
        if dkim:
            key = dkim[domain]
            specs.append(
                RecordSpec(
                    f"{domain}-dkim",
                    pulumi.Output.concat("postal-", key.selector, "._domainkey.", domain),
                    "TXT",
                    key.public_key_pem.apply(dkim_txt),
                    dzone,
                )
            )
        specs.append(RecordSpec(f"{domain}-return-path", custom_return_path(domain), "CNAME", rp, dzone))
        if cfg.dmarc_policy:
            specs.append(
                RecordSpec(f"{domain}-dmarc", f"_dmarc.{domain}", "TXT", f"v=DMARC1; p={cfg.dmarc_policy}", dzone)
            )
    return specs


def owned_names(cfg: MailConfig) -> dict[str, str]:
    """Names where every record is the stack's: any other record there is in the way. Name -> fix."""
    other_host = "or choose another postal-gateway:hostname"
    names = {
        name: f"delete it in Cloudflare (left by an earlier Postal?), {other_host}"
        for name in (cfg.spf_include, cfg.return_path_domain, f"postal._domainkey.{cfg.return_path_domain}")
    }
    for domain in cfg.sending_domains:
        names[custom_return_path(domain)] = (
            "delete it in Cloudflare: the stack's return-path CNAME needs the name to itself"
        )
    return names


def _conflict(name: str, ours: list, record: dict, owned: dict[str, str], spf_include: str) -> str | None:
    """The fix when `record` (not ours) collides with the records `ours` the stack publishes at `name`."""
    kind = record.get("type")
    if name in owned:
        return owned[name]
    if kind == "CNAME":
        return "delete the CNAME: a CNAME excludes every other record at its name"
    if kind in ("A", "AAAA") and any(spec.type == "A" for spec in ours):
        return (
            "delete it in Cloudflare (clients would reach another address), or choose another postal-gateway:hostname"
        )
    prefix = _guarded_prefix(txt_text(str(record.get("content") or ""))) if kind == "TXT" else None
    if prefix and any(spec.type == "TXT" and _guarded_prefix(str(spec.content)) == prefix for spec in ours):
        if prefix == "v=spf1":
            return (
                f"merge 'include:{spf_include}' into the existing SPF record yourself and set "
                "postal-gateway:manageSpf false, or delete the old record so this stack owns it"
            )
        return "keep it and unset postal-gateway:dmarcPolicy, or delete it so this stack publishes the policy"
    return None


def find_conflicts(
    specs: list[RecordSpec],
    existing: dict[str, list[dict]],
    comment: str,
    owned: dict[str, str] | None = None,
    spf_include: str = "",
) -> list[str]:
    """One line per record (not carrying our comment) that collides with a record the stack publishes."""
    owned = owned or {}
    ours: dict[str, list[RecordSpec]] = {}
    for spec in specs:
        ours.setdefault(spec.name, []).append(spec)
    problems = []
    for name in dict.fromkeys([*ours, *owned]):
        for record in existing.get(name, []):
            if record.get("comment") == comment:
                continue
            fix = _conflict(name, ours.get(name, []), record, owned, spf_include)
            if fix:
                content = txt_text(str(record.get("content") or ""))  # Cloudflare may return TXT quoted
                problems.append(f"{name} already has {content!r} ({record.get('type')}). Fix: {fix}")
    return problems


def _zone_error(cfg: MailConfig, zone: str, err: Exception) -> str:
    """Which key asked for `zone`, and what the token needs: preview reads, up also writes records."""
    domains = [f"sendingDomains[{i}] {d!r}" for i, d in enumerate(cfg.sending_domains) if cfg.zone_for(d) == zone]
    if zone != cfg.cloudflare_zone:
        why = (
            f"the zone of {', '.join(domains)}: a sending domain outside cloudflareZone {cfg.cloudflare_zone!r} "
            "uses the zone named like the domain"
        )
        fix = "or remove that domain from sendingDomains"
    else:
        why = "cloudflareZone" + (
            "" if "cloudflareZone" in cfg.secret_keys else f", the zone of hostname {cfg.hostname!r}"
        )
        fix = "or set postal-gateway:cloudflareZone to the zone that holds hostname"
    return (
        f"postal-gateway: Cloudflare zone {zone!r} ({why}) could not be read ({err}). Fix: check that the zone "
        "exists in the Cloudflare account and that the API token (CLOUDFLARE_API_TOKEN or cloudflare:apiToken) "
        f"covers it, with Zone:Read + DNS:Read for pulumi preview and Zone:Read + DNS:Edit for pulumi up; {fix}."
    )


def lookup_zones(cfg: MailConfig) -> dict[str, str]:
    """Zone name -> zone id; raises DnsConflictError for a foreign SPF/DMARC record."""
    import pulumi_cloudflare as cloudflare  # heavy import, paid once here

    zone_ids = {}
    for zone in cfg.zones:
        try:
            zone_ids[zone] = cloudflare.get_zone(filter={"name": zone, "match": "all"}).zone_id
        except Exception as err:  # the provider's own message follows
            raise DnsConflictError(cfg.redact(_zone_error(cfg, zone, err))) from None
    specs = record_specs(cfg)
    owned = owned_names(cfg)
    zone_of = {spec.name: spec.zone for spec in specs}
    for name in owned:  # postal._domainkey.rp.<hostname>: published later, with the signing key
        zone_of.setdefault(name, cfg.cloudflare_zone)
    existing: dict[str, list[dict]] = {}
    for name, zone in zone_of.items():  # every type at the name: Cloudflare's name.exact filter
        found = cloudflare.get_dns_records(zone_id=zone_ids[zone], name={"exact": name})
        existing[name] = [{"type": r.type, "content": r.content, "comment": r.comment} for r in (found.results or [])]
    conflicts = find_conflicts(specs, existing, comment_for(cfg), owned, cfg.spf_include)
    if conflicts:
        raise DnsConflictError(
            cfg.redact(
                "postal-gateway: records this stack would publish collide with records it did not create (ours "
                f"carry the comment '{comment_for(cfg)}'):\n  - " + "\n  - ".join(conflicts)
            )
        )
    return zone_ids


@dataclass(frozen=True)
class DnsArgs:
    records: list[RecordSpec]
    zone_ids: dict[str, str]
    comment: str


class MailDns(pulumi.ComponentResource):
    """Outputs: `records` (resource by key), `published` (list of {name, type, content})."""

    def __init__(self, name: str, args: DnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("postal-gateway:index:MailDns", name, None, opts)
        import pulumi_cloudflare as cloudflare

        child = pulumi.ResourceOptions(parent=self)
        self.records = {
            spec.key: cloudflare.DnsRecord(
                f"{name}-{spec.key}",
                zone_id=args.zone_ids[spec.zone],
                name=spec.name,
                type=spec.type,
                content=pulumi.Output.from_input(spec.content).apply(cloudflare_txt)
                if spec.type == "TXT"
                else spec.content,
                priority=spec.priority,
                ttl=1,
                proxied=False,
                comment=args.comment,
                opts=child,
            )
            for spec in args.records
        }
        published = []
        for spec in args.records:
            record = self.records[spec.key]
            content = record.content.apply(txt_text) if spec.type == "TXT" else record.content  # as resolvers answer
            published.append({"name": record.name, "type": record.type, "content": content})
        self.published = pulumi.Output.all(*published)
        self.register_outputs({"published": self.published})
