"""Running a consumer's ``processor`` hook off the event loop, in order, with a timeout.

User code must never freeze the instance: a hook that sleeps or loops on the event loop would
stop every consumer of the process, the heartbeat, the API and the console. So the records
of a poll that need the hook are classified (size, decode, filter, ``processor``) in a worker
thread, in order, one poll per thread hand-off (per event: a flag check, an index write and
an append; no lock, no clock).

A Python thread cannot be killed. When one event holds the hook for ``processor_timeout``
seconds, the event is given up as bad (stage ``process``, a ``TimeoutError``) and a *fresh*
thread carries on with the next record; the hung thread is told to stop after its call
returns (its result is thrown away, it never touches another record). At most
:data:`MAX_HUNG_CALLS` hung calls per consumer are left behind: the consumer keeps progressing
through that many hung events in a row, and only then waits (reported as ``stalled``) until
one of them returns. So a consumer never owns more than ``MAX_HUNG_CALLS + 1`` threads.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafkaconsole.engine.events import BAD, EventClassifier

log = logging.getLogger("kafkaconsole.processor")

#: Hung processor calls a consumer leaves behind before it waits for one of them to return.
MAX_HUNG_CALLS = 4

Outcome = tuple[int, Any, str, str, str]
"""What EventClassifier.classify says of one record: (COUNT | FILTERED | BAD, event, stage,
error, stack trace)."""


def describe_partition(key: Any) -> str:
    """``partition 3``, or ``orders partition 3`` for a TopicPartition."""
    topic = getattr(key, "topic", None)
    number = getattr(key, "partition", key)
    return f"{topic} partition {number}" if topic else f"partition {number}"


@dataclass(frozen=True, slots=True)
class ProcessorStall:
    """What holds a consumer's processor up (for status, health and the console)."""

    processor: str
    partition: Any
    """The partition (its number, or a TopicPartition when the consumer reads many topics)."""
    offset: int | None
    seconds: float
    timeout: float
    hung_calls: int = 0

    def describe(self) -> str:
        if self.partition is None:
            return (
                f"processor {self.processor}: {self.hung_calls} call(s) hung past "
                f"processor_timeout ({self.timeout:g}s); waiting {self.seconds:.1f}s for one "
                "to return"
            )
        return (
            f"processor {self.processor} has run for {self.seconds:.1f}s on "
            f"{describe_partition(self.partition)} offset {self.offset} (processor_timeout "
            f"{self.timeout:g}s)"
        )


@dataclass
class _Job:
    """One thread's share of a poll: records ``items[start:]``, in order.

    Per record the thread only checks ``stopped``, stores ``index`` and appends the outcome
    (each atomic under the GIL; no lock, no clock). The loop keeps the time: a record whose
    index has not moved for ``processor_timeout`` overran. The loop then sets ``stopped`` so
    the thread takes no further record; if the record returned meanwhile (its outcome is
    there), nothing overran and the loop resumes after what the thread finished.
    """

    classifier: EventClassifier
    items: Sequence[tuple[Any, int, bytes | None]]
    start: int
    stop_at_bad: bool
    done: asyncio.Future[None]
    outcomes: list[Outcome | None] = field(default_factory=list)
    index: int = -1  # the record taken last (an index into items)
    thread_id: int | None = None
    stopped: bool = False  # take no further record

    def run(self, loop: asyncio.AbstractEventLoop) -> None:
        self.thread_id = threading.get_ident()
        bad_partitions: set[Any] = set()
        classify = self.classifier.classify
        append = self.outcomes.append
        stop_at_bad = self.stop_at_bad
        try:
            for i in range(self.start, len(self.items)):
                if self.stopped:
                    return
                partition, _, value = self.items[i]
                if bad_partitions and partition in bad_partitions:
                    append(None)  # after a bad event with stop: not looked at
                    continue
                self.index = i
                try:
                    outcome = classify(value)
                except BaseException as exc:  # user code: SystemExit and the like included
                    error = f"{type(exc).__name__}: {exc}"
                    outcome = (BAD, None, "process", error, _format(exc))
                append(outcome)
                if stop_at_bad and outcome[0] == BAD:
                    bad_partitions.add(partition)
        finally:
            loop.call_soon_threadsafe(_resolve, self.done)

    def finished(self) -> int:
        """Index (into items) of the first record without an outcome."""
        return self.start + len(self.outcomes)


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _stack_of(thread_id: int | None) -> str:
    """Where a hung call is now (the DLQ's stack trace header for a timed-out event)."""
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    if frame is None:
        return ""
    return "Stack of the hung processor call (most recent call last):\n" + "".join(
        traceback.format_stack(frame)
    )


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ProcessorRunner:
    """Classifies records that need the processor hook, off the loop (see the module doc)."""

    def __init__(self, classifier: EventClassifier, target: str, timeout: float, name: str):
        self.classifier = classifier
        self.target = target
        self.timeout = timeout
        self.name = name
        self._current: _Job | None = None
        self._watched: tuple[int, float] | None = None  # (index, since) of the record in the hook
        self._hung: list[_Job] = []
        self._waiting_since: float | None = None  # waiting for a hung call to return
        self.timeouts = 0  # events given up after processor_timeout

    @property
    def hung_calls(self) -> int:
        self._hung = [job for job in self._hung if not job.done.done()]
        return len(self._hung)

    def stall(self, now: float | None = None) -> ProcessorStall | None:
        """What holds the processor up: an event in the hook for more than half its timeout,
        or every hung-call slot taken. None while it keeps up."""
        now = time.monotonic() if now is None else now
        if self._waiting_since is not None:
            return ProcessorStall(
                self.target, None, None, now - self._waiting_since, self.timeout, self.hung_calls
            )
        watched = self._watched
        if watched is None:
            return None
        index, since = watched
        held = now - since
        if held < self.timeout / 2:
            return None
        job = self._current
        if job is None or index >= len(job.items):
            return None
        partition, offset, _ = job.items[index]
        return ProcessorStall(self.target, partition, offset, held, self.timeout, self.hung_calls)

    async def classify(
        self,
        items: Sequence[tuple[Any, int, bytes | None]],
        stop: asyncio.Event,
        *,
        stop_at_bad: bool = False,
    ) -> list[Outcome | None] | None:
        """One outcome per ``(partition, offset, value)`` (the partition: its number, or a
        TopicPartition when the consumer reads many topics), in order (None: not looked at, after
        a bad event with ``stop_at_bad``); None when ``stop`` was set first (nothing decided:
        the records will be read again)."""
        loop = asyncio.get_running_loop()
        outcomes: list[Outcome | None] = []
        start = 0
        while start < len(items):
            if not await self._free_slot(stop):
                return None
            job = _Job(self.classifier, items, start, stop_at_bad, loop.create_future())
            self._current = job
            threading.Thread(
                target=job.run, args=(loop,), name=f"processor:{self.name}", daemon=True
            ).start()
            try:
                overran = await self._watch(job, stop)
            finally:
                self._current = None
                self._watched = None
            if overran is None:  # stopping: the records will be read again
                job.stopped = True
                self._hung.append(job)
                return None
            if overran < 0:  # the thread ended: all done, or it stopped after a near miss
                outcomes.extend(job.outcomes)
                start = job.finished()
                continue
            # the record overran processor_timeout: it is bad, the records before it keep
            # their outcomes, a fresh thread goes on after it
            held, start = overran, job.index
            outcomes.extend(job.outcomes[: start - job.start])
            partition, offset, _ = items[start]
            outcomes.append(
                (
                    BAD,
                    None,
                    "process",
                    f"TimeoutError: processor {self.target} did not return within "
                    f"processor_timeout ({self.timeout:g}s)",
                    _stack_of(job.thread_id),
                )
            )
            self.timeouts += 1
            self._hung.append(job)
            log.error(
                "%s: processor %s ran %.1fs on %s offset %d (processor_timeout "
                "%gs): the event is handled as bad; the call is left to finish in its thread "
                "(%d hung now, at most %d)",
                self.name,
                self.target,
                held,
                describe_partition(partition),
                offset,
                self.timeout,
                self.hung_calls,
                MAX_HUNG_CALLS,
            )
            start += 1
            if stop_at_bad:  # the consumer stops at this bad event: what follows is not decided
                outcomes.extend(None for _ in range(start, len(items)))
                return outcomes
        return outcomes

    async def _watch(self, job: _Job, stop: asyncio.Event) -> float | None:
        """Wait for ``job``: -1 when its thread ended, the seconds the record at ``job.index``
        held the hook when it overran ``processor_timeout`` (the thread is then stopped and
        left behind), None when ``stop`` was set first."""
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        check = min(self.timeout / 4, 1.0)
        try:
            while True:
                await asyncio.wait(
                    (job.done, stopping), timeout=check, return_when=asyncio.FIRST_COMPLETED
                )
                if job.done.done():
                    return -1
                if stop.is_set():
                    return None
                now = time.monotonic()
                index = job.index
                watched = self._watched
                if watched is None or watched[0] != index or job.finished() > index:
                    self._watched = (index, now)  # a new record in the hook: time it
                    continue
                if now - watched[1] < self.timeout:
                    continue
                job.stopped = True  # no further record; did this one return meanwhile?
                if job.finished() > index:
                    self._watched = None
                    continue  # a near miss: the thread ends after it, the loop resumes
                return now - watched[1]
        finally:
            stopping.cancel()

    async def _free_slot(self, stop: asyncio.Event) -> bool:
        """Wait while MAX_HUNG_CALLS calls are hung (False when ``stop`` was set first)."""
        if self.hung_calls < MAX_HUNG_CALLS:
            return True
        self._waiting_since = time.monotonic()
        log.error(
            "%s: %d processor calls are hung; waiting for one to return before going on",
            self.name,
            self.hung_calls,
        )
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while self.hung_calls >= MAX_HUNG_CALLS:
                pending: list[asyncio.Future[Any]] = [job.done for job in self._hung]
                await asyncio.wait([*pending, stopping], return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    return False
            log.info("%s: a hung processor call returned; going on", self.name)
            return True
        finally:
            stopping.cancel()
            self._waiting_since = None
