"""The timers' estimate of Redis's clock: answers read late never make a timer late."""

from __future__ import annotations

import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.timer import RTT_KEEP_MS, SKEW_KEEP_MS, ClockSkew, RedisClock, TimeCloser


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_largest_recent_sample_is_kept() -> None:
    """Redis's clock is 500 ms ahead. An answer read 1.8 s after Redis took its TIME (a busy
    loop) says 500 - 1800 = -1300: taking it would fire every timer 1.8 s late."""
    clock = Clock()
    skew = ClockSkew(clock)
    skew.note(clock.now + 500 - 3)  # read 3 ms after Redis's TIME
    assert skew.ms == 497
    clock.now += 1_000
    skew.note(clock.now + 500 - 1_800)  # read 1.8 s late
    assert skew.ms == 497
    clock.now += 1_000
    skew.note(clock.now + 500 - 1)  # a fresher, closer sample wins
    assert skew.ms == 499


def test_an_old_estimate_gives_way_so_a_clock_change_is_followed() -> None:
    clock = Clock()
    skew = ClockSkew(clock)
    skew.note(clock.now + 500)
    clock.now += SKEW_KEEP_MS + 1
    skew.note(clock.now - 200)  # Redis's clock was set back by 700 ms
    assert skew.ms == -200


def test_the_round_trip_clock_keeps_the_shortest_round_trip() -> None:
    """Redis's clock is 500 ms ahead. A prompt round trip (4 ms) measures it within 2 ms; an
    answer read 1.8 s late (its round trip 1.8 s) or a plain answer without its round trip
    never moves the estimate, so a busy loop never makes a timer late."""
    clock = Clock()
    rc = RedisClock(clock)
    rc.note(clock.now + 500)  # before any round trip: the fallback estimate is used
    assert rc.ms == 500
    sent = clock.now
    clock.now += 4
    rc.note_round_trip(sent, sent + 2 + 500, clock.now)  # TIME taken mid-way
    assert rc.ms == 500 and rc.rtt_ms == 4
    sent = clock.now
    clock.now += 1_800
    rc.note_round_trip(sent, sent + 1 + 500, clock.now)  # answered at once, read 1.8 s later
    rc.note(clock.now + 500 - 1_800)
    assert rc.ms == 500 and rc.rtt_ms == 4


def test_round_trip_samples_expire_so_a_clock_change_is_followed() -> None:
    clock = Clock()
    rc = RedisClock(clock)
    rc.note_round_trip(clock.now, clock.now + 500, clock.now)
    clock.now += RTT_KEEP_MS + 1
    rc.note_round_trip(clock.now - 10, clock.now - 5 - 200, clock.now)  # Redis set back 700 ms
    assert rc.ms == -200 and rc.rtt_ms == 10


async def test_the_round_trip_clock_measures_a_real_redis(services: EmbeddedServices) -> None:
    """Redis runs on this host: its clock is this clock, within the round trip."""
    redis = aredis.Redis.from_url(services.redis_url, max_connections=1)
    try:
        closer = TimeCloser(redis)
        for _ in range(3):
            await closer.probe_clock()
        assert closer.clock.rtt_ms is not None
        assert abs(closer.clock.ms) <= closer.clock.rtt_ms / 2 + 2
    finally:
        await redis.aclose()
