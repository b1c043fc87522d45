"""Every systemd unit the bootstrap installs, rendered in one place.

A step receives its units as `PG_UNITS` (one `<path> <base64>` line per unit, `render.payload`)
and installs them with lib.sh's `pg_install_units`; the tests run `systemd-analyze verify` on
each set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

UNIT_DIR = "/etc/systemd/system"
BACKUP_DIR = "/opt/postal/backup/mariadb"
BACKUP_LEAD = timedelta(minutes=30)  # the backup is on the data disk before the snapshot starts
MARIADB_CONTAINER = "postal-mariadb"
CONFIG_DIR = "/opt/postal/config"  # postal.yml, signing.key (the postal step)
BACKUP_KEY = "/etc/postal-gateway/backup-key.asc"  # backupPublicKey: the upload encrypts to it
BACKUP_UPLOAD = "/usr/local/sbin/postal-gateway-backup-upload"
SMTP_TLS_UNIT = "postal-gateway-smtp-tls"
# Brute-force guard on port 25 (scripts/remote/smtp_guard.py): an address with GUARD_FAILURES failed
# SMTP AUTH attempts within GUARD_WINDOW_S is refused on 25/tcp for GUARD_BAN_S.
GUARD_FAILURES, GUARD_WINDOW_S, GUARD_BAN_S = 5, 600, 3600
GUARD_SCRIPT = "/usr/local/sbin/postal-gateway-guard"
SMTP_CONTAINER = "postal-smtp-1"  # compose project `postal`, service `smtp`
SMTP_TLS_HOOK = "/usr/local/sbin/postal-gateway-smtp-tls"
STAMP_DIR = "/var/lib/postal-gateway"  # lib.sh's pg_mark_applied


def calendar(window: str) -> str:
    """systemd OnCalendar for a `<Day> HH:MM` UTC window."""
    day, time = window.split()
    return f"{day} *-*-* {time}:00 UTC"


def backup_calendar(snapshot_start_utc: str) -> str:
    """Daily, BACKUP_LEAD before the snapshot schedule's start time (UTC)."""
    start = datetime.strptime(snapshot_start_utc, "%H:%M") - BACKUP_LEAD
    return f"*-*-* {start:%H:%M}:00 UTC"


def _assignment(name: str, value: str) -> str:
    """`Environment=` quoted the way systemd splits it (systemd.exec(5), Environment=)."""
    if any(c in value for c in " \t\"'\\"):
        return '"{}"'.format(f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"'))
    return f"{name}={value}"


def service(
    description: str,
    exec_start: str,
    environment: Mapping[str, str] | None = None,
    after: str = "",
    requires: bool = True,
    sandbox: Mapping[str, str] | None = None,
    post: str = "",
) -> str:
    """A oneshot service, ordered after `after` and, with `requires`, needing it (the backup needs Docker);
    `sandbox`: systemd.exec(5) settings that confine it; `post` runs only once ExecStart succeeded
    (ExecStartPost=, systemd.service(5))."""
    env = "".join(f"Environment={_assignment(k, v)}\n" for k, v in (environment or {}).items())
    order = (f"After={after}\n" + (f"Requires={after}\n" if requires else "")) if after else ""
    then = f"ExecStartPost={post}\n" if post else ""
    confine = "".join(f"{k}={v}\n" for k, v in (sandbox or {}).items())
    return (
        f"[Unit]\nDescription={description}\n{order}\n[Service]\nType=oneshot\n{env}ExecStart={exec_start}\n"
        f"{then}{confine}"
    )


def smtp_tls_sandbox(data_dir: str) -> dict[str, str]:
    """The renewal hook reads what the internet-facing Caddy writes: it may write only Postal's SMTP
    certificate, its own stamps and the bootstrap log (the smtp-tls step creates them), never read the
    secrets (MariaDB's root password, postal.yml, Postal's signing key), and gains no privilege. Docker's
    socket stays reachable (a socket on a read-only mount still accepts connections)."""
    return {
        "ProtectSystem": "strict",
        "ReadWritePaths": " ".join(smtp_tls_writes(data_dir)),
        "InaccessiblePaths": " ".join(f"-{p}" for p in smtp_tls_hidden(data_dir)),
        "PrivateTmp": "yes",
        "ProtectHome": "read-only",
        "NoNewPrivileges": "yes",
        "RestrictSUIDSGID": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "TimeoutStartSec": "10min",
    }


def smtp_tls_writes(data_dir: str) -> tuple[str, ...]:
    """What the renewal hook writes: Postal's SMTP certificate, its stamp, the bootstrap log."""
    return (f"{data_dir}/config/smtp-tls", STAMP_DIR, f"{data_dir}/log")


def smtp_tls_hidden(data_dir: str) -> tuple[str, ...]:
    """What the renewal hook never needs: the secrets on the data disk."""
    return (f"{data_dir}/secrets", f"{data_dir}/config/postal.yml", f"{data_dir}/config/signing.key")


def timer(description: str, on_calendar: str, unit: str = "", randomized_delay: str = "") -> str:
    extra = (f"RandomizedDelaySec={randomized_delay}\n" if randomized_delay else "") + (
        f"Unit={unit}\n" if unit else ""
    )
    return (
        f"[Unit]\nDescription={description}\n\n"
        f"[Timer]\nOnCalendar={on_calendar}\nPersistent=false\n{extra}\n"
        "[Install]\nWantedBy=timers.target\n"
    )


def path(description: str, watched: Sequence[str], unit: str) -> str:
    """systemd watches each path through its directory, so a file created or renamed into place
    later also triggers `unit`."""
    changed = "".join(f"PathChanged={p}\n" for p in watched)
    return (
        f"[Unit]\nDescription={description}\n\n[Path]\n{changed}Unit={unit}\n\n[Install]\nWantedBy=multi-user.target\n"
    )


def ops(
    *,
    maintenance_window: str,
    snapshot_start_utc: str,
    backup_retention_days: int,
    backup_bucket: str,
    backup_prefix: str,
    backup_key_fingerprint: str,
) -> dict[str, str]:
    """The `ops` step: the reboot window, the MariaDB backup (then its encrypted off-site upload) and the
    port-25 guard."""
    d = UNIT_DIR
    return {
        f"{d}/postal-gateway-reboot.service": service(
            "postal-gateway: reboot when an applied update needs it (needs-restarting -r)",
            "/usr/local/sbin/postal-gateway-reboot",
        ),
        f"{d}/postal-gateway-reboot.timer": timer(
            "postal-gateway: maintenance window for reboots", calendar(maintenance_window)
        ),
        f"{d}/postal-gateway-backup.service": service(
            "postal-gateway: hot MariaDB backup onto the data disk before its snapshot, then encrypted off-site",
            "/usr/local/sbin/postal-gateway-backup",
            {
                "PG_BACKUP_DIR": BACKUP_DIR,
                "PG_BACKUP_RETENTION_DAYS": str(backup_retention_days),
                "PG_MARIADB_CONTAINER": MARIADB_CONTAINER,
                "PG_BACKUP_BUCKET": backup_bucket,
                "PG_BACKUP_PREFIX": backup_prefix,
                "PG_BACKUP_KEY": BACKUP_KEY,
                "PG_BACKUP_KEY_FINGERPRINT": backup_key_fingerprint,
                "PG_CONFIG_DIR": CONFIG_DIR,
            },
            after="docker.service",
            post=BACKUP_UPLOAD,
        ),
        f"{d}/postal-gateway-backup.timer": timer(
            "postal-gateway: daily MariaDB backup", backup_calendar(snapshot_start_utc)
        ),
        f"{d}/postal-gateway-guard.service": guard(),
    }


def guard() -> str:
    """The port-25 brute-force guard: a long-running service, restarted whenever it stops."""
    return (
        "[Unit]\nDescription=postal-gateway: refuse an address on port 25 after repeated failed SMTP AUTH\n"
        "After=firewalld.service\nRequires=firewalld.service\n\n"
        f"[Service]\nType=simple\nExecStart={GUARD_SCRIPT} --failures {GUARD_FAILURES} --window {GUARD_WINDOW_S} "
        f"--ban {GUARD_BAN_S} --container {SMTP_CONTAINER}\nRestart=always\nRestartSec=5\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def smtp_tls(*, data_dir: str, certs: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    """The `smtp-tls` step: the renewal hook, run when Caddy writes the web certificate and hourly."""
    base = f"{UNIT_DIR}/{SMTP_TLS_UNIT}"
    environment = {
        "PG_STEP": "smtp-tls",
        "PG_DATA_DIR": data_dir,
        "PG_WEB_CERTS": " ".join(certs),
        "PG_WEB_KEYS": " ".join(keys),
    }
    return {
        f"{base}.service": service(
            "postal-gateway: give Postal's SMTP server the web's current certificate",
            SMTP_TLS_HOOK,
            environment,
            after="docker.service",
            requires=False,  # ordered after Docker, never starting it
            sandbox=smtp_tls_sandbox(data_dir),
        ),
        f"{base}.path": path(
            "postal-gateway: a renewed web certificate reaches Postal's SMTP server",
            [*certs, *keys],
            f"{SMTP_TLS_UNIT}.service",
        ),
        f"{base}.timer": timer(
            "postal-gateway: check hourly that Postal's SMTP server has the web's certificate",
            "hourly",
            unit=f"{SMTP_TLS_UNIT}.service",
            randomized_delay="300",
        ),
    }
