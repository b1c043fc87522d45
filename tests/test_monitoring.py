"""MailMonitoring under mocks: who is told, what is checked, the checkers' firewall, each alert policy."""

import re
import subprocess

import program
import pytest
import yaml

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
    """MailMonitoring's alert policies (the stale-backup one is OffsiteBackup's: tests/test_backup.py)."""
    return {r.name.removeprefix("postal-alert-"): r.inputs for r in run.of_type(POLICY) if "MailMonitoring" in r.parent}


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


def test_the_uptime_check_proves_postal_answers_on_https(run, tuned):
    """Only HTTPS: port 25 is not opened to Google's checkers (any Cloud customer can drive them); the
    SMTP server's liveness is the smtp-down alert on its Prometheus series."""
    found = checks(run)
    assert set(found) == {"https"}
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
    internal = checks(tuned)["https"]
    assert internal["httpCheck"]["validateSsl"] is False  # Caddy's own CA is not trusted by the checkers


def test_uptime_checkers_reach_only_443(run):
    assert [t for t, _ in run.invokes if "Uptime" in t] == ["gcp:monitoring/getUptimeCheckIPs:getUptimeCheckIPs"]
    (rule,) = [r for r in run.of_type("gcp:compute/firewall:Firewall") if r.name == "postal-allow-uptime-checks"]
    assert rule.inputs["allows"] == [{"protocol": "tcp", "ports": ["443"]}]
    assert not [
        r
        for r in run.of_type("gcp:compute/firewall:Firewall")
        if "25" in r.inputs["allows"][0]["ports"] and "35.186.144.97/32" in r.inputs["sourceRanges"]
    ]
    assert "smtp-down" in policies(run) and "uptime-smtp" not in policies(run)
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
    assert {"disk", "queue-latency", "worker-errors", "worker-down", "smtp-down", "relay-errors"} <= set(found)
    channels = {tuple(policy["notificationChannels"]) for policy in found.values()}
    assert len(channels) == 1 and next(iter(channels))[0].startswith("projects/acme-mail/notificationChannels/")
    for name, policy in found.items():
        doc = policy["documentation"]
        assert doc["mimeType"] == "text/markdown" and "**What to do:**" in doc["content"], name
        assert "docs/operations.md#alerts" in doc["content"]
        assert len(policy["conditions"]) == 1


def test_uptime_policies_watch_their_own_check(run):
    found, ids = policies(run), {k: f"postal-uptime-{k}-0123abcd" for k in ("https",)}
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


def promql(run, key: str) -> dict:
    return policies(run)[key]["conditions"][0]["conditionPrometheusQueryLanguage"]


def test_postal_metric_policies_are_promql_on_postals_own_metric_names(run, tuned):
    """Names and types from app/lib/worker/process.rb setup_prometheus and app/lib/smtp_server/server.rb
    (Postal 3.3.6): the queue latency is a histogram (_sum, _count), worker errors a counter."""
    vm = '{namespace=~"4242424242/.*"}'
    assert promql(run, "queue-latency")["query"] == (
        f"sum(increase(postal_message_queue_latency_sum{vm}[15m]))"
        f" / sum(increase(postal_message_queue_latency_count{vm}[15m])) > 300"
    )
    assert promql(run, "worker-errors")["query"] == f"sum(increase(postal_worker_errors{vm}[15m])) > 5"
    assert promql(run, "worker-down")["query"] == f"absent_over_time(postal_message_queue_latency_count{vm}[10m])"
    assert promql(run, "smtp-down")["query"] == f"absent_over_time(postal_smtp_server_connections_total{vm}[10m])"
    for key in ("queue-latency", "worker-errors", "worker-down", "smtp-down", "relay-errors"):
        # accepted before the agent's first scrape or the log metric's descriptor exists
        assert promql(run, key)["disableMetricValidation"] is True, key
    assert promql(tuned, "queue-latency")["query"].endswith(" > 60")
    assert promql(tuned, "worker-errors")["query"].endswith(" > 20")
    assert promql(tuned, "relay-errors")["query"].endswith(" > 30")


def test_relay_errors_are_a_log_based_metric_on_the_workers_journal(run):
    (metric,) = [m for m in run.of_type("gcp:logging/metric:Metric") if m.name == "postal-relay-errors"]
    assert metric.inputs["name"] == "postal-gateway-prod-relay-errors"
    assert metric.inputs["metricDescriptor"] == {"metricKind": "DELTA", "valueType": "INT64", "unit": "1"}
    assert 'resource.labels.instance_id="4242424242"' in metric.inputs["filter"]
    assert 'jsonPayload.CONTAINER_NAME=~"^postal-worker"' in metric.inputs["filter"]
    # Cloud Monitoring's PromQL name of logging.googleapis.com/user/postal-gateway-prod-relay-errors
    assert promql(run, "relay-errors")["query"] == (
        "sum(increase(logging_googleapis_com:user_postal_gateway_prod_relay_errors"
        '{monitored_resource="gce_instance"}[15m])) > 5'
    )
    policy = next(r for r in run.of_type(POLICY) if r.name == "postal-alert-relay-errors")
    assert metric.urn in policy.depends_on  # the metric exists before a policy names it


def test_absence_alerts_wait_for_postal_and_the_agent(run):
    """A first `up` creates them after the steps that start Postal's SMTP server and the Ops Agent, so
    they do not page while the VM bootstraps."""
    steps = {r.name: r.urn for r in run.of_type("command:remote:Command")}
    for key in ("worker-down", "smtp-down"):
        policy = next(r for r in run.of_type(POLICY) if r.name == f"postal-alert-{key}")
        assert {steps["postal-smtp-tls"], steps["postal-ops"]} <= set(policy.depends_on), key


def test_the_first_up_creates_the_log_metric_policy_without_a_threshold_on_a_new_descriptor(run):
    """A threshold (filter) condition on a log-based metric created in the same `up` is refused with
    404 "Cannot find metric(s) ... could take up to 10 minutes" (hashicorp/terraform-provider-google
    #11102); no policy may name a metric descriptor that only a scrape or a new log metric creates."""
    for key, policy in policies(run).items():
        threshold = policy["conditions"][0].get("conditionThreshold")
        if threshold is None:
            assert policy["conditions"][0]["conditionPrometheusQueryLanguage"]["disableMetricValidation"], key
            continue
        # what remains are Google's predefined metrics (uptime checks, the agent's, services'), never a
        # user-defined one, whose descriptor a resource or a first write creates
        (metric_type,) = re.findall(r'metric\.type="([^"]+)"', threshold["filter"])
        user_defined = ("logging.googleapis.com/user/", "custom.", "workload.", "prometheus.", "external.")
        assert not metric_type.startswith(user_defined), key


@pytest.mark.parametrize(
    "metric_type,name",
    [
        (
            "logging.googleapis.com/user/postal-gateway-prod-relay-errors",
            "logging_googleapis_com:user_postal_gateway_prod_relay_errors",
        ),
        ("agent.googleapis.com/disk/io_time", "agent_googleapis_com:disk_io_time"),  # Google's own table
        ("compute.googleapis.com/instance/cpu/utilization", "compute_googleapis_com:instance_cpu_utilization"),
    ],
)
def test_promql_names_follow_googles_mapping(metric_type, name):
    assert monitoring.promql_name(metric_type) == name


# --- each condition on series that must fire and series that must not -------------------------
# PromQL conditions are evaluated by Prometheus's own engine (`promtool test rules`, Debian's
# prometheus package): each query as rendered becomes an alerting rule; Cloud Monitoring's PromQL
# condition (duration 0s) is violated exactly when its query returns a series.
HERE = 'namespace="4242424242/postal-vm"'  # the agent's label on this VM's Prometheus series
OTHER = 'namespace="999/another-vm"'


def verdicts(tmp_path, cases: list[tuple[str, dict[str, str], str]], interval: str = "1m") -> list[bool]:
    """For each (query, series, at): whether `query` returns anything at `at` over `series` (promtool
    input notation, samples and evaluations every `interval`: 'a+bxn' = n+1 samples from a by b, '_' = no
    sample). Each case is a test file of its own with two test groups on the same series, one expecting
    the alert and one expecting none: exactly one of them must fail, and the one that passed is the
    verdict. One promtool run takes every file."""
    files = []
    for n, (query, series, at) in enumerate(cases):
        rules = {"groups": [{"name": "postal-gateway", "rules": [{"alert": "condition", "expr": query}]}]}
        (tmp_path / f"rules-{n}.yml").write_text(yaml.safe_dump(rules))
        test = {
            "rule_files": [f"rules-{n}.yml"],
            "evaluation_interval": interval,
            "tests": [
                {
                    "name": f"{n}-{expected}",
                    "interval": interval,
                    "input_series": [{"series": k, "values": v} for k, v in series.items()],
                    "alert_rule_test": [
                        {
                            "eval_time": at,
                            "alertname": "condition",
                            "exp_alerts": [{"exp_labels": {}}] if expected == "fires" else [],
                        }
                    ],
                }
                for expected in ("fires", "quiet")
            ],
        }
        (tmp_path / f"test-{n}.yml").write_text(yaml.safe_dump(test))
        files.append(f"test-{n}.yml")
    result = subprocess.run(
        [program.tool("promtool"), "test", "rules", *files], cwd=tmp_path, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    answers = []
    for n in range(len(cases)):
        failed = {e for e in ("fires", "quiet") if f"name: {n}-{e}," in output}
        assert len(failed) == 1, f"case {n}:\n{output}"  # promtool agrees with exactly one expectation
        answers.append(failed == {"quiet"})
    return answers


def latency(per_minute: int, wait_s: float, other: dict | None = None) -> dict[str, str]:
    """postal_message_queue_latency as prometheus-client exposes it: cumulative buckets (default
    bounds, client_ruby histogram.rb), _sum and _count, `per_minute` dequeues each `wait_s` long."""
    series = {
        f"postal_message_queue_latency_sum{{{HERE}}}": f"0+{per_minute * wait_s}x40",
        f"postal_message_queue_latency_count{{{HERE}}}": f"0+{per_minute}x40",
    }
    for bound in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"):
        within = per_minute if bound == "+Inf" or wait_s <= float(bound) else 0
        series[f'postal_message_queue_latency_bucket{{{HERE},le="{bound}"}}'] = f"0+{within}x40"
    return series | (other or {})


def test_queue_latency_fires_on_a_slow_queue_and_not_on_a_fast_or_idle_one(run, tmp_path):
    query = promql(run, "queue-latency")["query"]  # threshold 300 s
    assert verdicts(
        tmp_path,
        [
            (query, latency(20, 400), "30m"),
            (query, latency(20, 2), "30m"),
            (query, latency(0, 0), "30m"),  # nothing dequeued: 0/0, not an alert
            # another VM's slow queue is not ours
            (query, latency(20, 2, {f"postal_message_queue_latency_sum{{{OTHER}}}": "0+8000x40"}), "30m"),
        ],
    ) == [True, False, False, False]


def test_the_old_percentile_condition_could_never_fire(tmp_path):
    """Why the condition changed: with every wait at 400 s, all of them land in +Inf and
    histogram_quantile answers the highest finite bound, 10 s (prometheus/promql/quantile.go)."""
    old = 'histogram_quantile(0.99, sum by (le) (rate(postal_message_queue_latency_bucket{namespace=~"4242424242/.*"}[15m]))) > 300'
    cases = [(old, latency(20, 400), "30m"), (old.replace("> 300", "> 9.9"), latency(20, 400), "30m")]
    assert verdicts(tmp_path, cases) == [False, True]


@pytest.mark.parametrize(
    "key,metric",
    [("worker-down", "postal_message_queue_latency_count"), ("smtp-down", "postal_smtp_server_connections_total")],
)
def test_a_process_that_stops_being_scraped_pages(run, tmp_path, key, metric):
    query = promql(run, key)["query"]
    ours, other = f"{metric}{{{HERE}}}", f"{metric}{{{OTHER}}}"
    assert verdicts(
        tmp_path,
        [
            (query, {ours: "0x10 _x30", other: "0x40"}, "25m"),  # gone since minute 10
            (query, {other: "0x40"}, "25m"),  # never scraped on this VM
            (query, {ours: "0x40"}, "30m"),  # scraped every minute, even at 0
            (query, {ours: "0x10 _x5 0x25"}, "15m"),  # a 5-minute restart does not page
        ],
    ) == [True, True, False, False]


def test_worker_errors_fire_above_the_count(run, tmp_path):
    query = promql(run, "worker-errors")["query"]  # more than 5 in 15 minutes
    series = f'postal_worker_errors{{{HERE},error="ActiveRecord::ConnectionNotEstablished"}}'
    assert verdicts(tmp_path, [(query, {series: "0+1x40"}, "30m"), (query, {series: "0x20 1 2 3 3x20"}, "30m")]) == [
        True,
        False,
    ]


def test_relay_errors_fire_above_the_count(run, tmp_path):
    query = promql(run, "relay-errors")["query"]  # more than 5 in 15 minutes
    metric = "logging_googleapis_com:user_postal_gateway_prod_relay_errors"
    ours = f'{metric}{{monitored_resource="gce_instance"}}'
    assert verdicts(tmp_path, [(query, {ours: "0+1x40"}, "30m"), (query, {ours: "0x20 1 2 2x20"}, "30m")]) == [
        True,
        False,
    ]


def threshold_violated(condition: dict, points: list[tuple[int, float]], at: int) -> bool:
    """A metric threshold condition (projects.alertPolicies MetricThreshold): points aligned by
    `perSeriesAligner` over `alignmentPeriod` windows; violated when every aligned value within the
    last `duration` (at least one window) compares true against `thresholdValue`."""
    (aggregation,) = condition["aggregations"]
    assert aggregation["perSeriesAligner"] == "ALIGN_MEAN" and condition["comparison"] == "COMPARISON_GT"
    period, duration = int(aggregation["alignmentPeriod"][:-1]), int(condition["duration"][:-1])
    windows = [at - k * period for k in range(max(duration // period, 1))]
    means = []
    for end in windows:
        values = [v for t, v in points if end - period < t <= end]
        if not values:
            return False
        means.append(sum(values) / len(values))
    return all(m > condition["thresholdValue"] for m in means)


def test_disk_threshold_is_on_the_agents_0_to_100_scale(run):
    """disk/percent_used is 0-100 (ops-agent apps/hostmetrics.go renames system.filesystem.utilization,
    computed * 100 by agentmetricsprocessor utils_calculate_utilizations.go), like diskAlertPercent."""
    condition = policies(run)["disk"]["conditions"][0]["conditionThreshold"]  # 80 %, 10 minutes
    minute = 60
    full = [(t * minute, 85.0) for t in range(30)]
    assert threshold_violated(condition, full, 29 * minute)
    assert not threshold_violated(condition, [(t * minute, 79.0) for t in range(30)], 29 * minute)
    spike = [(t * minute, 95.0 if t >= 25 else 40.0) for t in range(30)]  # 5 minutes: shorter than duration
    assert not threshold_violated(condition, spike, 29 * minute)
    # a 0-1 fraction would never cross 80: the scale matters
    assert not threshold_violated(condition, [(t * minute, 0.99) for t in range(30)], 29 * minute)


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
