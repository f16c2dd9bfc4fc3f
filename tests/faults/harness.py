"""The cluster under test and the oracle that judges it.

A :class:`Cluster` owns its own broker and Redis (so a scenario may stop or pause them), a local
:class:`~tests.faults.target.PipelineTarget`, and several headless kafkaconsole processes in one
consumer group. Its producer numbers every event and remembers where each landed, including the
bad events it injects, so :meth:`Cluster.oracle` knows exactly what must have been counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, NodeNotReadyError

from kafkaconsole.embedded import (
    BrokerKind,
    ManagedProcess,
    free_port,
    pick_broker,
    start_kafka,
    start_redis,
    stop_all,
)
from tests.faults.target import PipelineTarget

REPO = Path(__file__).resolve().parents[2]
#: A producer that sends or delivers nothing for this long is replaced (see Cluster.produce).
PRODUCER_STALL_S = 45.0
CONSUMER = "c1"
TOPIC = "events"
PARTITIONS = 3

BAD_VALUES = [
    b"{not json",  # invalid JSON
    b"\xff\xfe\xfa",  # invalid UTF-8
    b"",  # empty
    b"null",  # JSON null: fails the processor (not an object)
    b'{"seq": "x", "kind": "wrong-type"}',  # wrong type: the processor rejects it
    b'{"pad": "' + b"x" * 2000 + b'"}',  # over the size cap (max_event_bytes = 1024)
]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]


def broker_kind() -> BrokerKind:
    """The broker the scenarios run on: ``KAFKACONSOLE_TEST_BROKER`` as for the test suite
    (Apache Kafka when Java and Maven are there, else Tansu)."""
    return pick_broker(os.environ.get("KAFKACONSOLE_TEST_BROKER", "auto"))[0]


class Cluster:
    def __init__(
        self,
        workdir: Path,
        *,
        max_event: int = 500,
        max_time: float = 3600,
        redis_args: list[str] | None = None,
        extra_consumer: str = "",
        retry: str = "{ max_attempts = 3, initial_backoff = 0.05, max_backoff = 0.5 }",
        pipeline_extra: str = "",
        error_handling: str = '{ on_error = "dlq" }',
        kafka_extra: str = "",
        pipeline_timeout: float = 5,
        brokers: int = 1,
        processor: str = "tests.faults.processors:validate",
    ) -> None:
        """``brokers``: 1, or 3 for an Apache Kafka cluster (replication factor 3, min ISR 2,
        the producer writing with acks=all so an acknowledged event survives a broker's death)."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.max_event = max_event
        self.max_time = max_time
        self.redis_args = redis_args or []
        self.extra_consumer = extra_consumer
        self.retry = retry
        self.pipeline_extra = pipeline_extra
        self.error_handling = error_handling
        self.kafka_extra = kafka_extra
        self.pipeline_timeout = pipeline_timeout
        self.broker_count = brokers
        self.brokers: list[ManagedProcess] = []
        self.processor = processor
        self.redis: ManagedProcess | None = None
        self.redis_dir = workdir / "redis"
        self.target = PipelineTarget()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.valid = 0
        self.bad: list[tuple[int, int]] = []  # (partition, offset) of injected bad events
        self.valid_at: list[tuple[int, int]] = []  # (partition, offset) of valid events
        self.api_ports: dict[str, int] = {}
        self.last_offsets: dict[int, int] = {}
        self.seq = 0
        self.producer: AIOKafkaProducer | None = None
        self._bad_sent: set[bytes] = set()  # every bad value produced
        self._read_back_needed = False  # a producer was replaced: the topic says what is there
        self.config_path = workdir / "kafkaconsole.toml"
        self.prefix = "faults"

    # ---- services --------------------------------------------------------------------------
    @property
    def broker(self) -> ManagedProcess:
        return self.brokers[0]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.brokers)

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.port}/0"

    async def start(self) -> None:
        kind = broker_kind() if self.broker_count == 1 else "apache"
        self.brokers = await asyncio.to_thread(
            start_kafka, kind, nodes=self.broker_count, log_dir=self.workdir
        )
        self.redis_dir.mkdir(exist_ok=True)
        self.redis = await asyncio.to_thread(
            start_redis, extra_args=self.redis_args, workdir=self.redis_dir
        )
        await self.target.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            replicas = len(self.brokers)
            await admin.create_topics(
                [
                    # takes events of a few MiB (oversize-dlq); the DLQ keeps the ~1 MiB default
                    NewTopic(
                        TOPIC,
                        PARTITIONS,
                        replicas,
                        topic_configs={"max.message.bytes": str(4 * 1024 * 1024)},
                    ),
                    NewTopic(f"{TOPIC}.dlq", 1, replicas),
                ]
            )
        finally:
            await admin.close()
        await self._start_producer()
        self.write_config()

    async def restart_redis(self, down_for: float, *, kill: bool = False) -> None:
        """Stop Redis, wait, start it again on the same port and directory. SIGTERM lets it
        write its data on the way down; with ``kill`` (SIGKILL) it comes back with only what
        its persistence had on disk."""
        assert self.redis is not None
        port = self.redis.port
        if kill:
            self.redis.proc.kill()
            await asyncio.to_thread(self.redis.proc.wait, 10)
        else:
            await asyncio.to_thread(self.redis.stop)
        await asyncio.sleep(down_for)
        self.redis = await asyncio.to_thread(
            start_redis, port, extra_args=self.redis_args, workdir=self.redis_dir
        )

    def write_config(self) -> None:
        self.config_path.write_text(f"""
[kafka]
bootstrap_servers = "{self.bootstrap}"
session_timeout_ms = 6000
heartbeat_interval_ms = 500
{self.kafka_extra}

[redis]
url = "{self.redis_url}"
key_prefix = "{self.prefix}"
dispatch_lease_ms = 3000

[api]
enabled = false

[pipelines.target]
kind = "http"
url = "{self.target.url}"
timeout = {self.pipeline_timeout}
retry_policy = {self.retry}
{self.pipeline_extra}

[[consumers]]
consumer_id = "{CONSUMER}"
kafka_topic = "{TOPIC}"
pipeline_name = "target"
connection_id = "conn-1"
max_event = {self.max_event}
max_time = {self.max_time}
batch_size = 200
poll_timeout = 0.2
max_event_bytes = 1024
processor = "{self.processor}"
error_handling = {self.error_handling}
{self.extra_consumer}
""")

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        self.procs.clear()
        if self.producer is not None:
            try:  # a producer still retrying a batch would wait forever
                async with asyncio.timeout(30):
                    await self.producer.stop()
            except TimeoutError:
                print("the producer did not stop within 30 s", file=sys.stderr, flush=True)
        await self.target.stop()
        await asyncio.to_thread(stop_all, [*([self.redis] if self.redis else []), *self.brokers])

    def log_tails(self, lines: int = 60) -> str:
        """The last ``lines`` of every instance's and broker's log in the work directory: what a
        failed run prints, so a failure in CI says what the processes were doing."""
        out: list[str] = []
        logs = sorted(self.workdir.glob("*.log")) + sorted(self.workdir.glob("kafka-*/**/*.log"))
        for path in logs:
            try:
                tail = path.read_bytes().decode(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                tail = [f"(unreadable: {exc})"]
            out.append(f"---- {path.relative_to(self.workdir)} (last {len(tail)} lines)")
            out.extend(tail)
        return "\n".join(out)

    # ---- instances -------------------------------------------------------------------------
    def start_instance(
        self, name: str, env: dict[str, str] | None = None, *, api: bool = False
    ) -> None:
        """Start a headless instance; with ``api`` its HTTP API listens on a port of its own."""
        env = dict(env or {})
        if api:
            self.api_ports[name] = free_port()
            env["KAFKACONSOLE_API__ENABLED"] = "true"
            env["KAFKACONSOLE_API__PORT"] = str(self.api_ports[name])
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs[name] = self._popen(name, log, env)

    async def ready(self, name: str) -> tuple[int, dict[str, Any]]:
        """GET /ready of an instance started with ``api``: (HTTP status, body); 0 if down."""
        url = f"http://127.0.0.1:{self.api_ports[name]}/ready"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(url) as resp,
            ):
                return resp.status, await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            return 0, {}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a kafkaconsole command against this cluster's config."""
        return subprocess.run(
            [sys.executable, "-m", "kafkaconsole", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=60,
        )

    async def run_statuses(self) -> dict[int, str]:
        """Pipeline run status per window id, from the runs hash."""
        r = await self.redis_client()
        try:
            raw = await r.hgetall(f"{self.prefix}:{CONSUMER}:runs")
        finally:
            await r.aclose()
        return {int(k): orjson.loads(v)["status"] for k, v in raw.items()}

    async def wait_log(self, name: str, needle: str, timeout: float = 60) -> bool:
        """Wait until an instance's log has a line with ``needle``."""
        for _ in range(int(timeout / 0.2)):
            if self.log_lines(name, needle):
                return True
            await asyncio.sleep(0.2)
        return bool(self.log_lines(name, needle))

    def log_lines(self, name: str, needle: str) -> list[str]:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return []
        return [line for line in path.read_text(errors="replace").splitlines() if needle in line]

    def _popen(self, name: str, log: Any, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kafkaconsole",
                "run",
                "--config",
                str(self.config_path),
                "--no-ui",
                "--instance-id",
                name,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def stop_instance(self, name: str, timeout: float = 20) -> tuple[int, float]:
        """SIGTERM and wait: (exit code, seconds taken)."""
        proc = self.procs.pop(name)
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(5)
        return code, time.monotonic() - t0

    def cpu_seconds(self, name: str) -> float:
        """CPU time (user + system) an instance has used so far, from /proc."""
        pid = self.procs[name].pid
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    # ---- production ------------------------------------------------------------------------
    async def produce(
        self,
        n: int,
        *,
        bad_every: int = 0,
        rate: float | None = None,
        bad_values: list[bytes] | None = None,
    ) -> None:
        """n valid events (+ one bad event after every ``bad_every`` valid ones, taken in
        turn from ``bad_values``, default :data:`BAD_VALUES`).

        A producer that makes no progress for :data:`PRODUCER_STALL_S` (aiokafka's producer
        can keep a batch for a broker that died and never send it again, aio-libs/aiokafka#642)
        is replaced, and what it did not acknowledge is sent again. Its requests may have
        landed though: then what the topic holds is read back (:meth:`_read_back`) and is
        what the oracle expects, so a duplicate is simply one more event to count."""
        pool = bad_values or BAD_VALUES
        self._bad_sent.update(pool)
        planned: list[tuple[bool, bytes, int]] = []  # (bad?, value, partition)
        for i in range(n):
            value = orjson.dumps({"seq": self.seq, "pad": "x" * 150})
            self.seq += 1
            planned.append((False, value, self.seq % PARTITIONS))
            if bad_every and (i + 1) % bad_every == 0:
                planned.append((True, pool[(i // bad_every) % len(pool)], self.seq % PARTITIONS))
        acked: list[Any] = [None] * len(planned)  # RecordMetadata once acknowledged
        futures: dict[int, Any] = {}
        replaced = False
        t0 = time.monotonic()
        valid_sent = 0
        while True:
            try:
                async with asyncio.timeout(PRODUCER_STALL_S) as watchdog:

                    def progress() -> None:
                        watchdog.reschedule(asyncio.get_running_loop().time() + PRODUCER_STALL_S)

                    assert self.producer is not None
                    for k, (is_bad, value, partition) in enumerate(planned):
                        if acked[k] is not None or k in futures:
                            continue
                        futures[k] = await self.producer.send(TOPIC, value, partition=partition)
                        progress()
                        if is_bad:
                            continue
                        valid_sent += 1
                        if rate and valid_sent % 50 == 0:
                            ahead = valid_sent / rate - (time.monotonic() - t0)
                            if ahead > 0:
                                await asyncio.sleep(ahead)
                                progress()
                    await self.producer.flush()
                    for k in sorted(futures):
                        acked[k] = await futures[k]
                        progress()
                break
            except (TimeoutError, KafkaTimeoutError, NodeNotReadyError):
                for k, f in futures.items():
                    if f.done() and not f.cancelled() and f.exception() is None:
                        acked[k] = f.result()
                futures = {}
                print(
                    f"the producer made no progress for {PRODUCER_STALL_S} s: replaced, "
                    f"{sum(a is None for a in acked)} event(s) sent again",
                    file=sys.stderr,
                    flush=True,
                )
                await self._replace_producer()
                replaced = True
        self._read_back_needed |= replaced
        if self._read_back_needed:
            # the expected figures come from the topic itself (settle_expected), read once the
            # scenario waits for the counting (a fault may still be under way now)
            return
        for (is_bad, _, _), md in zip(planned, acked, strict=True):
            self.last_offsets[md.partition] = max(
                self.last_offsets.get(md.partition, -1), md.offset
            )
            if is_bad:
                self.bad.append((md.partition, md.offset))
            else:
                self.valid += 1
                self.valid_at.append((md.partition, md.offset))

    async def _start_producer(self) -> None:
        """Start a producer; a start that hangs (aiokafka's idempotent producer asks for its id
        until a broker answers, without a bound) is given up after :data:`PRODUCER_STALL_S`
        and tried again, so a hang here ends as the calling phase's timeout, naming it."""
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                linger_ms=5,
                acks="all",
                enable_idempotence=len(self.brokers) > 1,
                max_request_size=4 * 1024 * 1024,
            )
            try:
                async with asyncio.timeout(PRODUCER_STALL_S):
                    await producer.start()
            except (TimeoutError, KafkaError) as exc:
                print(
                    f"the producer did not start ({type(exc).__name__}): trying again",
                    file=sys.stderr,
                    flush=True,
                )
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):
                        await producer.stop()
                continue
            self.producer = producer
            return

    async def _replace_producer(self) -> None:
        """Stop the stuck producer's sending for good (nothing it holds is sent after this),
        then start a new one."""
        old = self.producer
        if old is not None:
            old._closed = True  # its stop() would wait for batches it never sends
            with contextlib.suppress(Exception):
                async with asyncio.timeout(60):
                    await old._sender.close()  # ends its requests in flight
                    await old.client.close()
        await self._start_producer()

    async def settle_expected(self) -> None:
        """After a producer was replaced: what the topic holds is what must be counted."""
        if self._read_back_needed:
            async with asyncio.timeout(120):
                await self._read_back()

    async def _read_back(self) -> None:
        """What the topic holds, read from its start: valid and bad events where they are
        (the producer writes no transactions: a partition's offsets are its records)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            valid_at: list[tuple[int, int]] = []
            bad: list[tuple[int, int]] = []
            last = {tp.partition: ends[tp] - 1 for tp in tps if ends[tp] > 0}
            seen = {tp: -1 for tp in tps}
            while any(seen[tp] < ends[tp] - 1 for tp in tps):
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, records in batch.items():
                    for r in records:
                        if r.offset < ends[tp]:
                            where = (tp.partition, r.offset)
                            (bad if r.value in self._bad_sent else valid_at).append(where)
                        seen[tp] = max(seen[tp], r.offset)
        finally:
            await consumer.stop()
        self.valid_at, self.bad, self.last_offsets = valid_at, bad, last
        self.valid = len(valid_at)

    # ---- observation -----------------------------------------------------------------------
    async def redis_client(self) -> aredis.Redis:
        return aredis.from_url(self.redis_url)

    async def counted(self) -> tuple[int, list[int], list[int]]:
        r = await self.redis_client()
        try:
            entries = await r.xrange(f"{self.prefix}:{CONSUMER}:history")
            open_count = int(await r.get(f"{self.prefix}:{CONSUMER}:events") or 0)
        finally:
            await r.aclose()
        wids = [int(f[b"window_id"]) for _, f in entries]
        counts = [int(f[b"count"]) for _, f in entries]
        return sum(counts) + open_count, wids, counts

    async def wait_counted(self, timeout: float = 120, want: int | None = None) -> float:
        """Wait until every valid event (or ``want``) is counted; returns the seconds taken."""
        if want is None:
            await self.settle_expected()
        want = self.valid if want is None else want
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if (await self.counted())[0] >= want:
                    return time.monotonic() - t0
            except Exception:
                pass
            await asyncio.sleep(0.2)
        return float("inf")

    async def wait_dispatched(self, timeout: float = 60) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            _, wids, _ = await self.counted()
            want = {f"{CONSUMER}:{w}" for w in wids}
            if want <= self.target.log.accepted_keys():
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
        return float("inf")

    async def dlq_records(self) -> list[Any]:
        consumer = AIOKafkaConsumer(
            f"{TOPIC}.dlq",
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        out: list[Any] = []
        try:
            idle = 0
            while idle < 3:
                batch = await consumer.getmany(timeout_ms=300)
                got = [r for recs in batch.values() for r in recs]
                out += got
                idle = 0 if got else idle + 1
        finally:
            await consumer.stop()
        return out

    async def stored_offsets(self) -> dict[int, int]:
        r = await self.redis_client()
        try:
            raw = await r.hgetall(f"{self.prefix}:{CONSUMER}:offsets")
        finally:
            await r.aclose()
        return {int(k.decode().rpartition("|")[2]): int(v) for k, v in raw.items()}

    # ---- the oracle ------------------------------------------------------------------------
    async def oracle(
        self,
        *,
        count_only: bool = True,
        healthy: list[str] | None = None,
        expected: int | None = None,
        first_window: int | None = 1,
    ) -> Verdict:
        """``expected``: valid events Redis must hold (default: all produced);
        ``first_window``: the first window id in history (None: any)."""
        v = Verdict()
        await self.settle_expected()
        total, wids, counts = await self.counted()
        want = self.valid if expected is None else expected
        v.add("exact count", total == want, f"counted {total}, expected {want}")
        start = wids[0] if wids and first_window is None else (first_window or 1)
        v.add(
            "window ids contiguous", wids == list(range(start, start + len(wids))), str(wids[:20])
        )
        if count_only:
            expect = self.valid // self.max_event
            v.add(
                "count windows",
                len(wids) == expect and all(c == self.max_event for c in counts),
                f"{len(wids)} windows, expected {expect}",
            )
        keys = {f"{CONSUMER}:{w}" for w in wids}
        missing = keys - self.target.log.accepted_keys()
        v.add("every window accepted by the target", not missing, f"missing {sorted(missing)[:5]}")
        dup = self.target.log.duplicates()
        v.figures["redeliveries absorbed"] = dup
        dlq = await self.dlq_records()
        got = sorted(
            (
                int(dict(r.headers)["__connect.errors.partition"]),
                int(dict(r.headers)["__connect.errors.offset"]),
            )
            for r in dlq
        )
        v.add(
            "DLQ holds every bad event",
            sorted(set(got)) == sorted(self.bad),
            f"{len(set(got))} distinct in DLQ, {len(self.bad)} injected",
        )
        v.figures["DLQ duplicates"] = len(got) - len(set(got))
        headers_ok = all(
            dict(r.headers).get("__connect.errors.topic") == TOPIC.encode()
            and dict(r.headers).get("__connect.errors.exception.message")
            for r in dlq
        )
        v.add("DLQ headers", headers_ok)
        stored = await self.stored_offsets()
        want = {p: o + 1 for p, o in self.last_offsets.items()}
        v.add(
            "lag 0 at the end",
            all(stored.get(p) == o for p, o in want.items()),
            f"stored {stored}, end {want}",
        )
        if healthy is not None:
            alive = set(self.alive())
            v.add("instances healthy", set(healthy) <= alive, f"alive {sorted(alive)}")
        return v
