"""The poll loop awaits each poll in its own task: a poll of records already fetched returns
without waiting, so the loop hands the event loop over every HAND_OVER_S and right after it
starts a Redis call; a wake-up (a stop, a seek, a resync) cancels a waiting poll and the loop
takes that cancel back, while a cancel of the runner itself still ends it; nothing polled is
lost or counted twice however often a poll is cut short."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine import consumer as consumer_mod
from kafkaconsole.engine.consumer import COALESCE_POLLS, ConsumerRunner
from kafkaconsole.engine.counting import WindowCounter
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for


def _config(services: EmbeddedServices, unique: str, cid: str) -> Any:
    return make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1_000_000, "batch_size": 500}],
    )


async def _counted(redis_client: aredis.Redis, unique: str, cid: str) -> int:
    return int(await redis_client.get(f"{unique}:{cid}:events") or 0)


class Ticker:
    """A task that runs once per iteration of the event loop, counting them."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)

    def __enter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def _watch_polls(monkeypatch: pytest.MonkeyPatch, seen: list[int], ticker: Ticker) -> None:
    """Note the ticker's count as each poll that returned records returns."""
    getmany = AIOKafkaConsumer.getmany

    async def watched(self: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> Any:
        batch = await getmany(self, *args, **kwargs)
        if batch:
            seen.append(ticker.ticks)
        return batch

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", watched)


async def _count_a_backlog(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    events: int,
    seen: list[int],
) -> None:
    """``events`` on one partition, counted by consumer ``<unique>-c`` of an engine started
    after them (a backlog); ``seen`` gets a :class:`Ticker`'s count as each poll returns."""
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 1)
    await kafka.produce(unique, ({"i": i} for i in range(events)), partitions=1)
    with Ticker() as ticker:
        _watch_polls(monkeypatch, seen, ticker)
        async with running_engine(_config(services, unique, cid), snapshot_interval=60):
            await wait_for(
                lambda: _is(_counted(redis_client, unique, cid), events), 30, what="all counted"
            )


async def test_the_poll_loop_hands_the_event_loop_over_between_polls(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the hand-over interval at 0, every poll of a backlog comes after an iteration of
    the event loop: the other tasks ran between any two polls, though each poll found its
    records fetched already."""
    monkeypatch.setattr(consumer_mod, "HAND_OVER_S", 0.0)
    seen: list[int] = []
    await _count_a_backlog(services, kafka, redis_client, unique, monkeypatch, 20_000, seen)
    assert len(seen) >= 20_000 // 500
    assert all(b > a for a, b in itertools.pairwise(seen)), seen


async def test_a_counting_call_starts_before_the_next_poll(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no hand-over by time, the loop still hands over right after it started a Redis
    call: the call for the first COALESCE_POLLS polls of a backlog begins before poll
    COALESCE_POLLS + 1 (else it would wait until the fetched records ran out, polls later),
    and the whole backlog is counted exactly."""
    monkeypatch.setattr(consumer_mod, "HAND_OVER_S", 3600.0)
    monkeypatch.setattr(consumer_mod, "COALESCE_MAX_AGE_S", 60.0)
    cid = f"{unique}-c"
    polls: list[int] = []
    at_call: list[int] = []
    apply = WindowCounter.apply

    async def counting_apply(self: WindowCounter, deltas: Any, *args: Any, **kwargs: Any) -> Any:
        at_call.append(len(polls))
        return await apply(self, deltas, *args, **kwargs)

    monkeypatch.setattr(WindowCounter, "apply", counting_apply)
    await _count_a_backlog(services, kafka, redis_client, unique, monkeypatch, 40_000, polls)
    assert at_call[0] == COALESCE_POLLS, (at_call, len(polls))
    assert await _counted(redis_client, unique, cid) == 40_000


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


def _runner(engine: Any, cid: str) -> ConsumerRunner:
    runner: ConsumerRunner = engine._consumers[cid].runner
    return runner


async def _polling(runner: ConsumerRunner) -> asyncio.Task[Any]:
    """The runner's task once it waits in a poll (an idle consumer's wait is a second)."""

    async def waiting() -> bool:
        return runner._polling is not None

    await wait_for(waiting, 20, interval=0.01, what="the runner waiting in a poll")
    task = runner._polling
    assert task is not None
    return task


async def test_a_wake_up_ends_a_waiting_poll_and_the_loop_polls_on(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    """Woken in an idle poll, several times over: the runner polls again at once, its task
    holds no cancel request (it would end the next wait of the runner), and events produced
    afterwards are counted."""
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 1)
    async with running_engine(_config(services, unique, cid), snapshot_interval=60) as engine:
        runner = _runner(engine, cid)
        for _ in range(5):
            task = await _polling(runner)
            runner._wake()
            runner._wake()  # a second wake-up of the same poll adds nothing
            await asyncio.sleep(0.05)
            assert not task.done()
            assert task.cancelling() == 0
        assert (await _polling(runner)) is task
        await kafka.produce(unique, ({"i": i} for i in range(1_000)), partitions=1)
        await wait_for(lambda: _is(_counted(redis_client, unique, cid), 1_000), 20)
        assert task.cancelling() == 0 and not task.done()


@pytest.mark.parametrize("order", ["wake, then cancel", "cancel, then wake"])
async def test_a_cancel_of_the_runner_ends_it_even_with_a_wake_up(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str, order: str
) -> None:
    """A cancel of the runner's task that meets a wake-up of its poll is not taken for the
    wake-up: the runner ends (cancelled), whichever came first."""
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 1)
    async with running_engine(_config(services, unique, cid), snapshot_interval=60) as engine:
        runner = _runner(engine, cid)
        task = await _polling(runner)
        if order == "wake, then cancel":
            runner._wake()
            task.cancel()
        else:
            task.cancel()
            runner._wake()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), 10)
        assert task.cancelled()


async def test_polls_cut_short_over_and_over_lose_and_repeat_nothing(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    """A wake-up every millisecond while a backlog of 3 partitions is counted: every poll
    that was waiting is cut short, and the count is still exact."""
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 3)
    await kafka.produce(unique, ({"i": i} for i in range(30_000)), partitions=3)
    async with running_engine(_config(services, unique, cid), snapshot_interval=60) as engine:
        runner = _runner(engine, cid)
        woken = 0

        async def waker() -> None:
            nonlocal woken
            while True:
                if runner._polling is not None:
                    runner._wake()
                    woken += 1
                await asyncio.sleep(0.001)

        waking = asyncio.create_task(waker())
        try:
            await kafka.produce(unique, ({"i": i} for i in range(30_000)), partitions=3)
            await wait_for(
                lambda: _is(_counted(redis_client, unique, cid), 60_000), 60, what="all counted"
            )
        finally:
            waking.cancel()
        await asyncio.sleep(0.5)
        assert await _counted(redis_client, unique, cid) == 60_000
        assert woken > 10
