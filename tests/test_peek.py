"""``kafkaconsole peek``: a closed window's events, the topic's newest, the DLQ's newest, on the
real broker and Redis; the refusals (unknown consumer, window not closed or expired, events
deleted by retention, topic missing, brokers unreachable) each as one line."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from kafkaconsole.config.loader import load_config
from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import BrokerKind, EmbeddedServices, free_port
from kafkaconsole.engine.counting import WindowCounter
from kafkaconsole.engine.group_offsets import committed_offsets
from kafkaconsole.engine.keys import ConsumerKeys
from kafkaconsole.engine.peek import EventPeek, TopicNotFoundError
from kafkaconsole.engine.records import TriggerReason
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, cli, wait_for

SECRET = "s3cret-value-123"


def write_config(
    path: Path,
    bootstrap: str,
    redis_url: str,
    prefix: str,
    topic: str,
    *,
    max_event: int = 5,
    history_limit: int = 1000,
) -> Path:
    ok = json.dumps([sys.executable, "-c", "import sys; sys.stdin.read()"])
    path.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
session_timeout_ms = 6000
heartbeat_interval_ms = 500

[redis]
url = "{redis_url}"
key_prefix = "{prefix}"
history_limit = {history_limit}

[api]
enabled = false

[pipelines.ok]
kind = "command"
command = {ok}
env = {{ API_TOKEN = "{SECRET}" }}

[[consumers]]
consumer_id = "orders"
kafka_topic = "{topic}"
pipeline_name = "ok"
connection_id = "c"
format = "json"
max_event = {max_event}
max_time = 3600
poll_timeout = 0.2
""")
    return path


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def history(redis: aredis.Redis, prefix: str) -> list[dict[str, Any]]:
    entries = await redis.xrange(ConsumerKeys(prefix, "orders").history)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


@asynccontextmanager
async def counted_orders(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
) -> AsyncIterator[tuple[Path, AppConfig, str]]:
    """7 good events on 3 partitions (window 1 closed with 5) and a bad one dead-lettered,
    counted by a running engine; yields (config file, config, topic)."""
    topic = f"{unique}-orders"
    await kafka.create_topic(topic, partitions=3)
    config = write_config(
        tmp_path / "kc.toml", services.bootstrap_servers, services.redis_url, unique, topic
    )
    cfg = load_config(config, env={})
    events = [{"n": i, "password": "hunter2", "note": f"uses {SECRET}"} for i in range(7)]
    await kafka.produce(topic, events, partitions=3)
    await kafka.produce(topic, [b"not json"], partitions=1)  # partition 0, after its good ones
    async with running_engine(cfg):

        async def counted() -> bool:
            stats = await redis_client.hgetall(ConsumerKeys(unique, "orders").stats)
            return int(stats.get(b"total", 0)) == 7 and int(stats.get(b"errors", 0)) == 1

        await wait_for(counted, 30, what="7 events counted and 1 dead-lettered")
        yield config, cfg, topic


async def test_window_events_read_again_by_their_offset_ranges(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    async with counted_orders(services, kafka, redis_client, unique, tmp_path) as (
        config,
        _,
        topic,
    ):
        (record,) = await history(redis_client, unique)
        ranges = json.loads(record["offsets"])
        res = await cli("peek", "orders", "--window", "1", "--json", "--config", str(config))
        assert res.exit_code == 0, res.output
        shown = ndjson(res.stdout)
        assert len(shown) == 5 == int(record["count"])
        for event in shown:
            (r,) = [r for r in ranges if r["partition"] == event["partition"]]
            assert r["first"] <= event["offset"] <= r["last"] and event["topic"] == topic
            assert event["value_format"] == "json" and event["timestamp"].endswith("Z")
            assert event["value"]["password"] == "******"
            assert event["value"]["note"] == "uses ******"
        assert SECRET not in res.stdout and "hunter2" not in res.stdout
        human = await cli("peek", "orders", "--window", "1", "--config", str(config))
        assert human.exit_code == 0 and f"{topic}[" in human.stdout
        assert '  "password": "******"' in human.stdout  # pretty-printed
        not_closed = await cli("peek", "orders", "--window", "2", "--config", str(config))
        assert not_closed.exit_code == 1
        assert not_closed.stderr == (
            "error: window 2 of orders is not closed yet (window 2 is the open one)\n"
        )


async def test_tail_and_dlq_without_disturbing_the_group(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
    broker_kind: BrokerKind,
) -> None:
    if broker_kind == "tansu":
        pytest.skip(
            "Tansu answers ListOffsets latest wrongly (--tail and --dlq start from it) and the "
            "admin client cannot decode its OffsetFetch"
        )
    async with counted_orders(services, kafka, redis_client, unique, tmp_path) as (
        config,
        cfg,
        topic,
    ):
        group = {cfg.consumers[0].effective_group_id: cfg.consumers[0].reads_topic}

        async def committed() -> dict[int, int]:
            found = (await committed_offsets(cfg.kafka, group))[next(iter(group))]
            assert found.error is None, found.error
            return found.offsets

        await wait_for(lambda: _sums_to(committed, 8), 15, interval=0.3, what="the commits")
        before = await committed()

        tail = await cli(
            "peek", "orders", "--tail", "--limit", "100", "--json", "--config", str(config)
        )
        everything = ndjson(tail.stdout)
        assert len(everything) == 8 and tail.stderr == ""
        (bad,) = [e for e in everything if e["value_format"] != "json"]
        assert bad["value"] == "not json" and bad["partition"] == 0
        last3 = await cli("peek", "orders", "--tail", "-n", "3", "--json", "--config", str(config))
        assert ndjson(last3.stdout) == everything[-3:]
        assert "more are there (--limit)" in last3.stderr

        dlq = await cli("peek", "orders", "--dlq", "--json", "--config", str(config))
        assert dlq.exit_code == 0, dlq.output
        (dead,) = ndjson(dlq.stdout)
        assert dead["topic"] == f"{topic}.dlq" and dead["value"] == "not json"
        assert dead["error"]["stage"] == "decode" and dead["error"]["topic"] == topic
        assert dead["error"]["partition"] == "0" and dead["error"]["offset"] == str(bad["offset"])
        text = await cli("peek", "orders", "--dlq", "--config", str(config))
        assert "error: decode: JSONDecodeError" in text.stdout, text.stdout
        window = await cli("peek", "orders", "--window", "1", "--config", str(config))
        assert window.exit_code == 0

        # the peeks joined no group and committed nothing
        assert await committed() == before


async def test_tail_of_a_consumer_of_several_topics_or_a_pattern(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    broker_kind: BrokerKind,
) -> None:
    """A consumer of a list of topics or of a pattern (one per table, as with Debezium):
    ``--tail`` shows the newest records of every topic it reads, merged oldest first; its
    topic is shown as status shows it; no topic there is one line, not a traceback."""
    if broker_kind == "tansu":
        pytest.skip("Tansu answers ListOffsets latest wrongly (--tail starts from it)")
    a, b, other = f"{unique}.db.a", f"{unique}.db.b", f"{unique}-other"
    for topic in (a, b, other):
        await kafka.create_topic(topic, partitions=2)
    await kafka.produce(a, [{"t": "a", "n": i} for i in range(3)], partitions=2)
    await kafka.produce(b, [{"t": "b", "n": i} for i in range(2)], partitions=2)
    await kafka.produce(other, [{"t": "other"}], partitions=2)
    cfg = make_config(
        services,
        unique,
        [
            {"consumer_id": "listed", "kafka_topics": [a, b], "max_event": 100},
            {"consumer_id": "matched", "topic_pattern": rf"{unique}\.db\..*", "max_event": 100},
            {"consumer_id": "none", "kafka_topics": [f"{unique}-x", f"{unique}-y"], "max_event": 1},
            {"consumer_id": "nomatch", "topic_pattern": rf"{unique}\.zz.*", "max_event": 1},
        ],
    )
    reader = EventPeek(cfg, redis_client)
    for cid, label in (("listed", f"{a},{b}"), ("matched", rf"/{unique}\.db\..*/")):
        body = await reader.tail(cid, limit=100)
        assert body.topic == label
        assert sorted((e.topic, e.value["n"]) for e in body.events) == sorted(
            [(a, n) for n in range(3)] + [(b, n) for n in range(2)]
        )
        newest = await reader.tail(cid, limit=2)
        assert [e.offset for e in newest.events] == [e.offset for e in body.events[-2:]]
        assert newest.truncated
    with pytest.raises(TopicNotFoundError, match=r"none of the topics .* does not exist"):
        await reader.tail("none")
    with pytest.raises(TopicNotFoundError, match="no topic matches the pattern"):
        await reader.tail("nomatch")


async def _sums_to(read: Any, total: int) -> bool:
    return sum((await read()).values()) == total


async def test_window_expired_from_history_and_refusals(
    services: EmbeddedServices, redis_client: aredis.Redis, unique: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "kc.toml",
        services.bootstrap_servers,
        services.redis_url,
        unique,
        f"{unique}-t",
        history_limit=10,
    )
    keys = ConsumerKeys(unique, "orders")
    counter = WindowCounter(redis_client, keys, max_event=5)
    for _ in range(12):
        await counter.close(TriggerReason.MANUAL)
    await redis_client.xtrim(keys.history, maxlen=10, approximate=False)  # as MAXLEN ~ does

    expired = await cli("peek", "orders", "--window", "1", "--config", str(config))
    assert expired.exit_code == 1
    assert expired.stderr == (
        "error: window 1 of orders has expired from the trigger history (it keeps the last "
        "10 windows; the oldest kept is 3)\n"
    )
    empty = await cli("peek", "orders", "--window", "12", "--json", "--config", str(config))
    assert empty.exit_code == 0 and empty.stdout == ""  # closed with no event

    unknown = await cli("peek", "nope", "--tail", "--config", str(config))
    assert unknown.exit_code == 1 and "unknown consumer 'nope'" in unknown.stderr
    for usage in (["orders"], ["orders", "--tail", "--dlq"], ["orders", "--limit", "1001"]):
        res = await cli("peek", *usage, "--config", str(config))
        assert res.exit_code == 2, usage

    missing = await cli("peek", "orders", "--dlq", "--config", str(config))
    assert missing.exit_code == 1
    assert missing.stderr == (
        f"error: topic {unique}-t.dlq does not exist (nothing was dead-lettered yet)\n"
    )

    down = write_config(
        tmp_path / "down.toml", f"127.0.0.1:{free_port()}", services.redis_url, unique, "t"
    )
    unreachable = await cli("peek", "orders", "--tail", "--config", str(down))
    assert unreachable.exit_code == 1
    (line,) = unreachable.stderr.splitlines()
    assert line.startswith("error: cannot reach the brokers at 127.0.0.1:")


async def test_window_events_deleted_by_retention(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
    broker_kind: BrokerKind,
) -> None:
    if broker_kind == "tansu":
        pytest.skip("Tansu closes the connection on DeleteRecords (no retention to simulate)")
    topic = f"{unique}-t"
    await kafka.create_topic(topic, partitions=1)
    config = write_config(
        tmp_path / "kc.toml",
        services.bootstrap_servers,
        services.redis_url,
        unique,
        topic,
        max_event=4,
    )
    await kafka.produce(topic, [{"n": i} for i in range(4)], partitions=1)
    async with running_engine(load_config(config, env={})):

        async def closed() -> bool:
            return len(await history(redis_client, unique)) == 1

        await wait_for(closed, 30, what="window 1 closed")
    (record,) = await history(redis_client, unique)
    assert json.loads(record["offsets"]) == [
        {"topic": topic, "partition": 0, "first": 0, "last": 3}
    ]
    tp = TopicPartition(topic, 0)
    await kafka.admin.delete_records({tp: RecordsToDelete(2)})
    partial = await cli("peek", "orders", "--window", "1", "--json", "--config", str(config))
    assert partial.exit_code == 0, partial.output
    assert [e["offset"] for e in ndjson(partial.stdout)] == [2, 3]
    assert partial.stderr == (
        f"warning: window 1: {topic}[0] offsets 0-3: offsets 0-1 are no longer in the topic "
        "(retention); showing the rest\n"
    )
    await kafka.admin.delete_records({tp: RecordsToDelete(4)})
    gone = await cli("peek", "orders", "--window", "1", "--config", str(config))
    assert gone.exit_code == 1
    assert gone.stderr == (
        f"error: the events of window 1 of orders are no longer in the topic (retention "
        f"deleted them): {topic}[0] offsets 0-3 (the oldest offset there is now 4)\n"
    )


async def test_window_beyond_the_partitions_end_says_so(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    """A trigger record whose ranges the topic no longer reaches (the topic was deleted and
    created again, with fewer records): what is there is shown, the rest named."""
    topic = f"{unique}-t"
    await kafka.create_topic(topic, partitions=1)
    await kafka.produce(topic, [{"n": 0}, {"n": 1}], partitions=1)
    config = write_config(
        tmp_path / "kc.toml", services.bootstrap_servers, services.redis_url, unique, topic
    )
    keys = ConsumerKeys(unique, "orders")
    for window_id, first, last in ((1, 0, 5), (2, 10, 12)):
        offsets = [{"topic": topic, "partition": 0, "first": first, "last": last}]
        await redis_client.xadd(
            keys.history,
            {
                "window_id": window_id,
                "reason": "count",
                "count": last - first + 1,
                "opened_at": 1,
                "closed_at": 2,
                "offsets": json.dumps(offsets),
            },
        )
    await redis_client.hset(keys.window, "id", 3)

    partial = await cli("peek", "orders", "--window", "1", "--json", "--config", str(config))
    assert partial.exit_code == 0, partial.output
    assert [e["value"]["n"] for e in ndjson(partial.stdout)] == [0, 1]
    assert partial.stderr == (
        f"warning: window 1: {topic}[0] offsets 2-5 (it ends at 2) is beyond the partition's "
        "end: was the topic deleted and created again?\n"
    )
    gone = await cli("peek", "orders", "--window", "2", "--config", str(config))
    assert gone.exit_code == 1
    assert gone.stderr == (
        f"error: the events of window 2 of orders are not in the topic: {topic}[0] offsets "
        "10-12 (it ends at 2); was the topic deleted and created again?\n"
    )
