"""Cost per event of each part of the counting path, in CPU time: the inputs of a scaling model.

A broker and a Redis server are started here; one topic of ``--partitions`` partitions gets
``--events`` JSON events of 200 bytes (one in ten a refund, filtered out: the engine-json
workload of ``benchmarks/run.py``). Each round then measures, one part at a time and never two
at once, the CPU each part spends per event (process CPU, user + system, of every thread;
Redis's main-thread CPU from ``INFO cpu``; the broker's from ``/proc/<pid>/stat``): steadier
than wall time on a shared machine, though not free of its contention (BENCHMARKS.md, "A
scaling model"):

- ``fetch``: a bare aiokafka ``getmany`` loop set up as the engine's consumer (it only counts
  records): client CPU per event, and the broker's CPU per event served (less its idle rate);
- ``decode``: the same loop, also running the engine's own ``build_batch`` (decode, size cap,
  ``filter = {type = "order"}``, offset ranges) on every poll: the CPU of those calls alone;
- ``lua`` (one per ``--batches`` size): the engine's ``WindowCounter.apply`` called directly,
  one call in flight, on the deltas the decode pass built, cut into calls of that many
  records: client CPU per call, Redis main-thread CPU per call and ``EVALSHA`` usec per call
  (``INFO commandstats`` after ``CONFIG RESETSTAT``), hence per event; then the totals are
  checked against the events counted;
- ``engine``: the whole engine, headless, in this process, on the same backlog (as run.py's
  engine-json): client, Redis and broker CPU per event and the records per counting call it
  chose, the check that the parts add up.

Rounds repeat the four in turn; medians over rounds. The summary gives the sum of the parts
against the whole engine and the derived bounds: events/s per worker core (1e6 / client µs per
event) and per Redis main thread (1e6 / Redis µs per event).

    python -m benchmarks.scaling [--events 1000000] [--partitions 3] [--batches 100,500,2000]
                                 [--repeats 3] [--max-event 10000] [--broker apache|tansu|auto]
                                 [--json F] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from redis.asyncio import Redis

from benchmarks import worker
from benchmarks.common import make_backlog, summary
from benchmarks.workers import broker_pid, cpu_seconds, machine_ticks
from kafkaconsole.embedded import EmbeddedServices, pick_broker
from kafkaconsole.engine.consumer import ConsumerRunner, tune_gc
from kafkaconsole.engine.counting import PartitionDelta, WindowCounter
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.events import EventClassifier, build_batch
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.keys import ConsumerKeys

POLL_RECORDS = 500  # the engine's default batch_size (max_records of a poll)
MAX_EVENT = 10_000  # run.py's engine cases
#: The hosts of the projection (cores each) and the rate planned per partition (events/s):
#: see BENCHMARKS.md "A scaling model".
HOST_CORES = 16
PARTITION_EPS = 50_000


@dataclass
class Ctx:
    services: EmbeddedServices
    redis: Redis
    topic: str
    ends: dict[int, int]
    broker_pid: int | None
    broker_idle: float  # the broker's CPU seconds per second with nothing to serve
    group_settings: dict[str, int]
    max_event: int = MAX_EVENT

    def spec(self, prefix: str) -> dict[str, Any]:
        """What benchmarks.worker's helpers take (one consumer, json + filter)."""
        return {
            "bootstrap": self.services.bootstrap_servers,
            "redis_url": self.services.redis_url,
            "prefix": prefix,
            "topic": self.topic,
            "format": "json",
            "max_event": self.max_event,
            "batch_size": POLL_RECORDS,
            "group_settings": self.group_settings,
        }

    @property
    def total(self) -> int:
        return sum(self.ends.values())


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _cpu() -> float:
    """This process's CPU seconds, user + system, every thread."""
    return time.process_time()


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def redis_main_cpu(r: Redis) -> float:
    """Redis's main-thread CPU seconds (the whole server's where not reported)."""
    info = await r.info("cpu")
    if "used_cpu_user_main_thread" in info:
        return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def evalsha_stats(r: Redis) -> tuple[int, float, float]:
    """(EVALSHA calls, their usec, usec of every command) since the last CONFIG RESETSTAT."""
    stats = await r.info("commandstats")
    ev = stats.get("cmdstat_evalsha", {})
    every = sum(float(v.get("usec", 0)) for k, v in stats.items() if k.startswith("cmdstat_"))
    return int(ev.get("calls", 0)), float(ev.get("usec", 0)), every


class Interval:
    """CPU of this process, Redis's main thread, the broker and the whole machine over a span."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        self.load = _load()
        self.redis0 = await redis_main_cpu(self.ctx.redis)
        self.broker0 = cpu_seconds(self.ctx.broker_pid) if self.ctx.broker_pid else math.nan
        self.idle0, self.all0 = machine_ticks()
        self.t0 = time.perf_counter()
        self.cpu0 = _cpu()

    async def stop(self) -> dict[str, Any]:
        cpu = _cpu() - self.cpu0
        seconds = time.perf_counter() - self.t0
        idle1, all1 = machine_ticks()
        broker = (cpu_seconds(self.ctx.broker_pid) if self.ctx.broker_pid else math.nan) - (
            self.broker0
        )
        redis = await redis_main_cpu(self.ctx.redis) - self.redis0
        busy = (1 - (idle1 - self.idle0) / max(1, all1 - self.all0)) * (os.cpu_count() or 1)
        return {
            "seconds": seconds,
            "cpu_s": cpu,
            "redis_cpu_s": redis,
            "broker_cpu_s": broker,
            # less the broker's idle rate: what serving these fetches cost it
            "broker_work_s": broker - self.ctx.broker_idle * seconds,
            "loadavg": self.load,
            "cores_busy_other": round(busy - (cpu + redis + max(broker, 0)) / seconds, 2),
        }


# ---- the parts ------------------------------------------------------------------------------
async def stage_fetch(ctx: Ctx, decode: bool) -> tuple[dict[str, Any], list[PartitionDelta]]:
    """The bare loop (``decode``: and ``build_batch`` on every poll, timed on its own).

    Timed from the end of the first non-empty poll (its records are not counted) until every
    partition was read to its end: joins and the first fetch's start-up are left out."""
    tag = _tag()
    spec = ctx.spec(f"sc-{tag}")
    consumer = worker._consumer(spec, f"sc-fetch-{tag}", POLL_RECORDS)
    cfg = worker.engine_config(spec, [worker.throughput_consumer(spec, "bench", ctx.topic)])
    classifier = EventClassifier(cfg.consumers[0])
    deltas: list[PartitionDelta] = []
    await consumer.start()
    interval = Interval(ctx)
    n = 0
    decode_cpu = 0.0
    started = False
    nxt: dict[int, int] = {}
    try:
        while True:
            polled = await consumer.getmany(timeout_ms=1000, max_records=POLL_RECORDS)
            if not polled:
                continue
            if decode:
                c0 = _cpu()
                ds, bad, _ = build_batch(classifier, polled, {})
                decode_cpu += _cpu() - c0
                assert not bad, bad[0].describe()
                deltas += ds
            for tp, records in polled.items():
                if started:
                    n += len(records)
                nxt[tp.partition] = records[-1].offset + 1
            if not started:
                started = True
                await interval.start()
                decode_cpu = 0.0
            if worker._caught_up(nxt, ctx.ends):
                break
        out = await interval.stop()
    finally:
        await consumer.stop()
    out["events"] = n
    if decode:
        out["decode_cpu_s"] = decode_cpu
    return out, deltas


def piece(d: PartitionDelta, a: int, b: int) -> PartitionDelta:
    """The records of ``d`` at offsets ``a`` to ``b - 1`` (``d``'s offsets are contiguous)."""
    ranges = [(max(x, a), min(y, b - 1)) for x, y in d.ranges if x < b and y >= a]
    return PartitionDelta(d.topic, d.partition, b, a, b - a, ranges, [], 0)


def cut(deltas: list[PartitionDelta], size: int) -> list[list[PartitionDelta]]:
    """The polls' deltas, in order, as calls of ``size`` records each (the last may be short);
    a call that spans polls holds one entry per poll and partition, as the engine sends
    polls it counts together."""
    calls: list[list[PartitionDelta]] = []
    cur: list[PartitionDelta] = []
    room = size
    for d in deltas:
        if d.next_offset - d.first_offset != d.n_records or d.errors or d.skipped:
            raise ValueError("the topic's offsets are not contiguous: cannot cut its polls")
        start = d.first_offset
        while start < d.next_offset:
            take = min(room, d.next_offset - start)
            cur.append(piece(d, start, start + take))
            start += take
            room -= take
            if room == 0:
                calls.append(cur)
                cur, room = [], size
    if cur:
        calls.append(cur)
    return calls


async def stage_lua(ctx: Ctx, deltas: list[PartitionDelta], size: int) -> dict[str, Any]:
    """``WindowCounter.apply`` on calls of ``size`` records, one in flight, fresh keys."""
    r = ctx.redis
    counter = WindowCounter(r, ConsumerKeys(f"sc-{_tag()}", "bench"), max_event=ctx.max_event)
    calls = cut(deltas, size)
    await counter.apply([])  # loads the script: no NOSCRIPT round trip in the timed span
    expected: dict[TopicPartition, int] = {}
    await r.config_resetstat()
    interval = Interval(ctx)
    await interval.start()
    added = 0
    for call in calls:
        res = await counter.apply(call, expected)
        added += res.added
        for d in call:
            expected[TopicPartition(d.topic, d.partition)] = d.next_offset
    out = await interval.stop()
    evalsha, usec, _ = await evalsha_stats(r)
    want = sum(b - a + 1 for d in deltas for a, b in d.ranges)
    total = int(await r.hget(counter.keys.stats, "total") or 0)
    out |= {
        "batch": size,
        "calls": len(calls),
        "events": sum(d.n_records for d in deltas),
        "ranges_per_call": sum(len(d.ranges) for c in calls for d in c) / len(calls),
        "evalsha_calls": evalsha,
        "evalsha_usec": usec,
        "exact": added == want == total and evalsha == len(calls),
    }
    return out


async def stage_engine(ctx: Ctx) -> dict[str, Any]:
    """The whole engine on the backlog, paused in Redis until its partitions have an owner,
    then timed from the resume until it counted through the topic's ends."""
    prefix = f"sc-{_tag()}"
    spec = ctx.spec(prefix)
    cid = "bench"
    cfg = worker.engine_config(spec, [worker.throughput_consumer(spec, cid, ctx.topic)])
    fleet = Fleet(ctx.redis, cfg)
    await fleet.pause(cid, by="benchmark")
    saved = (ConsumerRunner._process, ConsumerRunner.__init__, WindowCounter.apply)
    probe = worker.Probe({cid: ctx.ends})  # wraps ConsumerRunner: restored below
    calls = [0, 0]  # counting calls, records in them
    apply = WindowCounter.apply

    async def counted_apply(self: WindowCounter, deltas: list[PartitionDelta], *a: Any) -> Any:
        calls[0] += 1
        calls[1] += sum(d.n_records for d in deltas)
        return await apply(self, deltas, *a)

    WindowCounter.apply = counted_apply  # type: ignore[method-assign,assignment]
    engine = Engine(cfg, instance_id=f"scaling-{os.getpid()}")
    try:
        await engine.start()
        deadline = time.monotonic() + 120
        while True:
            status = await fleet.consumer_status(cid)
            if len(status.partitions) == len(ctx.ends) and all(p.owner for p in status.partitions):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the engine's consumer did not own its partitions in 120 s")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        await ctx.redis.config_resetstat()
        interval = Interval(ctx)
        await interval.start()
        await fleet.resume(cid)
        await asyncio.wait_for(probe.done.wait(), 600)
        out = await interval.stop()
        assert probe.t_done is not None
        out["seconds"] = probe.t_done - interval.t0
        evalsha, usec, every = await evalsha_stats(ctx.redis)
    finally:
        await engine.stop()
        ConsumerRunner._process, ConsumerRunner.__init__, WindowCounter.apply = saved  # type: ignore[method-assign]
    out |= {
        "events": ctx.total,
        "counting_calls": calls[0],
        "records_per_call": calls[1] / max(calls[0], 1),
        "evalsha_calls": evalsha,
        "evalsha_usec": usec,
        "commands_usec": every,
        "exact": await worker._check_exact(spec, [cid], ctx.ends),
    }
    return out


# ---- per-event costs and the model -----------------------------------------------------------
def us(seconds: float, events: int) -> float:
    return seconds * 1e6 / events if events else math.nan


def costs(rnd: dict[str, Any]) -> dict[str, float]:
    """One round's costs in µs per event (``lua<N>_*``: at calls of N records)."""
    f, d, e = rnd["fetch"], rnd["decode"], rnd["engine"]
    out = {
        "fetch_client": us(f["cpu_s"], f["events"]),
        "fetch_broker": us(f["broker_work_s"], f["events"]),
        "decode": us(d["decode_cpu_s"], d["events"]),
        "decode_pass_fetch_client": us(d["cpu_s"] - d["decode_cpu_s"], d["events"]),
        "engine_client": us(e["cpu_s"], e["events"]),
        "engine_redis": us(e["redis_cpu_s"], e["events"]),
        "engine_broker": us(e["broker_work_s"], e["events"]),
        "engine_evalsha_usec": e["evalsha_usec"] / e["events"],
        "engine_records_per_call": e["records_per_call"],
        "engine_wall_eps": e["events"] / e["seconds"],
    }
    for lua in rnd["lua"]:
        b = lua["batch"]
        out[f"lua{b}_client"] = us(lua["cpu_s"], lua["events"])
        out[f"lua{b}_redis"] = us(lua["redis_cpu_s"], lua["events"])
        out[f"lua{b}_evalsha_usec"] = lua["evalsha_usec"] / lua["events"]
        out[f"lua{b}_client_per_call"] = lua["cpu_s"] * 1e6 / lua["calls"]
        out[f"lua{b}_redis_per_call"] = lua["redis_cpu_s"] * 1e6 / lua["calls"]
        out[f"lua{b}_evalsha_usec_per_call"] = lua["evalsha_usec"] / lua["calls"]
        out[f"lua{b}_ranges_per_call"] = lua["ranges_per_call"]
    # the parts at the call size nearest the engine's, against the whole, in the same round
    b = nearest([lua["batch"] for lua in rnd["lua"]], e["records_per_call"])
    out["parts_client"] = out["fetch_client"] + out["decode"] + out[f"lua{b}_client"]
    out["parts_share_of_engine"] = out["parts_client"] / out["engine_client"]
    return out


def medians(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    per = [costs(r) for r in rounds]
    return {
        k: {
            "median": (s := summary([c[k] for c in per])).median,
            "min": s.low,
            "max": s.high,
        }
        for k in per[0]
    }


def nearest(batches: list[int], records_per_call: float) -> int:
    return min(batches, key=lambda b: abs(math.log(b / max(records_per_call, 1))))


def model(med: dict[str, dict[str, float]], batches: list[int]) -> dict[str, Any]:
    """Sum of the parts against the whole, and the bounds one core and one Redis set."""
    m = {k: v["median"] for k, v in med.items()}
    b = nearest(batches, m["engine_records_per_call"])
    parts = m["fetch_client"] + m["decode"] + m[f"lua{b}_client"]
    return {
        "lua_batch_nearest_engine": b,
        "sum_of_parts_client_us": parts,
        "engine_client_us": m["engine_client"],
        "rest_client_us": m["engine_client"] - parts,
        "worker_core_eps_parts": 1e6 / parts,
        "worker_core_eps_engine": 1e6 / m["engine_client"],
        "redis_primary_eps_engine": 1e6 / m["engine_redis"],
        "redis_primary_eps_by_batch": {x: 1e6 / m[f"lua{x}_redis"] for x in batches},
        "host_cores": HOST_CORES,
        "partition_eps": PARTITION_EPS,
        "deployments": [
            deployment(t, 1e6 / m["engine_client"], 1e6 / m["engine_redis"])
            for t in (1_000_000, 10_000_000, 100_000_000)
        ],
    }


def deployment(target: int, worker_eps: float, redis_eps: float) -> dict[str, Any]:
    """What ``target`` events/s needs at the measured rates, with no headroom (a projection):
    worker cores, hosts of :data:`HOST_CORES`, partitions (one per worker at least, and
    :data:`PARTITION_EPS` each at most), Redis primaries, and the fewest consumers that spread
    over them (one consumer's keys live on one primary)."""
    workers = math.ceil(target / worker_eps)
    primaries = math.ceil(target / redis_eps)
    return {
        "target_eps": target,
        "workers": workers,
        "hosts": math.ceil(workers / HOST_CORES),
        "partitions": max(workers, math.ceil(target / PARTITION_EPS)),
        "redis_primaries": primaries,
        "min_consumers": primaries,
        "one_consumer_fits_one_primary": target <= redis_eps,
    }


# ---- the run ---------------------------------------------------------------------------------
async def idle_rate(ctx: Ctx, seconds: float) -> float:
    """The broker's CPU seconds per second with nothing to serve."""
    if not ctx.broker_pid:
        return 0.0
    c0, t0 = cpu_seconds(ctx.broker_pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return (cpu_seconds(ctx.broker_pid) - c0) / (time.perf_counter() - t0)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    kind, reason = pick_broker(args.broker)
    if reason:
        print(reason, file=sys.stderr)
    batches = [int(b) for b in args.batches.split(",")]
    tune_gc()  # the engine's collector settings, for every part alike
    with EmbeddedServices.start(broker=kind) as services:
        topic = f"scaling-{_tag()}"
        ends = await make_backlog(services.bootstrap_servers, topic, args.events, args.partitions)
        r = Redis.from_url(services.redis_url)
        group = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
        ctx = Ctx(services, r, topic, ends, broker_pid(services), 0.0, group, args.max_event)
        rounds = []
        try:
            for rep in range(args.repeats):
                ctx.broker_idle = await idle_rate(ctx, 1.0 if args.quick else 3.0)
                rnd: dict[str, Any] = {"round": rep + 1, "broker_idle_cpu_per_s": ctx.broker_idle}
                rnd["fetch"], _ = await stage_fetch(ctx, decode=False)
                _log(rep, "fetch", rnd["fetch"])
                rnd["decode"], deltas = await stage_fetch(ctx, decode=True)
                _log(rep, "decode", rnd["decode"])
                rnd["lua"] = []
                for b in batches:
                    rnd["lua"].append(await stage_lua(ctx, deltas, b))
                    _log(rep, f"lua {b}", rnd["lua"][-1])
                rnd["engine"] = await stage_engine(ctx)
                _log(rep, "engine", rnd["engine"])
                rounds.append(rnd)
        finally:
            await r.aclose()
        med = medians(rounds)
        mod = model(med, batches)
        return {
            "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {
                "cpu": _cpu_model(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
            },
            "broker": services.description,
            "events": sum(ends.values()),
            "partitions": args.partitions,
            "poll_records": POLL_RECORDS,
            "max_event": args.max_event,
            "batches": batches,
            "rounds": rounds,
            "costs_us_per_event": med,
            "model": mod,
            "exact": all(
                r["engine"]["exact"] and all(x["exact"] for x in r["lua"]) for r in rounds
            ),
        }


def _log(rep: int, stage: str, res: dict[str, Any]) -> None:
    cpu = res.get("decode_cpu_s", res["cpu_s"])
    print(
        f"round {rep + 1} {stage}: {res['events']:,} events, {res['seconds']:.2f} s, "
        f"CPU {cpu:.2f} s, Redis {res['redis_cpu_s']:.2f} s, load {res['loadavg']}",
        file=sys.stderr,
        flush=True,
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def report(res: dict[str, Any]) -> str:
    """The per-event costs and the bounds, as Markdown."""
    med = medians(res["rounds"])
    mod = model(med, res["batches"])

    def row(label: str, key: str, digits: int = 2) -> str:
        c = med[key]
        cells = " | ".join(f"{c[k]:.{digits}f}" for k in ("median", "min", "max"))
        return f"| {label} | {cells} |"

    lines = [
        f"{res['events']:,} events, {res['partitions']} partitions, {res['broker']}, "
        f"{len(res['rounds'])} round(s), {res['measured_at']}; exact: "
        f"{'yes' if res['exact'] else 'NO'}",
        "",
        "| part (µs of CPU per event) | median | min | max |",
        "| --- | ---: | ---: | ---: |",
        row("fetch: client (bare getmany loop)", "fetch_client"),
        row("fetch: broker (less its idle rate)", "fetch_broker"),
        row("decode + filter (`build_batch`)", "decode"),
    ]
    for b in res["batches"]:
        lines += [
            row(f"Lua call of {b} records: client", f"lua{b}_client"),
            row(f"Lua call of {b} records: Redis main thread", f"lua{b}_redis"),
            row(f"Lua call of {b} records: EVALSHA usec", f"lua{b}_evalsha_usec"),
        ]
    lines += [
        row("whole engine: client", "engine_client"),
        row("whole engine: Redis main thread", "engine_redis"),
        row("whole engine: broker (less its idle rate)", "engine_broker"),
        row("whole engine: records per counting call", "engine_records_per_call", 0),
        row("whole engine: events/s (wall, for reference)", "engine_wall_eps", 0),
        "",
        "| per call | " + " | ".join(f"{b} records" for b in res["batches"]) + " |",
        "| --- | " + " | ".join("---:" for _ in res["batches"]) + " |",
    ]
    for label, k in (
        ("client µs", "client_per_call"),
        ("Redis main-thread µs", "redis_per_call"),
        ("EVALSHA usec", "evalsha_usec_per_call"),
        ("offset ranges", "ranges_per_call"),
    ):
        cells = " | ".join(f"{med[f'lua{b}_{k}']['median']:.1f}" for b in res["batches"])
        lines.append(f"| {label} | {cells} |")
    b = mod["lua_batch_nearest_engine"]
    lines += [
        "",
        f"Sum of the parts (fetch + decode + Lua client at {b} records): "
        f"{mod['sum_of_parts_client_us']:.2f} µs/event; whole engine "
        f"{mod['engine_client_us']:.2f} µs/event (rest {mod['rest_client_us']:+.2f}).",
        f"One worker core: {mod['worker_core_eps_engine']:,.0f} events/s (whole engine), "
        f"{mod['worker_core_eps_parts']:,.0f} (sum of parts).",
        f"One Redis main thread: {mod['redis_primary_eps_engine']:,.0f} events/s (whole engine); "
        "by call size: "
        + ", ".join(f"{k}: {v:,.0f}" for k, v in mod["redis_primary_eps_by_batch"].items())
        + ".",
        "",
        "| round | load avg | fetch | decode | Lua client | sum of parts | whole engine "
        "| parts / whole | Redis (engine) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['round']} | {r['engine']['loadavg']} | {c['fetch_client']:.2f} "
            f"| {c['decode']:.2f} | {c['parts_client'] - c['fetch_client'] - c['decode']:.2f} "
            f"| {c['parts_client']:.2f} | {c['engine_client']:.2f} "
            f"| {c['parts_share_of_engine']:.0%} | {c['engine_redis']:.2f} |"
            for r, c in ((r, costs(r)) for r in res["rounds"])
        ),
        "",
        f"Projected, no headroom ({mod['host_cores']}-core hosts, at most "
        f"{mod['partition_eps']:,} events/s per partition):",
        "",
        "| events/s | worker cores | hosts | partitions | Redis primaries (= fewest consumers) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in mod["deployments"]:
        lines.append(
            f"| {d['target_eps']:,} | {d['workers']:,} | {d['hosts']:,} | {d['partitions']:,} "
            f"| {d['redis_primaries']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batches", default="100,500,2000", help="records per Lua call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-event", type=int, default=MAX_EVENT, help="window size")
    parser.add_argument("--broker", default="apache", help="apache | tansu | auto")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--render", type=Path, help="only print the report of a --json file")
    parser.add_argument("--quick", action="store_true", help="smoke: 20,000 events, once")
    args = parser.parse_args(argv)
    if args.render:  # the report (and with --json the costs and model) from the rounds kept
        res = json.loads(args.render.read_text())
        res["costs_us_per_event"] = medians(res["rounds"])
        res["model"] = model(res["costs_us_per_event"], res["batches"])
        print(report(res))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    if args.quick:
        args.events, args.repeats = 20_000, 1
    res = asyncio.run(main_async(args))
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
