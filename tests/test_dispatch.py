"""TriggerDispatcher against the real Redis: run ordering for sync and async consumers,
following remote runs (and taking them over after a crash), the circuit breaker and
re-dispatch. The pipeline is a scripted in-process one whose runs end when the test says so.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis
from redis.asyncio.client import Pipeline as RedisPipeline

from kafkaconsole.config.models import AppConfig, ConsumerConfig, RetryPolicy
from kafkaconsole.config.models import PythonPipeline as AnyPipelineConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.breaker import BreakerState
from kafkaconsole.engine.dispatch import (
    READ_COUNT,
    RedispatchError,
    TriggerDispatcher,
    breaker_key,
    read_breaker,
    redispatch,
)
from kafkaconsole.engine.keys import DISPATCH_GROUP, ConsumerKeys
from kafkaconsole.engine.pipelines.base import (
    CallOutcome,
    OnStatus,
    Pipeline,
    PipelineError,
)
from kafkaconsole.engine.records import RunResult, RunStatus, TriggerRecord
from tests.helpers import wait_for

FAST = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02, jitter=False)


class ScriptedRemote(Pipeline):
    """Starts run ``run-<window>`` per call; each run ends when the test calls ``finish``."""

    kind = "scripted"
    remote_runs = True

    def __init__(self, **cfg: Any) -> None:
        super().__init__("scripted", AnyPipelineConfig(kind="python", target="x:y", **cfg))
        self.calls: list[int] = []
        self.keys: list[str] = []
        self.waits: list[str] = []
        self.fail_calls = False
        self.auto_finish: RunStatus | None = None
        self._ends: dict[str, asyncio.Future[RunStatus]] = {}

    def _end(self, run_id: str) -> asyncio.Future[RunStatus]:
        if run_id not in self._ends:
            self._ends[run_id] = asyncio.get_running_loop().create_future()
        return self._ends[run_id]

    def finish(self, window_id: int, status: RunStatus = RunStatus.SUCCEEDED) -> None:
        self._end(f"run-{window_id}").set_result(status)

    @property
    def in_flight(self) -> list[str]:
        return [r for r in self.waits if not self._end(r).done()]

    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        self.calls.append(record.window_id)
        self.keys.append(payload["idempotency_key"])
        if self.fail_calls:
            raise PipelineError("far side down", retryable=True)
        return CallOutcome(f"run-{record.window_id}", RunStatus.RUNNING)

    async def wait(
        self,
        run_id: str,
        record: TriggerRecord,
        *,
        policy: RetryPolicy | None = None,
        on_status: OnStatus | None = None,
    ) -> CallOutcome:
        self.waits.append(run_id)
        if self.auto_finish is not None:
            return CallOutcome(run_id, self.auto_finish)
        status = await asyncio.shield(self._end(run_id))
        detail = {"error": f"{run_id} failed"} if status == RunStatus.FAILED else {}
        return CallOutcome(run_id, status, detail=detail)


@dataclass
class Harness:
    redis: aredis.Redis
    keys: ConsumerKeys
    pipeline: ScriptedRemote
    dispatcher: TriggerDispatcher
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.dispatcher.run(self.stop))

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)

    async def runs(self) -> dict[int, dict[str, Any]]:
        raw = await self.redis.hgetall(self.keys.runs)
        return {int(k): orjson.loads(v) for k, v in raw.items()}

    async def status(self, window_id: int) -> str | None:
        return (await self.runs()).get(window_id, {}).get("status")

    async def wait_status(self, window_id: int, status: str, timeout: float = 5) -> None:
        async def reached() -> bool:
            return await self.status(window_id) == status

        await wait_for(reached, timeout, what=f"window {window_id} {status}")


async def add_windows(redis: aredis.Redis, keys: ConsumerKeys, ids: range) -> None:
    """Append closed windows to history and dispatch, as the counting script does."""
    for wid in ids:
        fields: Any = {
            "window_id": wid,
            "reason": "count",
            "count": 10,
            "opened_at": 1_717_243_200_000 + wid,
            "closed_at": 1_717_243_260_000 + wid,
            "offsets": orjson.dumps(
                [{"topic": "t", "partition": 0, "first": wid * 10, "last": wid * 10 + 9}]
            ),
        }
        await redis.xadd(keys.history, fields)
        await redis.xadd(keys.dispatch, fields)


def consumer(cid: str, job_type: str = "sync", **extra: Any) -> ConsumerConfig:
    return ConsumerConfig.model_validate(
        {
            "consumer_id": cid,
            "kafka_topic": "t",
            "pipeline_name": "p",
            "connection_id": "conn-1",
            "max_event": 10,
            "max_time": 60,
            "job_type": job_type,
            **extra,
        }
    )


async def no_close_due() -> None:
    """The engine's ClosingThread.wait_quiet with no time close due: returns at once."""


@pytest.fixture
async def make(redis_client: aredis.Redis, unique: str) -> AsyncIterator[Any]:
    made: list[Harness] = []

    def factory(
        job_type: str = "sync",
        instance: str = "inst-1",
        pipeline: ScriptedRemote | None = None,
        lease_ms: int = 600,
        consumer_cfg: dict[str, Any] | None = None,
        **pipeline_cfg: Any,
    ) -> Harness:
        keys = ConsumerKeys(unique, f"{unique}-c")
        pipeline = pipeline or ScriptedRemote(**pipeline_cfg)
        dispatcher = TriggerDispatcher(
            redis_client,
            keys,
            consumer(keys.consumer_id, job_type, **(consumer_cfg or {})),
            pipeline,
            FAST,
            instance,
            lease_ms=lease_ms,
            hold=no_close_due,  # as the engine's dispatchers: they wait for closes due
        )
        harness = Harness(redis_client, keys, pipeline, dispatcher, asyncio.Event())
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        await harness.shutdown()


# --------------------------------------------------------------------------------------------


async def test_sync_finishes_each_run_before_dispatching_the_next(make: Any) -> None:
    h: Harness = make("sync")
    await add_windows(h.redis, h.keys, range(1, 4))
    h.start()
    await h.wait_status(1, "running")
    run = (await h.runs())[1]
    assert run["run_id"] == "run-1" and run["instance"] == "inst-1"
    await asyncio.sleep(0.3)
    assert h.pipeline.calls == [1]  # 2 and 3 wait in the stream, in order
    assert 2 not in await h.runs()
    h.pipeline.finish(1)
    await h.wait_status(2, "running")

    async def second_called() -> bool:  # RUNNING is recorded just before the call starts
        return h.pipeline.calls == [1, 2]

    await wait_for(second_called, 10, what="window 2's run started (and only it)")
    h.pipeline.finish(2, RunStatus.FAILED)
    h.pipeline.finish(3)
    await h.wait_status(3, "succeeded")
    runs = await h.runs()
    assert [runs[w]["status"] for w in (1, 2, 3)] == ["succeeded", "failed", "succeeded"]
    assert runs[2]["error"] == "run-2 failed"
    assert [runs[w]["run_id"] for w in (1, 2, 3)] == ["run-1", "run-2", "run-3"]
    assert all(runs[w]["duration_ms"] is not None for w in (1, 2, 3))
    assert h.pipeline.keys == [f"{h.keys.consumer_id}:{w}" for w in (1, 2, 3)]
    assert await h.redis.xlen(h.keys.dispatch) == 0


async def test_a_busy_dispatcher_reads_each_window_once(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window closing at a time (as under load: one every few ms): one read of the stream
    per window, no read to find nothing after its run, and the look for entries a stopped
    instance left (XAUTOCLAIM) once per takeover_poll_s, not at every read. A window's
    dispatch is three round trips to Redis (four when its run is followed: its run id): the
    backlog's length with the read, the prior-run check with RUNNING, the final status with
    the entry's XACK + XDEL."""
    h: Harness = make("sync")
    h.pipeline.auto_finish = RunStatus.SUCCEEDED
    commands: Counter[str] = Counter()  # every command, in a pipeline or not
    trips: Counter[str] = Counter()  # round trips, by their first command
    real = h.redis.execute_command
    real_execute = RedisPipeline.execute

    async def counting(*args: Any, **kwargs: Any) -> Any:
        name = str(args[0]).upper()
        commands[name] += 1
        trips[name] += 1
        return await real(*args, **kwargs)

    async def counting_pipeline(self: RedisPipeline, raise_on_error: bool = True) -> Any:
        names = [str(args[0]).upper() for args, _ in self.command_stack]
        commands.update(names)
        if set(names) != {"EVALSHA"}:  # not the lease renewer's pipeline of lease scripts
            trips["+".join(names)] += 1
        return await real_execute(self, raise_on_error)

    h.redis.execute_command = counting  # type: ignore[method-assign]
    monkeypatch.setattr(RedisPipeline, "execute", counting_pipeline)
    h.start()
    started = time.monotonic()
    windows = 20
    try:
        for wid in range(1, windows + 1):
            await add_windows(h.redis, h.keys, range(wid, wid + 1))
            h.dispatcher.wake()  # as the engine does when one of its windows closes
            await h.wait_status(wid, "succeeded")
    finally:
        del h.redis.execute_command
    elapsed = time.monotonic() - started
    # the first read looks at this instance's own pending entries too ("0", then ">")
    assert commands["XREADGROUP"] <= windows + 2, commands
    looks = commands["XAUTOCLAIM"]
    assert looks <= 2 + elapsed / h.dispatcher.takeover_poll_s, (commands, elapsed)
    # per window: the read, RUNNING, the run id (this pipeline's runs are followed), the final
    # status; beside them each look for a stopped instance's entries (XLEN + XAUTOCLAIM), the
    # dispatch group's creation, the first read of this instance's own pending entries and
    # the scripts' loading (the test's own commands: XADD, HGETALL)
    dispatcher_trips = sum(trips.values()) - trips["XADD"] - trips["HGETALL"]
    assert dispatcher_trips <= 4 * windows + 2 * looks + 6, (trips, looks)
    assert "HGET" not in commands and "MULTI" not in commands, commands
    assert h.pipeline.calls == list(range(1, windows + 1))


async def test_a_capped_backlog_runs_every_waiting_window_as_one_run(make: Any) -> None:
    """Once ``max_backlog`` windows wait, the next read takes every one of them (more than a
    read's usual count, READ_COUNT), so they run as one coalesced run, not in slices."""
    h: Harness = make("sync", consumer_cfg={"max_backlog": 60})
    # the reads below are the dispatcher's usual ones, not its look for a stopped
    # instance's entries (which reads the backlog's length on its own)
    h.dispatcher.takeover_poll_s = 60
    waiting = READ_COUNT + 70
    await add_windows(h.redis, h.keys, range(1, 2))
    h.start()
    await h.wait_status(1, "running")
    await add_windows(h.redis, h.keys, range(2, 2 + waiting))
    h.dispatcher.wake()  # as the engine's wake-up does when the stream grows
    h.pipeline.finish(1)

    async def coalesced_called() -> bool:
        return len(h.pipeline.calls) == 2

    await wait_for(coalesced_called, 10, what="the waiting windows' coalesced run started")
    assert h.pipeline.keys[1] == f"{h.keys.consumer_id}:2-{1 + waiting}"
    h.pipeline.finish(1 + waiting)  # a coalesced run's window id is its last window's
    await h.wait_status(1 + waiting, "coalesced")
    assert len(h.pipeline.calls) == 2
    assert await h.redis.xlen(h.keys.dispatch) == 0


async def test_a_coalesced_run_of_thousands_of_windows_is_recorded_in_one_step(
    make: Any,
) -> None:
    """9,000 waiting windows coalesced into one run: one step records every window's status
    and acknowledges every entry (in slices inside the script: Lua unpacks at most ~8,000
    values at once); the runs hash keeps the last ``history_limit`` (1,000) windows."""
    h: Harness = make("sync", consumer_cfg={"backlog_policy": "coalesce"})
    h.pipeline.auto_finish = RunStatus.SUCCEEDED
    waiting = 9_000
    pipe = h.redis.pipeline(transaction=False)
    for wid in range(1, waiting + 1):
        fields: Any = {
            "window_id": wid,
            "reason": "count",
            "count": 1,
            "opened_at": 1_717_243_200_000 + wid,
            "closed_at": 1_717_243_260_000 + wid,
            "offsets": orjson.dumps([{"topic": "t", "partition": 0, "first": wid, "last": wid}]),
        }
        pipe.xadd(h.keys.dispatch, fields)
    await pipe.execute()
    h.start()
    await h.wait_status(waiting, "coalesced", timeout=20)
    assert h.pipeline.keys == [f"{h.keys.consumer_id}:1-{waiting}"]
    runs = await h.runs()
    assert sorted(runs) == list(range(waiting - 1000 + 1, waiting + 1))
    assert {r["status"] for r in runs.values()} == {"coalesced"}
    # only the run's first window lists its windows (forgotten here: the history limit)
    assert all(r["detail"] == {"coalesced_into": h.pipeline.keys[0]} for r in runs.values())
    assert await h.redis.xlen(h.keys.dispatch) == 0
    assert (await h.redis.xpending(h.keys.dispatch, DISPATCH_GROUP))["pending"] == 0


async def test_async_runs_at_most_max_concurrent_runs_at_once(make: Any) -> None:
    h: Harness = make("async", max_concurrent_runs=2)
    await add_windows(h.redis, h.keys, range(1, 6))
    h.start()
    await h.wait_status(2, "running")
    await asyncio.sleep(0.3)
    assert sorted(h.pipeline.calls) == [1, 2]  # async: started in any order
    assert sorted(h.pipeline.in_flight) == ["run-1", "run-2"]
    h.pipeline.finish(2)
    await h.wait_status(3, "running")
    assert sorted(h.pipeline.calls) == [1, 2, 3]
    assert len(h.pipeline.in_flight) == 2
    for w in (1, 3, 4, 5):
        h.pipeline.finish(w)
    for w in range(1, 6):
        await h.wait_status(w, "succeeded")
    assert sorted(h.pipeline.calls) == [1, 2, 3, 4, 5]
    assert await h.redis.xlen(h.keys.dispatch) == 0


async def test_stop_leaves_a_followed_run_pending_and_the_next_holder_takes_it_over(
    make: Any,
) -> None:
    first: Harness = make("sync", instance="inst-1")
    await add_windows(first.redis, first.keys, range(1, 3))
    first.start()
    await first.wait_status(1, "running")
    t0 = time.monotonic()
    await first.shutdown()  # the run goes on remotely; we only stop watching it
    assert time.monotonic() - t0 < 2
    pending = await first.redis.xpending(first.keys.dispatch, DISPATCH_GROUP)
    assert pending["pending"] == 2  # both were read; window 2 was never started
    assert (await first.runs())[1]["status"] == "running"

    second: Harness = make("sync", instance="inst-2")
    second.start()

    async def followed() -> bool:
        return second.pipeline.waits == ["run-1"]

    await wait_for(followed, 5, what="the recorded run followed by the new holder")
    assert second.pipeline.calls == []  # not started a second time
    second.pipeline.finish(1)
    await second.wait_status(1, "succeeded")
    runs = await second.runs()
    assert runs[1]["run_id"] == "run-1" and runs[1]["instance"] == "inst-2"
    await second.wait_status(2, "running")
    assert second.pipeline.calls == [2]
    second.pipeline.finish(2)
    await second.wait_status(2, "succeeded")


async def test_an_entry_whose_final_status_was_recorded_is_only_acknowledged(
    make: Any,
) -> None:
    h: Harness = make("sync")
    await add_windows(h.redis, h.keys, range(1, 3))
    done = RunResult(RunStatus.SUCCEEDED, run_id="run-1", started_at_ms=1, finished_at_ms=2)
    await h.redis.hset(h.keys.runs, "1", orjson.dumps(done.to_json_dict()))
    h.pipeline.auto_finish = RunStatus.SUCCEEDED
    h.start()
    await h.wait_status(2, "succeeded")
    assert h.pipeline.calls == [2]
    assert await h.redis.xlen(h.keys.dispatch) == 0


async def test_breaker_holds_triggers_in_order_until_a_probe_succeeds(make: Any) -> None:
    h: Harness = make("sync", breaker_threshold=2, breaker_cooldown=0.5)
    h.pipeline.fail_calls = True
    h.pipeline.auto_finish = RunStatus.SUCCEEDED
    await add_windows(h.redis, h.keys, range(1, 5))
    h.start()
    await h.wait_status(3, "queued")
    assert h.pipeline.calls == [1, 1, 2, 2]  # two failed runs of two attempts each
    runs = await h.runs()
    assert [runs[w]["status"] for w in (1, 2)] == ["failed", "failed"]
    assert runs[1]["error"] == "far side down"
    assert runs[3]["detail"]["held"] == "circuit open"
    assert 4 not in runs  # still just pending behind window 3
    snap = h.dispatcher.breaker
    assert snap.state == BreakerState.OPEN and snap.consecutive_failures == 2
    assert snap.opened_at is not None and snap.probe_at == snap.opened_at + 0.5
    stored = await read_breaker(h.redis, h.keys)
    assert stored is not None and stored.state == BreakerState.OPEN
    raw = await h.redis.hgetall(breaker_key(h.keys))
    assert raw[b"instance"] == b"inst-1" and raw[b"pipeline"] == b"scripted"
    assert await h.redis.xlen(h.keys.dispatch) == 2

    # the probe (window 3) fails: open again, window 4 still waits
    await h.wait_status(3, "failed", timeout=5)

    async def reopened() -> bool:
        snap = h.dispatcher.breaker
        return snap.state == BreakerState.OPEN and snap.consecutive_failures == 3

    await wait_for(reopened, 2, what="circuit open again")
    h.pipeline.fail_calls = False
    await h.wait_status(4, "succeeded", timeout=5)

    async def closed() -> bool:
        stored = await read_breaker(h.redis, h.keys)
        return stored is not None and stored.state == BreakerState.CLOSED

    await wait_for(closed, 2, what="circuit closed")
    assert h.dispatcher.breaker.state == BreakerState.CLOSED
    assert h.dispatcher.breaker.consecutive_failures == 0
    assert h.pipeline.calls == [1, 1, 2, 2, 3, 3, 4]
    assert await h.redis.xlen(h.keys.dispatch) == 0


async def test_a_new_dispatcher_takes_over_an_open_breaker(make: Any) -> None:
    h: Harness = make("sync", breaker_threshold=1, breaker_cooldown=60.0)
    h.pipeline.auto_finish = RunStatus.SUCCEEDED
    opened = time.time()
    await h.redis.hset(
        breaker_key(h.keys),
        mapping={
            "state": "open",
            "consecutive_failures": "4",
            "threshold": "1",
            "cooldown": "60.0",
            "opened_at": str(opened),
        },
    )
    await add_windows(h.redis, h.keys, range(1, 2))
    h.start()
    await h.wait_status(1, "queued")
    assert h.pipeline.calls == []
    snap = h.dispatcher.breaker
    assert snap.state == BreakerState.OPEN
    assert snap.consecutive_failures == 4 and snap.opened_at == pytest.approx(opened)


async def test_redispatch_requeues_a_past_window_with_the_same_key(
    make: Any, services: EmbeddedServices
) -> None:
    h: Harness = make("sync")
    h.pipeline.auto_finish = RunStatus.FAILED
    await add_windows(h.redis, h.keys, range(1, 3))
    h.start()
    await h.wait_status(2, "failed")
    config = AppConfig.model_validate(
        {
            "redis": {"url": services.redis_url, "key_prefix": h.keys.prefix},
            "pipelines": {"p": {"kind": "python", "target": "x:y"}},
            "consumers": [
                {
                    "consumer_id": h.keys.consumer_id,
                    "kafka_topic": "t",
                    "pipeline_name": "p",
                    "connection_id": "conn-1",
                    "max_event": 10,
                    "max_time": 60,
                }
            ],
        }
    )
    h.pipeline.auto_finish = RunStatus.SUCCEEDED
    await redispatch(h.redis, config, h.keys.consumer_id, 1)
    await h.wait_status(1, "succeeded")
    assert h.pipeline.calls == [1, 2, 1]
    assert h.pipeline.keys[-1] == h.pipeline.keys[0] == f"{h.keys.consumer_id}:1"
    assert (await h.runs())[2]["status"] == "failed"
    history: Any = await h.redis.xrange(h.keys.history)
    assert [int(f[b"window_id"]) for _, f in history] == [1, 2]  # history is not rewritten

    with pytest.raises(RedispatchError, match="not in the trigger history"):
        await redispatch(h.redis, config, h.keys.consumer_id, 99)
    with pytest.raises(RedispatchError, match="no consumer"):
        await redispatch(h.redis, config, "someone-else", 1)


async def test_redispatch_marks_the_window_queued_and_refuses_a_queued_one(
    redis_client: aredis.Redis, services: EmbeddedServices, unique: str
) -> None:
    keys = ConsumerKeys(unique, "c1")
    config = AppConfig.model_validate(
        {
            "redis": {"url": services.redis_url, "key_prefix": unique},
            "pipelines": {"p": {"kind": "python", "target": "x:y"}},
            "consumers": [
                {
                    "consumer_id": "c1",
                    "kafka_topic": "t",
                    "pipeline_name": "p",
                    "connection_id": "conn-1",
                    "max_event": 10,
                    "max_time": 60,
                }
            ],
        }
    )
    await add_windows(redis_client, keys, range(1, 3))
    # window 1 was dispatched and failed; window 2 is still waiting
    oldest: Any = await redis_client.xrange(keys.dispatch, count=1)
    first = oldest[0][0]
    await redis_client.xdel(keys.dispatch, first)
    failed = RunResult(RunStatus.FAILED, run_id="job-7", error="boom")
    await redis_client.hset(keys.runs, "1", orjson.dumps(failed.to_json_dict()))

    with pytest.raises(RedispatchError, match="already waiting"):
        await redispatch(redis_client, config, "c1", 2)
    await redispatch(redis_client, config, "c1", 1)
    raw: Any = await redis_client.hget(keys.runs, "1")
    run = orjson.loads(raw)
    assert run["status"] == "queued"
    assert run["detail"] == {
        "redispatched": True,
        "previous_status": "failed",
        "previous_run_id": "job-7",
    }
    entries: Any = await redis_client.xrange(keys.dispatch)
    assert [int(f[b"window_id"]) for _, f in entries] == [2, 1]
    history: Any = await redis_client.xrange(keys.history, count=1)
    history_fields = history[0][1]
    assert entries[1][1] == history_fields
    with pytest.raises(RedispatchError, match="already waiting"):
        await redispatch(redis_client, config, "c1", 1)


async def test_a_coalesced_run_taken_over_is_followed_not_started_again(make: Any) -> None:
    """backlog_policy = "coalesce": the waiting windows run as one run with the key
    <consumer_id>:<first>-<last>, every window marked running and pointing at it; a new
    dispatcher after a crash follows that same run for the same windows (no second call), and
    a window that closed meanwhile runs after it, on its own."""
    coalesce = {"backlog_policy": "coalesce"}
    h: Harness = make("sync", consumer_cfg=coalesce)
    cid = h.keys.consumer_id
    await add_windows(h.redis, h.keys, range(1, 4))
    h.start()
    await h.wait_status(3, "running")

    async def followed() -> bool:
        return h.pipeline.waits == ["run-3"]

    await wait_for(followed, 5, what="the coalesced run followed")
    runs = await h.runs()
    for w in (1, 2, 3):
        assert runs[w]["status"] == "running" and runs[w]["run_id"] == "run-3"
    # the first window lists the run's windows; the others point at the run
    assert runs[1]["detail"] == {"coalesced_into": f"{cid}:1-3", "windows": [1, 2, 3]}
    assert runs[2]["detail"] == runs[3]["detail"] == {"coalesced_into": f"{cid}:1-3"}
    assert h.pipeline.calls == [3] and h.pipeline.keys == [f"{cid}:1-3"]
    await h.shutdown()  # the instance goes away while the run goes on

    h2: Harness = make("sync", instance="inst-2", pipeline=h.pipeline, consumer_cfg=coalesce)
    h2.start()

    async def taken_over() -> bool:
        return h.pipeline.waits == ["run-3", "run-3"]

    await wait_for(taken_over, 10, what="the new dispatcher following run-3")
    await add_windows(h.redis, h.keys, range(4, 5))  # closes while the run goes on
    h.pipeline.finish(3)
    await h2.wait_status(4, "running")
    h.pipeline.finish(4)
    await h2.wait_status(4, "succeeded")
    runs = await h2.runs()
    assert [runs[w]["status"] for w in (1, 2, 3)] == ["coalesced"] * 3
    assert {runs[w]["detail"]["coalesced_into"] for w in (1, 2, 3)} == {f"{cid}:1-3"}
    assert h.pipeline.calls == [3, 4]  # the coalesced run was started once
    assert h.pipeline.keys == [f"{cid}:1-3", f"{cid}:4"]
    assert await h.redis.xlen(h.keys.dispatch) == 0


async def test_a_coalesced_run_longer_than_the_history_is_taken_over_whole(make: Any) -> None:
    """A coalesced run of more windows than ``history_limit``: while it is not over, its
    windows' statuses are all kept (the limit would have dropped the first, whose status lists
    the run's windows), so a new dispatcher after a crash follows the same run under the same
    key; once it is over the limit applies again."""
    coalesce = {"backlog_policy": "coalesce"}
    h: Harness = make("sync", consumer_cfg=coalesce)
    h.dispatcher.history_limit = 5
    cid = h.keys.consumer_id
    await add_windows(h.redis, h.keys, range(1, 13))
    h.start()
    await h.wait_status(12, "running")
    runs = await h.runs()
    assert sorted(runs) == list(range(1, 13))
    assert runs[1]["detail"]["windows"] == list(range(1, 13))
    await h.shutdown()  # the instance goes away while the run goes on

    h2: Harness = make("sync", instance="inst-2", pipeline=h.pipeline, consumer_cfg=coalesce)
    h2.dispatcher.history_limit = 5

    async def taken_over() -> bool:
        return h.pipeline.waits == ["run-12", "run-12"]

    h2.start()
    await wait_for(taken_over, 10, what="the new dispatcher following run-12")
    h.pipeline.finish(12)
    await h2.wait_status(12, "coalesced")
    assert h.pipeline.keys == [f"{cid}:1-12"]  # started once, one key
    assert sorted(await h2.runs()) == list(range(8, 13))
    assert await h.redis.xlen(h.keys.dispatch) == 0


async def test_each_with_max_backlog_reached_coalesces_the_waiting_windows(make: Any) -> None:
    """backlog_policy = "each": under max_backlog one run per window; at max_backlog the
    waiting windows run as one (nothing dropped)."""
    h: Harness = make("sync", consumer_cfg={"max_backlog": 3})
    h.pipeline.auto_finish = RunStatus.SUCCEEDED
    cid = h.keys.consumer_id
    await add_windows(h.redis, h.keys, range(1, 3))  # 2 waiting: below the cap
    h.start()
    await h.wait_status(2, "succeeded")
    assert h.pipeline.keys == [f"{cid}:1", f"{cid}:2"]
    await h.shutdown()
    await add_windows(h.redis, h.keys, range(3, 7))  # 4 waiting: the cap is reached
    h2: Harness = make("sync", pipeline=h.pipeline, consumer_cfg={"max_backlog": 3})
    h2.start()
    await h2.wait_status(6, "coalesced")
    assert h.pipeline.keys == [f"{cid}:1", f"{cid}:2", f"{cid}:3-6"]
    runs = await h2.runs()
    assert [runs[w]["status"] for w in range(3, 7)] == ["coalesced"] * 4


async def test_a_window_whose_own_run_started_is_never_coalesced(make: Any) -> None:
    """A crash mid-call leaves window 1 "running" under its own key (it may have reached the
    far side): under coalesce it is called again alone with that key, and only the windows
    never started are coalesced, so no window runs under two keys."""
    h: Harness = make("sync", consumer_cfg={"backlog_policy": "coalesce"})
    h.pipeline.auto_finish = RunStatus.SUCCEEDED
    cid = h.keys.consumer_id
    await add_windows(h.redis, h.keys, range(1, 4))
    crashed = {"status": "running", "run_id": None, "attempts": 1, "instance": "gone"}
    await h.redis.hset(h.keys.runs, "1", orjson.dumps(crashed))
    h.start()
    await h.wait_status(3, "coalesced")
    assert h.pipeline.keys == [f"{cid}:1", f"{cid}:2-3"]
    runs = await h.runs()
    assert [runs[w]["status"] for w in (1, 2, 3)] == ["succeeded", "coalesced", "coalesced"]
