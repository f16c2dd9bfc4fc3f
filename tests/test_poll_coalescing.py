"""While a consumer is behind, its polls go to Redis in groups (fewer, larger script calls);
caught up, each poll at once; a poll never waits for its group longer than the age cap."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine import consumer as consumer_mod
from kafkaconsole.engine.consumer import (
    COALESCE_MAX_AGE_S,
    COALESCE_POLLS,
    coalesce_due,
)
from kafkaconsole.engine.counting import WindowCounter
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for


def test_polls_go_in_groups_or_once_the_oldest_has_waited() -> None:
    assert not coalesce_due(0, 60.0)  # nothing queued
    assert not coalesce_due(COALESCE_POLLS - 1, 0.0)
    assert coalesce_due(COALESCE_POLLS, 0.0)
    assert not coalesce_due(1, COALESCE_MAX_AGE_S / 2)
    assert coalesce_due(1, COALESCE_MAX_AGE_S)
    assert COALESCE_POLLS <= consumer_mod.MAX_QUEUED_POLLS // 2  # one group sent, one filling


async def test_a_backlog_is_counted_exactly_in_a_few_calls(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """40 polls of a backlog: counted in groups of COALESCE_POLLS (the age cap out of the way
    here), each group in one script call, and nothing counted twice or lost."""
    monkeypatch.setattr(consumer_mod, "COALESCE_MAX_AGE_S", 60.0)
    calls: list[int] = []
    apply = WindowCounter.apply

    async def counting_apply(self: WindowCounter, deltas: Any, *args: Any, **kwargs: Any) -> Any:
        if self.keys.consumer_id == cid:
            calls.append(sum(d.n_records for d in deltas))
        return await apply(self, deltas, *args, **kwargs)

    monkeypatch.setattr(WindowCounter, "apply", counting_apply)
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    await kafka.produce(unique, ({"i": i} for i in range(20_000)), partitions=1)
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1_000_000, "batch_size": 500}],
    )
    async with running_engine(cfg, snapshot_interval=60):

        async def all_counted() -> bool:
            return int(await redis_client.get(f"{unique}:{cid}:events") or 0) == 20_000

        await wait_for(all_counted, 30, what="20,000 counted")
    assert sum(calls) == 20_000
    # 40 polls of 500: a group of 32 and the rest (a commit about once a second also counts
    # what is queued, so a slow machine may add a call or two), not a call per poll
    assert 2 <= len(calls) <= 6, calls
    assert max(calls) >= COALESCE_POLLS * 500 // 2, calls
