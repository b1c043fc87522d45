"""Pure renderers for the `ops` step: Ops Agent config and dnf-automatic (its units: components/units.py).

The Ops Agent reads /etc/google-cloud-ops-agent/config.yaml and merges it over its built-in
config; a pipeline named `default_pipeline` replaces the built-in one of that name
(https://cloud.google.com/stackdriver/docs/solutions/agents/ops-agent/configuration). The
schema is the agent's own (GoogleCloudPlatform/ops-agent confgenerator/config.go); the tests
check the rendered file against tests/ops_agent.schema.json, written from that source.
"""

from __future__ import annotations

import yaml

AGENT_CONFIG = "/etc/google-cloud-ops-agent/config.yaml"
# Postal's health servers also serve Prometheus /metrics (app/util/health_server.rb).
POSTAL_METRICS = {"postal-worker": "127.0.0.1:9090", "postal-smtp": "127.0.0.1:9091"}
# Docker writes every container's output to the journal under its name (os step, daemon.json).
JOURNAL_RECEIVER = "journald"
# Postal logs each SMTP command it receives at debug (app/lib/smtp_server/client.rb at 3.3.6: "<= MAIL
# FROM:<…>", "<= RCPT TO:<…>"; server.rb: connections, replies) and postal.yml has no log level
# (lib/postal/config_schema.rb `logging`): the agent drops Postal's debug lines, so the SMTP dialogue
# stays on the VM. Klogger's default "go" format puts the padded, upper-cased severity after the time
# (`2026-12-07 13:00:00 +0000 DEBUG  <= MAIL FROM:<…>`, klogger-logger 1.4.0 lib/klogger/formatters/go.rb).
# Filter syntax: ops-agent confgenerator/filter (regex in double quotes; no backslash needed here).
POSTAL_CONTAINERS_RE = "^postal-(web|smtp|worker)-"  # compose project `postal`: postal-<service>-1
POSTAL_DEBUG_RE = "^[^ ]+ [^ ]+ [^ ]+ DEBUG "
POSTAL_DEBUG_FILTER = (
    f'jsonPayload.CONTAINER_NAME =~ "{POSTAL_CONTAINERS_RE}" AND jsonPayload.MESSAGE =~ "{POSTAL_DEBUG_RE}"'
)


def ops_agent_config() -> str:
    """Journal (system and containers, without Postal's debug lines) to Cloud Logging; host metrics and
    Postal's Prometheus metrics."""
    config = {
        "logging": {
            "receivers": {JOURNAL_RECEIVER: {"type": "systemd_journald"}},
            "processors": {"postal_debug": {"type": "exclude_logs", "match_any": [POSTAL_DEBUG_FILTER]}},
            "service": {
                "pipelines": {
                    # the journal holds what rsyslog copies to /var/log/messages: ship it once, structured
                    "default_pipeline": {"receivers": [JOURNAL_RECEIVER], "processors": ["postal_debug"]},
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
