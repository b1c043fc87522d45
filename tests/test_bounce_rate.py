"""The bounce-rate alert (components/monitoring.py, issue 22), its condition evaluated by promtool on
series shaped like Postal 3.3.6's: postal_smtp_server_messages_total{type="bounce",tls} (a counter the
SMTP server increments for every bounce it stores, app/lib/smtp_server/client.rb) and
postal_message_queue_latency_count (every dequeue, app/lib/message_dequeuer/initial_processor.rb)."""

from __future__ import annotations

import program
from test_monitoring import HERE, OTHER, policies, promql, verdicts

from components import monitoring

NS = "postal-gateway:"
MINUTES = 420  # 7 hours: the 6-hour window is full
STEP = 5  # minutes between samples and evaluations: the query's only range is the 6-hour window


def series(sent_per_hour: float, bounces_per_hour: float, where: str = HERE) -> dict[str, str]:
    """Counters growing steadily: `sent_per_hour` outgoing messages dequeued, `bounces_per_hour` bounces
    stored (each also dequeued once by the worker)."""
    dequeued, steps = (sent_per_hour + bounces_per_hour) * STEP / 60, MINUTES // STEP
    return {
        f"postal_message_queue_latency_count{{{where}}}": f"0+{dequeued}x{steps}",
        f'postal_smtp_server_messages_total{{{where},type="bounce",tls="yes"}}': f"0+{bounces_per_hour * STEP / 60}x{steps}",
        f'postal_smtp_server_messages_total{{{where},type="incoming",tls="no"}}': f"0+{STEP}x{steps}",
    }


def alerts(tmp_path, query: str, *cases: dict[str, str]) -> list[bool]:
    """Whether the query fires at the end of the 7 hours over each series."""
    return verdicts(tmp_path, [(query, series, f"{MINUTES}m") for series in cases], interval=f"{STEP}m")


def test_the_bounce_rate_alert_fires_above_the_percentage_with_enough_mail(run, tmp_path):
    query = promql(run, "bounce-rate")["query"]  # default 5 %
    assert alerts(
        tmp_path,
        query,
        series(100, 10),  # 10 %
        series(100, 3),  # 3 %
        series(2, 1),  # 50 %, but 12 messages in 6 hours: too few to judge
        series(0, 0),  # idle
        {**series(100, 1), **series(100, 50, OTHER)},  # another VM's bounces are not ours
    ) == [True, False, False, False, False]


def test_the_threshold_is_the_config_key_and_the_policy_says_what_to_do(run, tmp_path):
    tuned = program.run({NS + "bounceRateAlertPercent": "20"})
    assert tuned.error is None, tuned.error
    query = promql(tuned, "bounce-rate")["query"]
    assert "> 20" in query and alerts(tmp_path, query, series(100, 30), series(100, 10)) == [True, False]
    policy = policies(run)["bounce-rate"]
    condition = policy["conditions"][0]["conditionPrometheusQueryLanguage"]
    assert condition["disableMetricValidation"] is True  # Postal's series exist only once scraped
    assert f"[{monitoring.BOUNCE_WINDOW}]" in condition["query"]
    assert "**What to do:**" in policy["documentation"]["content"] and "Bounced" in policy["documentation"]["content"]
