"""Total events/s of ``kafkaconsole run --no-ui --workers N`` on one pre-produced backlog.

A broker and a Redis server are started here; one topic of ``--partitions`` partitions gets
``--events`` JSON events of 200 bytes (one in ten a refund, filtered out: the engine-json case
of ``benchmarks/run.py``). For each worker count and repeat, a fresh consumer (its own group
and key prefix, ``max_event`` 100,000, a no-op ``python`` pipeline) is paused in Redis before
the command starts, so the whole backlog waits while the N processes start and join the
group; once every partition has an owner and N instances own some, the consumer is resumed
and the clock runs until Redis holds the expected count. Events/s = counted events / that
time (fetch, decode, filter, the Lua call per batch and the triggers; start-up and joins
excluded). Then exactness: two seconds later the count is checked again (total, every
window full, window ids 1..n with no gap, offsets at the topic's ends), so a double count
shows. Also reported: the CPU seconds the command's processes, Redis and the broker used over
the timed interval, the load average at its start, and the cores busy with anything else
over the interval (all cores' busy time from ``/proc/stat`` minus those three): the machine
may be shared, and N workers can only go as fast as the cores left to them.

    python -m benchmarks.workers [--workers 1,2] [--events 1000000] [--partitions 4]
                                 [--repeats 2] [--broker apache|tansu] [--json F] [--quick]
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
import uuid
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from benchmarks.common import make_backlog
from kafkaconsole.config import load_config
from kafkaconsole.embedded import EmbeddedServices, pick_broker
from kafkaconsole.engine.fleet import Fleet

ROOT = Path(__file__).resolve().parents[1]
MAX_EVENT = 100_000


def write_config(
    path: Path, bootstrap: str, redis_url: str, prefix: str, cid: str, topic: str
) -> None:
    path.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
session_timeout_ms = 6000
heartbeat_interval_ms = 500

[redis]
url = "{redis_url}"
key_prefix = "{prefix}"

[api]
enabled = false

[pipelines.noop]
kind = "python"
target = "benchmarks.noop:noop"

[[consumers]]
consumer_id = "{cid}"
kafka_topic = "{topic}"
pipeline_name = "noop"
connection_id = "bench"
format = "json"
filter = {{ type = "order" }}
max_event = {MAX_EVENT}
max_time = 3600
""")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def tree(pid: int) -> list[int]:
    """``pid`` and its children (the workers)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid, *(int(k) for k in kids)]


def spawn(path: Path, log: Path, workers: int, instance_id: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kafkaconsole",
                "run",
                "--no-ui",
                "--config",
                str(path),
                "--workers",
                str(workers),
                "--instance-id",
                instance_id,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def machine_ticks() -> tuple[int, int]:
    """(idle, total) jiffies of every core since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user..steal


async def redis_cpu(r: Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def counted(r: Redis, prefix: str, cid: str) -> tuple[int, list[int], list[int]]:
    """(closed-window total + open count, window ids in history order, closed counts)."""
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await r.xrange(f"{prefix}:{cid}:history")
    )
    wids = [int(f[b"window_id"]) for _, f in entries]
    counts = [int(f[b"count"]) for _, f in entries]
    return sum(counts) + int(await r.get(f"{prefix}:{cid}:events") or 0), wids, counts


async def measure(
    services: EmbeddedServices,
    r: Redis,
    topic: str,
    ends: dict[int, int],
    workers: int,
    tmp: Path,
    broker_pid: int | None,
) -> dict[str, Any]:
    total = sum(ends.values())
    expected = total - total // 10  # event i is a refund when i % 10 == 9
    tag = uuid.uuid4().hex[:6]
    prefix, cid = f"bw{workers}-{tag}", f"c{workers}{tag}"
    path = tmp / f"{prefix}.toml"
    write_config(path, services.bootstrap_servers, services.redis_url, prefix, cid, topic)
    cfg = load_config(path)
    fleet = Fleet(r, cfg)
    await fleet.pause(cid, by="benchmark")
    log = tmp / f"{prefix}.log"
    proc = spawn(path, log, workers, prefix)
    try:
        t_start = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the command exited with {proc.returncode}: see {log}")
            status = await fleet.consumer_status(cid)
            owners = {p.owner for p in status.partitions}
            if (
                len(status.partitions) == len(ends)
                and None not in owners
                and len(owners) == workers
            ):
                break
            if time.monotonic() - t_start > 120:
                raise RuntimeError(f"no stable group of {workers} after 120 s: see {log}")
            await asyncio.sleep(0.2)
        startup = time.monotonic() - t_start
        await asyncio.sleep(1.0)
        load = (await asyncio.to_thread(Path("/proc/loadavg").read_text)).split()[:3]
        pids = tree(proc.pid)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        rcpu0 = await redis_cpu(r)
        bcpu0 = cpu_seconds(broker_pid) if broker_pid else 0.0
        idle0, all0 = machine_ticks()
        t0 = time.perf_counter()
        await fleet.resume(cid)
        while (await counted(r, prefix, cid))[0] < expected:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"not counted after 600 s: see {log}")
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - t0
        cpu1 = sum(cpu_seconds(p) for p in pids)
        rcpu1 = await redis_cpu(r)
        bcpu1 = cpu_seconds(broker_pid) if broker_pid else 0.0
        idle1, all1 = machine_ticks()
        await asyncio.sleep(2.0)
        got, wids, counts = await counted(r, prefix, cid)
        offsets = cast(dict[bytes, bytes], await r.hgetall(f"{prefix}:{cid}:offsets"))
        at_ends = {int(k.decode().rsplit("|", 1)[1]): int(v) for k, v in offsets.items()}
        exact = (
            got == expected
            and wids == list(range(1, len(wids) + 1))
            and counts == [MAX_EVENT] * (expected // MAX_EVENT)
            and at_ends == ends
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return {
        "workers": workers,
        "events": total,
        "counted": got,
        "exact": exact,
        "seconds": round(seconds, 2),
        "eps": round(total / seconds),
        "startup_s": round(startup, 1),
        "cpu_s_workers": round(cpu1 - cpu0, 1),
        "cpu_s_redis": round(rcpu1 - rcpu0, 1),
        "cpu_s_broker": round(bcpu1 - bcpu0, 1) if broker_pid else None,
        "loadavg": " ".join(load),
        "cores_busy_other": round(
            (1 - (idle1 - idle0) / max(1, all1 - all0)) * (os.cpu_count() or 1)
            - (cpu1 - cpu0 + rcpu1 - rcpu0 + bcpu1 - bcpu0) / seconds,
            2,
        ),
    }


def broker_pid(services: EmbeddedServices) -> int | None:
    """The (first) broker node's process id."""
    return services.broker.proc.pid if services.brokers else None


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    kind, reason = pick_broker(args.broker)
    if reason:
        print(reason, file=sys.stderr)
    counts = [int(w) for w in args.workers.split(",")]
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="kc-workers-") as tmp,
        EmbeddedServices.start(broker=kind) as services,
    ):
        topic = f"backlog-{uuid.uuid4().hex[:6]}"
        ends = await make_backlog(services.bootstrap_servers, topic, args.events, args.partitions)
        r = Redis.from_url(services.redis_url)
        try:
            for rep in range(args.repeats):
                for w in counts:  # interleaved: a change of the machine's load hits every count
                    res = await measure(
                        services, r, topic, ends, w, Path(tmp), broker_pid(services)
                    )
                    res["repeat"] = rep + 1
                    print(json.dumps(res), flush=True)
                    results.append(res)
        finally:
            await r.aclose()
    return results


def table(results: list[dict[str, Any]]) -> str:
    """The results as the Markdown table of BENCHMARKS.md."""
    rows = [
        "| workers | repeat | events | seconds | events/s | exact | CPU s: workers / Redis "
        "/ broker | start-up s | load avg 1/5/15 min | cores busy with other work |",
        "| ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        broker = "n/a" if r["cpu_s_broker"] is None else f"{r['cpu_s_broker']:g}"
        rows.append(
            f"| {r['workers']} | {r['repeat']} | {r['events']:,} | {r['seconds']:g} "
            f"| {r['eps']:,} | {'yes' if r['exact'] else 'NO'} "
            f"| {r['cpu_s_workers']:g} / {r['cpu_s_redis']:g} / {broker} "
            f"| {r['startup_s']:g} | {r['loadavg']} | {r.get('cores_busy_other', 'n/a')} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, comma separated")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--broker", default="apache", help="apache | tansu | auto")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--render", type=Path, help="only print the table of a --json file")
    parser.add_argument("--quick", action="store_true", help="smoke: 20,000 events, once")
    args = parser.parse_args(argv)
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return 0
    if args.quick:
        args.events, args.repeats = 20_000, 1
    results = asyncio.run(main_async(args))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["exact"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
