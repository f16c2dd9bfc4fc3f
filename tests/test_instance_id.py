"""Instance ids: every engine of a process gets a default id of its own, and an id a running
instance uses is refused at start (two instances of one id would hold each other's dispatch
leases and both run the same windows' pipelines); a heartbeat a crash left is waited out."""

from __future__ import annotations

import os
import socket
import time

import pytest
import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.engine import HEARTBEAT_TTL_S, Engine, InstanceIdInUse, default_instance_id
from kafkaconsole.engine.keys import FleetKeys
from tests.engine_support import make_config


async def test_default_ids_differ_within_a_process(services: EmbeddedServices) -> None:
    base = f"{socket.gethostname()}-{os.getpid()}"
    assert default_instance_id() == base
    assert default_instance_id([base]) == f"{base}-2"
    assert default_instance_id([base, f"{base}-2", "other"]) == f"{base}-3"
    cfg = make_config(services, "ids", [{"consumer_id": "c", "kafka_topic": "t", "max_event": 5}])
    one, two = Engine(cfg), Engine(cfg)
    assert one.instance_id != two.instance_id
    assert {one.instance_id, two.instance_id} <= {base} | {f"{base}-{n}" for n in range(2, 99)}


async def test_an_id_in_use_is_refused_and_a_crashed_ones_heartbeat_waited_out(
    services: EmbeddedServices, redis_client: aredis.Redis, unique: str
) -> None:
    cfg = make_config(
        services, unique, [{"consumer_id": f"{unique}-c", "kafka_topic": unique, "max_event": 5}]
    )
    first = Engine(cfg, instance_id="dup", lease_ms=1500, snapshot_interval=0.2)
    await first.start()
    try:
        second = Engine(cfg, instance_id="dup", lease_ms=1500, snapshot_interval=0.2)
        t0 = time.monotonic()
        with pytest.raises(InstanceIdInUse, match="instance id 'dup' is in use"):
            await second.start()
        assert time.monotonic() - t0 < HEARTBEAT_TTL_S + 2
        await second.stop(timeout=2)
    finally:
        await first.stop()
    # a crash left a heartbeat under "gone" (nothing renews it): started once it expired
    key = FleetKeys(unique).instance("gone")
    await redis_client.set(key, b"{}", px=1500)
    third = Engine(cfg, instance_id="gone", lease_ms=1500, snapshot_interval=0.2)
    t0 = time.monotonic()
    await third.start()
    try:
        assert 0.5 < time.monotonic() - t0 < HEARTBEAT_TTL_S + 2
    finally:
        await third.stop()
