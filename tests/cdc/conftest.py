"""Fixtures of the change-data-capture tier: one PostgreSQL cluster for the session, a
database per test, and Kafka Connect workers with Debezium's PostgreSQL connector against the
session's Apache Kafka broker (see :mod:`tests.cdc.stack`).

The tier runs on Apache Kafka only (the stack it reproduces); on Tansu, and where PostgreSQL,
Java or the jars cannot be had, its tests skip with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kafkaconsole.embedded import BrokerKind, EmbeddedServices
from tests.cdc.stack import (
    CONNECT_READY_TIMEOUT,
    ConnectWorker,
    Postgres,
    StackUnavailable,
    connect_jars,
    debezium_connector,
)

SCHEMA = """
CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO orders (item, qty) VALUES ('apple', 1), ('pear', 2), ('plum', 3);
INSERT INTO customers (name) VALUES ('ada');
"""
"""Every test's database: two tables, three orders and one customer before Debezium starts
(its snapshot reads them: ``op = r``)."""


@pytest.fixture(scope="session")
def postgres(broker_kind: BrokerKind) -> Iterator[Postgres]:
    if broker_kind != "apache":
        pytest.skip(
            "the change-data-capture tier runs on Apache Kafka only (Kafka Connect and "
            "Debezium against the broker they are made for); this session runs on Tansu"
        )
    try:
        connect_jars()  # fetched before anything starts, so a missing jar skips early
        server = Postgres.start()
    except StackUnavailable as exc:
        pytest.skip(f"the change-data-capture stack cannot run here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database(postgres: Postgres, unique: str) -> str:
    """A fresh database named ``unique`` holding :data:`SCHEMA`."""
    postgres.sql(f"CREATE DATABASE {unique}")
    postgres.sql(SCHEMA, unique)
    return unique


def streaming_pid(postgres: Postgres, slot: str) -> int | None:
    """The WAL sender streaming ``slot`` to Debezium (PostgreSQL's own view), if any."""
    found = postgres.sql(
        "SELECT r.pid FROM pg_stat_replication r JOIN pg_replication_slots s "
        f"ON s.active_pid = r.pid WHERE s.slot_name = '{slot}' AND r.state = 'streaming'"
    )
    return int(found) if found else None


def wait_streaming(
    postgres: Postgres,
    slot: str,
    *,
    replacing: int | None = None,
    timeout: float = CONNECT_READY_TIMEOUT,
) -> int:
    """Until Debezium streams the slot, which it starts once its snapshot is done (through a
    new connection when ``replacing``, the pid of the one before a restart, is given); the WAL
    sender's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = streaming_pid(postgres, slot)
        if pid is not None and pid != replacing:
            return pid
        time.sleep(0.2)
    raise AssertionError(f"Debezium did not start streaming slot {slot} within {timeout:.0f}s")


ConnectStarter = Callable[..., ConnectWorker]


@pytest.fixture
def connect(
    postgres: Postgres,
    database: str,
    services: EmbeddedServices,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ConnectStarter]:
    """Start a Kafka Connect worker running one Debezium connector over the test's database
    (topic prefix = connector name = the database's name); wait until its snapshot is done
    and it streams. Every worker started is stopped afterwards."""
    started: list[ConnectWorker] = []

    def start(
        *, schemas: bool, tables: tuple[str, ...] = ("public.orders",), **extra: str
    ) -> ConnectWorker:
        """``extra``: more connector settings."""
        settings = debezium_connector(
            database,
            postgres,
            database,
            topic_prefix=database,
            tables=list(tables),
            schemas=schemas,
            **extra,
        )
        home = Path(tmp_path_factory.mktemp("connect"))
        worker = ConnectWorker(services.bootstrap_servers, {database: settings}, home)
        started.append(worker)
        worker.start()
        wait_streaming(postgres, settings["slot.name"])
        return worker

    yield start
    for worker in started:
        worker.stop()
