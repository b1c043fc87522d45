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
