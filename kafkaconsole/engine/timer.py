"""The time trigger: a timer per open window, fired even while the topic is idle.

The deadline is ``opened_at + max_time`` on Redis's clock (``TIME``), so every instance agrees;
each instance keeps an estimate of the offset between Redis's clock and its own
(:class:`ClockSkew`). When the timer
fires, the close script re-checks the deadline and the window id on Redis, so timers of several
instances close a window once, and a window that was closed by count meanwhile is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from kafkaconsole.config.models import RetryPolicy
from kafkaconsole.engine.counting import CloseResult, WindowCounter
from kafkaconsole.engine.records import TriggerReason
from kafkaconsole.engine.retry import backoff_delay

log = logging.getLogger("kafkaconsole.timer")

#: A time trigger Redis did not take: tried again 0.2 s later, doubling to 2 s.
FIRE_POLICY = RetryPolicy(max_attempts=1, initial_backoff=0.2, max_backoff=2.0, jitter=False)
#: How long the best estimate of Redis's clock offset is kept before a newer one replaces it.
SKEW_KEEP_MS = 30_000


class ClockSkew:
    """The offset of Redis's clock from this host's, from the ``redis_now`` of answers.

    An answer is read some time after Redis took its ``TIME``: the busier the event loop, the
    later. Each sample ``redis_now - local_now`` is therefore at most the true offset, short by
    that delay, so the largest recent sample is the best estimate (taking the newest instead
    would make every timer fire late by the loop's delay when the answer was read: seconds
    with hundreds of consumers at once). A sample older than :data:`SKEW_KEEP_MS` gives way to
    the newest, so the estimate follows a clock that is set or drifts.
    """

    def __init__(self, clock_ms: Callable[[], float]) -> None:
        self.clock_ms = clock_ms
        self.ms = 0.0
        self._at: float | None = None  # local time of the sample kept

    def note(self, redis_now_ms: float) -> None:
        now = self.clock_ms()
        sample = redis_now_ms - now
        if self._at is None or sample >= self.ms or now - self._at > SKEW_KEEP_MS:
            self.ms, self._at = sample, now


#: How long a round-trip sample of Redis's clock counts (the best of those this recent wins).
RTT_KEEP_MS = 60_000
#: How often :meth:`TimeCloser.run_clock` asks Redis for its TIME when nothing else did.
CLOCK_PROBE_S = 5.0


class RedisClock:
    """This process's estimate of Redis's clock, for every timer of an engine: NTP's way.

    A sample is one round trip: sent at ``t0``, Redis's ``TIME`` in the answer, read at
    ``t1`` (local clock). Redis took its TIME within ``[t0, t1]``, so the offset is
    ``redis_now - (t0 + t1) / 2`` give or take half the round trip; the sample of the
    shortest round trip among the recent ones (:data:`RTT_KEEP_MS`) wins. An answer read late
    by a busy event loop has a long round trip and loses to any prompt one, so timers never
    fire late because the loop was busy when an answer came (:class:`ClockSkew`, the fallback,
    can only bound that error). ``note`` (an answer without its round trip) is used only until
    the first round trip is measured.
    """

    def __init__(self, clock_ms: Callable[[], float] = lambda: time.time() * 1000) -> None:
        self.clock_ms = clock_ms
        self.fallback = ClockSkew(clock_ms)
        self._samples: list[tuple[float, float, float]] = []  # (rtt, offset, taken at)
        self.rtt_ms: float | None = None  # of the sample in use
        self._lock = threading.Lock()  # the closing thread notes, the engine's timers read

    @property
    def ms(self) -> float:
        """Redis's clock minus this host's, in ms."""
        best = self._best()
        return best[1] if best is not None else self.fallback.ms

    def note(self, redis_now_ms: float) -> None:
        self.fallback.note(redis_now_ms)

    def note_round_trip(self, sent_ms: float, redis_now_ms: float, received_ms: float) -> None:
        rtt = max(received_ms - sent_ms, 0.0)
        with self._lock:
            self._samples.append((rtt, redis_now_ms - (sent_ms + received_ms) / 2, received_ms))
        best = self._best()
        self.rtt_ms = best[0] if best is not None else None

    def _best(self) -> tuple[float, float, float] | None:
        now = self.clock_ms()
        with self._lock:
            self._samples = [s for s in self._samples if now - s[2] <= RTT_KEEP_MS]
            if len(self._samples) > 64:
                self._samples = sorted(self._samples)[:32]
            return min(self._samples, default=None)


def deadline_ms(opened_at_ms: int | None, max_time_s: float) -> int | None:
    """Redis-clock time at which a window opened at ``opened_at_ms`` time-triggers."""
    if opened_at_ms is None:
        return None
    return opened_at_ms + round(max_time_s * 1000)


class TimeCloser:
    """Closes the due windows of many consumers together: the time triggers that fall due in
    one turn of the event loop go to Redis in one pipeline (a round trip for all of them, one
    close script each) instead of a call each, on a connection of its own. Hundreds of
    windows opened together fall due together: one call each queued them behind each other
    (and behind the dispatch of the first ones closed), seconds late; a pipeline closes them
    all within one round trip. One pipeline is in flight at a time: the closes falling due
    meanwhile go in the next one, sent as soon as it returns."""

    def __init__(self, redis: Redis, clock: RedisClock | None = None) -> None:
        self.redis = redis
        #: measured by every close pipeline's round trip, and by a TIME now and then
        self.clock = clock or RedisClock()
        self._pending: list[tuple[WindowCounter, int, int, asyncio.Future[CloseResult]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # the connection is one: a pipeline or a probe at a time
        #: how many batches were sent, and the largest (benchmarks and tests read them)
        self.batches = 0
        self.largest = 0

    async def close(self, counter: WindowCounter, window_id: int, max_time_ms: int) -> CloseResult:
        """Close ``window_id`` by time if its deadline has passed on Redis's clock."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CloseResult] = loop.create_future()
        self._pending.append((counter, window_id, max_time_ms, fut))
        if self._sender is None or self._sender.done():
            # it runs from the next turn: every timer due in this one has queued by then
            self._sender = loop.create_task(self._drain(), name="time-closer")
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            async with self._lock:
                await self._send(batch)

    async def probe_clock(self) -> None:
        """One round trip of ``TIME`` for :attr:`clock` (raises what Redis raises)."""
        async with self._lock:
            sent = self.clock.clock_ms()
            sec, usec = await self.redis.time()
            received = self.clock.clock_ms()
        self.clock.note_round_trip(sent, int(sec) * 1000 + int(usec) / 1000, received)

    async def run_clock(self, stop: asyncio.Event, every_s: float = CLOCK_PROBE_S) -> None:
        """Keep :attr:`clock` measured: a ``TIME`` every ``every_s`` (Redis unreachable: the
        estimate in use stays, and the timers' own closes tell when it is back)."""
        while not stop.is_set():
            with contextlib.suppress(RedisError, OSError):
                await self.probe_clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def _send(
        self, batch: list[tuple[WindowCounter, int, int, asyncio.Future[CloseResult]]]
    ) -> None:
        self.batches += 1
        self.largest = max(self.largest, len(batch))
        try:
            sent = self.clock.clock_ms()
            answers = await self._pipeline(batch)
            received = self.clock.clock_ms()
            if any(isinstance(a, NoScriptError) for a in answers):
                # a Redis that restarted (or another server): load the script, send again
                await self.redis.script_load(batch[0][0].close_script)
                answers = await self._pipeline(batch)
        except BaseException as exc:  # every waiter learns it (Redis unreachable: they retry)
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RedisError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for answer in answers:  # each close answers Redis's TIME: one more round-trip sample
            if not isinstance(answer, Exception):
                self.clock.note_round_trip(sent, int(answer[3]), received)
                break
        for (*_, fut), answer in zip(batch, answers, strict=True):
            if fut.done():  # the timer stopped meanwhile
                continue
            if isinstance(answer, Exception):
                fut.set_exception(answer)
            else:
                fut.set_result(WindowCounter.close_result(answer))

    async def _pipeline(
        self, batch: list[tuple[WindowCounter, int, int, asyncio.Future[CloseResult]]]
    ) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for counter, wid, max_time_ms, _ in batch:
            counter.queue_close(
                pipe, TriggerReason.TIME, expected_window_id=wid, max_time_ms=max_time_ms
            )
        return list(await pipe.execute(raise_on_error=False))


#: Dispatch holds back while a time close is due within this many ms (ClosingThread.closes_due).
CLOSES_DUE_MS = 20.0
#: ... for at most this long each time (a dispatch is never held back longer).
HOLD_FOR_CLOSES_S = 0.25
#: The interpreter's switch interval while a closing thread runs (see :meth:`ClosingThread.start`).
SWITCH_INTERVAL_S = 0.001
#: A window's close goes to the closing thread this long before its deadline (at once when
#: the deadline is nearer): until then the timer waits on the engine's loop, which may be
#: late by its backlog (seconds at worst, with hundreds of windows closing together), never
#: by this much; a window closed by count before then never crosses threads (a hand-over and
#: its withdrawal woke the thread twice per window, taking the GIL from the loop each time).
HAND_OVER_AHEAD_S = 10.0
#: How long an engine's stop waits for the closing thread to end.
THREAD_JOIN_S = 5.0


class _CloseJob:
    """A close handed to the closing thread: what to close, and where its answer goes (a
    future of the engine's loop)."""

    __slots__ = (
        "answer",
        "counter",
        "deadline_ms",
        "max_time_ms",
        "task",
        "window_id",
        "withdrawn",
    )

    def __init__(
        self,
        counter: WindowCounter,
        window_id: int,
        max_time_ms: int,
        deadline_ms: int,
        answer: asyncio.Future[CloseResult],
    ) -> None:
        self.counter = counter
        self.window_id = window_id
        self.max_time_ms = max_time_ms
        self.deadline_ms = deadline_ms
        self.answer = answer
        self.task: asyncio.Future[CloseResult] | None = None  # on the thread's loop
        self.withdrawn = False

    def withdraw(self) -> None:
        """On the thread: the caller stopped waiting; a close not yet sent is not sent."""
        if self.task is not None:
            self.task.cancel()


def _deliver(items: list[tuple[_CloseJob, asyncio.Future[CloseResult]]]) -> None:
    """On the engine's loop: the answers of closes the thread made."""
    for job, task in items:
        if job.answer.done():  # withdrawn meanwhile
            continue
        if task.cancelled():  # the thread stopped before it answered
            _fail(job)
            continue
        exc = task.exception()
        if exc is not None:
            job.answer.set_exception(exc)
        else:
            job.answer.set_result(task.result())


def _fail(job: _CloseJob) -> None:
    if not job.answer.done():
        job.answer.set_exception(RedisError("the time-closing thread stopped"))


class ClosingThread:
    """The time closes of an engine, on a thread of their own with an event loop of their own.

    The engine's event loop also runs hundreds of consumers' fetches, heartbeats, dispatches
    and status reads: a timer waiting on it fires when the loop gets to it, up to seconds late
    when hundreds of windows close together and their dispatch follows. Here each timer hands
    its close over as soon as its window's deadline is known (and withdraws it when the
    window closes by count, empties or gets another deadline); this thread's loop waits for
    the deadline and sends the closes due together in one pipeline (:class:`TimeCloser`, on its
    own connection), while the engine's loop is busy: the interpreter hands the thread the GIL
    within its switch interval (1 ms while the thread runs). The answer goes back to the timer
    on the engine's loop (a window closed later than its deadline only by that, not by the
    loop's backlog). The thread also measures Redis's clock (:meth:`TimeCloser.run_clock`):
    its round trips are not stretched by a busy loop either. While a close is due, dispatch
    waits (:meth:`wait_quiet`)."""

    def __init__(self, make_redis: Callable[[], Redis], clock: RedisClock | None = None) -> None:
        self.clock = clock or RedisClock()
        self._make_redis = make_redis
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.closer: TimeCloser | None = None
        # the deadlines of the closes handed over and not answered yet (Redis clock, ms),
        # kept on the engine's loop: token -> deadline, and (deadline, token) in a heap whose
        # entries of answered closes go when they reach its top or it holds twice too many
        self._due_heap: list[tuple[int, int]] = []
        self._due: dict[int, int] = {}
        self._tokens = itertools.count()
        self._quiet: asyncio.Future[None] | None = None  # the shared wait of wait_quiet
        # answers waiting for their hand-over to the engine's loop (the thread's side)
        self._outbox: list[tuple[_CloseJob, asyncio.Future[CloseResult]]] = []
        self._jobs: set[_CloseJob] = set()  # handed over, not answered (the engine's side)

    def start(self) -> None:
        if self._thread is not None:
            return
        # the thread waits for the GIL at most this long when the engine's loop is busy (the
        # default 5 ms, several times per close, was most of the lateness left); a thread
        # that does not ask for the GIL costs nothing more
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._main, name="time-closes", daemon=True)
        self._thread.start()
        self._ready.wait(THREAD_JOIN_S)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            self._stop = asyncio.Event()
            self.closer = TimeCloser(self._make_redis(), self.clock)
            self._loop = loop
            self._ready.set()
            loop.run_until_complete(self.closer.run_clock(self._stop))
            with contextlib.suppress(Exception):
                loop.run_until_complete(self.closer.redis.aclose())
            # closes still waiting (their timers stopped with the engine) end with it
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
        except Exception:  # a bug here must not pass silently: the timers fall back
            log.exception("the time-closing thread ended")
        finally:
            self._loop = None
            # a close whose answer did not go over (the thread ended first) answers an error:
            # its timer retries, and closes on the engine's loop once the thread is gone
            self._outbox = []
            for job in list(self._jobs):
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    job.answer.get_loop().call_soon_threadsafe(_fail, job)
            self._ready.set()
            loop.close()

    @property
    def alive(self) -> bool:
        return self._loop is not None and self._thread is not None and self._thread.is_alive()

    async def close_at(
        self, counter: WindowCounter, window_id: int, max_time_ms: int, deadline_ms: int
    ) -> CloseResult:
        """Close ``window_id`` by time once Redis's clock passes ``deadline_ms``, from the
        thread (cancelling the awaiting call withdraws it if not yet sent)."""
        loop = self._loop
        if loop is None or self.closer is None:
            raise RedisError("the time-closing thread is not running")
        token = next(self._tokens)
        heapq.heappush(self._due_heap, (deadline_ms, token))
        self._due[token] = deadline_ms
        job = _CloseJob(
            counter, window_id, max_time_ms, deadline_ms, asyncio.get_running_loop().create_future()
        )
        self._jobs.add(job)
        try:
            loop.call_soon_threadsafe(self._start_job, job)
            return await job.answer
        except asyncio.CancelledError:
            job.withdrawn = True
            with contextlib.suppress(RuntimeError):  # the thread's loop ended already
                loop.call_soon_threadsafe(job.withdraw)
            raise
        finally:
            self._jobs.discard(job)
            self._forget(token)

    def _start_job(self, job: _CloseJob) -> None:
        """On the thread: wait for the job's deadline, close, answer (:meth:`_answer`)."""
        if job.withdrawn:
            return
        job.task = asyncio.ensure_future(
            self._at(job.counter, job.window_id, job.max_time_ms, job.deadline_ms)
        )
        job.task.add_done_callback(partial(self._answer, job))

    def _answer(self, job: _CloseJob, task: asyncio.Future[CloseResult]) -> None:
        """On the thread: queue the answer for the engine's loop. The answers of one turn of
        the thread's loop (a pipeline's closes) go over in one hand-over: each hand-over
        writes to the engine loop's wake-up socket, and the thread gives the GIL up for the
        write and may wait a switch interval to get it back while the engine's loop is busy."""
        if task.cancelled() and job.withdrawn:
            return
        self._outbox.append((job, task))
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._hand_over)

    def _hand_over(self) -> None:
        outbox, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_CloseJob, Any]]] = {}
        for job, task in outbox:
            by_loop.setdefault(job.answer.get_loop(), []).append((job, task))
        for target, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                target.call_soon_threadsafe(_deliver, items)

    def _forget(self, token: int) -> None:
        self._due.pop(token, None)
        if len(self._due_heap) > 2 * len(self._due) + 64:
            self._due_heap = [(deadline, t) for t, deadline in self._due.items()]
            heapq.heapify(self._due_heap)

    def closes_due(self, within_ms: float = CLOSES_DUE_MS) -> bool:
        """Whether a close handed over is due within ``within_ms`` (or due and not answered
        yet). Called on the engine's loop: dispatch holds back while it is true, so the
        dispatch of windows just closed does not keep the thread from the GIL while more
        closes are due (:meth:`wait_quiet`, before each read of a dispatch stream)."""
        heap = self._due_heap
        while heap and heap[0][1] not in self._due:
            heapq.heappop(heap)
        if not heap:
            return False
        return heap[0][0] <= self.clock.ms + self.clock.clock_ms() + within_ms

    async def wait_quiet(self, max_s: float = HOLD_FOR_CLOSES_S) -> None:
        """Return when no close is due (:meth:`closes_due`), after at most ``max_s``. Every
        caller shares one wait (one check every 5 ms, however many dispatchers wait)."""
        if not self.closes_due():
            return
        if self._quiet is None or self._quiet.done():
            self._quiet = asyncio.ensure_future(self._until_quiet(max_s))
        with contextlib.suppress(Exception):
            await asyncio.shield(self._quiet)

    async def _until_quiet(self, max_s: float) -> None:
        until = time.monotonic() + max_s
        while True:  # the condition moves with the clock: a short look every 5 ms
            if not self.closes_due() or time.monotonic() >= until:
                return
            await asyncio.sleep(0.005)

    async def _at(
        self, counter: WindowCounter, window_id: int, max_time_ms: int, deadline_ms: int
    ) -> CloseResult:
        assert self.closer is not None
        delay = (deadline_ms - self.clock.ms - self.clock.clock_ms()) / 1000
        if delay > 0:
            await asyncio.sleep(delay)
        while True:
            res = await self.closer.close(counter, window_id, max_time_ms)
            if res.status != "early":
                return res
            # the clock estimate was a little ahead of Redis's: the script says how much
            # remains (never back to a busy engine loop for that)
            await asyncio.sleep(max(res.count, 1) / 1000)

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop ended already
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(THREAD_JOIN_S)


class WindowTimer:
    """Closes the open window of one consumer at its time deadline."""

    def __init__(
        self,
        counter: WindowCounter,
        max_time_s: float,
        on_closed: Callable[[CloseResult], None],
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
        closer: TimeCloser | ClosingThread | None = None,
    ) -> None:
        self.counter = counter
        self.closer = closer
        self.max_time_s = max_time_s
        self.on_closed = on_closed
        self.clock_ms = clock_ms
        # redis_now - local_now: the engine's round-trip clock when closes are batched
        self.skew: ClockSkew | RedisClock = (
            closer.clock if closer is not None else ClockSkew(clock_ms)
        )
        self._window_id: int | None = None
        self._deadline: int | None = None  # Redis clock
        self._opened_at: int | None = None  # of the open window, while it holds events
        self._version = -1  # redis_now_ms of the newest observation applied
        self._changed = asyncio.Event()
        self._failures = 0  # consecutive failed closes (Redis unreachable)

    def observe(
        self, window_id: int, count: int, opened_at_ms: int | None, redis_now_ms: int
    ) -> None:
        """Tell the timer what the open window looks like (from an apply or a status read)."""
        if redis_now_ms < self._version:
            return
        self._version = redis_now_ms
        self.skew.note(redis_now_ms)
        self._opened_at = opened_at_ms if count > 0 else None
        target = deadline_ms(self._opened_at, self.max_time_s)
        if (window_id, target) != (self._window_id, self._deadline):
            self._window_id, self._deadline = window_id, target
            self._changed.set()

    def set_max_time(self, max_time_s: float) -> None:
        """A new time threshold (a reload): it applies to the open window at once (a deadline
        already past closes it now, the close script re-checking it on Redis's clock)."""
        self.max_time_s = max_time_s
        self._deadline = deadline_ms(self._opened_at, max_time_s)
        self._changed.set()

    def wake(self) -> None:
        """Re-examine the deadline now (also used to let ``run`` see a stop request)."""
        self._changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._changed.clear()
            if self._deadline is None:
                await self._wait_change(None)  # observe() and wake() set the event
                continue
            delay = (self._deadline - self.skew.ms - self.clock_ms()) / 1000
            if isinstance(self.closer, ClosingThread) and self.closer.alive:
                # the thread waits for the deadline; handed over only once it is near, so a
                # window closing by count long before its deadline never crosses threads
                if delay > HAND_OVER_AHEAD_S:
                    await self._wait_change(delay - HAND_OVER_AHEAD_S)
                    continue
                await self._fire()
                continue
            if delay > 0:
                await self._wait_change(delay)
                continue
            await self._fire()

    async def _wait_change(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _fire(self) -> None:
        wid = self._window_id
        assert wid is not None
        max_time_ms = round(self.max_time_s * 1000)
        try:
            if isinstance(self.closer, ClosingThread) and self.closer.alive:
                deadline = self._deadline
                assert deadline is not None
                handed = asyncio.ensure_future(
                    self.closer.close_at(self.counter, wid, max_time_ms, deadline)
                )
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait((handed, changed), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if not handed.done():  # a new deadline, a count close, a stop: withdrawn
                    handed.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                        await handed
                    return
                res = handed.result()
            elif isinstance(self.closer, TimeCloser):
                res = await self.closer.close(self.counter, wid, max_time_ms)
            else:
                res = await self.counter.close(
                    TriggerReason.TIME, expected_window_id=wid, max_time_ms=max_time_ms
                )
        except (RedisError, OSError) as exc:
            self._failures += 1
            if self._failures == 1:
                log.warning("time trigger of window %s delayed: Redis: %s (retrying)", wid, exc)
            await self._wait_change(backoff_delay(self._failures, FIRE_POLICY))
            return
        if self._failures:
            log.info("time trigger of window %s: Redis answers again", wid)
        self._failures = 0
        self.skew.note(res.redis_now_ms)
        if res.status == "early":
            self._deadline = res.redis_now_ms + res.count
            return
        if res.closed:
            self.on_closed(res)
        if self._window_id == wid:
            self._window_id, self._deadline = wid + 1 if res.closed else wid, None
            self._opened_at = None
