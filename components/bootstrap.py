"""PostalBootstrap: the VM's software, installed by one idempotent remote command per step.

Each step runs `scripts/remote/lib.sh + <step>.sh` over SSH, through the IAP tunnel. Non-secret settings travel as
environment assignments in the command line (visible in `pulumi preview` diffs); secrets
travel only in the step's stdin payload. A step reruns when its script, settings or payload
change, or when the VM is replaced (its `triggers`); nothing else reruns it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_command import remote

from components import backup, operations, render, units
from components.config import MailConfig
from components.host import DATA_DEVICE, SNAPSHOT_START_UTC
from components.secrets import MailSecrets

DATA_DIR = render.HOST_DATA_DIR
PREFLIGHT_SENDER = "relay-preflight"


@dataclass(frozen=True)
class BootstrapArgs:
    config: MailConfig
    ssh_host: pulumi.Input[str]  # the IAP tunnel's local end (components/tunnel.py)
    ssh_port: int
    ssh_user: str
    ssh_private_key: pulumi.Input[str]
    instance_id: pulumi.Input[str]
    secrets: MailSecrets
    web_dns: Sequence[pulumi.Resource] = field(default_factory=list)  # Caddy waits for these (ACME)
    mail_dns: Sequence[pulumi.Resource] = field(default_factory=list)  # provisioning's DNS check needs these
    data_disk_id: pulumi.Input[str] = ""  # a new disk (restore) reruns the os step: it remounts
    # Google's uptime checkers (monitoring.uptime_checker_ranges): Caddy admits them to GET /login only
    uptime_checkers: pulumi.Input[Sequence[str]] = ()


def parse_relay_status(stdout: str | None) -> str:
    """The preflight's summary: the last `relay-status: <status>` line of its output."""
    for line in reversed((stdout or "").splitlines()):
        if line.startswith("relay-status: "):
            return line.split(": ", 1)[1].split()[0]
    return "unknown"


def parse_relay_statuses(stdout: str | None, domains: Sequence[str]) -> dict[str, str]:
    """One verdict per sending domain from the `relay-domain: <domain> <status>` lines; unknown if missing."""
    found = dict(
        line.split()[1:3]
        for line in (stdout or "").splitlines()
        if line.startswith("relay-domain: ") and len(line.split()) >= 3
    )
    return {domain: found.get(domain, "unknown") for domain in domains}


def preflight_senders(domains: Sequence[str]) -> str:
    """`<domain>=relay-preflight@psrp.<domain>` per sending domain: the envelope sender Postal uses."""
    return " ".join(f"{d}={PREFLIGHT_SENDER}@{render.custom_return_path(d)}" for d in domains)


class PostalBootstrap(pulumi.ComponentResource):
    """Outputs: `steps` (step name -> remote.Command), `relay_status`, `relay_status_by_domain`."""

    def __init__(self, name: str, args: BootstrapArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("postal-gateway:index:PostalBootstrap", name, None, opts)
        cfg, secrets = args.config, args.secrets
        self._name = name
        self._instance_id = args.instance_id
        self._connection = remote.ConnectionArgs(
            host=args.ssh_host,
            port=args.ssh_port,
            user=args.ssh_user,
            private_key=args.ssh_private_key,
            dial_error_limit=60,
            per_dial_timeout=15,
        )
        self.steps: dict[str, remote.Command] = {}

        # The os step also reruns when the data disk grows (xfs_growfs) or is replaced (remount).
        os_step = self._step(
            "os",
            {
                "PG_SELINUX": cfg.selinux,
                "PG_DATA_DEVICE": DATA_DEVICE,
                "PG_DATA_DIR": DATA_DIR,
                "PG_DATA_DISK_GB": str(cfg.data_disk_size_gb),
            },
            timeout="30m",
            triggers=[args.data_disk_id],
        )
        database = self._step(
            "database",
            {"PG_MARIADB_IMAGE": cfg.mariadb_image},
            {"db_root_password": secrets.db_root_password, "db_password": secrets.db_password},
            after=[os_step],
        )
        postal_yml = pulumi.Output.all(secrets.db_password, secrets.rails_secret_key).apply(
            lambda s: render.postal_yml(
                hostname=cfg.hostname,
                relay_url=cfg.relay_url,
                db_password=s[0],
                rails_secret_key=s[1],
                from_address=f"postal@{cfg.sending_domains[0]}",
            )
        )
        postal = self._step(
            "postal",
            {
                "PG_POSTAL_VERSION": cfg.postal_version,
                "PG_INSTALL_REPO": render.INSTALL_REPO,
                "PG_INSTALL_COMMIT": render.INSTALL_COMMIT,
                "PG_HOSTNAME": cfg.hostname,
            },
            {"postal_yml": postal_yml, "signing_key": secrets.signing_key_pem},
            after=[database],
            withhold=[secrets.db_password, secrets.rails_secret_key],
            timeout="30m",
        )
        caddy = self._step(
            "caddy",
            {
                "PG_CADDY_IMAGE": cfg.caddy_image,
                "PG_TLS": cfg.tls,
                "PG_HOSTNAME": cfg.hostname,
                "PG_CADDY_ADMIN": render.CADDY_ADMIN,
                "PG_CADDYFILE": pulumi.Output.from_input(args.uptime_checkers).apply(
                    lambda checkers: render.caddyfile(
                        hostname=cfg.hostname, tls=cfg.tls, admin_email=cfg.admin_email, uptime_checkers=checkers
                    )
                ),
            },
            {"tls_certificate": cfg.tls_certificate, "tls_private_key": cfg.tls_private_key},
            after=[os_step, *args.web_dns],
        )
        certs, keys = zip(*render.web_certificates(hostname=cfg.hostname, tls=cfg.tls), strict=False)
        self._step(
            "smtp-tls",
            {
                "PG_HOSTNAME": cfg.hostname,
                "PG_TLS": cfg.tls,
                "PG_WEB_CERTS": " ".join(certs),
                "PG_WEB_KEYS": " ".join(keys),
                "PG_SMTP_TLS_HOOK": render.step_script("smtp-tls-hook"),
                "PG_UNITS": render.payload(units.smtp_tls(data_dir=DATA_DIR, certs=certs, keys=keys)),
            },
            after=[postal, caddy],
        )
        dkim = {domain: pulumi.Output.all(key.private_key_pem, key.selector) for domain, key in secrets.dkim.items()}
        provision_json = pulumi.Output.all(
            secrets.admin_password, secrets.api_key, secrets.smtp_key, pulumi.Output.all(**dkim)
        ).apply(
            lambda s: render.provision_json(
                admin_email=cfg.admin_email,
                admin_password=s[0],
                api_key=s[1],
                smtp_key=s[2],
                sending_domains={d: tuple(v) for d, v in s[3].items()},
            )
        )
        self._step(
            "provision",
            {"PG_PROVISION_RB": render.script_text("provision.rb")},
            {"provision_json": provision_json},
            after=[postal, *args.mail_dns],
            withhold=[
                secrets.admin_password,
                secrets.api_key,
                secrets.smtp_key,
                *(key.private_key_pem for key in secrets.dkim.values()),
            ],
        )
        preflight = self._step(
            "preflight",
            {
                "PG_HOSTNAME": cfg.hostname,
                "PG_RELAY_HOST": cfg.relay_host,
                "PG_RELAY_PORT": str(cfg.relay_port),
                "PG_RELAY_TLS": cfg.relay_tls,
                "PG_SENDERS": preflight_senders(cfg.sending_domains),
                "PG_RCPT_TO": cfg.admin_email,
                "PG_PREFLIGHT_PY": render.script_text("relay_preflight.py"),
            },
            after=[os_step],
        )
        self._step(
            "ops",
            {
                "PG_AGENT_CONFIG": operations.ops_agent_config(),
                "PG_AUTOMATIC_CONF": operations.dnf_automatic_conf(),
                "PG_UNITS": render.payload(
                    units.ops(
                        maintenance_window=cfg.maintenance_window,
                        snapshot_start_utc=SNAPSHOT_START_UTC,
                        backup_retention_days=cfg.backup_retention_days,
                        backup_bucket=backup.bucket_name(cfg),
                        backup_prefix=backup.object_prefix(cfg),
                        backup_key_fingerprint=cfg.backup_key_fingerprint,
                    )
                ),
                "PG_BACKUP_PUBLIC_KEY": cfg.backup_public_key,
                "PG_BACKUP_UPLOAD_SH": render.script_text("pg-backup-upload.sh"),
                "PG_RESTORE_BUNDLE_SH": render.script_text("pg-restore.sh"),
                "PG_REBOOT_SH": render.script_text("pg-reboot.sh"),
                "PG_BACKUP_SH": render.script_text("pg-backup.sh"),
                "PG_RESTORE_SH": render.script_text("pg-restore-db.sh"),
                "PG_GUARD_PY": render.script_text("smtp_guard.py"),
            },
            after=[os_step],
        )
        self.relay_status = preflight.stdout.apply(parse_relay_status)
        self.relay_status_by_domain = preflight.stdout.apply(lambda out: parse_relay_statuses(out, cfg.sending_domains))
        self.register_outputs(
            {"relay_status": self.relay_status, "relay_status_by_domain": self.relay_status_by_domain}
        )

    def _step(
        self,
        step: str,
        env: Mapping[str, pulumi.Input[str]],
        files: Mapping[str, pulumi.Input] | None = None,
        after: Sequence[pulumi.Resource] = (),
        timeout: str = "20m",
        triggers: Sequence[pulumi.Input[str]] = (),
        withhold: Sequence[pulumi.Input[str]] = (),
    ) -> remote.Command:
        """`withhold`: the secret values inside the payload's documents (postal.yml, JSON), sent as the
        payload file `withhold` so that the step's bootstrap log withholds every line holding one."""
        create = pulumi.Output.all(**env).apply(lambda values: render.command_line(step, values))
        files = {k: v for k, v in (files or {}).items() if v is not None}
        if withhold:
            files["withhold"] = pulumi.Output.all(*withhold).apply(render.withhold)
        stdin = pulumi.Output.all(**files).apply(render.payload) if files else None
        fingerprint = pulumi.Output.all(create, *([stdin] if stdin is not None else [])).apply(
            lambda parts: render.digest(*parts)
        )
        hidden = stdin is not None  # a step that receives secrets may echo them: keep its output secret
        command = remote.Command(
            f"{self._name}-{step}",
            connection=self._connection,
            create=create,
            stdin=stdin,
            triggers=[self._instance_id, fingerprint, *triggers],
            logging=remote.Logging.NONE if hidden else remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=list(after),
                custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout),
                additional_secret_outputs=["stdout", "stderr"] if hidden else None,
            ),
        )
        self.steps[step] = command
        return command
