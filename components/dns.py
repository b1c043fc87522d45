"""MailDns: Cloudflare records for the host, the relay SPF chain, DKIM, return path and DMARC.

`lookup_zones` runs first (before any resource): it resolves every zone and refuses to add a
second SPF or DMARC record at a name that already has one this stack did not create.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import pulumi

from components.config import MailConfig
from components.render import dkim_txt

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
    chunks = [data[i:i + TXT_STRING_MAX].decode() for i in range(0, len(data), TXT_STRING_MAX)]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def txt_text(content: str) -> str:
    """The value a resolver returns for TXT content, quoted or not: the strings joined, unescaped."""
    content = (content or "").strip()
    if not content.startswith('"'):
        return content
    return "".join(re.sub(r"\\(.)", r"\1", s) for s in _QUOTED.findall(content))


def _guarded_prefix(text: str) -> Optional[str]:
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
    priority: Optional[int] = None


def comment_for(cfg: MailConfig) -> str:
    return f"managed by postal-gateway ({cfg.stack})"


def record_specs(cfg: MailConfig, public_ip: Any = None, dkim: Optional[dict] = None,
                 rp_dkim_public_key: Any = None) -> list[RecordSpec]:
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
        specs.append(RecordSpec("rp-dkim", f"postal._domainkey.{rp}", "TXT",
                                pulumi.Output.from_input(rp_dkim_public_key).apply(dkim_txt), zone))
    for domain in cfg.sending_domains:
        dzone = cfg.zone_for(domain)
        if cfg.manage_spf:
            specs.append(RecordSpec(f"{domain}-spf", domain, "TXT", f"v=spf1 include:{cfg.spf_include} ~all", dzone))
        if dkim:
            key = dkim[domain]
            specs.append(RecordSpec(
                f"{domain}-dkim", pulumi.Output.concat("postal-", key.selector, "._domainkey.", domain), "TXT",
                key.public_key_pem.apply(dkim_txt), dzone))
        specs.append(RecordSpec(f"{domain}-return-path", f"psrp.{domain}", "CNAME", rp, dzone))
        if cfg.dmarc_policy:
            specs.append(RecordSpec(f"{domain}-dmarc", f"_dmarc.{domain}", "TXT",
                                    f"v=DMARC1; p={cfg.dmarc_policy}", dzone))
    return specs


def find_conflicts(specs: list[RecordSpec], existing: dict[str, list[dict]], comment: str) -> list[str]:
    """Names where a guarded TXT record (SPF, DMARC) exists that this stack did not create."""
    problems = []
    for spec in specs:
        prefix = _guarded_prefix(str(spec.content)) if spec.type == "TXT" else None
        if prefix is None:
            continue
        for record in existing.get(spec.name, []):
            content = txt_text(str(record.get("content") or ""))  # Cloudflare may return it quoted
            if _guarded_prefix(content) == prefix and record.get("comment") != comment:
                problems.append(f"{spec.name} already has {content!r}")
    return problems


def lookup_zones(cfg: MailConfig) -> dict[str, str]:
    """Zone name -> zone id; raises DnsConflictError for a foreign SPF/DMARC record."""
    import pulumi_cloudflare as cloudflare  # heavy import, paid once here

    zone_ids = {}
    for zone in cfg.zones:
        try:
            zone_ids[zone] = cloudflare.get_zone(filter={"name": zone, "match": "all"}).zone_id
        except Exception as err:  # the provider's own message follows
            raise DnsConflictError(
                f"postal-gateway: Cloudflare zone {zone!r} could not be read ({err}). Check that the zone exists "
                "and that the API token (cloudflare:apiToken or CLOUDFLARE_API_TOKEN) has Zone:Read and DNS:Edit "
                "on it, or set postal-gateway:cloudflareZone.") from None
    specs = record_specs(cfg)
    existing: dict[str, list[dict]] = {}
    for spec in specs:
        if spec.type == "TXT" and spec.name not in existing:
            found = cloudflare.get_dns_records(zone_id=zone_ids[spec.zone], type="TXT", name={"exact": spec.name})
            existing[spec.name] = [{"content": r.content, "comment": r.comment} for r in (found.results or [])]
    conflicts = find_conflicts(specs, existing, comment_for(cfg))
    if conflicts:
        raise DnsConflictError(
            "postal-gateway: refusing to publish a second SPF/DMARC record:\n  - " + "\n  - ".join(conflicts)
            + f"\nFix: merge 'include:{cfg.spf_include}' into the existing SPF record yourself and set "
            "postal-gateway:manageSpf false (or unset dmarcPolicy), or delete the old record so this stack owns it.")
    return zone_ids


@dataclass(frozen=True)
class DnsArgs:
    records: list[RecordSpec]
    zone_ids: dict[str, str]
    comment: str


class MailDns(pulumi.ComponentResource):
    """Outputs: `records` (resource by key), `published` (list of {name, type, content})."""

    def __init__(self, name: str, args: DnsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("postal-gateway:index:MailDns", name, None, opts)
        import pulumi_cloudflare as cloudflare

        child = pulumi.ResourceOptions(parent=self)
        self.records = {
            spec.key: cloudflare.DnsRecord(
                f"{name}-{spec.key}", zone_id=args.zone_ids[spec.zone], name=spec.name, type=spec.type,
                content=pulumi.Output.from_input(spec.content).apply(cloudflare_txt) if spec.type == "TXT"
                else spec.content, priority=spec.priority, ttl=1, proxied=False, comment=args.comment,
                opts=child)
            for spec in args.records
        }
        published = []
        for spec in args.records:
            record = self.records[spec.key]
            content = record.content.apply(txt_text) if spec.type == "TXT" else record.content  # as resolvers answer
            published.append({"name": record.name, "type": record.type, "content": content})
        self.published = pulumi.Output.all(*published)
        self.register_outputs({"published": self.published})
