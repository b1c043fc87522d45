"""MailHost: service account, SSH key, protected data disk with snapshots, Rocky Linux 9 VM."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_tls as tls

from components.apis import ProjectApis

ROCKY_IMAGE = "projects/rocky-linux-cloud/global/images/family/rocky-linux-9"
SSH_USER = "postal-ops"
DATA_DEVICE_NAME = "postal-data"
DATA_DEVICE = f"/dev/disk/by-id/google-{DATA_DEVICE_NAME}"
SNAPSHOT_START_UTC = "04:00"
LOG_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter")


@dataclass(frozen=True)
class HostArgs:
    project: str
    region: str
    zone: str
    stack: str
    machine_type: str
    boot_disk_size_gb: int
    data_disk_size_gb: int
    snapshot_retention_days: int
    labels: dict[str, str]
    subnetwork_id: pulumi.Input[str]
    public_ip: pulumi.Input[str]
    target_tag: str
    apis: ProjectApis
    data_disk_snapshot: str | None = None  # set to restore: the data disk is recreated from it
    ephemeral: bool = False  # throwaway stack: the data disk is neither protected nor retained


def service_account_id(stack: str) -> str:
    """A valid GCP account id (6-30 chars) for this stack."""
    slug = re.sub(r"[^a-z0-9-]+", "-", stack.lower())
    return f"postal-gw-{slug}"[:30].rstrip("-")


class MailHost(pulumi.ComponentResource):
    """Outputs: `instance_id`, `ssh_user`, `ssh_private_key` (secret), `data_disk`."""

    def __init__(self, name: str, args: HostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("postal-gateway:index:MailHost", name, None, opts)
        apis = args.apis
        compute = apis.after("compute.googleapis.com", parent=self)
        self.service_account = gcp.serviceaccount.Account(
            f"{name}-sa",
            project=args.project,
            account_id=service_account_id(args.stack),
            display_name="postal-gateway VM",
            opts=apis.after("iam.googleapis.com", parent=self),
        )
        member = self.service_account.email.apply(lambda email: f"serviceAccount:{email}")
        self.roles = [
            gcp.projects.IAMMember(
                f"{name}-{role.split('.')[-1].lower()}",
                project=args.project,
                role=role,
                member=member,
                opts=apis.after("cloudresourcemanager.googleapis.com", "iam.googleapis.com", parent=self),
            )
            for role in LOG_ROLES
        ]
        self.ssh_key = tls.PrivateKey(f"{name}-ssh", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=self))
        self.data_disk = gcp.compute.Disk(
            f"{name}-data",
            project=args.project,
            zone=args.zone,
            size=args.data_disk_size_gb,
            type="pd-balanced",
            labels=args.labels,
            snapshot=args.data_disk_snapshot,
            # A restore (a new `snapshot`) replaces the disk: auto-named, so the new one is created
            # next to the old one, which is only dropped from the state (retained), never deleted.
            # An ephemeral stack (e2e) must be destroyable: neither protected nor retained.
            opts=apis.after(
                "compute.googleapis.com", parent=self, protect=not args.ephemeral, retain_on_delete=not args.ephemeral
            ),
        )
        self.snapshot_policy = gcp.compute.ResourcePolicy(
            f"{name}-snapshots",
            project=args.project,
            region=args.region,
            description="daily snapshots of the postal-gateway data disk",
            snapshot_schedule_policy={
                "schedule": {"daily_schedule": {"days_in_cycle": 1, "start_time": SNAPSHOT_START_UTC}},
                "retention_policy": {
                    "max_retention_days": args.snapshot_retention_days,
                    # an ephemeral stack's snapshots expire with the retention instead of outliving its disk
                    "on_source_disk_delete": "APPLY_RETENTION_POLICY" if args.ephemeral else "KEEP_AUTO_SNAPSHOTS",
                },
                "snapshot_properties": {"labels": args.labels, "guest_flush": False},
            },
            opts=compute,
        )
        self.snapshot_attachment = gcp.compute.DiskResourcePolicyAttachment(
            f"{name}-data-snapshots",
            project=args.project,
            zone=args.zone,
            disk=self.data_disk.name,
            name=self.snapshot_policy.name,
            # a disk takes one snapshot schedule: detach the old one before attaching its replacement
            opts=apis.after("compute.googleapis.com", parent=self, delete_before_replace=True),
        )
        # A separate boot disk resizes in place; a size in the instance's initializeParams would replace the VM.
        # A new monthly image never replaces it (ignore_changes).
        self.boot_disk = gcp.compute.Disk(
            f"{name}-boot",
            project=args.project,
            zone=args.zone,
            image=ROCKY_IMAGE,
            size=args.boot_disk_size_gb,
            type="pd-balanced",
            labels=args.labels,
            opts=apis.after("compute.googleapis.com", parent=self, ignore_changes=["image"]),
        )
        ssh_keys = self.ssh_key.public_key_openssh.apply(lambda key: f"{SSH_USER}:{key.strip()} {SSH_USER}")
        self.instance = gcp.compute.Instance(
            f"{name}-vm",
            project=args.project,
            zone=args.zone,
            machine_type=args.machine_type,
            tags=[args.target_tag],
            labels=args.labels,
            allow_stopping_for_update=True,
            boot_disk={"source": self.boot_disk.self_link, "auto_delete": False},
            attached_disks=[
                {"source": self.data_disk.self_link, "device_name": DATA_DEVICE_NAME, "mode": "READ_WRITE"}
            ],
            network_interfaces=[
                {
                    "subnetwork": args.subnetwork_id,
                    "stack_type": "IPV4_ONLY",
                    "access_configs": [{"nat_ip": args.public_ip, "network_tier": "PREMIUM"}],
                }
            ],
            metadata={"ssh-keys": ssh_keys, "block-project-ssh-keys": "true", "enable-oslogin": "FALSE"},
            service_account={"email": self.service_account.email, "scopes": ["cloud-platform"]},
            shielded_instance_config={
                "enable_secure_boot": True,
                "enable_vtpm": True,
                "enable_integrity_monitoring": True,
            },
            # the new VM needs the static IP and the data disk the old one holds: delete it first
            opts=apis.after("compute.googleapis.com", parent=self, depends_on=self.roles, delete_before_replace=True),
        )
        self.instance_id = self.instance.instance_id
        self.ssh_user = SSH_USER
        self.ssh_private_key = pulumi.Output.secret(self.ssh_key.private_key_openssh)
        self.register_outputs({"instance_id": self.instance_id, "ssh_private_key": self.ssh_private_key})
