"""Health verdicts and alerts end to end: an in-process engine on the real broker and Redis.

Each scenario drives one consumer into a verdict (lagging, stalled, paused, window-stuck,
pipeline-failing), checks that the status model shows it (the engine's snapshot, which the TUI
reads, and the fleet model of ``status --json`` and the API) and that exactly one alert reached
a local webhook receiver; then it fixes the cause and checks for exactly one resolve. Sliding
windows are short (``[monitoring]`` in :data:`MONITORING`) so each scenario takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aredis
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from kafkaconsole.cli.app import app
from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import EmbeddedServices, ManagedProcess
from kafkaconsole.engine.alerts import AlertEvent
from kafkaconsole.engine.dlq import DeadLetterSink
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.fleet import Fleet
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, Receiver, wait_for

MONITORING: dict[str, Any] = {
    "sample_interval": 0.2,
    "lagging_intervals": 3,
    "stall_after": 2.0,
    "stuck_after": 2.0,
    "failing_runs": 2,
    "storm_period": 3.0,
    "storm_per_minute": 1000,
    "webhook_attempts": 2,
}

# knobs the engine's processor and pipeline below read (the engine imports this module)
THROTTLE_S = [0.0]
PIPELINE_FAILS = [False]


def throttled(event: Any) -> Any:
    """A processor that takes ``THROTTLE_S`` per event (it blocks, as a slow one would)."""
    if THROTTLE_S[0]:
        time.sleep(THROTTLE_S[0])
    return event


def poison_raises(event: Any) -> Any:
    if isinstance(event, dict) and event.get("poison"):
        raise ValueError("poison event")
    return event


def flaky_pipeline(payload: dict[str, Any]) -> dict[str, Any]:
    if PIPELINE_FAILS[0]:
        raise RuntimeError("warehouse unreachable")
    return {"run_id": f"run-{payload['idempotency_key']}"}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().serving("/alerts") as r:
        yield r


def config(
    services: EmbeddedServices,
    prefix: str,
    receiver: Receiver,
    consumer: dict[str, Any],
    verdict: str,
    **sections: Any,
) -> AppConfig:
    rules = [
        {
            "name": verdict,
            "verdict": verdict,
            "for": 0.5,
            "channel": "webhook",
            "url": receiver.url,
            "consumers": [consumer["consumer_id"]],
        },
        *sections.pop("extra_rules", []),
    ]
    return make_config(
        services,
        prefix,
        [{"max_event": 100_000, **consumer}],
        monitoring={**MONITORING, "alerts": rules},
        **sections,
    )


async def fleet_view(redis_client: aredis.Redis, cfg: AppConfig, cid: str) -> dict[str, Any]:
    return await Fleet(redis_client, cfg).consumer(cid)


async def shows(
    engine: Engine, redis_client: aredis.Redis, cid: str, verdict: str, alerts: int = 1
) -> tuple[dict[str, Any], Any]:
    """Wait until the engine snapshot (the TUI's model) and the fleet model agree on
    ``verdict`` with ``alerts`` active alerts; return both."""
    found: dict[str, Any] = {}

    async def agree() -> bool:
        local = engine.snapshot().consumer(cid)
        fleet = await fleet_view(redis_client, engine.config, cid)
        found.update(local=local, fleet=fleet)
        return (
            local is not None
            and local.verdict == verdict
            and len(local.alerts) == alerts
            and fleet["verdict"] == verdict
            and len(fleet["alerts"]) == alerts
        )

    await wait_for(agree, 10, what=f"{verdict} in the snapshot and the fleet model")
    return found["fleet"], found["local"]


async def keep_producing(
    kafka: KafkaHelper, topic: str, make: Callable[[int], Any], per_tick: int, every: float
) -> None:
    i = 0
    while True:
        await kafka.produce(topic, [make(i + n) for n in range(per_tick)], partitions=1)
        i += per_tick
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def background(coro: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def resolved_once(receiver: Receiver, alert: str) -> None:
    await receiver.wait("resolved", alert)
    await asyncio.sleep(0.6)  # a few more samples: nothing else may arrive
    assert len(receiver.got("firing", alert)) == 1
    assert len(receiver.got("resolved", alert)) == 1


# ---- scenarios --------------------------------------------------------------------------------


async def test_producer_outpacing_a_throttled_consumer_is_lagging(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    receiver: Receiver,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    consumer = {
        "consumer_id": cid,
        "kafka_topic": unique,
        "processor": "tests.test_health_scenarios:throttled",
        "batch_size": 2,
    }
    lag_rule = {"metric": "lag", "above": 20, "channel": "log"}  # a metric rule, logged
    cfg = config(services, unique, receiver, consumer, "lagging", extra_rules=[lag_rule])
    caplog.set_level(logging.INFO, logger="kafkaconsole.alert")
    THROTTLE_S[0] = 0.05  # at most 20 events/s, while more arrive
    async with running_engine(cfg) as engine:
        try:
            async with background(keep_producing(kafka, unique, lambda i: {"i": i}, 50, 0.1)):
                body = await receiver.wait("firing", "lagging")
                fleet, local = await shows(engine, redis_client, cid, "lagging", alerts=2)
            assert body["consumer_id"] == cid and body["verdict"] == "lagging"
            assert body["message"].startswith("lagging: lag grew from ")
            assert fleet["verdict_reason"].startswith("lag grew from ")
            assert fleet["time_lag_seconds"] > 0 and local.time_lag_seconds > 0
            [p] = fleet["partitions"]
            assert p["lag"] > 0 and p["time_lag_seconds"] > 0 and p["oldest_ts_ms"] > 0
            assert {(a.alert, a.channel) for a in local.alerts} == {
                ("lagging", "webhook"),
                ("lag_above_20", "log"),
            }
            THROTTLE_S[0] = 0.0  # the producer stopped and the consumer catches up
            await resolved_once(receiver, "lagging")
            await shows(engine, redis_client, cid, "ok", alerts=0)  # within a heartbeat or two
            logged = [r.getMessage() for r in caplog.records if r.name == "kafkaconsole.alert"]
            assert [m.split(":")[0] for m in logged] == [
                f"alert lag_above_20 FIRING for {cid}",
                f"alert lag_above_20 resolved for {cid}",
            ]
        finally:
            THROTTLE_S[0] = 0.0


async def test_a_consumer_held_at_a_bad_event_is_stalled(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    receiver: Receiver,
    unique: str,
    own_broker: Callable[[], ManagedProcess],
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    consumer = {
        "consumer_id": cid,
        "kafka_topic": unique,
        "processor": "tests.test_health_scenarios:poison_raises",
    }
    cfg = config(services, unique, receiver, consumer, "stalled")
    # the dead-letter producer talks to a second, real broker, frozen until the DLQ is "back"
    dlq_broker = own_broker()
    producer = AIOKafkaProducer(
        bootstrap_servers=f"127.0.0.1:{dlq_broker.port}",
        request_timeout_ms=1000,
        metadata_max_age_ms=500,
    )
    await producer.start()
    try:
        async with running_engine(cfg) as engine:
            dlq_broker.signal(signal.SIGSTOP)
            engine._consumers[cid].runner.dlq = DeadLetterSink(producer)
            try:
                values = (
                    [{"i": i} for i in range(5)] + [{"poison": True}] + [{"i": i} for i in range(9)]
                )
                await kafka.produce(unique, values, partitions=1)
                body = await receiver.wait("firing", "stalled")
                fleet, local = await shows(engine, redis_client, cid, "stalled")
                assert body["message"].startswith("stalled: partition 0 has not moved from offset ")
                assert "event(s) waiting" in fleet["verdict_reason"]
                assert fleet["lag"] == 15 and fleet["time_lag_seconds"] > 1.0
                assert local.verdict_since_ms is not None and fleet["verdict_since"]
                dlq_broker.signal(signal.SIGCONT)  # the DLQ is back: the bad event is recorded
                await resolved_once(receiver, "stalled")
                assert engine._consumers[cid].runner.dlq_count == 1
                fleet = await fleet_view(redis_client, cfg, cid)
                assert fleet["lag"] == 0 and fleet["time_lag_seconds"] == 0 and fleet["total"] == 14
            finally:
                dlq_broker.signal(signal.SIGCONT)
    finally:
        await producer.stop()
        dlq_broker.stop()


async def test_a_paused_consumer_is_paused_with_who_and_since(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    receiver: Receiver,
    unique: str,
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    consumer = {"consumer_id": cid, "kafka_topic": unique}
    tui_rule = {"name": "paused-toast", "verdict": "paused", "channel": "tui"}
    cfg = config(services, unique, receiver, consumer, "paused", extra_rules=[tui_rule])
    async with running_engine(cfg) as engine:
        toasts: list[AlertEvent] = []
        engine.subscribe_alerts(toasts.append)
        await engine.pause(cid, by="tester@ops")
        body = await receiver.wait("firing", "paused")
        fleet, local = await shows(engine, redis_client, cid, "paused", alerts=2)
        assert fleet["verdict_reason"].startswith("paused by tester@ops since ")
        assert body["message"].startswith("paused: paused by tester@ops since ")
        assert {a.alert for a in local.alerts} == {"paused", "paused-toast"}
        assert {a["alert"]: a["channel"] for a in fleet["alerts"]} == {
            "paused": "webhook",
            "paused-toast": "tui",
        }
        assert receiver.got("firing", "paused-toast") == []  # tui: the console only
        await engine.resume(cid)
        await resolved_once(receiver, "paused")
        seen = [(e.rule, str(e.status)) for e in toasts]
        for rule in ("paused", "paused-toast"):
            assert seen.count((rule, "firing")) == 1 and seen.count((rule, "resolved")) == 1


async def test_a_filter_that_drops_everything_is_window_stuck(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    receiver: Receiver,
    unique: str,
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    consumer = {"consumer_id": cid, "kafka_topic": unique, "filter": {"type": "order"}}
    cfg = config(services, unique, receiver, consumer, "window-stuck")
    async with running_engine(cfg) as engine:
        kind = ["refund"]
        async with background(
            keep_producing(kafka, unique, lambda i: {"type": kind[0], "i": i}, 5, 0.1)
        ):
            body = await receiver.wait("firing", "window-stuck")
            fleet, _ = await shows(engine, redis_client, cid, "window-stuck")
            assert "none counted" in body["message"] and "filtered" in fleet["verdict_reason"]
            assert fleet["count"] == 0 and fleet["filtered"] > 0
            kind[0] = "order"  # matching events arrive again
            await resolved_once(receiver, "window-stuck")
        assert (await fleet_view(redis_client, cfg, cid))["total"] > 0


async def test_failing_pipeline_runs_are_pipeline_failing(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    receiver: Receiver,
    unique: str,
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    consumer = {"consumer_id": cid, "kafka_topic": unique, "max_event": 2}
    pipelines = {
        "flaky": {
            "kind": "python",
            "target": "tests.test_health_scenarios:flaky_pipeline",
            "retry_policy": {"max_attempts": 1},
            "breaker_threshold": 0,
        }
    }
    cfg = config(services, unique, receiver, consumer, "pipeline-failing", pipelines=pipelines)
    PIPELINE_FAILS[0] = True
    async with running_engine(cfg) as engine:
        try:
            await kafka.produce(unique, [{"i": i} for i in range(4)], partitions=1)
            body = await receiver.wait("firing", "pipeline-failing")
            fleet, _ = await shows(engine, redis_client, cid, "pipeline-failing")
            assert fleet["verdict_reason"] == (
                "the last 2 pipeline run(s) failed: RuntimeError: warehouse unreachable"
            )
            assert body["message"] == f"pipeline-failing: {fleet['verdict_reason']}"
            PIPELINE_FAILS[0] = False
            await kafka.produce(unique, [{"i": i} for i in range(2)], partitions=1)
            await resolved_once(receiver, "pipeline-failing")
            assert (await fleet_view(redis_client, cfg, cid))["last_trigger"][
                "status"
            ] == "succeeded"
        finally:
            PIPELINE_FAILS[0] = False


def test_no_running_instance_is_stopped_in_status(
    services: EmbeddedServices, unique: str, tmp_path: Any
) -> None:
    cfg_file = tmp_path / "kafkaconsole.toml"
    cfg_file.write_text(
        f"""
[redis]
url = "{services.redis_url}"
key_prefix = "{unique}"

[pipelines.p]
kind = "kafka"
topic = "windows"

[[consumers]]
consumer_id = "orders"
kafka_topic = "orders"
pipeline_name = "p"
connection_id = "c"
max_event = 10
max_time = 60
"""
    )
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--json", "--config", str(cfg_file)])
    assert result.exit_code == 0, result.stderr
    [c] = json.loads(result.stdout)["consumers"]
    assert c["verdict"] == "stopped" and c["verdict_reason"] == "no live instance runs it"
    assert c["time_lag_seconds"] is None and c["alerts"] == []
    human = runner.invoke(app, ["status", "--config", str(cfg_file)])
    assert "VERDICT" in human.stdout and "orders: stopped: no live instance runs it" in human.stdout
    info = runner.invoke(app, ["info", "orders", "--config", str(cfg_file)])
    assert "health       stopped: no live instance runs it" in info.stdout
