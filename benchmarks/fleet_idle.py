"""Idle cost of many consumers in one headless process: CPU, RSS and Redis connections.

For each fleet size N: N consumers (10 per single-partition topic), each with ``max_event``
events waiting, run in one ``kafkaconsole run --no-ui`` process (HTTP API on) against a
broker and a Redis server started here. Once every consumer has counted its events and its
window's pipeline (a no-op ``python`` hook) has succeeded, the process is left idle for a
settling period, then its CPU time is read from ``/proc/<pid>/stat`` over ``--seconds`` (30 s
by default). Reported: start-up time (until every window's run succeeded), idle CPU as a share
of one core, RSS, the Redis connections the process holds when idle and the most seen while
it started (``INFO clients`` of a Redis server nothing else uses, sampled every 0.2 s), and
the "Too many connections" / pool lines in its log.

Then the time trigger with every window open at once: one more event per consumer opens its
second window, which closes by ``max_time`` (``--max-time``, 20 s) while all N are open; the
lateness of each close is the history's ``closed_at`` - (``opened_at`` + ``max_time``), both on
Redis's clock. Reported: its p50, p99 and max over the N windows.

    python -m benchmarks.fleet_idle --sizes 50,500,1000 [--broker apache|tansu] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from benchmarks.common import create_topics
from kafkaconsole.embedded import EmbeddedServices, free_port, pick_broker

ROOT = Path(__file__).resolve().parents[1]
PER_TOPIC = 10
EVENTS = 2  # per topic, and each consumer's max_event: one count trigger per consumer
MAX_TIME = 20  # seconds: the second windows close by time, all open together
KEEP_LOGS: Path | None = None  # --keep-logs: where each process's log is copied
POOL_ERRORS = ("Too many connections", "No connection available", "pool exhausted")


def write_config(
    path: Path, bootstrap: str, redis_url: str, prefix: str, n: int, max_time: int = MAX_TIME
) -> None:
    lines = [
        "[kafka]",
        f'bootstrap_servers = "{bootstrap}"',
        "[redis]",
        f'url = "{redis_url}"',
        f'key_prefix = "{prefix}"',
        "[api]",
        f"port = {free_port()}",
        "[pipelines.noop]",
        'kind = "python"',
        'target = "benchmarks.noop:noop"',
    ]
    for i in range(n):
        lines += [
            "[[consumers]]",
            f'consumer_id = "c{i:04d}"',
            f'kafka_topic = "{prefix}-t{i // PER_TOPIC:03d}"',
            'pipeline_name = "noop"',
            'connection_id = "bench"',
            f"max_event = {EVENTS}",
            f"max_time = {max_time}",
        ]
    path.write_text("\n".join(lines) + "\n")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def produce(bootstrap: str, topics: list[str], events: int = EVENTS) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, b'{"type": "order"}')
            for topic in topics
            for _ in range(events)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def clients(redis: Redis) -> int:
    info: Any = await redis.info("clients")
    return int(info["connected_clients"]) - 1  # this script's own connection


async def all_triggered(redis: Redis, prefix: str, n: int) -> int:
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        pipe.hget(f"{prefix}:c{i:04d}:runs", "1")
    done = 0
    for raw in await pipe.execute():
        if raw and json.loads(raw).get("status") == "succeeded":
            done += 1
    return done


async def time_closes(redis: Redis, prefix: str, n: int, max_time: int) -> list[int]:
    """Lateness (ms) of every consumer's second window, closed by time; [] until all are."""
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xrange(f"{prefix}:c{i:04d}:history")
    late = []
    for entries in await pipe.execute():
        second = [f for _, f in entries if f.get(b"window_id") == b"2"]
        if not second or second[0].get(b"reason") != b"time":
            return []
        f = second[0]
        late.append(int(f[b"closed_at"]) - int(f[b"opened_at"]) - max_time * 1000)
    return late


def pct(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def keep(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def keep_all(folder: Path, to: Path) -> None:
    for log in folder.glob("*.log"):
        keep(log.read_text(errors="replace"), to / log.name)


def spawn(cfg: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``kafkaconsole run --no-ui`` on ``cfg``, its output in ``log_path``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "kafkaconsole", "run", "--no-ui", "--config", str(cfg)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )


async def measure(
    services: EmbeddedServices, n: int, seconds: float, settle: float, workdir: Path
) -> dict[str, Any]:
    prefix = f"idle{n}x{int(time.time()) % 100000}"
    topics = [f"{prefix}-t{t:03d}" for t in range((n + PER_TOPIC - 1) // PER_TOPIC)]
    await create_topics(services.bootstrap_servers, dict.fromkeys(topics, 1))
    await produce(services.bootstrap_servers, topics)
    cfg = workdir / f"fleet-{n}.toml"
    write_config(cfg, services.bootstrap_servers, services.redis_url, prefix, n)
    log_path = workdir / f"fleet-{n}.log"
    redis = Redis.from_url(services.redis_url)
    baseline = await clients(redis)
    proc = spawn(cfg, log_path)
    began = time.monotonic()
    peak = 0
    try:
        done = 0
        while done < n:
            if proc.poll() is not None:
                raise RuntimeError(f"the process exited ({proc.returncode}); see {log_path}")
            if time.monotonic() - began > 600:
                raise RuntimeError(f"only {done}/{n} consumers triggered in 600 s; see {log_path}")
            peak = max(peak, await clients(redis) - baseline)
            done = await all_triggered(redis, prefix, n)
            await asyncio.sleep(0.2)
        startup = time.monotonic() - began
        settle_end = time.monotonic() + settle
        while time.monotonic() < settle_end:
            peak = max(peak, await clients(redis) - baseline)
            await asyncio.sleep(0.2)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        idle_conns = await clients(redis) - baseline
        rss = rss_mb(proc.pid)
        # every consumer's second window opens now and closes by time, all N open at once
        await produce(services.bootstrap_servers, topics, events=1)
        late: list[int] = []
        deadline = time.monotonic() + MAX_TIME + 120
        while not late:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the time-closed windows did not all close; see {log_path}")
            await asyncio.sleep(1.0)
            late = await time_closes(redis, prefix, n, MAX_TIME)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await redis.aclose()
    text = log_path.read_text(errors="replace")
    if KEEP_LOGS is not None:
        keep(text, KEEP_LOGS / log_path.name)
    pool_lines = sum(1 for line in text.splitlines() if any(p in line for p in POOL_ERRORS))
    return {
        "consumers": n,
        "startup_s": round(startup, 1),
        "idle_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "rss_mb": round(rss),
        "redis_connections_idle": idle_conns,
        "redis_connections_peak": max(peak, idle_conns),
        "pool_error_lines": pool_lines,
        "time_lateness_ms": {"p50": pct(late, 0.5), "p99": pct(late, 0.99), "max": max(late)},
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    kind, reason = pick_broker(args.broker)
    if reason:
        print(reason, file=sys.stderr)
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="kc-idle-") as tmp,
        EmbeddedServices.start(broker=kind) as services,
    ):
        for n in [int(s) for s in args.sizes.split(",")]:
            try:
                res = await measure(services, n, args.seconds, args.settle, Path(tmp))
            except Exception:
                if KEEP_LOGS is not None:  # the folder goes with the run
                    keep_all(Path(tmp), KEEP_LOGS)
                raise
            print(json.dumps(res), flush=True)
            results.append(res)
    return results


def table(results: list[dict[str, Any]]) -> str:
    """The results as the Markdown table of BENCHMARKS.md."""
    rows = [
        "| consumers | start-up s | idle CPU % of a core | RSS MB | Redis connections idle "
        "| peak | pool error lines | time-trigger lateness p50 / p99 / max ms, all open |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        late = r.get("time_lateness_ms")
        lateness = f"{late['p50']} / {late['p99']} / {late['max']}" if late else "n/a"
        rows.append(
            f"| {r['consumers']:,} | {r['startup_s']:g} | {r['idle_cpu_pct']:g} | {r['rss_mb']} "
            f"| {r['redis_connections_idle']} | {r['redis_connections_peak']} "
            f"| {r['pool_error_lines']:,} | {lateness} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,500,1000", help="fleet sizes, comma separated")
    parser.add_argument("--broker", default="apache", help="apache | tansu | auto")
    parser.add_argument("--seconds", type=float, default=30.0, help="idle CPU measured over")
    parser.add_argument("--settle", type=float, default=10.0, help="idle seconds before that")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep-logs", type=Path, help="copy each process's log to this folder")
    parser.add_argument("--render", type=Path, help="only print the table of a --json file")
    args = parser.parse_args(argv)
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return 0
    global KEEP_LOGS
    KEEP_LOGS = args.keep_logs
    results = asyncio.run(main_async(args))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
