"""The IAM roles of the identities that run Pulumi: the one list the README, docs/ci-cd.md and the
workflows' comments are generated from (`venv/bin/python scripts/docgen.py`; tests/test_docs.py
fails while a generated block differs).

To add a role: add a `Role` to DEPLOY (what `pulumi up` needs) or PREVIEW (what a read-only
`pulumi preview` needs), run `venv/bin/python scripts/docgen.py` and commit what it rewrote.
"""

from __future__ import annotations

from dataclasses import dataclass

PROJECT, BUCKET, KEY = "project", "state bucket", "KMS key"


@dataclass(frozen=True)
class Role:
    role: str
    scope: str  # PROJECT, BUCKET or KEY (the Cloud KMS key of the secrets provider, when KMS is used)
    why: str


DEPLOY = (
    Role("roles/compute.admin", PROJECT, "network, firewall, static IP, disks, snapshot schedule, VM"),
    Role("roles/iam.serviceAccountAdmin", PROJECT, "the VM's service account"),
    Role("roles/iam.serviceAccountUser", PROJECT, "`iam.serviceAccounts.actAs`: attach that account to the VM"),
    Role(
        "roles/resourcemanager.projectIamAdmin",
        PROJECT,
        "grant the VM's account `roles/logging.logWriter` and `roles/monitoring.metricWriter`",
    ),
    Role(
        "roles/serviceusage.serviceUsageAdmin",
        PROJECT,
        "enable the APIs the program uses; use the project as quota project",
    ),
    Role("roles/monitoring.editor", PROJECT, "notification channel, uptime checks, alert policies"),
    Role("roles/logging.configWriter", PROJECT, "the log-based metrics the relay-error and stale-backup alerts count"),
    Role(
        "roles/iap.tunnelResourceAccessor",
        PROJECT,
        "SSH to the VM through IAP: `pulumi up` opens the bootstrap steps' tunnel with gcloud "
        "(`gcloud compute start-iap-tunnel` also needs `compute.instances.get`, in `roles/compute.admin`)",
    ),
    Role(
        "roles/storage.admin",
        PROJECT,
        "the off-site backup bucket, its retention policy and the VM's create-only binding on it "
        "(an existing `backupBucket` elsewhere: grant this role on that bucket instead)",
    ),
    Role("roles/storage.objectAdmin", BUCKET, "read and write the stack's state, take its lock"),
    Role("roles/cloudkms.cryptoKeyEncrypterDecrypter", KEY, "encrypt and decrypt the stack's secrets"),
)

PREVIEW = (
    Role("roles/viewer", PROJECT, "read the project (look-ups a preview makes)"),
    Role("roles/storage.objectViewer", BUCKET, "read the state (a preview takes no lock, writes nothing)"),
    Role("roles/cloudkms.cryptoKeyDecrypter", KEY, "decrypt the stack's secrets"),
)

IDENTITIES = {"deploy": DEPLOY, "preview": PREVIEW}


def grant_commands(roles: tuple[Role, ...], member: str) -> list[str]:
    """gcloud commands granting `roles` to `member`, with the README's placeholders and names (KMS key
    `postal-gateway` in key ring `pulumi`, README Deploy step 4)."""
    where = {
        PROJECT: "gcloud projects add-iam-policy-binding <project>",
        BUCKET: "gcloud storage buckets add-iam-policy-binding gs://<state-bucket>",
        KEY: "gcloud kms keys add-iam-policy-binding postal-gateway --project <project> --location <region> "
        "--keyring pulumi",
    }
    return [f"{where[r.scope]} --role {r.role} --member {member}" for r in roles]
