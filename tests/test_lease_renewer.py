"""The instance's lease renewer against the real Redis: every dispatcher's dispatch lease is
renewed in one pipeline per round (not a round trip per consumer), one instance leads each
consumer, a stopped dispatcher's lease is released after any renewal in flight (so another
instance takes it over), and an unreachable Redis means no lease is held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from kafkaconsole.embedded import free_port
from kafkaconsole.engine.dispatch import LeaseRenewer, TriggerDispatcher
from kafkaconsole.engine.keys import ConsumerKeys
from tests.helpers import wait_for
from tests.test_dispatch import FAST, ScriptedRemote, consumer

LEASE_MS = 600


def dispatchers(
    redis: aredis.Redis, prefix: str, n: int, instance: str, renewer: LeaseRenewer
) -> list[TriggerDispatcher]:
    out = []
    for i in range(n):
        keys = ConsumerKeys(prefix, f"{prefix}-c{i}")
        out.append(
            TriggerDispatcher(
                redis,
                keys,
                consumer(keys.consumer_id),
                ScriptedRemote(),
                FAST,
                instance,
                lease_ms=LEASE_MS,
                renewer=renewer,
            )
        )
    return out


class Running:
    """Renewers and dispatchers started by a test, all stopped at its end."""

    def __init__(self) -> None:
        self.tasks: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(self, run: Any) -> asyncio.Event:
        stop = asyncio.Event()
        self.tasks.append((stop, asyncio.create_task(run(stop))))
        return stop

    async def stop_all(self) -> None:
        for stop, _ in self.tasks:
            stop.set()
        for _, task in self.tasks:
            await asyncio.wait_for(task, 10)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    yield r
    await r.stop_all()


async def test_one_pipeline_a_round_renews_every_lease_and_one_instance_leads(
    redis_client: aredis.Redis, unique: str, running: Running
) -> None:
    a = LeaseRenewer(redis_client, "inst-a", LEASE_MS)
    b = LeaseRenewer(redis_client, "inst-b", LEASE_MS)
    ours = dispatchers(redis_client, unique, 40, "inst-a", a)
    theirs = dispatchers(redis_client, unique, 40, "inst-b", b)
    running.start(a.run)
    for d in ours:
        running.start(d.run)

    async def all_lead() -> bool:
        return all(d.leader for d in ours)

    await wait_for(all_lead, 10, what="instance a leads its 40 consumers")
    running.start(b.run)
    for d in theirs:
        running.start(d.run)
    before = a.rounds
    await asyncio.sleep(3 * LEASE_MS / 1000)
    # one pipeline every third of a lease (and one per joining burst), not one call per lease
    assert 3 <= a.rounds - before <= 12
    assert b.rounds >= 3
    assert all(d.leader for d in ours) and not any(d.leader for d in theirs)
    for d in ours:
        assert await redis_client.get(d.keys.dispatch_lease) == b"inst-a"
        assert 0 < await redis_client.pttl(d.keys.dispatch_lease) <= LEASE_MS


async def test_a_stopped_dispatcher_releases_its_lease_and_another_instance_takes_it(
    redis_client: aredis.Redis, unique: str, running: Running
) -> None:
    a = LeaseRenewer(redis_client, "inst-a", LEASE_MS)
    b = LeaseRenewer(redis_client, "inst-b", LEASE_MS)
    [ours] = dispatchers(redis_client, unique, 1, "inst-a", a)
    [theirs] = dispatchers(redis_client, unique, 1, "inst-b", b)
    running.start(a.run)
    ours_stop = running.start(ours.run)

    async def ours_leads() -> bool:
        return ours.leader

    await wait_for(ours_leads, 10, what="instance a leads")
    running.start(b.run)
    running.start(theirs.run)
    await asyncio.sleep(LEASE_MS / 1000)
    assert not theirs.leader
    ours_stop.set()

    async def released() -> bool:
        return not ours.leader and await redis_client.get(ours.keys.dispatch_lease) != b"inst-a"

    await wait_for(released, 10, what="instance a's lease released")

    async def theirs_leads() -> bool:
        return theirs.leader

    # taken over at b's next round: well before the lease would have run out
    await wait_for(theirs_leads, 10, what="instance b takes the lease over")
    await asyncio.sleep(LEASE_MS / 1000)
    assert await redis_client.get(ours.keys.dispatch_lease) == b"inst-b"


async def test_leaving_waits_for_a_renewal_in_flight_so_the_release_is_the_last_word(
    redis_client: aredis.Redis, unique: str, running: Running
) -> None:
    renewer = LeaseRenewer(redis_client, "inst-a", LEASE_MS)
    [d] = dispatchers(redis_client, unique, 1, "inst-a", renewer)
    gate = asyncio.Event()
    entered = asyncio.Event()
    real = renewer._pipeline

    async def gated(members: list[TriggerDispatcher]) -> list[Any]:
        entered.set()
        await gate.wait()
        return await real(members)

    renewer._pipeline = gated  # type: ignore[method-assign]
    renewer.join(d)
    running.start(renewer.run)
    await asyncio.wait_for(entered.wait(), 5)
    leaving = asyncio.create_task(renewer.leave(d))
    await asyncio.sleep(0.2)
    assert not leaving.done()  # the renewal of its lease is still in flight
    gate.set()
    await asyncio.wait_for(leaving, 5)
    assert await redis_client.get(d.keys.dispatch_lease) == b"inst-a"  # that renewal took it
    await redis_client.delete(d.keys.dispatch_lease)  # what the dispatcher's release does
    await asyncio.sleep(2 * LEASE_MS / 1000)
    assert await redis_client.get(d.keys.dispatch_lease) is None  # never renewed again


async def test_an_unreachable_redis_means_no_lease_is_held(unique: str) -> None:
    dead = aredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        renewer = LeaseRenewer(dead, "inst-a", LEASE_MS)
        [d] = dispatchers(dead, unique, 1, "inst-a", renewer)
        d.leader = True
        renewer.join(d)
        stop = asyncio.Event()
        task = asyncio.create_task(renewer.run(stop))

        async def lost() -> bool:
            return not d.leader and renewer.rounds >= 1

        await wait_for(lost, 10, what="the lease counted as not held")
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await dead.aclose()
