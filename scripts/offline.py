"""Runs the real __main__.py offline under Pulumi mocks and records what it registers.

Shared by scripts/plan.py (an offline plan) and the tests (tests/program.py). The recording monitor
captures every resource with its options (parent, protect, ignoreChanges, dependencies,
additionalSecretOutputs) and, like the real engine, marks the outputs named in
additionalSecretOutputs as secret — the stock mock monitor does not. The mocks answer like the
providers (shapes cited below) with deterministic values; nothing is contacted.
"""

from __future__ import annotations

import hashlib
import logging
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks, rpc
from pulumi.runtime.proto import resource_pb2

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "__main__.py"
PROJECT = "postal-gateway"
SECRET = {rpc._special_sig_key: rpc._special_secret_sig}
FAKE_IP = "203.0.113.10"  # the static IP the mocks hand out (RFC 5737 documentation range)


def unwrap(value: Any) -> tuple[Any, bool]:
    """Plain value and whether any part of it was secret."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return unwrap(value["value"])[0], True
        pairs = {k: unwrap(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, list):
        pairs = [unwrap(v) for v in value]
        return [v for v, _ in pairs], any(s for _, s in pairs)
    return value, False


@dataclass
class Registered:
    urn: str
    type: str
    name: str
    inputs: dict
    secret_inputs: set
    parent: str
    protect: bool
    ignore_changes: list
    depends_on: list
    secret_outputs: set
    custom: bool
    delete_before_replace: bool = False
    retain_on_delete: bool = False
    timeouts: dict = field(default_factory=dict)


def _fake_key(name: str, bits: int = 2048) -> dict:
    body = hashlib.sha256(name.encode()).hexdigest() * 6
    public = (
        "-----BEGIN PUBLIC KEY-----\n"
        + "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        + "\n-----END PUBLIC KEY-----\n"
    )
    return {
        "publicKeyPem": public,
        "publicKeyOpenssh": f"ssh-ed25519 AAAAC3{body[:40]}\n",
        "privateKeyPem": f"-----BEGIN RSA PRIVATE KEY-----\nPRIVATE{name}\n-----END RSA PRIVATE KEY-----\n",
        "privateKeyOpenssh": f"-----BEGIN OPENSSH PRIVATE KEY-----\nPRIVATE{name}\n-----END OPENSSH PRIVATE KEY-----\n",
        "privateKeyPemPkcs8": f"PRIVATE{name}",
    }


# The shape of Google's answer (pulumi_gcp 10.2.0 GetUptimeCheckIPsUptimeCheckIpResult; the API's
# uptimeCheckIps.list returns ipAddress, region, location): IPv4 and IPv6 checkers, one listed twice.
UPTIME_CHECK_IPS = [
    {"ipAddress": "35.186.144.97", "region": "USA", "location": "Iowa"},
    {"ipAddress": "34.94.157.51", "region": "USA", "location": "Oregon"},
    {"ipAddress": "35.198.221.49", "region": "SOUTH_AMERICA", "location": "Sao Paulo"},
    {"ipAddress": "35.187.242.246", "region": "EUROPE", "location": "Belgium"},
    {"ipAddress": "35.187.242.246", "region": "EUROPE", "location": "Belgium"},
    {"ipAddress": "2600:1900:4000:c9af:8000::", "region": "USA", "location": "Iowa"},
]


class Mocks(pulumi.runtime.Mocks):
    """Deterministic provider answers; records every invoke."""

    preflight_stdout = ""  # what the preflight step prints (tests/program.py: a relay verdict per domain)

    def __init__(self, txt_records: dict | None = None, missing_zones: tuple = (), dns_records: list | None = None):
        self.invokes: list[tuple[str, dict]] = []
        # Existing Cloudflare records: dicts with name, type, content and comment.
        self.dns_records = [dict(r, name=name, type="TXT") for name, rs in (txt_records or {}).items() for r in rs]
        self.dns_records += dns_records or []
        self.missing_zones = missing_zones

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        out = dict(args.inputs)
        typ, name = args.typ, args.name
        if typ == "gcp:compute/address:Address":
            out["address"] = FAKE_IP
        elif typ == "tls:index/privateKey:PrivateKey":
            out.update(_fake_key(name))
        elif typ == "random:index/randomPassword:RandomPassword":
            out["result"] = (hashlib.sha256(name.encode()).hexdigest() * 4)[: int(args.inputs["length"])]
        elif typ == "random:index/randomString:RandomString":
            out["result"] = "".join(chr(65 + b % 26) for b in hashlib.sha256(name.encode()).digest()[:6])
        elif typ == "gcp:serviceaccount/account:Account":
            out["email"] = f"{args.inputs['accountId']}@{args.inputs['project']}.iam.gserviceaccount.com"
        elif typ == "gcp:compute/instance:Instance":
            out["instanceId"] = "4242424242"
            out["name"] = f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:7]}"  # auto-named
        elif typ in ("gcp:compute/disk:Disk", "gcp:compute/resourcePolicy:ResourcePolicy"):
            out.setdefault("name", name)
            out["selfLink"] = f"https://compute.googleapis.com/{name}"
        elif typ in ("gcp:compute/network:Network", "gcp:compute/subnetwork:Subnetwork"):
            out["selfLink"] = f"https://compute.googleapis.com/{name}"
        elif typ == "gcp:monitoring/uptimeCheckConfig:UptimeCheckConfig":
            out["uptimeCheckId"] = f"{name}-0123abcd"
            out["name"] = f"projects/{args.inputs['project']}/uptimeCheckConfigs/{out['uptimeCheckId']}"
        elif typ == "gcp:monitoring/notificationChannel:NotificationChannel":
            out["name"] = (
                f"projects/{args.inputs['project']}/notificationChannels/{int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)}"
            )
        elif typ == "command:remote:Command":
            step = name.rsplit("-", 1)[-1]
            out["stdout"] = self.preflight_stdout if step == "preflight" else f"[postal-gateway:{step}] done"
            out["stderr"] = ""
        return f"{name}_id", out

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.invokes.append((args.token, dict(args.args)))
        if args.token == "gcp:monitoring/getUptimeCheckIPs:getUptimeCheckIPs":
            return {"id": "uptime-check-ips", "uptimeCheckIps": UPTIME_CHECK_IPS}
        if args.token == "cloudflare:index/getZone:getZone":
            zone = args.args["filter"]["name"]
            if zone in self.missing_zones:  # what a failing provider answers: failures, not an exception
                return {}, [("filter", f"zone {zone} not found")]
            return {"id": f"zone-{zone}", "zoneId": f"zone-{zone}", "name": zone}
        if args.token == "cloudflare:index/getDnsRecords:getDnsRecords":
            return {"results": self.list_records(args.args)}
        return {}

    def list_records(self, query: dict) -> list[dict]:
        """Cloudflare's list DNS records (GET /zones/{zone_id}/dns_records) as pulumi_cloudflare 6.23.1's
        getDnsRecords invoke sends it: zoneId, optional type, name {"exact": …} (name filters are
        case-insensitive); each result has GetDnsRecordsResultResult's fields (comment null when unset)."""
        zone = query["zoneId"].removeprefix("zone-")
        name = query.get("name", {}).get("exact", "").lower()
        results = []
        for i, record in enumerate(self.dns_records):
            stored = record["name"].lower()  # Cloudflare stores names in lower case
            if not (stored == zone or stored.endswith("." + zone)):
                continue  # another zone's record
            if (name and stored != name) or (query.get("type") and record["type"] != query["type"]):
                continue
            results.append(
                {
                    "id": f"record-{i}",
                    "name": stored,
                    "type": record["type"],
                    "content": record["content"],
                    "comment": record.get("comment"),
                    "ttl": 1,
                    "proxied": False,
                    "proxiable": record["type"] in ("A", "AAAA", "CNAME"),
                    "priority": record.get("priority"),
                    "tags": [],
                    "meta": "{}",
                    "createdOn": "2026-01-01T00:00:00Z",
                    "modifiedOn": "2026-01-01T00:00:00Z",
                }
            )
        return results


class RecordingMonitor(mocks.MockMonitor):
    def __init__(self, mock: Mocks):
        super().__init__(mock)
        self.registered: list[Registered] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        inputs, _ = unwrap(rpc.deserialize_properties(request.object))
        raw_inputs = rpc.deserialize_properties(request.object)
        secret_outputs = set(request.additionalSecretOutputs)
        state = rpc.deserialize_properties(response.object)
        for key in secret_outputs & set(state):
            state[key] = {**SECRET, "value": state[key]}
        obj = mocks._sync_await(rpc.serialize_properties(state, {}))
        self.registered.append(
            Registered(
                urn=response.urn,
                type=request.type,
                name=request.name,
                inputs=inputs,
                secret_inputs={k for k, v in raw_inputs.items() if unwrap(v)[1]},
                parent=request.parent,
                protect=request.protect,
                ignore_changes=list(request.ignoreChanges),
                depends_on=list(request.dependencies),
                secret_outputs=secret_outputs,
                custom=request.custom,
                delete_before_replace=request.deleteBeforeReplace,
                retain_on_delete=request.retainOnDelete,
                timeouts={"create": request.customTimeouts.create, "update": request.customTimeouts.update},
            )
        )
        return resource_pb2.RegisterResourceResponse(urn=response.urn, id=response.id, object=obj)


@dataclass
class Run:
    resources: list[Registered]
    invokes: list[tuple[str, dict]]
    outputs: dict[str, tuple[Any, bool]]  # name -> (value, is_secret)
    error: BaseException | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)  # (level, message) the program logged
    tunnels: list[tuple] = field(default_factory=list)  # IAP tunnels opened (tests/program.py records them)

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str) -> Registered:
        (match,) = [r for r in self.resources if r.name == name]
        return match

    def by_urn(self, urn: str) -> Registered:
        (match,) = [r for r in self.resources if r.urn == urn]
        return match


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelname.lower(), record.getMessage()))


def execute(
    mock: Mocks,
    config: dict[str, Any],
    secret_keys: tuple = (),
    stack: str = "prod",
    main: Path = MAIN,
    preview: bool = False,
) -> Run:
    """Run `main` under `mock` with `config` (full keys, string values) as stack `stack`; `preview`
    runs it as `pulumi preview` does (pulumi.runtime.is_dry_run(): no IAP tunnel is opened)."""
    monitor = RecordingMonitor(mock)
    logger = logging.getLogger("postal-gateway.offline")
    logger.propagate = False
    capture = _Capture()
    logger.handlers = [capture]
    pulumi.runtime.set_mocks(mock, project=PROJECT, stack=stack, preview=preview, logger=logger, monitor=monitor)
    pulumi.runtime.set_all_config(config, list(secret_keys))
    root = pulumi.runtime.get_root_resource()
    root.outputs.clear()
    outputs: dict[str, tuple[Any, bool]] = {}
    error: list[BaseException] = []

    async def collect():
        for name, value in list(root.outputs.items()):
            out = pulumi.Output.from_input(value)
            outputs[name] = (unwrap(await out.future())[0], await out.is_secret())

    @pulumi.runtime.test
    def program():
        try:
            runpy.run_path(str(main), run_name="__main__")
        except pulumi.RunError as err:
            error.append(err)
            return None
        return collect()

    program()
    return Run(monitor.registered, mock.invokes, outputs, error[0] if error else None, capture.records)
