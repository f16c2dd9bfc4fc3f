"""Alert rules: conditions, the ``for`` hold, firing and resolving once (locally and across
instances through Redis), and the log and webhook channels."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis

from kafkaconsole.config import ConfigError, load_config
from kafkaconsole.config.models import AlertRule, MonitoringConfig
from kafkaconsole.engine.alerts import (
    RETIRED,
    AlertEvaluator,
    AlertLedger,
    AlertNotifier,
    AlertStatus,
    Condition,
    RuleTrack,
    active_alerts,
    alert_key,
    condition,
    rules_for,
    step,
)
from kafkaconsole.engine.health import Verdict, VerdictName
from tests.helpers import Receiver

OK = Verdict(VerdictName.OK, "caught up")
STALLED = Verdict(VerdictName.STALLED, "partition 0 has not moved from offset 5 for 31s")


def rule(**kw: Any) -> AlertRule:
    return AlertRule.model_validate(kw)


# ---- which consumers a rule watches ------------------------------------------------------------


def test_a_rule_watches_the_consumers_it_names_runtime_ones_included() -> None:
    everyone = rule(verdict="stalled")
    named = rule(verdict="stalled", consumers=["orders"])
    runtime = rule(verdict="stalled", runtime_consumers=["orders-eu"])
    both = rule(verdict="stalled", consumers=["orders"], runtime_consumers=["orders-eu"])
    assert everyone.watches("anything")
    assert named.watches("orders") and not named.watches("orders-eu")
    assert runtime.watches("orders-eu") and not runtime.watches("orders")
    assert both.watches("orders") and both.watches("orders-eu") and not both.watches("x")
    rules = [everyone, named, runtime]
    assert rules_for(rules, "orders-eu") == [everyone, runtime]
    with pytest.raises(ValueError, match="runtime_consumers"):
        rule(verdict="stalled", runtime_consumers=["not an id"])


def test_config_names_a_runtime_consumer_in_runtime_consumers_only(tmp_path: Path) -> None:
    """``consumers`` stays strict (a typo is an error, not a rule that never fires) and says
    where a consumer defined at runtime goes; ``runtime_consumers`` takes ids the file lacks."""
    head = """
[pipelines.p]
kind = "command"
command = ["true"]

[[consumers]]
consumer_id = "orders"
kafka_topic = "orders"
pipeline_name = "p"
connection_id = "c"
max_event = 10
max_time = 10

[[monitoring.alerts]]
verdict = "stalled"
"""
    typo = tmp_path / "typo.toml"
    typo.write_text(head + 'consumers = ["ordres"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(typo)
    assert [str(p) for p in err.value.problems] == [
        f"{typo}: monitoring: monitoring alert 'stalled' names unknown consumer(s) 'ordres' "
        "(a consumer defined at runtime goes in runtime_consumers)"
    ]
    good = tmp_path / "good.toml"
    good.write_text(head + 'consumers = ["orders"]\nruntime_consumers = ["orders-eu"]\n')
    [loaded] = load_config(good).monitoring.alerts
    assert loaded.watches("orders") and loaded.watches("orders-eu")


# ---- conditions --------------------------------------------------------------------------------


def test_verdict_condition() -> None:
    r = rule(verdict="stalled")
    assert condition(r, STALLED, {}) == Condition(True, None, f"stalled: {STALLED.reason}")
    assert condition(r, OK, {}).holds is False
    # before the samples reach back far enough, "not stalled" is not known yet
    assert condition(r, OK, {}, settled=False).holds is None
    assert condition(r, STALLED, {}, settled=False).holds is True


def test_metric_condition() -> None:
    above = rule(metric="time_lag_seconds", above=60)
    assert condition(above, OK, {"time_lag_seconds": 75.5}) == Condition(
        True, 75.5, "time_lag_seconds = 75.5 > 60"
    )
    assert condition(above, OK, {"time_lag_seconds": 60}).holds is False
    assert condition(above, OK, {"time_lag_seconds": None}).holds is None
    assert condition(above, OK, {}).holds is None
    below = rule(metric="rate", below=1)
    assert condition(below, OK, {"rate": 0.0}).message == "rate = 0 < 1"
    assert condition(below, OK, {"rate": 5.0}).holds is False


def test_rule_ids_and_validation() -> None:
    assert rule(verdict="lagging").rule_id == "lagging"
    assert rule(metric="lag", above=1000).rule_id == "lag_above_1000"
    assert rule(metric="rate", below=0.5).rule_id == "rate_below_0.5"
    assert rule(name="x", verdict="stopped").rule_id == "x"
    assert rule(verdict="stopped", **{"for": 30}).for_ == 30
    for bad in (
        {},
        {"verdict": "stalled", "metric": "lag", "above": 1},
        {"metric": "lag"},
        {"metric": "lag", "above": 1, "below": 2},
        {"verdict": "stalled", "above": 1},
        {"verdict": "stalled", "channel": "webhook"},
        {"verdict": "ok"},
        {"verdict": "stalled", "for": -1},
    ):
        with pytest.raises(ValueError):
            rule(**bad)
    with pytest.raises(ValueError, match="two rules named 'stalled'"):
        MonitoringConfig.model_validate(
            {"alerts": [{"verdict": "stalled"}, {"verdict": "stalled", "channel": "tui"}]}
        )


# ---- transitions with an injected clock --------------------------------------------------------

YES = Condition(True, 1.0, "yes")
NO = Condition(False, 0.0, "no")
UNKNOWN = Condition(None, None, "?")


def run(conds: list[tuple[float, Condition]], hold: float) -> list[tuple[float, str]]:
    track, out = RuleTrack(), []
    for now, cond in conds:
        track, change = step(track, cond, hold, now)
        if change:
            out.append((now, str(change)))
    return out


def test_fires_after_the_hold_time_once_and_resolves_once() -> None:
    conds = [(float(t), YES) for t in range(10)] + [(10.0, NO), (11.0, NO), (12.0, NO)]
    assert run(conds, hold=3.0) == [(3.0, "firing"), (10.0, "resolved")]


def test_zero_hold_fires_at_once() -> None:
    assert run([(0.0, YES), (1.0, YES), (2.0, NO)], hold=0.0) == [
        (0.0, "firing"),
        (2.0, "resolved"),
    ]


def test_a_condition_shorter_than_the_hold_never_fires() -> None:
    conds = [(0.0, YES), (1.0, YES), (2.0, NO), (3.0, YES), (4.0, YES), (5.0, NO)]
    assert run(conds, hold=2.0) == []  # the hold restarts after the gap


def test_unknown_changes_nothing() -> None:
    conds = [(0.0, YES), (1.0, UNKNOWN), (2.0, YES), (3.0, UNKNOWN), (4.0, UNKNOWN), (5.0, NO)]
    assert run(conds, hold=2.0) == [(2.0, "firing"), (5.0, "resolved")]


def test_refires_after_a_resolve_only_after_holding_again() -> None:
    conds = [(0.0, YES), (1.0, YES), (2.0, NO), (3.0, YES), (4.0, YES), (5.0, YES)]
    assert run(conds, hold=1.0) == [(1.0, "firing"), (2.0, "resolved"), (4.0, "firing")]


def test_evaluator_tracks_each_consumer_and_rule() -> None:
    rules = [
        rule(verdict="stalled", **{"for": 2}),
        rule(metric="lag", above=100, consumers=["b"]),
    ]
    ev = AlertEvaluator(rules)
    assert ev.evaluate("a", STALLED, {"lag": 500}, 0.0) == []
    fired = ev.evaluate("b", STALLED, {"lag": 500}, 0.0)
    assert [(e.rule, e.consumer_id, e.status) for e in fired] == [
        ("lag_above_100", "b", AlertStatus.FIRING)
    ]
    assert fired[0].value == 500 and fired[0].threshold == 100 and fired[0].metric == "lag"
    fired = ev.evaluate("a", STALLED, {"lag": 500}, 2.5)
    assert [(e.rule, e.status, e.since_ms, e.at_ms) for e in fired] == [
        ("stalled", AlertStatus.FIRING, 0, 2500)
    ]
    assert [r.rule_id for r, _ in ev.firing("a")] == ["stalled"]
    assert ev.evaluate("a", STALLED, {"lag": 500}, 3.0) == []  # once
    resolved = ev.evaluate("a", OK, {"lag": 0}, 4.0)
    assert [(e.rule, e.status, e.since_ms, e.message) for e in resolved] == [
        ("stalled", AlertStatus.RESOLVED, 0, "ok: caught up")
    ]
    assert ev.firing("a") == [] and ev.evaluate("a", OK, {"lag": 0}, 5.0) == []
    body = resolved[0].to_json_dict()
    assert body["status"] == "resolved" and body["since"] == "1970-01-01T00:00:00.000Z"


# ---- fleet-wide: once across instances, through Redis -----------------------------------------


async def test_two_instances_announce_each_change_once(
    redis_client: aredis.Redis, unique: str
) -> None:
    rules = [rule(verdict="stalled", **{"for": 1})]
    a, b = AlertEvaluator(rules), AlertEvaluator(rules)
    ledgers = {
        "a": AlertLedger(redis_client, unique, "a"),
        "b": AlertLedger(redis_client, unique, "b"),
    }
    announced: list[tuple[str, str]] = []

    async def tick(now: float, v: Verdict) -> None:
        for name, ev in (("a", a), ("b", b)):
            ev.evaluate("c1", v, {}, now)
            for event in await ledgers[name].reconcile(ev, ["c1"], now):
                announced.append((name, str(event.status)))

    for t in range(4):
        await tick(float(t), STALLED)
    assert announced == [("a", "firing")]
    stored = orjson.loads(await redis_client.get(alert_key(unique, "c1", "stalled")) or b"{}")
    assert stored["status"] == "firing" and stored["instance"] == "a"
    assert stored["since_ms"] == 0 and stored["message"].startswith("stalled: ")
    [view] = await active_alerts(redis_client, unique, rules, "c1")
    assert view["alert"] == "stalled" and view["since"] == "1970-01-01T00:00:00.000Z"

    for t in range(4, 7):
        await tick(float(t), OK)
    assert announced == [("a", "firing"), ("a", "resolved")]
    assert await redis_client.get(alert_key(unique, "c1", "stalled")) is None
    assert await active_alerts(redis_client, unique, rules, "c1") == []


async def test_a_retired_consumers_alert_resolves_once(
    redis_client: aredis.Redis, unique: str
) -> None:
    """A consumer no longer run (removed by a reload or from the runtime definitions): its
    firing alert resolves, with the reason, and nothing more is announced."""
    rules = [rule(verdict="stalled"), rule(verdict="paused", consumers=["other"])]
    evaluator = AlertEvaluator(rules)
    ledger = AlertLedger(redis_client, unique, "a")
    evaluator.evaluate("c1", STALLED, {}, 0.0)
    [fired] = await ledger.reconcile(evaluator, ["c1"], 0.0)
    assert fired.status == AlertStatus.FIRING
    evaluator.retire("c1")
    [resolved] = await ledger.reconcile(evaluator, ["c1"], 5.0)
    assert (resolved.status, resolved.rule, resolved.message) == (
        AlertStatus.RESOLVED,
        "stalled",
        RETIRED,
    )
    assert resolved.since_ms == 0 and resolved.at_ms == 5000
    assert await redis_client.get(alert_key(unique, "c1", "stalled")) is None
    assert await ledger.reconcile(evaluator, ["c1"], 6.0) == []


async def test_a_later_instance_resolves_what_another_fired(
    redis_client: aredis.Redis, unique: str
) -> None:
    rules = [rule(verdict="stalled")]
    first = AlertEvaluator(rules)
    first.evaluate("c1", STALLED, {}, 0.0)
    assert [
        e.status for e in await AlertLedger(redis_client, unique, "a").reconcile(first, ["c1"], 0.0)
    ] == [AlertStatus.FIRING]
    # "a" died; "b" starts later: not settled yet, so its "ok" is not trusted at first
    later = AlertEvaluator(rules)
    ledger = AlertLedger(redis_client, unique, "b")
    later.evaluate("c1", OK, {}, 100.0, settled=False)
    assert await ledger.reconcile(later, ["c1"], 100.0) == []
    later.evaluate("c1", OK, {}, 130.0, settled=True)
    [event] = await ledger.reconcile(later, ["c1"], 130.0)
    assert event.status == AlertStatus.RESOLVED and event.since_ms == 0
    assert event.instance == "b" and event.message == "ok: caught up"


# ---- channels ----------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().serving("/hook") as r:
        yield r


async def _no_sleep(_: float) -> None:
    return None


async def test_webhook_is_retried_and_posts_json(receiver: Receiver) -> None:
    r = rule(verdict="stalled", channel="webhook", url=receiver.url, headers={"X-Token": "t0k"})
    cfg = MonitoringConfig(alerts=[r], webhook_attempts=3)
    notifier = AlertNotifier(cfg, sleep=_no_sleep)
    ev = AlertEvaluator([r])
    [event] = ev.evaluate("orders", STALLED, {}, 1_700_000_000.0)
    receiver.fail_first = 2
    try:
        assert await notifier.post(r, event) is True
    finally:
        await notifier.close()
    [body] = receiver.bodies
    assert body == {
        "status": "firing",
        "alert": "stalled",
        "consumer_id": "orders",
        "message": f"stalled: {STALLED.reason}",
        "verdict": "stalled",
        "metric": None,
        "value": None,
        "threshold": None,
        "since": "2023-11-14T22:13:20.000Z",
        "at": "2023-11-14T22:13:20.000Z",
        "instance": None,
    }
    assert receiver.headers[0]["X-Token"] == "t0k"


async def test_webhook_gives_up_after_its_attempts(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    r = rule(verdict="stalled", channel="webhook", url=receiver.url)
    notifier = AlertNotifier(MonitoringConfig(alerts=[r], webhook_attempts=2), sleep=_no_sleep)
    [event] = AlertEvaluator([r]).evaluate("orders", STALLED, {}, 0.0)
    receiver.fail_first = 5
    caplog.set_level(logging.ERROR, logger="kafkaconsole.alert")
    try:
        assert await notifier.post(r, event) is False
    finally:
        await notifier.close()
    assert receiver.bodies == [] and receiver.fail_first == 3
    assert "webhook failed after 2 attempt(s): HTTP 503" in caplog.text


async def test_log_channel_writes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    r = rule(verdict="stalled")
    notifier = AlertNotifier(MonitoringConfig(alerts=[r]))
    ev = AlertEvaluator([r])
    caplog.set_level(logging.INFO, logger="kafkaconsole.alert")
    for event in ev.evaluate("orders", STALLED, {}, 0.0) + ev.evaluate("orders", OK, {}, 1.0):
        notifier.deliver(event)
    await notifier.close()
    lines = [(rec.levelname, rec.getMessage()) for rec in caplog.records]
    assert lines == [
        ("WARNING", f"alert stalled FIRING for orders: stalled: {STALLED.reason}"),
        ("INFO", "alert stalled resolved for orders: ok: caught up"),
    ]
