"""A pipeline outage on the real broker and Redis: windows keep closing while the pipeline is
down, the backlog (depth, age of the oldest waiting window) shows in the status model, the
API (as its OpenAPI document says), /metrics and the CLI, the ``pipeline-backlog`` verdict
fires; on recovery ``backlog_policy = "each"`` runs the windows one by one in order,
``"coalesce"`` runs the waiting ones as one run, and ``max_backlog`` forces coalescing.

The pipeline is :func:`tests.pipeline_targets.gated`: its first call waits until the test
opens the consumer's gate (a pipeline that hangs, then answers), so every later window waits
in the dispatch stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aredis
from prometheus_client.parser import text_string_to_metric_families

from kafkaconsole.api import openapi_document, start_api
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.fleet import Fleet
from tests import pipeline_targets
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, cli, wait_for
from tests.test_api import _response_validator

MAX_EVENT = 5
WINDOWS = 5
PIPELINES = {
    "gated": {
        "kind": "python",
        "target": "tests.pipeline_targets:gated",
        "retry_policy": {"max_attempts": 1},
    }
}
MONITORING = {"sample_interval": 0.2, "backlog_windows": 3, "backlog_age": 3600}


@asynccontextmanager
async def outage(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    unique: str,
    **consumer: Any,
) -> AsyncIterator[tuple[Engine, Fleet, str, asyncio.Event]]:
    """An engine whose pipeline is down (its gate closed) with ``WINDOWS`` windows closed
    while it is: the first one's run hangs (it started before the others closed), the others
    wait in the dispatch stream behind it."""
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": MAX_EVENT, **consumer}],
        pipelines=PIPELINES,
        monitoring=MONITORING,
        api={"enabled": True, "host": "127.0.0.1", "port": 0},
    )
    gate = asyncio.Event()
    pipeline_targets.GATES[cid] = gate
    try:
        async with running_engine(cfg) as engine:
            fleet = Fleet(aredis.from_url(services.redis_url), cfg)
            try:
                await kafka.produce(unique, [{"i": i} for i in range(MAX_EVENT)], partitions=1)

                async def first_run_hangs() -> bool:
                    runs = await _runs(fleet.redis, unique, cid)
                    return runs.get(1, {}).get("status") == "running"

                await wait_for(first_run_hangs, 30, what="window 1's run started")
                rest = range(MAX_EVENT, MAX_EVENT * WINDOWS)
                await kafka.produce(unique, [{"i": i} for i in rest], partitions=1)
                yield engine, fleet, cid, gate
            finally:
                gate.set()  # never leave a run hanging past the test
                await fleet.redis.aclose()
    finally:
        pipeline_targets.GATES.pop(cid, None)


async def _status(fleet: Fleet, cid: str) -> Any:
    return await fleet.consumer_status(cid)


async def _runs(redis: aredis.Redis, prefix: str, cid: str) -> dict[int, dict[str, Any]]:
    raw = await redis.hgetall(f"{prefix}:{cid}:runs")
    return {int(k): orjson.loads(v) for k, v in raw.items()}


async def _backlog_shown(fleet: Fleet, cid: str, depth: int) -> None:
    async def all_waiting() -> bool:
        return (await _status(fleet, cid)).backlog == depth

    await wait_for(all_waiting, 30, what=f"{depth} windows waiting for the pipeline")


async def test_backlog_shows_everywhere_and_each_runs_them_one_by_one_in_order(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str, tmp_path: Path
) -> None:
    async with outage(services, kafka, unique) as (engine, fleet, cid, gate):
        await _backlog_shown(fleet, cid, WINDOWS)
        first = await _status(fleet, cid)
        assert first.backlog_age_seconds is not None and first.backlog_age_seconds >= 0
        assert first.backlog_policy == "each" and first.max_backlog == 100

        async def older() -> bool:
            age = (await _status(fleet, cid)).backlog_age_seconds
            return age is not None and age > (first.backlog_age_seconds or 0)

        await wait_for(older, 10, what="the oldest waiting window's age growing")

        async def verdict() -> bool:
            return (await _status(fleet, cid)).verdict == "pipeline-backlog"

        await wait_for(verdict, 20, what="the pipeline-backlog verdict")
        reason = (await _status(fleet, cid)).verdict_reason or ""
        assert reason.startswith(f"{WINDOWS} window(s) wait for their pipeline run")
        assert "(more than backlog_windows = 3)" in reason

        # the API, as its generated OpenAPI document describes it, and /metrics
        api = await start_api(engine)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{api.url}/consumers") as resp:
                    body = await resp.json()
                async with session.get(f"{api.url}/consumer/info/{cid}") as resp:
                    info = await resp.json()
                async with session.get(f"{api.url}/metrics") as resp:
                    metrics_text = await resp.text()
        finally:
            await api()
        doc = openapi_document()
        _response_validator(doc, "/consumers", "get", 200).validate(body)
        _response_validator(doc, "/consumer/info/{consumer_id}", "get", 200).validate(info)
        (mine,) = [c for c in body["consumers"] if c["consumer_id"] == cid]
        assert mine["backlog"] == WINDOWS and mine["backlog_age_seconds"] > 0
        assert info["backlog"] == WINDOWS
        samples = {
            (s.name, s.labels.get("consumer_id")): s.value
            for f in text_string_to_metric_families(metrics_text)
            for s in f.samples
        }
        assert samples[("kafkaconsole_pipeline_backlog_windows", cid)] == WINDOWS
        assert samples[("kafkaconsole_pipeline_backlog_oldest_age_seconds", cid)] > 0
        key = ("kafkaconsole_consumer_verdict", cid)
        verdicts = [
            s.labels["verdict"]
            for f in text_string_to_metric_families(metrics_text)
            for s in f.samples
            if (s.name, s.labels.get("consumer_id")) == key and s.value == 1
        ]
        assert verdicts == ["pipeline-backlog"]

        # the CLI: status --json reads the same model; status and info say it in words
        cfg_file = tmp_path / "kafkaconsole.toml"
        cfg_file.write_text(
            f"""
[redis]
url = "{services.redis_url}"
key_prefix = "{unique}"

[monitoring]
backlog_windows = 3
backlog_age = 3600

[pipelines.gated]
kind = "kafka"
topic = "windows"

[[consumers]]
consumer_id = "{cid}"
kafka_topic = "{unique}"
pipeline_name = "gated"
connection_id = "conn-1"
max_event = {MAX_EVENT}
max_time = 3600
"""
        )
        as_json = await cli("status", "--json", "--config", str(cfg_file))
        assert as_json.exit_code == 0, as_json.stderr
        (c,) = orjson.loads(as_json.stdout)["consumers"]
        assert (c["backlog"], c["backlog_policy"], c["max_backlog"]) == (WINDOWS, "each", 100)
        human = await cli("status", "--config", str(cfg_file))
        assert f"{cid}: pipeline-backlog: {WINDOWS} window(s) wait" in human.stdout
        info = await cli("info", cid, "--config", str(cfg_file))
        assert f"backlog      {WINDOWS} window(s) waiting for the pipeline, the oldest" in (
            info.stdout
        )
        assert pipeline_targets.calls_for(cid) == []

        gate.set()

        async def drained() -> bool:
            return (await _status(fleet, cid)).backlog == 0

        await wait_for(drained, 30, what="the backlog drained")
        calls = pipeline_targets.calls_for(cid)
        assert [c["window_id"] for c in calls] == list(range(1, WINDOWS + 1))
        assert [c["idempotency_key"] for c in calls] == [
            f"{cid}:{w}" for w in range(1, WINDOWS + 1)
        ]
        assert all("windows" not in c for c in calls)
        runs = await _runs(fleet.redis, unique, cid)
        assert [runs[w]["status"] for w in range(1, WINDOWS + 1)] == ["succeeded"] * WINDOWS
        after = await _status(fleet, cid)
        assert after.backlog_age_seconds is None

        async def cleared() -> bool:
            return (await _status(fleet, cid)).verdict != "pipeline-backlog"

        await wait_for(cleared, 20, what="the pipeline-backlog verdict clearing")


async def test_coalesce_runs_the_waiting_windows_as_one_run_listing_each(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    async with outage(services, kafka, unique, backlog_policy="coalesce") as (
        _engine,
        fleet,
        cid,
        gate,
    ):
        await _backlog_shown(fleet, cid, WINDOWS)
        gate.set()

        async def drained() -> bool:
            return (await _status(fleet, cid)).backlog == 0

        await wait_for(drained, 30, what="the backlog drained")
        calls = pipeline_targets.calls_for(cid)
        # window 1's run was in progress when the pipeline went down: it ends alone; the
        # windows that waited behind it run as one
        assert len(calls) == 2
        alone, coalesced = calls
        assert alone["window_id"] == 1 and "windows" not in alone
        key = f"{cid}:2-{WINDOWS}"
        assert coalesced["idempotency_key"] == key
        assert coalesced["coalesced"] is True
        assert [w["window_id"] for w in coalesced["windows"]] == list(range(2, WINDOWS + 1))
        assert [w["count"] for w in coalesced["windows"]] == [MAX_EVENT] * (WINDOWS - 1)
        assert coalesced["count"] == MAX_EVENT * (WINDOWS - 1)
        assert coalesced["window_id"] == WINDOWS
        # every window's own offset range, and their union on the run
        for n, w in enumerate(coalesced["windows"], start=1):
            (r,) = w["offsets"]
            assert (r["partition"], r["first"], r["last"]) == (
                0,
                n * MAX_EVENT,
                (n + 1) * MAX_EVENT - 1,
            )
        (span,) = coalesced["offsets"]
        assert (span["first"], span["last"]) == (MAX_EVENT, MAX_EVENT * WINDOWS - 1)
        runs = await _runs(fleet.redis, unique, cid)
        assert runs[1]["status"] == "succeeded"
        for w in range(2, WINDOWS + 1):
            assert runs[w]["status"] == "coalesced"
            assert runs[w]["detail"]["coalesced_into"] == key
        # the run's first window lists its windows; the others point at the run
        assert runs[2]["detail"]["windows"] == list(range(2, WINDOWS + 1))
        assert all("windows" not in runs[w]["detail"] for w in range(3, WINDOWS + 1))
        history = await fleet.history(cid, limit=WINDOWS)
        assert [h["status"] for h in history] == ["coalesced"] * (WINDOWS - 1) + ["succeeded"]


async def test_max_backlog_forces_coalescing_and_says_so(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kafkaconsole.dispatch")
    async with outage(services, kafka, unique, max_backlog=3) as (_engine, fleet, cid, gate):
        await _backlog_shown(fleet, cid, WINDOWS)

        async def verdict() -> bool:
            return (await _status(fleet, cid)).verdict == "pipeline-backlog"

        await wait_for(verdict, 20, what="the pipeline-backlog verdict")
        reason = (await _status(fleet, cid)).verdict_reason or ""
        assert "max_backlog (3) reached, they run as one coalesced run" in reason
        gate.set()

        async def drained() -> bool:
            return (await _status(fleet, cid)).backlog == 0

        await wait_for(drained, 30, what="the backlog drained")
        calls = pipeline_targets.calls_for(cid)
        assert [c["idempotency_key"] for c in calls] == [f"{cid}:1", f"{cid}:2-{WINDOWS}"]
        runs = await _runs(fleet.redis, unique, cid)
        assert {runs[w]["status"] for w in range(2, WINDOWS + 1)} == {"coalesced"}
    messages = [r.getMessage() for r in caplog.records]
    assert any("max_backlog (3) reached" in m and "coalesced run" in m for m in messages)
    # no window was dropped: every one ran, once
    ran = [w["window_id"] for c in calls for w in c.get("windows") or [c]]
    assert ran == list(range(1, WINDOWS + 1))
