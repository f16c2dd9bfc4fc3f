"""The fault scenarios. Each builds a fresh :class:`Cluster`, injects its fault, and returns the
oracle's verdict with the figures it measured. ``quick`` shrinks volumes and durations."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from kafkaconsole.embedded import ManagedProcess
from tests.faults.harness import CONSUMER, PARTITIONS, REPO, TOPIC, Cluster, Verdict

Scenario = Callable[[Path, bool], Awaitable[Verdict]]


async def _owners(cluster: Cluster) -> dict[str, list[int]]:
    """Which live instance owns which partitions, from the heartbeats in Redis."""
    import orjson

    r = await cluster.redis_client()
    try:
        out: dict[str, list[int]] = {}
        async for key in r.scan_iter(match=f"{cluster.prefix}:_fleet:instance:*"):
            raw = await r.get(key)
            if not raw:
                continue
            snap = orjson.loads(raw)
            for c in snap.get("consumers", []):
                if c["consumer_id"] == CONSUMER:
                    out[snap["instance_id"]] = [p["partition"] for p in c["partitions"]]
        return out
    finally:
        await r.aclose()


async def _wait_owned_by(cluster: Cluster, names: set[str], timeout: float = 60) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        owners = await _owners(cluster)
        parts = sorted(p for n, ps in owners.items() if n in names for p in ps)
        if parts == list(range(PARTITIONS)) and set(owners) <= names:
            return time.monotonic() - t0
        await asyncio.sleep(0.2)
    return float("inf")


async def _run(
    workdir: Path, body: Callable[[Cluster], Awaitable[Verdict]], **cluster_args: object
) -> Verdict:
    cluster = Cluster(workdir, **cluster_args)  # type: ignore[arg-type]
    verdict: Verdict | None = None
    try:
        async with _phase("starting the brokers, Redis and the target", 120):
            await cluster.start()
        verdict = await body(cluster)
        return verdict
    finally:
        if verdict is None or not verdict.ok:
            print(cluster.log_tails(), file=sys.stderr, flush=True)
        await cluster.stop()


# 1 -------------------------------------------------------------------------------------------
async def baseline(workdir: Path, quick: bool) -> Verdict:
    async def body(c: Cluster) -> Verdict:
        c.start_instance("a")
        c.start_instance("b")
        await _wait_owned_by(c, {"a", "b"})
        n = 6_000 if quick else 60_000
        t0 = time.monotonic()
        await c.produce(n, bad_every=1000)
        took = await c.wait_counted()
        elapsed = time.monotonic() - t0
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a", "b"])
        v.figures["events/s (produce+count)"] = round(n / elapsed)
        v.figures["count catch-up after produce (s)"] = round(took, 2)
        return v

    return await _run(workdir, body)


# 2 -------------------------------------------------------------------------------------------
async def rolling_sigterm(workdir: Path, quick: bool) -> Verdict:
    async def body(c: Cluster) -> Verdict:
        c.start_instance("a")
        c.start_instance("b")
        await _wait_owned_by(c, {"a", "b"})
        n = 3_000 if quick else 20_000
        worst = 0.0
        codes = []
        producing = asyncio.create_task(c.produce(n, bad_every=700, rate=n / (8 if quick else 30)))
        for old, new in (("a", "a2"), ("b", "b2")):
            await asyncio.sleep(2 if quick else 6)
            code, took = await asyncio.to_thread(c.stop_instance, old)
            codes.append(code)
            worst = max(worst, took)
            c.start_instance(new)
        await producing
        await c.wait_counted()
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a2", "b2"])
        v.add("clean exits", codes == [0, 0], str(codes))
        v.add("each shutdown under 10 s", worst < 10, f"worst {worst:.1f}s")
        v.add(
            "no duplicate application",
            c.target.log.duplicates() == 0,
            f"{c.target.log.duplicates()} duplicates",
        )
        v.figures["worst shutdown (s)"] = round(worst, 2)
        return v

    return await _run(workdir, body)


# 3 -------------------------------------------------------------------------------------------
async def kill9(workdir: Path, quick: bool) -> Verdict:
    async def body(c: Cluster) -> Verdict:
        c.start_instance("a")
        c.start_instance("b")
        await _wait_owned_by(c, {"a", "b"})
        n = 4_000 if quick else 30_000
        producing = asyncio.create_task(c.produce(n, bad_every=900, rate=n / (6 if quick else 20)))
        await asyncio.sleep(2)
        c.kill("a")
        reassign = await _wait_owned_by(c, {"b"})
        if not quick:
            await asyncio.sleep(3)
            c.kill("b")  # then every instance at once
            c.start_instance("c")
            c.start_instance("d")
        await producing
        await c.wait_counted()
        await c.wait_dispatched()
        v = await c.oracle(healthy=["b"] if quick else ["c", "d"])
        bound = 2 * 6 + 5
        v.add(
            "partitions reassigned within 2 x session timeout + 5 s",
            reassign <= bound,
            f"{reassign:.1f}s",
        )
        v.figures["reassignment (s)"] = round(reassign, 2)
        return v

    return await _run(workdir, body)


# 4 -------------------------------------------------------------------------------------------
async def critical_sections(workdir: Path, quick: bool) -> Verdict:
    async def body(c: Cluster) -> Verdict:
        n = 3_000 if quick else 15_000
        await c.produce(n, bad_every=800)
        c.start_instance("a", env={"KAFKACONSOLE_FAULT": "after_apply:4"})
        code_a = await asyncio.to_thread(c.procs["a"].wait, 60)
        c.start_instance("b", env={"KAFKACONSOLE_FAULT": "after_close:1"})
        code_b = await asyncio.to_thread(c.procs["b"].wait, 60)
        c.start_instance("c")
        await c.wait_counted()
        await c.wait_dispatched()
        v = await c.oracle(healthy=["c"])
        v.add("fault hooks fired", code_a == 86 and code_b == 86, f"{code_a}, {code_b}")
        return v

    return await _run(workdir, body)


# 5 -------------------------------------------------------------------------------------------
async def zombie(workdir: Path, quick: bool) -> Verdict:
    async def body(c: Cluster) -> Verdict:
        c.start_instance("a")
        c.start_instance("b")
        await _wait_owned_by(c, {"a", "b"})
        n = 3_000 if quick else 20_000
        producing = asyncio.create_task(c.produce(n, bad_every=600, rate=n / (10 if quick else 30)))
        await asyncio.sleep(1.5)
        c.kill("a", signal.SIGSTOP)
        await asyncio.sleep(9)  # past the 6 s session timeout: b takes every partition
        c.kill("a", signal.SIGCONT)
        await producing
        await c.wait_counted()
        await c.wait_dispatched()
        return await c.oracle(healthy=["a", "b"])

    return await _run(workdir, body)


# 6 -------------------------------------------------------------------------------------------
async def rebalance_storm(workdir: Path, quick: bool) -> Verdict:
    async def body(c: Cluster) -> Verdict:
        c.start_instance("base")
        await _wait_owned_by(c, {"base"})
        span = 15 if quick else 60
        n = 3_000 if quick else 30_000
        producing = asyncio.create_task(c.produce(n, bad_every=1000, rate=n / span))
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < span:
            name = f"s{i}"
            c.start_instance(name)
            await asyncio.sleep(2.5)
            await asyncio.to_thread(c.stop_instance, name)
            i += 1
        await producing
        await c.wait_counted()
        await c.wait_dispatched()
        v = await c.oracle(healthy=["base"])
        v.figures["instances added and removed"] = i
        return v

    return await _run(workdir, body)


# 7 -------------------------------------------------------------------------------------------
async def failing_pipeline(workdir: Path, quick: bool) -> Verdict:
    """A pipeline slower than max_poll_interval, then failing with 5xx until the breaker opens,
    down for a while (quick: 3 s, full: 60 s), then back. Consumption never waits for it, the
    instance never leaves its group, the breaker opens and closes, held windows run after
    recovery, and the windows whose runs failed are re-dispatched from the CLI and run once."""
    poll_interval_s = 2 if quick else 10

    async def body(c: Cluster) -> Verdict:
        c.start_instance("a")
        await _wait_owned_by(c, {"a"})
        n = 2_000 if quick else 20_000
        # each run outlasts max_poll_interval: a consumer that waited for it would be expelled
        c.target.mode, c.target.delay = "slow", poll_interval_s + 1.5
        await c.produce(300)
        t_count = await c.wait_counted(30)
        await c.wait_dispatched(60)
        c.target.mode = "fail"
        await c.produce(n // 4, bad_every=500)
        counted_during_outage = await c.wait_counted(30)
        await asyncio.sleep(3 if quick else 60)
        opened = c.log_lines("a", "circuit OPEN")
        c.target.mode = "ok"
        await c.produce(n // 2)
        await c.wait_counted()
        closed = await c.wait_log("a", "circuit closed")
        # the runs that failed before the circuit opened wait for an operator: re-dispatch them
        await asyncio.sleep(1)
        failed = sorted(w for w, st in (await c.run_statuses()).items() if st == "failed")
        codes = [
            (await asyncio.to_thread(c.cli, "history", CONSUMER, "--redispatch", str(w))).returncode
            for w in failed
        ]
        recovery = await c.wait_dispatched(120)
        v = await c.oracle(healthy=["a"])
        v.add("consumption never blocks on a slow pipeline", t_count < 10, f"{t_count:.1f}s")
        v.add(
            "consumption continues during an outage",
            counted_during_outage < 10,
            f"{counted_during_outage:.1f}s",
        )
        assignments = len(c.log_lines("a", "assigned partitions"))
        v.add("no leave/rejoin loop", assignments == 1, f"{assignments} assignments")
        v.add("breaker opens", bool(opened), f"{len(opened)} openings")
        v.add("breaker closes", closed)
        v.add(
            "failed windows re-dispatched",
            bool(failed) and codes == [0] * len(failed),
            f"windows {failed}, exit codes {codes}",
        )
        v.add("every window runs after recovery", recovery < 120, f"{recovery:.1f}s")
        v.add(
            "no window accepted twice",
            c.target.log.duplicates() == 0,
            f"{c.target.log.duplicates()} duplicates",
        )
        v.figures["failed runs re-dispatched"] = len(failed)
        v.figures["breaker openings"] = len(opened)
        v.figures["dispatch recovery (s)"] = round(recovery, 2)
        return v

    return await _run(
        workdir,
        body,
        max_event=100,
        retry="{ max_attempts = 3, initial_backoff = 0.1, max_backoff = 0.5 }",
        pipeline_extra=f"breaker_threshold = 3\nbreaker_cooldown = {2 if quick else 10}",
        kafka_extra=f"max_poll_interval_ms = {poll_interval_s * 1000}",
        pipeline_timeout=poll_interval_s + 10,  # slow, not failing: no call times out
    )


# 8 -------------------------------------------------------------------------------------------
async def redis_outage(workdir: Path, quick: bool) -> Verdict:
    async def body(c: Cluster) -> Verdict:
        c.start_instance("a")
        await _wait_owned_by(c, {"a"})
        n = 3_000 if quick else 20_000
        await c.produce(n // 2, bad_every=700)
        await c.wait_counted()
        producing = asyncio.create_task(c.produce(n // 2, rate=n / (8 if quick else 30)))
        cpu0, t0 = c.cpu_seconds("a"), time.monotonic()
        await c.restart_redis(5 if quick else 30)
        cpu = (c.cpu_seconds("a") - cpu0) / (time.monotonic() - t0)
        await producing
        recovered = await c.wait_counted(120)
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a"])
        v.add("resumes by itself", recovered < 120, f"{recovered:.1f}s")
        v.add("no busy loop while Redis is down", cpu < 0.25, f"{cpu:.0%} of a core")
        v.figures["instance CPU while Redis was down (% of a core)"] = round(cpu * 100, 1)
        v.figures["catch-up after Redis returned (s)"] = round(recovered, 2)
        return v

    return await _run(
        workdir, body, redis_args=["--appendonly", "yes", "--appendfsync", "everysec"]
    )


async def _produce_through_redis_kill9(c: Cluster, quick: bool) -> None:
    """Two instances; Redis is killed with SIGKILL half-way through production and started
    again on the same port and directory."""
    c.start_instance("a")
    c.start_instance("b")
    await _wait_owned_by(c, {"a", "b"})
    n = 6_000 if quick else 30_000
    span = 8 if quick else 20
    producing = asyncio.create_task(c.produce(n, bad_every=700, rate=n / span))
    await asyncio.sleep(span / 2)
    await c.restart_redis(1 if quick else 5, kill=True)
    await producing


async def _redis_kill9_exact(workdir: Path, quick: bool, redis_args: list[str]) -> Verdict:
    async def body(c: Cluster) -> Verdict:
        await _produce_through_redis_kill9(c, quick)
        recovered = await c.wait_counted(120)
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a", "b"])
        v.add("resumes by itself", recovered < 120, f"{recovered:.1f}s")
        detected = sum(len(c.log_lines(n, "Redis lost counting state:")) for n in ("a", "b"))
        v.figures["partitions read again (lost writes detected)"] = detected
        v.figures["catch-up after Redis returned (s)"] = round(recovered, 2)
        return v

    return await _run(workdir, body, redis_args=redis_args)


async def redis_kill9_aof(workdir: Path, quick: bool) -> Verdict:
    """kill -9 of Redis under ``appendfsync everysec``. Redis write()s its AOF before it
    answers, so a killed process loses nothing (the OS has the data; everysec bounds the loss
    to a second only when the machine itself fails): the count must be exact."""
    return await _redis_kill9_exact(
        workdir, quick, ["--appendonly", "yes", "--appendfsync", "everysec"]
    )


async def redis_kill9_rdb(workdir: Path, quick: bool) -> Verdict:
    """kill -9 of Redis persisting by RDB snapshot every second: it comes back without what
    was written since its last snapshot (as a machine crash under AOF everysec, or a failover
    to a lagging replica, would). The instances notice their stored offsets went back, read
    those events again, and the count is exact; windows closed again keep their ids, so the
    target sees those keys again and absorbs them."""
    return await _redis_kill9_exact(workdir, quick, ["--save", "1 1"])


_LOST = re.compile(r"partition\(s\) ([\d, ]+): .* from offset\(s\) ([\d, ]+) with window ids")


async def redis_kill9_no_persistence(workdir: Path, quick: bool) -> Verdict:
    """kill -9 of a Redis without persistence: it comes back empty. What it held is gone; the
    guarantee is that this is never silent: every instance reports the loss (log, last error,
    ``kafkaconsole_redis_state_losses_total``), counting goes on exactly from where each
    partition was, and window ids go on from the last one seen (no idempotency key reused)."""

    async def body(c: Cluster) -> Verdict:
        await _produce_through_redis_kill9(c, quick)
        await asyncio.sleep(2)
        resume: dict[int, int] = {}
        reports = 0
        for name in ("a", "b"):
            for line in c.log_lines(name, "Redis lost counting state of"):
                reports += 1
                m = _LOST.search(line)
                if m:
                    parts = [int(x) for x in m.group(1).split(",")]
                    offs = [int(x) for x in m.group(2).split(",")]
                    for p, o in zip(parts, offs, strict=True):
                        resume[p] = min(resume.get(p, o), o)
        expected = sum(1 for p, o in c.valid_at if o >= resume.get(p, 0))
        await c.wait_counted(60, want=expected)
        await c.wait_dispatched()
        v = await c.oracle(
            count_only=False, healthy=["a", "b"], expected=expected, first_window=None
        )
        v.add(
            "the loss is reported for every partition",
            sorted(resume) == list(range(PARTITIONS)),
            f"reported for partitions {sorted(resume)} in {reports} log line(s)",
        )
        v.add(
            "no idempotency key reused",
            c.target.log.duplicates() == 0,
            f"{c.target.log.duplicates()} keys accepted twice",
        )
        v.figures["events lost with Redis's data"] = c.valid - expected
        return v

    return await _run(workdir, body)


async def broker_pause(workdir: Path, quick: bool) -> Verdict:
    """SIGSTOP the broker (it hangs: clients get no error, only silence), SIGCONT it later:
    each instance reports degraded on /ready meanwhile and resumes without a restart."""

    async def body(c: Cluster) -> Verdict:
        c.start_instance("a", api=True)
        c.start_instance("b", api=True)
        await _wait_owned_by(c, {"a", "b"})
        pids = {n: c.procs[n].pid for n in ("a", "b")}
        n = 4_000 if quick else 20_000
        await c.produce(n // 2, bad_every=700)
        assert c.broker is not None
        c.broker.signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        cpu0 = {name: c.cpu_seconds(name) for name in ("a", "b")}
        degraded_after: dict[str, float] = {}
        while time.monotonic() - frozen_at < (10 if quick else 30):
            for name in ("a", "b"):
                if name not in degraded_after:
                    status, body = await c.ready(name)
                    if status == 503 and body.get("status") == "degraded":
                        degraded_after[name] = time.monotonic() - frozen_at
            await asyncio.sleep(0.5)
        cpu = max(c.cpu_seconds(n) - cpu0[n] for n in cpu0) / (time.monotonic() - frozen_at)
        c.broker.signal(signal.SIGCONT)
        woke = time.monotonic()
        ready_after: dict[str, float] = {}
        while time.monotonic() - woke < 90 and len(ready_after) < 2:
            for name in ("a", "b"):
                if name not in ready_after and (await c.ready(name))[0] == 200:
                    ready_after[name] = time.monotonic() - woke
            await asyncio.sleep(0.5)
        await c.produce(n // 2, bad_every=700)
        recovered = await c.wait_counted(120)
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a", "b"])
        v.add(
            "/ready degraded while the broker hangs",
            len(degraded_after) == 2,
            f"degraded after {degraded_after}",
        )
        v.add("/ready again after it wakes", len(ready_after) == 2, f"ready after {ready_after}")
        v.add(
            "resumed without a restart",
            all(c.procs[n].pid == pid and c.procs[n].poll() is None for n, pid in pids.items()),
        )
        v.add("no busy loop while the broker hangs", cpu < 0.25, f"{cpu:.0%} of a core")
        v.figures["instance CPU while the broker hung (% of a core)"] = round(cpu * 100, 1)
        if degraded_after:
            v.figures["degraded reported after (s)"] = round(max(degraded_after.values()), 1)
        if ready_after:
            v.figures["ready again after SIGCONT (s)"] = round(max(ready_after.values()), 1)
        v.figures["catch-up after the broker woke (s)"] = round(recovered, 2)
        return v

    return await _run(workdir, body)


# 12 ------------------------------------------------------------------------------------------
# Three Apache Kafka brokers (replication factor 3, min ISR 2, producer acks=all): a broker
# that dies, restarts or hangs moves its partitions' leadership to another; counting must
# follow it with nothing lost or counted twice. "Resume" is the longest time a partition's
# stored offset (what Redis holds as counted) stood still while events were being produced:
# the fault's cost end to end, the producer's own failover included.


class CountingStalls:
    """Samples each partition's stored offset every 0.1 s while events are produced and
    keeps, per partition, the longest time it did not advance."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.worst: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        last: dict[int, tuple[int, float]] = {}
        while True:
            now = time.monotonic()
            try:
                stored = await self.cluster.stored_offsets()
            except Exception:
                stored = {}
            for partition, offset in stored.items():
                seen = last.get(partition)
                if seen is None or offset != seen[0]:
                    if seen is not None:
                        gap = now - seen[1]
                        self.worst[partition] = max(self.worst.get(partition, 0.0), gap)
                    last[partition] = (offset, now)
            await asyncio.sleep(0.1)

    async def stop(self) -> float:
        """Stop sampling (when production ends); the worst stall of any partition."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return max(self.worst.values(), default=0.0)


@contextlib.asynccontextmanager
async def _phase(name: str, seconds: float) -> AsyncIterator[None]:
    """A phase of a scenario that must end in time: a hang fails the run, naming the phase."""
    print(f"  phase: {name} (at most {seconds:.0f} s)", file=sys.stderr, flush=True)
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise RuntimeError(f"{name} did not end within {seconds:.0f} s") from None


async def _leaders(cluster: Cluster) -> dict[int, list[int]]:
    """Per partition of the topic: [leader node id, *in-sync replica ids]."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([TOPIC])
        return {p["partition"]: [p["leader"], *p["isr"]] for p in topic["partitions"]}
    finally:
        await admin.close()


def _node(cluster: Cluster, node_id: int) -> ManagedProcess:
    return next(n for n in cluster.brokers if n.node_id == node_id)


async def _fully_replicated(cluster: Cluster, timeout: float = 60) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(Exception):
            if all(
                len(ids) - 1 == cluster.broker_count for ids in (await _leaders(cluster)).values()
            ):
                return True
        await asyncio.sleep(0.5)
    return False


#: Seconds each phase of a three-broker scenario may take (``quick`` and full runs). The fault
#: itself is the longest: a broker's death, its report, its restart and the replicas' return.
PHASES_QUICK = {"the fault": 150, "production": 90, "counting and dispatch": 90, "the oracle": 45}
PHASES_FULL = {"the fault": 300, "production": 120, "counting and dispatch": 200, "the oracle": 120}
#: The fast tier's timeout for a three-broker scenario: its start, the wait for the instances
#: to own the partitions, and the quick phases, with a margin.
CLUSTER_TEST_TIMEOUT_S = 120 + 60 + sum(PHASES_QUICK.values()) + 30


async def _cluster_fault(
    workdir: Path,
    quick: bool,
    fault: Callable[[Cluster], Awaitable[dict[str, object]]],
) -> Verdict:
    """Two instances count a steady stream over three brokers while ``fault`` runs."""

    async def body(c: Cluster) -> Verdict:
        c.start_instance("a")
        c.start_instance("b")
        await _wait_owned_by(c, {"a", "b"})
        seconds = 25 if quick else 60
        n = 6_000 if quick else 30_000
        stalls = CountingStalls(c)
        stalls.start()
        producing = asyncio.create_task(c.produce(n, bad_every=1000, rate=n / seconds))
        await asyncio.sleep(3)
        # the phases' budgets add up to less than the fast tier's per-test timeout
        # (CLUSTER_TEST_TIMEOUT_S, with the start's 120 s), so a hang fails naming its phase
        budget = PHASES_QUICK if quick else PHASES_FULL
        async with _phase("the fault", budget["the fault"]):
            notes = await fault(c)
        async with _phase("production", budget["production"]):
            await producing
        worst = await stalls.stop()
        async with _phase("counting and dispatch", budget["counting and dispatch"]):
            took = await c.wait_counted(120)
            await c.wait_dispatched()
        async with _phase("the oracle", budget["the oracle"]):
            v = await c.oracle(healthy=["a", "b"])
        v.add("every broker back", all(node.alive() for node in c.brokers))
        in_sync = notes.pop("in sync again", True)
        v.add("every partition fully replicated again", in_sync is True, str(notes))
        for check in ("reported gone", "reported back"):
            if check in notes:
                said = notes.pop(check)
                v.add(f"instances {check} (log, status)", said is True, str(notes))
        v.add("counted everything after the fault", took != float("inf"), f"{took}")
        v.figures["time to resume counting (s)"] = round(worst, 1)
        v.figures.update({k: val for k, val in notes.items() if isinstance(val, int | float)})
        return v

    return await _run(workdir, body, brokers=3, max_event=500)


async def broker_leader_kill9(workdir: Path, quick: bool) -> Verdict:
    """kill -9 of the leader of partition 0 under load; it restarts 5 s later."""

    async def fault(c: Cluster) -> dict[str, object]:
        victim = _node(c, (await _leaders(c))[0][0])
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(5)
        # every instance says the broker is gone once the controller fenced it (status), then
        # that it is back
        name = f"broker {victim.node_id} (127.0.0.1:{victim.port})"
        gone = await _instances_report_missing(c, name, True, 30)
        await asyncio.to_thread(victim.restart)
        back = await _fully_replicated(c)
        returned = await _instances_report_missing(c, name, False, 30)
        said = all(c.log_lines(i, f"Kafka {name} is gone from the cluster") for i in ("a", "b"))
        return {
            "killed node": f"node {victim.node_id}",
            "in sync again": back,
            "reported gone": gone and said,
            "reported back": returned,
        }

    return await _cluster_fault(workdir, quick, fault)


async def _instances_report_missing(
    cluster: Cluster, broker: str, missing: bool, timeout: float
) -> bool:
    """Wait until every live instance's heartbeat lists ``broker`` as missing (or not)."""
    import orjson

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = await cluster.redis_client()
        try:
            views = []
            async for key in r.scan_iter(match=f"{cluster.prefix}:_fleet:instance:*"):
                raw = await r.get(key)
                if raw:
                    views.append(broker in orjson.loads(raw).get("kafka_missing", []))
        finally:
            await r.aclose()
        if views and all(view == missing for view in views):
            return True
        await asyncio.sleep(0.5)
    return False


async def broker_rolling_restart(workdir: Path, quick: bool) -> Verdict:
    """Each broker in turn: SIGTERM (controlled shutdown), start again, wait until every
    partition is fully replicated, then the next."""

    async def fault(c: Cluster) -> dict[str, object]:
        worst_down = 0.0
        for node in c.brokers:
            t0 = time.monotonic()
            await asyncio.to_thread(node.stop, 30)
            await asyncio.to_thread(node.restart)
            worst_down = max(worst_down, time.monotonic() - t0)
            if not await _fully_replicated(c):
                return {"in sync again": False, "stuck after": f"node {node.node_id}"}
        return {"worst broker restart (s)": round(worst_down, 1)}

    return await _cluster_fault(workdir, quick, fault)


async def broker_freeze(workdir: Path, quick: bool) -> Verdict:
    """SIGSTOP the leader of partition 0 (it hangs: no error reaches a client) for 15 s
    (30 s in full mode), then SIGCONT: the controller fences it and moves its partitions."""

    async def fault(c: Cluster) -> dict[str, object]:
        victim = _node(c, (await _leaders(c))[0][0])
        victim.signal(signal.SIGSTOP)
        await asyncio.sleep(15 if quick else 30)
        victim.signal(signal.SIGCONT)
        back = await _fully_replicated(c, 90)
        return {"frozen node": f"node {victim.node_id}", "in sync again": back}

    return await _cluster_fault(workdir, quick, fault)


# 10 ------------------------------------------------------------------------------------------
async def poison(workdir: Path, quick: bool) -> Verdict:
    async def body(c: Cluster) -> Verdict:
        c.start_instance("a")
        await _wait_owned_by(c, {"a"})
        n = 2_000 if quick else 10_000
        await c.produce(n, bad_every=25)
        await c.wait_counted()
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a"])
        v.figures["bad events"] = len(c.bad)
        return v

    return await _run(workdir, body, max_event=100)


async def dlq_unavailable(workdir: Path, quick: bool) -> Verdict:
    """The DLQ refuses writes (its broker frozen with SIGSTOP): see tests/test_dlq_unavailable.py,
    which needs an in-process consumer whose DLQ producer talks to a second broker."""
    res = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_dlq_unavailable.py",
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
    )
    v = Verdict()
    v.add(
        "stops at the bad record, alerts, never counts past it, resumes after",
        res.returncode == 0,
        res.stdout[-300:],
    )
    return v


# 11 ------------------------------------------------------------------------------------------
async def bad_configs(workdir: Path, quick: bool) -> Verdict:
    corpus = sorted((REPO / "tests" / "data" / "bad_configs").glob("*.toml"))
    v = Verdict()
    leaks = 0
    wrong = 0
    for path in corpus:
        env = {"PATH": "/usr/bin:/bin", "KC_SECRET": "S3CRET-SENTINEL-xyz", "PYTHONPATH": str(REPO)}
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("# env:"):
                key, _, value = line[len("# env:") :].strip().partition("=")
                env[key] = value
        res = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "kafkaconsole", "config", "validate", str(path)],
            capture_output=True,
            text=True,
            cwd=str(REPO),
            env=env,
        )
        out = res.stdout + res.stderr
        if res.returncode != 2 or "Traceback" in out:
            wrong += 1
        if "S3CRET-SENTINEL" in out:
            leaks += 1
    v.add("every bad config rejected with exit 2", wrong == 0, f"{wrong} of {len(corpus)}")
    v.add("no secret printed", leaks == 0, f"{leaks} leaks")
    v.figures["configs"] = len(corpus)
    return v


# 12 ------------------------------------------------------------------------------------------
HANG = b'{"seq": -1, "hang": true}'


async def hung_processor(workdir: Path, quick: bool) -> Verdict:
    """Events on which the processor hangs (8 s, processor_timeout 1.5 s), six in a row and
    then more, while valid events flow: the instance stays live (its API answers at once,
    its heartbeat is fresh), the consumer reports stalled, every hung event is dead-lettered
    with a TimeoutError, and the count is exact."""
    from kafkaconsole.engine.processing import MAX_HUNG_CALLS

    async def body(c: Cluster) -> Verdict:
        c.start_instance("a", api=True)
        await _wait_owned_by(c, {"a"})
        n = 600 if quick else 3_000
        await c.produce(n // 2)
        await c.wait_counted()
        producing = asyncio.create_task(
            c.produce(n // 2, bad_every=n // 12, bad_values=[HANG], rate=n / 10)
        )
        worst_ready = 0.0
        stalled_seen = False
        t0 = time.monotonic()
        while not producing.done() or time.monotonic() - t0 < 6:
            t = time.monotonic()
            status, _ = await c.ready("a")
            worst_ready = max(worst_ready, time.monotonic() - t)
            stalled_seen = stalled_seen or await _verdict_of(c) == "stalled"
            if status == 0:
                break
            await asyncio.sleep(0.5)
        await producing
        took = await c.wait_counted(180)
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a"])
        dlq = await c.dlq_records()
        timeouts = [
            r
            for r in dlq
            if dict(r.headers).get("__connect.errors.exception.class.name") == b"TimeoutError"
        ]
        v.add("every hung event dead-lettered as a TimeoutError", len(timeouts) == len(c.bad))
        v.add("the API answered within 1 s throughout", worst_ready < 1.0, f"{worst_ready:.2f}s")
        v.add("stalled reported while hung", stalled_seen or _stalled_logged(c))
        threads = c.log_lines("a", "hung now, at most")
        v.add(
            f"never more than {MAX_HUNG_CALLS} hung calls",
            all(int(line.split("(")[-1].split()[0]) <= MAX_HUNG_CALLS for line in threads),
        )
        v.figures["hung events"] = len(c.bad)
        v.figures["worst /ready answer while hung (s)"] = round(worst_ready, 2)
        v.figures["count catch-up after the last hang (s)"] = round(took, 1)
        return v

    return await _run(
        workdir,
        body,
        max_event=100,
        processor="tests.faults.processors:validate_or_hang",
        extra_consumer="processor_timeout = 1.5",
    )


async def _verdict_of(c: Cluster) -> str | None:
    res = await asyncio.to_thread(c.cli, "status", "--json")
    if res.returncode != 0:
        return None
    import json

    for consumer in json.loads(res.stdout).get("consumers", []):
        if consumer.get("consumer_id") == "c1":
            return str(consumer.get("verdict"))
    return None


def _stalled_logged(c: Cluster) -> bool:
    return bool(c.log_lines("a", "verdict stalled"))


async def oversize_dlq(workdir: Path, quick: bool) -> Verdict:
    """Events of 2 MiB, larger than the DLQ accepts (default 1 MiB request limit): each is
    dead-lettered cut to fit, with its original size, and no partition is held up."""

    async def body(c: Cluster) -> Verdict:
        c.start_instance("a")
        await _wait_owned_by(c, {"a"})
        n = 1_000 if quick else 5_000
        big = b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        await c.produce(n, bad_every=n // 5, bad_values=[big])
        took = await c.wait_counted(120)
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a"])
        dlq = await c.dlq_records()
        cut = [r for r in dlq if dict(r.headers).get("kafkaconsole.truncated") == b"value"]
        sizes = {dict(r.headers).get("kafkaconsole.original.size") for r in cut}
        v.add(
            "every oversized event dead-lettered cut, with its size",
            len(cut) == len(c.bad) and sizes == {str(len(big)).encode()},
            f"{len(cut)} cut of {len(c.bad)}",
        )
        v.figures["oversized events"] = len(c.bad)
        v.figures["count catch-up (s)"] = round(took, 2)
        return v

    return await _run(workdir, body)


async def late_dependencies(workdir: Path, quick: bool) -> Verdict:
    """The instance starts while Redis is down (containers start in any order): it waits,
    says why on /ready, and counts everything once Redis is up."""

    async def body(c: Cluster) -> Verdict:
        down = 8 if quick else 20
        outage = asyncio.create_task(c.restart_redis(down))
        await asyncio.sleep(1)
        c.start_instance("a", api=True)
        reasons: list[str] = []
        while not outage.done():
            status, ready = await c.ready("a")
            if status == 503 and ready.get("status") == "waiting":
                reasons = list(ready.get("reasons", []))
            await asyncio.sleep(0.5)
        await outage
        up = time.monotonic()
        await _wait_owned_by(c, {"a"})
        started = time.monotonic() - up
        n = 2_000 if quick else 10_000
        await c.produce(n, bad_every=500)
        await c.wait_counted()
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a"])
        v.add(
            "/ready 503 waiting, naming Redis",
            any(r.startswith("waiting for Redis at") for r in reasons),
            str(reasons)[:200],
        )
        v.add("the wait is in the log", bool(c.log_lines("a", "waiting for Redis at")))
        v.figures["counting after Redis came up (s)"] = round(started, 1)
        return v

    return await _run(workdir, body)


async def api_burst(workdir: Path, quick: bool) -> Verdict:
    """Hundreds of unauthenticated GET /metrics at once, repeatedly, while producing: every
    answer is 200 or a quick 503 (busy), counting never sees a Redis error."""
    import aiohttp

    async def body(c: Cluster) -> Verdict:
        c.start_instance("a", api=True)
        await _wait_owned_by(c, {"a"})
        n = 4_000 if quick else 20_000
        producing = asyncio.create_task(c.produce(n, bad_every=1000, rate=n / 10))
        url = f"http://127.0.0.1:{c.api_ports['a']}/metrics"
        statuses: list[int] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def scrape() -> None:
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        statuses.append(resp.status)
                except aiohttp.ClientError:
                    statuses.append(0)

            while not producing.done():
                await asyncio.gather(*(scrape() for _ in range(300)))
        await producing
        await c.wait_counted()
        await c.wait_dispatched()
        v = await c.oracle(healthy=["a"])
        v.add("only 200 or 503 busy", set(statuses) <= {200, 503}, str(sorted(set(statuses))))
        errors = c.log_lines("a", "Too many connections") + c.log_lines("a", "Redis update failed")
        v.add("counting saw no Redis error", not errors, str(errors[:2]))
        v.figures["scrapes"] = len(statuses)
        v.figures["answered 200 (%)"] = round(100 * statuses.count(200) / max(len(statuses), 1))
        return v

    return await _run(workdir, body)


SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "baseline": ("none (2 instances, full speed)", baseline),
    "rolling-sigterm": ("SIGTERM each instance in turn while producing", rolling_sigterm),
    "kill-9": ("SIGKILL one instance, then all, while producing", kill9),
    "critical-sections": ("crash after Redis apply / after window close", critical_sections),
    "zombie": ("SIGSTOP past the session timeout, then SIGCONT", zombie),
    "rebalance-storm": ("add and remove an instance every 2.5 s", rebalance_storm),
    "failing-pipeline": (
        "pipeline slower than max_poll_interval, 5xx until the breaker opens, outage, recovery",
        failing_pipeline,
    ),
    "redis-outage": ("Redis stopped and restarted (AOF everysec)", redis_outage),
    "redis-kill9-aof": ("kill -9 of Redis under AOF everysec, restart", redis_kill9_aof),
    "redis-kill9-rdb": (
        "kill -9 of Redis with RDB snapshots: it restarts without its last writes",
        redis_kill9_rdb,
    ),
    "redis-kill9-empty": (
        "kill -9 of Redis without persistence: it restarts empty",
        redis_kill9_no_persistence,
    ),
    "broker-pause": ("broker SIGSTOP, then SIGCONT", broker_pause),
    "cluster-leader-kill9": (
        "3 brokers: kill -9 of partition 0's leader under load, restart",
        broker_leader_kill9,
    ),
    "cluster-rolling-restart": (
        "3 brokers: each restarted in turn (SIGTERM) under load",
        broker_rolling_restart,
    ),
    "cluster-broker-freeze": (
        "3 brokers: partition 0's leader frozen (SIGSTOP) under load, then SIGCONT",
        broker_freeze,
    ),
    "poison": (
        "invalid JSON, invalid UTF-8, empty, null, wrong types, over the size cap",
        poison,
    ),
    "dlq-unavailable": ("DLQ topic refuses writes", dlq_unavailable),
    "hung-processor": (
        "processor hangs past processor_timeout on events, six in a row and more",
        hung_processor,
    ),
    "oversize-dlq": ("events of 2 MiB, larger than the DLQ accepts", oversize_dlq),
    "late-dependencies": ("instance started while Redis is down", late_dependencies),
    "api-burst": ("300 unauthenticated GET /metrics at once, repeatedly", api_burst),
    "bad-configs": ("the bad config corpus", bad_configs),
}

# The bad config corpus is also checked file by file in tests/test_config.py.
FAST = ["baseline", "kill-9", "poison"]
FAST_CLUSTER = ["cluster-leader-kill9"]  # three Apache Kafka brokers
