"""Session fixtures: a real Kafka broker and a real Redis server for the whole run.

Both come from :mod:`kafkaconsole.embedded` (the same launcher ``kafkaconsole demo`` uses).
Tests isolate themselves by unique topic names and Redis key prefixes, not by restarts.

The broker is chosen by ``KAFKACONSOLE_TEST_BROKER``: ``apache`` (Apache Kafka, KRaft, from
the pinned jars; an error if Java or Maven is missing), ``tansu`` (the demo's broker), or
``auto`` (the default): Apache Kafka when Java and Maven are there, else Tansu with a notice
in the report's header and summary.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aredis

from kafkaconsole import kafka_jars
from kafkaconsole.embedded import (
    BrokerKind,
    EmbeddedError,
    EmbeddedServices,
    ManagedProcess,
    pick_broker,
    start_kafka,
)
from tests.helpers import BROKER_KEY as _BROKER_KEY
from tests.helpers import KafkaHelper

_counter = itertools.count()


def choose_broker() -> tuple[BrokerKind, str | None]:
    """The session's broker and, when it fell back to Tansu, why (one line)."""
    try:
        return pick_broker(os.environ.get("KAFKACONSOLE_TEST_BROKER", "auto"))
    except EmbeddedError as exc:
        raise pytest.UsageError(f"KAFKACONSOLE_TEST_BROKER: {exc}") from exc


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config.stash[_BROKER_KEY] = choose_broker()


def _notice(config: pytest.Config) -> str | None:
    _, reason = config.stash.get(_BROKER_KEY, ("tansu", None))
    if reason is None:
        return None
    return f"NOTICE: tests run on Tansu, not Apache Kafka: {reason}"


def pytest_report_header(config: pytest.Config) -> list[str]:
    kind, _ = config.stash.get(_BROKER_KEY, ("tansu", None))
    name = f"Apache Kafka {kafka_jars.KAFKA_VERSION}" if kind == "apache" else "Tansu"
    lines = [f"kafka broker: {name} (KAFKACONSOLE_TEST_BROKER to choose)"]
    notice = _notice(config)
    return [*lines, notice] if notice else lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # printed also with -q, which hides the report header
    header, *notice = pytest_report_header(terminalreporter.config)
    terminalreporter.write_line(header)
    for line in notice:
        terminalreporter.write_line(line, yellow=True, bold=True)


@pytest.fixture(scope="session")
def broker_kind(pytestconfig: pytest.Config) -> BrokerKind:
    """The kind of broker this session runs on: ``apache`` or ``tansu``."""
    return pytestconfig.stash[_BROKER_KEY][0]


@pytest.fixture(scope="session")
def services(
    tmp_path_factory: pytest.TempPathFactory, broker_kind: BrokerKind
) -> Iterator[EmbeddedServices]:
    log_dir = Path(tmp_path_factory.mktemp("services"))
    with EmbeddedServices.start(log_dir=log_dir, broker=broker_kind) as svc:
        yield svc


@pytest.fixture
def own_broker(
    broker_kind: BrokerKind, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ManagedProcess]]:
    """Start a single-node broker of the session's kind for one test (to freeze, kill or
    restart it without touching the session's); every one started is stopped afterwards."""
    started: list[ManagedProcess] = []

    def start(port: int | None = None, **properties: str) -> ManagedProcess:
        """``port``: where it listens (default: a free port); ``properties`` configure an
        Apache Kafka broker (Tansu takes none)."""
        log_dir = Path(tmp_path_factory.mktemp("own-broker"))
        settings = properties if broker_kind == "apache" else None
        node = start_kafka(broker_kind, log_dir=log_dir, properties=settings, port=port)[0]
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()


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
