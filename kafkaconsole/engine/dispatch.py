"""Trigger delivery: closed windows reach their pipeline once, even across crashes.

Closing a window appends it to the consumer's ``dispatch`` stream in the same Lua call. One
instance at a time holds the consumer's dispatch lease and reads that stream with a consumer
group (XREADGROUP), claims the entries a dead instance left pending (XAUTOCLAIM), calls the
pipeline with retries, records the run status in the ``runs`` hash, then XACKs and deletes the
entry. Each call carries the idempotency key ``<consumer_id>:<window_id>``, so the rare
re-delivery after a crash mid-call is recognisable downstream.

Runs that happen elsewhere (Airbyte jobs, Airflow DAG runs) are started, recorded as RUNNING
with their run id, and followed to their final status. ``job_type = "sync"`` / ``"batch"``
finish one window's run before the next window is dispatched (later windows wait, in order, in
the stream); ``"async"`` runs in the background, at most ``max_concurrent_runs`` per pipeline.
An entry stays pending until its final status is recorded, so a new lease holder finds it
again: a run whose id was recorded is followed (not started twice), one whose final status was
recorded is only acknowledged.

An idle dispatcher does not poll its stream: :class:`DispatchWaker` holds one blocking XREAD
over the dispatch streams of every consumer this instance dispatches (one Redis connection
for them all) and wakes the dispatcher whose stream grew; a window closed here wakes it
directly. Beside that, an idle dispatcher looks at its stream once per ``idle_poll_s`` (the
engine: once per lease period, and every ``takeover_poll_s`` for two lease periods after it
took the lease, to claim what a dead instance left pending: 0.5 s, longer with hundreds of
consumers, see :meth:`~kafkaconsole.config.models.AppConfig.takeover_poll_s`).

The engine's dispatchers do not renew their leases one by one: :class:`LeaseRenewer` renews
them all in one pipeline every third of a lease period (a dispatcher made without one runs a
renewer of its own).

A :class:`~kafkaconsole.engine.breaker.CircuitBreaker` per consumer holds triggers back (in the
stream, marked QUEUED) after ``breaker_threshold`` consecutive failed runs, until a probe run
succeeds after ``breaker_cooldown``. Its state is in :attr:`TriggerDispatcher.breaker` and in
the Redis hash ``<prefix>:<consumer_id>:breaker`` (:func:`read_breaker`).

:func:`redispatch` puts a past window back on the dispatch stream (same window id, same
idempotency key).

Backlog: with ``backlog_policy = "coalesce"``, or once ``max_backlog`` windows wait (the
stream's XLEN, read before each read of it), the windows read together run as one coalesced
run (:meth:`TriggerRecord.coalesced`) whose key is ``<consumer_id>:<first>-<last>``. Every
window of it is recorded running with ``detail.coalesced_into`` before the call, the first
also with ``detail.windows`` (the run's window ids), so a new lease holder runs (or follows)
exactly those windows again under the same key; a window whose own run was started is never
coalesced. Their final statuses are written at once (``coalesced`` or ``failed``) and their
entries acknowledged together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError, WatchError

from kafkaconsole.config.models import AppConfig, ConsumerConfig, RedisConfig, RetryPolicy
from kafkaconsole.config.secrets import mask_strings
from kafkaconsole.engine.breaker import BreakerSnapshot, BreakerState, CircuitBreaker
from kafkaconsole.engine.clients import PoolExhausted, dedicated_redis_client
from kafkaconsole.engine.keys import DISPATCH_GROUP, ConsumerKeys, tagged_layout
from kafkaconsole.engine.pipelines.base import Pipeline
from kafkaconsole.engine.records import (
    HistoryEntry,
    OffsetRange,
    RunResult,
    RunStatus,
    TriggerReason,
    TriggerRecord,
)
from kafkaconsole.engine.redis_cluster import is_cluster, slot_of
from kafkaconsole.engine.retry import backoff_delay, call_with_retry, follow_run, retry_call

log = logging.getLogger("kafkaconsole.dispatch")

T = TypeVar("T")

_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A window's run begins: its status becomes RUNNING unless one is recorded already (then that
# status is returned, nothing written). KEYS[1] the runs hash; ARGV: window id, RUNNING status,
# the window id the history limit forgets ('': none).
_BEGIN = """
local prior = redis.call('HGET', KEYS[1], ARGV[1])
if prior then return prior end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[1], ARGV[3]) end
return false
"""

# A run's status (of a coalesced run: of each of its windows), and once final its entries'
# XACK + XDEL, in one atomic step. KEYS[1] the runs hash, KEYS[2] the dispatch stream; ARGV:
# group, the first window's status, the other windows' status, n, m, n window ids, m window
# ids forgotten (the history limit), then the entry ids (none while the run is not over),
# acknowledged in slices (Lua's unpack takes at most ~8,000 values).
_RECORD = """
local n, m = tonumber(ARGV[4]), tonumber(ARGV[5])
if n > 0 then redis.call('HSET', KEYS[1], ARGV[6], ARGV[2]) end
for i = 7, 5 + n do redis.call('HSET', KEYS[1], ARGV[i], ARGV[3]) end
for i = 6 + n, 5 + n + m do redis.call('HDEL', KEYS[1], ARGV[i]) end
local first = 6 + n + m
while first <= #ARGV do
  local last = math.min(first + 499, #ARGV)
  redis.call('XACK', KEYS[2], ARGV[1], unpack(ARGV, first, last))
  redis.call('XDEL', KEYS[2], unpack(ARGV, first, last))
  first = last + 1
end
return 1
"""

#: Creating the dispatch group while Redis does not answer: 0.5 s doubling to 5 s.
GROUP_POLICY = RetryPolicy(max_attempts=1, initial_backoff=0.5, max_backoff=5.0, jitter=True)
#: Recording a finished run while Redis does not answer: 0.2 s doubling to 2 s, for at most
#: RECORD_WAIT_S (then the entry stays pending and the run is made again, same key).
RECORD_POLICY = RetryPolicy(max_attempts=1, initial_backoff=0.2, max_backoff=2.0, jitter=True)
RECORD_WAIT_S = 30.0
READ_COUNT = 50
"""Stream entries read per XREADGROUP / XAUTOCLAIM."""
COALESCE_MAX = 10_000
"""Windows one coalesced run holds at most (stream entries read per read while coalescing)."""

EventsLoader = Callable[[TriggerRecord], Awaitable[list[Any]]]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def breaker_key(keys: ConsumerKeys) -> str:
    """``<prefix>:<consumer_id>:breaker``: the hash holding the consumer's circuit breaker."""
    return keys.breaker


async def read_breaker(redis: Redis, keys: ConsumerKeys) -> BreakerSnapshot | None:
    """The breaker state the dispatching instance last wrote (None: never written, i.e.
    closed). ``probe_at`` says when an open circuit lets its next probe run through."""
    return BreakerSnapshot.from_redis_hash(await redis.hgetall(breaker_key(keys)))


def record_from_fields(fields: dict[Any, Any], cfg: ConsumerConfig) -> TriggerRecord:
    """A :class:`TriggerRecord` from a history/dispatch stream entry."""
    entry = HistoryEntry.parse(fields)
    return TriggerRecord(
        consumer_id=cfg.consumer_id,
        pipeline_name=cfg.pipeline_name,
        connection_id=cfg.connection_id,
        job_type=cfg.job_type,
        window_id=entry.window_id,
        reason=TriggerReason(entry.reason),
        count=entry.count,
        opened_at_ms=entry.opened_at_ms,
        closed_at_ms=entry.closed_at_ms,
        offsets=tuple(
            OffsetRange(o["topic"], int(o["partition"]), int(o["first"]), int(o["last"]))
            for o in entry.offsets
        ),
        replay=entry.replay,
    )


def _result_from_json(raw: bytes | str | None) -> RunResult | None:
    """The RunResult a ``runs`` hash value holds (enough of it to resume or skip)."""
    if not raw:
        return None
    try:
        body = orjson.loads(raw)
        status = RunStatus(body["status"])
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
        return None
    started = body.get("started_at_ms")
    return RunResult(
        status=status,
        run_id=body.get("run_id"),
        attempts=int(body.get("attempts") or 1),
        error=body.get("error"),
        started_at_ms=int(started) if isinstance(started, int) else None,
        detail=body.get("detail") or {},
    )


def _in_coalesced_run(prior: RunResult | None) -> bool:
    """A window's unfinished status says it is in a coalesced run (its first window's status
    lists the run's windows: :func:`_plan_of`)."""
    return prior is not None and not prior.status.final and bool(prior.detail.get("coalesced_into"))


def _plan_of(prior: RunResult | None) -> list[int] | None:
    """The window ids of the coalesced run a window's unfinished status says it is the first
    of (the run's other windows only point at it, ``detail.coalesced_into``)."""
    if prior is None or prior.status.final:
        return None
    windows = prior.detail.get("windows")
    if not prior.detail.get("coalesced_into") or not isinstance(windows, list):
        return None
    try:
        return [int(w) for w in windows]
    except (TypeError, ValueError):
        return None


def _status_json(result: RunResult, instance_id: str) -> bytes:
    body = {**result.to_json_dict(), "instance": instance_id}
    if result.started_at_ms is not None:
        body["started_at_ms"] = result.started_at_ms
    return orjson.dumps(body)


class TriggerDispatcher:
    """Delivers one consumer's closed windows to its pipeline."""

    def __init__(
        self,
        redis: Redis,
        keys: ConsumerKeys,
        cfg: ConsumerConfig,
        pipeline: Pipeline,
        policy: RetryPolicy,
        instance_id: str,
        *,
        lease_ms: int = 10_000,
        history_limit: int = 1000,
        events_loader: EventsLoader | None = None,
        on_result: Callable[[TriggerRecord, RunResult], None] | None = None,
        max_concurrent: int | None = None,
        clock: Callable[[], float] = time.time,
        mask: Callable[[str], str] | None = None,
        idle_poll_s: float = 0.5,
        takeover_poll_s: float = 0.5,
        renewer: LeaseRenewer | None = None,
        hold: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.redis = redis
        # the engine's closing thread's wait_quiet: a dispatch waits (briefly) while time
        # closes are due, so it does not keep the thread from the GIL
        self._wait_quiet = hold
        # the instance's shared lease renewer (one pipeline for every dispatcher), or None:
        # this dispatcher runs one of its own
        self._renewer = renewer
        self.idle_poll_s = idle_poll_s
        self.takeover_poll_s = takeover_poll_s
        # monotonic: poll every takeover_poll_s until then (lease just taken)
        self._fast_until = 0.0
        self._mask = mask
        self.keys = keys
        self.cfg = cfg
        self.pipeline = pipeline
        self.policy = policy
        self.instance_id = instance_id
        self.lease_ms = lease_ms
        self.history_limit = history_limit
        self.events_loader = events_loader
        self.on_result = on_result or (lambda record, result: None)
        self.leader = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._release = redis.register_script(_RELEASE)
        self._begin = redis.register_script(_BEGIN)
        self._record_script = redis.register_script(_RECORD)
        # async runs in flight: per pipeline (shared with other consumers) unless overridden
        self._slots = (
            pipeline.run_slots if max_concurrent is None else asyncio.Semaphore(max_concurrent)
        )
        self._running: set[asyncio.Task[bool]] = set()
        self._inflight: set[bytes] = set()  # entry ids being run (never read them twice)
        self._held: set[int] = set()  # windows marked QUEUED while the circuit is open
        self._own_pending_checked = False
        # monotonic: when to look again for entries a stopped instance left (XAUTOCLAIM)
        self._claim_at = 0.0
        pcfg = pipeline.cfg
        self._breaker = CircuitBreaker(pcfg.breaker_threshold, pcfg.breaker_cooldown, clock)
        self._breaker_written: BreakerSnapshot | None = None
        self._breaker_restore = True
        self._capped = False  # the backlog reached max_backlog: coalescing whatever the policy

    # -- public -------------------------------------------------------------------------------

    @property
    def breaker(self) -> BreakerSnapshot:
        """The circuit breaker now: state (closed / open / half-open), consecutive failures,
        opened_at (epoch s) and probe_at."""
        return self._breaker.snapshot()

    @property
    def breaker_key(self) -> str:
        return breaker_key(self.keys)

    def wake(self) -> None:
        """A window was closed locally: look at the stream now."""
        self._wake.set()

    async def ensure_group(self) -> None:
        await _ensure_group(self.redis, self.keys)

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        renewer = self._renewer
        keeper: asyncio.Task[None] | None = None
        if renewer is None:  # made without the engine's renewer: one of its own
            renewer = LeaseRenewer(self.redis, self.instance_id, self.lease_ms)
            keeper = asyncio.create_task(renewer.run(stop), name=f"lease:{self.cfg.consumer_id}")
        renewer.join(self)
        try:
            try:
                await retry_call(
                    self.ensure_group,
                    GROUP_POLICY,
                    retry_on=(RedisError, OSError),
                    what=f"{self.cfg.consumer_id}: creating the dispatch group",
                    attempts=0,
                    stop=stop,
                    logger=log,
                )
            except (RedisError, OSError):
                return  # stopping before Redis answered
            while not stop.is_set():
                if not self.leader:
                    await self._sleep(max(self.idle_poll_s, 0.5))  # the lease keeper wakes it
                    continue
                if self._wait_quiet is not None:
                    await self._wait_quiet()
                # a wake from here on (a window closed meanwhile) means: read again
                self._wake.clear()
                try:
                    if self._breaker_restore:
                        await self._restore_breaker()
                    entries, read_all = await self._next_entries()
                except (RedisError, OSError) as exc:
                    if not isinstance(exc, PoolExhausted):  # the pool says so, once
                        log.warning("%s: dispatch read failed: %s", self.cfg.consumer_id, exc)
                    if "NOGROUP" in str(exc):  # Redis came back without its data
                        with contextlib.suppress(RedisError, OSError):
                            await self.ensure_group()
                    await self._sleep(0.5)
                    continue
                if entries:
                    pause = await self._dispatch_batch(entries, stop)
                    if pause is not None:
                        # stopped part-way: the rest stay pending; read them again, in order
                        self._own_pending_checked = False
                        if pause > 0:
                            await self._sleep(pause)
                        continue
                    if not read_all:
                        continue  # there may be more to read now
                # nothing more waits unless woken since the read (or another instance's
                # stopped: its entries are claimed at the next look), so no read to find none
                fast = time.monotonic() < self._fast_until
                await self._sleep(
                    self.takeover_poll_s if fast else self.idle_poll_s, keep_wake=True
                )
        finally:
            await self._drain()
            # after any renewal in flight, so the release below is the last word
            await renewer.leave(self)
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(BaseException):
                    await keeper
            with contextlib.suppress(Exception):
                await self._release(keys=[self.keys.dispatch_lease], args=[self.instance_id])
            self.leader = False

    # -- the loop -----------------------------------------------------------------------------

    async def _dispatch_batch(
        self, entries: list[tuple[bytes, dict[Any, Any]]], stop: asyncio.Event
    ) -> float | None:
        """Dispatch ``entries`` in order. None when all went; else the seconds to wait before
        reading the rest again (breaker open, slot wait interrupted, a failed recording)."""
        coalescing = self.cfg.backlog_policy == "coalesce" or self._capped
        done: set[bytes] = set()  # entries a coalesced run took (or acknowledged)
        for idx, (entry_id, fields) in enumerate(entries):
            if entry_id in done:
                continue
            if stop.is_set() or not self.leader:
                return 0.0
            try:
                record = record_from_fields(fields, self.cfg)
            except (KeyError, ValueError, TypeError) as exc:
                log.error(
                    "%s: dropping malformed dispatch entry %s: %s",
                    self.cfg.consumer_id,
                    _s(entry_id),
                    exc,
                )
                await self._ack(entry_id)
                continue
            try:
                if (
                    self.cfg.job_type == "sync"
                    and self._breaker.state == BreakerState.CLOSED
                    and not (coalescing and idx + 1 < len(entries))
                ):
                    # the common case: no run recorded, so it starts (RUNNING) in one step
                    raw: bytes | str | None = await self._begin_run(record)
                    if raw is None:
                        self._held.discard(record.window_id)
                        if not await self._run_one([entry_id], record, None, begun=True):
                            self._breaker.record_neutral()
                            return 0.5
                        continue
                else:
                    raw = await self.redis.hget(self.keys.runs, str(record.window_id))
                prior = _result_from_json(raw)
                if prior is not None and prior.status.final:
                    # recorded, then the instance died before XACK: nothing left to do
                    await self._ack(entry_id)
                    continue
                plan = _plan_of(prior)
                if plan is not None or (coalescing and idx + 1 < len(entries)):
                    group = await self._group(entries[idx:], record, prior, plan, done)
                    if group is not None:
                        pause = await self._dispatch_group(group, prior, plan)
                        if pause is not None:
                            return pause
                        continue
                resume = (
                    prior is not None
                    and self.pipeline.remote_runs
                    and prior.run_id is not None
                    and prior.status in (RunStatus.RUNNING, RunStatus.QUEUED)
                )
                if not resume and not self._breaker.allow():
                    await self._hold(record)
                    return max(min(self._breaker.seconds_until_allowed(), 1.0), 0.05)
            except (RedisError, OSError) as exc:
                if not isinstance(exc, PoolExhausted):  # the pool says so, once
                    log.warning("%s: dispatch read failed: %s", self.cfg.consumer_id, exc)
                return 0.5
            self._held.discard(record.window_id)
            if not await self._dispatch([entry_id], record, prior if resume else None):
                self._breaker.record_neutral()  # a probe that never ran may go again
                return 0.5
        return None

    async def _group(
        self,
        rest: list[tuple[bytes, dict[Any, Any]]],
        first: TriggerRecord,
        first_prior: RunResult | None,
        plan: list[int] | None,
        done: set[bytes],
    ) -> list[tuple[bytes, TriggerRecord]] | None:
        """The windows of one coalesced run, starting at ``rest[0]`` (``first``): those of the
        recorded ``plan`` (a coalesced run started before, retried with the same windows so
        the same idempotency key), else every waiting window of ``rest`` in order up to the
        first whose own run was already started. None: fewer than two windows,
        run ``first`` alone. The entries taken, and any found already recorded, go in
        ``done``."""
        if plan is None and self._in_progress_alone(first_prior):
            return None
        group = [(rest[0][0], first)]
        tail = []
        for entry_id, fields in rest[1:]:
            try:
                tail.append((entry_id, record_from_fields(fields, self.cfg)))
            except (KeyError, ValueError, TypeError):
                break  # the single path drops it, in its turn
        raws = (
            await self.redis.hmget(self.keys.runs, [str(r.window_id) for _, r in tail])
            if tail
            else []
        )
        for (entry_id, record), raw in zip(tail, raws, strict=True):
            prior = _result_from_json(raw)
            if prior is not None and prior.status.final:
                await self._ack(entry_id)
                done.add(entry_id)
                continue
            if plan is not None:
                if record.window_id in plan:
                    group.append((entry_id, record))
                continue
            if _in_coalesced_run(prior) or self._in_progress_alone(prior):
                break  # in a run of its own or of others: never regrouped
            group.append((entry_id, record))
        if plan is None and len(group) < 2:
            return None
        done.update(entry_id for entry_id, _ in group)
        return group

    def _in_progress_alone(self, prior: RunResult | None) -> bool:
        """A run of this window alone was started (maybe delivered under its own key before
        a crash): it is run, or followed, alone again, never coalesced."""
        if prior is None or _in_coalesced_run(prior):
            return False
        return prior.status == RunStatus.RUNNING or (
            prior.status == RunStatus.QUEUED and prior.run_id is not None
        )

    async def _dispatch_group(
        self,
        group: list[tuple[bytes, TriggerRecord]],
        first_prior: RunResult | None,
        plan: list[int] | None,
    ) -> float | None:
        """Run the windows of ``group`` as one coalesced run (or resume following it). None
        when it went; else seconds to wait before reading the entries again."""
        record = TriggerRecord.coalesced([r for _, r in group])
        resume = (
            first_prior
            if plan is not None
            and first_prior is not None
            and self.pipeline.remote_runs
            and first_prior.run_id is not None
            and first_prior.status in (RunStatus.RUNNING, RunStatus.QUEUED)
            else None
        )
        if resume is None and not self._breaker.allow():
            # a run planned before keeps its windows (and so its key) while held back
            await self._hold(record if plan is not None else group[0][1])
            return max(min(self._breaker.seconds_until_allowed(), 1.0), 0.05)
        for _, member in group:
            self._held.discard(member.window_id)
        log.log(
            logging.WARNING if self._capped else logging.INFO,
            "%s: running %d waiting windows (%d to %d) as one coalesced run of pipeline %s "
            "(idempotency key %s)%s",
            record.consumer_id,
            len(group),
            group[0][1].window_id,
            group[-1][1].window_id,
            record.pipeline_name,
            record.idempotency_key,
            f": max_backlog ({self.cfg.max_backlog}) reached" if self._capped else "",
        )
        if not await self._dispatch([e for e, _ in group], record, resume):
            self._breaker.record_neutral()
            return 0.5
        return None

    async def _dispatch(
        self, entry_ids: list[bytes], record: TriggerRecord, resume: RunResult | None
    ) -> bool:
        """Run (or resume) one entry, or the entries of one coalesced run. False if they are
        still pending and should be read again."""
        if self.cfg.job_type != "async":
            return await self._run_one(entry_ids, record, resume)
        if not await self._until_stopped(self._slots.acquire(), release_slot=True):
            return False
        self._inflight.update(entry_ids)

        async def run_and_release() -> bool:
            try:
                done = await self._run_one(entry_ids, record, resume)
                if not done:
                    self._breaker.record_neutral()
                return done
            finally:
                self._slots.release()

        task = asyncio.create_task(run_and_release(), name=f"run:{record.idempotency_key}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return True

    async def _run_one(
        self,
        entry_ids: list[bytes],
        record: TriggerRecord,
        resume: RunResult | None,
        *,
        begun: bool = False,
    ) -> bool:
        """Start (or resume following) one run and record its final status. Returns False if
        the entries stay pending (stopped while waiting, Redis failed while recording).
        ``begun``: RUNNING is recorded already (:meth:`_begin_run`)."""
        self._inflight.update(entry_ids)
        try:
            if resume is not None:
                log.info(
                    "%s: following run %s of window %d again",
                    record.consumer_id,
                    resume.run_id,
                    record.window_id,
                )
                started = resume
            else:
                events = None
                if self.cfg.job_type == "batch" and self.events_loader is not None:
                    events = await self.events_loader(record)
                payload = record.to_json_dict(events)
                if not begun:
                    await self._write_status(
                        record, RunResult(RunStatus.RUNNING, started_at_ms=_now_ms())
                    )

                def on_attempt(attempt: int, error: str | None) -> None:
                    if error:
                        log.warning(
                            "%s: pipeline %s attempt %d for window %d failed: %s",
                            record.consumer_id,
                            record.pipeline_name,
                            attempt,
                            record.window_id,
                            error,
                        )

                started = await call_with_retry(
                    self.pipeline, record, payload, self.policy, on_attempt=on_attempt
                )
            result = started
            if not started.status.final:
                if not self.pipeline.remote_runs:
                    result = RunResult(
                        RunStatus.SUCCEEDED,
                        run_id=started.run_id,
                        attempts=started.attempts,
                        started_at_ms=started.started_at_ms,
                        finished_at_ms=_now_ms(),
                        detail={**started.detail, "reported_status": str(started.status)},
                    )
                else:
                    if started.run_id is not None:
                        await self._write_status(record, started)

                    async def on_progress(progress: RunResult) -> None:
                        await self._write_status(record, progress)

                    followed = await self._until_stopped(
                        follow_run(
                            self.pipeline, record, started, self.policy, on_progress=on_progress
                        )
                    )
                    if followed is None:
                        log.info(
                            "%s: stopped following run %s of window %d; it stays pending",
                            record.consumer_id,
                            started.run_id,
                            record.window_id,
                        )
                        return False
                    result = followed
            await self._record_final(record, result, entry_ids)
            self._record_outcome(result)
            with contextlib.suppress(RedisError, OSError):
                await self._persist_breaker()
            try:
                self.on_result(record, result)
            except Exception:
                log.exception("%s: on_result callback failed", record.consumer_id)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis down while recording: the entry stays pending
            log.error(
                "%s: dispatch of window %d interrupted: %s: %s",
                record.consumer_id,
                record.window_id,
                type(exc).__name__,
                exc,
            )
            return False
        finally:
            self._inflight.difference_update(entry_ids)

    async def _record_final(
        self, record: TriggerRecord, result: RunResult, entry_ids: list[bytes]
    ) -> None:
        """Record a finished run's status and acknowledge its entries, waiting for Redis up to
        :data:`RECORD_WAIT_S` (a failover, a restart): the run is not made again later from
        its pending entry for want of a moment's wait."""

        async def record_it() -> None:
            # one atomic step (a script; one cluster slot per consumer): the status and the
            # entries' XACK + XDEL, so no crash leaves a final status with its entry pending
            await self._record(record, result, entry_ids)

        await retry_call(
            record_it,
            RECORD_POLICY,
            retry_on=(RedisError, OSError),
            what=f"{record.consumer_id}: recording the run of window {record.window_id}",
            attempts=0,
            stop=self._stop,
            give_up_after=RECORD_WAIT_S,
            logger=log,
            give_up_level=logging.DEBUG,  # the caller logs the interruption
        )

    async def _until_stopped(
        self, aw: Coroutine[Any, Any, T], *, release_slot: bool = False
    ) -> T | None:
        """Await ``aw`` unless the dispatcher is told to stop first (then None)."""
        task: asyncio.Task[T] = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled():
            return None
        if release_slot and self._stop.is_set():
            # acquired just as we stopped: hand the slot back
            if task.exception() is None:
                self._slots.release()
            return None
        return task.result()

    # -- breaker ------------------------------------------------------------------------------

    def _record_outcome(self, result: RunResult) -> None:
        before = self._breaker.state
        if result.status in (RunStatus.SUCCEEDED, RunStatus.COALESCED):
            self._breaker.record_success()
        elif result.status == RunStatus.FAILED:
            self._breaker.record_failure()
        else:
            self._breaker.record_neutral()
        after = self._breaker.state
        if after == before:
            return
        snap = self._breaker.snapshot()
        if after == BreakerState.OPEN:
            log.error(
                "%s: circuit OPEN after %d consecutive failed runs of pipeline %s; "
                "triggers wait in the stream, next probe in %gs",
                self.cfg.consumer_id,
                snap.consecutive_failures,
                self.pipeline.name,
                snap.cooldown,
            )
        elif after == BreakerState.CLOSED:
            log.warning(
                "%s: circuit closed: pipeline %s ran successfully",
                self.cfg.consumer_id,
                self.pipeline.name,
            )

    async def _hold(self, record: TriggerRecord) -> None:
        """The circuit is open: the window waits in the stream; history shows it queued."""
        await self._persist_breaker()
        if record.window_id in self._held:
            return
        self._held.add(record.window_id)
        snap = self._breaker.snapshot()
        log.info(
            "%s: window %d held back: circuit %s", record.consumer_id, record.window_id, snap.state
        )
        await self._write_status(
            record,
            RunResult(
                RunStatus.QUEUED,
                attempts=0,
                detail={"held": "circuit open", "probe_at": snap.probe_at},
            ),
        )

    async def _persist_breaker(self) -> None:
        snap = self._breaker.snapshot()
        if snap == self._breaker_written:
            return
        fields: dict[Any, Any] = {
            **snap.to_redis_hash(),
            "instance": self.instance_id,
            "pipeline": self.pipeline.name,
            "updated_at": str(time.time()),
        }
        await self.redis.hset(self.breaker_key, mapping=fields)
        self._breaker_written = snap

    async def _restore_breaker(self) -> None:
        """Newly the dispatcher: take over the breaker the previous holder persisted."""
        snap = await read_breaker(self.redis, self.keys)
        self._breaker_restore = False
        if snap is not None and snap != self._breaker.snapshot():
            self._breaker.restore(snap)
            self._breaker_written = None
            if snap.state != BreakerState.CLOSED:
                log.warning(
                    "%s: circuit is %s (taken over from the previous dispatcher)",
                    self.cfg.consumer_id,
                    snap.state,
                )

    # -- Redis --------------------------------------------------------------------------------

    async def _sleep(self, timeout: float, *, keep_wake: bool = False) -> None:
        """Wait ``timeout`` seconds, or less if woken (a window closed) or told to stop;
        ``keep_wake``: a wake since the loop's read counts (it returns at once)."""
        if self._stop.is_set():
            return
        if not keep_wake:
            self._wake.clear()
        waiters = {
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._stop.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def note_lease(self, held: bool) -> None:
        """What a renewal of the lease answered: take over when it was just taken, and keep
        the entries being run fresh while it is held."""
        if held and not self.leader:
            log.debug("%s: this instance dispatches its triggers", self.cfg.consumer_id)
            self._own_pending_checked = False
            self._claim_at = 0.0
            self._breaker_restore = True
            self._fast_until = time.monotonic() + 2 * self.lease_ms / 1000
            self._wake.set()
        self.leader = held
        if held and self._inflight:
            # keep our running entries fresh so no other instance claims them as dead
            with contextlib.suppress(RedisError, OSError):
                await self.redis.xclaim(
                    self.keys.dispatch,
                    DISPATCH_GROUP,
                    self.instance_id,
                    min_idle_time=0,
                    message_ids=list(self._inflight),
                    justid=True,
                )

    async def _read_count(self) -> int:
        """Entries to read at once: :data:`COALESCE_MAX` while coalescing (``backlog_policy =
        "coalesce"``, or the backlog reached ``max_backlog``), else :data:`READ_COUNT`."""
        if self.cfg.backlog_policy == "coalesce":
            return COALESCE_MAX
        return self._note_depth(int(await self.redis.xlen(self.keys.dispatch)))

    def _note_depth(self, depth: int) -> int:
        """The stream's length (XLEN) before a read: whether the backlog reached
        ``max_backlog`` (said once, as is its return below it); the entries to read."""
        capped = depth >= self.cfg.max_backlog
        if capped and not self._capped:
            log.warning(
                "%s: %d windows wait for pipeline %s: max_backlog (%d) reached; the waiting "
                "windows run as one coalesced run until the backlog is below it again",
                self.cfg.consumer_id,
                depth,
                self.pipeline.name,
                self.cfg.max_backlog,
            )
        elif self._capped and not capped:
            log.warning(
                "%s: backlog below max_backlog again (%d windows wait)", self.cfg.consumer_id, depth
            )
        self._capped = capped
        return COALESCE_MAX if capped else READ_COUNT

    async def _next_entries(self) -> tuple[list[tuple[bytes, dict[Any, Any]]], bool]:
        """The entries to dispatch next, and whether they are all that waited (new entries,
        fewer than asked for)."""
        stream = self.keys.dispatch
        now = time.monotonic()
        if self._own_pending_checked and now < self._claim_at:
            return await self._read_new()
        count = await self._read_count()
        if not self._own_pending_checked:
            # entries this instance id read before and never acknowledged, oldest first
            entries = await self._own_pending(count)
            if entries:
                return entries, False
            self._own_pending_checked = True
        # entries left pending by an instance that stopped holding the lease: they can be
        # claimed only once idle for the lease, so a look every takeover_poll_s (not at every
        # read: a busy dispatcher reads after each window) delays a takeover by that at most
        if now >= self._claim_at:
            claimed: Any = await self.redis.xautoclaim(
                stream,
                DISPATCH_GROUP,
                self.instance_id,
                min_idle_time=self.lease_ms,
                start_id="0-0",
                count=count,
            )
            entries = [(i, f) for i, f in claimed[1] if f and i not in self._inflight]
            for deleted in claimed[2] if len(claimed) > 2 else []:
                await self.redis.xack(stream, DISPATCH_GROUP, deleted)
            if entries:
                return entries, False  # and look again at the next read: there may be more
            self._claim_at = now + self.takeover_poll_s
        return await self._read_new(count)

    async def _read_new(self, count: int | None = None) -> tuple[list[Any], bool]:
        """New entries (XREADGROUP ``>``) and whether they are all that waited. Without
        ``count`` (the backlog's depth not read yet) the stream's XLEN goes with the read in
        one round trip, and if the backlog turns out capped a full read is followed by the
        rest, up to :data:`COALESCE_MAX`, so the windows waiting run as one."""
        stream = self.keys.dispatch
        if count is None and self.cfg.backlog_policy == "coalesce":
            count = COALESCE_MAX
        if count is None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xlen(stream)
            pipe.xreadgroup(DISPATCH_GROUP, self.instance_id, {stream: ">"}, count=READ_COUNT)
            depth, res = await pipe.execute()
            read: list[Any] = res[0][1] if res else []
            count = self._note_depth(int(depth))
            if count > READ_COUNT and len(read) == READ_COUNT:
                more: Any = await self.redis.xreadgroup(
                    DISPATCH_GROUP, self.instance_id, {stream: ">"}, count=count - READ_COUNT
                )
                read += more[0][1] if more else []
            else:
                count = READ_COUNT
        else:
            got: Any = await self.redis.xreadgroup(
                DISPATCH_GROUP, self.instance_id, {stream: ">"}, count=count
            )
            read = got[0][1] if got else []
        return [(i, f) for i, f in read if f], len(read) < count

    async def _own_pending(self, count: int = READ_COUNT) -> list[tuple[bytes, dict[Any, Any]]]:
        stream = self.keys.dispatch
        start: bytes | str = "0"
        while True:
            res: Any = await self.redis.xreadgroup(
                DISPATCH_GROUP, self.instance_id, {stream: start}, count=count
            )
            batch: list[Any] = res[0][1] if res else []
            if not batch:
                return []
            entries = []
            for entry_id, fields in batch:
                if not fields:  # deleted while pending
                    await self.redis.xack(stream, DISPATCH_GROUP, entry_id)
                elif entry_id not in self._inflight:
                    entries.append((entry_id, fields))
            if entries or len(batch) < count:
                return entries
            start = batch[-1][0]

    async def _ack(self, *entry_ids: bytes) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.keys.dispatch, DISPATCH_GROUP, *entry_ids)
        pipe.xdel(self.keys.dispatch, *entry_ids)
        await pipe.execute()

    async def _write_status(self, record: TriggerRecord, result: RunResult) -> None:
        """The run status of ``record``'s window; of a coalesced run, of every window in it
        at once, each pointing at the run (``detail.coalesced_into``: its idempotency key; the
        first also ``detail.windows``, its window ids), a success recorded as ``coalesced``."""
        await self._record(record, result, [])

    async def _record(
        self, record: TriggerRecord, result: RunResult, entry_ids: list[bytes]
    ) -> None:
        """:meth:`_write_status` and the XACK + XDEL of ``entry_ids``, in one atomic step (a
        script: the status is sent once, however many windows a coalesced run holds)."""
        first, rest, windows, forget = self._status_fields(record, result)
        args: list[bytes | str | int] = [DISPATCH_GROUP, first, rest, len(windows), len(forget)]
        await self._record_script(
            keys=[self.keys.runs, self.keys.dispatch], args=[*args, *windows, *forget, *entry_ids]
        )

    async def _begin_run(self, record: TriggerRecord) -> bytes | None:
        """Record ``record``'s window (not a coalesced run) RUNNING unless a status is recorded
        already: None when written, else the status found (nothing written), in one step."""
        body, _, windows, forget = self._status_fields(
            record, RunResult(RunStatus.RUNNING, started_at_ms=_now_ms())
        )
        raw: bytes | None = await self._begin(
            keys=[self.keys.runs], args=[windows[0], body, forget[0] if forget else ""]
        )
        return raw

    def _status_fields(
        self, record: TriggerRecord, result: RunResult
    ) -> tuple[bytes, bytes, list[int], list[int]]:
        """The status to record for ``record`` (masked): that of its first window and that of
        the others (a coalesced run's first window lists the run's windows, ``detail.windows``,
        which a new dispatcher needs to run the same ones again; the others only point at the
        run, so a run of thousands of windows does not write that list thousands of times),
        the window ids, and those the history limit forgets now."""
        if self._mask is not None:  # an error may quote a secret (a 401 body echoing a token)
            result = replace(
                result,
                error=self._mask(result.error) if result.error else result.error,
                detail=mask_strings(result.detail, self._mask) if result.detail else result.detail,
            )
        if not record.windows:
            body = _status_json(result, self.instance_id)
            wid = record.window_id
            return body, body, [wid], [wid - self.history_limit] if wid > self.history_limit else []
        windows = [w.window_id for w in record.windows]
        status = RunStatus.COALESCED if result.status == RunStatus.SUCCEEDED else result.status
        rest = replace(
            result,
            status=status,
            detail={**result.detail, "coalesced_into": record.idempotency_key},
        )
        first = replace(rest, detail={**rest.detail, "windows": windows})
        # a run not over yet keeps its own windows' statuses whatever the history limit (a new
        # dispatcher reads them to run the same windows again); once over, the limit applies
        keep = set() if result.status.final else set(windows)
        forget = [
            w - self.history_limit
            for w in windows
            if w > self.history_limit and w - self.history_limit not in keep
        ]
        return (
            _status_json(first, self.instance_id),
            _status_json(rest, self.instance_id),
            windows,
            forget,
        )

    async def _drain(self, grace: float = 5.0) -> None:
        if not self._running:
            return
        _done, pending = await asyncio.wait(set(self._running), timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task


# -- waking idle dispatchers --------------------------------------------------------------------

#: The wake-up's blocking read: how long one XREAD waits (the set of streams is read again after).
WAKE_BLOCK_MS = 1000
#: On a Redis Cluster one XREAD cannot span slots (each consumer's stream has its own): the
#: wake-up reads every slot without blocking, one pipeline per node, this often when idle.
CLUSTER_WAKE_POLL_S = 0.2
#: The wake-up while Redis does not answer: 0.5 s doubling to 5 s.
WAKE_POLICY = RetryPolicy(max_attempts=1, initial_backoff=0.5, max_backoff=5.0, jitter=True)


class LeaseRenewer:
    """Renews the dispatch leases of every dispatcher of an instance together: one pipeline
    of lease scripts every third of a lease period (and at once when a dispatcher joins),
    instead of one round trip per consumer (with 500 consumers: one pipeline every 3.3 s
    instead of 150 calls a second). Redis unreachable: every lease counts as not held."""

    def __init__(self, redis: Redis, instance_id: str, lease_ms: int) -> None:
        self.redis = redis
        self.instance_id = instance_id
        self.lease_ms = lease_ms
        self.rounds = 0
        self._sha = redis.register_script(_LEASE).sha
        self._members: dict[int, TriggerDispatcher] = {}
        self._kick = asyncio.Event()
        self._in_flight: tuple[set[int], asyncio.Future[None]] | None = None

    def join(self, dispatcher: TriggerDispatcher) -> None:
        self._members[id(dispatcher)] = dispatcher
        self._kick.set()  # a newcomer learns whether it leads at once

    async def leave(self, dispatcher: TriggerDispatcher) -> None:
        """Stop renewing ``dispatcher``'s lease; returns once no renewal of it is in flight."""
        self._members.pop(id(dispatcher), None)
        if self._in_flight is not None and id(dispatcher) in self._in_flight[0]:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._in_flight[1])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._kick.clear()
            members = list(self._members.values())
            if members:
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._in_flight = ({id(d) for d in members}, done)
                try:
                    answers = await self._renew(members)
                    for dispatcher, held in zip(members, answers, strict=True):
                        if id(dispatcher) in self._members:
                            await dispatcher.note_lease(held)
                finally:
                    self._in_flight = None
                    done.set_result(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.lease_ms / 3000)

    async def _renew(self, members: list[TriggerDispatcher]) -> list[bool]:
        self.rounds += 1
        try:
            answers = await self._pipeline(members)
            if any(isinstance(a, NoScriptError) for a in answers):
                # a Redis that restarted (or another server): load the script, send again
                await self.redis.script_load(_LEASE)
                answers = await self._pipeline(members)
        except (RedisError, OSError):
            return [False] * len(members)
        return [not isinstance(a, Exception) and bool(a) for a in answers]

    async def _pipeline(self, members: list[TriggerDispatcher]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for d in members:
            # by execute_command: a cluster pipeline sends it to the slot of the key
            pipe.execute_command(
                "EVALSHA", self._sha, 1, d.keys.dispatch_lease, self.instance_id, self.lease_ms
            )
        return list(await pipe.execute(raise_on_error=False))


class DispatchWaker:
    """One blocking reader for every dispatch stream this instance dispatches.

    A single ``XREAD BLOCK`` over the streams of the consumers whose lease this instance holds
    (XREAD, not XREADGROUP: it reads without taking entries, so each dispatcher still reads
    its own with the consumer group). When a stream grows (a window closed on another
    instance, a re-dispatch), its dispatcher is woken. It uses one connection of its own, so
    the dispatchers of hundreds of consumers neither poll nor hold a pooled connection each.

    On a Redis Cluster (``[redis] mode = "cluster"``) the streams are in as many slots as
    consumers: it reads them all without blocking (one XREAD per slot, one pipeline and one
    connection per node) every :data:`CLUSTER_WAKE_POLL_S` while nothing new came.
    """

    def __init__(
        self,
        cfg: RedisConfig,
        dispatchers: Callable[[], list[TriggerDispatcher]],
        *,
        block_ms: int = WAKE_BLOCK_MS,
        hold: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.dispatchers = dispatchers
        self.block_ms = block_ms
        #: awaited before each read: the engine's time closes come first (a read over hundreds
        #: of streams costs Redis about 2 us per stream, and every close wakes it)
        self.hold = hold
        self.wakes = 0  # dispatchers woken (for tests and diagnostics)

    async def run(self, stop: asyncio.Event) -> None:
        redis = dedicated_redis_client(self.cfg)
        seen: dict[str, bytes | str] = {}  # stream -> newest entry id seen
        failures = 0
        try:
            while not stop.is_set():
                if self.hold is not None:
                    await self.hold()
                leading = {d.keys.dispatch: d for d in self.dispatchers() if d.leader}
                if not leading:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.block_ms / 1000)
                    continue
                streams: dict[Any, Any] = {key: seen.get(key, "0-0") for key in leading}
                try:
                    res: Any
                    if is_cluster(redis):
                        res = await self._read_slots(redis, streams, stop)
                    else:
                        res = await redis.xread(streams, count=READ_COUNT, block=self.block_ms)
                except (RedisError, OSError) as exc:
                    failures += 1
                    if failures == 1:
                        log.warning("dispatch wake-up: Redis: %s (retrying with backoff)", exc)
                    with contextlib.suppress(TimeoutError):
                        delay = backoff_delay(failures, WAKE_POLICY)
                        await asyncio.wait_for(stop.wait(), delay)
                    continue
                if failures:
                    log.info("dispatch wake-up: Redis answers again")
                failures = 0
                for stream, entries in res or []:
                    key = _s(stream)
                    if entries:
                        seen[key] = entries[-1][0]
                    dispatcher = leading.get(key)
                    if dispatcher is not None:
                        dispatcher.wake()
                        self.wakes += 1
                for key in list(seen):
                    if key not in leading:
                        del seen[key]  # read from the start again if it comes back
        finally:
            with contextlib.suppress(Exception):
                await redis.aclose()

    async def _read_slots(
        self, redis: Redis, streams: dict[Any, Any], stop: asyncio.Event
    ) -> list[Any]:
        """One non-blocking XREAD per slot (a cluster refuses one over several), pipelined;
        when nothing new came, a pause of :data:`CLUSTER_WAKE_POLL_S` (or until ``stop``)."""
        by_slot: dict[int, dict[Any, Any]] = {}
        for key, last in streams.items():
            by_slot.setdefault(slot_of(key), {})[key] = last
        pipe = redis.pipeline(transaction=False)
        for group in by_slot.values():
            pipe.xread(group, count=READ_COUNT)
        out = [entry for answer in await pipe.execute() for entry in answer or []]
        if not any(entries for _, entries in out):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CLUSTER_WAKE_POLL_S)
        return out


# -- re-dispatch --------------------------------------------------------------------------------


class RedispatchError(LookupError):
    """A window cannot be re-dispatched (unknown consumer or window, or already queued)."""


async def _ensure_group(redis: Redis, keys: ConsumerKeys) -> None:
    try:
        await redis.xgroup_create(keys.dispatch, DISPATCH_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _find_window(
    redis: Redis, stream: str, window_id: int, *, newest_first: bool
) -> dict[Any, Any] | None:
    """The fields of the entry of ``stream`` whose window_id is ``window_id``, or None."""
    wanted = str(window_id).encode()
    bound: bytes | str = "+" if newest_first else "-"
    page = 500
    while True:
        batch: Any
        if newest_first:
            batch = await redis.xrevrange(stream, max=bound, min="-", count=page)
        else:
            batch = await redis.xrange(stream, min=bound, max="+", count=page)
        for _entry_id, fields in batch:
            value = fields.get(b"window_id", fields.get("window_id"))
            if (
                value is not None
                and (value if isinstance(value, bytes) else str(value).encode()) == wanted
            ):
                return dict(fields)
        if len(batch) < page:
            return None
        bound = b"(" + batch[-1][0]


async def redispatch(redis: Redis, config: AppConfig, consumer_id: str, window_id: int) -> None:
    """Put a past window back on the consumer's dispatch stream with the same window id (so
    the same idempotency key). Its run status becomes QUEUED (``detail.redispatched``, with the
    previous status and run id); the dispatching instance picks it up within a second.

    Raises :class:`RedispatchError` if the consumer is unknown, the window is not in the
    trigger history (never closed, or trimmed past ``history_limit``), or it is still waiting
    for (or in) its run.
    """
    try:
        config.consumer(consumer_id)
    except KeyError:
        raise RedispatchError(f"no consumer {consumer_id!r} in the config") from None
    keys = ConsumerKeys(config.redis.key_prefix, consumer_id, tagged_layout(config.redis))
    fields = await _find_window(redis, keys.history, window_id, newest_first=True)
    if fields is None:
        raise RedispatchError(f"window {window_id} of {consumer_id} is not in the trigger history")
    await _ensure_group(redis, keys)
    for _ in range(20):
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.dispatch)
                queued = await _find_window(pipe, keys.dispatch, window_id, newest_first=False)
                if queued is not None:
                    raise RedispatchError(
                        f"window {window_id} of {consumer_id} is already waiting for its "
                        "pipeline (or running)"
                    )
                previous = _result_from_json(await pipe.hget(keys.runs, str(window_id)))
                detail: dict[str, Any] = {"redispatched": True}
                if previous is not None:
                    detail["previous_status"] = str(previous.status)
                    detail["previous_run_id"] = previous.run_id
                pipe.multi()
                pipe.hset(
                    keys.runs,
                    str(window_id),
                    orjson.dumps(
                        {
                            **RunResult(RunStatus.QUEUED, attempts=0, detail=detail).to_json_dict(),
                            "instance": None,
                        }
                    ),
                )
                pipe.xadd(keys.dispatch, fields)
                await pipe.execute()
            except WatchError:
                continue  # a window closed meanwhile: look again
            log.info("%s: window %d re-queued for dispatch", consumer_id, window_id)
            return
    raise RedispatchError(
        f"window {window_id} of {consumer_id}: the dispatch stream keeps changing; try again"
    )
