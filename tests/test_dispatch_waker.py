"""The dispatch wake-up: one blocking XREAD over the dispatch streams of every consumer the
instance leads wakes the dispatcher whose stream grew, and it holds its read while the engine's
time closes are due (each close appends to a dispatch stream, and a read over hundreds of
streams costs Redis about 2 us per stream: re-issued after every close of a burst, it held the
closes queued behind it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aredis

from kafkaconsole.config.models import RedisConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.dispatch import DispatchWaker
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.keys import ConsumerKeys
from tests.engine_support import make_config
from tests.helpers import wait_for


async def until(predicate: Callable[[], bool]) -> None:
    async def check() -> bool:
        return predicate()

    await wait_for(check, timeout=5)


class Dispatcher:
    """What the wake-up needs of a dispatcher: its keys, whether it leads, its wake()."""

    def __init__(self, keys: ConsumerKeys) -> None:
        self.keys = keys
        self.leader = True
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


class Hold:
    """A hold the test opens and closes; counts how often the wake-up waited on it."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        await self.open.wait()


@pytest.fixture
async def waker_parts(
    services: EmbeddedServices, unique: str
) -> AsyncIterator[tuple[list[Dispatcher], Hold, DispatchWaker]]:
    dispatchers = [Dispatcher(ConsumerKeys(unique, f"c{i}")) for i in range(3)]
    hold = Hold()
    waker = DispatchWaker(
        RedisConfig(url=services.redis_url), lambda: list(dispatchers), block_ms=200, hold=hold
    )
    stop = asyncio.Event()
    task = asyncio.create_task(waker.run(stop))
    try:
        yield dispatchers, hold, waker
    finally:
        stop.set()
        hold.open.set()
        await asyncio.wait_for(task, 5)


async def test_a_stream_that_grows_wakes_its_dispatcher_only(
    waker_parts: tuple[list[Dispatcher], Hold, DispatchWaker], redis_client: aredis.Redis
) -> None:
    dispatchers, _, waker = waker_parts
    await asyncio.sleep(0.3)  # the first read (from the start of empty streams) is blocking
    await redis_client.xadd(dispatchers[1].keys.dispatch, {"window_id": 1})
    await until(lambda: dispatchers[1].woken >= 1)
    await asyncio.sleep(0.3)
    assert [d.woken for d in dispatchers] == [0, 1, 0]
    assert waker.wakes == 1


async def test_the_read_waits_for_the_hold(
    waker_parts: tuple[list[Dispatcher], Hold, DispatchWaker], redis_client: aredis.Redis
) -> None:
    dispatchers, hold, _ = waker_parts
    await asyncio.sleep(0.3)
    await redis_client.xadd(dispatchers[0].keys.dispatch, {"window_id": 1})
    await until(lambda: dispatchers[0].woken == 1)
    # time closes are due: the wake-up sends no read until they are answered
    hold.open.clear()
    calls = hold.calls
    await until(lambda: hold.calls > calls)  # it is waiting on the hold
    await redis_client.xadd(dispatchers[2].keys.dispatch, {"window_id": 1})
    await asyncio.sleep(0.5)
    assert dispatchers[2].woken == 0
    hold.open.set()
    await until(lambda: dispatchers[2].woken == 1)
    assert dispatchers[0].woken == 1


async def test_the_engine_holds_its_wake_up_for_its_time_closes(
    services: EmbeddedServices, unique: str
) -> None:
    cfg = make_config(
        services, unique, [{"consumer_id": "c", "kafka_topic": "t", "max_event": 10, "max_time": 5}]
    )
    engine = Engine(cfg)
    try:
        assert engine.dispatch_waker.hold == engine.time_closer.wait_quiet
    finally:
        await engine.stop()
