"""The consumer group against a coordinator with production settings.

The session broker starts groups at once (``group.initial.rebalance.delay.ms = 0``); brokers
in production wait 3 s for more members before the first assignment, and refuse session
timeouts outside ``group.min.session.timeout.ms`` .. ``group.max.session.timeout.ms``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aredis

from kafkaconsole.embedded import BrokerKind, EmbeddedServices, ManagedProcess
from kafkaconsole.engine.consumer import session_timeout_message
from kafkaconsole.engine.status import ConsumerState
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for


async def test_production_coordinator_settings(
    services: EmbeddedServices,
    redis_client: aredis.Redis,
    unique: str,
    broker_kind: BrokerKind,
    own_broker: Callable[..., ManagedProcess],
) -> None:
    broker = own_broker(**{"group.initial.rebalance.delay.ms": "3000"})
    bootstrap = f"127.0.0.1:{broker.port}"
    kafka = KafkaHelper(bootstrap)
    await kafka.start()
    await kafka.create_topic(unique, 2)
    await kafka.create_topic(f"{unique}-short", 1)
    cid = f"{unique}-c"
    ok = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}],
        kafka={"bootstrap_servers": bootstrap},
    )
    short = make_config(
        services,
        f"{unique}s",
        [{"consumer_id": f"{cid}-short", "kafka_topic": f"{unique}-short", "max_event": 1000}],
        kafka={"bootstrap_servers": bootstrap, "session_timeout_ms": 3000},
    )
    await kafka.produce(unique, ({"i": i} for i in range(30)), partitions=2)
    started = time.monotonic()
    try:
        async with running_engine(ok), running_engine(short) as refused:

            async def counted() -> bool:
                return int(await redis_client.get(f"{unique}:{cid}:events") or 0) == 30

            # the first join waits out the initial rebalance delay, then counts
            await wait_for(counted, 30, what="counting after the initial rebalance delay")
            if broker_kind == "apache":
                assert time.monotonic() - started >= 3.0
            runner = refused._consumers[f"{cid}-short"].runner
            if broker_kind == "apache":

                async def reported() -> bool:  # in the published snapshot (status, API, console)
                    (consumer,) = refused.snapshot().consumers
                    return consumer.state == ConsumerState.ERROR

                await wait_for(reported, 20, what="the refused session timeout")
                assert runner.last_error == session_timeout_message(3000)
                (consumer,) = refused.snapshot().consumers
                assert consumer.last_error == session_timeout_message(3000)
            # the other instance went on counting meanwhile
            await kafka.produce(unique, ({"i": i} for i in range(30, 40)), partitions=2)

            async def counted_more() -> bool:
                return int(await redis_client.get(f"{unique}:{cid}:events") or 0) == 40

            await wait_for(counted_more, 20, what="counting on")
    finally:
        await kafka.stop()
