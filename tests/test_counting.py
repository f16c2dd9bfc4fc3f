"""The counting script against a real Redis: exact windows, dedupe by offset, time/manual close."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aredis
from aiokafka import TopicPartition
from redis.exceptions import ConnectionError as RedisConnectionError

from kafkaconsole.embedded import EmbeddedServices, free_port
from kafkaconsole.engine.counting import PartitionDelta, RedisBehind, WindowCounter, ranges_of
from kafkaconsole.engine.keys import ConsumerKeys
from kafkaconsole.engine.records import TriggerReason
from kafkaconsole.engine.timer import TimeCloser


def counter(r: aredis.Redis, unique: str, max_event: int = 1000) -> WindowCounter:
    return WindowCounter(r, ConsumerKeys(unique, "c1"), max_event=max_event)


def tp(p: int, topic: str = "orders") -> TopicPartition:
    return TopicPartition(topic, p)


def delta(
    p: int,
    offsets: list[int],
    errors: list[int] | None = None,
    n_records: int | None = None,
    topic: str = "orders",
) -> PartitionDelta:
    allo = sorted(offsets + (errors or []))
    return PartitionDelta(
        topic, p, allo[-1] + 1, allo[0], n_records or len(allo), ranges_of(offsets), errors or []
    )


def test_ranges_of() -> None:
    assert ranges_of([]) == []
    assert ranges_of([5]) == [(5, 5)]
    assert ranges_of([1, 2, 3, 7, 8, 10]) == [(1, 3), (7, 8), (10, 10)]


async def history(r: aredis.Redis, unique: str) -> list[dict[str, str]]:
    entries = await r.xrange(ConsumerKeys(unique, "c1").history)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def test_exact_windows_with_overshoot(redis_client: aredis.Redis, unique: str) -> None:
    c = counter(redis_client, unique, max_event=1000)
    # 10,500 events in batches of 700 over 3 partitions
    next_off = [0, 0, 0]
    total = 0
    closed: list[int] = []
    while total < 10_500:
        deltas = []
        for p in range(3):
            n = min(700 // 3 + (1 if p == 0 else 0), 10_500 - total)
            if n <= 0:
                break
            deltas.append(delta(p, list(range(next_off[p], next_off[p] + n))))
            next_off[p] += n
            total += n
        res = await c.apply(deltas)
        closed += res.closed_window_ids
    assert closed == list(range(1, 11))
    assert int(await redis_client.get(f"{unique}:c1:events")) == 500
    recs = await history(redis_client, unique)
    assert [int(x["count"]) for x in recs] == [1000] * 10
    assert all(x["reason"] == "count" for x in recs)
    # offset ranges cover every counted event exactly once
    covered = 0
    for x in recs:
        for rng in orjson.loads(x["offsets"]):
            covered += rng["last"] - rng["first"] + 1
    state = await c.window()
    covered += sum(r.last - r.first + 1 for r in state.ranges)
    assert covered == 10_500
    assert state.count == 500 and state.window_id == 11 and state.opened_at_ms is not None


async def test_replayed_batch_changes_nothing(redis_client: aredis.Redis, unique: str) -> None:
    c = counter(redis_client, unique, max_event=10)
    first = await c.apply([delta(0, [0, 1, 2, 3]), delta(1, [0, 1])])
    assert first.count == 6
    again = await c.apply([delta(0, [0, 1, 2, 3]), delta(1, [0, 1])])
    assert again.count == 6 and again.added == 0 and again.skipped == 6
    # partial overlap with a gap (compacted topic): only the new offsets count
    third = await c.apply([delta(0, [2, 3, 7, 9])])
    assert third.added == 2 and third.count == 8
    assert await c.stored_offsets([tp(0), tp(1), tp(2)]) == {tp(0): 10, tp(1): 2}


async def test_errors_and_filtered_advance_offsets(redis_client: aredis.Redis, unique: str) -> None:
    c = counter(redis_client, unique, max_event=10)
    res = await c.apply([delta(0, [0, 2], errors=[1], n_records=5)])  # offsets 3, 4 filtered
    assert res.count == 2 and res.errors == 1
    stats = await redis_client.hgetall(f"{unique}:c1:stats")
    assert stats[b"errors"] == b"1" and stats[b"filtered"] == b"2" and stats[b"total"] == b"2"


async def test_time_close_only_after_deadline_and_once(
    redis_client: aredis.Redis, unique: str
) -> None:
    c = counter(redis_client, unique, max_event=100)
    res = await c.apply([delta(0, [0, 1, 2])])
    early = await c.close(TriggerReason.TIME, expected_window_id=res.window_id, max_time_ms=60_000)
    assert early.status == "early" and 0 < early.count <= 60_000
    done = await c.close(TriggerReason.TIME, expected_window_id=res.window_id, max_time_ms=0)
    assert done.closed and done.count == 3 and done.window_id == 1
    stale = await c.close(TriggerReason.TIME, expected_window_id=res.window_id, max_time_ms=0)
    assert stale.status == "stale"
    empty = await c.close(TriggerReason.TIME, expected_window_id=2, max_time_ms=0)
    assert empty.status == "empty"


async def test_manual_close_allowed_on_empty_window(
    redis_client: aredis.Redis, unique: str
) -> None:
    c = counter(redis_client, unique)
    res = await c.close(TriggerReason.MANUAL)
    assert res.closed and res.count == 0
    recs = await history(redis_client, unique)
    assert recs[0]["reason"] == "manual" and recs[0]["offsets"] == "[]"


async def test_reset_discards_without_trigger(redis_client: aredis.Redis, unique: str) -> None:
    c = counter(redis_client, unique, max_event=100)
    await c.apply([delta(0, list(range(40)))])
    res = await c.reset()
    assert res.discarded == 40 and res.window_id == 1
    assert int(await redis_client.get(f"{unique}:c1:events")) == 0
    assert await history(redis_client, unique) == []
    nxt = await c.apply([delta(0, [40, 41])])
    assert nxt.count == 2 and nxt.window_id == 1


async def test_stored_offset_behind_expectation_applies_nothing(
    redis_client: aredis.Redis, unique: str
) -> None:
    """Redis lost its last writes (stored offset below what the client saw stored): the script
    refuses the batch and says where counting must resume."""
    c = counter(redis_client, unique, max_event=10)
    await c.apply([delta(0, list(range(8))), delta(1, [0, 1])])
    # Redis comes back from a crash without the last second: partition 0 stored at 5, not 8
    await redis_client.hset(f"{unique}:c1:offsets", "orders|0", 5)
    with pytest.raises(RedisBehind) as info:
        await c.apply([delta(0, [8, 9]), delta(1, [2])], expected={tp(0): 8, tp(1): 2})
    assert info.value.stored == {tp(0): 5}
    assert "orders partition 0 at 5" in str(info.value)
    assert int(await redis_client.hget(f"{unique}:c1:stats", "total")) == 10  # nothing applied
    assert await c.stored_offsets([tp(0), tp(1)]) == {tp(0): 5, tp(1): 2}
    # the client reads partition 0 again from 5: events 5..7 are skipped only if counted
    res = await c.apply([delta(0, [5, 6, 7, 8, 9]), delta(1, [2])], expected={tp(0): 5, tp(1): 2})
    assert res.added == 6 and res.skipped == 0 and res.lost == {}


async def test_expectation_met_or_exceeded_is_normal(
    redis_client: aredis.Redis, unique: str
) -> None:
    c = counter(redis_client, unique, max_event=10)
    await c.apply([delta(0, [0, 1, 2, 3])])
    # another instance counted further (a zombie's view): stored above expectation, dedupe
    res = await c.apply([delta(0, [2, 3, 4])], expected={tp(0): 2})
    assert (res.added, res.skipped, res.lost) == (1, 2, {})


async def test_missing_state_is_reported_and_window_ids_never_go_back(
    redis_client: aredis.Redis, unique: str
) -> None:
    c = counter(redis_client, unique, max_event=3)
    res = await c.apply([delta(0, list(range(7)))])
    assert res.closed_window_ids == (1, 2) and res.window_id == 3
    # Redis restarted with no persistence: every key of the consumer is gone
    for key in await redis_client.keys(f"{unique}:c1:*"):
        await redis_client.delete(key)
    res = await c.apply([delta(0, [7, 8])], expected={tp(0): 7}, window_floor=3)
    assert res.lost == {tp(0): 7}
    assert res.window_id == 3 and res.count == 2  # id 3 again, never 1: keys are not reused
    assert await c.stored_offsets([tp(0)]) == {tp(0): 9}
    res = await c.apply([delta(0, [9])], expected={tp(0): 9}, window_floor=3)
    assert res.closed_window_ids == (3,) and res.lost == {}
    # the floor only applies when the window state itself is gone
    res = await c.apply([delta(0, [10])], expected={tp(0): 10}, window_floor=1)
    assert res.window_id == 4


async def test_first_window_after_a_loss_takes_the_highest_id_any_client_saw(
    redis_client: aredis.Redis, unique: str
) -> None:
    """Two instances saw different window ids before Redis came back empty (one had not yet
    heard that the other closed window 5): the open window takes the higher id as long as it
    has not closed, so no idempotency key is used twice."""
    c = counter(redis_client, unique, max_event=10)
    res = await c.apply([delta(0, [0, 1])], expected={tp(0): 0}, window_floor=5)  # stale view
    assert res.lost == {tp(0): 0} and res.window_id == 5
    res = await c.apply([delta(1, [0, 1, 2])], expected={tp(1): 0}, window_floor=6)
    assert res.lost == {tp(1): 0} and res.window_id == 6 and res.count == 5
    res = await c.apply([delta(0, list(range(2, 7)))], expected={tp(0): 2}, window_floor=5)
    assert res.closed_window_ids == (6,)
    # past the first window after the loss, ids only ever come from Redis
    res = await c.apply([delta(0, [7])], expected={tp(0): 7}, window_floor=9)
    assert res.window_id == 7


async def test_one_window_over_several_topics(redis_client: aredis.Redis, unique: str) -> None:
    """Partition 0 of two topics is two different partitions: each has its own stored offset
    and its own range in the window, and both count into the same window."""
    c = counter(redis_client, unique, max_event=5)
    res = await c.apply([delta(0, [0, 1, 2], topic="a"), delta(0, [0, 1, 2], topic="b")])
    assert res.closed_window_ids == (1,) and res.count == 1
    recs = await history(redis_client, unique)
    assert orjson.loads(recs[0]["offsets"]) == [
        {"topic": "a", "partition": 0, "first": 0, "last": 2},
        {"topic": "b", "partition": 0, "first": 0, "last": 1},
    ]
    state = await c.window()
    assert [(r.topic, r.partition, r.first, r.last) for r in state.ranges] == [("b", 0, 2, 2)]
    assert await c.stored_offsets([tp(0, "a"), tp(0, "b"), tp(0, "c")]) == {
        tp(0, "a"): 3,
        tp(0, "b"): 3,
    }
    # a replay of topic a changes nothing; topic b goes on from its own offset
    res = await c.apply([delta(0, [0, 1, 2], topic="a"), delta(0, [2, 3], topic="b")])
    assert (res.added, res.skipped, res.count) == (1, 4, 2)
    with pytest.raises(RedisBehind) as info:
        await c.apply([delta(0, [3], topic="a")], expected={tp(0, "a"): 9})
    assert info.value.stored == {tp(0, "a"): 3}


async def test_skipped_records_advance_offsets_and_count_as_skipped(
    redis_client: aredis.Redis, unique: str
) -> None:
    c = counter(redis_client, unique, max_event=10)
    only_skipped = PartitionDelta("orders", 0, 4, 0, 4, [], [], 4)  # four tombstones
    mixed = PartitionDelta("orders", 1, 5, 0, 5, [(0, 1)], [2], 1)  # 2 counted, 1 bad, 1 filtered
    res = await c.apply([only_skipped, mixed])
    assert res.added == 2 and res.errors == 1
    assert await c.stored_offsets([tp(0), tp(1)]) == {tp(0): 4, tp(1): 5}
    stats = await redis_client.hgetall(f"{unique}:c1:stats")
    assert (stats[b"skipped"], stats[b"filtered"], stats[b"errors"]) == (b"5", b"1", b"1")
    # read again (a replay): nothing is recorded twice
    await c.apply([only_skipped, mixed])
    assert (await redis_client.hget(f"{unique}:c1:stats", "skipped")) == b"5"


async def test_time_triggers_due_together_close_in_one_round_trip(
    redis_client: aredis.Redis, unique: str
) -> None:
    """Windows of many consumers falling due in one turn of the event loop are closed by one
    pipeline (the close script re-checks each deadline and window id on Redis): due ones
    close, one not due yet answers early, a stale window id is left alone."""
    counters = [
        WindowCounter(redis_client, ConsumerKeys(unique, f"c{i}"), max_event=1000)
        for i in range(60)
    ]
    for c in counters:
        await c.apply([delta(0, [0, 1, 2])])
    await asyncio.sleep(0.01)
    await redis_client.script_flush()  # as after a Redis restart: the closer loads it again
    closer = TimeCloser(redis_client)
    results = await asyncio.gather(
        *(closer.close(c, 1, 5) for c in counters[:58]),
        closer.close(counters[58], 1, 3_600_000),  # not due for an hour
        closer.close(counters[59], 7, 5),  # a window id that is not the open one
    )
    assert (closer.batches, closer.largest) == (1, 60)
    assert all(r.closed and (r.window_id, r.count) == (1, 3) for r in results[:58])
    assert results[58].status == "early" and results[58].count > 3_500_000 - 100_000
    assert results[59].status == "stale"
    for c in counters[:58]:
        (record,) = await c.redis.xrange(c.keys.history)
        assert record[1][b"reason"] == b"time" and record[1][b"count"] == b"3"
    assert await redis_client.xlen(counters[58].keys.history) == 0


async def test_time_closer_reports_redis_unreachable_to_every_waiter(
    redis_client: aredis.Redis, unique: str
) -> None:
    gone = aredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        closer = TimeCloser(gone)
        counters = [
            WindowCounter(gone, ConsumerKeys(unique, f"c{i}"), max_event=10) for i in range(3)
        ]
        results = await asyncio.gather(
            *(closer.close(c, 1, 5) for c in counters), return_exceptions=True
        )
        assert all(isinstance(r, RedisConnectionError) for r in results), results
    finally:
        await gone.aclose()


async def test_time_closes_falling_due_while_a_pipeline_is_in_flight_go_in_the_next(
    services: EmbeddedServices, unique: str
) -> None:
    """The closer's connection is its own (one): closes queued while a pipeline is in flight
    wait for it and go together in the next, never on a second connection."""
    one = aredis.Redis.from_url(services.redis_url, max_connections=1)
    try:
        counters = [
            WindowCounter(one, ConsumerKeys(unique, f"c{i}"), max_event=1000) for i in range(20)
        ]
        for c in counters:
            await c.apply([delta(0, [0])])
        await asyncio.sleep(0.01)
        closer = TimeCloser(one)
        first = [asyncio.create_task(closer.close(c, 1, 5)) for c in counters[:10]]
        await asyncio.sleep(0)  # the first pipeline is on its way
        second = [asyncio.create_task(closer.close(c, 1, 5)) for c in counters[10:]]
        results = await asyncio.gather(*first, *second)
        assert all(r.closed for r in results)
        assert (closer.batches, closer.largest) == (2, 10)
    finally:
        await one.aclose()
