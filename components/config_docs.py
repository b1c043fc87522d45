"""One line of documentation per config key: docs/configuration.md's table is generated from it
(`venv/bin/python scripts/docgen.py`), and tests/test_docs.py fails while a key of config.KEYS has
no entry here or the generated table differs.

To add a key: add it to config.KEYS (and DEFAULTS when it has one), read it in components/fields.py
into a MailConfig field, add its `Doc` here, run `venv/bin/python scripts/docgen.py` and commit
docs/configuration.md. The default column comes from config.DEFAULTS; `default` here is only for keys without one ("required", "unset", derived).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Doc:
    type: str  # markdown; a `|` inside a cell is written `\|`
    meaning: str
    default: str | None = None  # only for keys not in config.DEFAULTS


CIDR_RULES = (
    "a netmask (`/255.255.255.0`) becomes a prefix; host bits, IPv6, `0.0.0.0`, loopback and multicast are "
    "refused; a range inside an RFC 5737 documentation range is warned about"
)

KEY_DOCS: dict[str, Doc] = {
    "hostname": Doc(
        "FQDN",
        "Postal web, API and SMTP host, under the Workspace primary domain; not a sending domain nor a "
        "`psrp.<domain>`; lower-cased, a final dot dropped; no URL, `:port` or wildcard",
        "required",
    ),
    "sendingDomains": Doc(
        "list of domains (quoted strings)",
        "domains that send through Postal (Workspace domains); no duplicate in any letter case, none of "
        "`rp.`/`spf.`/`routes.`/`track.<hostname>` or `psrp.<another domain>`",
        "required",
    ),
    "cloudflareZone": Doc(
        "zone",
        "zone of `hostname`; a sending domain outside it uses the zone named like the domain",
        "parent of `hostname`",
    ),
    "adminEmail": Doc(
        "e-mail, letters, digits and `._%+-` before the `@`",
        "Postal admin login, Let's Encrypt account (in the Caddyfile: no braces, quotes, `#` or spaces), "
        "preflight recipient",
        "required",
    ),
    "sshSourceRanges": Doc(
        "list of IPv4 CIDR",
        "opt-in to direct SSH besides IAP (a public range is warned about; `pulumi up` and operators go "
        f"through IAP either way); {CIDR_RULES}",
        "unset: 22 open only to IAP's TCP forwarding (35.235.240.0/20)",
    ),
    "smtpSourceRanges": Doc("list of IPv4 CIDR", f"who may submit mail on port 25; {CIDR_RULES}", "required"),
    "bounceSourceRanges": Doc(
        "list of IPv4 CIDR",
        "who may deliver bounces on port 25 (DSNs to `psrp.<domain>` / `rp.<hostname>`, rule "
        "`postal-allow-bounce`); a world-open value is warned about: Postal offers SMTP AUTH to every client "
        f"([security](security.md#bounces)); {CIDR_RULES}",
        "Google's outbound mail ranges, pinned in `components/google_ranges.py`",
    ),
    "webSourceRanges": Doc(
        "list of IPv4 CIDR",
        "who may reach 443 (web UI, API); with `tls=letsencrypt` 80 is open to all for Let's Encrypt and "
        "redirects to 443; " + CIDR_RULES,
        "`smtpSourceRanges` + `sshSourceRanges` (never IAP's range)",
    ),
    "tls": Doc("`letsencrypt`\\|`internal`\\|`custom`", "Caddy TLS mode"),
    "tlsCertificate": Doc(
        "PEM, secret",
        "certificate chain (`pulumi config set -s prod --secret tlsCertificate < fullchain.pem`); checked: "
        "the key matches a certificate, a subjectAltName (or a `*.` wildcard one label up) covers `hostname`, "
        "every certificate is in date; warned 14 days before expiry, when the issuer's certificate is "
        "missing and when the leaf is self-signed; a chain out of order is reordered leaf first, a repeated "
        "certificate dropped, a certificate outside it refused; CRLF line endings, a byte-order mark and "
        "text around the PEM blocks are accepted (checked with the real Caddy)",
        "iff `tls=custom`",
    ),
    "tlsPrivateKey": Doc(
        "PEM, secret",
        "the certificate's unencrypted key: RSA or EC (PKCS#8, PKCS#1, SEC 1, an `EC PARAMETERS` block first)",
        "iff `tls=custom`",
    ),
    "machineType": Doc(
        "GCE x86 type (lower-cased)",
        "at least 4 GB of memory, custom types (`[series-]custom-CPUS-MB[-ext]`) included; Arm series "
        "(`t2a`, `c4a`, `n4a`, `a4x`) refused: Postal publishes linux/amd64 images only",
    ),
    "bootDiskSizeGb": Doc(
        "int, 20..2000",
        "boot disk size; growing is in place; lowering it replaces the boot disk and the VM "
        "([surprising changes](operations.md#surprising-changes))",
    ),
    "dataDiskSizeGb": Doc(
        "int, 10..65536",
        "data disk size (MariaDB, Postal's config, Caddy's data); growing is in place, lowering is refused",
    ),
    "snapshotRetentionDays": Doc("int, 1..3650", "daily data disk snapshots (04:00 UTC) kept this long"),
    "postalVersion": Doc("X.Y.Z ≥ 3.3.1 (no `v`, no leading zero)", "Postal release; changing it upgrades in place"),
    "relayHost": Doc(
        "DNS name",
        "upstream relay, not `hostname`; a DNS name (no IP address, `:port` or `smtp://`): Postal resolves it",
    ),
    "relayPort": Doc(
        "port",
        "relay port; `tls` on 587 and `starttls`/`none` on 465 are refused; port 25 is warned about "
        "(GCP blocks it to external addresses)",
    ),
    "relayTls": Doc("`starttls`\\|`tls`\\|`none`", "relay TLS; `none` (plain text) is warned about"),
    "selinux": Doc(
        "`enforcing`\\|`permissive`",
        "enforcing: Docker confines containers (`selinux-enabled`) and `/opt/postal` is labelled "
        "`container_file_t`; permissive: the guide's fallback",
    ),
    "dmarcPolicy": Doc(
        "`none`\\|`quarantine`\\|`reject`",
        "publish `_dmarc` per sending domain (stops at the zone lookup when a domain already has one: "
        "leave it unset then)",
        "unset",
    ),
    "manageSpf": Doc("bool", "publish each sending domain's SPF (refuses to add a second one)"),
    "labels": Doc(
        "map",
        "extra GCP labels (GCP's key and value rules; a number or boolean value becomes `42`, `true`); "
        "`app` and `stack` are the stack's own and refused",
    ),
    "dataDiskSnapshot": Doc(
        "snapshot name, `global/snapshots/<name>`, `projects/<project>/global/snapshots/<name>` or its "
        "`https://www.googleapis.com/compute/v1/…` URL",
        "restore only: a new data disk from this snapshot; the live one is retained, never deleted "
        "([restore drill](runbook.md#restore-the-data-disk-from-a-snapshot))",
        "unset",
    ),
    "alertEmail": Doc(
        "e-mail", "who Cloud Monitoring alerts ([what each alert means](operations.md#alerts))", "`adminEmail`"
    ),
    "mariadbImage": Doc("image with a tag (or digest)", "changing it recreates only the MariaDB container"),
    "caddyImage": Doc("image with a tag (or digest)", "changing it recreates only the Caddy container"),
    "maintenanceWindow": Doc(
        "`<Day> HH:MM` (UTC)",
        "when the VM may reboot for a security update that needs it ([patching](operations.md#patching))",
    ),
    "diskAlertPercent": Doc("int, 50..99", "alert when the boot or data disk is fuller"),
    "queueLatencyAlertSeconds": Doc(
        "int, 10..86400",
        "alert when the messages Postal's worker dequeued in the last 15 min waited longer than this on average",
    ),
    "relayFailureAlertCount": Doc("int", "alert when Postal logs more relay delivery errors than this in 15 min"),
    "workerErrorAlertCount": Doc("int", "alert when Postal's worker counts more errors than this in 15 min"),
    "bounceRateAlertPercent": Doc(
        "int, 1..100",
        "alert when the bounces Postal received in the last 6 hours pass this percentage of the messages it "
        "handled (at least 20) ([alerts](operations.md#alerts))",
    ),
    "backupRetentionDays": Doc(
        "int, 1..30",
        "days of MariaDB backups kept on the data disk, and in the backup bucket the program creates "
        "(lifecycle deletion) ([backups](operations.md#backups))",
    ),
    "backupPublicKey": Doc(
        "ASCII-armored OpenPGP v4 public key (`gpg --armor --export`)",
        "the VM encrypts every off-site backup to it; one key that can encrypt now (a private key, several "
        "keys, a revoked, expired or signing-only key are refused); make the pair on an operator machine and "
        "keep the private key offline ([backups](operations.md#backups)); the example stack files' key is "
        "warned about: nobody holds its private key",
        "required",
    ),
    "backupBucket": Doc(
        "bucket name (`gs://` and a final `/` are dropped)",
        "an existing bucket, in any project, for the off-site backups (objects under `<stack>/`); the program "
        "then only grants the VM `roles/storage.objectCreator` on it and leaves its settings alone",
        "unset: `<project>-<stack>-postal-backups`, created",
    ),
    "backupLockDays": Doc(
        "int, 0..`backupRetentionDays`",
        "the created bucket's retention policy: no backup can be deleted or replaced before it is this old, "
        "by anybody; `0`: none, Object Versioning instead (Cloud Storage allows one or the other)",
        "`backupRetentionDays`",
    ),
    "ephemeral": Doc(
        "bool",
        "throwaway stack (`scripts/e2e.py`): the static IP and the data disk are neither protected nor retained, "
        "so `destroy` deletes them, and GCP resources get the label `ephemeral=true`; refused on `prod` (the "
        "policy pack also refuses it on its `productionStacks`)",
    ),
}
