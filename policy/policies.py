"""postal-gateway guardrails: the resource checks of the CrossGuard policy pack.

Only policy objects live here; `__main__.py` wraps them in a PolicyPack (constructing one
starts the analyzer server and blocks, so importing this module must never do it).

Each `validate` receives pulumi_policy's ResourceValidationArgs: `resource_type`, `name` (the
logical name), `urn`, `props` (the resource inputs, camelCase, as a read-only Mapping whose
unknown preview values raise UnknownValueError) and `opts` (PolicyResourceOptions: `protect`,
`ignore_changes`, `parent`, ...). Secret inputs arrive as plain values: the validate API does
not say which inputs are secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from netranges import world_open  # policy/ is on sys.path in the pack (and in the tests)

FIREWALL = "gcp:compute/firewall:Firewall"
ADDRESS = "gcp:compute/address:Address"
DISK = "gcp:compute/disk:Disk"
DNS_RECORD = "cloudflare:index/dnsRecord:DnsRecord"
COMMAND = "command:remote:Command"

# Guarded ports: what they are and the config key that sets who may reach them.
GUARDED_PORTS = {
    22: ("SSH", "sshSourceRanges", "203.0.113.7/32 (the machine running pulumi up)"),
    25: ("SMTP", "smtpSourceRanges", "10.0.0.0/8 (the networks of the internal senders)"),
    443: ("HTTPS: Postal's web UI and API", "webSourceRanges",
          "203.0.113.0/24 (or unset it: the SMTP and SSH ranges)"),
}
TCP_PROTOCOLS = {"tcp", "6", "all"}  # SSH, SMTP and HTTPS run over TCP; "all" covers every protocol


# --- no-open-ssh-smtp, web-ui-not-world-open ---------------------------------------------------

def _ports(allow: Mapping, guarded) -> set[int]:
    """The guarded ports an `allows` entry opens; no `ports` (or protocol all) means every port."""
    if str(allow.get("protocol", "")).lower() not in TCP_PROTOCOLS:
        return set()
    ports = allow.get("ports")
    if not ports:
        return set(guarded)
    opened = set()
    for item in ports:
        low, _, high = str(item).strip().partition("-")
        try:
            low_n, high_n = int(low), int(high or low)
        except ValueError:
            continue  # not a port number: GCP rejects it anyway
        opened |= {p for p in guarded if low_n <= p <= high_n}
    return opened


def _firewall_check(guarded: tuple[int, ...]):
    """A validate function reporting each of `guarded` that an ingress rule opens to (most of) the
    Internet: a /0, or ranges that together cover half of the address space (netranges.py)."""
    def check(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type != FIREWALL:
            return
        props = args.props
        if str(props.get("direction") or "INGRESS").upper() != "INGRESS":
            return  # egress rules have destination ranges, not sources
        ports = set()
        for allow in props.get("allows") or []:
            ports |= _ports(allow, guarded)
        if not ports:
            return
        ranges = list(props.get("sourceRanges") or [])
        open_ranges = world_open(ranges)
        if not ranges and not props.get("sourceTags") and not props.get("sourceServiceAccounts"):
            open_ranges = ["0.0.0.0/0 (GCP's default for an ingress rule without sources)"]
        if not open_ranges:
            return
        for port in sorted(ports):
            what, key, example = GUARDED_PORTS[port]
            report_violation(
                f"Firewall '{args.name}' opens port {port} ({what}) to the whole Internet "
                f"({', '.join(map(str, open_ranges))} cover most of it). Fix: set postal-gateway:{key} to the "
                f"ranges that really need it, e.g. `pulumi config set --path '{key}[0]' {example}`, or narrow "
                "sourceRanges in the code that defines this rule (components/network.py).", args.urn)
    return check


# --- static-ip-protected, data-disk-protected -------------------------------------------------

def _check_address(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type == ADDRESS and not args.opts.protect:
        report_violation(
            f"Static IP '{args.name}' is not protected. It is the Google Workspace SMTP relay allowlist entry: "
            "deleting or replacing it stops all mail. Fix: create it with "
            "`opts=pulumi.ResourceOptions(protect=True)` (components/network.py).", args.urn)


def _is_data_disk(args: ResourceValidationArgs) -> bool:
    """components/host.py names the data disk `<name>-data` and creates it blank; the boot disk
    (`<name>-boot`) is built from an OS image and may be replaced, so it need not be protected."""
    return args.name.endswith("-data") or not args.props.get("image")


def _check_disk(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type == DISK and _is_data_disk(args) and not args.opts.protect:
        report_violation(
            f"Data disk '{args.name}' is not protected. It holds MariaDB, Postal's config and Caddy's "
            "certificates; a delete or replace loses all of it. Fix: create it with "
            "`opts=pulumi.ResourceOptions(protect=True)` (components/host.py); to retire it on purpose, "
            "run `pulumi state unprotect <urn>` first.", args.urn)


# --- mail-records-unproxied -------------------------------------------------------------------

def _check_dns_record(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type == DNS_RECORD and args.props.get("proxied") is True:
        report_violation(
            f"DNS record '{args.name}' is proxied through Cloudflare. Mail records (the host's A record, MX, "
            "TXT, psrp CNAME) must be DNS-only: the proxy hides the VM's IP and carries no SMTP. "
            "Fix: pass `proxied=False` to cloudflare.DnsRecord (components/dns.py).", args.urn)


# --- no-plain-secrets-in-commands -------------------------------------------------------------

# A PEM private key of any kind (RSA, EC, OPENSSH, ENCRYPTED, PGP ...). Certificates and public
# keys are not secrets, so they pass.
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----")
# `NAME=value`, `--name=value`: the name must not be glued to a word, `$` or `-` before it.
ASSIGNMENT = re.compile(
    r"""(?<![\w$-])(?P<name>-{0,2}[A-Za-z_][\w-]*)="""
    r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s'";&|<>()`]*))""")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY", re.IGNORECASE)
# Values that are not literal secrets: `$VAR`/`$(cat file)` read at run time (how the remote
# scripts load the stdin payload), `%s` format placeholders, `/paths`, and `==` comparisons.
NOT_LITERAL = ("$", "%", "/", "=")
COMMAND_FIELDS = ("create", "update", "delete")


def secrets_in(text: str) -> list[str]:
    """What in a command line looks like a plain secret (the name, never the value)."""
    found = []
    if PEM_PRIVATE.search(text):
        found.append("a PEM private key")
    for match in ASSIGNMENT.finditer(text):
        value = next((v for v in match.group("dq", "sq", "bare") if v is not None), "")
        if SECRET_NAME.search(match.group("name")) and value and not value.startswith(NOT_LITERAL):
            found.append(match.group("name"))
    return list(dict.fromkeys(found))


def _check_command(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != COMMAND:
        return
    for field in COMMAND_FIELDS:
        text = args.props.get(field)
        if not isinstance(text, str):
            continue
        found = secrets_in(text)
        if found:
            report_violation(
                f"Command '{args.name}' has {', '.join(found)} in its `{field}` command line, which is stored "
                "in plain text in the state and shown in preview diffs. Fix: send secrets in the step's stdin "
                "payload (the `files` argument of PostalBootstrap._step in components/bootstrap.py; the VM "
                "reads it with pg_read_payload), or keep the secret in a `pulumi config set --secret` key "
                "and pass it as a pulumi secret through stdin.", args.urn)
    # Not checked: whether `stdin` (or an `environment` value) is a pulumi secret. The validate
    # API unwraps secrets into plain values (pulumi_policy 1.21 deserializes props without secret
    # markers; only remediations see them), so a policy cannot tell a secret stdin from a plain one.


def _policy(name: str, description: str, validate,
            level: EnforcementLevel = EnforcementLevel.MANDATORY) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(name=name, description=description, validate=validate,
                                    enforcement_level=level)


POLICIES: list[ResourceValidationPolicy] = [
    _policy("no-open-ssh-smtp",
            "Firewall rules that open port 22 (SSH) or 25 (SMTP) must not allow 0.0.0.0/0, any other /0, or "
            "ranges that together cover half of the address space.",
            _firewall_check((22, 25))),
    # Advisory: opening the web UI to everyone is a choice an operator may make (with a warning).
    _policy("web-ui-not-world-open",
            "Firewall rules that open port 443 (Postal's web UI and API) to most of the Internet are reported.",
            _firewall_check((443,)), EnforcementLevel.ADVISORY),
    _policy("static-ip-protected",
            "The static IP (the Workspace SMTP relay allowlist entry) must be protected.",
            _check_address),
    _policy("data-disk-protected",
            "The data disk (MariaDB, Postal config, certificates) must be protected; the boot disk need not be.",
            _check_disk),
    _policy("mail-records-unproxied",
            "Cloudflare DNS records managed by this stack must be DNS-only (proxied: false).",
            _check_dns_record),
    _policy("no-plain-secrets-in-commands",
            "Remote command lines must not contain PEM private keys or literal PASSWORD/SECRET/TOKEN/KEY "
            "assignments; secrets go through the secret stdin payload.",
            _check_command),
]


def policy_named(name: str) -> ResourceValidationPolicy:
    (match,) = [p for p in POLICIES if p.name == name]
    return match
