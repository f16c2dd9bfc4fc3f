"""Test helpers: talk to the real broker (create topics, produce), wait for conditions, run
the CLI in-process, serve local HTTP endpoints (webhook receivers)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import Result

from kafkaconsole.embedded import BrokerKind
from kafkaconsole.engine.fleet_status import ConsumerStatus

#: The tests of Redis's topologies (Cluster, Sentinel) run in the session on Apache Kafka and
#: not again in the one on Tansu chosen explicitly (``KAFKACONSOLE_TEST_BROKER=tansu``, the CI's
#: second suite tier): what they test is the Redis side, which the broker does not change.
REDIS_TOPOLOGY_ONCE = pytest.mark.skipif(
    os.environ.get("KAFKACONSOLE_TEST_BROKER") == "tansu",
    reason="Redis Cluster and Sentinel tests run in the Apache Kafka session only",
)

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


# ---- the CLI, run in-process ---------------------------------------------------------------

_cli_lock = threading.Lock()


def invoke_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """Run the CLI in a worker thread (its commands call asyncio.run), one invocation at a
    time (CliRunner swaps sys.stdout)."""

    from typer.testing import CliRunner

    from kafkaconsole.cli.app import app

    def run() -> Result:
        with _cli_lock:
            return CliRunner().invoke(app, list(args), env=env, input=input)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


async def cli(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """:func:`invoke_cli` from a test's event loop, without blocking it (``input``: what
    the command reads on stdin, e.g. a confirmation)."""
    return await asyncio.to_thread(invoke_cli, *args, env=env, input=input)


# ---- local HTTP services -------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def http_server(
    routes: Iterable[tuple[str, str, Handler]], port: int = 0
) -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 serving ``routes`` (method, path, handler) on ``port`` (0:
    a free one); yields its base URL, stops on the way out."""
    web_app = web.Application()
    for method, path, handler in routes:
        web_app.router.add_route(method, path, handler)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class Receiver:
    """A webhook receiver: collects the JSON bodies and headers POSTed to ``url``; answers
    204, or 503 to its first ``fail_first`` requests."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_first = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        return web.Response(status=204)

    def got(self, status: str, alert: str) -> list[dict[str, Any]]:
        """The alert notifications received for ``alert`` with ``status``."""
        return [b for b in self.bodies if b["status"] == status and b["alert"] == alert]

    async def wait(self, status: str, alert: str, timeout: float = 15.0) -> dict[str, Any]:
        """The first notification for ``alert`` with ``status``, once it arrived."""

        async def arrived() -> bool:
            return bool(self.got(status, alert))

        await wait_for(arrived, timeout, what=f"webhook {alert} {status}")
        return self.got(status, alert)[0]

    @asynccontextmanager
    async def serving(self, path: str = "/hook") -> AsyncIterator[Receiver]:
        async with http_server([("POST", path, self.handle)]) as base:
            self.url = base + path
            yield self


def consumer_status(**fields: Any) -> ConsumerStatus:
    """A :class:`ConsumerStatus` of a stopped consumer with nothing counted, with ``fields``
    (any field, by its name or its JSON name) instead."""
    base: dict[str, Any] = {
        "consumer_id": "orders",
        "kafka_topic": "orders",
        "pipeline_name": "orders_sync",
        "job_type": "sync",
        "state": "stopped",
        "paused_by": None,
        "paused_at": None,
        "count": 0,
        "max_event": 100,
        "max_time": 60.0,
        "window_id": 1,
        "window_opened_at": None,
        "window_opened_at_ms": None,
        "time_left": None,
        "fill_ratio": 0.0,
        "total": 0,
        "errors": 0,
        "filtered": 0,
        "windows": 0,
        "windows_by_reason": {},
        "discarded": 0,
        "dlq": 0,
        "rate": 0.0,
        "lag": None,
        "partitions": (),
        "instances": (),
        "last_trigger": None,
        "last_error": None,
        "processor_stall": None,
        "time_lag_seconds": None,
        "time_to_trigger_seconds": None,
        "reported_at_ms": None,
        "verdict": "stopped",
        "verdict_reason": None,
        "verdict_since": None,
        "alerts": (),
    }
    for moment in ("paused_at", "verdict_since"):  # given by either name, once
        if f"{moment}_ms" in fields:
            del base[moment]
    return ConsumerStatus.model_validate(base | fields)
