"""Benchmarks: program evaluation vs the SDK import floor, update blast radius, test-suite time.

    python bench/run.py [--runs N] [--suite-runs N] [--skip-suite]

Prints a table and writes bench/results.json. Numbers are wall-clock seconds on this machine;
each figure is the median of N runs with its min–max spread. Nothing here talks to a cloud.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

NS = "postal-gateway:"
EVALUATE = (
    "import sys; sys.path[:0] = ['.', 'tests']; import program; "
    "run = program.run(); assert run.error is None, run.error; assert run.outputs"
)
FLOOR = (
    "import pulumi, pulumi.runtime, yaml, pulumi_cloudflare, pulumi_tls, pulumi_random, pulumi_gcp as gcp; "
    "from pulumi_command import remote; gcp.compute.Instance; gcp.projects.Service; gcp.serviceaccount.Account"
)
EVAL_GOAL = 1.3

# One changed value per knob of the config contract.
KNOBS = {
    "hostname": "mail.rdo-dev.com",
    "sendingDomains": '["rdo-dev.com", "rdo-studio.net", "rdo-films.com"]',
    "adminEmail": "platform@rdo-dev.com",
    "sshSourceRanges": '["198.51.100.7/32"]',
    "smtpSourceRanges": '["10.0.0.0/8"]',
    "bounceSourceRanges": '["209.85.128.0/17"]',
    "webSourceRanges": '["198.51.100.0/24"]',
    "tls": "internal",
    "machineType": "e2-standard-2",
    "bootDiskSizeGb": "30",
    "dataDiskSizeGb": "100",
    "snapshotRetentionDays": "30",
    "postalVersion": "3.3.5",
    "relayHost": "relay.rdo-dev.com",
    "relayPort": "2525",
    "relayTls": "none",  # "tls" alone is refused on the STARTTLS port 587
    "selinux": "permissive",
    "dmarcPolicy": "quarantine",
    "manageSpf": "false",
    "labels": '{"team": "platform"}',
    "alertEmail": "oncall@rdo-dev.com",
    "mariadbImage": "mariadb:11.8",
    "caddyImage": "caddy:2.11",
    "maintenanceWindow": "Sat 01:00",
    "backupRetentionDays": "7",
    "backupLockDays": "1",
    "backupBucket": "rdo-vault-backups",
    "backupPublicKey": (ROOT / "tests/data/example-backup-key.asc").read_text(),
    "diskAlertPercent": "90",
    "bounceRateAlertPercent": "10",
    "queueLatencyAlertSeconds": "60",
    "relayFailureAlertCount": "20",
    "workerErrorAlertCount": "20",
}
# The read-only relay check: it changes nothing on the VM and must re-ask when the relay or the
# identity it presents changes, so it is reported apart from the bootstrap steps.
CHECKS = {"preflight"}
# Bootstrap steps each knob may rerun at most (the goal); knobs not listed must rerun no step.
STEP_GOALS = {
    "tls": {"caddy", "smtp-tls"},  # Postal's SMTP certificate comes from where the mode puts it
    "postalVersion": {"postal"},
    "relayHost": {"postal"},
    "relayPort": {"postal"},
    "relayTls": {"postal"},
    "selinux": {"os"},
    "dataDiskSizeGb": {"os"},  # xfs_growfs
    "adminEmail": {"caddy", "provision"},
    "hostname": {"postal", "caddy", "provision", "smtp-tls"},
    "sendingDomains": {"provision"},
    "mariadbImage": {"database"},
    "caddyImage": {"caddy"},
    "maintenanceWindow": {"ops"},
    "backupRetentionDays": {"ops"},
    "backupBucket": {"ops"},  # the upload's bucket
    "backupPublicKey": {"ops"},  # the key file and the unit's fingerprint
}
# Inputs whose change forces replacement (terraform-provider-google: "Changing this forces a new resource").
FORCE_NEW = {
    "gcp:compute/instance:Instance": {"name", "zone", "project", "bootDisk", "hostname", "scratchDisks"},
    "gcp:compute/address:Address": {
        "name",
        "project",
        "region",
        "address",
        "addressType",
        "networkTier",
        "purpose",
        "subnetwork",
        "network",
        "prefixLength",
        "ipVersion",
        "description",
    },
    "gcp:compute/disk:Disk": {
        "name",
        "project",
        "zone",
        "type",
        "image",
        "snapshot",
        "description",
        "physicalBlockSizeBytes",
        "sourceDisk",
    },
    "gcp:storage/bucket:Bucket": {"name", "project", "location"},
    "gcp:compute/resourcePolicy:ResourcePolicy": {"name", "project", "region", "description", "snapshotSchedulePolicy"},
    "gcp:compute/diskResourcePolicyAttachment:DiskResourcePolicyAttachment": {"name", "disk", "zone", "project"},
    "cloudflare:index/dnsRecord:DnsRecord": {"zoneId"},
    "gcp:monitoring/notificationChannel:NotificationChannel": {"type", "project"},
    "gcp:monitoring/uptimeCheckConfig:UptimeCheckConfig": {
        "project",
        "monitoredResource",
        "resourceGroup",
        "checkerType",
        "syntheticMonitor",
    },
    "gcp:logging/metric:Metric": {"name", "project"},
}
PRECIOUS = {"gcp:compute/instance:Instance": "VM", "gcp:compute/address:Address": "IP"}


def timed_pair(*codes: str) -> list[float]:
    """Wall time of each code in its own process, all started together (one CPU each on CI's 2)."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for code in codes
    ]
    times: dict[int, float] = {}
    while len(times) < len(procs):
        for i, proc in enumerate(procs):
            if i not in times and proc.poll() is not None:
                times[i] = time.perf_counter() - start
                assert proc.returncode == 0, proc.stderr.read().decode()
        time.sleep(0.005)
    return [times[i] for i in range(len(procs))]


def summary(samples: list[float]) -> dict:
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
        "runs": len(samples),
    }


def evaluation(runs: int) -> dict:
    floor, program_runs = [], []
    for _ in range(runs):  # side by side, so drift and contention hit both alike
        f, p = timed_pair(FLOOR, EVALUATE)
        floor.append(f)
        program_runs.append(p)
    result = {"floor": summary(floor), "program": summary(program_runs)}
    result["ratio"] = round(result["program"]["median"] / result["floor"]["median"], 2)
    result["goal_met"] = result["ratio"] <= EVAL_GOAL
    return result


def blast_radius() -> dict:
    import logging

    import program

    logging.disable(logging.WARNING)  # the test config's documentation ranges warn on every run

    base = program.run()
    assert base.error is None, base.error
    before = {r.name: r for r in base.resources}
    rows = {}
    for knob, value in {"(unchanged)": None, **KNOBS}.items():
        run = program.run({NS + knob: value} if value is not None else {})
        assert run.error is None, (knob, run.error)
        steps, checks, updated, replaced, added = set(), set(), set(), set(), set()
        for res in run.resources:
            old = before.get(res.name)
            if old is None:
                added.add(res.name)
                continue
            keys = {k for k in set(old.inputs) | set(res.inputs) if old.inputs.get(k) != res.inputs.get(k)}
            if not keys:
                continue
            if res.type == "command:remote:Command":
                step = res.name.split("-", 1)[1]
                (checks if step in CHECKS else steps).add(step)
            elif keys & FORCE_NEW.get(res.type, set()):
                replaced.add(res.name)
            else:
                updated.add(res.name)
        removed = set(before) - {r.name for r in run.resources}
        precious = {n for n in replaced | removed if before[n].type in PRECIOUS or before[n].protect}
        rows[knob] = {
            "steps": sorted(steps),
            "checks": sorted(checks),
            "updated": sorted(updated),
            "replaced": sorted(replaced),
            "added": sorted(added),
            "removed": sorted(removed),
            "goal_met": steps <= STEP_GOALS.get(knob, set())
            and not precious
            and (value is not None or not (steps | checks | updated | replaced | added | removed)),
        }
    return rows


SUITE_GOAL_S = 60  # the whole suite, wall time (median), on an idle 2-CPU machine


def suite(runs: int) -> dict:
    """Times the suite `runs` times: wall time, and CPU time (user + system of pytest, its xdist workers
    and every process they wait for). The goal is judged on the median: this machine's speed varies by
    15-25% from minute to minute, so one run proves little either way."""
    samples: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly"], cwd=ROOT, capture_output=True, text=True
        )
        if run.returncode != 0:
            sys.exit(f"the test suite failed (exit {run.returncode}):\n{run.stdout[-6000:]}{run.stderr[-2000:]}")
        samples.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    wall = summary(samples)
    return {**wall, "cpu": summary(cpu), "goal_s": SUITE_GOAL_S, "goal_met": wall["median"] <= SUITE_GOAL_S}


def spread(s: dict) -> str:
    return f"{s['median']:.2f} s ({s['min']:.2f}–{s['max']:.2f}, n={s['runs']})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="evaluation runs")
    parser.add_argument("--suite-runs", type=int, default=3, help="test-suite runs (the goal is on their median)")
    parser.add_argument("--skip-suite", action="store_true", help="do not time the test suite")
    args = parser.parse_args()
    began = time.perf_counter()

    results = {"evaluation": evaluation(args.runs), "blast_radius": blast_radius()}
    if not args.skip_suite:
        results["test_suite"] = suite(args.suite_runs)

    ev = results["evaluation"]
    print("## Program evaluation (process wall time)")
    print(f"| SDK import floor | {spread(ev['floor'])} |")
    print(f"| `__main__.py` under mocks | {spread(ev['program'])} |")
    print(f"| ratio (goal ≤ {EVAL_GOAL}×) | {ev['ratio']}× {'ok' if ev['goal_met'] else 'MISSED'} |")
    print("\n## Update blast radius (one knob changed)")
    print("| knob | steps rerun | relay check | resources updated | replaced / added / removed | goal |")
    print("|---|---|---|---|---|---|")
    for knob, row in results["blast_radius"].items():
        others = row["replaced"] + [f"+{n}" for n in row["added"]] + [f"-{n}" for n in row["removed"]]
        print(
            f"| {knob} | {', '.join(row['steps']) or '—'} | {'reruns' if row['checks'] else '—'} | "
            f"{', '.join(row['updated']) or '—'} | "
            f"{', '.join(others) or '—'} | {'ok' if row['goal_met'] else 'MISSED'} |"
        )
    if "test_suite" in results:
        print(
            f"\n## Test suite: {spread(results['test_suite'])} wall, "
            f"{spread(results['test_suite']['cpu'])} CPU (user + system); "
            f"goal ≤ {SUITE_GOAL_S} s wall {'ok' if results['test_suite']['goal_met'] else 'MISSED'}"
        )
    results["bench_seconds"] = round(time.perf_counter() - began, 1)
    print(f"\nBenchmark wall time: {results['bench_seconds']:.0f} s")
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    missed = (
        not ev["goal_met"]
        or not all(r["goal_met"] for r in results["blast_radius"].values())
        or not results.get("test_suite", {}).get("goal_met", True)
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
