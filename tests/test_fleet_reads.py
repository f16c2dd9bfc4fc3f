"""A fleet status read costs a constant number of Redis round trips, whatever the number of
consumers or the size of the keyspace, and still reads everything each consumer's status
needs."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.asyncio.connection import Connection

from benchmarks.status_reads import config, seed
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.fleet import Fleet


class CountingConnection(Connection):
    """Counts the requests written to Redis (a pipeline is one)."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


@pytest.mark.parametrize("size", [1, 10, 50])
async def test_a_status_read_takes_four_round_trips(services: EmbeddedServices, size: int) -> None:
    prefix = f"reads-{uuid.uuid4().hex[:8]}"
    cfg = config(services.redis_url, size, prefix)
    redis = aredis.from_url(services.redis_url, connection_class=CountingConnection)
    try:
        await seed(redis, cfg)
        # other data in the same Redis: the read does not walk the keyspace
        noise = redis.pipeline(transaction=False)
        for i in range(2000):
            noise.set(f"{prefix}-other:{i}", i, ex=60)
        await noise.execute()
        fleet = Fleet(redis, cfg)
        await redis.ping()  # the connection is open: its handshake is not counted
        CountingConnection.sent = 0
        status = await fleet.read()
        assert CountingConnection.sent == 4
        assert [c.consumer_id for c in status.consumers] == [c.consumer_id for c in cfg.consumers]
        for n, c in enumerate(status.consumers):
            # the follow-up reads arrived: the last trigger's run, the unowned partition's
            # stored offset (end 100, counted up to 90), the alert firing on every other one
            assert c.last_trigger is not None and c.last_trigger.status == "success"
            [unowned] = [p for p in c.partitions if p.owner is None]
            assert (unowned.partition, unowned.position, unowned.lag) == (2, 90, 10)
            assert c.lag == 1 + 2 + 10
            assert [a.alert for a in c.alerts] == (
                [cfg.monitoring.alerts[0].rule_id] if n % 2 == 0 else []
            )
            assert c.state == "running" and c.instances == ("bench-1",)
        assert [i.instance_id for i in status.instances] == ["bench-1"]
    finally:
        await redis.aclose()
