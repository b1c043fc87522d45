"""Off-site backups: the bucket and the VM's create-only identity (under mocks), the encrypted upload
and the restore drill end to end on the fake host (real gpg, tar, sha256sum), the stale-backup alert."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import fakehost
import pgp
import program
import pytest
from program import commands, env_of
from test_monitoring import verdicts
from test_operations import backup_env, sbin, units_of
from test_scripts import Machine

from components import backup, config, units

NS = "postal-gateway:"
BUCKET = "acme-mail-prod-postal-backups"  # program.BASE_CONFIG: project acme-mail, stack prod
DRILL = program.ROOT / "scripts" / "restore_drill.py"
# roles/storage.objectCreator, from Google's IAM roles reference
# (https://cloud.google.com/storage/docs/access-control/iam-roles, "Storage Object Creator"):
OBJECT_CREATOR = {
    "orgpolicy.policy.get",
    "resourcemanager.projects.get",
    "storage.folders.create",
    "storage.managedFolders.create",
    "storage.multipartUploads.abort",
    "storage.multipartUploads.create",
    "storage.multipartUploads.listParts",
    "storage.objects.create",
}
# what reading, listing, deleting or replacing an object needs
# (https://cloud.google.com/storage/docs/access-control/iam-permissions: replacing = create + delete)
DESTROY_OR_READ = {"storage.objects.get", "storage.objects.list", "storage.objects.delete", "storage.objects.update"}


# --- what the program registers ---


def test_the_bucket_is_private_locked_and_expires(run):
    (bucket,) = run.of_type("gcp:storage/bucket:Bucket")
    i = bucket.inputs
    assert i["name"] == BUCKET and i["project"] == "acme-mail" and i["location"] == "EUROPE-WEST1"
    assert i["uniformBucketLevelAccess"] is True and i["publicAccessPrevention"] == "enforced"
    # backupLockDays defaults to backupRetentionDays (3): no backup can be deleted or replaced for 3 days
    assert i["retentionPolicy"] == {"retentionPeriod": str(3 * 86400)}
    assert i["lifecycleRules"] == [{"action": {"type": "Delete"}, "condition": {"age": 3}}]
    # Cloud Storage refuses Object Versioning on a bucket with a retention policy (bucket-lock docs)
    assert i["versioning"] == {"enabled": False}
    assert bucket.protect and bucket.retain_on_delete  # backups outlive the stack


def test_without_a_lock_the_bucket_is_versioned_instead():
    result = program.run({NS + "backupLockDays": "0", NS + "backupRetentionDays": "7"})
    assert result.error is None, result.error
    (bucket,) = result.of_type("gcp:storage/bucket:Bucket")
    assert "retentionPolicy" not in bucket.inputs and bucket.inputs["versioning"] == {"enabled": True}
    assert bucket.inputs["lifecycleRules"] == [
        {"action": {"type": "Delete"}, "condition": {"age": 7}},
        {"action": {"type": "Delete"}, "condition": {"daysSinceNoncurrentTime": 1}},
    ]


def test_an_ephemeral_stack_leaves_no_bucket_behind():
    """scripts/e2e.py's throwaway stacks: destroy must delete the bucket with its objects."""
    result = program.run({NS + "ephemeral": "true"}, stack="e2e-test")
    assert result.error is None, result.error
    (bucket,) = result.of_type("gcp:storage/bucket:Bucket")
    assert not bucket.protect and not bucket.retain_on_delete and bucket.inputs["forceDestroy"] is True
    assert "retentionPolicy" not in bucket.inputs and bucket.inputs["versioning"] == {"enabled": False}


def test_the_vm_may_only_create_objects_in_that_bucket(run):
    (account,) = run.of_type("gcp:serviceaccount/account:Account")
    vm = f"serviceAccount:{account.inputs['accountId']}@acme-mail.iam.gserviceaccount.com"
    (writer,) = run.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert (writer.inputs["bucket"], writer.inputs["role"], writer.inputs["member"]) == (BUCKET, backup.WRITER_ROLE, vm)
    assert backup.WRITER_ROLE == "roles/storage.objectCreator"
    assert "storage.objects.create" in OBJECT_CREATOR and not OBJECT_CREATOR & DESTROY_OR_READ
    # nothing else gives the VM a storage role: no project-wide grant, no other bucket binding
    project_roles = {m.inputs["role"] for m in run.of_type("gcp:projects/iAMMember:IAMMember")}
    assert not any("storage" in role for role in project_roles)
    assert [r.type for r in run.resources if "IAM" in r.type and "storage" in r.type] == [writer.type]


def test_an_existing_bucket_in_another_project_is_used_as_is():
    result = program.run({NS + "backupBucket": "gs://acme-vault-backups/"})
    assert result.error is None, result.error
    assert result.of_type("gcp:storage/bucket:Bucket") == []
    (writer,) = result.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert writer.inputs["bucket"] == "acme-vault-backups" and writer.inputs["role"] == backup.WRITER_ROLE
    env = backup_env(units_of(commands(result)["ops"]))
    assert (env["PG_BACKUP_BUCKET"], env["PG_BACKUP_PREFIX"]) == ("acme-vault-backups", "prod/")
    assert result.outputs["backupLocation"] == ("gs://acme-vault-backups/prod/", False)


def test_the_ops_step_gets_the_public_key_and_never_a_private_one(run):
    ops = commands(run)["ops"]
    key = program.BASE_CONFIG[NS + "backupPublicKey"]
    assert env_of(ops)["PG_BACKUP_PUBLIC_KEY"].strip() == key.strip()
    env = backup_env(units_of(ops))
    assert env["PG_BACKUP_KEY"] == units.BACKUP_KEY
    assert (
        env["PG_BACKUP_KEY_FINGERPRINT"] == "0A53B65A17EAC3531448BDDECECE58D2AFCCD2D3"
    )  # tests/data/test-backup-key.asc
    service = units_of(ops)["/etc/systemd/system/postal-gateway-backup.service"]
    assert "ExecStartPost=/usr/local/sbin/postal-gateway-backup-upload\n" in service
    everything = json.dumps([r.inputs for r in run.resources])
    assert "PRIVATE KEY" not in everything.replace("OPENSSH PRIVATE KEY", "").replace("RSA PRIVATE KEY", "")
    assert run.outputs["backupLocation"] == (f"gs://{BUCKET}/prod/", False)


def test_a_missing_key_says_how_to_make_one():
    result = program.run({NS + "backupPublicKey": None})
    assert isinstance(result.error, config.ConfigError) and result.resources == []
    (line,) = [item for item in str(result.error).splitlines() if "backupPublicKey" in item]
    assert "is required" in line and "gpg --quick-gen-key" in line and "gpg --armor --export" in line


def test_the_example_stack_key_is_warned_about():
    example = (program.ROOT / "tests/data/example-backup-key.asc").read_text()
    result = program.lookup({NS + "backupPublicKey": example})
    assert result[1] is None
    from test_config import load

    notes = config.warnings(load({NS + "backupPublicKey": example}))
    assert any("nobody holds its private key" in n for n in notes)
    assert not any("backupPublicKey" in n for n in config.warnings(load()))
    for stack in ("prod", "staging"):  # the committed example files carry that key, and say CHANGE
        text = (program.ROOT / f"Pulumi.{stack}.yaml").read_text()
        assert example.strip().splitlines()[2] in text and "CHANGE: an EXAMPLE backup key" in text


# --- the stale-backup alert ---


def upload_metric_matches(line: str) -> bool:
    """The log-based metric's MESSAGE regex (RE2; this pattern means the same in Python's re)."""
    return re.match(f"^{backup.UPLOADED}{BUCKET}/prod/", line) is not None


UPLOADS = 'logging_googleapis_com:user_postal_gateway_prod_backup_uploads{monitored_resource="gce_instance"}'
OTHER_METRIC = 'logging_googleapis_com:user_postal_gateway_prod_relay_errors{monitored_resource="gce_instance"}'


def test_the_query_counts_the_upload_metric():
    query = backup.stale_backup_query(backup.metric_name(config_stub()))
    assert query == f"(sum(increase({UPLOADS}[26h])) or vector(0)) < 1"


def config_stub():
    from test_config import load

    return load()


STEP = "10m"  # promtool's sample and evaluation interval here: a day is 144 steps


def nightly_uploads(days: int, missed: tuple[int, ...] = ()) -> str:
    """The upload metric as a counter in promtool's notation (a sample every STEP): one upload at the
    start of each day (none on the `missed` days), starting at 0."""
    values, count = [], 0
    for day in range(days):
        count += day not in missed
        values.append(f"{count}x143")
    return "0 " + " ".join(values)


def test_stale_backup_alert_fires_after_26_hours_without_an_upload_and_not_before(tmp_path):
    """The query as rendered, evaluated by Prometheus's engine (promtool, tests/test_monitoring.py)."""
    query = backup.stale_backup_query(backup.metric_name(config_stub()))
    ours = {UPLOADS: nightly_uploads(3)}
    missed = {UPLOADS: nightly_uploads(4, missed=(2,))}  # the third night's upload failed (day 2)
    other = {OTHER_METRIC: nightly_uploads(3)}
    control = query.replace("< 1", "< 0")
    cases = {  # what, at -> (query, series, stale)
        **{("daily", at): (query, ours, False) for at in ("1d", "1d12h", "2d1h50m", "2d23h")},  # never stale
        ("missed", "2d1h50m"): (query, missed, False),  # 25h50m since the last upload (day 1)
        ("missed", "2d2h10m"): (query, missed, True),  # 26h10m since it
        ("missed", "3d1h"): (query, missed, False),  # the next night's upload clears it
        ("not ours", "2d"): (query, other, True),  # no series of ours at all
        ("control", "1h"): (control, {}, False),  # the comparison decides
    }
    answers = verdicts(tmp_path, [(q, series, at) for (_, at), (q, series, _) in cases.items()], interval=STEP)
    assert dict(zip(cases, answers, strict=True)) == {case: stale for case, (_, _, stale) in cases.items()}


def test_the_alert_is_promql_on_the_upload_metric_without_metric_validation(run):
    (metric,) = [m for m in run.of_type("gcp:logging/metric:Metric") if m.name == "postal-backup-uploads"]
    f = metric.inputs["filter"]
    assert 'jsonPayload._SYSTEMD_UNIT="postal-gateway-backup.service"' in f
    assert "/etc/systemd/system/postal-gateway-backup.service" in units.ops(
        maintenance_window="Sun 02:00",
        snapshot_start_utc="04:00",
        backup_retention_days=3,
        backup_bucket=BUCKET,
        backup_prefix="prod/",
        backup_key_fingerprint="X",
    )
    assert f'jsonPayload.MESSAGE=~"^uploaded gs://{BUCKET}/prod/"' in f
    (policy,) = [p for p in run.of_type("gcp:monitoring/alertPolicy:AlertPolicy") if "stale-backup" in p.name]
    (condition,) = policy.inputs["conditions"]
    promql = condition["conditionPrometheusQueryLanguage"]
    assert promql["query"] == backup.stale_backup_query(metric.inputs["name"])
    # the descriptor exists only after the first upload: created in the same up, it must not be validated
    assert promql["disableMetricValidation"] is True and metric.urn in policy.depends_on
    # the same e-mail channel (alertEmail) as MailMonitoring's policies
    others = {tuple(p.inputs["notificationChannels"]) for p in run.of_type(policy.type) if p is not policy}
    assert others == {tuple(policy.inputs["notificationChannels"])}
    assert "docs/operations.md#backups" in policy.inputs["documentation"]["content"]


# --- the upload and the restore drill on the fake host ---


@pytest.fixture(scope="module")
def operator():
    return pgp.operator()


@pytest.fixture(scope="module")
def drill_steps(operator):
    result = program.run({NS + "backupPublicKey": operator.public})
    assert result.error is None, result.error
    return {step: (c.inputs["create"], c.inputs.get("stdin") or "") for step, c in commands(result).items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory, drill_steps):
    """A VM after every step but the preflight: what `pulumi up` leaves, with an empty MariaDB."""
    machine = Machine(tmp_path_factory.mktemp("backup-host"), fakehost.serve())
    machine.up(drill_steps, ("os", "database", "postal", "caddy", "smtp-tls", "ops"))
    return machine


@pytest.fixture
def vm(tmp_path, built):
    machine = Machine(tmp_path / "vm", built.fake_env, like=built)
    (machine.root / ".fake/gcs" / BUCKET).mkdir(parents=True)  # pulumi up created the bucket
    return machine


@pytest.fixture
def env(drill_steps):
    return backup_env(units_of_steps(drill_steps))


def units_of_steps(steps):
    from types import SimpleNamespace

    return units_of(SimpleNamespace(inputs={"create": steps["ops"][0]}))


def nightly(machine: Machine, env: dict) -> subprocess.CompletedProcess:
    """What postal-gateway-backup.service runs: ExecStart, then ExecStartPost only if it succeeded."""
    first = sbin(machine, "postal-gateway-backup", **env)
    assert first.returncode == 0, first.stderr
    return sbin(machine, "postal-gateway-backup-upload", **env)


def objects(root) -> list:
    return sorted(p for p in (root / ".fake/gcs" / BUCKET).rglob("*") if p.is_file())


def test_the_backup_is_encrypted_and_uploaded_by_an_identity_that_cannot_read_it(vm, env, operator):
    vm.file("/opt/postal/mariadb/ibdata1").write_text("the messages")
    result = nightly(vm, env)
    assert result.returncode == 0, result.stderr
    (obj,) = objects(vm.root)
    assert obj.parent.name == "prod" and re.fullmatch(r"postal-backup-\d{8}T\d{6}Z\.tar\.gpg", obj.name)
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"uploaded gs://{BUCKET}/prod/{obj.name} (") and operator.fingerprint in line
    assert upload_metric_matches(line)  # what the stale-backup alert counts
    data = obj.read_bytes()
    assert b"the messages" not in data and b"signing" not in data and b"SHA256SUMS" not in data
    packets = pgp.gpg(operator.home, "--list-packets", str(obj), check=False).stdout
    subkey = pgp.gpg(operator.home, "--list-keys", "--with-colons").stdout.split("sub:")[1].split(":")[3]
    assert f"pubkey enc packet: version 3, algo 18, keyid {subkey}" in packets  # to the operators' subkey
    # the VM holds no private key that could decrypt it, and its token never was on a command line
    assert "PGP PRIVATE KEY" not in "".join(
        p.read_text(errors="replace") for p in vm.root.rglob("*") if p.is_file() and ".fake" not in p.parts
    )
    assert fakehost.VM_TOKEN not in "\n".join(vm.calls())
    # the operator's key opens it: the MariaDB backup, Postal's config and their checksums
    plain = pgp.gpg(operator.home, "--decrypt", str(obj), text=False).stdout
    listing = subprocess.run(["tar", "-t"], input=plain, capture_output=True, check=True).stdout.decode().split()
    assert listing[0] == "SHA256SUMS" and {"postal.yml", "signing.key"} <= set(listing)
    assert any(re.fullmatch(r"mariadb-\d{8}T\d{6}Z\.mbstream\.gz", n) for n in listing)
    assert list((vm.file(units.BACKUP_DIR)).glob(".upload.*")) == []  # the work files are gone


def test_a_second_upload_never_replaces_an_object(vm, env):
    assert nightly(vm, env).returncode == 0
    (obj,) = objects(vm.root)
    before = obj.read_bytes()
    again = sbin(vm, "postal-gateway-backup-upload", **env)  # the same backup, the same object name
    assert again.returncode != 0 and "412" in again.stderr and "pre-conditions" in again.stderr
    assert obj.read_bytes() == before and "uploaded gs://" not in again.stdout


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda vm: shutil.rmtree(vm.root / ".fake/gcs" / BUCKET), "The specified bucket does not exist"),
        (lambda vm: vm.file("/opt/postal/config/signing.key").unlink(), "signing.key is missing"),
        (lambda vm: vm.file(units.BACKUP_KEY).write_text("not a key\n"), "gpg"),
    ],
    ids=["no-bucket", "no-signing-key", "bad-key"],
)
def test_a_failed_upload_fails_the_unit_and_says_why(vm, env, break_it, message):
    assert sbin(vm, "postal-gateway-backup", **env).returncode == 0
    break_it(vm)
    result = sbin(vm, "postal-gateway-backup-upload", **env)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "uploaded gs://" not in result.stdout
    if (vm.root / ".fake/gcs" / BUCKET).exists():
        assert objects(vm.root) == []


def operator_env(tmp_path, cloud, operator) -> dict:
    """The operator's machine: gcloud (the fake over the surviving bucket) and gpg with the private key."""
    bin_dir = tmp_path / "operator-bin"
    bin_dir.mkdir(exist_ok=True)
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/bin/sh\nexec {sys.executable} {program.ROOT / "tests/fake_gcloud_storage.py"} "$@"\n')
    gcloud.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCS": str(cloud), "GNUPGHOME": operator.home}


def drill(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DRILL), *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )


def test_restore_drill_end_to_end_onto_a_new_vm(tmp_path, vm, built, env, operator):
    """docs/runbook.md "Restore from the off-site backup": the VM, its disks and snapshots are lost;
    a new VM from `pulumi up` (empty data disk) gets the data back from the bucket alone."""
    vm.file("/opt/postal/mariadb/ibdata1").write_text("every message")
    vm.file("/opt/postal/mariadb/postal-server-1.ibd").write_text("server 1's messages")
    assert nightly(vm, env).returncode == 0
    cloud = tmp_path / "cloud"
    shutil.copytree(vm.root / ".fake/gcs", cloud)
    shutil.rmtree(vm.root)  # the VM, its data disk and its snapshots are gone

    new = Machine(tmp_path / "new-vm", built.fake_env, like=built)
    assert "every message" not in new.file("/opt/postal/mariadb/ibdata1").read_text()  # a new, empty MariaDB
    out = tmp_path / "drill"
    started = time.monotonic()
    fetched = drill([f"gs://{BUCKET}/prod/", "--out", str(out)], operator_env(tmp_path, cloud, operator))
    assert fetched.returncode == 0, fetched.stderr
    (bundle,) = out.glob("postal-backup-*.tar")
    assert re.search(r"^timings: fetch [\d.]+s, decrypt [\d.]+s, verify [\d.]+s$", fetched.stdout, re.M)
    # copied to the new VM (gcloud compute scp), then restored there
    shutil.copy(bundle, new.file("/tmp") / bundle.name)
    restore_started = time.monotonic()
    restored = sbin(new, "postal-gateway-restore", f"{new.root}/tmp/{bundle.name}")
    assert restored.returncode == 0, restored.stderr
    print(
        f"\nrestore drill on the fake host: operator side {restore_started - started:.2f}s "
        f"({fetched.stdout.strip().splitlines()[-1]}), VM side {time.monotonic() - restore_started:.2f}s"
    )
    assert new.file("/opt/postal/mariadb/ibdata1").read_text() == "every message"
    assert new.file("/opt/postal/mariadb/postal-server-1.ibd").read_text() == "server 1's messages"
    assert new.file(f"/opt/postal/mariadb/{fakehost.CHECKPOINTS}").read_text() == "backup_type = log-applied\n"
    (kept,) = new.file("/opt/postal/config").glob("restored-*")
    assert (kept / "signing.key").read_text() == new.file("/opt/postal/config/signing.key").read_text()
    state = new.state()
    assert state["containers"]["postal-mariadb"]["running"] and state["postal"]["running"]


def damaged(cloud, how: str) -> None:
    (obj,) = sorted(p for p in cloud.rglob("*.tar.gpg"))
    data = bytearray(obj.read_bytes())
    if how == "truncated":
        obj.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x01
        obj.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_the_drill_refuses_a_damaged_object_and_writes_nothing(tmp_path, vm, env, operator, how):
    assert nightly(vm, env).returncode == 0
    cloud = vm.root / ".fake/gcs"
    damaged(cloud, how)
    out = tmp_path / "drill"
    result = drill([f"gs://{BUCKET}/prod/", "--out", str(out)], operator_env(tmp_path, cloud, operator))
    assert result.returncode == 1
    assert "restore_drill: refused: decrypting gs://" in result.stderr and "nothing was written" in result.stderr
    assert list(out.iterdir()) == []


def test_the_drill_refuses_without_the_private_key(tmp_path, vm, env, operator):
    assert nightly(vm, env).returncode == 0
    stranger = pgp.make("someone else <x@rdo-dev.com>")
    out = tmp_path / "drill"
    result = drill([f"gs://{BUCKET}/prod/", "--out", str(out)], operator_env(tmp_path, vm.root / ".fake/gcs", stranger))
    assert result.returncode == 1 and "is the operators' private key in your keyring?" in result.stderr
    assert list(out.iterdir()) == []


def bundle_of(tmp_path, vm, env, operator):
    assert nightly(vm, env).returncode == 0
    out = tmp_path / "drill"
    fetched = drill(
        [f"gs://{BUCKET}/prod/", "--out", str(out)], operator_env(tmp_path, vm.root / ".fake/gcs", operator)
    )
    assert fetched.returncode == 0, fetched.stderr
    (bundle,) = out.glob("*.tar")
    return bundle


@pytest.mark.parametrize("how", ["truncated", "corrupt", "foreign"])
def test_the_vm_refuses_a_damaged_archive_and_changes_nothing(tmp_path, vm, env, operator, how):
    bundle = bundle_of(tmp_path, vm, env, operator)
    data = bytearray(bundle.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 3]
    elif how == "corrupt":  # one bit inside the MariaDB member: only its checksum tells
        with tarfile.open(bundle) as archive:
            member = next(m for m in archive if m.name.startswith("mariadb-"))
        data[member.offset_data + member.size // 2] ^= 0x01
    target = vm.file("/tmp") / bundle.name
    target.write_bytes(bytes(data))
    if how == "foreign":
        subprocess.run(["tar", "-cf", str(target), "-C", str(vm.root), "etc/fstab"], check=True)
    vm.file("/opt/postal/mariadb/ibdata1").write_text("live data")
    before, start = vm.tree(), len(vm.calls())
    result = sbin(vm, "postal-gateway-restore", str(target))
    assert result.returncode != 0 and "nothing was changed" in result.stderr, result.stderr
    expected = {"truncated": "not a complete tar archive", "corrupt": "is corrupt", "foreign": "no postal-gateway"}
    assert expected[how] in result.stderr
    assert vm.changes(start) == [] and vm.tree() == before
