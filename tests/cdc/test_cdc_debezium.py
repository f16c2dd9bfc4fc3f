"""Change data capture on the real stack: PostgreSQL -> Debezium (Kafka Connect) -> Apache
Kafka -> kafkaconsole -> pipeline.

Each test has its own database (three orders and a customer before Debezium starts), its own
Kafka Connect worker running Debezium's PostgreSQL connector (pgoutput, JsonConverter with or
without the schema wrapper) and its own consumers. The tests change rows with SQL, read back
what Debezium wrote to Kafka (so the expectations come from the topic, not from assumptions
about Debezium), and check what kafkaconsole counted:

- the windows hold exactly the changes made, by operation (``filter`` on ``op``), snapshot
  reads counted or left out, deletes' tombstones skipped without an error (nothing in the DLQ);
- a window triggers its pipeline (a webhook) whose payload carries the offsets of the changes;
- one consumer reads several table topics (``topic_pattern``, ``kafka_topics``);
- a crash of Kafka Connect (SIGKILL) re-delivers the changes since its last offset flush, as
  Debezium documents (at-least-once): the copies are new Kafka records at new offsets, and
  kafkaconsole, which counts Kafka records exactly once, counts them again.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from kafkaconsole.embedded import EmbeddedServices
from tests.cdc.conftest import ConnectStarter, streaming_pid, wait_streaming
from tests.cdc.stack import CONNECT_READY_TIMEOUT, ConnectWorker, Postgres
from tests.engine_support import make_config, running_engine
from tests.helpers import Receiver, wait_for

pytestmark = pytest.mark.cdc

CHANGE_TIMEOUT = 60.0
"""Seconds for a committed change to reach Kafka through Debezium (well under one here)."""


# ---- reading what Debezium wrote -----------------------------------------------------------


def envelope(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any] | None:
    """The Debezium envelope of a record (unwrapped from JsonConverter's schema wrapper), or
    None for a tombstone."""
    if record.value is None:
        return None
    value: dict[str, Any] = orjson.loads(record.value)
    if set(value) == {"schema", "payload"}:
        payload: dict[str, Any] = value["payload"]
        return payload
    return value


def op_of(record: ConsumerRecord[bytes, bytes]) -> str | None:
    body = envelope(record)
    return None if body is None else str(body["op"])


async def read_topic(
    services: EmbeddedServices, topic: str, count: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` records of a one-partition topic, once they are all there."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=services.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    partition = TopicPartition(topic, 0)
    try:

        async def exists() -> bool:
            return topic in await consumer.topics()

        await wait_for(exists, CHANGE_TIMEOUT, 0.2, what=f"topic {topic}")
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        got: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + CHANGE_TIMEOUT
        while len(got) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(partition, timeout_ms=500)
            got += batch.get(partition, [])
        assert len(got) >= count, f"{topic}: {len(got)} records, expected {count}"
        return got[:count]
    finally:
        await consumer.stop()


async def topic_size(services: EmbeddedServices, topic: str) -> int:
    """How many records a topic's partitions hold (0 for a topic that does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=services.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            return 0
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        await consumer.stop()


# ---- what kafkaconsole counted -------------------------------------------------------------


async def int_hash(redis_client: aredis.Redis, key: str) -> dict[str, int]:
    raw = await redis_client.hgetall(key)
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


async def stats(redis_client: aredis.Redis, prefix: str, consumer_id: str) -> dict[str, int]:
    return await int_hash(redis_client, f"{prefix}:{consumer_id}:stats")


async def open_count(redis_client: aredis.Redis, prefix: str, consumer_id: str) -> int:
    return int(await redis_client.get(f"{prefix}:{consumer_id}:events") or 0)


async def wait_consumed(
    redis_client: aredis.Redis, prefix: str, consumer_id: str, ends: dict[str, int]
) -> None:
    """Until the consumer has dealt with every record up to ``ends`` (topic -> end offset of
    its one partition): its stored next offset to count has reached each end."""

    async def done() -> bool:
        offsets = await int_hash(redis_client, f"{prefix}:{consumer_id}:offsets")
        return all(offsets.get(f"{topic}|0", 0) >= end for topic, end in ends.items())

    await wait_for(done, CHANGE_TIMEOUT, 0.1, what=f"{consumer_id} to consume {ends}")


def consumer(consumer_id: str, dlq: str, **settings: Any) -> dict[str, Any]:
    return {
        "consumer_id": consumer_id,
        "format": "debezium",
        "max_event": 1000,
        "error_handling": {"on_error": "dlq", "dlq_topic": dlq},
        **settings,
    }


def webhook(receiver: Receiver) -> dict[str, dict[str, Any]]:
    return {
        "hook": {
            "kind": "http",
            "url": receiver.url,
            "timeout": 10.0,
            "retry_policy": {"max_attempts": 3, "initial_backoff": 0.1},
        }
    }


# ---- the tests -----------------------------------------------------------------------------


async def test_windows_hold_exactly_the_changes_made_by_operation(
    services: EmbeddedServices,
    postgres: Postgres,
    database: str,
    connect: ConnectStarter,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    connect(schemas=True)  # JsonConverter's {"schema", "payload"} wrapper
    postgres.sql(
        "INSERT INTO orders (item, qty) VALUES ('fig', 4), ('kiwi', 5);"
        "DELETE FROM orders WHERE item = 'pear';"
        "INSERT INTO orders (item, qty) VALUES ('lime', 6), ('date', 7);"
        "UPDATE orders SET qty = qty + 10 WHERE item IN ('apple', 'fig');",
        database,
    )
    topic = f"{database}.public.orders"
    records = await read_topic(services, topic, 11)
    # what Debezium made of it: 3 snapshot reads, 2 inserts, a delete and its tombstone, 2
    # inserts, 2 updates (one per row), in commit order
    ops = ["r", "r", "r", "c", "c", "d", None, "c", "c", "u", "u"]
    assert [op_of(r) for r in records] == ops
    writes = [r.offset for r in records if op_of(r) in ("c", "u")]
    dlq = f"{unique}.dlq"
    async with Receiver().serving() as receiver:
        cfg = make_config(
            services,
            unique,
            [
                consumer("all", dlq, kafka_topic=topic, snapshot_reads="count"),
                consumer("changes", dlq, kafka_topic=topic, snapshot_reads="skip"),
                consumer("writes", dlq, kafka_topic=topic, filter={"op": ["c", "u"]}, max_event=6),
                consumer("deletes", dlq, kafka_topic=topic, filter={"op": ["d"]}),
                consumer("tombstones", dlq, kafka_topic=topic, tombstones="count"),
            ],
            pipelines=webhook(receiver),
        )
        async with running_engine(cfg):
            for cid in ("all", "changes", "writes", "deletes", "tombstones"):
                await wait_consumed(redis_client, unique, cid, {topic: 11})

            async def triggered() -> bool:
                return len(receiver.bodies) >= 1

            await wait_for(triggered, 30, what="the writes window's webhook")
            counted = {
                cid: await open_count(redis_client, unique, cid)
                for cid in ("all", "changes", "deletes", "tombstones")
            }
            tallies = {
                cid: {
                    key: value
                    for key, value in (await stats(redis_client, unique, cid)).items()
                    if key in ("total", "errors", "filtered", "skipped") and value
                }
                for cid in ("all", "changes", "writes", "deletes", "tombstones")
            }
    assert counted == {
        "all": 10,  # 3 reads + 4 inserts + 2 updates + 1 delete; the tombstone is skipped
        "changes": 7,  # the snapshot's reads left out
        "deletes": 1,
        "tombstones": 11,  # tombstones = "count": the delete's tombstone too
    }
    # no errors anywhere; skipped = tombstones (and snapshot reads when left out), filtered =
    # changes of another operation
    assert tallies == {
        "all": {"total": 10, "skipped": 1},
        "changes": {"total": 7, "skipped": 4},
        "writes": {"total": 6, "filtered": 4, "skipped": 1},
        "deletes": {"total": 1, "filtered": 9, "skipped": 1},
        "tombstones": {"total": 11},
    }
    assert await topic_size(services, dlq) == 0
    [body] = receiver.bodies
    assert body["consumer_id"] == "writes" and body["reason"] == "count" and body["count"] == 6
    assert body["offsets"] == [
        {"topic": topic, "partition": 0, "first": writes[0], "last": writes[-1]}
    ]


async def test_one_consumer_reads_every_table_topic_of_plain_json(
    services: EmbeddedServices,
    postgres: Postgres,
    database: str,
    connect: ConnectStarter,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    # plain JSON; every table of the schema, those created later too; a heartbeat every
    # 200 ms to __debezium-heartbeat.<prefix>
    connect(
        schemas=False,
        tables=(r"public\..*",),
        **{"publication.autocreate.mode": "all_tables", "heartbeat.interval.ms": "200"},
    )
    postgres.sql(
        "INSERT INTO customers (name) VALUES ('grace'), ('linus');"
        "UPDATE orders SET qty = 0 WHERE item = 'plum';",
        database,
    )
    orders, customers = f"{database}.public.orders", f"{database}.public.customers"
    invoices = f"{database}.public.invoices"
    assert [op_of(r) for r in await read_topic(services, orders, 4)] == ["r"] * 3 + ["u"]
    assert [op_of(r) for r in await read_topic(services, customers, 3)] == ["r", "c", "c"]
    heartbeats = f"__debezium-heartbeat.{database}"
    await read_topic(services, heartbeats, 2)
    dlq = f"{unique}.dlq"
    # the table topics and the heartbeat topic, which a pattern never subscribes to
    pattern = rf"^(__debezium-heartbeat\.{database}|{database}\.public\..*)$"
    async with Receiver().serving() as receiver:
        cfg = make_config(
            services,
            unique,
            [
                consumer("tables", dlq, topic_pattern=pattern, max_event=7),
                consumer("listed", dlq, kafka_topics=[orders, customers]),
                consumer(
                    "orders-only", dlq, topic_pattern=pattern, filter={"source.table": "orders"}
                ),
            ],
            pipelines=webhook(receiver),
            kafka={"metadata_max_age_ms": 1000},  # a new topic is seen within a second
        )
        async with running_engine(cfg):
            for cid in ("tables", "listed", "orders-only"):
                await wait_consumed(redis_client, unique, cid, {orders: 4, customers: 3})

            async def triggered() -> bool:
                return len(receiver.bodies) >= 1

            await wait_for(triggered, 30, what="the tables window's webhook")
            listed = await open_count(redis_client, unique, "listed")
            orders_only = await open_count(redis_client, unique, "orders-only")
            # a table created now: Debezium writes a new topic, which the pattern reads
            postgres.sql(
                "CREATE TABLE invoices (id serial PRIMARY KEY, total int NOT NULL);"
                "INSERT INTO invoices (total) VALUES (10), (20);",
                database,
            )
            assert [op_of(r) for r in await read_topic(services, invoices, 2)] == ["c", "c"]
            for cid in ("tables", "orders-only"):
                ends = {orders: 4, customers: 3, invoices: 2}
                await wait_consumed(redis_client, unique, cid, ends)
            later = {
                cid: await open_count(redis_client, unique, cid)
                for cid in ("tables", "listed", "orders-only")
            }
            errors = [
                (await stats(redis_client, unique, cid)).get("errors", 0)
                for cid in ("tables", "listed", "orders-only")
            ]
            read = await int_hash(redis_client, f"{unique}:tables:offsets")
    assert (listed, orders_only) == (7, 4)
    [body] = receiver.bodies
    assert body["consumer_id"] == "tables" and body["count"] == 7
    assert sorted(body["offsets"], key=lambda r: r["topic"]) == [
        {"topic": customers, "partition": 0, "first": 0, "last": 2},
        {"topic": orders, "partition": 0, "first": 0, "last": 3},
    ]
    # the new table's 2 rows open the pattern's next window; the list and the filter on
    # source.table leave them out
    assert later == {"tables": 2, "listed": 7, "orders-only": 4}
    assert errors == [0, 0, 0]
    assert set(read) == {f"{orders}|0", f"{customers}|0", f"{invoices}|0"}  # no heartbeat
    assert await topic_size(services, dlq) == 0


def stored_offset(worker: ConnectWorker, name: str) -> dict[str, Any]:
    """The source offset Kafka Connect has stored for the connector (its REST API)."""
    with urllib.request.urlopen(f"{worker.url}/connectors/{name}/offsets", timeout=10) as r:
        offsets = json.loads(r.read())["offsets"]
    assert len(offsets) == 1, offsets
    offset: dict[str, Any] = offsets[0]["offset"]
    return offset


def restart_tasks(worker: ConnectWorker, name: str, postgres: Postgres) -> None:
    """Restart the connector and its task through the REST API: a graceful stop, which
    commits the task's offsets, then a start; until the new task streams and Kafka Connect
    has stored an offset."""
    before = streaming_pid(postgres, name)
    request = urllib.request.Request(
        f"{worker.url}/connectors/{name}/restart?includeTasks=true", method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    wait_streaming(postgres, name, replacing=before)
    worker.wait_running(name, time.monotonic() + CONNECT_READY_TIMEOUT)


def identity(record: ConsumerRecord[bytes, bytes]) -> tuple[Any, ...]:
    """What makes a change the same change: its key, operation, row images and position in
    the WAL (``source.lsn``); the envelope's ``ts_ms`` (when Debezium handled it) differs."""
    body = envelope(record)
    if body is None:
        return (record.key, None)
    return (record.key, body["op"], body["before"], body["after"], body["source"]["lsn"])


async def test_a_kafka_connect_crash_redelivers_and_the_copies_are_counted_again(
    services: EmbeddedServices,
    postgres: Postgres,
    database: str,
    connect: ConnectStarter,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    worker = connect(schemas=False)
    # Kafka Connect flushes source offsets every offset.flush.interval.ms (10 minutes in this
    # worker) and when a task stops gracefully: restart the task once, so the stored offset is
    # the end of the snapshot and no flush happens during the test
    restart_tasks(worker, database, postgres)
    before_crash = stored_offset(worker, database)
    assert before_crash["snapshot_completed"] is True
    postgres.sql(
        "INSERT INTO orders (item, qty) VALUES ('fig', 4), ('kiwi', 5);"
        "UPDATE orders SET qty = 9 WHERE item = 'apple';"
        "DELETE FROM orders WHERE item = 'pear';",
        database,
    )
    topic = f"{database}.public.orders"
    first = await read_topic(services, topic, 8)
    assert [op_of(r) for r in first] == ["r"] * 3 + ["c", "c", "u", "d", None]
    dlq = f"{unique}.dlq"
    cfg = make_config(
        services,
        unique,
        [consumer("orders", dlq, kafka_topic=topic, snapshot_reads="skip")],
    )
    async with running_engine(cfg):
        await wait_consumed(redis_client, unique, "orders", {topic: 8})
        assert await open_count(redis_client, unique, "orders") == 4

        streaming = streaming_pid(postgres, database)
        worker.kill()  # a crash: the task's offsets since the last flush are lost
        worker.start()
        wait_streaming(postgres, database, replacing=streaming)
        assert stored_offset(worker, database) == before_crash
        everything = await read_topic(services, topic, 13)
        await wait_consumed(redis_client, unique, "orders", {topic: 13})
        assert await topic_size(services, topic) == 13  # nothing else was re-sent
        counted = await open_count(redis_client, unique, "orders")
        tally = await stats(redis_client, unique, "orders")
    # Debezium resent every change after the stored offset, tombstone included: the same
    # changes (same key, row images and source.lsn) as new Kafka records at offsets 8-12
    again = everything[8:]
    assert [identity(r) for r in again] == [identity(r) for r in first[3:]]
    assert [r.offset for r in again] == [8, 9, 10, 11, 12]
    # kafkaconsole counts Kafka records, each offset once: the copies count again
    assert counted == 8
    assert Counter(op_of(r) for r in everything[3:] if op_of(r)) == {"c": 4, "u": 2, "d": 2}
    # no errors; skipped: the 3 snapshot reads and both deliveries of the tombstone
    assert (tally["total"], tally.get("errors", 0), tally["skipped"]) == (8, 0, 5)
    assert await topic_size(services, dlq) == 0
