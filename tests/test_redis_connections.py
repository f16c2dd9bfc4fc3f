"""The Redis connections an instance holds are bounded and known: one pool of
``[redis] max_connections`` plus a few dedicated connections; a server whose ``maxclients``
cannot fit them is refused at start with one line; pool exhaustion is reported once per
episode, never as a stream of errors."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kafkaconsole.config.models import AppConfig, RedisConfig
from kafkaconsole.embedded import EmbeddedServices, ManagedProcess, start_redis
from kafkaconsole.engine.clients import (
    DEDICATED_REDIS_CONNECTIONS,
    PoolExhausted,
    engine_redis_client,
    pool_exhausted,
)
from kafkaconsole.engine.dlq import DeadLetterSink
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.pipelines import build_pipeline
from tests.engine_support import fleet_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A Redis server of this test's own that accepts at most 20 clients."""
    server = start_redis(extra_args=["--maxclients", "20"], workdir=tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_a_server_whose_maxclients_cannot_fit_the_instance_is_refused_at_start(
    small_redis: ManagedProcess, services: EmbeddedServices, tmp_path: Path
) -> None:
    config = tmp_path / "kc.toml"
    config.write_text(
        f"""
[kafka]
bootstrap_servers = "{services.bootstrap_servers}"
[redis]
url = "redis://127.0.0.1:{small_redis.port}/0"
max_connections = 32
[api]
enabled = false
[pipelines.noop]
kind = "python"
target = "benchmarks.noop:noop"
[[consumers]]
consumer_id = "c1"
kafka_topic = "never-read"
pipeline_name = "noop"
connection_id = "x"
max_event = 10
max_time = 60
"""
    )
    done = subprocess.run(
        [sys.executable, "-m", "kafkaconsole", "run", "--no-ui", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 1, done.stderr
    out = done.stdout + done.stderr
    assert "Traceback" not in out
    [line] = [line for line in out.splitlines() if "maxclients" in line]
    needed = 32 + DEDICATED_REDIS_CONNECTIONS - 4  # no HTTP API
    assert (
        f"cannot start: Redis at redis://127.0.0.1:{small_redis.port}/0: the Redis server "
        f"accepts at most 20 clients (maxclients) and 1 are connected: this instance needs "
        f"up to {needed} ([redis] max_connections + {DEDICATED_REDIS_CONNECTIONS}); raise the "
        "server's maxclients or lower [redis] max_connections"
    ) in line


def test_the_connections_an_instance_needs_follow_the_fleet_config() -> None:
    base = {"kafka": {}, "pipelines": {}, "consumers": []}
    with_api = AppConfig.model_validate({**base, "redis": {"max_connections": 10}})
    without_api = AppConfig.model_validate(
        {**base, "redis": {"max_connections": 10}, "api": {"enabled": False}}
    )
    assert Engine(with_api).redis_connections_needed() == 10 + DEDICATED_REDIS_CONNECTIONS
    assert Engine(without_api).redis_connections_needed() == 10 + DEDICATED_REDIS_CONNECTIONS - 4


async def test_pool_exhaustion_is_one_warning_per_episode_and_clears(
    services: EmbeddedServices, caplog: pytest.LogCaptureFixture
) -> None:
    client = engine_redis_client(RedisConfig(url=services.redis_url, max_connections=4))
    pool = client.connection_pool
    pool.timeout = 0.05  # type: ignore[attr-defined]
    held = [await pool.get_connection() for _ in range(4)]
    try:
        with caplog.at_level(logging.INFO, logger="kafkaconsole.redis"):
            for _ in range(5):
                with pytest.raises(PoolExhausted):
                    await client.ping()
            reason = pool_exhausted(client)
            assert reason == (
                "Redis connections exhausted: every connection of the pool of 4 "
                "([redis] max_connections) stayed busy for 0.05 s"
            )
            await pool.release(held.pop())
            assert await client.ping()  # room again: commands go through
            assert pool_exhausted(client) == reason  # still degraded for the period
            pool.degraded_s = 0.0  # type: ignore[attr-defined]
            assert pool_exhausted(client) is None
            assert await client.ping()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warnings] == [reason]
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
            "Redis connections: the pool of 4 ([redis] max_connections) has free connections again"
        ]
    finally:
        for connection in held:
            await pool.release(connection)
        await client.aclose()


async def test_many_commands_at_once_wait_for_the_pool_instead_of_failing(
    services: EmbeddedServices,
) -> None:
    """The engine's client never opens more than ``max_connections`` however many commands
    run at once: the rest wait for a free connection instead of failing."""
    client = engine_redis_client(RedisConfig(url=services.redis_url, max_connections=4))
    try:
        name = "kc-pool-test"

        async def one(i: int) -> None:
            await client.set(f"{name}:{i}", i, px=10_000)
            await client.get(f"{name}:{i}")

        await asyncio.gather(*(one(i) for i in range(300)))
        pool = client.connection_pool
        opened = len(pool._available_connections) + len(pool._in_use_connections)  # type: ignore[attr-defined]
        assert opened <= 4
        assert pool_exhausted(client) is None
    finally:
        await client.aclose()


async def test_commands_get_a_connection_in_the_order_they_asked(
    services: EmbeddedServices,
) -> None:
    """A burst of commands is served first come, first served: a command that asked early is
    never overtaken by later ones until it waits out the pool's timeout."""
    client = engine_redis_client(RedisConfig(url=services.redis_url, max_connections=4))
    served: list[int] = []
    try:
        pool = client.connection_pool
        # every connection busy: everything below queues
        held = [await pool.get_connection() for _ in range(4)]

        newcomers: list[asyncio.Task[None]] = []

        async def one(i: int) -> None:
            connection = await pool.get_connection()
            served.append(i)
            await asyncio.sleep(0)  # let the others run while this one holds its connection
            await pool.release(connection)
            if i < 200:
                # a newcomer asks just as a connection comes free: it must queue behind
                newcomers.append(asyncio.create_task(one(1000 + i)))

        tasks = [asyncio.create_task(one(i)) for i in range(200)]
        await asyncio.sleep(0.05)  # every task is waiting for a connection
        for connection in held:
            await pool.release(connection)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await asyncio.wait_for(asyncio.gather(*newcomers), 10)
        assert served[:200] == list(range(200))
        assert sorted(served[200:]) == [1000 + i for i in range(200)]
        assert pool_exhausted(client) is None
    finally:
        await client.aclose()


def test_takeover_polling_keeps_to_a_process_budget() -> None:
    """A dispatcher that just took its lease looks for what a stopped instance left every
    0.5 s; with hundreds of consumers taking their leases at once the process keeps to about
    200 such looks a second instead of thousands."""
    assert fleet_config(1).takeover_poll_s() == 0.5
    assert fleet_config(100).takeover_poll_s() == 0.5
    assert fleet_config(1000).takeover_poll_s() == 5.0
    cfg = fleet_config(1000)
    engine = Engine(cfg)
    engine._pipelines["p"] = build_pipeline("p", cfg.pipelines["p"], kafka=cfg.kafka)
    # the producer is not used to build a consumer
    dlq = DeadLetterSink(None)  # type: ignore[arg-type]
    consumer = engine._build_consumer(cfg.consumers[0], dlq)
    assert consumer.dispatcher.takeover_poll_s == 5.0


def test_status_reads_and_health_samples_keep_to_a_process_budget() -> None:
    """With a few consumers an instance reads their shared state every snapshot (a second)
    and the health monitor samples every ``sample_interval``; with hundreds both keep to a
    budget (about 250 and 50 consumers a second) instead of growing with the fleet."""
    assert Engine(fleet_config(10)).shared_read_s == 1.0
    assert Engine(fleet_config(10), snapshot_interval=0.2).shared_read_s == 0.2
    assert Engine(fleet_config(500)).shared_read_s == 2.0
    assert Engine(fleet_config(1000), snapshot_interval=0.2).shared_read_s == 4.0
    assert fleet_config(10).monitor_interval_s(5) == 0.3
    assert fleet_config(10).monitor_interval_s(500) == 20.0
