"""Drift check of a stack: does the cloud still match the code?

    python -m scripts.drift --stack prod [--summary FILE] [--preview-json FILE]

Runs `pulumi preview --refresh --expect-no-changes --json --stack STACK` (read-only: a preview writes
no state and takes no lock) and lists each resource the next `pulumi up` would change, with the
properties. Exit 0: no drift (differences that only a refresh shows, and entries of the ignore file,
are listed but do not fail); 1: drift; 2: the preview itself failed (credentials, backend, program).

The JSON is the CLI's PreviewDigest (pulumi/pulumi sdk/go/common/display, `pulumi preview --json`,
https://www.pulumi.com/docs/iac/cli/commands/pulumi_preview/): `steps` of {op, urn, diffReasons,
replaceReasons, detailedDiff: {property path: {diffKind, inputDiff}}}, `diagnostics` of {urn, message,
severity}, `changeSummary`. Secret values appear as "[secret]"; only names and paths are printed here.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
IGNORE_FILE = ROOT / ".ci" / "drift-ignore.yaml"
NO_CHANGE = ("same", "read")
REFRESH = "refresh"
# both halves of a replacement are listed as one `replace`
REPLACE_HALVES = ("create-replacement", "delete-replaced")
EXPECTED = "no changes were expected"  # the CLI's --expect-no-changes error

# Likely causes of drift this program is known to meet, and what to run: (type, property glob, hint).
HINTS = (
    (
        "gcp:compute/instance:Instance",
        "metadata*",
        "someone's `gcloud compute ssh` added a key to the instance metadata: `pulumi up` removes it",
    ),
    (
        "gcp:compute/firewall:Firewall",
        "sourceRanges*",
        "a rule was edited in the console, or Google's uptime-checker list changed (postal-uptime rule): `pulumi up`",
    ),
    (
        "cloudflare:index/dnsRecord:DnsRecord",
        "*",
        "a record was edited in the Cloudflare dashboard: `pulumi up` restores it",
    ),
    (
        "command:remote:Command",
        "*",
        "a bootstrap step's inputs changed (a new provider default, or a config change not deployed): `pulumi up`",
    ),
)


@dataclass
class Row:
    urn: str
    type: str
    op: str
    properties: list[str]
    note: str = ""

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


def type_of(urn: str) -> str:
    return urn.split("::")[-2].rsplit("$", 1)[-1] if urn.count("::") >= 3 else ""


def properties(step: dict) -> list[str]:
    detailed = step.get("detailedDiff") or {}
    found = list(detailed) or list(step.get("diffReasons") or []) + list(step.get("replaceReasons") or [])
    return sorted(dict.fromkeys(found)) or ["(the whole resource)"]


def load_ignores(path: Path) -> list[dict]:
    """Entries {type, name, property, reason}: globs for one resource's property, each with its reason."""
    if not path.exists():
        return []
    entries = yaml.safe_load(path.read_text()) or []
    for entry in entries:
        missing = {"type", "name", "property", "reason"} - set(entry)
        if missing or not str(entry.get("reason", "")).strip():
            raise SystemExit(f"{path}: entry {entry} lacks {', '.join(sorted(missing)) or 'a reason'}")
    return entries


def ignored_by(row: Row, prop: str, ignores: list[dict]) -> dict | None:
    return next(
        (
            e
            for e in ignores
            if e["type"] == row.type
            and fnmatch.fnmatchcase(row.name, e["name"])
            and fnmatch.fnmatchcase(prop, e["property"])
        ),
        None,
    )


def hint(row: Row) -> str:
    return next(
        (
            text
            for typ, prop, text in HINTS
            if typ == row.type and any(fnmatch.fnmatchcase(p, prop) for p in row.properties)
        ),
        "",
    )


def classify(digest: dict, ignores: list[dict]) -> tuple[list[Row], list[Row], list[Row]]:
    """(drift: what `up` would change, ignored: drift the ignore file explains, refreshed: cloud differences
    the program agrees with, e.g. fields the provider fills in that the program does not set)."""
    steps = digest.get("steps") or []
    replaced = {s["urn"] for s in steps if s.get("op") == "replace"}
    drift, ignored, refreshed = [], [], []
    for step in steps:
        op, urn = step.get("op", ""), step.get("urn", "")
        if op in NO_CHANGE or type_of(urn) == "pulumi:pulumi:Stack" or type_of(urn).startswith("pulumi:providers:"):
            continue
        if op in REPLACE_HALVES and urn in replaced:
            continue
        row = Row(urn, type_of(urn), "replace" if op in REPLACE_HALVES else op, properties(step))
        if op == REFRESH:
            if step.get("detailedDiff") or step.get("diffReasons"):
                refreshed.append(row)
            continue
        reasons = [ignored_by(row, p, ignores) for p in row.properties]
        if row.op == "update" and all(reasons):
            row.note = "; ".join(dict.fromkeys(r["reason"] for r in reasons))
            ignored.append(row)
        else:
            row.note = hint(row)
            drift.append(row)
    return drift, ignored, refreshed


def errors(digest: dict) -> list[str]:
    return [d.get("message", "").strip() for d in digest.get("diagnostics") or [] if d.get("severity") == "error"]


def markdown(stack: str, drift: list[Row], ignored: list[Row], refreshed: list[Row]) -> str:
    lines = [f"### Drift: stack `{stack}`", ""]
    if drift:
        lines += [
            f'**{len(drift)} resource(s) differ from the code** (docs/runbook.md, "Drift": `pulumi up` or '
            "`pulumi refresh`?)",
            "",
            "| resource | type | `up` would | properties | likely cause |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| `{r.name}` | `{r.type}` | {r.op} | {', '.join(f'`{p}`' for p in r.properties)} | {r.note} |"
            for r in drift
        ]
    else:
        lines.append("No drift: `pulumi up` would change nothing.")
    for title, rows in (
        ("Ignored (.ci/drift-ignore.yaml)", ignored),
        ("Changed in the cloud, matching the code", refreshed),
    ):
        if rows:
            lines += ["", f"{title}:", ""]
            lines += [
                f"- `{r.name}` (`{r.type}`): {', '.join(f'`{p}`' for p in r.properties)} {r.note}".rstrip()
                for r in rows
            ]
    return "\n".join(lines) + "\n"


PREVIEW_ARGS = ["pulumi", "preview", "--refresh", "--expect-no-changes", "--json", "--non-interactive"]


def preview(stack: str) -> tuple[int, str, str]:
    command = [*PREVIEW_ARGS, "--stack", stack]
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    except OSError as err:
        return 2, "", f"cannot run pulumi: {err}"
    return result.returncode, result.stdout, result.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.drift", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--preview-json", type=Path, help="read this preview JSON instead of running pulumi")
    parser.add_argument("--ignore", type=Path, default=IGNORE_FILE, help="ignore file (default .ci/drift-ignore.yaml)")
    parser.add_argument("--summary", type=Path, default=os.environ.get("GITHUB_STEP_SUMMARY") or None)
    args = parser.parse_args(argv)
    if args.preview_json:
        code, stdout, stderr = 0, args.preview_json.read_text(), ""
    else:
        code, stdout, stderr = preview(args.stack)
    try:
        digest = json.loads(stdout)
    except json.JSONDecodeError:
        print(
            f"drift: the preview of {args.stack} failed (exit {code}), no JSON:\n{stderr.strip()[-2000:]}",
            file=sys.stderr,
        )
        return 2
    drift, ignored, refreshed = classify(digest, load_ignores(args.ignore))
    report = markdown(args.stack, drift, ignored, refreshed)
    print(report)
    if args.summary:
        with args.summary.open("a") as f:
            f.write(report + "\n")
    if drift:
        return 1
    problems = errors(digest) or ([stderr.strip()] if code != 0 and EXPECTED not in stderr else [])
    if problems:
        print(
            f"drift: the preview of {args.stack} failed (exit {code}):\n" + "\n".join(problems)[-2000:], file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
