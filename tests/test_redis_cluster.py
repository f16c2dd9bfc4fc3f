"""``[redis] mode = "cluster"`` on a real Redis Cluster: 3 primaries and 3 replicas on loopback.

The oracle is the one of the single-server tests: every event produced is counted exactly
once (closed windows plus the open count), window ids are contiguous, and every window's
pipeline runs once. Here the keys are tagged (``<prefix>:{<consumer_id>}:...``), spread over
several primaries; while events flow a consumer's slot migrates and a primary is killed
(``kill -9``); at the end a whole shard is lost and comes back empty.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from kafkaconsole.api import start_api
from kafkaconsole.config.models import AppConfig, RedisConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.audit import AuditLog
from kafkaconsole.engine.clients import (
    RedisAccessError,
    RedisCapacityError,
    check_redis_access,
    check_redis_capacity,
    redis_acl_line,
    redis_client,
)
from kafkaconsole.engine.dispatch import TriggerDispatcher
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.keys import ConsumerKeys, FleetKeys
from kafkaconsole.engine.records import RunStatus
from kafkaconsole.engine.redis_cluster import ClusterAccessDenied, ClusterUnavailable, slot_of
from kafkaconsole.engine.state_format import StateFormatError, ensure_state_format
from kafkaconsole.engine.status import ConsumerState
from tests import pipeline_targets
from tests.cluster_support import LocalCluster, start_cluster
from tests.engine_support import make_config, running_engine, start_engine
from tests.helpers import REDIS_TOPOLOGY_ONCE, KafkaHelper, cli, wait_for

pytestmark = REDIS_TOPOLOGY_ONCE


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    started = start_cluster(primaries=3, replicas=1)
    try:
        yield started
    finally:
        started.stop()


def cluster_section(cluster: LocalCluster) -> dict[str, Any]:
    return {"url": cluster.url, "mode": "cluster", "nodes": cluster.startup_nodes}


@pytest.fixture
async def cr(cluster: LocalCluster) -> AsyncIterator[Redis]:
    """A cluster client as the CLI builds it."""
    client = redis_client(RedisConfig(**cluster_section(cluster)))
    try:
        yield client
    finally:
        await client.aclose()


def config(
    services: EmbeddedServices, cluster: LocalCluster, prefix: str, consumers: list[dict[str, Any]]
) -> AppConfig:
    return make_config(services, prefix, consumers, redis=cluster_section(cluster))


async def busy_consumer(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    cluster: LocalCluster,
    prefix: str,
    cid: str,
    max_event: int,
) -> tuple[AppConfig, int]:
    """A config of one consumer of a new 3-partition topic ``cid`` reading small batches, and
    the slot of its keys."""
    await kafka.create_topic(cid, 3)
    cfg = config(
        services,
        cluster,
        prefix,
        [{"consumer_id": cid, "kafka_topic": cid, "max_event": max_event, "batch_size": 50}],
    )
    return cfg, slot_of(ConsumerKeys(prefix, cid, True).events)


async def counted(r: Redis, prefix: str, cid: str) -> tuple[int, list[int], list[int]]:
    """(closed-window total + open count, window ids in history order, closed counts)."""
    keys = ConsumerKeys(prefix, cid, tagged=True)
    entries: Any = await r.xrange(keys.history)
    wids = [int(f[b"window_id"]) for _, f in entries]
    counts = [int(f[b"count"]) for _, f in entries]
    return sum(counts) + int(await r.get(keys.events) or 0), wids, counts


async def settle(r: Redis, prefix: str, cid: str, expected: int, timeout: float = 60) -> None:
    async def done() -> bool:
        return (await counted(r, prefix, cid))[0] >= expected

    await wait_for(done, timeout, interval=0.1, what=f"{expected} events of {cid} counted")


def ids_on_primaries(cluster: LocalCluster, base: str, wanted: int) -> list[str]:
    """Consumer ids ``<base>-<n>`` whose slots lie on at least two primaries (``wanted`` ids)."""
    for start in range(1000):
        ids = [f"{base}-{n}" for n in range(start, start + wanted)]
        ports = {cluster.port_of_slot(slot_of(ConsumerKeys("x", c, True).events)) for c in ids}
        if len(ports) >= 2:
            return ids
    raise AssertionError("no ids spread over two primaries")


def windows_called(cid: str) -> list[int]:
    return [c["window_id"] for c in pipeline_targets.calls_for(cid)]


async def test_two_engines_count_exactly_with_tagged_keys_on_several_primaries(
    services: EmbeddedServices, kafka: KafkaHelper, cluster: LocalCluster, cr: Redis, unique: str
) -> None:
    cids = ids_on_primaries(cluster, unique, 3)
    per, max_event = 1500, 300
    for cid in cids:
        await kafka.create_topic(cid, 3)
    cfg = config(
        services,
        cluster,
        unique,
        [
            {"consumer_id": c, "kafka_topic": c, "max_event": max_event, "batch_size": 200}
            for c in cids
        ],
    )
    async with running_engine(cfg) as one, running_engine(cfg) as two:
        for cid in cids:
            await kafka.produce(cid, ({"i": i} for i in range(per)))
        for cid in cids:
            await settle(cr, unique, cid, per)

        async def all_run() -> bool:
            return all(len(windows_called(c)) >= per // max_event for c in cids)

        await wait_for(all_run, 30, what="every window's pipeline run")
        await asyncio.sleep(0.5)  # a second run of a window would show now
        for cid in cids:
            total, wids, counts = await counted(cr, unique, cid)
            assert total == per
            assert wids == list(range(1, per // max_event + 1))
            assert counts == [max_event] * (per // max_event)
            assert sorted(windows_called(cid)) == wids  # each window's pipeline once
            # the documented tagged names; nothing under the plain ones
            keys = ConsumerKeys(unique, cid, tagged=True)
            assert keys.events == f"{unique}:{{{cid}}}:events"
            assert await cr.exists(keys.offsets, keys.stats, keys.window, keys.runs) == 4
            assert await cr.exists(ConsumerKeys(unique, cid).events) == 0
        # both instances counted (one group), their heartbeats under {_fleet}
        snaps = [await e.refresh_snapshot() for e in (one, two)]
        owned = [sum(len(c.partitions) for c in s.consumers) for s in snaps]
        assert all(n > 0 for n in owned), owned
        fleet = FleetKeys(unique, tagged=True)
        assert await cr.get(fleet.format) == b"1"
        members = {m.decode() for m in await cr.zrange(fleet.instances, 0, -1)}
        assert {one.instance_id, two.instance_id} <= members
    ports = {cluster.port_of_slot(slot_of(ConsumerKeys(unique, c, True).events)) for c in cids}
    assert len(ports) >= 2


async def test_control_status_and_runtime_consumers_on_the_cluster(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    cluster: LocalCluster,
    cr: Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    cid, rt = f"{unique}-c", f"{unique}-rt"
    await kafka.create_topic(cid, 1)
    await kafka.create_topic(rt, 1)
    cfg = config(
        services, cluster, unique, [{"consumer_id": cid, "kafka_topic": cid, "max_event": 1000}]
    )
    path = tmp_path / "kc.toml"
    path.write_text(_toml(cfg))
    events = ConsumerKeys(unique, cid, tagged=True).events

    async def count_is(n: int) -> bool:
        return int(await cr.get(events) or 0) == n

    async def state_is(engine: Engine, state: ConsumerState) -> bool:
        c = (await engine.refresh_snapshot()).consumer(cid)
        return c is not None and c.state == state

    async with running_engine(cfg) as engine:
        await kafka.produce(cid, ({"i": i} for i in range(10)), partitions=1)
        await wait_for(lambda: count_is(10), 15, what="10 counted")
        # the CLI's steering goes through the cluster
        paused = await cli("pause", cid, "--config", str(path))
        assert paused.exit_code == 0, paused.stderr
        await wait_for(lambda: state_is(engine, ConsumerState.PAUSED), 5, what="paused")
        await kafka.produce(cid, ({"i": i} for i in range(5)), partitions=1)
        await asyncio.sleep(1.0)
        assert await count_is(10)
        resumed = await cli("resume", cid, "--config", str(path))
        assert resumed.exit_code == 0, resumed.stderr
        await wait_for(lambda: count_is(15), 10, what="counting resumed")
        reset = await cli("reset", cid, "--config", str(path))
        assert reset.exit_code == 0, (reset.stdout, reset.stderr)
        assert await count_is(0)
        await kafka.produce(cid, ({"i": i} for i in range(3)), partitions=1)
        await wait_for(lambda: count_is(3), 10, what="3 counted")
        closed = await engine.force_trigger(cid)
        assert closed.closed and closed.count == 3
        sought = await engine.seek(cid, "earliest", window="discard", via="test")
        assert sought.applied and sought.reread == 18
        await wait_for(lambda: count_is(18), 15, what="18 read again after the seek")
        status = await cli("status", "--config", str(path), "--json")
        assert status.exit_code == 0, status.stderr
        data = json.loads(status.stdout)
        assert [c["consumer_id"] for c in data["consumers"]] == [cid]
        assert [i["instance_id"] for i in data["instances"]] == [engine.instance_id]
        # a consumer defined at runtime starts on the live engine and counts in its own slot
        spec = tmp_path / "rt.toml"
        spec.write_text(
            f'consumer_id = "{rt}"\nkafka_topic = "{rt}"\npipeline_name = "record"\n'
            'connection_id = "c"\nmax_event = 100\nmax_time = 3600\npoll_timeout = 0.2\n'
        )
        added = await cli("consumer", "add", "--file", str(spec), "--config", str(path), "--json")
        assert added.exit_code == 0, (added.stdout, added.stderr)
        assert [r["status"] for r in json.loads(added.stdout)["instances"]] == ["applied"]
        await kafka.produce(rt, ({"i": i} for i in range(7)), partitions=1)
        rt_events = ConsumerKeys(unique, rt, tagged=True).events
        await wait_for(
            lambda: _equals(cr.get(rt_events), b"7"), 15, what="the runtime consumer counting"
        )
        audit = await AuditLog(cr, unique, tagged=True).entries(10)
        actions = [e["action"] for e in audit]
        assert {"pause", "resume", "reset", "trigger", "consumer-add"} <= set(actions)


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


async def _at_least(value: Any, n: int) -> bool:
    return int(await value or 0) >= n


def _toml(cfg: AppConfig) -> str:
    """The config of ``cfg`` as a file (only what these tests set)."""
    r = cfg.redis
    lines = [
        "[kafka]",
        f'bootstrap_servers = "{cfg.kafka.bootstrap_servers}"',
        "session_timeout_ms = 6000",
        "heartbeat_interval_ms = 500",
        "[redis]",
        f'url = "{r.url}"',
        f'mode = "{r.mode}"',
        f"nodes = {json.dumps([str(n) for n in r.nodes])}",
        f'key_prefix = "{r.key_prefix}"',
        "dispatch_lease_ms = 1500",
        "[api]",
        "enabled = false",
        "[pipelines.record]",
        'kind = "python"',
        'target = "tests.pipeline_targets:record"',
    ]
    for c in cfg.consumers:
        lines += [
            "[[consumers]]",
            f'consumer_id = "{c.consumer_id}"',
            f'kafka_topic = "{c.kafka_topic}"',
            'pipeline_name = "record"',
            'connection_id = "c"',
            f"max_event = {c.max_event}",
            "max_time = 3600",
            "poll_timeout = 0.2",
        ]
    return "\n".join(lines) + "\n"


async def test_state_of_the_other_layout_is_refused(cr: Redis, unique: str) -> None:
    await cr.set(FleetKeys(unique).format, 1)  # a fleet in the plain layout wrote here
    with pytest.raises(StateFormatError, match=r"plain key layout.*Nothing was changed"):
        await ensure_state_format(cr, unique, tagged=True)
    assert await cr.exists(FleetKeys(unique, tagged=True).format) == 0


async def test_unreachable_cluster_is_one_line(unique: str) -> None:
    client = redis_client(RedisConfig(url="redis://127.0.0.1:1/0", mode="cluster"))
    try:
        with pytest.raises(ClusterUnavailable, match=r"^Redis Cluster: .*cannot be connected"):
            await client.get("x")
    finally:
        await client.aclose()


def test_tagged_names_keep_one_consumer_in_one_slot() -> None:
    plain, tagged = ConsumerKeys("consumer", "orders"), ConsumerKeys("consumer", "orders", True)
    assert plain.events == "consumer:orders:events"  # the seed's name, unchanged
    assert tagged.events == "consumer:{orders}:events"
    names = [*tagged.counting_keys(), tagged.runs, tagged.dispatch_lease, tagged.breaker]
    names += [tagged.lifecycle, tagged.dlq_refused, tagged.alert("stalled")]
    assert {slot_of(n) for n in names} == {slot_of("{orders}")}
    fleet = FleetKeys("consumer", True)
    names = [fleet.format, fleet.instances, fleet.instance("a"), fleet.control_channel]
    names += [fleet.runtime_consumers, fleet.audit, fleet.reload("r"), fleet.probe("p")]
    assert all(n.startswith("consumer:{_fleet}:") for n in names)
    assert FleetKeys("consumer").format == "consumer:_fleet:format"


async def test_start_up_checks_run_on_every_primary(cluster: LocalCluster, unique: str) -> None:
    """ACLs and maxclients are per node: a node that refuses is named."""
    user, password = f"kc{unique}", "pw-" + unique
    line = redis_acl_line(unique, user).replace(">PASSWORD", f">{password}").split()[1:]
    short = cluster.primaries()[-1]  # this node's grant lacks XLEN
    cfg = RedisConfig(**cluster_section(cluster), username=user, password=password)

    def on_every_node(*args: str, skip: str = "") -> None:
        for port in cluster.alive_ports():
            node = sync_redis.Redis(port=port)
            try:
                node.execute_command(*(a for a in args if not (port == short and a == skip)))
            finally:
                node.close()

    on_every_node("ACL", *line, skip="+xlen")
    try:
        client = redis_client(cfg)
        try:
            with pytest.raises(RedisAccessError, match=rf"user on 127\.0\.0\.1:{short} .*XLEN"):
                await check_redis_access(client, unique)
            with pytest.raises(RedisCapacityError, match=r"Redis Cluster node 127\.0\.0\.1:\d+"):
                await check_redis_capacity(client, 1_000_000)
        finally:
            await client.aclose()
        on_every_node("ACL", "SETUSER", user, "-command")  # the client cannot route without
        client = redis_client(cfg)
        try:
            with pytest.raises(ClusterAccessDenied, match="may not read the cluster's layout"):
                await client.ping()
        finally:
            await client.aclose()
    finally:
        on_every_node("ACL", "DELUSER", user)


async def test_slot_moved_while_counting_is_followed_exactly(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    cluster: LocalCluster,
    cr: Redis,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The consumer's slot migrates to another primary while events flow (ASK, TRYAGAIN, then
    MOVED): redis-py follows, counting goes on, nothing lost or counted twice."""
    cid, max_event = f"{unique}-m", 200
    cfg, slot = await busy_consumer(services, kafka, cluster, unique, cid, max_event)
    source = cluster.port_of_slot(slot)
    target = next(p for p in cluster.primaries() if p != source)
    caplog.set_level(logging.WARNING)
    async with running_engine(cfg) as engine:
        produced = await kafka.produce(cid, ({"i": i} for i in range(600)))
        await settle(cr, unique, cid, 300)
        flowing = asyncio.create_task(kafka.produce(cid, ({"i": i} for i in range(600, 1400))))
        moved = await asyncio.to_thread(cluster.migrate_slot, slot, target)
        produced += await flowing
        assert moved >= 5  # the consumer's keys went with their slot
        assert cluster.port_of_slot(slot) == target
        await settle(cr, unique, cid, produced)

        async def all_run() -> bool:
            return len(set(windows_called(cid))) >= produced // max_event

        await wait_for(all_run, 30, what="every window's pipeline run")
        await asyncio.sleep(0.5)
        total, wids, counts = await counted(cr, unique, cid)
        assert total == produced == 1400
        assert wids == list(range(1, produced // max_event + 1))
        assert counts == [max_event] * (produced // max_event)
        assert sorted(windows_called(cid)) == wids  # each window's pipeline once
        c = (await engine.refresh_snapshot()).consumer(cid)
        assert c is not None and c.state == ConsumerState.RUNNING
        assert c.redis_state_losses == 0  # a migration loses nothing
        told = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not [line for line in told if "(restarting it)" in line], told


async def test_primary_killed_while_counting_replica_takes_over_exactly(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    cluster: LocalCluster,
    cr: Redis,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cid, max_event = f"{unique}-f", 200
    cfg, slot = await busy_consumer(services, kafka, cluster, unique, cid, max_event)
    victim = cluster.port_of_slot(slot)
    engine = await start_engine(cfg)
    redis_ok: list[bool] = []  # as each snapshot said (/ready reads it)
    engine.subscribe(lambda snap: redis_ok.append(snap.redis_ok))
    caplog.set_level(logging.WARNING)
    try:
        produced = 0

        async def produce(n: int) -> None:
            nonlocal produced
            produced += await kafka.produce(cid, ({"i": produced + i} for i in range(n)))

        for _ in range(5):  # events flowing while the primary dies
            await produce(200)
        await settle(cr, unique, cid, 600)
        cluster.nodes[victim].kill()
        await produce(400)
        promoted = await asyncio.to_thread(cluster.wait_failover, slot, victim)
        assert promoted != victim
        # redis-py may wait the failover out (then no warning at all); never a crashed task
        told = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not [line for line in told if "(restarting it)" in line], told
        await produce(600)
        assert produced == 2000
        await settle(cr, unique, cid, produced, timeout=60)

        async def all_run() -> bool:
            return len(set(windows_called(cid))) >= produced // max_event

        await wait_for(all_run, 30, what="every window's pipeline run")
        await asyncio.sleep(0.5)
        total, wids, counts = await counted(cr, unique, cid)
        assert total == produced
        assert wids == list(range(1, produced // max_event + 1))
        assert counts == [max_event] * (produced // max_event)
        assert set(windows_called(cid)) == set(wids)
        c = (await engine.refresh_snapshot()).consumer(cid)
        assert c is not None and c.state == ConsumerState.RUNNING
        # a replica that lagged lost the last applies: detected and counted again (the
        # totals above hold either way); one that was in sync lost nothing
        if c.redis_state_losses:
            assert c.last_error is not None and "Redis lost counting state" in c.last_error
        assert redis_ok[-1] is True
        print(f"failover: redis_state_losses={c.redis_state_losses}")
    finally:
        await engine.stop()
        # back as a replica of the new primary (its nodes.conf is kept)
        await asyncio.to_thread(cluster.nodes[victim].restart)


async def test_a_lost_shard_degrades_ready_then_counting_resumes(
    services: EmbeddedServices, kafka: KafkaHelper, cluster: LocalCluster, cr: Redis, unique: str
) -> None:
    """A primary and its replica both killed: the slot has no server. ``/ready`` says degraded
    with the reason, nothing crashes; the nodes come back empty (no persistence), the loss is
    reported and counting goes on. (Last in this file: it leaves the cluster as it found it.)"""
    cid = f"{unique}-s"
    await kafka.create_topic(cid, 1)
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": cid, "max_event": 1000}],
        redis=cluster_section(cluster),
        api={"enabled": True, "port": 0},
    )
    slot = slot_of(ConsumerKeys(unique, cid, True).events)
    primary = cluster.port_of_slot(slot)
    shard = [primary, *cluster.replicas_of(primary)]
    assert len(shard) == 2
    events = ConsumerKeys(unique, cid, tagged=True).events
    async with running_engine(cfg) as engine:
        api = await start_api(engine)
        try:
            await kafka.produce(cid, ({"i": i} for i in range(30)), partitions=1)
            await wait_for(lambda: _equals(cr.get(events), b"30"), 15, what="30 counted")
            for port in shard:
                cluster.nodes[port].kill()
            ready: dict[str, Any] = {}

            async def degraded() -> bool:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{api.url}/ready") as r,
                ):
                    ready.update(await r.json(), code=r.status)
                return ready["status"] == "degraded"

            try:
                await wait_for(degraded, 30, interval=0.3, what="/ready degraded")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {ready}") from None
            assert ready["code"] == 503 and not ready["redis"]
            assert any(r.startswith("Redis unreachable") for r in ready["reasons"]), ready
            for port in shard:  # back, empty, with the slots their nodes.conf names
                await asyncio.to_thread(cluster.nodes[port].restart)
            await asyncio.to_thread(cluster.wait_ok, 30)
            await asyncio.to_thread(cluster.wait_until_in_sync, 30)
            await kafka.produce(cid, ({"i": i} for i in range(5)), partitions=1)

            async def resumed() -> bool:
                c = (await engine.refresh_snapshot()).consumer(cid)
                return c is not None and c.redis_state_losses >= 1 and await degraded() is False

            await wait_for(resumed, 60, interval=0.5, what="counting resumed, the loss reported")
            c = (await engine.refresh_snapshot()).consumer(cid)
            assert c is not None and c.last_error is not None
            assert "Redis lost counting state" in c.last_error
            assert c.state == ConsumerState.RUNNING
            # read again from Kafka's committed offsets: at least the 5 new events counted
            await wait_for(lambda: _at_least(cr.get(events), 5), 30, what="the new events counted")
        finally:
            await api()


async def test_a_busy_dispatcher_reads_and_records_on_the_consumers_slot(
    cr: Redis, unique: str
) -> None:
    """The dispatcher's pipelined read (the backlog's length with XREADGROUP) and its scripts
    (the prior-run check with ``running``; the status with XACK + XDEL) go to the node of the
    consumer's slot: windows closing one at a time, past the first look for a stopped
    instance's entries, each run once and acknowledged, on a Redis Cluster."""
    from tests.test_dispatch import FAST, ScriptedRemote, add_windows, consumer

    keys = ConsumerKeys(unique, f"{unique}-c", tagged=True)
    pipeline = ScriptedRemote()
    pipeline.auto_finish = RunStatus.SUCCEEDED
    dispatcher = TriggerDispatcher(
        cr, keys, consumer(keys.consumer_id), pipeline, FAST, "inst-1", lease_ms=600
    )
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        for wid in range(1, 6):
            await add_windows(cr, keys, range(wid, wid + 1))
            dispatcher.wake()

            async def ran(wid: int = wid) -> bool:
                raw = await cr.hget(keys.runs, str(wid))
                return raw is not None and b'"succeeded"' in raw

            await wait_for(ran, 10, what=f"window {wid} succeeded")
        assert pipeline.calls == [1, 2, 3, 4, 5]
        assert await cr.xlen(keys.dispatch) == 0
    finally:
        stop.set()
        dispatcher.wake()
        await task
