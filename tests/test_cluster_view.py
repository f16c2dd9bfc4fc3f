"""The instance's view of the cluster's brokers: nothing is reported missing on a healthy
cluster, from the first snapshot on (while the clients start and before their first metadata
answer too). A broker that dies is covered by the fault scenario cluster-leader-kill9 (three
brokers, in the suite on Apache Kafka sessions)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.engine import Engine
from tests.engine_support import make_config
from tests.helpers import KafkaHelper


async def test_a_healthy_cluster_has_no_missing_broker(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    await kafka.create_topic(unique, 2)
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": f"{unique}-{i}", "kafka_topic": unique, "max_event": 100} for i in (1, 2)],
    )
    caplog.set_level(logging.INFO, logger="kafkaconsole")
    engine = Engine(cfg, lease_ms=1500, snapshot_interval=0.05)
    seen: set[tuple[str, ...]] = set()
    engine.subscribe(lambda snap: seen.add(snap.kafka_missing))
    await engine.start()
    try:
        await asyncio.sleep(3)  # many snapshots, from before the first metadata answer on
        snap = await engine.refresh_snapshot()
        assert snap.kafka_missing == ()
        assert seen == {()}
        assert not [r for r in caplog.records if "gone from the cluster" in r.getMessage()]
    finally:
        await engine.stop()
