"""Change-data-capture records on the real broker: tombstones and Debezium's envelope.

A tombstone (a record whose value is null, which Debezium writes after every delete) is
skipped by default (recorded as skipped, never an error, offsets still advance) or counted.
``format = "debezium"`` reads the change event (bare or wrapped by the JsonConverter), lets the
filter match its operation and source, leaves snapshot reads out on request, and skips what
Debezium writes beside change events (heartbeats, schema changes, transaction boundaries).
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.fleet import Fleet
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for


async def stats(redis_client: aredis.Redis, prefix: str, cid: str) -> dict[str, int]:
    raw = await redis_client.hgetall(f"{prefix}:{cid}:stats")
    return {k.decode(): int(v) for k, v in raw.items()}


async def stored_offsets(redis_client: aredis.Redis, prefix: str, cid: str) -> dict[str, int]:
    raw = await redis_client.hgetall(f"{prefix}:{cid}:offsets")
    return {k.decode(): int(v) for k, v in raw.items()}


async def read_topic(services: EmbeddedServices, topic: str, expect: int) -> list[Any]:
    """Up to ``expect`` records of ``topic`` (fewer if it holds fewer within ~5 s)."""
    reader = AIOKafkaConsumer(
        topic,
        bootstrap_servers=services.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await reader.start()
    got: list[Any] = []
    try:
        for _ in range(10):
            batch = await reader.getmany(timeout_ms=500)
            got += [r for recs in batch.values() for r in recs]
            if len(got) >= expect:
                break
    finally:
        await reader.stop()
    return got


async def committed(services: EmbeddedServices, cfg: AppConfig, topic: str, parts: int) -> list:
    """The consumer group's committed offsets of ``topic``'s partitions."""
    group = cfg.consumers[0].effective_group_id
    probe = AIOKafkaConsumer(
        bootstrap_servers=services.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await probe.start()
    try:
        return [await probe.committed(TopicPartition(topic, p)) for p in range(parts)]
    finally:
        await probe.stop()


async def test_tombstones_are_skipped_not_errors_and_their_offsets_advance(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    await kafka.create_topic(unique, 2)
    cid = f"{unique}-c"
    cfg = make_config(
        services, unique, [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}]
    )
    # partition 0: events and tombstones mixed; partition 1: tombstones only
    for i in range(6):
        await kafka.producer.send(unique, orjson.dumps({"i": i}), key=b"k%d" % i, partition=0)
        await kafka.producer.send(unique, None, key=b"k%d" % i, partition=0)
    for i in range(5):
        await kafka.producer.send(unique, None, key=b"gone%d" % i, partition=1)
    await kafka.producer.flush()
    async with running_engine(cfg):

        async def all_read() -> bool:
            return await stored_offsets(redis_client, unique, cid) == {
                f"{unique}|0": 12,
                f"{unique}|1": 5,
            }

        await wait_for(all_read, 20, what="every offset counted")
        got = await stats(redis_client, unique, cid)
        assert got.get("total") == 6 and got.get("skipped") == 11
        assert got.get("errors", 0) == 0 and got.get("filtered", 0) == 0
        assert int(await redis_client.get(f"{unique}:{cid}:events")) == 6

        async def kafka_committed() -> bool:
            return await committed(services, cfg, unique, 2) == [12, 5]

        await wait_for(kafka_committed, 15, interval=0.3, what="offsets committed to Kafka")

        async def fleet_shows_skipped() -> bool:
            view = await Fleet(redis_client, cfg).consumer(cid)
            return view["skipped"] == 11 and view["errors"] == 0

        await wait_for(fleet_shows_skipped, 10, what="the fleet model's skipped count")
    assert await read_topic(services, f"{unique}.dlq", 1) == []


def row_key(i: int) -> bytes:
    """A tombstone needs a key (the row it deletes)."""
    return b'{"id": %d}' % i


async def test_tombstones_counted_on_request(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [
            {
                "consumer_id": cid,
                "kafka_topic": unique,
                "max_event": 1000,
                "tombstones": "count",
                "filter": {"type": "order"},
            }
        ],
    )
    await kafka.produce(
        unique, [{"type": "order"}, None, {"type": "refund"}, None], partitions=1, key=row_key
    )
    async with running_engine(cfg):

        async def all_read() -> bool:
            return await stored_offsets(redis_client, unique, cid) == {f"{unique}|0": 4}

        await wait_for(all_read, 20, what="every offset counted")
        got = await stats(redis_client, unique, cid)
        # a tombstone is counted as it is: never parsed, never filtered
        assert got.get("total") == 3 and got.get("filtered") == 1
        assert got.get("skipped", 0) == 0 and got.get("errors", 0) == 0


def change(op: str, table: str, **extra: Any) -> dict[str, Any]:
    after = None if op == "d" else {"id": 1, "name": "x"}
    return {
        "before": {"id": 1} if op in ("u", "d") else None,
        "after": after,
        "source": {"connector": "postgresql", "db": "shop", "schema": "public", "table": table},
        "op": op,
        "ts_ms": 1_700_000_000_000,
        **extra,
    }


def wrapped(envelope: dict[str, Any]) -> dict[str, Any]:
    """As Kafka Connect's JsonConverter writes it with schemas.enable = true."""
    schema = {"type": "struct", "name": "shop.public.orders.Envelope"}
    return {"schema": schema, "payload": envelope}


async def test_debezium_envelope_filter_snapshot_reads_and_what_is_not_a_change(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [
            {
                "consumer_id": cid,
                "kafka_topic": unique,
                "max_event": 1000,
                "format": "debezium",
                "snapshot_reads": "skip",
                "filter": {"op": ["c", "u", "d"], "source.table": "orders"},
            }
        ],
    )
    values: list[Any] = [
        change("r", "orders"),  # 0 snapshot read: skipped
        change("c", "orders"),  # 1 counted
        wrapped(change("u", "orders")),  # 2 counted (JsonConverter's wrapper)
        change("d", "orders"),  # 3 counted
        None,  # 4 the delete's tombstone: skipped
        change("c", "customers"),  # 5 filtered (another table)
        wrapped(change("r", "orders")),  # 6 snapshot read: skipped
        {"databaseName": "shop", "ddl": "ALTER TABLE orders ADD x int", "source": {}},  # 7
        {"status": "BEGIN", "id": "571:53195829", "event_count": None, "ts_ms": 1},  # 8
        {"ts_ms": 1_700_000_000_000},  # 9 a heartbeat's value: skipped
        {"id": 1, "name": "not a change event"},  # 10 bad: no "op"
        b"{broken",  # 11 bad: not JSON
        change("t", "orders"),  # 12 a truncate: filtered (op t is not asked for)
    ]
    await kafka.produce(unique, values, partitions=1, key=row_key)
    async with running_engine(cfg):

        async def all_read() -> bool:
            return await stored_offsets(redis_client, unique, cid) == {f"{unique}|0": 13}

        await wait_for(all_read, 20, what="every offset counted")
        got = await stats(redis_client, unique, cid)
        assert got.get("total") == 3
        assert got.get("skipped") == 6 and got.get("filtered") == 2 and got.get("errors") == 2
        dead = await read_topic(services, f"{unique}.dlq", 2)
        assert len(dead) == 2
        headers = [dict(r.headers) for r in dead]
        assert [int(h["__connect.errors.offset"]) for h in headers] == [10, 11]
        message = headers[0]["__connect.errors.exception.message"].decode()
        assert message == 'not a Debezium change event: no "op" field (fields: id, name)'


async def test_debezium_snapshot_reads_counted_by_default_and_heartbeat_topics_ignored(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    heartbeats = f"__debezium-heartbeat.{unique}"
    await kafka.create_topic(unique, 1)
    await kafka.create_topic(heartbeats, 1)
    cid, hid = f"{unique}-c", f"{unique}-h"
    cfg = make_config(
        services,
        unique,
        [
            {"consumer_id": cid, "kafka_topic": unique, "max_event": 1000, "format": "debezium"},
            {"consumer_id": hid, "kafka_topic": heartbeats, "max_event": 10, "format": "debezium"},
        ],
    )
    await kafka.produce(unique, [change("r", "orders"), change("c", "orders")], partitions=1)
    # whatever a heartbeat topic holds is skipped without being read as a change event
    await kafka.produce(heartbeats, [{"ts_ms": 1}, b"\x00\x01", {"ts_ms": 2}], partitions=1)
    async with running_engine(cfg):

        async def all_read() -> bool:
            return await stored_offsets(redis_client, unique, cid) == {
                f"{unique}|0": 2
            } and await stored_offsets(redis_client, unique, hid) == {f"{heartbeats}|0": 3}

        await wait_for(all_read, 20, what="every offset counted")
        assert (await stats(redis_client, unique, cid)).get("total") == 2
        beat = await stats(redis_client, unique, hid)
        assert beat.get("skipped") == 3 and beat.get("errors", 0) == 0
        assert beat.get("total", 0) == 0
