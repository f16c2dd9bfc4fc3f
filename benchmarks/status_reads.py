"""What one fleet status read costs: Redis round trips and commands, and its latency.

A fleet of N consumers (N = 1, 10, 50) is laid out in a fresh Redis the way a running
instance leaves it: one heartbeat naming every consumer with two owned partitions and a third
that no one owns, one closed window each with its run, an alert rule watching every consumer
(firing on half of them). Then the status read that the console's poll, the health monitor,
``status --json`` and every ``/metrics`` scrape make is timed and its Redis traffic counted:

* round trips: requests written to the server (a pipeline is one);
* commands: the server's own count (``INFO commandstats``);
* read CPU: this process's CPU time per read (less sensitive than wall time to other load
  on a shared machine).

Run: ``.venv/bin/python -m benchmarks.status_reads`` (prints a Markdown table).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import orjson
import redis.asyncio as aredis
from redis.asyncio.connection import AbstractConnection

from kafkaconsole.api import ApiMetrics, exposition
from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import start_redis
from kafkaconsole.engine.alerts import alert_key
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.keys import ConsumerKeys, FleetKeys
from kafkaconsole.engine.records import iso_ms
from kafkaconsole.engine.status import (
    ConsumerSnapshot,
    ConsumerState,
    InstanceSnapshot,
    PartitionSnapshot,
)

SIZES = (1, 10, 50)
REPEATS = 200
PREFIX = "bench"

_round_trips = 0
_send = AbstractConnection.send_packed_command


async def _counting_send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
    global _round_trips
    _round_trips += 1
    await _send(self, command, check_health)


def config(redis_url: str, n: int, prefix: str = PREFIX) -> AppConfig:
    return AppConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:9"},
            "redis": {"url": redis_url, "key_prefix": prefix},
            "api": {"enabled": False},
            "pipelines": {"noop": {"kind": "python", "target": "benchmarks.noop:noop"}},
            "monitoring": {"alerts": [{"metric": "lag", "above": 100}]},
            "consumers": [
                {
                    "consumer_id": f"c{i:02d}",
                    "kafka_topic": f"t{i:02d}",
                    "pipeline_name": "noop",
                    "connection_id": "bench",
                    "max_event": 1000,
                    "max_time": 3600,
                }
                for i in range(n)
            ],
        }
    )


class _Instance:
    """What the metrics renderer asks of its engine: this instance's latest snapshot."""

    def __init__(self, snap: InstanceSnapshot) -> None:
        self.snap = snap

    def snapshot(self) -> InstanceSnapshot:
        return self.snap


async def seed(redis: aredis.Redis, cfg: AppConfig) -> InstanceSnapshot:
    prefix = cfg.redis.key_prefix
    now = int(time.time() * 1000)
    consumers = []
    pipe = redis.pipeline(transaction=False)
    for i, c in enumerate(cfg.consumers):
        k = ConsumerKeys(prefix, c.consumer_id)
        pipe.set(k.events, 17)
        pipe.hset(k.window, mapping={"id": 3, "opened_at": now - 5000})
        pipe.hset(k.stats, mapping={"total": 2017, "errors": 1, "windows": 2})
        pipe.hset(k.offsets, mapping={f"{c.kafka_topic}|2": 90})
        pipe.xadd(
            k.history,
            {
                "window_id": 2,
                "reason": "count",
                "count": 1000,
                "opened_at": now - 9000,
                "closed_at": now - 5000,
                "offsets": "[]",
            },
        )
        pipe.hset(k.runs, "2", orjson.dumps({"status": "success"}))
        if i % 2 == 0:
            pipe.set(
                alert_key(prefix, c.consumer_id, cfg.monitoring.alerts[0].rule_id),
                orjson.dumps(
                    {
                        "message": "lag above 100",
                        "since": iso_ms(now - 60_000),
                        "since_ms": now - 60_000,
                        "value": 120,
                    }
                ),
            )
        consumers.append(
            ConsumerSnapshot(
                consumer_id=c.consumer_id,
                kafka_topic=c.kafka_topic,
                pipeline_name=c.pipeline_name,
                state=ConsumerState.RUNNING,
                count=17,
                max_event=c.max_event,
                max_time=c.max_time,
                window_id=3,
                window_opened_at_ms=now - 5000,
                total=2017,
                errors=1,
                rate=12.5,
                lag=3,
                partitions=(
                    PartitionSnapshot(0, 100, 101, 1, oldest_ts_ms=now - 200),
                    PartitionSnapshot(1, 100, 102, 2, oldest_ts_ms=now - 300),
                ),
                topic_end_offsets=((0, 101), (1, 102), (2, 100)),
                verdict="healthy",
                verdict_reason="ok",
                verdict_since_ms=now - 60_000,
            )
        )
    snap = InstanceSnapshot(
        "bench-1", "host", 1, now - 60_000, now, True, True, consumers=tuple(consumers)
    )
    # the heartbeat as an instance writes it (kafkaconsole.engine.fleet.publish_heartbeat)
    pipe.set(FleetKeys(prefix).instance("bench-1"), orjson.dumps(snap.to_json_dict()), ex=600)
    pipe.zadd(f"{prefix}:_fleet:instances", {"bench-1": now})
    await pipe.execute()
    return snap


async def commands(redis: aredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def measure(redis_url: str, n: int) -> dict[str, float]:
    global _round_trips
    redis = aredis.from_url(redis_url)
    await redis.flushall()
    cfg = config(redis_url, n)
    snap = await seed(redis, cfg)
    fleet = Fleet(redis, cfg)
    await fleet.consumers()  # warm the connection
    await redis.config_resetstat()
    before = await commands(redis)  # the INFO itself counts once
    _round_trips = 0
    await fleet.consumers()
    trips = _round_trips
    cmds = await commands(redis) - before - 1
    times = []
    cpu0 = time.process_time()
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        await fleet.consumers()
        times.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (time.process_time() - cpu0) * 1000 / REPEATS
    metrics = ApiMetrics(_Instance(snap))  # type: ignore[arg-type]
    scrape = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        exposition(await metrics.gather(fleet), accept="", accept_encoding="", names=[])
        scrape.append((time.perf_counter() - t0) * 1000)
    await redis.aclose()
    times.sort()
    return {
        "metrics_ms": statistics.median(scrape),
        "cpu_ms": cpu_ms,
        "round_trips": trips,
        "commands": cmds,
        "median_ms": statistics.median(times),
        "p95_ms": times[int(len(times) * 0.95) - 1],
    }


async def main() -> None:
    AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]
    server = start_redis()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        print(
            "| consumers | round trips | commands | read median (ms) | read p95 (ms) "
            "| read CPU (ms) | /metrics render median (ms) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n in SIZES:
            r = await measure(url, n)
            print(
                f"| {n} | {r['round_trips']:.0f} | {r['commands']:.0f} "
                f"| {r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['cpu_ms']:.2f} "
                f"| {r['metrics_ms']:.2f} |"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
