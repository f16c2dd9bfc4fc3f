"""Health verdicts and time lag: pure logic over hand-made samples and an injected clock."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from kafkaconsole.config import models
from kafkaconsole.config.models import VERDICTS, MonitoringConfig
from kafkaconsole.engine.fleet_status import ConsumerStatus
from kafkaconsole.engine.health import (
    HealthSample,
    PartitionPoint,
    Verdict,
    VerdictName,
    consumer_time_lag,
    distinct,
    fleet_verdict,
    lookback,
    metrics,
    sample_from_status,
    samples_to_keep,
    time_lag_seconds,
    triggers_per_minute,
    verdict,
)
from kafkaconsole.engine.status import (
    ConsumerState,
    consumer_lag,
    fleet_state,
    instance_state,
    partition_lag,
    shown_state,
)
from tests.helpers import consumer_status

CFG = MonitoringConfig(
    sample_interval=1.0,
    lagging_intervals=3,
    stall_after=5.0,
    stuck_after=5.0,
    failing_runs=2,
    storm_per_minute=6.0,
    storm_period=10.0,
)
SAMPLE = Path(__file__).resolve().parent.parent / "sample_config.toml"


def sample(t: float, position: int = 100, lag: int | None = 0, **kw: Any) -> HealthSample:
    """One partition at ``position`` with ``lag``; a new report every second by default."""
    kw.setdefault("observed_ms", int(t * 1000))
    kw.setdefault("lag", lag)
    kw.setdefault("partitions", (PartitionPoint(0, position, lag),))
    return HealthSample(t=t, **kw)


def series(n: int, **kw: Any) -> list[HealthSample]:
    return [sample(float(t), **kw) for t in range(n)]


def judge(samples: list[HealthSample], now: float | None = None) -> tuple[str, str]:
    v = verdict(samples, CFG, samples[-1].t if now is None else now)
    return str(v.name), v.reason


# ---- the verdict names agree with the config -------------------------------------------------


def test_verdict_names_match_the_config_literals() -> None:
    assert tuple(str(v) for v in VerdictName) == VERDICTS
    rule_field = models.AlertRule.model_fields["verdict"].annotation
    assert set(re.findall(r"'([a-z-]+)'", str(rule_field))) == set(VERDICTS) - {"ok"}


# ---- ok / stopped / paused ---------------------------------------------------------------------


def test_caught_up_is_ok() -> None:
    assert judge(series(10)) == ("ok", "caught up")
    assert judge(series(10, lag=3, position=100))[0] != "ok"  # stuck with lag: see stalled


def test_no_sample_and_no_instance_are_stopped() -> None:
    assert verdict([], CFG, 0.0).name == VerdictName.STOPPED
    name, reason = judge([sample(0, live=False, state="stopped", partitions=())])
    assert name == "stopped" and "no live instance" in reason


def test_stopped_on_error_names_the_error() -> None:
    s = sample(0, state="error", last_error="stopped at bad event t[0]@5")
    assert judge([s]) == ("stopped", "stopped on an error: stopped at bad event t[0]@5")


def test_no_partition_owned_for_stall_after_is_stopped() -> None:
    owned_nothing = [sample(float(t), partitions=(), lag=None) for t in range(7)]
    assert judge(owned_nothing[:5])[0] == "ok"  # 4 s: maybe still joining the group
    name, reason = judge(owned_nothing)
    assert name == "stopped" and "owned a partition for" in reason


def test_paused_says_who_and_since_when() -> None:
    s = sample(
        1_700_000_100.0, paused=True, paused_by="ana@host (api)", paused_at_ms=1_700_000_000_000
    )
    name, reason = judge([s])
    assert name == "paused"
    assert reason == "paused by ana@host (api) since 2023-11-14 22:13:20Z (100s ago)"


def test_stopped_wins_over_paused() -> None:
    s = sample(0, live=False, state="paused", paused=True, paused_by="bob", partitions=())
    name, reason = judge([s])
    assert name == "stopped" and "paused by bob" in reason


# ---- stalled -----------------------------------------------------------------------------------


def test_position_not_moving_with_lag_is_stalled_after_stall_after() -> None:
    samples = series(7, position=100, lag=40)
    assert judge(samples[:5])[0] != "stalled"  # 4 s of history: not yet
    name, reason = judge(samples)
    assert name == "stalled"
    assert reason == "partition 0 has not moved from offset 100 for 6.0s with 40 event(s) waiting"


def test_moving_or_paused_or_caught_up_is_not_stalled() -> None:
    moving = [sample(float(t), position=100 + t, lag=40) for t in range(8)]
    assert judge(moving)[0] != "stalled"
    paused_once = series(8, position=100, lag=40)
    paused_once[3] = sample(3.0, position=100, lag=40, paused=True)
    assert judge(paused_once)[0] != "stalled"  # resumed 4 s ago: give it stall_after again
    assert judge(series(8, position=100, lag=0))[0] == "ok"


def test_one_stuck_partition_of_two_is_stalled() -> None:
    samples = [
        sample(
            float(t),
            lag=50,
            partitions=(PartitionPoint(0, 100 + 10 * t, 0), PartitionPoint(3, 7, 50)),
        )
        for t in range(7)
    ]
    name, reason = judge(samples)
    assert name == "stalled" and reason.startswith("partition 3 has not moved from offset 7")


# ---- pipeline-failing --------------------------------------------------------------------------


def test_last_k_failed_runs_is_pipeline_failing() -> None:
    failing = sample(0, runs=("failed", "failed", "succeeded"), run_error="HTTP 500")
    assert judge([failing]) == ("pipeline-failing", "the last 2 pipeline run(s) failed: HTTP 500")
    recovered = sample(0, runs=("succeeded", "failed", "failed"))
    assert judge([recovered])[0] == "ok"
    too_few = sample(0, runs=("failed",))
    assert judge([too_few])[0] == "ok"


def test_open_breaker_is_pipeline_failing() -> None:
    s = sample(0, breaker_state="open", breaker_failures=5, runs=("failed",), run_error="boom")
    assert judge([s]) == (
        "pipeline-failing",
        "circuit breaker open after 5 consecutive failed run(s): boom",
    )
    assert judge([sample(0, breaker_state="closed")])[0] == "ok"


def test_stalled_wins_over_pipeline_failing() -> None:
    samples = series(7, position=100, lag=40, runs=("failed", "failed"))
    assert judge(samples)[0] == "stalled"


# ---- window-stuck ------------------------------------------------------------------------------


def test_events_read_but_none_counted_is_window_stuck() -> None:
    samples = [
        sample(float(t), position=100 + 20 * t, total=500, filtered=10 * t, errors=t)
        for t in range(7)
    ]
    name, reason = judge(samples)
    assert name == "window-stuck"
    assert reason == "100 event(s) read in the last 5.0s, none counted (50 filtered, 5 bad)"
    counting = [sample(float(t), position=100 + 20 * t, total=500 + t) for t in range(7)]
    assert judge(counting)[0] == "ok"
    idle = [sample(float(t), position=100, total=500) for t in range(7)]
    assert judge(idle)[0] == "ok"


def test_records_skipped_on_purpose_are_not_a_stuck_window() -> None:
    # a stream of tombstones after deletes: read, skipped, nothing counted, nothing wrong
    tombstones = [
        sample(float(t), position=100 + 20 * t, total=500, skipped=20 * t) for t in range(7)
    ]
    assert judge(tombstones)[0] == "ok"
    # skipped records beside filtered ones: the filtered ones still make the window stuck
    mixed = [
        sample(float(t), position=100 + 20 * t, total=500, skipped=10 * t, filtered=10 * t)
        for t in range(7)
    ]
    name, reason = judge(mixed)
    assert name == "window-stuck"
    assert reason.startswith("50 event(s) read in the last 5.0s, none counted (50 filtered")


# ---- lagging -----------------------------------------------------------------------------------


def test_lag_growing_over_n_intervals_is_lagging() -> None:
    samples = [sample(float(t), position=100 + t, lag=10 * t + 5) for t in range(4)]
    name, reason = judge(samples)
    assert name == "lagging"
    assert reason == "lag grew from 5 to 35 over the last 3 interval(s) (3.0s)"
    assert judge(samples[:3])[0] == "ok"  # only 2 intervals


def test_lag_that_dips_or_stays_flat_is_not_lagging() -> None:
    dip = [sample(float(t), position=100 + t, lag=lag) for t, lag in enumerate([5, 9, 8, 12])]
    assert judge(dip)[0] == "ok"
    flat = [sample(float(t), position=100 + t, lag=7) for t in range(4)]
    assert judge(flat)[0] == "ok"


def test_a_consumer_keeping_up_with_jitter_is_never_lagging() -> None:
    rng = random.Random(14)
    t = 0.0
    for level, spread in ((0, 12), (0, 500), (50, 20), (5_000, 1_000)):
        samples: list[HealthSample] = []
        previous = None
        for _ in range(2_000):
            lag = max(level + rng.randint(-spread, spread), 0)
            # a consumer keeping up: its lag swings by less than half a second of its rate
            rate = float(2 * (level + spread))
            samples.append(sample(t, position=int(t) * 100, lag=lag, total=int(t) * 100, rate=rate))
            t += 1.0
            window = samples[-20:]
            v = verdict(window, CFG, t - 1.0, previous)
            assert v.name != "lagging", (level, spread, [s.lag for s in window])
            previous = v


def test_a_consumer_falling_behind_is_lagging_within_the_window_and_stays_so() -> None:
    # keeping up (lag 0..3), then the producer outpaces it by 40 events a second
    lags = [0, 2, 1, 3, 0] + [
        40 * n + rng_free for n, rng_free in zip(range(1, 13), [3] * 12, strict=True)
    ]
    samples: list[HealthSample] = []
    names = []
    previous = None
    for t, lag in enumerate(lags):
        samples.append(sample(float(t), position=t * 10, lag=lag, total=t * 10))
        v = verdict(samples, CFG, float(t), previous)
        names.append(str(v.name))
        previous = v
    first = names.index("lagging")
    # the first report behind is t = 5; three intervals later it is lagging
    assert first == 5 + CFG.lagging_intervals
    assert set(names[first:]) == {"lagging"}
    # a dip inside a growing lag does not clear it; catching up (lag 0) does
    for lag in (520, 500, 560, 610):
        t = samples[-1].t + 1
        samples.append(sample(t, position=int(t) * 10, lag=lag, total=int(t) * 10))
        previous = verdict(samples, CFG, t, previous)
        assert previous.name == "lagging", previous
    for lag in (300, 0):
        t = samples[-1].t + 1
        samples.append(sample(t, position=int(t) * 10, lag=lag, total=int(t) * 10))
        previous = verdict(samples, CFG, t, previous)
    assert previous.name == "ok", previous


def test_repeated_reports_count_as_one_interval() -> None:
    # sampled four times a second, but heartbeats come once a second: the same report repeats
    samples = []
    for t in range(16):
        report = t // 4
        samples.append(
            sample(t / 4, position=100 + report, lag=10 * report + 5, observed_ms=report * 1000)
        )
    assert len(distinct(samples)) == 4
    assert judge(samples)[0] == "lagging"
    assert judge(samples[:12])[0] == "ok"  # three reports: two intervals


# ---- trigger-storm -----------------------------------------------------------------------------


def test_more_triggers_per_minute_than_the_limit_is_a_storm() -> None:
    calm = [sample(float(t), windows=t // 2) for t in range(11)]  # 5 in 10 s = 30/min
    storm = [sample(float(t), windows=t) for t in range(11)]  # 10 in 10 s = 60/min
    assert triggers_per_minute(calm, CFG, 10.0) == 30.0
    assert judge(storm) == ("trigger-storm", "10 trigger(s) in the last 10s (60/min, limit 6/min)")
    assert judge(storm[:10])[0] == "ok"  # 9 s of history: not judged yet
    relaxed = CFG.model_copy(update={"storm_per_minute": 60.0})
    assert verdict(storm, relaxed, 10.0).name == VerdictName.OK


def test_pipeline_backlog_by_depth_age_and_cap() -> None:
    cfg = CFG.model_copy(update={"backlog_windows": 3, "backlog_age": 60.0})

    def backlog(depth: int, age: float | None, cap: int | None = 100) -> tuple[str, str]:
        s = sample(10.0, backlog=depth, backlog_age_seconds=age, max_backlog=cap)
        v = verdict([s], cfg, 10.0)
        return str(v.name), v.reason

    assert backlog(3, 50.0)[0] == "ok"  # at the thresholds, not over them
    assert backlog(3, 60.0)[0] == "ok"
    assert backlog(4, 5.0) == (
        "pipeline-backlog",
        "4 window(s) wait for their pipeline run, the oldest waiting 5.0s "
        "(more than backlog_windows = 3)",
    )
    assert backlog(1, 90.0) == (
        "pipeline-backlog",
        "the oldest of 1 window(s) waiting for its pipeline run closed 90s ago "
        "(more than backlog_age = 60s)",
    )
    assert backlog(5, 2.0, cap=5)[1] == (
        "5 window(s) wait for their pipeline run, the oldest waiting 2.0s: max_backlog (5) "
        "reached, they run as one coalesced run"
    )
    failing = sample(10.0, backlog=9, backlog_age_seconds=1.0, breaker_state="open")
    assert verdict([failing], cfg, 10.0).name == VerdictName.PIPELINE_FAILING  # more severe
    m = metrics([sample(1.0, backlog=4, backlog_age_seconds=7.5)], cfg, 1.0)
    assert (m["backlog"], m["backlog_age_seconds"]) == (4.0, 7.5)


# ---- metrics, window sizes, sampling -----------------------------------------------------------


def test_metrics_for_alert_rules() -> None:
    samples = [
        sample(float(t), lag=30, time_lag_seconds=12.5, rate=4.0, windows=t, runs=("failed",))
        for t in range(11)
    ]
    m = metrics(samples, CFG, 10.0)
    assert m == {
        "lag": 30.0,
        "time_lag_seconds": 12.5,
        "rate": 4.0,
        "triggers_per_minute": 60.0,
        "failed_runs": 1.0,
        "backlog": 0.0,
        "backlog_age_seconds": 0.0,
    }
    assert metrics(samples[:3], CFG, 2.0)["triggers_per_minute"] is None
    assert metrics([], CFG, 0.0) == {}


def test_window_sizes_follow_the_config() -> None:
    assert lookback(CFG) == 10.0
    assert samples_to_keep(CFG) == 12
    fast = MonitoringConfig(sample_interval=0.25, stall_after=2, stuck_after=2, storm_period=3)
    assert lookback(fast) == 5.0  # lagging_intervals (5) x one heartbeat a second
    assert samples_to_keep(fast) == 22


def test_time_lag_of_a_partition() -> None:
    assert time_lag_seconds(None, 1_000, 5_000) is None
    assert time_lag_seconds(0, 1_000, 5_000) == 0.0
    assert time_lag_seconds(3, None, 5_000) is None
    assert time_lag_seconds(3, 1_000, 5_000) == 4.0
    assert time_lag_seconds(3, 6_000, 5_000) == 0.0  # a producer clock ahead of ours
    assert consumer_time_lag([0.0, 4.0, None]) == 4.0
    assert consumer_time_lag([None]) is None
    assert consumer_time_lag([]) is None


def test_sample_from_the_fleet_model() -> None:
    c = consumer_status(
        **{
            "consumer_id": "orders",
            "state": "paused",
            "paused_by": "ana",
            "paused_at": "2023-11-14T22:13:20.000Z",
            "instances": ["a"],
            "lag": 12,
            "time_lag_seconds": 3.5,
            "rate": 7.5,
            "partitions": [
                {"partition": 1, "position": 40, "highwater": 52, "lag": 12, "owner": "a"}
            ],
            "total": 90,
            "filtered": 4,
            "skipped": 6,
            "errors": 2,
            "windows": 9,
            "reported_at_ms": 123,
            "last_error": None,
        }
    )
    s = sample_from_status(c, 5.0, runs=("failed",), breaker_state="open", breaker_failures=3)
    assert s.paused and s.paused_by == "ana" and s.paused_at_ms == 1_700_000_000_000
    assert s.live and s.observed_ms == 123 and s.partitions == (PartitionPoint(1, 40, 12),)
    assert (s.total, s.filtered, s.skipped, s.errors, s.windows) == (90, 4, 6, 2, 9)
    assert (s.lag, s.time_lag_seconds, s.rate) == (12, 3.5, 7.5)
    assert s.runs == ("failed",) and s.breaker_state == "open" and s.breaker_failures == 3
    stopped = sample_from_status(consumer_status(instances=(), state="stopped"), 0.0)
    assert not stopped.live and verdict([stopped], CFG, 0.0).name == VerdictName.STOPPED


def test_the_fleet_shows_the_instances_verdict_unless_a_fact_says_otherwise() -> None:
    lagging = {"verdict": "lagging", "verdict_reason": "lag grew", "verdict_since_ms": 5_000}
    ok = Verdict(VerdictName.OK, "ok")
    assert fleet_verdict(ok, lagging) == ("lagging", "lag grew", 5_000)
    assert fleet_verdict(ok, None) == ("ok", "ok", None)  # no heartbeat speaks of it yet
    assert fleet_verdict(ok, {"verdict": None}) == ("ok", "ok", None)
    stopped = Verdict(VerdictName.STOPPED, "no live instance runs it")
    assert fleet_verdict(stopped, lagging) == ("stopped", "no live instance runs it", None)
    paused = Verdict(VerdictName.PAUSED, "paused by ana")
    assert fleet_verdict(paused, lagging) == ("paused", "paused by ana", None)
    # a pause that ended shows at once, not the heartbeat's stale "paused"
    assert fleet_verdict(ok, {**lagging, "verdict": "paused"}) == ("ok", "ok", None)


def test_state_and_lag_rules() -> None:
    assert partition_lag(10, 4) == 6 and partition_lag(4, 10) == 0
    assert partition_lag(None, 4) is None and partition_lag(10, None) is None
    assert consumer_lag([3, None, 4]) == 7
    assert consumer_lag([None]) == 0 and consumer_lag([]) is None
    assert instance_state(ConsumerState.RUNNING, True) == ConsumerState.PAUSED
    assert instance_state(ConsumerState.ERROR, True) == ConsumerState.ERROR
    assert instance_state(ConsumerState.RUNNING, False) == ConsumerState.RUNNING
    assert fleet_state(True, ["error"]) == "paused"
    assert fleet_state(False, []) == fleet_state(False, ["stopped"]) == "stopped"
    assert fleet_state(False, ["running", "error"]) == "error"
    assert fleet_state(False, ["running", "stopped"]) == "running"
    assert shown_state("running", "paused") == "paused"
    assert shown_state(None, None) == "starting" and shown_state(None, "error") == "error"
    assert shown_state("starting", "running") == "running"
    assert shown_state("rebalancing", "running") == "rebalancing"


def test_moments_are_epoch_ms_in_the_model_and_iso_in_json() -> None:
    c = consumer_status(
        state="paused",
        paused_at_ms=1_700_000_000_000,
        verdict_since_ms=1_700_000_000_500,
        alerts=[
            {
                "alert": "lagging",
                "channel": "log",
                "message": "lag grew",
                "since_ms": 1_700_000_001_000,
                "value": None,
                "verdict": "lagging",
                "metric": None,
            }
        ],
    )
    assert (c.paused_at_ms, c.verdict_since_ms, c.alerts[0].since_ms) == (
        1_700_000_000_000,
        1_700_000_000_500,
        1_700_000_001_000,
    )
    body = c.to_json()
    assert body["paused_at"] == "2023-11-14T22:13:20.000Z"
    assert body["verdict_since"] == "2023-11-14T22:13:20.500Z"
    assert body["alerts"][0]["since"] == "2023-11-14T22:13:21.000Z"
    assert not {"paused_at_ms", "verdict_since_ms"} & set(body)
    assert "since_ms" not in body["alerts"][0]
    assert ConsumerStatus.model_validate(body) == c  # the JSON form reads back the same


# ---- config: [monitoring] in sample_config.toml --------------------------------------------


def _blocks(header: str) -> str:
    """The text (comments included) of every table of the sample named ``header``."""
    out, current = [], None
    for line in SAMPLE.read_text().splitlines():
        match = re.match(r"^\s*(\[\[?[^\]]+\]\]?)\s*$", line)
        if match:
            current = match.group(1)
        elif current == header:
            out.append(line)
    return "\n".join(out)


def _keys_shown(text: str) -> set[str]:
    return set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", text))


def _aliases(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_sample_config_shows_every_monitoring_key() -> None:
    shown = _keys_shown(_blocks("[monitoring]"))
    assert _aliases(models.MonitoringConfig) - {"alerts"} <= shown
    assert _aliases(models.AlertRule) <= _keys_shown(_blocks("[[monitoring.alerts]]"))


@pytest.mark.parametrize("model", [models.MonitoringConfig, models.AlertRule])
def test_sample_config_mirrors_the_monitoring_docstrings(model: type[BaseModel]) -> None:
    text = SAMPLE.read_text()
    missing = [
        name
        for name, field in model.model_fields.items()
        if field.description and f"# {field.description}" not in text
    ]
    assert missing == []


# ---- topic-recreated --------------------------------------------------------------------------


def test_topic_recreated_names_the_partitions_and_yields_to_a_pause() -> None:
    waiting = ("orders[0]", "orders[2]")
    assert judge([sample(1.0, topic_resets=waiting)]) == (
        "topic-recreated",
        "orders[0], orders[2]: the topic ends below what was counted (deleted and created "
        "again); counting nothing there until `kafkaconsole consumer accept-reset ID`",
    )
    # more severe than a stall, less than an operator's pause
    stalled = series(8, lag=5, topic_resets=waiting)
    assert judge(stalled)[0] == "topic-recreated"
    assert judge([sample(1.0, topic_resets=waiting, paused=True)])[0] == "paused"
