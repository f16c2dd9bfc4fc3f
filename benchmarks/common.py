"""Shared pieces of the benchmark driver and its workers: events, production, configs, stats."""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kafkaconsole.config.models import AppConfig

EVENT_BYTES = 200
#: One event in ten is a refund; the JSON cases filter on ``type = "order"`` (90 % match).
FILTER = {"type": "order"}


def keep(event: object) -> object:
    """The processor of the engine-processor case: keeps every event as it is (so the case
    measures the cost of running a hook off the event loop, not the hook's own work)."""
    return event


def event(i: int) -> bytes:
    """A JSON event of exactly :data:`EVENT_BYTES` bytes."""
    body = {
        "id": i,
        "type": "refund" if i % 10 == 9 else "order",
        "user": f"user-{i % 9973:04d}",
        "amount": round((i % 10_000) / 100, 2),
        "currency": "EUR",
        "ts": 1_700_000_000_000 + i,
        "pad": "",
    }
    raw = orjson.dumps(body)
    body["pad"] = "x" * (EVENT_BYTES - len(raw))
    raw = orjson.dumps(body)
    assert len(raw) == EVENT_BYTES, len(raw)
    return raw


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, n, 1) for t, n in topics.items()])
    finally:
        await admin.close()


async def produce_bulk(
    bootstrap: str, topic: str, n: int, partitions: int, start: int = 0, keyed: bool = False
) -> dict[int, int]:
    """Produce ``n`` events spread evenly over ``partitions``; returns the end offset of each.

    ``keyed``: every record of partition ``p`` has the key ``p<p>`` (Quix Streams' windows
    are per key and skip records without one: one key per partition gives one window per
    partition, the job the other cases do).

    Record batches of 64 KB (aiokafka's default is 16 KB): fast to produce, and the size a
    busy real producer makes; the broker hands whole batches to fetches.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        max_batch_size=64 * 1024,
        max_request_size=2 * 1024 * 1024,
        linger_ms=5,
        acks=1,
    )
    await producer.start()
    ends: dict[int, int] = {}
    try:
        pending: list[tuple[int, int, asyncio.Future[Any]]] = []
        i = start
        stop = start + n
        part = 0
        while i < stop:
            batch = producer.create_batch()
            count = 0
            key = f"p{part}".encode() if keyed else None
            while i < stop and batch.append(key=key, value=event(i), timestamp=None):
                i += 1
                count += 1
            batch.close()
            fut = await producer.send_batch(batch, topic, partition=part)
            pending.append((part, count, fut))
            part = (part + 1) % partitions
            if len(pending) >= 16:
                await _settle(pending, ends)
        await _settle(pending, ends)
    finally:
        await producer.stop()
    return ends


async def make_backlog(bootstrap: str, topic: str, events: int, partitions: int) -> dict[int, int]:
    """Create ``topic`` with ``partitions`` and fill it with ``events`` (:func:`produce_bulk`),
    saying on stderr how long that took; returns each partition's end offset."""
    await create_topics(bootstrap, {topic: partitions})
    t = time.monotonic()
    ends = await produce_bulk(bootstrap, topic, events, partitions)
    print(
        f"produced {sum(ends.values()):,} events in {time.monotonic() - t:.1f} s", file=sys.stderr
    )
    return ends


async def _settle(
    pending: list[tuple[int, int, asyncio.Future[Any]]], ends: dict[int, int]
) -> None:
    for part, count, fut in pending:
        meta = await fut
        ends[part] = max(ends.get(part, 0), meta.offset + count)
    pending.clear()


def app_config(
    bootstrap: str,
    redis_url: str,
    prefix: str,
    consumers: list[dict[str, Any]],
    pipeline: str = "benchmarks.noop:noop",
    **kafka: Any,
) -> AppConfig:
    """A config like a user would write: a no-op ``python`` pipeline, exact counting on."""
    return AppConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap, **kafka},
            "redis": {"url": redis_url, "key_prefix": prefix},
            "api": {"enabled": False},
            "pipelines": {"noop": {"kind": "python", "target": pipeline}},
            "consumers": [
                {"pipeline_name": "noop", "connection_id": "bench", "max_time": 3600, **c}
                for c in consumers
            ],
        }
    )


# ---- statistics -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int


def summary(values: Sequence[float]) -> Summary:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return Summary(math.nan, math.nan, math.nan, 0)
    return Summary(statistics.median(vals), min(vals), max(vals), len(vals))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank on the sorted values."""
    vals = sorted(values)
    if not vals:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(vals)))
    return vals[min(rank, len(vals)) - 1]
