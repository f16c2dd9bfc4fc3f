"""What the dead-letter topic receives, and that no single event can block its consumer.

Real broker and Redis: an event over ``max_event_bytes`` (2 MiB, larger than the DLQ accepts)
is dead-lettered cut to fit, with its key, headers, timestamp and Kafka Connect's full error
header set; ``format = "raw"`` honours the cap too; and an event the DLQ refuses even cut down
is recorded in Redis as an error, logged, counted and skipped.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.dlq import DLQ_MAX_RECORD_BYTES, DeadLetterSink
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for

BIG = 2 * 1024 * 1024
#: the source topic takes events this large (Apache Kafka's default is about 1 MiB); the DLQ
#: topic keeps the default, so it refuses them whole
BIG_TOPIC = {"max.message.bytes": str(4 * 1024 * 1024)}
CONNECT_HEADERS = {
    f"__connect.errors.{name}"
    for name in (
        "topic",
        "partition",
        "offset",
        "connector.name",
        "task.id",
        "stage",
        "class.name",
        "exception.class.name",
        "exception.message",
        "exception.stacktrace",
    )
}


def failing_processor(event: Any) -> Any:
    if isinstance(event, dict) and event.get("explode"):
        raise KeyError("no such customer")
    return event


async def produce_raw(
    services: EmbeddedServices,
    topic: str,
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]], int | None]],
) -> None:
    """Produce (key, value, headers, timestamp_ms) records to partition 0, big ones too."""
    producer = AIOKafkaProducer(
        bootstrap_servers=services.bootstrap_servers, max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        for key, value, headers, ts in records:
            await producer.send_and_wait(
                topic, value, key=key, headers=headers, partition=0, timestamp_ms=ts
            )
    finally:
        await producer.stop()


async def read_all(services: EmbeddedServices, topic: str, n: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=services.bootstrap_servers,
        auto_offset_reset="earliest",
        fetch_max_bytes=4 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + 15
        while len(out) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def counted(redis_client: aredis.Redis, prefix: str, cid: str) -> dict[str, int]:
    stats = await redis_client.hgetall(f"{prefix}:{cid}:stats")
    return {k.decode(): int(v) for k, v in stats.items()}


@pytest.mark.parametrize("fmt", ["json", "raw"])
async def test_an_event_larger_than_the_dlq_accepts_is_cut_and_never_blocks(
    services: EmbeddedServices, redis_client: aredis.Redis, unique: str, fmt: str
) -> None:
    topic = f"{unique}-{fmt}"
    kafka = KafkaHelper(services.bootstrap_servers)
    await kafka.start()
    try:
        await kafka.create_topic(topic, 1, BIG_TOPIC)
    finally:
        await kafka.stop()
    big = b'{"pad": "' + b"x" * (BIG - 11) + b'"}'
    stamp = 1_700_000_000_123
    small = [(None, orjson.dumps({"i": i}), [], None) for i in range(5)]
    await produce_raw(
        services,
        topic,
        [
            *small,
            (b"order-42", big, [("trace-id", b"abc"), ("source", b"shop")], stamp),
            *small,
        ],
    )
    cid = f"c-{fmt}"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": topic, "max_event": 1000, "format": fmt}],
    )
    async with running_engine(cfg) as engine:

        async def all_counted() -> bool:
            return (await counted(redis_client, unique, cid)).get("total") == 10

        await wait_for(all_counted, 20, what="every small event counted")
        stats = await counted(redis_client, unique, cid)
        assert stats["errors"] == 1
        [dead] = await read_all(services, f"{topic}.dlq", 1)
        headers = dict(dead.headers)
        assert set(headers) >= CONNECT_HEADERS
        assert headers["__connect.errors.topic"] == topic.encode()
        assert headers["__connect.errors.partition"] == b"0"
        assert headers["__connect.errors.offset"] == b"5"
        assert headers["__connect.errors.connector.name"] == cid.encode()
        assert headers["__connect.errors.task.id"] == engine.instance_id.encode()
        assert headers["__connect.errors.stage"] == b"validate"
        assert headers["__connect.errors.class.name"] == f"kafkaconsole.format.{fmt}".encode()
        assert headers["__connect.errors.exception.class.name"] == b"ValueError"
        assert headers["__connect.errors.exception.message"] == (
            f"event of {BIG} bytes exceeds max_event_bytes (1048576)".encode()
        )
        # the original record: key, headers and timestamp kept; the value cut to fit
        assert dead.key == b"order-42"
        assert headers["trace-id"] == b"abc" and headers["source"] == b"shop"
        assert dead.timestamp == stamp
        assert headers["kafkaconsole.original.size"] == str(BIG).encode()
        assert headers["kafkaconsole.truncated"] == b"value"
        assert 0 < len(dead.value) <= DLQ_MAX_RECORD_BYTES and big.startswith(dead.value)
        snap = (await engine.refresh_snapshot()).consumer(cid)
        assert snap is not None and snap.dlq == 1 and snap.dlq_refused == 0


async def test_a_processor_failure_carries_connects_full_header_set(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    await kafka.create_topic(unique, 1)
    await produce_raw(
        services,
        unique,
        [
            (None, b'{"i": 0}', [], None),
            (b"k1", b'{"explode": true}', [("h", b"v")], 1_700_000_000_999),
            (None, b"{not json", [], None),
        ],
    )
    cfg = make_config(
        services,
        unique,
        [
            {
                "consumer_id": unique,
                "kafka_topic": unique,
                "max_event": 1000,
                "processor": "tests.test_dlq_records:failing_processor",
            }
        ],
    )
    async with running_engine(cfg):

        async def done() -> bool:
            return (await counted(redis_client, unique, unique)).get("errors") == 2

        await wait_for(done, 20, what="both bad events handled")
        failed, undecodable = await read_all(services, f"{unique}.dlq", 2)
        h = {k: v.decode() for k, v in failed.headers}
        assert set(h) >= CONNECT_HEADERS
        assert (failed.key, failed.value, failed.timestamp) == (
            b"k1",
            b'{"explode": true}',
            1_700_000_000_999,
        )
        assert h["h"] == "v"
        assert h["__connect.errors.offset"] == "1"
        assert h["__connect.errors.stage"] == "process"
        assert h["__connect.errors.class.name"] == "tests.test_dlq_records:failing_processor"
        assert h["__connect.errors.exception.class.name"] == "KeyError"
        assert h["__connect.errors.exception.message"] == "'no such customer'"
        trace = h["__connect.errors.exception.stacktrace"]
        assert trace.startswith("Traceback (most recent call last):")
        assert 'raise KeyError("no such customer")' in trace
        assert "kafkaconsole.original.size" not in h  # nothing was cut
        u = {k: v.decode() for k, v in undecodable.headers}
        assert u["__connect.errors.stage"] == "decode"
        assert u["__connect.errors.class.name"] == "kafkaconsole.format.json"
        assert u["__connect.errors.exception.class.name"] == "JSONDecodeError"
        assert "JSONDecodeError" in u["__connect.errors.exception.stacktrace"]


async def test_an_event_the_dlq_refuses_even_cut_is_recorded_and_skipped(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The dead-letter producer here has a 2 KB request limit: the 1 MiB cut and every
    smaller try under the retry policy are refused; the consumer records the event in Redis,
    logs it, counts it in metrics and goes on counting."""
    await kafka.create_topic(unique, 2, BIG_TOPIC)
    big = b'{"pad": "' + b"x" * (BIG - 11) + b'"}'
    await produce_raw(
        services,
        unique,
        [(None, orjson.dumps({"i": i}), [], None) for i in range(3)]
        + [(None, big, [], None)]
        + [(None, orjson.dumps({"i": i}), [], None) for i in range(3)],
    )
    await kafka.produce(unique, [{"p1": i} for i in range(4)], partitions=2)
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": unique, "kafka_topic": unique, "max_event": 1000}],
        pipelines={
            "record": {
                "kind": "python",
                "target": "tests.pipeline_targets:record",
                "retry_policy": {"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.05},
            }
        },
    )
    small = AIOKafkaProducer(bootstrap_servers=services.bootstrap_servers, max_request_size=2048)
    await small.start()
    try:
        async with running_engine(cfg) as engine:
            runner = engine._consumers[unique].runner
            runner.dlq = DeadLetterSink(small, task_id=engine.instance_id)

            async def all_counted() -> bool:
                return (await counted(redis_client, unique, unique)).get("total") == 10

            await wait_for(all_counted, 20, what="every other event counted")
            stats = await counted(redis_client, unique, unique)
            assert stats["errors"] == 1 and stats["dlq_refused"] == 1
            [(_, entry)] = await redis_client.xrange(f"{unique}:{unique}:dlq_refused")
            refused = {k.decode(): v.decode() for k, v in entry.items()}
            assert (refused["partition"], refused["offset"], refused["bytes"]) == (
                "0",
                "3",
                str(BIG),
            )
            assert refused["stage"] == "validate"
            assert refused["dlq_error"].startswith("MessageSizeTooLargeError")
            assert any(
                "bad event not dead-lettered, skipped" in r.getMessage()
                and f"{unique}[0]@3" in r.getMessage()
                for r in caplog.records
            )
            snap = (await engine.refresh_snapshot()).consumer(unique)
            assert snap is not None and snap.dlq_refused == 1 and snap.dlq == 0
    finally:
        await small.stop()
