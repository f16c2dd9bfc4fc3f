"""One benchmark case in its own process: ``python -m benchmarks.worker '<json spec>'``.

Each case runs in a fresh interpreter so that no case inherits another's heap, tasks or
connections, and so that its peak RSS (``ru_maxrss``) is its own. The last line printed is
``RESULT <json>``. Throughput is timed from the first polled batch to the moment every record
of the pre-produced topic was processed (group joins and start-up are excluded, the same way
for every case).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks import noop
from benchmarks.common import FILTER, app_config, create_topics, event
from kafkaconsole.config.models import AppConfig
from kafkaconsole.engine.consumer import ConsumerRunner, fetch_sizes
from kafkaconsole.engine.counting import ApplyResult
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.fleet import Fleet

Spec = dict[str, Any]
Ends = dict[int, int]

#: Consumer group settings shared by every case. The Tansu broker holds a JoinGroup for half
#: the session timeout, so a short one keeps start-up quick; joins are outside every timed
#: interval. ``--quick`` passes shorter ones still.
GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 1000}


def group_settings(spec: Spec) -> dict[str, int]:
    return {**GROUP, **spec.get("group_settings", {})}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ends(spec_ends: dict[str, int]) -> Ends:
    return {int(p): int(e) for p, e in spec_ends.items()}


def _caught_up(next_offsets: dict[int, int], ends: Ends) -> bool:
    return all(next_offsets.get(p, 0) >= e for p, e in ends.items())


def _counted_through(runner: ConsumerRunner, ends: Ends) -> bool:
    (topic,) = runner.topics
    return all((runner.next_offset(TopicPartition(topic, p)) or 0) >= e for p, e in ends.items())


def expected_counted(ends: Ends, fmt: str, filtered: bool = True) -> int:
    """Events the consumer counts: all of them in raw format or JSON without the filter, the
    orders in JSON format with it."""
    total = sum(ends.values())
    # event i (ids 0..total-1) is a refund when i % 10 == 9, see common.event
    return total if fmt == "raw" or not filtered else total - total // 10


def _consumer(spec: Spec, group: str, batch: int) -> AIOKafkaConsumer:
    """A consumer set up as the engine's one consumer (kafkaconsole.engine.consumer)."""
    fetch_max, partition_max = fetch_sizes(1)
    return AIOKafkaConsumer(
        spec["topic"],
        bootstrap_servers=spec["bootstrap"],
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
        fetch_max_wait_ms=50,
        isolation_level="read_committed",
        fetch_max_bytes=fetch_max,
        max_partition_fetch_bytes=partition_max,
        **group_settings(spec),
    )


# ---- baselines ------------------------------------------------------------------------------
async def case_raw(spec: Spec) -> dict[str, Any]:
    """The ceiling: a bare getmany loop that only counts records (or also decodes them)."""
    ends = _ends(spec["ends"])
    batch = spec["batch_size"]
    decode = spec.get("decode") == "orjson"
    loads = orjson.loads
    consumer = _consumer(spec, spec["group"], batch)
    await consumer.start()
    n = 0
    t0: float | None = None
    nxt: dict[int, int] = {}
    try:
        while True:
            polled = await consumer.getmany(timeout_ms=1000, max_records=batch)
            if polled and t0 is None:
                t0 = time.perf_counter()
            for tp, records in polled.items():
                if decode:
                    for rec in records:
                        loads(rec.value)
                n += len(records)
                nxt[tp.partition] = records[-1].offset + 1
            if _caught_up(nxt, ends):
                break
        assert t0 is not None
        seconds = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return {"events": n, "seconds": seconds, "eps": n / seconds, "rss_mb": rss_mb()}


async def case_seed(spec: Spec) -> dict[str, Any]:
    """The service description's pseudo-code: per event ``INCR`` + ``GET`` + threshold check."""
    limit = spec["limit"]
    max_event = spec["max_event"]
    key = f"{spec['prefix']}:seed:events"
    r = aredis.from_url(spec["redis_url"])
    consumer = _consumer(spec, spec["group"], spec["batch_size"])
    await consumer.start()
    n = 0
    windows = 0
    t0: float | None = None
    try:
        while n < limit:
            polled = await consumer.getmany(timeout_ms=1000, max_records=spec["batch_size"])
            if polled and t0 is None:
                t0 = time.perf_counter()
            for records in polled.values():
                for rec in records:
                    if n >= limit:
                        break
                    orjson.loads(rec.value)
                    await r.incr(key)
                    count = int(await r.get(key) or 0)
                    if count >= max_event:
                        noop.noop({"count": count})
                        await r.set(key, 0)
                        windows += 1
                    n += 1
        assert t0 is not None
        seconds = time.perf_counter() - t0
    finally:
        await consumer.stop()
        await r.aclose()
    return {
        "events": n,
        "seconds": seconds,
        "eps": n / seconds,
        "windows": windows,
        "rss_mb": rss_mb(),
    }


# ---- the engine, instrumented ---------------------------------------------------------------
class Probe:
    """Times the engine's consumers from their first polled batch until each has caught up.

    In this process only, it wraps ``ConsumerRunner._process`` (the start of a poll's work:
    first batch time) and each runner's ``on_applied`` callback (called once a poll was
    counted in Redis and the runner's next offsets moved): one extra call per poll.
    """

    def __init__(self, ends_by_consumer: dict[str, Ends]) -> None:
        self.ends = ends_by_consumer
        self.pending = set(ends_by_consumer)
        self.t0: float | None = None
        self.t_done: float | None = None
        self.done = asyncio.Event()
        self.applies: list[tuple[float, str]] = []  # (time, consumer_id) of counting polls
        self.record_applies = False
        self.added: dict[str, int] = {}  # events counted so far, per consumer
        self.flowing = asyncio.Event()  # every consumer in ``expect`` has counted a poll
        self.expect = 0
        self.crash_after = 0  # > 0: kill -9 this process once that many events were counted
        self.runners: dict[str, ConsumerRunner] = {}  # by consumer id
        process = ConsumerRunner._process
        init = ConsumerRunner.__init__
        probe = self

        async def _process(runner: ConsumerRunner, batch: Any, stop: asyncio.Event) -> None:
            if probe.t0 is None:
                probe.t0 = time.perf_counter()
            await process(runner, batch, stop)

        def __init__(
            runner: ConsumerRunner,
            *args: Any,
            on_applied: Callable[[ApplyResult], None],
            **kwargs: Any,
        ) -> None:
            def applied(result: ApplyResult) -> None:
                on_applied(result)
                probe._applied(runner, result)

            init(runner, *args, on_applied=applied, **kwargs)
            probe.runners[runner.cfg.consumer_id] = runner

        ConsumerRunner._process = _process  # type: ignore[method-assign,assignment]
        ConsumerRunner.__init__ = __init__  # type: ignore[method-assign,assignment]

    def _applied(self, runner: ConsumerRunner, result: ApplyResult) -> None:
        cid = runner.cfg.consumer_id
        if cid not in self.added:
            self.added[cid] = 0
            if len(self.added) >= self.expect:
                self.flowing.set()
        self.added[cid] += result.added
        if self.crash_after and self.added[cid] >= self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no stop, no final commit: a crash
        if self.record_applies and result.added:
            self.applies.append((time.perf_counter(), cid))
        if cid in self.pending and _counted_through(runner, self.ends[cid]):
            self.pending.discard(cid)
            if not self.pending:
                self.t_done = time.perf_counter()
                self.done.set()

    async def wait(self, timeout: float) -> float:
        """Seconds from the first poll's work to the last event counted; 0 when the consumers
        found everything counted already (a run again after a crash that counted it all:
        a backlog's polls go to Redis in groups, so the last group can hold the rest)."""
        until = time.monotonic() + timeout
        while not self.done.is_set():
            if self._already_counted():
                return 0.0
            if time.monotonic() >= until:
                raise TimeoutError(f"not counted within {timeout:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 0.2)
        assert self.t0 is not None and self.t_done is not None
        return self.t_done - self.t0

    def _already_counted(self) -> bool:
        if self.t0 is not None or not self.pending <= self.runners.keys():
            return False  # counting has begun, or a consumer has not started yet
        return all(_counted_through(self.runners[cid], self.ends[cid]) for cid in self.pending)


def engine_config(
    spec: Spec, consumers: list[dict[str, Any]], pipeline: str = "benchmarks.noop:noop"
) -> AppConfig:
    """Every consumer in a group of its own (fresh per run: prefixes are unique)."""
    consumers = [{"group_id": f"{spec['prefix']}-{c['consumer_id']}", **c} for c in consumers]
    return app_config(
        spec["bootstrap"],
        spec["redis_url"],
        spec["prefix"],
        consumers,
        pipeline=pipeline,
        **group_settings(spec),
    )


def throughput_consumer(spec: Spec, cid: str, topic: str) -> dict[str, Any]:
    c: dict[str, Any] = {
        "consumer_id": cid,
        "kafka_topic": topic,
        "format": spec["format"],
        "max_event": spec["max_event"],
        "batch_size": spec["batch_size"],
    }
    if spec["format"] == "json" and spec.get("filter", True):
        c["filter"] = FILTER
    if spec.get("processor"):
        c["processor"] = spec["processor"]
    return c


async def _stats(spec: Spec, cids: list[str]) -> list[dict[str, int]]:
    r = aredis.from_url(spec["redis_url"])
    try:
        out = []
        for cid in cids:
            raw = await r.hgetall(f"{spec['prefix']}:{cid}:stats")
            out.append({_s(k): int(v) for k, v in raw.items()})
        return out
    finally:
        await r.aclose()


async def _check_exact(spec: Spec, cids: list[str], ends: Ends) -> bool:
    """Counted == produced matches, and every full window closed (by count)."""
    want = expected_counted(ends, spec["format"], spec.get("filter", True))
    stats = await _stats(spec, cids)
    return all(
        s.get("total") == want and s.get("windows", 0) == want // spec["max_event"] for s in stats
    )


async def case_engine(spec: Spec) -> dict[str, Any]:
    """The kafkaconsole Engine, headless, in this process (``--no-ui`` runs the same object).

    ``crash_after``: kill -9 the process once that many events were counted (the harness then
    runs the same spec again without it, and checks the totals are exact).
    """
    ends = _ends(spec["ends"])
    cid = "bench"
    probe = Probe({cid: ends})
    probe.crash_after = spec.get("crash_after", 0)
    cfg = engine_config(spec, [throughput_consumer(spec, cid, spec["topic"])])
    engine = Engine(cfg, instance_id=f"bench-{os.getpid()}")
    await engine.start()
    try:
        seconds = await probe.wait(spec.get("timeout", 300))
    finally:
        await engine.stop()
    n = sum(ends.values())
    return {
        "events": n,
        "seconds": seconds,
        "eps": n / seconds if seconds else 0.0,  # 0 s: found counted already (see Probe.wait)
        "rss_mb": rss_mb(),
        "exact": await _check_exact(spec, [cid], ends),
    }


async def case_tui(spec: Spec) -> dict[str, Any]:
    """The engine inside the Textual app (headless driver), at the default refresh rate."""
    from kafkaconsole.tui.app import KafkaConsoleApp  # the TUI may not be importable

    ends = _ends(spec["ends"])
    cid = "bench"
    probe = Probe({cid: ends})
    cfg = engine_config(spec, [throughput_consumer(spec, cid, spec["topic"])])
    app = KafkaConsoleApp(cfg, instance_id=f"tui-{os.getpid()}")
    async with app.run_test(size=(120, 40)):
        seconds = await probe.wait(spec.get("timeout", 300))
        assert app.engine is not None
        app.engine.request_stop()  # as quitting does: the engine worker stops the engine
        await _until(lambda: app.engine_state in ("stopped", "failed"), 30)
    await app.close_engine()
    n = sum(ends.values())
    return {
        "events": n,
        "seconds": seconds,
        "eps": n / seconds if seconds else 0.0,  # 0 s: found counted already (see Probe.wait)
        "rss_mb": rss_mb(),
        "exact": await _check_exact(spec, [cid], ends),
        "refresh_hz": cfg.ui.refresh_hz,
    }


async def case_fleet(spec: Spec) -> dict[str, Any]:
    """``size`` consumers in one engine, round-robin over ``topics``, each its own group.

    Every consumer has a backlog; once all of them are counting, the events counted in the
    next ``duration`` seconds give the total rate. ``ran_dry`` says a consumer reached the end
    of its topic inside that span (then the rate understates the engine).
    """
    topics = {t: _ends(e) for t, e in spec["topics"].items()}
    names = list(topics)
    size = spec["size"]
    consumers = []
    ends_by_cid: dict[str, Ends] = {}
    for i in range(size):
        topic = names[i % len(names)]
        cid = f"f{i:03d}"
        consumers.append(throughput_consumer(spec, cid, topic))
        ends_by_cid[cid] = topics[topic]
    probe = Probe({})
    probe.expect = size
    engine = Engine(engine_config(spec, consumers), instance_id=f"fleet-{os.getpid()}")
    await engine.start()
    try:
        await asyncio.wait_for(probe.flowing.wait(), spec.get("timeout", 120))
        a0, t0 = sum(probe.added.values()), time.perf_counter()
        await asyncio.sleep(spec["duration"])
        a1, t1 = sum(probe.added.values()), time.perf_counter()
        ran_dry = any(
            _counted_through(engine._get(cid).runner, ends) for cid, ends in ends_by_cid.items()
        )
    finally:
        await engine.stop()
    return {
        "events": a1 - a0,
        "seconds": t1 - t0,
        "eps": (a1 - a0) / (t1 - t0),
        "rss_mb": rss_mb(),
        "consumers": size,
        "ran_dry": ran_dry,
    }


# ---- latencies ------------------------------------------------------------------------------
async def _producer(spec: Spec) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=spec["bootstrap"], linger_ms=0, acks=1)
    await producer.start()
    return producer


async def _history(r: aredis.Redis, key: str) -> list[dict[str, str]]:
    entries: Any = await r.xrange(key)
    return [{_s(k): _s(v) for k, v in f.items()} for _, f in entries]


async def case_timer(spec: Spec) -> dict[str, Any]:
    """Time-trigger lateness, idle then under load.

    ``trickle`` consumers (``max_time = 1``, one 1-partition topic each) get an event every
    ``trickle_ms``; the engine also runs ``load`` consumers on the big topic, paused through
    Redis for the idle phase, then resumed until they have read it all. Each closed window's
    lateness is ``closed_at - (opened_at + 1000)`` from its history entry.
    """
    trickle_topics: list[str] = spec["trickle_topics"]
    ends = _ends(spec["ends"])
    load_ids = [f"load{i}" for i in range(spec["load"])]
    consumers = [throughput_consumer(spec, lid, spec["topic"]) for lid in load_ids]
    for j, topic in enumerate(trickle_topics):
        consumers.append(
            {
                "consumer_id": f"tick{j}",
                "kafka_topic": topic,
                "format": "json",
                "max_event": 1_000_000,
                "max_time": 1,
            }
        )
    cfg = engine_config(spec, consumers)
    r = aredis.from_url(spec["redis_url"])
    fleet = Fleet(r, cfg)
    for lid in load_ids:
        await fleet.pause(lid, by="benchmark")
    probe = Probe(dict.fromkeys(load_ids, ends))
    engine = Engine(cfg, instance_id=f"timer-{os.getpid()}")
    producer = await _producer(spec)
    await engine.start()
    stop = asyncio.Event()

    async def trickle() -> None:
        i = 0
        step = spec["trickle_ms"] / 1000 / len(trickle_topics)
        while not stop.is_set():
            for topic in trickle_topics:
                await producer.send(topic, event(i), partition=0)
                i += 1
                await asyncio.sleep(step)

    task = asyncio.create_task(trickle())
    try:
        await asyncio.sleep(spec["idle_s"])
        load_t0 = time.time() * 1000
        for lid in load_ids:
            await fleet.resume(lid)
        await probe.wait(spec.get("timeout", 300))
        load_t1 = time.time() * 1000
        await asyncio.sleep(1.5)  # let the windows opened under load close
        stop.set()
        await task
    finally:
        stop.set()
        await engine.stop()
        await producer.stop()
    idle: list[float] = []
    loaded: list[float] = []
    for j in range(len(trickle_topics)):
        for f in await _history(r, f"{spec['prefix']}:tick{j}:history"):
            if f["reason"] != "time" or not f["opened_at"]:
                continue
            opened, closed = int(f["opened_at"]), int(f["closed_at"])
            late = closed - (opened + 1000)
            if closed < load_t0:
                idle.append(late)
            elif opened >= load_t0 and closed <= load_t1:
                loaded.append(late)
    await r.aclose()
    return {
        "idle_ms": idle,
        "load_ms": loaded,
        "load_s": (load_t1 - load_t0) / 1000,
        "rss_mb": rss_mb(),
    }


async def case_count_latency(spec: Spec) -> dict[str, Any]:
    """Count-trigger latency at a low rate: event produced -> pipeline called (max_event = 1)."""
    cid = "lat"
    cfg = engine_config(
        spec,
        [{"consumer_id": cid, "kafka_topic": spec["topic"], "format": "json", "max_event": 1}],
        pipeline="benchmarks.noop:stamp",
    )
    engine = Engine(cfg, instance_id=f"lat-{os.getpid()}")
    producer = await _producer(spec)
    await engine.start()
    sent: list[float] = []
    try:
        await _wait_assigned(engine, cid)
        for i in range(spec["samples"]):
            sent.append(time.time())
            await producer.send_and_wait(spec["topic"], event(i), partition=0)
            await asyncio.sleep(spec["interval_ms"] / 1000)
        with contextlib.suppress(TimeoutError):  # a missing call is reported, not fatal
            await _until(lambda: len(noop.STAMPS) >= len(sent), 5)
    finally:
        await engine.stop()
        await producer.stop()
    called = dict(noop.STAMPS)
    lat = [(called[i + 1] - t) * 1000 for i, t in enumerate(sent) if i + 1 in called]
    return {"latency_ms": lat, "missing": len(sent) - len(lat), "rss_mb": rss_mb()}


async def _wait_assigned(engine: Engine, cid: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not engine._get(cid).runner.assigned:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{cid} got no partitions")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)


async def case_control(spec: Spec) -> dict[str, Any]:
    """Pause latency: ``Fleet.pause`` (what ``kafkaconsole pause ID`` does) -> the engine has
    stopped counting while events keep flowing.

    The engine has stopped counting once it applied the pause *and* counted its last poll:
    ``max(pause applied, last counting poll)``, measured from the call and from its return;
    each sample then checks that the count stays still for ``quiet_ms`` while the producer
    keeps producing.
    """
    cid = "ctl"
    cfg = engine_config(
        spec,
        [
            {
                "consumer_id": cid,
                "kafka_topic": spec["topic"],
                "format": "json",
                "max_event": 1_000_000,
            }
        ],
    )
    paused_at: list[float] = []
    original = ConsumerRunner.set_paused

    def set_paused(runner: ConsumerRunner, paused: bool) -> None:
        if paused and not runner.paused:
            paused_at.append(time.perf_counter())
        original(runner, paused)

    ConsumerRunner.set_paused = set_paused  # type: ignore[method-assign,assignment]
    probe = Probe({})
    probe.record_applies = True
    engine = Engine(cfg, instance_id=f"ctl-{os.getpid()}")
    producer = await _producer(spec)
    r = aredis.from_url(spec["redis_url"])
    fleet = Fleet(r, cfg)
    stop = asyncio.Event()
    produced = 0

    async def flow() -> None:
        nonlocal produced
        i = 0
        while not stop.is_set():
            await producer.send(spec["topic"], event(i), partition=i % 3)
            i += 1
            produced = i
            await asyncio.sleep(spec["flow_interval_ms"] / 1000)

    await engine.start()
    task = asyncio.create_task(flow())
    latencies: list[float] = []  # from the pause call
    after_return: list[float] = []  # from the moment it returned
    failures = 0
    try:
        await _wait_assigned(engine, cid)
        for _ in range(spec["samples"]):
            await fleet.resume(cid)
            t_resume = time.perf_counter()
            await _until(lambda t=t_resume: _counted_since(probe, t), 5)  # type: ignore[misc]
            await asyncio.sleep(spec["run_ms"] / 1000)
            n_before = len(paused_at)
            t_call = time.perf_counter()
            await fleet.pause(cid, by="benchmark")
            t_ret = time.perf_counter()
            await _until(lambda n=n_before: len(paused_at) > n, 5)  # type: ignore[misc]
            quiet = spec["quiet_ms"] / 1000
            produced_before = produced
            await asyncio.sleep(quiet)
            last = max((t for t, _ in probe.applies), default=0.0)
            stopped = max(paused_at[-1], last)
            if produced == produced_before or time.perf_counter() - last < quiet * 0.9:
                failures += 1  # the flow stopped, or the count was still moving
                continue
            latencies.append((stopped - t_call) * 1000)
            after_return.append(max(0.0, stopped - t_ret) * 1000)
    finally:
        stop.set()
        await task
        await engine.stop()
        await producer.stop()
        await r.aclose()
    return {
        "latency_ms": latencies,
        "after_return_ms": after_return,
        "failures": failures,
        "rss_mb": rss_mb(),
    }


def _counted_since(probe: Probe, since: float) -> bool:
    return bool(probe.applies) and probe.applies[-1][0] >= since


async def _until(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


CASES: dict[str, Callable[[Spec], Coroutine[Any, Any, dict[str, Any]]]] = {
    "raw": case_raw,
    "seed": case_seed,
    "engine": case_engine,
    "tui": case_tui,
    "fleet": case_fleet,
    "timer": case_timer,
    "count_latency": case_count_latency,
    "control": case_control,
}


async def run_case(spec: Spec) -> dict[str, Any]:
    if spec.get("create_topics"):
        await create_topics(spec["bootstrap"], spec["create_topics"])
    return await CASES[spec["case"]](spec)


def main() -> None:
    spec: Spec = orjson.loads(sys.argv[1])
    result = asyncio.run(run_case(spec))
    sys.stdout.write("RESULT " + orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
