"""The state's format version: stamped on first use, newer state refused in one line, older
state migrated atomically (once, however many instances start together), and a rolling
upgrade: instances of one group replaced one by one while counting stays exact."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.keys import FleetKeys
from kafkaconsole.engine.state_format import (
    STATE_FORMAT,
    Migration,
    StateFormatError,
    ensure_state_format,
)
from kafkaconsole.headless import start_error_text
from tests.engine_support import make_config, running_engine, start_engine
from tests.helpers import KafkaHelper, wait_for


async def test_new_state_is_stamped_and_checked_again(
    redis_client: aredis.Redis, unique: str
) -> None:
    first = await ensure_state_format(redis_client, unique)
    assert first.found is None and first.now == STATE_FORMAT
    assert int(await redis_client.get(FleetKeys(unique).format)) == STATE_FORMAT
    again = await ensure_state_format(redis_client, unique)
    assert again.found == STATE_FORMAT and again.migrated == ()


async def test_a_newer_format_is_refused_in_one_line_and_nothing_changes(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    await redis_client.set(FleetKeys(unique).format, STATE_FORMAT + 1)
    await redis_client.set(f"{unique}:c:events", 7)
    cfg = make_config(
        services, unique, [{"consumer_id": "c", "kafka_topic": unique, "max_event": 10}]
    )
    engine = Engine(cfg)
    with pytest.raises(StateFormatError) as caught:
        await engine.start(wait_timeout=5)
    await engine.stop()
    line = start_error_text(caught.value, cfg)
    assert "\n" not in line
    assert f"is format {STATE_FORMAT + 1}, newer than this kafkaconsole understands" in line
    assert f"(format {STATE_FORMAT})" in line and "README, Upgrades" in line
    assert int(await redis_client.get(FleetKeys(unique).format)) == STATE_FORMAT + 1
    assert await redis_client.get(f"{unique}:c:events") == b"7"


# A migration as a later release would ship one: format 1 -> 2 renames each consumer's
# `events` key to `count` (the test's own layout change; this release has none to make).
RENAME = Migration(
    1,
    """
local moved = 0
for _, key in ipairs(redis.call('KEYS', ARGV[1] .. ':*:events')) do
  redis.call('RENAME', key, string.sub(key, 1, -7) .. 'count')
  moved = moved + 1
end
redis.call('SET', KEYS[1], '2')
return 1
""",
    "each consumer's events key renamed count (format 1 -> 2)",
)


async def test_older_state_is_migrated_once_atomically(
    redis_client: aredis.Redis, unique: str
) -> None:
    await redis_client.set(FleetKeys(unique).format, 1)
    for cid in ("a", "b"):
        await redis_client.set(f"{unique}:{cid}:events", 5)
    results = await asyncio.gather(
        *(
            ensure_state_format(redis_client, unique, current=2, migrations={1: RENAME})
            for _ in range(4)
        )
    )
    assert sum(len(r.migrated) for r in results) == 1  # one instance migrated, once
    assert all(r.now == 2 for r in results)
    assert int(await redis_client.get(FleetKeys(unique).format)) == 2
    assert await redis_client.get(f"{unique}:a:count") == b"5"
    assert await redis_client.get(f"{unique}:a:events") is None


async def test_a_format_without_a_migration_is_refused(
    redis_client: aredis.Redis, unique: str
) -> None:
    await redis_client.set(FleetKeys(unique).format, 1)
    with pytest.raises(StateFormatError, match="no migration from it to format 3"):
        await ensure_state_format(redis_client, unique, current=3, migrations={1: RENAME})
    # the step that could run did; the state is left at the format it reached
    assert int(await redis_client.get(FleetKeys(unique).format)) == 2


async def test_rolling_upgrade_replaces_instances_one_by_one_and_counts_exactly(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    """Old and new instances side by side in one group (the same format), the old one stopped
    while events flow: every event counted once."""
    await kafka.create_topic(unique, 2)
    cid = f"{unique}-c"
    cfg = make_config(
        services, unique, [{"consumer_id": cid, "kafka_topic": unique, "max_event": 10_000}]
    )

    async def counted() -> int:
        return int(await redis_client.get(f"{unique}:{cid}:events") or 0)

    old = await start_engine(cfg)
    try:
        await kafka.produce(unique, ({"i": i} for i in range(40)), partitions=2)
        await wait_for(lambda: _equals(counted, 40), 30, what="40 counted by the old instance")
        async with running_engine(cfg) as new:
            await kafka.produce(unique, ({"i": i} for i in range(40, 80)), partitions=2)
            await old.stop()  # the old instance leaves; the new one takes its partitions
            await kafka.produce(unique, ({"i": i} for i in range(80, 120)), partitions=2)
            await wait_for(lambda: _equals(counted, 120), 40, what="120 counted once")
            assert new.started
    finally:
        await old.stop()
    assert await counted() == 120


async def _equals(read: object, want: int) -> bool:
    return await read() == want  # type: ignore[operator]
