"""OffsiteBackup: where the VM's nightly backups go, so that they outlive the VM, its disks and snapshots.

- a Cloud Storage bucket (or an existing one named by `backupBucket`, in any project): uniform
  bucket-level access, public access prevented, lifecycle deletion after `backupRetentionDays`, and a
  retention policy of `backupLockDays` (Bucket Lock: no object can be deleted or replaced before it is
  that old, by anybody). Cloud Storage refuses a retention policy on a bucket with Object Versioning
  (https://cloud.google.com/storage/docs/bucket-lock, "Object Versioning" — both cannot be enabled), so
  the bucket is versioned only when `backupLockDays` is 0;
- the VM's service account holds `roles/storage.objectCreator` on that bucket only: it may create
  objects and nothing else. That role has storage.objects.create but not storage.objects.get, .list
  or .delete (https://cloud.google.com/storage/docs/access-control/iam-roles), and replacing an
  existing object needs storage.objects.delete too
  (https://cloud.google.com/storage/docs/access-control/iam-permissions), so a compromised VM can
  neither read, delete nor overwrite a past backup. The upload also sends ifGenerationMatch=0;
- the backups are encrypted on the VM to `backupPublicKey` (scripts/remote/pg-backup-upload.sh);
  the private key stays with the operators;
- a log-based metric counting the upload's journal line (`uploaded gs://…`, written only after Cloud
  Storage confirmed the object's size and MD5) and an alert when none appeared in BACKUP_ALERT_HOURS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.apis import ProjectApis
from components.config import MailConfig
from components.monitoring import promql_name

STORAGE = "storage.googleapis.com"
WRITER_ROLE = "roles/storage.objectCreator"
BUCKET_SUFFIX = "-postal-backups"
BACKUP_UNIT = "postal-gateway-backup.service"
UPLOADED = "uploaded gs://"  # pg-backup-upload.sh's success line starts so
BACKUP_ALERT_HOURS = 26  # one daily backup, plus two hours of slack
DAY_S = 86400


def bucket_name(cfg: MailConfig) -> str:
    """`backupBucket`, or the bucket the program creates: <project>-<stack>-postal-backups (≤ 63)."""
    if cfg.backup_bucket:
        return cfg.backup_bucket
    base = re.sub(r"[^a-z0-9-]+", "-", f"{cfg.project}-{cfg.stack}".lower()).strip("-")
    return base[: 63 - len(BUCKET_SUFFIX)].rstrip("-") + BUCKET_SUFFIX


def object_prefix(cfg: MailConfig) -> str:
    """Every object of this stack lives under <stack>/ (a shared backupBucket holds several stacks)."""
    return f"{cfg.stack}/"


def metric_name(cfg: MailConfig) -> str:
    return f"postal-gateway-{cfg.stack}-backup-uploads"


def stale_backup_query(metric: str, hours: int = BACKUP_ALERT_HOURS) -> str:
    """True (a sample < 1) when no upload line was counted in `hours`. The metric is DELTA, queried
    with increase() as Google's PromQL example on a delta log metric does (like the relay-errors
    alert). A log-based counter has no series before its first matching entry, so a VM that never
    uploaded selects nothing: `or vector(0)` turns that absence into a 0 that fires, where a bare
    comparison would return nothing."""
    series = f'{promql_name(f"logging.googleapis.com/user/{metric}")}{{monitored_resource="gce_instance"}}'
    return f"(sum(increase({series}[{hours}h])) or vector(0)) < 1"


@dataclass(frozen=True)
class BackupArgs:
    config: MailConfig
    service_account_email: pulumi.Input[str]
    notification_channel: pulumi.Input[str]  # the channel's name (projects/…/notificationChannels/…)
    apis: ProjectApis


class OffsiteBackup(pulumi.ComponentResource):
    """Outputs: `bucket` (its name), `location` (gs://<bucket>/<stack>/), `writer`, `policy` (stale-backup alert)."""

    def __init__(self, name: str, args: BackupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("postal-gateway:index:OffsiteBackup", name, None, opts)
        cfg, apis = args.config, args.apis
        self.bucket_resource = None
        bucket: pulumi.Input[str] = bucket_name(cfg)
        if cfg.backup_bucket is None:
            # an ephemeral stack (e2e) must be destroyable: no lock, no versions, objects deleted with it
            lock = 0 if cfg.ephemeral else cfg.backup_lock_days
            versioned = not lock and not cfg.ephemeral
            rules = [{"action": {"type": "Delete"}, "condition": {"age": cfg.backup_retention_days}}]
            if versioned:  # a deleted backup stays a noncurrent version for a day
                rules.append({"action": {"type": "Delete"}, "condition": {"days_since_noncurrent_time": 1}})
            self.bucket_resource = gcp.storage.Bucket(
                f"{name}-backups",
                project=cfg.project,
                name=bucket,
                location=cfg.region.upper(),
                storage_class="STANDARD",
                uniform_bucket_level_access=True,
                public_access_prevention="enforced",
                versioning={"enabled": versioned},
                retention_policy={"retention_period": str(lock * DAY_S)} if lock else None,
                lifecycle_rules=rules,
                labels=cfg.gcp_labels,
                force_destroy=cfg.ephemeral,
                # the backups outlive the stack: never deleted with it, and dropped only from the state
                opts=apis.after(STORAGE, parent=self, protect=not cfg.ephemeral, retain_on_delete=not cfg.ephemeral),
            )
            bucket = self.bucket_resource.name
        self.bucket = pulumi.Output.from_input(bucket)
        self.writer = gcp.storage.BucketIAMMember(
            f"{name}-backup-writer",
            bucket=bucket,
            role=WRITER_ROLE,
            member=pulumi.Output.from_input(args.service_account_email).apply(lambda e: f"serviceAccount:{e}"),
            opts=apis.after(STORAGE, "iam.googleapis.com", parent=self),
        )
        self.uploads = gcp.logging.Metric(
            f"{name}-backup-uploads",
            project=cfg.project,
            name=metric_name(cfg),
            description="postal-gateway: encrypted backups uploaded to Cloud Storage (checked size and MD5)",
            filter=" AND ".join(
                (
                    'resource.type="gce_instance"',
                    f'jsonPayload._SYSTEMD_UNIT="{BACKUP_UNIT}"',
                    f'jsonPayload.MESSAGE=~"^{UPLOADED}{bucket_name(cfg)}/{object_prefix(cfg)}"',
                )
            ),
            metric_descriptor={"metric_kind": "DELTA", "value_type": "INT64", "unit": "1"},
            opts=apis.after("logging.googleapis.com", parent=self),
        )
        hours = BACKUP_ALERT_HOURS
        self.policy = gcp.monitoring.AlertPolicy(
            f"{name}-alert-stale-backup",
            project=cfg.project,
            display_name=f"postal-gateway ({cfg.stack}): no new backup in {hours} hours",
            combiner="OR",
            conditions=[
                {
                    "display_name": f"no backup uploaded to gs://{bucket_name(cfg)}/{object_prefix(cfg)} in {hours}h",
                    "condition_prometheus_query_language": {
                        "query": self.uploads.name.apply(stale_backup_query),
                        "duration": "0s",
                        "evaluation_interval": "300s",
                        # the metric has no descriptor until its first upload: a validated query would
                        # be refused when the policy is created (the first `pulumi up`)
                        "disable_metric_validation": True,
                    },
                }
            ],
            notification_channels=[args.notification_channel],
            documentation={
                "subject": "postal-gateway: no new backup",
                "mime_type": "text/markdown",
                "content": f"**No encrypted backup reached gs://{bucket_name(cfg)}/{object_prefix(cfg)} in "
                f"{hours} hours.**\n\nThe nightly backup or its upload failed, or the VM is down.\n\n"
                "**What to do:** on the VM `systemctl status postal-gateway-backup`, "
                "`journalctl -u postal-gateway-backup`; `sudo systemctl start postal-gateway-backup` retries. "
                "Runbook: docs/operations.md#backups in the postal-gateway repository.",
            },
            alert_strategy={"auto_close": "86400s"},
            user_labels=cfg.gcp_labels,
            opts=apis.after("monitoring.googleapis.com", parent=self, depends_on=[self.uploads]),
        )
        self.location = f"gs://{bucket_name(cfg)}/{object_prefix(cfg)}"
        self.register_outputs({"bucket": self.bucket, "location": self.location})
