"""Pure renderers for the `ops` step: Ops Agent config, dnf-automatic, the reboot and backup timers.

The Ops Agent reads /etc/google-cloud-ops-agent/config.yaml and merges it over its built-in
config; a pipeline named `default_pipeline` replaces the built-in one of that name
(https://cloud.google.com/stackdriver/docs/solutions/agents/ops-agent/configuration). The
schema is the agent's own (GoogleCloudPlatform/ops-agent confgenerator/config.go); the tests
check the rendered file against tests/ops_agent.schema.json, written from that source.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import yaml

AGENT_CONFIG = "/etc/google-cloud-ops-agent/config.yaml"
# Postal's health servers also serve Prometheus /metrics (app/util/health_server.rb).
POSTAL_METRICS = {"postal-worker": "127.0.0.1:9090", "postal-smtp": "127.0.0.1:9091"}
# Docker writes every container's output to the journal under its name (os step, daemon.json).
JOURNAL_RECEIVER = "journald"
BACKUP_DIR = "/opt/postal/backup/mariadb"
BACKUP_LEAD = timedelta(minutes=30)  # the backup is on the data disk before the snapshot starts
MARIADB_CONTAINER = "postal-mariadb"


def ops_agent_config() -> str:
    """Journal (system and containers) to Cloud Logging; host metrics and Postal's Prometheus metrics."""
    config = {
        "logging": {
            "receivers": {JOURNAL_RECEIVER: {"type": "systemd_journald"}},
            "service": {
                "pipelines": {
                    # the journal holds what rsyslog copies to /var/log/messages: ship it once, structured
                    "default_pipeline": {"receivers": [JOURNAL_RECEIVER]},
                }
            },
        },
        "metrics": {
            "receivers": {
                "hostmetrics": {"type": "hostmetrics", "collection_interval": "60s"},
                "postal": {
                    "type": "prometheus",
                    "config": {
                        "scrape_configs": [
                            {
                                "job_name": job,
                                "scrape_interval": "60s",
                                "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target]}],
                            }
                            for job, target in POSTAL_METRICS.items()
                        ]
                    },
                },
            },
            "service": {
                "pipelines": {
                    "default_pipeline": {"receivers": ["hostmetrics"]},
                    "postal": {"receivers": ["postal"]},
                }
            },
        },
    }
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def dnf_automatic_conf() -> str:
    """/etc/dnf/automatic.conf: download and apply security updates only. No `reboot` option (older
    dnf-automatic lacks it; it defaults to never): the maintenance window's timer reboots."""
    return (
        "# managed by postal-gateway (ops step)\n"
        "[commands]\n"
        "upgrade_type = security\n"
        "random_sleep = 0\n"
        "download_updates = yes\n"
        "apply_updates = yes\n"
        "\n[emitters]\n"
        "emit_via = stdio\n"
        "\n[base]\n"
        "debuglevel = 1\n"
    )


def calendar(window: str) -> str:
    """systemd OnCalendar for a `<Day> HH:MM` UTC window."""
    day, time = window.split()
    return f"{day} *-*-* {time}:00 UTC"


def backup_calendar(snapshot_start_utc: str) -> str:
    """Daily, BACKUP_LEAD before the snapshot schedule's start time (UTC)."""
    start = datetime.strptime(snapshot_start_utc, "%H:%M") - BACKUP_LEAD
    return f"*-*-* {start:%H:%M}:00 UTC"


def _timer(description: str, on_calendar: str) -> str:
    return (
        f"[Unit]\nDescription={description}\n\n"
        f"[Timer]\nOnCalendar={on_calendar}\nPersistent=false\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )


def _service(description: str, exec_start: str, environment: dict[str, str] | None = None, after: str = "") -> str:
    env = "".join(f"Environment={k}={v}\n" for k, v in (environment or {}).items())
    order = f"After={after}\nRequires={after}\n" if after else ""
    return f"[Unit]\nDescription={description}\n{order}\n[Service]\nType=oneshot\n{env}ExecStart={exec_start}\n"


def units(*, maintenance_window: str, snapshot_start_utc: str, backup_retention_days: int) -> dict[str, str]:
    """systemd unit path -> content for the reboot window and the MariaDB backup."""
    d = "/etc/systemd/system"
    return {
        f"{d}/postal-gateway-reboot.service": _service(
            "postal-gateway: reboot when an applied update needs it (needs-restarting -r)",
            "/usr/local/sbin/postal-gateway-reboot",
        ),
        f"{d}/postal-gateway-reboot.timer": _timer(
            "postal-gateway: maintenance window for reboots", calendar(maintenance_window)
        ),
        f"{d}/postal-gateway-backup.service": _service(
            "postal-gateway: hot MariaDB backup onto the data disk before its snapshot",
            "/usr/local/sbin/postal-gateway-backup",
            {
                "PG_BACKUP_DIR": BACKUP_DIR,
                "PG_BACKUP_RETENTION_DAYS": str(backup_retention_days),
                "PG_MARIADB_CONTAINER": MARIADB_CONTAINER,
            },
            after="docker.service",
        ),
        f"{d}/postal-gateway-backup.timer": _timer(
            "postal-gateway: daily MariaDB backup", backup_calendar(snapshot_start_utc)
        ),
    }
