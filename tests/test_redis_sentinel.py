"""Redis Sentinel (``[redis] mode = "sentinel"``) on real servers: a primary, a replica and
three sentinels (tests/sentinel_support.py), the session's broker.

Counting is exact through the sentinels; after the primary is killed and the replica promoted
the engine follows it by itself and the count stays exact (or, if the replica had not received
the last writes, the loss detection reports it and counts them again); with no primary at all
``/ready`` says so, one line is logged, and the instance recovers when the primary is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aredis

from kafkaconsole.api import ApiServer, start_api
from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import EmbeddedServices, free_port
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.redis_sentinel import NO_PRIMARY, SentinelPool
from tests import pipeline_targets
from tests.engine_support import make_config, running_engine
from tests.helpers import REDIS_TOPOLOGY_ONCE, KafkaHelper, cli, wait_for
from tests.sentinel_support import SentinelSetup, start_sentinel_setup
from tests.test_cli_control import write_config
from tests.test_headless import _start

pytestmark = [pytest.mark.slow, REDIS_TOPOLOGY_ONCE]


@pytest.fixture
def setup(tmp_path: Path, unique: str) -> Iterator[SentinelSetup]:
    """A primary with one replica, password-protected, behind password-protected sentinels."""
    started = start_sentinel_setup(
        tmp_path, service=f"svc-{unique}", password="data-pw", sentinel_password="sentinel-pw"
    )
    try:
        yield started
    finally:
        started.stop()


def _config(
    services: EmbeddedServices, setup: SentinelSetup, unique: str, cid: str, **extra: Any
) -> AppConfig:
    return make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 100, "batch_size": 50}],
        redis=setup.redis_config(),
        **extra,
    )


def _cli_config(
    tmp_path: Path, services: EmbeddedServices, setup: SentinelSetup, unique: str, cid: str
) -> Path:
    """A config file of the same consumer, for the CLI, in sentinel mode."""
    path = write_config(
        tmp_path / "cli.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=setup.url,
        prefix=unique,
        topic=unique,
        cid=cid,
        out_file=tmp_path / "runs.jsonl",
        max_event=100,
    )
    listed = ", ".join(f'"{address}"' for address in setup.sentinel_addresses)
    lines = (
        f'mode = "sentinel"\nservice_name = "{setup.service}"\nsentinels = [{listed}]\n'
        f'sentinel_password = "{setup.sentinel_password}"\n'
    )
    path.write_text(path.read_text().replace("[redis]\n", f"[redis]\n{lines}"))
    return path


async def _counted(r: aredis.Redis, prefix: str, cid: str) -> tuple[int, list[int], list[int]]:
    """Sum of closed windows + open count, the closed windows' ids and counts."""
    entries = await r.xrange(f"{prefix}:{cid}:history")
    wids = [int(f[b"window_id"]) for _, f in entries]
    counts = [int(f[b"count"]) for _, f in entries]
    return sum(counts) + int(await r.get(f"{prefix}:{cid}:events") or 0), wids, counts


async def _wait_counted(
    r: aredis.Redis, prefix: str, cid: str, n: int, timeout: float = 30
) -> None:
    async def done() -> bool:
        return (await _counted(r, prefix, cid))[0] >= n

    await wait_for(done, timeout, interval=0.1, what=f"{n} events counted")


def _calls(cid: str) -> list[int]:
    return [c["window_id"] for c in pipeline_targets.calls_for(cid)]


async def _ready(api: ApiServer) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{api.url}/ready") as resp:
        return resp.status, await resp.json()


async def test_counts_exactly_through_the_sentinels(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    setup: SentinelSetup,
    unique: str,
    tmp_path: Path,
) -> None:
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 3)
    cfg = _config(services, setup, unique, cid)
    data = aredis.Redis(port=setup.primary.port, password=setup.password)
    try:
        # start-up ran the ACL probe and the maxclients check on the primary (INFO clients)
        async with running_engine(cfg) as engine:
            pool = engine.redis.connection_pool
            assert isinstance(pool, SentinelPool)
            assert pool.master_address == ("127.0.0.1", setup.primary.port)
            await kafka.produce(unique, ({"i": i} for i in range(1050)))
            await _wait_counted(data, unique, cid, 1050)
            await wait_for(lambda: _true(len(_calls(cid)) >= 10), 30, what="10 windows dispatched")
            total, wids, counts = await _counted(data, unique, cid)
            assert (total, wids, counts) == (1050, list(range(1, 11)), [100] * 10)
            assert _calls(cid) == list(range(1, 11))  # each window's pipeline ran once
            snap = await engine.refresh_snapshot()
            assert snap.redis_ok and snap.redis_pool == ()
            # the CLI reaches the primary through the sentinels too
            status = await cli(
                "status",
                "--json",
                "--config",
                str(_cli_config(tmp_path, services, setup, unique, cid)),
            )
            assert status.exit_code == 0, status.stderr
            (shown,) = orjson.loads(status.stdout)["consumers"]
            assert (shown["count"], shown["total"]) == (50, 1050)
        # the replica holds the primary's copy (replication)
        replica = aredis.Redis(port=setup.replicas[0].port, password=setup.password)
        try:
            await _wait_counted(replica, unique, cid, 1050, timeout=5)
        finally:
            await replica.aclose()
    finally:
        await data.aclose()


@pytest.mark.parametrize("fault", ["kill", "demote"])
async def test_follows_the_primary_through_a_failover_under_load(
    services: EmbeddedServices, kafka: KafkaHelper, setup: SentinelSetup, unique: str, fault: str
) -> None:
    """``kill``: the primary is killed (-9) and the replica promoted; ``demote``: a manual
    failover (SENTINEL FAILOVER) turns the live primary into a replica of the promoted one."""
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 3)
    cfg = _config(services, setup, unique, cid)
    old = aredis.Redis(port=setup.primary.port, password=setup.password)
    new_port = setup.replicas[0].port
    new = aredis.Redis(port=new_port, password=setup.password)
    produced = 0
    producing = asyncio.Event()
    producing.set()

    async def produce() -> None:
        nonlocal produced
        while producing.is_set():
            produced += await kafka.produce(unique, ({"i": produced + i} for i in range(30)))
            await asyncio.sleep(0.02)

    try:
        async with running_engine(cfg) as engine:
            producer = asyncio.create_task(produce())
            try:
                await _wait_counted(old, unique, cid, 600)
                killed = time.monotonic()
                if fault == "kill":
                    setup.primary.kill()
                else:
                    await asyncio.to_thread(setup.failover)
                await asyncio.to_thread(setup.wait_primary, new_port)
                promoted = time.monotonic()
                at_promotion = (await _counted(new, unique, cid))[0]
                # the engine reaches the new primary by itself and counts on there
                await _wait_counted(new, unique, cid, at_promotion + 1)
                recovered = time.monotonic()
                await _wait_counted(new, unique, cid, at_promotion + 600)
            finally:
                producing.clear()
                await producer
            await _wait_counted(new, unique, cid, produced)
            windows = produced // 100
            await wait_for(
                lambda: _true(set(_calls(cid)) >= set(range(1, windows + 1))),
                30,
                what=f"{windows} windows dispatched",
            )
            await asyncio.sleep(0.5)  # a run twice would show now
            total, wids, counts = await _counted(new, unique, cid)
            assert total == produced  # exact: nothing lost, nothing counted twice
            assert wids == list(range(1, windows + 1)) and counts == [100] * windows
            snap = await engine.refresh_snapshot()
            losses = snap.consumers[0].redis_state_losses
            calls = _calls(cid)
            if losses == 0:
                # the replica had every write: each window's pipeline ran once
                assert sorted(calls) == list(range(1, windows + 1))
            else:
                # it lagged: the loss was reported and the lost events counted again; windows
                # closed again kept their ids, so a run twice carries the same idempotency key
                error = snap.consumers[0].last_error
                assert error is not None and "Redis lost counting state" in error
                assert set(calls) == set(range(1, windows + 1))
            assert snap.redis_ok and snap.redis_pool == ()
            pool = engine.redis.connection_pool
            assert isinstance(pool, SentinelPool)
            assert pool.master_address == ("127.0.0.1", new_port)
            # the time closer's own connection follows at its next clock probe (every 5 s)
            assert engine.time_closer.closer is not None  # (on its thread, read from here)
            closer = engine.time_closer.closer.redis.connection_pool
            assert isinstance(closer, SentinelPool)
            await wait_for(
                lambda: _true(closer.master_address == ("127.0.0.1", new_port)),
                10,
                what="the time closer on the new primary",
            )
            print(
                f"\nfailover ({fault}): promoted {promoted - killed:.2f}s after the fault, "
                f"counting on the new primary {recovered - killed:.2f}s after it; "
                f"{produced} events, {windows} windows, losses detected: {losses}"
            )
    finally:
        await old.aclose()
        await new.aclose()


async def test_no_primary_is_degraded_logged_once_and_recovers(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    tmp_path: Path,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # no replica to promote; the primary keeps its data across a kill (AOF)
    setup = start_sentinel_setup(
        tmp_path, service=f"svc-{unique}", replicas=0, primary_args=["--appendonly", "yes"]
    )
    cid = f"{unique}-c"
    data = aredis.Redis(port=setup.primary.port)
    try:
        await kafka.create_topic(unique, 3)
        cfg = _config(services, setup, unique, cid, api={"enabled": True, "port": 0})
        async with running_engine(cfg) as engine:
            api = await start_api(engine)
            try:
                await _outage(setup, engine, api, kafka, data, unique, cid, caplog)
            finally:
                await api.close()
    finally:
        await data.aclose()
        setup.stop()


async def _outage(
    setup: SentinelSetup,
    engine: Engine,
    api: ApiServer,
    kafka: KafkaHelper,
    data: aredis.Redis,
    unique: str,
    cid: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await kafka.produce(unique, ({"i": i} for i in range(300)))
    await _wait_counted(data, unique, cid, 300)
    seen: list[dict[str, Any]] = []

    async def ready_now() -> bool:
        status, body = await _ready(api)
        seen.append(body)
        return status == 200

    try:  # the first snapshot of a new instance may still be on its way
        await wait_for(ready_now, 10, interval=0.2, what="/ready 200 before the fault")
    except AssertionError:
        raise AssertionError(f"/ready before the fault: {seen[-1]}") from None
    caplog.clear()
    caplog.set_level(logging.INFO, logger="kafkaconsole")
    setup.primary.kill()
    reason = f"{NO_PRIMARY} for service {setup.service!r} (sentinels "

    async def degraded() -> bool:
        status, body = await _ready(api)
        return status == 503 and any(r.startswith(reason) for r in body["reasons"])

    await wait_for(degraded, 15, interval=0.2, what="/ready 503 with no primary")
    _, body = await _ready(api)
    assert body["status"] == "degraded" and body["ready"] is False
    assert sum(r.startswith(reason) for r in body["reasons"]) == 1  # given once
    # the console header's channel: the engine's snapshot names it too
    await wait_for(
        lambda: _true(any(r.startswith(reason) for r in engine.snapshot().redis_pool)),
        5,
        what="the snapshot naming no primary",
    )
    await kafka.produce(unique, ({"i": i} for i in range(300, 500)))  # while it is down
    await asyncio.sleep(3)  # long enough for a storm to show
    lines = [r for r in caplog.records if r.name.startswith("kafkaconsole")]
    said = [r for r in lines if r.name == "kafkaconsole.redis" and NO_PRIMARY in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]  # one line for the whole process
    assert setup.service in said[0].getMessage()
    assert all(a in said[0].getMessage() for a in setup.sentinel_addresses)
    assert not [r for r in lines if r.exc_info], "no traceback"
    assert len(lines) <= 15, [r.getMessage() for r in lines]  # a line per task, no storm

    started = time.monotonic()
    setup.restart(setup.primary)
    await asyncio.to_thread(setup.wait_primary, setup.primary.port)

    async def ready() -> bool:
        return (await _ready(api))[0] == 200

    await wait_for(ready, 20, interval=0.2, what="/ready 200 again")
    await _wait_counted(data, unique, cid, 500)
    print(f"\nno primary: ready again {time.monotonic() - started:.2f}s after the restart")
    total, wids, counts = await _counted(data, unique, cid)
    assert (total, wids, counts) == (500, [1, 2, 3, 4, 5], [100] * 5)
    assert any("has its primary again" in r.getMessage() for r in caplog.records)
    assert (await engine.refresh_snapshot()).redis_pool == ()


async def _true(value: bool) -> bool:
    return value


def test_no_sentinel_answering_fails_a_bounded_start_in_one_line(
    tmp_path: Path, services: EmbeddedServices, unique: str
) -> None:
    sentinels = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    config = write_config(
        tmp_path / "c.toml",
        bootstrap=services.bootstrap_servers,
        redis_url="redis://localhost:6379/0",
        prefix=unique,
        topic=unique,
        cid="c",
        out_file=tmp_path / "runs.jsonl",
    )
    listed = ", ".join(f'"{address}"' for address in sentinels)
    config.write_text(
        config.read_text().replace(
            "[redis]\n",
            f'[redis]\nmode = "sentinel"\nservice_name = "{unique}"\nsentinels = [{listed}]\n',
        )
    )
    log = tmp_path / "run.log"
    proc = _start(config, log, "--wait-timeout", "0", "--log-format", "json")
    assert proc.wait(30) == 1
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    errors = [line for line in lines if line["level"] in ("error", "critical")]
    assert [e["message"] for e in errors] == [
        f"cannot start: {NO_PRIMARY} for service {unique!r} (sentinels {', '.join(sentinels)}): "
        "the sentinels do not answer"
    ]
    assert not any("Traceback" in json.dumps(line) for line in lines)
