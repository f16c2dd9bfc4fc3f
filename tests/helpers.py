"""Test helpers that talk to the real broker: create topics, produce, wait for conditions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kafkaconsole.embedded import BrokerKind

#: The session's broker and, when it fell back to Tansu, why (set by conftest.py).
BROKER_KEY = pytest.StashKey[tuple[BrokerKind, str | None]]()


class KafkaHelper:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)

    async def start(self) -> None:
        await self.producer.start()
        await self.admin.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.admin.close()

    async def create_topic(
        self, name: str, partitions: int = 3, configs: dict[str, str] | None = None
    ) -> None:
        await self.admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])

    async def produce(
        self,
        topic: str,
        values: Iterable[Any],
        *,
        partitions: int = 3,
        key: Callable[[int], bytes | None] | None = None,
    ) -> int:
        """Produce values round-robin over partitions; dicts are JSON-encoded. Returns count."""
        n = 0
        futures = []
        for i, value in enumerate(values):
            if isinstance(value, dict | list):
                raw = orjson.dumps(value)
            elif isinstance(value, str):
                raw = value.encode()
            else:
                raw = value
            futures.append(
                await self.producer.send(
                    topic, raw, partition=i % partitions, key=key(i) if key else None
                )
            )
            n += 1
        await self.producer.flush()
        for fut in futures:
            await fut
        return n


async def wait_for(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
