"""A consumer whose topic does not exist yet (a broker with ``auto.create.topics.enable =
false``, as production clusters often run) says so in one line, in the log and in the fleet
status, keeps the instance running, and starts counting by itself once the topic is created."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import redis.asyncio as aredis

from kafkaconsole.embedded import BrokerKind, EmbeddedServices, ManagedProcess
from kafkaconsole.engine.consumer import missing_topic_message
from kafkaconsole.engine.fleet import Fleet
from tests.engine_support import make_config, start_engine
from tests.helpers import KafkaHelper, wait_for


async def test_a_missing_topic_is_reported_and_joined_once_created(
    services: EmbeddedServices,
    redis_client: aredis.Redis,
    unique: str,
    broker_kind: BrokerKind,
    own_broker: Callable[..., ManagedProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = own_broker(**{"auto.create.topics.enable": "false"})
    bootstrap = f"127.0.0.1:{broker.port}"
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [
            {"consumer_id": cid, "kafka_topic": unique, "max_event": 1000},
            {"consumer_id": f"{cid}-other", "kafka_topic": f"{unique}-other", "max_event": 1000},
        ],
        kafka={"bootstrap_servers": bootstrap},
    )
    kafka = KafkaHelper(bootstrap)
    await kafka.start()
    await kafka.create_topic(f"{unique}-other", 1)
    caplog.set_level(logging.ERROR, logger="kafkaconsole")
    engine = await start_engine(cfg)
    fleet = Fleet(redis_client, cfg)
    runner = engine._consumers[cid].runner
    try:
        message = missing_topic_message(unique)

        async def reported() -> bool:
            status = await fleet.consumer(cid)
            return status["last_error"] == message

        if broker_kind == "apache":
            await wait_for(reported, 20, what="the missing topic in the fleet status")
            lines = [r.getMessage() for r in caplog.records if message in r.getMessage()]
            assert len(lines) == 1, lines  # one line, not one per probe
        # the other consumer of the same instance counts meanwhile
        await kafka.produce(f"{unique}-other", ({"i": i} for i in range(7)), partitions=1)

        async def other_counted() -> bool:
            return int(await redis_client.get(f"{unique}:{cid}-other:events") or 0) == 7

        await wait_for(other_counted, 30, what="the other consumer counting")
        await kafka.create_topic(unique, 2)
        await kafka.produce(unique, ({"i": i} for i in range(40)), partitions=2)

        async def counted() -> bool:
            return int(await redis_client.get(f"{unique}:{cid}:events") or 0) == 40

        await wait_for(counted, 30, what="counting once the topic exists")
        assert runner.last_error is None and not runner.topic_missing

        async def cleared() -> bool:  # once the next heartbeat is published
            status = await fleet.consumer(cid)
            return status["last_error"] is None and status["state"] == "running"

        await wait_for(cleared, 10, what="the error cleared in the fleet status")
    finally:
        await engine.stop()
        await kafka.stop()


async def test_a_missing_topic_of_a_list_is_reported_while_the_others_count(
    services: EmbeddedServices,
    redis_client: aredis.Redis,
    unique: str,
    broker_kind: BrokerKind,
    own_broker: Callable[..., ManagedProcess],
) -> None:
    broker = own_broker(**{"auto.create.topics.enable": "false"})
    bootstrap = f"127.0.0.1:{broker.port}"
    cid = f"{unique}-c"
    here, later = f"{unique}.here", f"{unique}.later"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topics": [here, later], "max_event": 1000}],
        kafka={"bootstrap_servers": bootstrap},
    )
    kafka = KafkaHelper(bootstrap)
    await kafka.start()
    await kafka.create_topic(here, 1)
    await kafka.produce(here, ({"i": i} for i in range(5)), partitions=1)
    engine = await start_engine(cfg)
    runner = engine._consumers[cid].runner
    try:

        async def here_counted() -> bool:
            return int(await redis_client.get(f"{unique}:{cid}:events") or 0) == 5

        await wait_for(here_counted, 30, what="the existing topic counted")
        if broker_kind == "apache":

            async def reported() -> bool:
                return runner.last_error == missing_topic_message(later)

            await wait_for(reported, 20, what="the missing topic reported")
        await kafka.create_topic(later, 1)
        await kafka.produce(later, ({"i": i} for i in range(3)), partitions=1)

        async def all_counted() -> bool:
            return int(await redis_client.get(f"{unique}:{cid}:events") or 0) == 8

        await wait_for(all_counted, 30, what="the topic created later counted")
        assert runner.last_error is None and not runner.topic_missing
    finally:
        await engine.stop()
        await kafka.stop()
