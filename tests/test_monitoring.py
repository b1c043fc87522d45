"""MailMonitoring under mocks: who is told, what is checked, the checkers' firewall, each alert policy."""

import re

import program
import pytest

from components import monitoring

NS = "postal-gateway:"
POLICY = "gcp:monitoring/alertPolicy:AlertPolicy"


@pytest.fixture(scope="module")
def tuned():
    """One run with every monitoring setting changed."""
    result = program.run(
        {
            NS + "alertEmail": "oncall@rdo-dev.com",
            NS + "tls": "internal",
            NS + "diskAlertPercent": "90",
            NS + "queueLatencyAlertSeconds": "60",
            NS + "workerErrorAlertCount": "20",
            NS + "relayFailureAlertCount": "30",
        }
    )
    assert result.error is None, result.error
    return result


def policies(run) -> dict:
    return {r.name.removeprefix("postal-alert-"): r.inputs for r in run.of_type(POLICY)}


def checks(run) -> dict:
    return {
        r.name.removeprefix("postal-uptime-"): r.inputs
        for r in run.of_type("gcp:monitoring/uptimeCheckConfig:UptimeCheckConfig")
    }


def test_alerts_go_to_alert_email_defaulting_to_admin_email(run, tuned):
    (channel,) = run.of_type("gcp:monitoring/notificationChannel:NotificationChannel")
    assert channel.inputs["type"] == "email" and channel.inputs["labels"] == {"email_address": "ops@rdo-dev.com"}
    (channel,) = tuned.of_type("gcp:monitoring/notificationChannel:NotificationChannel")
    assert channel.inputs["labels"] == {"email_address": "oncall@rdo-dev.com"}


def test_uptime_checks_prove_postal_answers_on_https_and_smtp(run, tuned):
    found = checks(run)
    assert set(found) == {"https", "smtp"}
    for check in found.values():
        assert check["monitoredResource"] == {
            "type": "uptime_url",
            "labels": {"project_id": "acme-mail", "host": "postal.rdo-dev.com"},
        }
    https = found["https"]
    assert https["httpCheck"]["path"] == "/login" and https["httpCheck"]["port"] == 443
    assert https["httpCheck"]["useSsl"] is True and https["httpCheck"]["validateSsl"] is True
    # Postal's login page says it (app/views/sessions/new.html.haml at 3.3.6); Caddy's 502 does not
    assert https["contentMatchers"] == [{"content": "Welcome to Postal", "matcher": "CONTAINS_STRING"}]
    assert found["smtp"]["tcpCheck"] == {"port": 25} and "httpCheck" not in found["smtp"]
    internal = checks(tuned)["https"]
    assert internal["httpCheck"]["validateSsl"] is False  # Caddy's own CA is not trusted by the checkers


def test_uptime_checkers_reach_exactly_443_and_25(run):
    assert [t for t, _ in run.invokes if "Uptime" in t] == ["gcp:monitoring/getUptimeCheckIPs:getUptimeCheckIPs"]
    (rule,) = [r for r in run.of_type("gcp:compute/firewall:Firewall") if r.name == "postal-allow-uptime-checks"]
    assert rule.inputs["allows"] == [{"protocol": "tcp", "ports": ["443", "25"]}]
    assert rule.inputs["direction"] == "INGRESS"
    # IPv4 only (the VM has no IPv6), one /32 per checker, each once
    assert rule.inputs["sourceRanges"] == [
        "34.94.157.51/32",
        "35.186.144.97/32",
        "35.187.242.246/32",
        "35.198.221.49/32",
    ]
    (vm,) = run.of_type("gcp:compute/instance:Instance")
    assert rule.inputs["targetTags"] == vm.inputs["tags"]
    (vpc,) = run.of_type("gcp:compute/network:Network")
    assert rule.inputs["network"].endswith(vpc.name)


def test_every_policy_notifies_and_says_what_to_do(run):
    found = policies(run)
    assert set(found) == {"uptime-https", "uptime-smtp", "disk", "queue-latency", "worker-errors", "relay-errors"}
    channels = {tuple(policy["notificationChannels"]) for policy in found.values()}
    assert len(channels) == 1 and next(iter(channels))[0].startswith("projects/acme-mail/notificationChannels/")
    for name, policy in found.items():
        doc = policy["documentation"]
        assert doc["mimeType"] == "text/markdown" and "**What to do:**" in doc["content"], name
        assert "docs/operations.md#alerts" in doc["content"]
        assert len(policy["conditions"]) == 1


def test_uptime_policies_watch_their_own_check(run):
    found, ids = policies(run), {k: f"postal-uptime-{k}-0123abcd" for k in ("https", "smtp")}
    for check, check_id in ids.items():
        condition = found[f"uptime-{check}"]["conditions"][0]["conditionThreshold"]
        assert f'metric.labels.check_id="{check_id}"' in condition["filter"]
        assert "uptime_check/check_passed" in condition["filter"]
        assert condition["aggregations"][0]["crossSeriesReducer"] == "REDUCE_COUNT_FALSE"
        assert condition["comparison"] == "COMPARISON_GT" and condition["thresholdValue"] == 1  # 2+ regions fail


def test_disk_policy_uses_the_agents_metric_and_the_threshold(run, tuned):
    condition = policies(run)["disk"]["conditions"][0]["conditionThreshold"]
    assert 'metric.type="agent.googleapis.com/disk/percent_used"' in condition["filter"]
    assert 'resource.labels.instance_id="4242424242"' in condition["filter"]
    assert condition["thresholdValue"] == 80
    other = policies(tuned)["disk"]["conditions"][0]
    assert other["conditionThreshold"]["thresholdValue"] == 90


def test_postal_metric_policies_are_promql_on_postals_own_metric_names(run, tuned):
    """Names and types from app/lib/worker/process.rb setup_prometheus (Postal 3.3.6): the queue
    latency is a histogram (its _bucket series), worker errors a counter."""
    found = policies(run)
    latency = found["queue-latency"]["conditions"][0]["conditionPrometheusQueryLanguage"]
    assert latency["query"] == (
        "histogram_quantile(0.99, sum by (le) (rate(postal_message_queue_latency_bucket"
        '{namespace=~"4242424242/.*"}[15m]))) > 300'
    )
    errors = found["worker-errors"]["conditions"][0]["conditionPrometheusQueryLanguage"]
    assert errors["query"] == 'sum(increase(postal_worker_errors{namespace=~"4242424242/.*"}[15m])) > 5'
    assert latency["disableMetricValidation"] is True and errors["disableMetricValidation"] is True
    found = policies(tuned)
    assert found["queue-latency"]["conditions"][0]["conditionPrometheusQueryLanguage"]["query"].endswith(" > 60")
    assert found["worker-errors"]["conditions"][0]["conditionPrometheusQueryLanguage"]["query"].endswith(" > 20")
    assert found["relay-errors"]["conditions"][0]["conditionThreshold"]["thresholdValue"] == 30


def test_relay_errors_are_a_log_based_metric_on_the_workers_journal(run):
    (metric,) = run.of_type("gcp:logging/metric:Metric")
    assert metric.inputs["name"] == "postal-gateway-prod-relay-errors"
    assert metric.inputs["metricDescriptor"] == {"metricKind": "DELTA", "valueType": "INT64", "unit": "1"}
    assert 'resource.labels.instance_id="4242424242"' in metric.inputs["filter"]
    assert 'jsonPayload.CONTAINER_NAME=~"^postal-worker"' in metric.inputs["filter"]
    condition = policies(run)["relay-errors"]["conditions"][0]["conditionThreshold"]
    assert condition["filter"].startswith('metric.type="logging.googleapis.com/user/postal-gateway-prod-relay-errors"')
    assert condition["thresholdValue"] == 5 and condition["aggregations"][0]["alignmentPeriod"] == "900s"
    policy = next(r for r in run.of_type(POLICY) if r.name == "postal-alert-relay-errors")
    metric_urn = next(r.urn for r in run.of_type("gcp:logging/metric:Metric"))
    assert metric_urn in policy.depends_on  # the metric exists before a policy names it


def klogger_go(severity: str, message: str, **tags) -> str:
    """A line as Klogger's default "go" formatter writes it (krystal/klogger formatters/go.rb)."""
    line = f"2026-11-27 23:40:02 +0000 {severity.upper().ljust(8)}{message} "
    return line + "".join(f"{k}={v} " for k, v in tags.items())


RELAY_LINES = [  # app/senders/smtp_sender.rb at 3.3.6, logger tagged log_id
    (
        klogger_go(
            "error",
            "Cannot connect to 142.250.102.28:587 (Net::OpenTimeout: execution expired)",
            log_id="K3J9QZ1A",
            component="worker",
            thread="work0",
        ),
        True,
    ),
    (
        klogger_go(
            "error",
            "Net::SMTPFatalError: 550-5.7.1 Invalid credentials for relay [34.90.1.7].",
            log_id="K3J9QZ1A",
            component="worker",
        ),
        True,
    ),
    (klogger_go("error", "Net::SMTPServerBusy: 421-4.7.0 Try again later", log_id="ABCDEFGH"), True),
    (klogger_go("error", "SSL error (SSL_connect returned=1), retrying without SSL", log_id="ABCDEFGH"), False),
    (klogger_go("info", "Sending message 1::42 to ops@rdo-dev.com", log_id="ABCDEFGH"), False),
    (klogger_go("error", "ActiveRecord::ConnectionNotEstablished (Can't connect)", component="worker"), False),
]


@pytest.mark.parametrize("line,counted", RELAY_LINES)
def test_relay_error_filter_counts_only_failed_relay_talk(line, counted):
    # RE2 (Cloud Logging's =~) and Python agree on this subset: no backslashes, no lookarounds
    matched = bool(re.search(monitoring.RELAY_ERROR_RE, line.rstrip())) and monitoring.RELAY_RETRY_TEXT not in line
    assert matched is counted
    assert "\\" not in monitoring.RELAY_ERROR_RE


def test_monitoring_url_is_the_projects_alert_list(run):
    assert run.outputs["monitoringUrl"] == (
        "https://console.cloud.google.com/monitoring/alerting?project=acme-mail",
        False,
    )
