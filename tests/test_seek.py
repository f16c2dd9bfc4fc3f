"""``kafkaconsole seek``: moving a consumer's position fleet-wide, on the real broker and Redis.

Exact counting across a seek means: counted = the events in the ranges the consumer was told
to read. Events read again after a seek back are counted again into new windows recorded as
replays; events skipped by a seek forward are never counted and are added up; the open window
is closed (reason seek) or discarded; every instance follows, and none takes the seek for
Redis having lost writes.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from kafkaconsole.config.loader import load_config
from kafkaconsole.embedded import BrokerKind, EmbeddedServices
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.fleet import publish_heartbeat, withdraw_heartbeat
from kafkaconsole.engine.keys import ConsumerKeys, FleetKeys
from kafkaconsole.engine.records import iso_ms
from tests.engine_support import running_engine
from tests.helpers import KafkaHelper, cli, wait_for
from tests.test_peek import history, write_config

TANSU_END_OFFSETS = (
    "Tansu answers ListOffsets latest wrongly (README: What differs on Tansu): a seek to "
    "latest, and an offset clamped to a partition's end, resolve from it"
)


async def stats(redis: aredis.Redis, prefix: str) -> dict[str, int]:
    raw = await redis.hgetall(ConsumerKeys(prefix, "orders").stats)
    return {k.decode(): int(v) for k, v in raw.items()}


async def wait_total(redis: aredis.Redis, prefix: str, total: int) -> None:
    async def reached() -> bool:
        return (await stats(redis, prefix)).get("total", 0) == total

    await wait_for(reached, 30, interval=0.1, what=f"{total} events counted")


def runner(engine: Engine) -> Any:
    return engine._consumers["orders"].runner


async def test_seek_back_replays_into_new_windows_on_every_instance(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    topic = f"{unique}-orders"
    await kafka.create_topic(topic, partitions=2)
    config = write_config(
        tmp_path / "kc.toml",
        services.bootstrap_servers,
        services.redis_url,
        unique,
        topic,
        max_event=10,
    )
    cfg = load_config(config, env={})
    await kafka.produce(topic, [{"n": i} for i in range(23)], partitions=2)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_engine(cfg))
        b = await stack.enter_async_context(running_engine(cfg))

        async def shared() -> bool:  # one partition each: both must follow the seek
            return len(runner(a).assigned) == 1 and len(runner(b).assigned) == 1

        await wait_for(shared, 30, what="the two instances to share the partitions")
        await wait_total(redis_client, unique, 23)

        dry = await cli(
            "seek", "orders", "--to", "earliest", "--dry-run", "--json", "--config", str(config)
        )
        assert dry.exit_code == 0, dry.output
        plan = json.loads(dry.stdout)["plan"]
        assert plan["reread"] == 23 and plan["skipped"] == 0
        assert plan["window_id"] == 3 and plan["window_count"] == 3
        assert sorted((m["partition"], m["current"], m["target"]) for m in plan["partitions"]) == [
            (0, 12, 0),
            (1, 11, 0),
        ]
        no = await cli("seek", "orders", "--to", "earliest", "--config", str(config), input="n\n")
        assert no.exit_code == 1
        assert "READ AGAIN" in no.stdout and "open window 3 (3 events)" in no.stdout
        assert "error: not confirmed: nothing changed" in no.stderr
        assert "seeks" not in await stats(redis_client, unique)

        done = await cli("seek", "orders", "--to", "earliest", "--config", str(config), input="y\n")
        assert done.exit_code == 0, done.output
        assert "23 event(s) to read again, 0 skipped; window 3 closed (reason seek)" in done.stdout

        # every event counted again (23 + 23), in new windows recorded as replays
        await wait_total(redis_client, unique, 46)
        entries = await history(redis_client, unique)
        assert [(e["window_id"], e["reason"], e["count"], e.get("replay")) for e in entries] == [
            ("1", "count", "10", None),
            ("2", "count", "10", None),
            ("3", "seek", "3", None),
            ("4", "count", "10", "1"),
            ("5", "count", "10", "1"),
        ]
        s = await stats(redis_client, unique)
        assert s["seeks"] == 1 and s["seek_reread"] == 23 and "seek_skipped" not in s
        shown = await cli("history", "orders", "--format", "csv", "--config", str(config))
        rows = list(csv.DictReader(io.StringIO(shown.stdout_bytes.decode(), newline="")))
        assert [(r["window_id"], r["reason"], r["replay"]) for r in rows] == [
            ("5", "count", "true"),
            ("4", "count", "true"),
            ("3", "seek", ""),
            ("2", "count", ""),
            ("1", "count", ""),
        ]
        table = await cli("history", "orders", "--config", str(config))
        assert table.stdout.splitlines()[1].split()[:3] == ["5", "count", "(replay)"]
        for engine in (a, b):  # each followed the seek; none took it for lost writes
            assert runner(engine).seeks_followed >= 1
            assert runner(engine).state_losses == 0

        # the replay ends where counting had stood: the window holding the last replayed
        # events is a replay, the next one (new events only) is not
        await kafka.produce(topic, [{"n": i} for i in range(17)], partitions=2)
        await wait_total(redis_client, unique, 63)
        entries = await history(redis_client, unique)
        assert [(e["window_id"], e.get("replay")) for e in entries[5:]] == [("6", "1"), ("7", None)]
        control = await redis_client.hgetall(ConsumerKeys(unique, "orders").control)
        assert control[b"replaying"] == b"0" and control[b"seek_epoch"] == b"1"

        audit = await cli("audit", "--json", "--config", str(config))
        (entry,) = [e for e in json.loads(audit.stdout) if e["action"] == "seek"]
        assert entry["result"] == "ok" and entry["via"] == "cli"
        assert "to earliest (epoch 1)" in entry["detail"] and "23 read again" in entry["detail"]


async def test_seek_forward_skips_and_time_targets(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
    broker_kind: BrokerKind,
) -> None:
    if broker_kind == "tansu":
        pytest.skip(TANSU_END_OFFSETS)
    topic = f"{unique}-orders"
    await kafka.create_topic(topic, partitions=1)
    config = write_config(
        tmp_path / "kc.toml",
        services.bootstrap_servers,
        services.redis_url,
        unique,
        topic,
        max_event=100,
    )
    cfg = load_config(config, env={})
    await kafka.produce(topic, [{"n": i} for i in range(5)], partitions=1)
    await asyncio.sleep(0.05)  # record timestamps: the first five before `middle`, five after
    middle = time.time_ns() // 1_000_000
    await asyncio.sleep(0.05)
    await kafka.produce(topic, [{"n": i} for i in range(5, 10)], partitions=1)
    async with running_engine(cfg) as engine:
        await wait_total(redis_client, unique, 10)
        at = await cli(
            "seek", "orders", "--to", iso_ms(middle) or "", "--dry-run", "--json",
            "--config", str(config),
        )  # fmt: skip
        assert at.exit_code == 0, at.output
        (move,) = json.loads(at.stdout)["plan"]["partitions"]
        assert (move["current"], move["target"], move["reread"]) == (10, 5, 5)

        # paused, 20 more arrive and are skipped; the open window's 10 are discarded
        await engine.pause("orders")
        await kafka.produce(topic, [{"n": i} for i in range(20)], partitions=1)
        res = await engine.seek("orders", "latest", window="discard", via="test")
        assert (res.skipped, res.reread, res.discarded, res.closed_window_id) == (20, 0, 10, None)
        await engine.resume("orders")
        await kafka.produce(topic, [{"n": i} for i in range(4)], partitions=1)

        async def counted() -> bool:
            s = await stats(redis_client, unique)
            return s.get("total") == 14 and s.get("seek_skipped") == 20

        await wait_for(counted, 30, what="the 4 new events counted, the 20 skipped")
        s = await stats(redis_client, unique)
        assert s["discarded"] == 10 and s.get("windows", 0) == 0
        assert int(await redis_client.get(ConsumerKeys(unique, "orders").events) or 0) == 4


async def test_seek_of_a_stopped_consumer_and_refusals(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
    broker_kind: BrokerKind,
) -> None:
    if broker_kind == "tansu":
        pytest.skip(TANSU_END_OFFSETS)
    topic = f"{unique}-orders"
    await kafka.create_topic(topic, partitions=2)
    config = write_config(
        tmp_path / "kc.toml", services.bootstrap_servers, services.redis_url, unique, topic
    )
    await kafka.produce(topic, [{"n": i} for i in range(20)], partitions=2)
    c = ("--config", str(config))

    bad = await cli("seek", "orders", "--to", "yesterday", *c)
    assert bad.exit_code == 2 and bad.stderr.startswith("error: seek target 'yesterday' is not")
    assert len(bad.stderr.splitlines()) == 1
    window = await cli("seek", "orders", "--to", "earliest", "--window", "keep", *c)
    assert window.exit_code == 2
    assert window.stderr == "error: window must be close or discard (got 'keep')\n"
    missing = await cli("seek", "orders", "--to", "earliest", "-p", "7", "--yes", *c)
    assert missing.exit_code == 2
    assert missing.stderr == f"error: no partition 7 in {topic} (it has 0, 1)\n"
    ro = await cli("seek", "orders", "--to", "earliest", "--yes", "--read-only", *c)
    assert ro.exit_code == 1 and "refusing to seek: read-only mode" in ro.stderr
    unknown = await cli("seek", "nope", "--to", "earliest", "--yes", *c)
    assert unknown.exit_code == 1 and "unknown consumer 'nope'" in unknown.stderr
    # an instance of a release that does not follow seeks runs the consumer: refused
    fleet = FleetKeys(unique)
    old = {"instance_id": "old-1", "host": "h", "pid": 1, "consumers": [{"consumer_id": "orders"}]}
    await publish_heartbeat(redis_client, fleet, "old-1", old, ttl_s=60)
    refused = await cli("seek", "orders", "--to", "earliest", "--yes", *c)
    assert refused.exit_code == 1
    assert refused.stderr == (
        "error: refusing to seek orders: instance(s) old-1 run a release that does not "
        "follow seeks (upgrade them first)\n"
    )
    await withdraw_heartbeat(redis_client, fleet, "old-1")

    # nothing runs the consumer: the seek stores the positions, the first start reads there
    clamped = await cli("seek", "orders", "--to", "6", "-p", "1", "--yes", "--json", *c)
    assert clamped.exit_code == 0, clamped.output
    res = json.loads(clamped.stdout)
    assert [(m["partition"], m["current"], m["target"]) for m in res["plan"]["partitions"]] == [
        (1, None, 6)
    ]
    far = await cli("seek", "orders", "--to", "1000", "-p", "0", "--yes", *c)
    assert far.exit_code == 0
    assert f"warning: {topic}[0] holds offsets 0 to 10: offset 1000 moved to 10" in far.stderr
    cfg = load_config(config, env={})
    async with running_engine(cfg):
        await wait_total(redis_client, unique, 4)  # partition 1's offsets 6 to 9, none of 0's
        await asyncio.sleep(0.5)
        assert (await stats(redis_client, unique))["total"] == 4
