"""One consumer, many topics, on the real broker: ``kafka_topics`` and ``topic_pattern``.

Every topic counts into the consumer's one window; offsets, lag and status are kept per
topic-partition; a pattern picks up topics created after the start (at the next metadata
refresh) and never reads internal topics or the consumer's own DLQ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.fleet import Fleet
from tests import pipeline_targets
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, cli, wait_for


async def stored(redis_client: aredis.Redis, prefix: str, cid: str) -> dict[str, int]:
    raw = await redis_client.hgetall(f"{prefix}:{cid}:offsets")
    return {k.decode(): int(v) for k, v in raw.items()}


async def stats(redis_client: aredis.Redis, prefix: str, cid: str) -> dict[str, int]:
    raw = await redis_client.hgetall(f"{prefix}:{cid}:stats")
    return {k.decode(): int(v) for k, v in raw.items()}


async def committed(services: EmbeddedServices, cfg: AppConfig, tps: list[TopicPartition]) -> list:
    probe = AIOKafkaConsumer(
        bootstrap_servers=services.bootstrap_servers,
        group_id=cfg.consumers[0].effective_group_id,
        enable_auto_commit=False,
    )
    await probe.start()
    try:
        return [await probe.committed(tp) for tp in tps]
    finally:
        await probe.stop()


def covered(calls: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    """Events per topic-partition over the trigger records' offset ranges."""
    out: dict[tuple[str, int], int] = {}
    for call in calls:
        for r in call["offsets"]:
            key = (r["topic"], r["partition"])
            out[key] = out.get(key, 0) + r["last"] - r["first"] + 1
    return out


def cli_config(path: Path, services: EmbeddedServices, prefix: str, consumer: str) -> Path:
    """A config file for the CLI: the test's Redis and prefix, and one consumer's table."""
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "{services.bootstrap_servers}"

[redis]
url = "{services.redis_url}"
key_prefix = "{prefix}"

[pipelines.record]
kind = "kafka"
topic = "windows"

[[consumers]]
{consumer}
pipeline_name = "record"
connection_id = "conn-1"
max_event = 25
max_time = 3600
"""
    )
    return path


async def test_a_list_of_topics_counts_exactly_into_one_window(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    orders, lines = f"{unique}.orders", f"{unique}.lines"
    await kafka.create_topic(orders, 2)
    await kafka.create_topic(lines, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topics": [orders, lines], "max_event": 25}],
    )
    assert cfg.consumers[0].dlq_topic == f"{cid}.dlq"
    # partition 0 of both topics: the same number, two partitions
    await kafka.produce(orders, ({"i": i} for i in range(31)), partitions=2)
    await kafka.produce(lines, [*({"i": i} for i in range(19)), b"{bad"], partitions=1)
    async with running_engine(cfg):

        async def all_counted() -> bool:
            return await stored(redis_client, unique, cid) == {
                f"{orders}|0": 16,
                f"{orders}|1": 15,
                f"{lines}|0": 20,
            }

        await wait_for(all_counted, 30, what="both topics counted")

        async def two_windows() -> bool:
            return len(pipeline_targets.calls_for(cid)) >= 2

        await wait_for(two_windows, 15, what="two windows triggered")
        calls = pipeline_targets.calls_for(cid)
        # 50 good events, max_event 25: exactly two windows, nothing left open
        assert [(c["window_id"], c["count"], c["reason"]) for c in calls] == [
            (1, 25, "count"),
            (2, 25, "count"),
        ]
        assert int(await redis_client.get(f"{unique}:{cid}:events")) == 0
        assert covered(calls) == {(orders, 0): 16, (orders, 1): 15, (lines, 0): 19}
        got = await stats(redis_client, unique, cid)
        assert got["total"] == 50 and got["errors"] == 1

        async def status_per_topic_partition() -> bool:
            view = await Fleet(redis_client, cfg).consumer(cid)
            parts = {(p["topic"], p["partition"]): p for p in view["partitions"]}
            return (
                set(parts) == {(orders, 0), (orders, 1), (lines, 0)}
                and all(p["lag"] == 0 for p in parts.values())
                and view["kafka_topic"] == f"{orders},{lines}"
                and view["topics"] == [orders, lines]
            )

        await wait_for(status_per_topic_partition, 15, what="status per topic-partition")
        tps = [TopicPartition(orders, 0), TopicPartition(orders, 1), TopicPartition(lines, 0)]

        async def kafka_committed() -> bool:
            return await committed(services, cfg, tps) == [16, 15, 20]

        await wait_for(kafka_committed, 15, interval=0.3, what="commits per topic-partition")
        topics = f'consumer_id = "{cid}"\nkafka_topics = ["{orders}", "{lines}"]'
        path = cli_config(tmp_path / "kc.toml", services, unique, topics)
        info = await cli("info", cid, "--config", str(path))
        assert info.exit_code == 0, info.stderr
        assert f"topic        {orders},{lines}" in info.stdout
        rows = [line.split() for line in info.stdout.splitlines()]
        header = ["TOPIC", "PARTITION", "OWNER", "POSITION", "HIGHWATER", "LAG", "TIME", "LAG"]
        assert header in rows  # several topics: each partition row names its topic
        assert [r[:2] for r in rows if r[:1] in ([orders], [lines])] == [
            [lines, "0"],
            [orders, "0"],
            [orders, "1"],
        ]
        lag = await cli("lag", "--config", str(path))
        assert lag.exit_code == 0, lag.stderr
        lag_rows = [line.split()[:3] for line in lag.stdout.splitlines()[1:] if cid in line]
        assert lag_rows == [[cid, lines, "0"], [cid, orders, "0"], [cid, orders, "1"]]
    reader = AIOKafkaConsumer(
        f"{cid}.dlq",
        bootstrap_servers=services.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await reader.start()
    try:
        batch = await reader.getmany(timeout_ms=5000)
    finally:
        await reader.stop()
    dead = [r for recs in batch.values() for r in recs]
    assert len(dead) == 1
    assert dict(dead[0].headers)["__connect.errors.topic"] == lines.encode()


async def test_a_pattern_reads_topics_created_later_but_never_internal_ones_or_its_dlq(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    cid = f"{unique}-c"
    first, later = f"{unique}.a", f"{unique}.b"
    heartbeat = f"__debezium-heartbeat.{unique}"
    longer = f"{unique}.ab"  # the pattern matches its beginning only: not read
    dlq = f"{cid}.dlq"
    # the pattern names the heartbeat topic and the DLQ too: they are left out all the same
    pattern = f"(__debezium-heartbeat\\.)?{unique}(\\.[ab]|-c\\.dlq)"
    for topic in (first, heartbeat, longer, dlq):
        await kafka.create_topic(topic, 1)
    await kafka.produce(heartbeat, [{"ts_ms": 1}] * 3, partitions=1)
    await kafka.produce(longer, [{"i": 0}] * 4, partitions=1)
    await kafka.produce(first, [{"i": 0}] * 5 + [b"{bad"], partitions=1)
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "topic_pattern": pattern, "max_event": 1000}],
        kafka={"metadata_max_age_ms": 1000},
    )
    async with running_engine(cfg):

        async def first_counted() -> bool:
            return await stored(redis_client, unique, cid) == {f"{first}|0": 6}

        await wait_for(first_counted, 30, what="the first topic counted")
        await kafka.create_topic(later, 2)
        await kafka.produce(later, ({"i": i} for i in range(8)), partitions=2)

        async def later_counted() -> bool:
            return await stored(redis_client, unique, cid) == {
                f"{first}|0": 6,
                f"{later}|0": 4,
                f"{later}|1": 4,
            }

        # exactly these: the heartbeat topic, the longer name and the DLQ (which holds the
        # bad event by now) were there from the start and were never read
        await wait_for(later_counted, 30, what="the topic created later counted")
        assert int(await redis_client.get(f"{unique}:{cid}:events")) == 13
        got = await stats(redis_client, unique, cid)
        # the bad event went to the DLQ once: a DLQ read back would dead-letter it again
        assert got["total"] == 13 and got["errors"] == 1
        view = await Fleet(redis_client, cfg).consumer(cid)
        assert view["kafka_topic"] == f"/{pattern}/" and view["topic_pattern"] == pattern
