"""Time closes on a thread of their own: a window closes on time while the engine's event loop
is busy (hundreds of consumers' work), and a timer whose window changed withdraws its close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import RedisError

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine import timer as timer_module
from kafkaconsole.engine.counting import CloseResult, WindowCounter
from kafkaconsole.engine.keys import ConsumerKeys
from kafkaconsole.engine.timer import ClosingThread, WindowTimer
from tests.helpers import wait_for
from tests.test_counting import delta

MAX_TIME_S = 0.5
BLOCK_S = 2.0  # the engine's loop does not run for this long, from before the deadline


async def open_window(redis: aredis.Redis, prefix: str, cid: str) -> tuple[WindowCounter, int]:
    counter = WindowCounter(redis, ConsumerKeys(prefix, cid), max_event=1000)
    res = await counter.apply([delta(0, [0])])
    return counter, res.opened_at_ms or 0


async def redis_ms(redis: aredis.Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def history(redis: aredis.Redis, prefix: str, cid: str) -> list[dict[bytes, bytes]]:
    return [f for _, f in await redis.xrange(ConsumerKeys(prefix, cid).history)]


@pytest.fixture
async def thread(services: EmbeddedServices) -> AsyncIterator[ClosingThread]:
    """A started closing thread of the session's Redis, stopped after the test."""
    closing = ClosingThread(partial(aredis.Redis.from_url, services.redis_url))
    closing.start()
    try:
        yield closing
    finally:
        await asyncio.to_thread(closing.stop)


async def run_timer(
    redis: aredis.Redis, prefix: str, closer: ClosingThread, closed: list[CloseResult]
) -> tuple[WindowTimer, asyncio.Task[None], asyncio.Event, int]:
    """A window opened now, and its timer (``max_time`` :data:`MAX_TIME_S`) running; its
    closes go to ``closed``. Returns the timer, its task, its stop event, Redis's time."""
    counter, opened_at = await open_window(redis, prefix, "c")
    timer = WindowTimer(counter, MAX_TIME_S, closed.append, closer=closer)
    now_ms = await redis_ms(redis)
    timer.observe(1, 1, opened_at, now_ms)
    stop = asyncio.Event()
    return timer, asyncio.create_task(timer.run(stop)), stop, now_ms


async def end_timer(timer: WindowTimer, task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    timer.wake()
    await asyncio.wait_for(task, 5)


async def test_a_window_closes_on_time_while_the_event_loop_is_blocked(
    thread: ClosingThread, redis_client: aredis.Redis, unique: str
) -> None:
    closed: list[CloseResult] = []
    try:
        timer, task, stop, _ = await run_timer(redis_client, unique, thread, closed)
        await asyncio.sleep(0.05)  # the timer has handed its close to the thread
        # the engine's loop is stuck (hundreds of consumers' work), past the deadline
        time.sleep(BLOCK_S)  # noqa: ASYNC251 (the point: this loop does not run)

        async def recorded() -> bool:
            return bool(closed)

        await wait_for(recorded, 10, what="the close reported to the timer")
        (entry,) = await history(redis_client, unique, "c")
        assert entry[b"reason"] == b"time"
        late = int(entry[b"closed_at"]) - int(entry[b"opened_at"]) - int(MAX_TIME_S * 1000)
        # closed by the thread while the loop was blocked: late by far less than the block
        assert 0 <= late < 1000, late
        await end_timer(timer, task, stop)
    finally:
        await asyncio.to_thread(thread.stop)
    assert not thread.alive


async def test_a_timer_whose_window_changed_withdraws_its_close(
    thread: ClosingThread, redis_client: aredis.Redis, unique: str
) -> None:
    closed: list[CloseResult] = []
    try:
        timer, task, stop, now_ms = await run_timer(redis_client, unique, thread, closed)
        await asyncio.sleep(0.1)  # handed to the thread, due in about 0.4 s
        timer.observe(1, 0, None, now_ms + 1)  # the window emptied (a reset): no deadline
        await asyncio.sleep(MAX_TIME_S + 0.5)
        assert closed == [] and await history(redis_client, unique, "c") == []
        await end_timer(timer, task, stop)
    finally:
        await asyncio.to_thread(thread.stop)


async def test_a_close_goes_to_the_thread_only_once_its_deadline_is_near(
    thread: ClosingThread, redis_client: aredis.Redis, unique: str, monkeypatch: Any
) -> None:
    """A window closing by count long before its deadline never crosses threads (a hand-over
    and its withdrawal woke the thread twice per window); a nearing deadline is handed over,
    and the window closes on time on the thread as before."""
    monkeypatch.setattr(timer_module, "HAND_OVER_AHEAD_S", 0.3)
    max_time = 0.8
    closed: list[CloseResult] = []
    counter, opened_at = await open_window(redis_client, unique, "c")
    timer = WindowTimer(counter, max_time, closed.append, closer=thread)
    timer.observe(1, 1, opened_at, await redis_ms(redis_client))
    stop = asyncio.Event()
    task = asyncio.create_task(timer.run(stop))
    try:
        await asyncio.sleep(0.2)  # the deadline 0.6 s away: the timer waits on this loop
        assert not thread.closes_due(within_ms=60_000)

        async def handed() -> bool:
            return thread.closes_due(within_ms=60_000) or bool(closed)

        await wait_for(handed, 5, what="the close handed over, 0.3 s before its deadline")
        # the engine's loop is stuck past the deadline: the thread closes the window on time
        time.sleep(max_time)  # noqa: ASYNC251 (the point: this loop does not run)

        async def recorded() -> bool:
            return bool(closed)

        await wait_for(recorded, 10, what="the close reported to the timer")
        (entry,) = await history(redis_client, unique, "c")
        late = int(entry[b"closed_at"]) - int(entry[b"opened_at"]) - int(max_time * 1000)
        assert entry[b"reason"] == b"time" and 0 <= late < 400, (entry, late)
    finally:
        await end_timer(timer, task, stop)


async def test_a_window_closing_long_before_its_deadline_never_wakes_the_thread(
    thread: ClosingThread, redis_client: aredis.Redis, unique: str
) -> None:
    counter, opened_at = await open_window(redis_client, unique, "c")
    timer = WindowTimer(counter, 3600, lambda _: None, closer=thread)
    loop = asyncio.get_running_loop()
    assert thread._loop is not None
    woken: list[Any] = []
    threadsafe = thread._loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        woken.append(callback)
        return threadsafe(callback, *args, **kwargs)

    thread._loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = loop.create_task(timer.run(stop))
    try:
        now = await redis_ms(redis_client)
        for wid in range(1, 51):  # windows opening and closing by count, one after another
            timer.observe(wid, 1, opened_at + wid, now + wid)
            await asyncio.sleep(0.002)
        assert woken == [] and not thread.closes_due(within_ms=3_600_000)
    finally:
        del thread._loop.call_soon_threadsafe
        await end_timer(timer, task, stop)


async def test_a_stopped_thread_leaves_the_timers_closing_on_the_loop(
    thread: ClosingThread, redis_client: aredis.Redis, unique: str
) -> None:
    await asyncio.to_thread(thread.stop)
    assert not thread.alive
    closed: list[CloseResult] = []
    timer, task, stop, _ = await run_timer(redis_client, unique, thread, closed)

    async def recorded() -> bool:
        return bool(closed)

    await wait_for(recorded, 10, what="the window closed on the loop")
    assert closed[0].closed
    await end_timer(timer, task, stop)


async def test_dispatch_waits_while_a_close_is_due_and_never_longer_than_the_cap(
    thread: ClosingThread, redis_client: aredis.Redis, unique: str
) -> None:
    closed: list[CloseResult] = []
    timer, task, stop, now_ms = await run_timer(redis_client, unique, thread, closed)
    try:
        await asyncio.sleep(0.05)  # handed over: due at the deadline, not yet
        assert not thread.closes_due()
        assert thread.closes_due(within_ms=MAX_TIME_S * 1000)
        t0 = time.monotonic()
        await thread.wait_quiet()  # nothing due within 20 ms: no wait
        assert time.monotonic() - t0 < 0.05

        async def due() -> bool:
            return thread.closes_due()

        await wait_for(due, 5, interval=0.002, what="the close due within 20 ms")
        # every waiter shares one wait, which ends when the close is answered
        t0 = time.monotonic()
        await asyncio.gather(*(thread.wait_quiet(max_s=5.0) for _ in range(50)))
        assert time.monotonic() - t0 < 1.0
        assert not thread.closes_due()

        async def answered() -> bool:
            return len(closed) == 1

        await wait_for(answered, 5, what="the window closed by time")
    finally:
        await end_timer(timer, task, stop)

    # a close that stays due (its deadline passed and no answer yet) holds a wait only max_s
    thread._due_heap.append((now_ms, -1))
    thread._due[-1] = now_ms
    try:
        t0 = time.monotonic()
        await thread.wait_quiet(max_s=0.2)
        assert 0.15 <= time.monotonic() - t0 < 1.0
    finally:
        thread._forget(-1)
    assert not thread.closes_due()
    # answered closes do not pile up in the heap (a busy consumer hands over a close per window)
    for token in range(1000, 1300):
        thread._due_heap.append((now_ms + 3_600_000, token))
        thread._due[token] = now_ms + 3_600_000
    for token in range(1000, 1300):
        thread._forget(token)
    assert len(thread._due_heap) <= 64


async def test_the_answers_of_closes_due_together_go_over_together(
    thread: ClosingThread, redis_client: aredis.Redis, unique: str
) -> None:
    """One hand-over to the engine's loop per pipeline of closes, not one per close: each
    made the thread give up the GIL for a write to the loop's wake-up socket, and wait to get
    it back while the engine's loop was busy (a burst's later pipelines read tens of ms late)."""
    n = 60
    counters = [await open_window(redis_client, unique, f"c{i}") for i in range(n)]
    loop = asyncio.get_running_loop()
    handed: list[int] = []
    threadsafe = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            handed.append(len(args[0]) if args else 0)
        return threadsafe(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    try:
        deadline = max(opened for _, opened in counters) + 300
        results = await asyncio.gather(*(thread.close_at(c, 1, 300, deadline) for c, _ in counters))
    finally:
        del loop.call_soon_threadsafe
    assert all(r.closed for r in results)
    assert thread.closer is not None
    assert sum(handed) == n
    assert len(handed) <= thread.closer.batches < n  # one hand-over per pipeline at most


async def test_closes_waiting_when_the_thread_stops_answer_an_error(
    thread: ClosingThread, redis_client: aredis.Redis, unique: str
) -> None:
    counter, opened = await open_window(redis_client, unique, "c")
    waiting = asyncio.ensure_future(thread.close_at(counter, 1, 60_000, opened + 60_000))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(thread.stop)
    with pytest.raises(RedisError, match="thread stopped"):
        await asyncio.wait_for(waiting, 5)
    assert await history(redis_client, unique, "c") == []
