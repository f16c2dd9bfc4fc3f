"""Lag covers every partition of the topic, also those no instance owns.

A partition of the consumer's group can be owned by something that is not a kafkaconsole
instance (a hand-rolled consumer in the same group, an old deployment during a migration), or
by no one for a while. Its lag is then the broker's end offset (ListOffsets) minus the next
offset Redis holds as counted, and the fleet status shows it without an owner. Tansu answers
ListOffsets "latest" wrongly, so there only the owned partitions' lag (from fetches) is exact.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer

from kafkaconsole.embedded import BrokerKind, EmbeddedServices
from kafkaconsole.engine.fleet import Fleet
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for


async def test_a_partition_owned_by_another_group_member_shows_its_lag(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    broker_kind: BrokerKind,
) -> None:
    await kafka.create_topic(unique, 2)
    cid = f"{unique}-c"
    cfg = make_config(
        services, unique, [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}]
    )
    await kafka.produce(unique, ({"i": i} for i in range(20)), partitions=2)
    async with running_engine(cfg) as engine:
        runner = engine._consumers[cid].runner
        fleet = Fleet(redis_client, cfg)
        foreign = AIOKafkaConsumer(
            bootstrap_servers=services.bootstrap_servers,
            group_id=cfg.consumers[0].effective_group_id,
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        polling: asyncio.Task[None] | None = None
        try:

            async def counted(n: int) -> bool:
                return int(await redis_client.get(f"{unique}:{cid}:events") or 0) == n

            await wait_for(lambda: counted(20), 30, what="20 counted")
            await foreign.start()
            foreign.subscribe([unique])

            async def poll_without_consuming() -> None:
                while True:
                    await foreign.getmany(timeout_ms=200)
                    foreign.pause(*foreign.assignment())

            polling = asyncio.create_task(poll_without_consuming())

            async def split() -> bool:
                return len(runner.assigned) == 1 and len(foreign.assignment()) == 1

            await wait_for(split, 40, what="the group split between the two members")
            (theirs,) = {tp.partition for tp in foreign.assignment()}
            await kafka.produce(unique, ({"i": i} for i in range(20, 30)), partitions=2)
            await wait_for(lambda: counted(25), 30, what="the instance's own 5 counted")

            async def unowned_shown() -> bool:
                status = await fleet.consumer(cid)
                parts = {p["partition"]: p for p in status["partitions"]}
                entry = parts.get(theirs)
                if entry is None or entry["owner"] is not None:
                    return False
                return broker_kind != "apache" or (entry["lag"] == 5 and status["lag"] == 5)

            await wait_for(unowned_shown, 20, what="the unowned partition's lag")
            status = await fleet.consumer(cid)
            entry = next(p for p in status["partitions"] if p["partition"] == theirs)
            assert entry["position"] == 10  # what Redis holds as counted there
            if broker_kind == "apache":
                assert entry["highwater"] == 15
        finally:
            if polling is not None:
                polling.cancel()
                await asyncio.gather(polling, return_exceptions=True)
            await foreign.stop()
