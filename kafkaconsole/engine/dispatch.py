"""Trigger delivery: closed windows reach their pipeline once, even across crashes.

Closing a window appends it to the consumer's ``dispatch`` stream in the same Lua call. One
instance at a time holds the consumer's dispatch lease and reads that stream with a consumer
group (XREADGROUP), claims the entries a dead instance left pending (XAUTOCLAIM), calls the
pipeline with retries, records the run status in the ``runs`` hash, then XACKs and deletes the
entry. Each call carries the idempotency key ``<consumer_id>:<window_id>``, so the rare
re-delivery after a crash mid-call is recognisable downstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from kafkaconsole.config.models import ConsumerConfig, RetryPolicy
from kafkaconsole.engine.keys import DISPATCH_GROUP, ConsumerKeys
from kafkaconsole.engine.pipelines.base import Pipeline
from kafkaconsole.engine.records import (
    OffsetRange,
    RunResult,
    RunStatus,
    TriggerReason,
    TriggerRecord,
)
from kafkaconsole.engine.retry import call_with_retry

log = logging.getLogger("kafkaconsole.dispatch")

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

EventsLoader = Callable[[TriggerRecord], Awaitable[list[Any]]]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def record_from_fields(fields: dict[Any, Any], cfg: ConsumerConfig) -> TriggerRecord:
    """A :class:`TriggerRecord` from a history/dispatch stream entry."""
    f = {_s(k): _s(v) for k, v in fields.items()}
    offsets = tuple(
        OffsetRange(o["topic"], int(o["partition"]), int(o["first"]), int(o["last"]))
        for o in orjson.loads(f.get("offsets") or "[]")
    )
    opened = f.get("opened_at") or ""
    return TriggerRecord(
        consumer_id=cfg.consumer_id, pipeline_name=cfg.pipeline_name,
        connection_id=cfg.connection_id, job_type=cfg.job_type,
        window_id=int(f["window_id"]), reason=TriggerReason(f["reason"]), count=int(f["count"]),
        opened_at_ms=int(opened) if opened else None, closed_at_ms=int(f["closed_at"]),
        offsets=offsets,
    )


class TriggerDispatcher:
    """Delivers one consumer's closed windows to its pipeline."""

    def __init__(self, redis: Redis, keys: ConsumerKeys, cfg: ConsumerConfig,
                 pipeline: Pipeline, policy: RetryPolicy, instance_id: str, *,
                 lease_ms: int = 10_000, history_limit: int = 1000,
                 events_loader: EventsLoader | None = None,
                 on_result: Callable[[TriggerRecord, RunResult], None] | None = None,
                 max_concurrent: int = 4) -> None:
        self.redis = redis
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
        self._lease = redis.register_script(_LEASE)
        self._release = redis.register_script(_RELEASE)
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running: set[asyncio.Task[None]] = set()
        self._own_pending_checked = False

    def wake(self) -> None:
        """A window was closed locally: look at the stream now."""
        self._wake.set()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.dispatch, DISPATCH_GROUP, id="0",
                                           mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        keeper = asyncio.create_task(self._keep_lease(stop), name=f"lease:{self.cfg.consumer_id}")
        try:
            while not stop.is_set():
                try:
                    await self.ensure_group()
                    break
                except (RedisError, OSError):
                    await asyncio.sleep(0.5)
            while not stop.is_set():
                if not self.leader:
                    await self._sleep(0.5)
                    continue
                try:
                    entries = await self._next_entries()
                except (RedisError, OSError) as exc:
                    log.warning("%s: dispatch read failed: %s", self.cfg.consumer_id, exc)
                    await self._sleep(0.5)
                    continue
                if not entries:
                    await self._sleep(0.5)
                    continue
                for entry_id, fields in entries:
                    if stop.is_set() or not self.leader:
                        break
                    await self._dispatch(entry_id, fields)
        finally:
            await self._drain()
            keeper.cancel()
            with contextlib.suppress(BaseException):
                await keeper
            with contextlib.suppress(Exception):
                await self._release(keys=[self.keys.dispatch_lease], args=[self.instance_id])
            self.leader = False

    async def _sleep(self, timeout: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _keep_lease(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                held = bool(await self._lease(keys=[self.keys.dispatch_lease],
                                              args=[self.instance_id, self.lease_ms]))
            except (RedisError, OSError):
                held = False
            if held and not self.leader:
                log.debug("%s: this instance dispatches its triggers", self.cfg.consumer_id)
                self._own_pending_checked = False
                self._wake.set()
            self.leader = held
            await asyncio.sleep(self.lease_ms / 3000)

    async def _next_entries(self) -> list[tuple[bytes, dict[Any, Any]]]:
        stream = self.keys.dispatch
        if not self._own_pending_checked:
            # entries this instance id read before and never acknowledged
            res = await self.redis.xreadgroup(DISPATCH_GROUP, self.instance_id, {stream: "0"},
                                              count=50)
            entries = [(i, f) for i, f in (res[0][1] if res else []) if f]
            if entries:
                return entries
            self._own_pending_checked = True
        # entries left pending by an instance that stopped holding the lease
        claimed = await self.redis.xautoclaim(stream, DISPATCH_GROUP, self.instance_id,
                                              min_idle_time=self.lease_ms, start_id="0-0",
                                              count=50)
        entries = [(i, f) for i, f in claimed[1] if f]
        for deleted in claimed[2] if len(claimed) > 2 else []:
            await self.redis.xack(stream, DISPATCH_GROUP, deleted)
        if entries:
            return entries
        res = await self.redis.xreadgroup(DISPATCH_GROUP, self.instance_id, {stream: ">"},
                                          count=50)
        return [(i, f) for i, f in (res[0][1] if res else []) if f]

    async def _dispatch(self, entry_id: bytes, fields: dict[Any, Any]) -> None:
        record = record_from_fields(fields, self.cfg)
        if self.cfg.job_type == "async":
            await self._slots.acquire()
            task = asyncio.create_task(self._run_one(entry_id, record, release=True),
                                       name=f"run:{record.idempotency_key}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        else:
            await self._run_one(entry_id, record, release=False)

    async def _run_one(self, entry_id: bytes, record: TriggerRecord, *, release: bool) -> None:
        try:
            events = None
            if self.cfg.job_type == "batch" and self.events_loader is not None:
                events = await self.events_loader(record)
            payload = record.to_json_dict(events)
            started = int(time.time() * 1000)
            await self._write_status(record.window_id, RunResult(RunStatus.RUNNING,
                                                                 started_at_ms=started))

            def on_attempt(attempt: int, error: str | None) -> None:
                if error:
                    log.warning("%s: pipeline %s attempt %d for window %d failed: %s",
                                record.consumer_id, record.pipeline_name, attempt,
                                record.window_id, error)

            result = await call_with_retry(self.pipeline, record, payload, self.policy,
                                           on_attempt=on_attempt)
            await self._write_status(record.window_id, result)
            await self.redis.xack(self.keys.dispatch, DISPATCH_GROUP, entry_id)
            await self.redis.xdel(self.keys.dispatch, entry_id)
            self.on_result(record, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis down while recording: the entry stays pending
            log.error("%s: dispatch of window %d interrupted: %s: %s", record.consumer_id,
                      record.window_id, type(exc).__name__, exc)
        finally:
            if release:
                self._slots.release()

    async def _write_status(self, window_id: int, result: RunResult) -> None:
        body = {**result.to_json_dict(), "instance": self.instance_id}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.runs, str(window_id), orjson.dumps(body))
        if window_id > self.history_limit:
            pipe.hdel(self.keys.runs, str(window_id - self.history_limit))
        await pipe.execute()

    async def _drain(self, grace: float = 5.0) -> None:
        if not self._running:
            return
        done, pending = await asyncio.wait(set(self._running), timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
