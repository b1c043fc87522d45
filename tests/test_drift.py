"""scripts/drift.py: what a `pulumi preview --refresh --expect-no-changes --json` says, as the daily job reports it.

The previews are PreviewDigest documents as the CLI writes them (pulumi/pulumi sdk/go/common/display:
steps of {op, urn, provider, oldState, newState, diffReasons, replaceReasons, detailedDiff}; diagnostics
of {urn, message, severity}; changeSummary), with this program's resource names and types.
"""

import json
import os
import subprocess
import sys

import program
import pytest

from scripts import drift

STACK_URN = "urn:pulumi:prod::postal-gateway::pulumi:pulumi:Stack::postal-gateway-prod"


def urn(typ, name, parent=""):
    return f"urn:pulumi:prod::postal-gateway::{parent + '$' if parent else ''}{typ}::{name}"


VM = urn("gcp:compute/instance:Instance", "postal-vm", "postal-gateway:index:MailHost")
BOOT = urn("gcp:compute/disk:Disk", "postal-boot", "postal-gateway:index:MailHost")
RECORD = urn("cloudflare:index/dnsRecord:DnsRecord", "postal-host-a", "postal-gateway:index:MailDns")
IP = urn("gcp:compute/address:Address", "postal-ip", "postal-gateway:index:MailNetwork")


def step(op, target, detailed=None, reasons=None, replace=None):
    out = {"op": op, "urn": target, "provider": "urn:pulumi:prod::postal-gateway::pulumi:providers:gcp::default"}
    if detailed is not None:
        out["detailedDiff"] = {k: {"diffKind": v, "inputDiff": False} for k, v in detailed.items()}
    if reasons:
        out["diffReasons"] = reasons
    if replace:
        out["replaceReasons"] = replace
    return out


def digest(*steps, diagnostics=()):
    ops = {}
    for s in steps:
        ops[s["op"]] = ops.get(s["op"], 0) + 1
    return {
        "config": {"gcp:project": "acme-mail"},
        "steps": [step("same", STACK_URN), *steps],
        "diagnostics": list(diagnostics),
        "changeSummary": ops,
    }


def test_a_clean_preview_is_no_drift():
    found = drift.classify(digest(step("same", VM), step("same", IP)), [])
    assert found == ([], [], [])


def test_an_update_lists_the_resource_its_properties_and_the_likely_cause(tmp_path):
    preview = digest(step("update", VM, {"metadata.ssh-keys": "update"}, ["metadata"]), step("same", IP))
    rows, ignored, refreshed = drift.classify(preview, [])
    assert [(r.name, r.type, r.op, r.properties) for r in rows] == [
        ("postal-vm", "gcp:compute/instance:Instance", "update", ["metadata.ssh-keys"])
    ]
    assert "gcloud compute ssh" in rows[0].note
    report = drift.markdown("prod", rows, ignored, refreshed)
    assert "| `postal-vm` | `gcp:compute/instance:Instance` | update | `metadata.ssh-keys` |" in report


def test_a_replacement_is_one_row_and_a_deleted_resource_is_the_whole_resource():
    preview = digest(
        step("create-replacement", RECORD, replace=["content"]),
        step("replace", RECORD, {"content": "update-replace"}),
        step("delete-replaced", RECORD),
        step("create", IP),  # deleted in the console: up recreates it
    )
    rows, _, _ = drift.classify(preview, [])
    assert [(r.name, r.op, r.properties) for r in rows] == [
        ("postal-host-a", "replace", ["content"]),
        ("postal-ip", "create", ["(the whole resource)"]),
    ]


def test_differences_only_a_refresh_shows_do_not_fail():
    # the cloud filled in a field the program does not set: refresh records it, up changes nothing
    preview = digest(step("refresh", BOOT, {"image": "update"}), step("same", BOOT))
    rows, ignored, refreshed = drift.classify(preview, [])
    assert rows == [] and ignored == [] and [r.name for r in refreshed] == ["postal-boot"]


def test_the_monthly_image_is_ignored_by_the_program_itself(run):
    # a new Rocky image only moves the family's latest image: the boot disk ignores `image`
    boot = run.named("postal-boot")
    assert boot.ignore_changes == ["image"] and boot.inputs["image"].endswith("/family/rocky-linux-9")


IGNORES = [{"type": "gcp:compute/instance:Instance", "name": "postal-*", "property": "labels.goog-*", "reason": "GCE"}]


@pytest.mark.parametrize(
    "properties, is_drift",
    [(["labels.goog-ops-agent-policy"], False), (["labels.goog-ops-agent-policy", "machineType"], True)],
)
def test_an_ignore_entry_covers_exactly_its_property(properties, is_drift):
    preview = digest(step("update", VM, dict.fromkeys(properties, "update")))
    rows, ignored, _ = drift.classify(preview, IGNORES)
    assert bool(rows) == is_drift and bool(ignored) != is_drift
    if ignored:
        assert ignored[0].note == "GCE"


def test_the_committed_ignore_file_parses_and_every_entry_has_a_reason(tmp_path):
    entries = drift.load_ignores(drift.IGNORE_FILE)
    assert all(e["reason"].strip() and "<" not in e["reason"] for e in entries)
    bad = tmp_path / "ignore.yaml"
    bad.write_text(json.dumps([{"type": "t", "name": "n", "property": "p"}]))
    with pytest.raises(SystemExit, match="lacks reason"):
        drift.load_ignores(bad)


@pytest.fixture
def stand_in(tmp_path):
    """A `pulumi` on PATH that logs its argv and answers with $OUT on stdout, $ERR on stderr, exit $CODE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulumi").write_text(
        '#!/bin/sh\nprintf "%s\\n" "$*" >>"$LOG"\ncat "$OUT"\nprintf "%s" "$ERR" >&2\nexit "$CODE"\n'
    )
    (bin_dir / "pulumi").chmod(0o755)

    def run(preview, code=0, err="", summary=True):
        out = tmp_path / "out.json"
        out.write_text(preview if isinstance(preview, str) else json.dumps(preview))
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "OUT": str(out),
            "ERR": err,
            "CODE": str(code),
            "LOG": str(tmp_path / "log"),
        }
        env.pop("GITHUB_STEP_SUMMARY", None)
        args = [sys.executable, "-m", "scripts.drift", "--stack", "prod"]
        args += ["--summary", str(tmp_path / "summary.md")] if summary else []
        result = subprocess.run(args, cwd=program.ROOT, env=env, capture_output=True, text=True, timeout=60)
        return result, (tmp_path / "log").read_text(), tmp_path / "summary.md"

    return run


EXPECTED = "error: no changes were expected but changes were proposed\n"  # the CLI's --expect-no-changes error


def test_drift_fails_the_job_and_the_summary_names_resource_and_property(stand_in):
    preview = digest(step("update", RECORD, {"content": "update"}, ["content"]))
    result, log, summary = stand_in(preview, code=255, err=EXPECTED)
    assert result.returncode == 1, result.stderr
    assert log.split() == [
        "preview",
        "--refresh",
        "--expect-no-changes",
        "--json",
        "--non-interactive",
        "--stack",
        "prod",
    ]
    text = summary.read_text()
    assert "### Drift: stack `prod`" in text and "`postal-host-a`" in text and "`content`" in text
    assert "Cloudflare dashboard" in text and 'docs/runbook.md, "Drift"' in text


def test_no_drift_passes_and_says_so(stand_in):
    result, _, summary = stand_in(digest(step("same", VM)))
    assert result.returncode == 0 and "No drift" in summary.read_text()


def test_refresh_only_differences_pass_even_when_the_cli_counted_them(stand_in):
    result, _, summary = stand_in(digest(step("refresh", BOOT, {"image": "update"})), code=255, err=EXPECTED)
    assert result.returncode == 0 and "Changed in the cloud, matching the code" in summary.read_text()


@pytest.mark.parametrize(
    "preview, err",
    [
        ("", "error: failed to decrypt: incorrect passphrase\n"),  # no JSON at all
        ('{"steps": []', "error: unexpected end of JSON\n"),
        (
            json.dumps(digest(diagnostics=[{"message": "error: 403 Forbidden", "severity": "error"}])),
            "error: preview failed\n",
        ),
    ],
)
def test_a_preview_that_fails_is_an_error_not_drift(stand_in, preview, err):
    result, _, _ = stand_in(preview, code=255, err=err)
    assert result.returncode == 2 and "failed" in result.stderr
