"""Soak: hours of a high window rate with kills and restarts; memory flat, counts exact.

Starts Apache Kafka and Redis, then ``--instances`` headless ``kafkaconsole run --no-ui``
processes sharing one group per consumer (``--consumers`` consumers on one topic of 6
partitions, ``max_event`` 200 and ``max_time`` 2 s, so each consumer closes several windows a
second, and a pipeline that records each call's idempotency key). A producer writes
``--rate`` JSON events a second for ``--minutes``. Every ``--chaos-every`` seconds one
instance is stopped, by turns ``kill -9`` and SIGTERM, and started again 3 s later.

Every ``--sample-every`` seconds a line goes to stdout (and ``--out``, JSON lines): each
instance's RSS, Redis's ``used_memory``, its key count (``DBSIZE``), the history and dispatch
stream lengths and ``runs`` hash size of each consumer, events produced and counted. At the
end the producer stops and the script waits until every consumer has counted every event,
then checks, per consumer: counted (the ``total`` stat) = produced, exactly; and from the
pipeline's records, every closed window's key was seen, and how many were called again (only
a kill between a pipeline call and its recorded result can do that: the idempotency key is
the same). The summary compares the memory and key counts after the warm-up
(``--warmup`` minutes) with the end.

    python -m benchmarks.soak --minutes 180 [--rate 3000] [--instances 2] [--consumers 4]
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
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from benchmarks.common import create_topics
from kafkaconsole.embedded import EmbeddedServices

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 6
MAX_EVENT = 200
MAX_TIME = 2
#: where the pipeline appends each call's idempotency key (set by the script for the instances)
CALLS_ENV = "KAFKACONSOLE_SOAK_CALLS"


def record_call(record: dict[str, Any]) -> None:
    """The soak's pipeline (``kind = "python"``): one line per call, the idempotency key."""
    path = os.environ.get(CALLS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:  # O_APPEND: one write per line
            f.write(record["idempotency_key"] + "\n")


def write_config(
    path: Path, bootstrap: str, redis_url: str, prefix: str, topic: str, n: int
) -> None:
    lines = [
        "[kafka]",
        f'bootstrap_servers = "{bootstrap}"',
        "session_timeout_ms = 10000",
        "heartbeat_interval_ms = 1000",
        "[redis]",
        f'url = "{redis_url}"',
        f'key_prefix = "{prefix}"',
        "[api]",
        "enabled = false",
        "[pipelines.record]",
        'kind = "python"',
        'target = "benchmarks.soak:record_call"',
    ]
    for i in range(n):
        lines += [
            "[[consumers]]",
            f'consumer_id = "c{i}"',
            f'kafka_topic = "{topic}"',
            'pipeline_name = "record"',
            'connection_id = "soak"',
            'format = "json"',
            f"max_event = {MAX_EVENT}",
            f"max_time = {MAX_TIME}",
        ]
    path.write_text("\n".join(lines) + "\n")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


class Instance:
    """One ``kafkaconsole run --no-ui`` process, started again after each stop."""

    def __init__(self, name: str, config: Path, workdir: Path) -> None:
        self.name = name
        self.config = config
        self.log = workdir / f"{name}.log"
        self.calls = workdir / f"{name}.calls"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_at = 0.0

    def start(self) -> None:
        env = {**os.environ, CALLS_ENV: str(self.calls), "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kafkaconsole", "run", "--no-ui", "--config",
                 str(self.config), "--instance-id", self.name],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            )  # fmt: skip
        self.starts += 1
        self.started_at = time.monotonic()

    def stop(self, how: str) -> None:
        proc = self.proc
        if proc is None:
            return
        proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


async def produce(bootstrap: str, topic: str, rate: int, until: float, produced: list[int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        n = 0
        tick = 0.1
        next_at = time.monotonic()
        while time.monotonic() < until:
            batch = [
                await producer.send(topic, orjson.dumps({"n": n + i, "type": "soak"}))
                for i in range(max(1, int(rate * tick)))
            ]
            await asyncio.gather(*batch)
            n += len(batch)
            produced[0] = n
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        await producer.stop()


async def sample(
    redis: Redis, prefix: str, n: int, instances: list[Instance], produced: int, t0: float
) -> dict[str, Any]:
    mem: Any = await redis.info("memory")
    pipe = redis.pipeline(transaction=False)
    pipe.dbsize()
    for i in range(n):
        k = f"{prefix}:c{i}"
        pipe.xlen(f"{k}:history")
        pipe.xlen(f"{k}:dispatch")
        pipe.hlen(f"{k}:runs")
        pipe.hget(f"{k}:stats", "total")
    res = await pipe.execute()
    consumers = [
        {
            "history": res[1 + 4 * i],
            "dispatch": res[2 + 4 * i],
            "runs": res[3 + 4 * i],
            "counted": int(res[4 + 4 * i] or 0),
        }
        for i in range(n)
    ]
    return {
        "minute": round((time.monotonic() - t0) / 60, 1),
        # an instance's RSS once it has run a minute since its last (re)start
        "rss_mb": {
            i.name: rss_mb(i.pid) if i.pid and time.monotonic() - i.started_at >= 60 else None
            for i in instances
        },
        "redis_used_mb": round(int(mem["used_memory"]) / 2**20, 1),
        "redis_keys": res[0],
        "produced": produced,
        "consumers": consumers,
    }


def _calls(instances: list[Instance]) -> Counter[str]:
    """Every idempotency key the pipeline was called with, and how often."""
    calls: Counter[str] = Counter()
    for inst in instances:
        if inst.calls.exists():
            calls.update(inst.calls.read_text().split())
    return calls


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out.open("a") if args.out else None
    with (
        tempfile.TemporaryDirectory(prefix="kc-soak-") as tmp,
        EmbeddedServices.start(broker="apache") as services,
    ):
        workdir = Path(tmp)
        prefix = f"soak{int(time.time()) % 100000}"
        topic = f"{prefix}-events"
        await create_topics(services.bootstrap_servers, {topic: PARTITIONS})
        config = workdir / "soak.toml"
        write_config(
            config, services.bootstrap_servers, services.redis_url, prefix, topic, args.consumers
        )
        instances = [Instance(f"soak-{k}", config, workdir) for k in range(args.instances)]
        for inst in instances:
            inst.start()
        redis = Redis.from_url(services.redis_url)
        produced = [0]
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        producer = asyncio.create_task(
            produce(services.bootstrap_servers, topic, args.rate, end, produced)
        )
        samples: list[dict[str, Any]] = []
        chaos, next_chaos, next_sample = 0, t0 + args.chaos_every, t0 + args.sample_every
        try:
            while time.monotonic() < end:
                await asyncio.sleep(1)
                now = time.monotonic()
                if producer.done():
                    producer.result()  # a producer that failed ends the run with its error
                if now >= next_chaos:
                    inst = instances[chaos % len(instances)]
                    how = "kill" if chaos % 2 == 0 else "term"
                    inst.stop(how)
                    await asyncio.sleep(3)
                    inst.start()
                    print(f"chaos: {how} {inst.name}, started again", flush=True)
                    chaos += 1
                    next_chaos = now + args.chaos_every
                if now >= next_sample:
                    s = await sample(redis, prefix, args.consumers, instances, produced[0], t0)
                    s["chaos"] = chaos
                    samples.append(s)
                    line = json.dumps(s)
                    print(line, flush=True)
                    if out:
                        out.write(line + "\n")
                        out.flush()
                    next_sample = now + args.sample_every
            await producer
            total = produced[0]
            drained_by = time.monotonic() + 300
            while True:
                s = await sample(redis, prefix, args.consumers, instances, total, t0)
                if all(c["counted"] >= total for c in s["consumers"]):
                    break
                if time.monotonic() > drained_by:
                    break
                await asyncio.sleep(2)
            await asyncio.sleep(2 * MAX_TIME + 1)  # the last windows close by time
            windows: list[int] = []
            ran_by = time.monotonic() + 300
            while time.monotonic() < ran_by:  # ... and their pipelines run
                windows = []
                for i in range(args.consumers):
                    raw = await redis.hgetall(f"{prefix}:c{i}:stats")
                    windows.append(int(raw.get(b"windows", 0)))
                keys = set(_calls(instances))
                if all(
                    all(f"c{i}:{w}" in keys for w in range(1, windows[i] + 1))
                    for i in range(args.consumers)
                ):
                    break
                await asyncio.sleep(2)
            final = await sample(redis, prefix, args.consumers, instances, total, t0)
        finally:
            for inst in instances:
                inst.stop("term")
            await redis.aclose()
            if out:
                out.close()
        calls = _calls(instances)
    per_consumer = []
    for i, c in enumerate(final["consumers"]):
        keys = [k for k in calls if k.startswith(f"c{i}:")]
        per_consumer.append(
            {
                "consumer": f"c{i}",
                "produced": total,
                "counted": c["counted"],
                "exact": c["counted"] == total,
                "windows": windows[i],
                "windows_called": len(keys),
                "called_again": sum(calls[k] - 1 for k in keys),
            }
        )
    warm = [s for s in samples if s["minute"] >= args.warmup] or samples[-1:]
    first, last = warm[0], final

    def spread(key: str) -> dict[str, float]:
        values = [s[key] for s in warm]
        return {"after_warmup": first[key], "end": last[key], "max": max(values)}

    rss = {}
    for name in first["rss_mb"]:
        seen = [s["rss_mb"][name] for s in warm if s["rss_mb"].get(name)]
        rss[name] = {
            "first_after_warmup": seen[0] if seen else None,
            "last": seen[-1] if seen else None,
            "max": max(seen, default=None),
        }
    return {
        "minutes": args.minutes,
        "rate": args.rate,
        "instances": args.instances,
        "consumers": args.consumers,
        "chaos_events": chaos,
        "produced": total,
        "redis_used_mb": spread("redis_used_mb"),
        "redis_keys": spread("redis_keys"),
        "rss_mb": rss,
        "per_consumer": per_consumer,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=180.0)
    parser.add_argument("--rate", type=int, default=3000, help="events a second")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--chaos-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="minutes")
    parser.add_argument("--out", type=Path, help="append each sample (JSON lines) here")
    args = parser.parse_args(argv)
    summary = asyncio.run(run(args))
    print(json.dumps(summary, indent=2))
    exact = all(c["exact"] and c["windows_called"] == c["windows"] for c in summary["per_consumer"])
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
