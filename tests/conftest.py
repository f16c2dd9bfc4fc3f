"""Session fixtures: a real Kafka-protocol broker and a real Redis server for the whole run.

Both come from :mod:`kafkaconsole.embedded` (the same launcher ``kafkaconsole demo`` uses).
Tests isolate themselves by unique topic names and Redis key prefixes, not by restarts.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices
from tests.helpers import KafkaHelper

_counter = itertools.count()


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServices]:
    log_dir = Path(tmp_path_factory.mktemp("services"))
    with EmbeddedServices.start(log_dir=log_dir) as svc:
        yield svc


@pytest.fixture
def unique() -> str:
    """A short unique name for topics, key prefixes and consumer ids of one test."""
    return f"t{next(_counter)}{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def redis_client(services: EmbeddedServices) -> AsyncIterator[aredis.Redis]:
    client = aredis.from_url(services.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def kafka(services: EmbeddedServices) -> AsyncIterator[KafkaHelper]:
    helper = KafkaHelper(services.bootstrap_servers)
    await helper.start()
    try:
        yield helper
    finally:
        await helper.stop()
