"""``kafkaconsole demo``: a self-contained fleet to look at and steer.

Starts the embedded broker and Redis, creates the demo topics, serves a local webhook receiver,
writes a demo config (printed, and recorded in the runtime folder so that ``kafkaconsole
status`` and the other steering commands find it without ``--config``: :mod:`kafkaconsole.runtime`),
and produces a steady synthetic stream with a few malformed events so the DLQ is exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kafkaconsole.embedded import BrokerKind, EmbeddedServices, free_port
from kafkaconsole.runtime import remove_demo_file, write_demo_file

log = logging.getLogger("kafkaconsole.demo")

TOPICS = {"orders": 3, "clicks": 3, "payments": 2, "logs": 1}

#: About one event in this many on orders, clicks and payments is malformed on purpose.
BAD_EVENT_ONE_IN = 250

BAD_EVENTS_NOTE = (
    f"about 1 in {BAD_EVENT_ONE_IN} events on orders, clicks and payments is malformed on "
    "purpose, so the red Err/DLQ counts and the DLQ topics show how bad events are handled"
)


def hint(config_path: Path) -> str:
    """The one line that tells where the demo's config is and how to steer the demo."""
    return (
        f"config at {config_path}; in another terminal, kafkaconsole status (pause, resume, "
        f"trigger, ...) finds it while the demo runs; {BAD_EVENTS_NOTE}"
    )


def record_trigger(record: dict[str, Any]) -> dict[str, Any]:
    """The demo's ``python`` pipeline: accepts the window and names a run id."""
    return {"run_id": f"demo-{record['idempotency_key']}"}


def demo_config_toml(bootstrap: str, redis_url: str, webhook_url: str, api_port: int) -> str:
    command = orjson.dumps(
        [
            sys.executable,
            "-c",
            "import json,sys; r=json.load(sys.stdin); "
            "print('loaded', len(r.get('events', [])), 'events')",
        ]
    ).decode()
    return f"""# Demo fleet written by `kafkaconsole demo`.
# Its stream is synthetic: {BAD_EVENTS_NOTE}.
[kafka]
bootstrap_servers = "{bootstrap}"
session_timeout_ms = 6000
heartbeat_interval_ms = 1000

[redis]
url = "{redis_url}"

[api]
port = {api_port}

[pipelines.orders_sync]
kind = "python"
target = "kafkaconsole.demo:record_trigger"

[pipelines.clicks_webhook]
kind = "http"
url = "{webhook_url}"

[pipelines.payments_loader]
kind = "command"
command = {command}

[[consumers]]
consumer_id = "orders"
kafka_topic = "orders"
pipeline_name = "orders_sync"
connection_id = "conn-orders"
max_event = 500
max_time = 20
filter = {{ type = "order" }}

[[consumers]]
consumer_id = "clicks"
kafka_topic = "clicks"
pipeline_name = "clicks_webhook"
connection_id = "conn-clicks"
max_event = 1000
max_time = 10
job_type = "async"

[[consumers]]
consumer_id = "payments"
kafka_topic = "payments"
pipeline_name = "payments_loader"
connection_id = "conn-payments"
max_event = 200
max_time = 15
job_type = "batch"

[[consumers]]
consumer_id = "logs"
kafka_topic = "logs"
pipeline_name = "orders_sync"
connection_id = "conn-logs"
max_event = 2000
max_time = 30
format = "raw"
"""


@dataclass
class DemoEnvironment:
    services: EmbeddedServices
    config_path: Path
    webhook_hits: list[dict[str, Any]]


async def _create_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, n, 1) for t, n in TOPICS.items() if t not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


def _event(rng: random.Random, topic: str, i: int) -> bytes:
    if rng.random() < 1 / BAD_EVENT_ONE_IN and topic != "logs":
        return rng.choice([b"{not json", b"\xff\xfe\xfd", b""])
    if topic == "orders":
        return orjson.dumps(
            {
                "type": rng.choice(["order", "order", "order", "refund"]),
                "id": i,
                "amount": round(rng.uniform(5, 500), 2),
            }
        )
    if topic == "clicks":
        return orjson.dumps({"page": rng.choice(["/", "/cart", "/pay"]), "id": i})
    if topic == "payments":
        return orjson.dumps({"payment": i, "currency": "EUR"})
    return f"log line {i}".encode()


async def produce_forever(bootstrap: str, rate: float = 300.0, seed: int = 7) -> None:
    """A steady synthetic stream over the demo topics (about ``rate`` events/s)."""
    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    weights = {"orders": 0.4, "clicks": 0.4, "payments": 0.1, "logs": 0.1}
    try:
        i = 0
        tick = 0.1
        while True:
            for topic, w in weights.items():
                for _ in range(max(1, round(rate * w * tick))):
                    await producer.send(topic, _event(rng, topic, i))
                    i += 1
            await asyncio.sleep(tick)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


async def _webhook_server(hits: list[dict[str, Any]]) -> tuple[web.AppRunner, int]:
    async def receive(request: web.Request) -> web.Response:
        body = await request.json()
        hits.append(body)
        return web.json_response({"run_id": f"hook-{body.get('idempotency_key')}"})

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@contextlib.asynccontextmanager
async def demo_environment(
    workdir: Path | None = None,
    *,
    rate: float = 300.0,
    produce: bool = True,
    broker: BrokerKind = "tansu",
) -> AsyncIterator[DemoEnvironment]:
    """Everything the demo needs, stopped (only what was started here) on exit. ``broker``
    picks Tansu (no set-up) or Apache Kafka (needs Java; jars fetched with Maven once).

    Without ``workdir`` the demo works in a temporary folder, removed on exit; a given
    ``workdir`` is kept (its config and the services' logs stay for a look afterwards)."""
    temporary = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="kafkaconsole-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        services = await asyncio.to_thread(EmbeddedServices.start, log_dir=workdir, broker=broker)
    except BaseException:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    hits: list[dict[str, Any]] = []
    runner = None
    producer_task = None
    path = workdir / "demo.toml"
    try:
        await _create_topics(services.bootstrap_servers)
        runner, hook_port = await _webhook_server(hits)
        path.write_text(
            demo_config_toml(
                services.bootstrap_servers,
                services.redis_url,
                f"http://127.0.0.1:{hook_port}/hook",
                free_port(),
            )
        )
        write_demo_file(path)
        if produce:
            producer_task = asyncio.create_task(produce_forever(services.bootstrap_servers, rate))
        yield DemoEnvironment(services, path, hits)
    finally:
        remove_demo_file(path)
        if producer_task is not None:
            producer_task.cancel()
            with contextlib.suppress(BaseException):
                await producer_task
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(services.stop)
        if temporary:
            await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
