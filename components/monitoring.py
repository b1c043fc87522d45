"""MailMonitoring: who is told when the gateway breaks, and what it watches (Cloud Monitoring).

- a notification channel to `alertEmail`;
- an uptime check: HTTPS on https://<hostname>/login matched against Postal's own login page (so a
  Caddy answering without Postal fails it); a firewall rule lets Google's uptime checkers reach 443,
  and Caddy lets them do nothing there but `GET /login` (any Cloud customer can point a check with any
  method, headers and body at the VM from those addresses). Port 25 is not opened to them: the SMTP
  server's liveness is its Prometheus series going absent (smtp-down);
- alert policies on the checks, the disks (Ops Agent), Postal's Prometheus metrics (scraped by the
  Ops Agent: prometheus_target, namespace `<instance id>/<name>`): queue latency, worker errors, and
  the worker's or SMTP server's series going absent (a dead process pages), the bounce rate, and a
  log-based metric counting the worker's relay delivery errors (its journal lines, shipped by the Ops Agent).
Every policy's documentation says what the alert means and what to do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components import render
from components.apis import ProjectApis
from components.config import MailConfig

MONITORING = "monitoring.googleapis.com"
UPTIME_PERIOD = "300s"
UPTIME_PORTS = ("443",)
# Postal's login page (app/views/sessions/new.html.haml at 3.3.6): only Postal renders it.
LOGIN_PATH, LOGIN_TEXT = render.UPTIME_CHECK_PATH, "Welcome to Postal"
# Postal's SMTPSender logs through a logger tagged log_id=… (app/senders/smtp_sender.rb at 3.3.6), at
# ERROR for every failed relay connection ("Cannot connect to …") and every refused or failed message
# (Net::SMTPFatalError → HardFail, other errors → SoftFail); Klogger's default "go" format puts the
# padded severity after the time and the tags after the message. "SSL error (…), retrying without
# SSL" is a retry (ssl_mode Auto only), not a failure.
RELAY_ERROR_RE = "^[^ ]+ [^ ]+ [^ ]+ ERROR +.* log_id=[A-Z0-9]+"  # no backslash: it sits in a quoted filter
RELAY_RETRY_TEXT = "retrying without SSL"
WORKER_CONTAINER_RE = "^postal-worker"  # compose project `postal`, service `worker`
# Ops Agent: disk/percent_used is the agent's system.filesystem.utilization (apps/hostmetrics.go), which
# its agentmetrics processor computes as used / (used + free + reserved) * 100
# (opentelemetry-operations-collector agentmetricsprocessor/utils_calculate_utilizations.go): 0-100,
# the same scale as diskAlertPercent.
DISK_METRIC = "agent.googleapis.com/disk/percent_used"
# Postal's metrics (app/lib/worker/process.rb setup_prometheus, app/lib/smtp_server/server.rb at 3.3.6)
# reach Cloud Monitoring as prometheus_target series whose descriptors exist only once the agent has
# scraped them, and the relay errors as a log-based metric whose descriptor takes up to 10 minutes to
# appear (a threshold condition on it is refused with 404 "Cannot find metric(s)" in the same `up`:
# hashicorp/terraform-provider-google#11102). So these conditions are PromQL with metric validation
# off, which the API accepts at once ("This allows alerting policies to be defined on metrics that do
# not yet exist", AlertPolicy PrometheusQueryLanguageCondition.disableMetricValidation).
# - queue latency: Postal observes each dequeued message's wait (initial_processor.rb
#   increment_dequeue_metric) into prometheus-client's default buckets, whose highest finite bound is
#   10 s (client_ruby 4.2.2 histogram.rb DEFAULT_BUCKETS): histogram_quantile never exceeds 10, so the
#   condition is the mean wait from _sum / _count (no dequeue: 0/0 = NaN, never above the threshold);
# - worker / SMTP down: prometheus-client exports a metric without labels from the start (client_ruby
#   metric.rb init_label_set({})): postal_message_queue_latency (worker) and
#   postal_smtp_server_connections_total (SMTP server) have a sample at every scrape, so their absence
#   for SCRAPE_GAP means the process, its /metrics or the agent is gone;
# - relay errors: a DELTA log-based metric, queried with increase() like Google's own PromQL example on
#   the delta metric logging_googleapis_com:billing_bytes_ingested.
ABSENCE = ("worker-down", "smtp-down")
SCRAPE_GAP = "10m"  # 10 scrapes of 60 s: a reboot or a container restart does not page
PROMQL = {
    "queue-latency": "sum(increase(postal_message_queue_latency_sum{{{vm}}}[15m]))"
    " / sum(increase(postal_message_queue_latency_count{{{vm}}}[15m])) > {threshold}",
    "worker-errors": "sum(increase(postal_worker_errors{{{vm}}}[15m])) > {threshold}",
    "worker-down": "absent_over_time(postal_message_queue_latency_count{{{vm}}}[" + SCRAPE_GAP + "])",
    "smtp-down": "absent_over_time(postal_smtp_server_connections_total{{{vm}}}[" + SCRAPE_GAP + "])",
    "relay-errors": 'sum(increase({metric}{{monitored_resource="gce_instance"}}[15m])) > {threshold}',
}


# Bounce rate (issue 22): the bounces Postal's SMTP server accepted for a return path
# (postal_smtp_server_messages_total{type="bounce"}, app/lib/smtp_server/client.rb at 3.3.6, counted
# at DATA) over the messages the worker dequeued (postal_message_queue_latency_count, observed at every
# dequeue, initial_processor.rb; the bounces themselves are dequeued too, so they are taken off), over
# BOUNCE_WINDOW and only from BOUNCE_MIN_MESSAGES on, so one bounce in a quiet hour does not page.
# Relay refusals in the dialogue (HardFail) are not bounces here: the relay-errors alert counts them.
BOUNCE_WINDOW, BOUNCE_MIN_MESSAGES = "6h", 20
_BOUNCES = 'sum(increase(postal_smtp_server_messages_total{{{vm},type="bounce"}}[' + BOUNCE_WINDOW + "]))"
_HANDLED = "sum(increase(postal_message_queue_latency_count{{{vm}}}[" + BOUNCE_WINDOW + "]))"
PROMQL["bounce-rate"] = (
    f"100 * {_BOUNCES} / ({_HANDLED} - {_BOUNCES}) > {{threshold}}"
    f" and ({_HANDLED} - {_BOUNCES}) >= {BOUNCE_MIN_MESSAGES}"
)


def bounce_rate_spec(cfg: MailConfig, on_postal: pulumi.Output) -> tuple:
    """(title, PromQL, documentation) of the bounce-rate alert."""
    percent = cfg.bounce_rate_alert_percent
    return (
        f"more than {percent}% of the messages bounced in {BOUNCE_WINDOW}",
        on_postal.apply(lambda vm: PROMQL["bounce-rate"].format(vm=vm, threshold=percent)),
        _doc(
            "many messages bounce",
            f"In the last {BOUNCE_WINDOW}, recipients' servers bounced more than {percent}% of the messages "
            f"Postal sent (at least {BOUNCE_MIN_MESSAGES} sent): a sender mails dead addresses, and Google's "
            "relay throttles senders with many bounces.",
            "find the sender: Postal's web UI → Messages, filter on status Bounced (the bounce quotes the "
            "recipient's answer); fix or stop the script, and let Postal's suppression list hold the "
            "addresses. If bounces stop arriving altogether, run `scripts.smoke_test --bounce`.",
        ),
    )


def promql_name(metric_type: str) -> str:
    """A Cloud Monitoring metric type as PromQL names it: the first / becomes :, every other character
    PromQL does not allow becomes _ (https://cloud.google.com/monitoring/promql/promql-mapping)."""
    domain, path = metric_type.split("/", 1)
    return re.sub(r"[^A-Za-z0-9_]", "_", domain) + ":" + re.sub(r"[^A-Za-z0-9_]", "_", path)


@dataclass(frozen=True)
class MonitoringArgs:
    config: MailConfig
    instance_id: pulumi.Input[str]
    vpc_self_link: pulumi.Input[str]
    target_tag: str
    apis: ProjectApis
    checker_ranges: pulumi.Input[list[str]]  # uptime_checker_ranges(): the addresses Caddy limits to GET /login
    # what makes Postal's series exist (the steps that start the agent and Postal's SMTP server): the
    # policies on their absence come after them, so a first `up` does not page while it bootstraps
    postal_running: Sequence[pulumi.Resource] = ()


def uptime_source_ranges(ips) -> list[str]:
    """IPv4 /32 ranges of Google's uptime checkers (the VM has no IPv6), sorted, without repeats."""
    addresses = {
        ipaddress.ip_address(entry["ip_address"] if isinstance(entry, dict) else entry.ip_address) for entry in ips
    }
    return [f"{a}/32" for a in sorted(a for a in addresses if a.version == 4)]


def uptime_checker_ranges() -> pulumi.Output[list[str]]:
    """Google's uptime checkers' IPv4 addresses as /32 ranges, read from Monitoring's uptimeCheckIps.list
    at every run (https://cloud.google.com/monitoring/uptime-checks/using-uptime-checks, "List IP
    addresses"): the firewall rule and Caddy's GET /login-only matcher use this one list, so they cannot
    disagree when Google changes it."""
    checkers = gcp.monitoring.get_uptime_check_i_ps_output()
    return checkers.uptime_check_ips.apply(uptime_source_ranges)


def console_url(project: str) -> str:
    return f"https://console.cloud.google.com/monitoring/alerting?project={project}"


def _doc(what: str, means: str, todo: str) -> dict:
    return {
        "subject": f"postal-gateway: {what}",
        "mime_type": "text/markdown",
        "content": f"**{what}**\n\n{means}\n\n**What to do:** {todo}\n\n"
        "Runbook: docs/operations.md#alerts in the postal-gateway repository.",
    }


class MailMonitoring(pulumi.ComponentResource):
    """Outputs: `url` (the console's alert list), `policies` (name -> AlertPolicy), `checks`."""

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("postal-gateway:index:MailMonitoring", name, None, opts)
        cfg, apis = args.config, args.apis
        project = cfg.project
        child = apis.after(MONITORING, parent=self)
        stack = f"postal-gateway ({cfg.stack})"

        self.channel = gcp.monitoring.NotificationChannel(
            f"{name}-alert-email",
            project=project,
            type="email",
            display_name=f"{stack}: {cfg.alert_email}",
            labels={"email_address": cfg.alert_email},
            opts=child,
        )

        resource = {"type": "uptime_url", "labels": {"project_id": project, "host": cfg.hostname}}
        self.checks = {
            "https": gcp.monitoring.UptimeCheckConfig(
                f"{name}-uptime-https",
                project=project,
                display_name=f"{stack}: https://{cfg.hostname}{LOGIN_PATH}",
                period=UPTIME_PERIOD,
                timeout="10s",
                monitored_resource=resource,
                http_check={
                    "path": LOGIN_PATH,
                    "port": 443,
                    "use_ssl": True,
                    "validate_ssl": cfg.tls != "internal",
                    "request_method": "GET",
                },
                content_matchers=[{"content": LOGIN_TEXT, "matcher": "CONTAINS_STRING"}],
                opts=child,
            ),
        }
        self.firewall = gcp.compute.Firewall(
            f"{name}-allow-uptime-checks",
            project=project,
            network=args.vpc_self_link,
            direction="INGRESS",
            description="Google Cloud Monitoring uptime checkers: HTTPS only (Caddy admits them to GET /login only)",
            allows=[{"protocol": "tcp", "ports": list(UPTIME_PORTS)}],
            source_ranges=args.checker_ranges,
            target_tags=[args.target_tag],
            opts=apis.after("compute.googleapis.com", parent=self),
        )

        self.relay_errors = gcp.logging.Metric(
            f"{name}-relay-errors",
            project=project,
            name=f"postal-gateway-{cfg.stack}-relay-errors",
            description="Postal's relay delivery errors (failed connections, refused or failed messages)",
            filter=pulumi.Output.from_input(args.instance_id).apply(
                lambda instance: " AND ".join(
                    (
                        'resource.type="gce_instance"',
                        f'resource.labels.instance_id="{instance}"',
                        f'jsonPayload.CONTAINER_NAME=~"{WORKER_CONTAINER_RE}"',
                        f'jsonPayload.MESSAGE=~"{RELAY_ERROR_RE}"',
                        f'NOT jsonPayload.MESSAGE:"{RELAY_RETRY_TEXT}"',
                    )
                )
            ),
            metric_descriptor={"metric_kind": "DELTA", "value_type": "INT64", "unit": "1"},
            opts=apis.after("logging.googleapis.com", parent=self),
        )

        instance = pulumi.Output.from_input(args.instance_id)
        on_vm = instance.apply(lambda i: f'resource.type="gce_instance" AND resource.labels.instance_id="{i}"')
        # the agent labels its Prometheus series namespace="<instance id>/<instance name>" (ops-agent
        # confgenerator/resourcedetector/gce_detector.go PrometheusStyleMetadata)
        on_postal = instance.apply(lambda i: f'namespace=~"{i}/.*"')
        specs = {
            "uptime-https": (
                "the web UI and API do not answer",
                self._uptime_filter(self.checks["https"]),
                _doc(
                    "https://" + cfg.hostname + " is down",
                    f"Google's checkers did not get Postal's login page ({LOGIN_TEXT!r}) from several regions.",
                    "`curl -I https://<hostname>/login`; on the VM `sudo postal status`, `sudo postal logs web`, "
                    "`sudo docker logs postal-caddy`. A 502 means Postal's web server is down; a certificate "
                    "error means Let's Encrypt could not validate (docs/troubleshooting.md).",
                ),
            ),
            "disk": (
                f"a disk is more than {cfg.disk_alert_percent}% full",
                pulumi.Output.concat(
                    on_vm,
                    f' AND metric.type="{DISK_METRIC}" AND metric.labels.state="used"'
                    ' AND metric.labels.device=starts_with("/dev/")',
                ),
                _doc(
                    f"a disk is over {cfg.disk_alert_percent}% full",
                    "The boot disk or the data disk (/opt/postal: MariaDB, backups) is filling up.",
                    "grow it: `pulumi config set dataDiskSizeGb <bigger>` (or bootDiskSizeGb) and `pulumi up` "
                    "(in place); on the VM `df -h`, `sudo du -sh /opt/postal/*`; old backups go after "
                    "backupRetentionDays.",
                ),
            ),
            "queue-latency": (
                f"Postal's queue latency is above {cfg.queue_latency_alert_seconds}s",
                on_postal.apply(
                    lambda vm: PROMQL["queue-latency"].format(vm=vm, threshold=cfg.queue_latency_alert_seconds)
                ),
                _doc(
                    "mail waits in Postal's queue",
                    "The messages the worker took from the queue in the last 15 minutes waited "
                    f"{cfg.queue_latency_alert_seconds} s or more on average (postal_message_queue_latency "
                    "_sum / _count): the worker is behind.",
                    "`sudo postal status`, `sudo postal logs worker`; a relay that defers or throttles "
                    "(docs/troubleshooting.md) holds the queue; a backlog after an outage drains by itself.",
                ),
            ),
            "worker-down": (
                f"Postal's worker has not been scraped for {SCRAPE_GAP}",
                on_postal.apply(lambda vm: PROMQL["worker-down"].format(vm=vm)),
                _doc(
                    "Postal's worker is down",
                    f"No sample of the worker's metrics (127.0.0.1:9090/metrics) for {SCRAPE_GAP}: the worker "
                    "is stopped or hung, or the Ops Agent is. Nothing is delivered while the worker is down.",
                    "on the VM `sudo postal status`, `sudo postal logs worker`, `sudo postal start`; "
                    "`curl -s 127.0.0.1:9090/health`; `sudo systemctl status google-cloud-ops-agent`.",
                ),
            ),
            "smtp-down": (
                f"Postal's SMTP server has not been scraped for {SCRAPE_GAP}",
                on_postal.apply(lambda vm: PROMQL["smtp-down"].format(vm=vm)),
                _doc(
                    "Postal's SMTP server is down",
                    f"No sample of the SMTP server's metrics (127.0.0.1:9091/metrics) for {SCRAPE_GAP}: the "
                    "smtp container is stopped (it waits for its certificate) or hung, or the Ops Agent is. "
                    "Mail submitted on port 25 is refused.",
                    "on the VM `sudo postal status`, `sudo postal logs smtp`; `sudo systemctl status "
                    "postal-gateway-smtp-tls` (certificate copy); `sudo systemctl status google-cloud-ops-agent`.",
                ),
            ),
            "worker-errors": (
                f"Postal's worker counted more than {cfg.worker_error_alert_count} errors in 15 minutes",
                on_postal.apply(
                    lambda vm: PROMQL["worker-errors"].format(vm=vm, threshold=cfg.worker_error_alert_count)
                ),
                _doc(
                    "Postal's worker is failing",
                    "postal_worker_errors (exceptions in the worker's jobs) is rising.",
                    "`sudo postal logs worker` for the exception; MariaDB down (`sudo docker logs "
                    "postal-mariadb`) is the usual cause.",
                ),
            ),
            "relay-errors": (
                f"more than {cfg.relay_failure_alert_count} relay errors in 15 minutes",
                self.relay_errors.name.apply(
                    lambda metric: PROMQL["relay-errors"].format(
                        metric=promql_name(f"logging.googleapis.com/user/{metric}"),
                        threshold=cfg.relay_failure_alert_count,
                    )
                ),
                _doc(
                    "messages fail at the relay",
                    "Postal's worker logs errors talking to the relay: failed connections, or messages the "
                    "relay refused (HardFail) or deferred (SoftFail, retried).",
                    "`sudo postal logs worker | grep log_id=` for the relay's answer, then the smoke test's "
                    "table in docs/troubleshooting.md: `Invalid credentials for relay` = publicIp not "
                    "allowlisted; `requires TLS` = relayTls; daily/peak limit = wait; cannot reach = egress.",
                ),
            ),
        }
        specs["bounce-rate"] = bounce_rate_spec(cfg, on_postal)
        aggregations = {
            "uptime-https": {
                "alignment_period": "300s",
                "per_series_aligner": "ALIGN_NEXT_OLDER",
                "cross_series_reducer": "REDUCE_COUNT_FALSE",
                "group_by_fields": ["resource.label.*"],
            },
            "disk": {"alignment_period": "300s", "per_series_aligner": "ALIGN_MEAN"},
        }
        thresholds = {
            "uptime-https": 1,
            "disk": cfg.disk_alert_percent,
        }
        durations = {"uptime-https": "300s", "disk": "600s"}

        def condition(key: str, title: str, query: pulumi.Input[str]) -> dict:
            if key in PROMQL:
                return {
                    "display_name": title,
                    "condition_prometheus_query_language": {
                        "query": query,
                        "duration": "0s",
                        "evaluation_interval": "60s",
                        "disable_metric_validation": True,
                    },
                }
            return {
                "display_name": title,
                "condition_threshold": {
                    "filter": query,
                    "comparison": "COMPARISON_GT",
                    "threshold_value": thresholds[key],
                    "duration": durations.get(key, "0s"),
                    "aggregations": [aggregations[key]],
                    "trigger": {"count": 1},
                },
            }

        self.policies = {
            key: gcp.monitoring.AlertPolicy(
                f"{name}-alert-{key}",
                project=project,
                display_name=f"{stack}: {title}",
                combiner="OR",
                conditions=[condition(key, title, query)],
                notification_channels=[self.channel.name],
                documentation=doc,
                alert_strategy={"auto_close": "86400s"},
                user_labels=cfg.gcp_labels,
                opts=pulumi.ResourceOptions.merge(
                    child,
                    pulumi.ResourceOptions(depends_on=list(args.postal_running) if key in ABSENCE else []),
                ),
            )
            for key, (title, query, doc) in specs.items()
        }
        self.url = console_url(project)
        self.register_outputs({"url": self.url})

    @staticmethod
    def _uptime_filter(check: gcp.monitoring.UptimeCheckConfig) -> pulumi.Output[str]:
        return check.uptime_check_id.apply(
            lambda check_id: (
                'metric.type="monitoring.googleapis.com/uptime_check/check_passed" AND '
                f'resource.type="uptime_url" AND metric.labels.check_id="{check_id}"'
            )
        )
