"""What `pulumi up` would create, without credentials: the program run offline under Pulumi's mocks.

    venv/bin/python scripts/plan.py [-s STACK]

Reads the committed `Pulumi.<STACK>.yaml` (default prod), runs __main__.py under the same mocks as
the tests (scripts/offline.py) and prints the config warnings, the resources by component (protected
ones marked), every firewall rule with its sources, the DNS records per zone, the bootstrap steps in
order with what each does, and the outputs. Nothing is contacted: secrets are never decrypted (a
placeholder stands in for each `secure:` value, and says so), the Cloudflare zones' existing records
are not read, and values only `pulumi up` knows (the static IP, generated keys) are shown as <...>.
A config error prints the program's own message and exits 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from scripts import offline  # noqa: E402

NS = "postal-gateway:"
PUBLIC_IP = "<publicIp>"
# Stand-ins for secret values the plan cannot decrypt, valid for the key's type. The PEM pair is made
# on the fly (a self-signed pair for hostname); another secret key without one is left unset.
# Each is distinct, and the printed plan shows it as <secret KEY>, never as if it were the value.
PLACEHOLDERS = {
    "hostname": "postal.placeholder.example",
    "sendingDomains": '["placeholder.example"]',
    "adminEmail": "admin@placeholder.example",
    "alertEmail": "alerts@placeholder.example",
    "sshSourceRanges": '["192.0.2.1/32"]',
    "smtpSourceRanges": '["192.0.2.16/28"]',
    "webSourceRanges": '["192.0.2.32/28"]',
}
UNKNOWN_OUTPUTS = {
    "publicIp": "<the static IP, known after up>",
    "instanceName": "<postal-vm-… (Pulumi adds a random suffix), known after up>",
    "relayStatus": "<the relay preflight's verdict, known after up>",
    "relayStatusByDomain": "<one verdict per sending domain, known after up>",
}


def stack_config_from(raw: dict, project: str = "postal-gateway") -> tuple[dict[str, str], list[str], list[str]]:
    """(config as the engine hands it to the program, keys that were secret, notes) from a stack
    file's `config:` mapping."""
    values: dict[str, str] = {}
    secret: list[str] = []
    notes: list[str] = []
    pem = []
    for key, value in (raw or {}).items():
        full = key if ":" in key else f"{project}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret.append(full)
            short = full.removeprefix(NS)
            if not full.startswith(NS):
                values[full] = "<secret>"  # provider settings (cloudflare:apiToken): the program never reads them
            elif short in ("tlsCertificate", "tlsPrivateKey"):
                pem.append(full)
            elif short in PLACEHOLDERS:
                values[full] = PLACEHOLDERS[short]
                notes.append(f"{full} is secret and not decrypted: shown as <secret {short}>")
            else:
                notes.append(f"{full} is secret and not decrypted: planned with its default")
            continue
        values[full] = json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
    if pem:
        cert, key = _placeholder_pair(_hostname(values))
        values[NS + "tlsCertificate"], values[NS + "tlsPrivateKey"] = cert, key
        secret += [NS + "tlsCertificate", NS + "tlsPrivateKey"]
        notes.append(
            "tlsCertificate/tlsPrivateKey are secret and not decrypted: a self-signed pair for hostname stands "
            "in (pulumi preview checks the real pair)"
        )
    return values, sorted(set(secret)), notes


def _masks(values: dict[str, str], secret: list[str]) -> dict[str, str]:
    """Placeholder text -> how the plan shows it."""
    masks = {}
    for full in secret:
        short = full.removeprefix(NS)
        if full.startswith(NS) and values.get(full) == PLACEHOLDERS.get(short):
            items = json.loads(values[full]) if values[full].startswith("[") else [values[full]]
            masks.update({item: f"<secret {short}>" for item in items})
    return masks


def _hostname(values: dict[str, str]) -> str:
    return values.get(NS + "hostname", PLACEHOLDERS["hostname"]).strip().lower().rstrip(".")


def _placeholder_pair(hostname: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def shown(value: Any) -> str:
    """A value as the plan prints it: the mocks' stand-ins replaced by what they stand for."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.replace(offline.FAKE_IP, PUBLIC_IP)
    return re.sub(r"(v=DKIM1;.*?p=)[^;\"]+", r"\1<public key generated at up>", text)


def step_description(step: str) -> str:
    """The header comment of scripts/remote/<step>.sh: what the step does."""
    lines = (ROOT / "scripts" / "remote" / f"{step}.sh").read_text().splitlines()[1:]
    lines = [line for line in lines if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("#"))
    text = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        text.append(line.lstrip("#").strip())
    sentences = re.split(r"(?<=\.) ", re.sub(rf"^{re.escape(step)}: ", "", " ".join(text)))
    return " ".join(s for s in sentences if not s.startswith("PG_"))  # not the settings' format


def _label(resource: offline.Registered) -> str:
    marks = [m for m, on in (("protected", resource.protect), ("retained on delete", resource.retain_on_delete)) if on]
    return f"{resource.type}  {resource.name}" + (f"  [{', '.join(marks)}]" if marks else "")


def resources_section(run: offline.Run) -> list[str]:
    by_urn = {r.urn: r for r in run.resources}
    children = defaultdict(list)
    for r in run.resources:
        children[r.parent if r.parent in by_urn else None].append(r)

    def tree(resource: offline.Registered, depth: int) -> list[str]:
        lines = ["  " * depth + _label(resource)]
        for child in children[resource.urn]:
            lines += tree(child, depth + 1)
        return lines

    custom = sum(r.custom for r in run.resources)
    protected = sum(r.protect for r in run.resources)
    lines = [f"Resources: {custom} resources in {len(run.resources) - custom} components ({protected} protected)"]
    for top in children[None]:
        lines += tree(top, 1)
    return lines


def _sources(ranges: list[str], uptime: set[str]) -> str:
    from components.network import IAP_RANGE

    if ranges and set(ranges) == uptime:
        return "Google's uptime-check addresses (read from gcp.monitoring.get_uptime_check_ips at preview)"
    return ", ".join(f"IAP TCP forwarding ({r})" if r == IAP_RANGE else r for r in ranges) or "(none)"


def firewall_section(run: offline.Run) -> list[str]:
    uptime = {f"{e['ipAddress']}/32" for e in offline.UPTIME_CHECK_IPS if ":" not in e["ipAddress"]}
    lines = ["Firewall rules (ingress to the VM's network tag):"]
    for rule in run.of_type("gcp:compute/firewall:Firewall"):
        allows = " ".join(
            f"{a['protocol']}:{','.join(a.get('ports') or ['all'])}" for a in rule.inputs.get("allows", [])
        )
        direction = rule.inputs.get("direction", "INGRESS")
        sources = _sources(rule.inputs.get("sourceRanges") or [], uptime)
        tags = ",".join(rule.inputs.get("targetTags") or []) or "all instances"
        lines.append(f"  {rule.name}: {direction.lower()} {allows} from {sources} to {tags}")
    return lines


def dns_section(run: offline.Run) -> list[str]:
    from components.dns import txt_text

    zones = defaultdict(list)
    for record in run.of_type("cloudflare:index/dnsRecord:DnsRecord"):
        i = record.inputs
        content = txt_text(i.get("content", "")) if i["type"] == "TXT" else i.get("content", "")
        priority = f"{int(i['priority'])} " if i.get("priority") is not None else ""
        zones[i["zoneId"].removeprefix("zone-")].append(f"    {i['type']:<5} {i['name']}  {priority}{shown(content)}")
    lines = ["DNS records (Cloudflare, unproxied) per zone:"]
    for zone, records in zones.items():
        lines += [f"  zone {zone}:", *records]
    lines.append(
        "  (offline: the zones' existing records were not read; pulumi preview stops on a second SPF or DMARC "
        "record at these names: docs/configuration.md, Existing records)"
    )
    return lines


def steps_section(run: offline.Run) -> list[str]:
    commands = {r.urn: r for r in run.of_type("command:remote:Command")}
    others = {r.urn: r for r in run.resources}
    names = {urn: r.name.split("-", 1)[1] for urn, r in commands.items()}
    order: list[str] = []
    pending = list(commands)
    while pending:  # registration order, each step after the steps it depends on
        urn = next(u for u in pending if all(d in order or d not in commands for d in commands[u].depends_on))
        pending.remove(urn)
        order.append(urn)
    lines = [
        "Bootstrap steps over SSH, in dependency order (steps whose prerequisites are done run in parallel); "
        "each is scripts/remote/<step>.sh, idempotent:"
    ]
    for n, urn in enumerate(order, 1):
        deps = commands[urn].depends_on
        after = [names[d] for d in deps if d in commands]
        records = [others[d] for d in deps if d in others and others[d].type.startswith("cloudflare:")]
        if len(records) == 1:
            after.append(f"the {records[0].inputs['type']} record {records[0].inputs['name']}")
        elif records:
            after.append(f"all {len(records)} DNS records")
        lines.append(f"  {n}. {names[urn]}" + (f" (after {', '.join(after)})" if after else "") + ":")
        lines.append(f"       {step_description(names[urn])}")
    return lines


def outputs_section(run: offline.Run) -> list[str]:
    lines = ["Outputs:"]
    for name, (value, secret) in run.outputs.items():
        if secret:
            text = "[secret]"
        elif name in UNKNOWN_OUTPUTS:
            text = UNKNOWN_OUTPUTS[name]
        elif name == "dnsRecords":
            text = f"{len(value)} records (above)"
        else:
            text = shown(value)
        lines.append(f"  {name} = {text}")
    return lines


def render(stack: str, values: dict[str, str], secret: list[str], notes: list[str]) -> tuple[int, str]:
    """(exit code, the plan's text) for a stack's config."""
    run = offline.execute(offline.Mocks(), values, tuple(secret), stack, preview=True)  # a preview opens no tunnel
    gcp = ("gcp:project", "gcp:region", "gcp:zone")
    where = " ".join(f"{k.removeprefix('gcp:')} {values[k]}" for k in gcp if k in values and k not in secret)
    head = [
        f"postal-gateway plan for stack {stack} ({where or 'no gcp settings'}): offline, under Pulumi's mocks; "
        "nothing was contacted and nothing is created. <...> values are known only after pulumi up.",
    ]
    notes_out = ["Notes:", *(f"  - {n}" for n in notes)] if notes else []
    if run.error is not None:
        code, sections = 1, [head, notes_out, [str(run.error)]]
    else:
        stand_in = any(n.startswith("tlsCertificate/tlsPrivateKey") for n in notes)  # its warnings are not news
        warnings = [
            f"  - {m}"
            for level, m in run.logs
            if level == "warning" and not (stand_in and m.startswith(NS + "tlsCertificate"))
        ]
        code, sections = (
            0,
            [
                head,
                ["Config warnings:", *(warnings or ["  (none)"])],
                notes_out,
                resources_section(run),
                firewall_section(run),
                dns_section(run),
                steps_section(run),
                outputs_section(run),
            ],
        )
    text = "\n\n".join("\n".join(s) for s in sections if s)
    for placeholder, label in sorted(_masks(values, secret).items(), key=lambda m: -len(m[0])):
        text = text.replace(placeholder, label)
    return code, text


def plan(stack: str, root: Path = ROOT) -> tuple[int, str]:
    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        found = ", ".join(sorted(p.name[7:-5] for p in root.glob("Pulumi.*.yaml"))) or "none"
        return 2, f"plan: {path.name} not found (stacks with a committed file: {found})"
    doc = yaml.safe_load(path.read_text()) or {}
    project = (yaml.safe_load((root / "Pulumi.yaml").read_text()) or {}).get("name", "postal-gateway")
    return render(stack, *stack_config_from(doc.get("config") or {}, project))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--stack", default="prod", help="stack name: reads Pulumi.<stack>.yaml (default prod)")
    args = parser.parse_args(argv)
    code, text = plan(args.stack)
    print(text, file=sys.stderr if code == 2 else sys.stdout)
    return code


if __name__ == "__main__":
    import gc

    gc.set_threshold(100_000, 50, 100)  # the SDK's objects live to the end: collect rarely (a third faster)
    sys.exit(main())
