"""Exactly-once counting across crashes, restarts and two instances: real processes.

The oracle: the sum of closed-window counts (history) plus the open window's count equals the
number of events produced, window ids are unique and contiguous, and every window's pipeline
ran (each idempotency key seen; re-delivery after a crash mid-call is allowed, never a
missing one).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices
from tests.helpers import KafkaHelper, wait_for
from tests.procs import pipeline_calls, start, stop, write_config


async def counted(r: aredis.Redis, prefix: str, cid: str) -> tuple[int, list[int], list[int]]:
    """(closed-window total + open count, window ids in history order, closed counts)."""
    entries = await r.xrange(f"{prefix}:{cid}:history")
    wids = [int(f[b"window_id"]) for _, f in entries]
    counts = [int(f[b"count"]) for _, f in entries]
    open_count = int(await r.get(f"{prefix}:{cid}:events") or 0)
    return sum(counts) + open_count, wids, counts


async def settle(
    r: aredis.Redis, prefix: str, cid: str, expected: int, timeout: float = 60
) -> None:
    async def done() -> bool:
        return (await counted(r, prefix, cid))[0] >= expected

    await wait_for(done, timeout, interval=0.2, what=f"{expected} events counted")


async def check_oracle(
    r: aredis.Redis, prefix: str, cid: str, produced: int, max_event: int, runs_file: Path
) -> None:
    total, wids, counts = await counted(r, prefix, cid)
    assert total == produced
    assert wids == list(range(1, len(wids) + 1))
    assert counts == [max_event] * (produced // max_event)

    async def all_dispatched() -> bool:
        keys = {c["idempotency_key"] for c in pipeline_calls(runs_file)}
        return keys >= {f"{cid}:{w}" for w in wids}

    await wait_for(all_dispatched, 30, interval=0.2, what="every window dispatched")


async def test_kill9_after_apply_then_restart_is_exact(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    cid, topic, max_event = "c1", unique, 500
    await kafka.create_topic(topic, 3)
    produced = await kafka.produce(topic, ({"i": i} for i in range(12_345)))
    runs = tmp_path / "runs.jsonl"
    cfg = write_config(
        tmp_path / "kc.toml",
        services,
        unique,
        topic,
        cid,
        runs,
        max_event=max_event,
        max_time=3600,
        batch_size=100,
    )
    # dies right after the 2nd Redis apply (a backlog's polls go in groups of up to 32 per
    # apply: some of the 124 polls are counted by then, not all), before any Kafka commit
    first = start(cfg, "a", tmp_path / "a.log", env={"KAFKACONSOLE_FAULT": "after_apply:2"})
    assert first.wait(60) == 86
    partial = (await counted(redis_client, unique, cid))[0]
    assert 0 < partial < produced
    second = start(cfg, "b", tmp_path / "b.log")
    try:
        await settle(redis_client, unique, cid, produced)
        await check_oracle(redis_client, unique, cid, produced, max_event, runs)
    finally:
        assert stop(second) == 0
    assert (await counted(redis_client, unique, cid))[0] == produced


async def test_crash_between_close_and_dispatch_runs_pipeline_once(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    cid, topic = "c1", unique
    await kafka.create_topic(topic, 1)
    produced = await kafka.produce(topic, ({"i": i} for i in range(250)), partitions=1)
    runs = tmp_path / "runs.jsonl"
    cfg = write_config(
        tmp_path / "kc.toml",
        services,
        unique,
        topic,
        cid,
        runs,
        max_event=100,
        max_time=3600,
        batch_size=50,
    )
    first = start(cfg, "a", tmp_path / "a.log", env={"KAFKACONSOLE_FAULT": "after_close:1"})
    assert first.wait(60) == 86
    assert pipeline_calls(runs) == []
    assert await redis_client.xlen(f"{unique}:{cid}:dispatch") >= 1
    second = start(cfg, "b", tmp_path / "b.log")
    try:
        await settle(redis_client, unique, cid, produced)
        await check_oracle(redis_client, unique, cid, produced, 100, runs)
        calls = pipeline_calls(runs)
        assert sorted(c["window_id"] for c in calls) == [1, 2]
        assert await redis_client.xlen(f"{unique}:{cid}:dispatch") == 0
    finally:
        assert stop(second) == 0


async def test_two_instances_one_killed_mid_stream_exact(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    cid, topic, max_event = "c1", unique, 250
    await kafka.create_topic(topic, 4)
    runs = tmp_path / "runs.jsonl"
    cfg = write_config(
        tmp_path / "kc.toml",
        services,
        unique,
        topic,
        cid,
        runs,
        max_event=max_event,
        max_time=3600,
        batch_size=50,
    )
    a = start(cfg, "a", tmp_path / "a.log")
    b = start(cfg, "b", tmp_path / "b.log")
    produced = 0
    try:
        for chunk in range(10):
            produced += await kafka.produce(topic, ({"i": i} for i in range(1000)), partitions=4)
            await asyncio.sleep(0.3)
            if chunk == 5:
                a.send_signal(signal.SIGKILL)
                a.wait(10)
        await settle(redis_client, unique, cid, produced, timeout=90)
        await check_oracle(redis_client, unique, cid, produced, max_event, runs)
    finally:
        if a.poll() is None:
            a.kill()
        assert stop(b) == 0
    assert (await counted(redis_client, unique, cid))[0] == produced


async def test_sigterm_records_commits_and_exits_promptly(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    cid, topic = "c1", unique
    await kafka.create_topic(topic, 2)
    produced = await kafka.produce(topic, ({"i": i} for i in range(3000)), partitions=2)
    runs = tmp_path / "runs.jsonl"
    cfg = write_config(
        tmp_path / "kc.toml",
        services,
        unique,
        topic,
        cid,
        runs,
        max_event=1000,
        max_time=3600,
        batch_size=100,
    )
    proc = start(cfg, "a", tmp_path / "a.log")
    try:
        await settle(redis_client, unique, cid, produced)
    finally:
        t0 = time.monotonic()
        code = stop(proc, signal.SIGTERM)
        elapsed = time.monotonic() - t0
    assert code == 0 and elapsed < 8, (code, elapsed)
    log = (tmp_path / "a.log").read_text()
    assert "window 3 closed (count, 1000 events)" in log
    stored = await redis_client.hgetall(f"{unique}:{cid}:offsets")
    assert {k.decode(): int(v) for k, v in stored.items()} == {
        f"{topic}|0": 1500,
        f"{topic}|1": 1500,
    }
    probe = AIOKafkaConsumer(
        bootstrap_servers=services.bootstrap_servers,
        group_id=f"kafkaconsole-{cid}",
        enable_auto_commit=False,
    )
    await probe.start()
    try:
        committed = [await probe.committed(TopicPartition(topic, p)) for p in (0, 1)]
    finally:
        await probe.stop()
    assert committed == [1500, 1500]
