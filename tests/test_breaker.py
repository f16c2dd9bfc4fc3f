"""The circuit breaker as pure logic, driven by a hand-moved clock."""

from __future__ import annotations

import pytest

from kafkaconsole.engine.breaker import BreakerSnapshot, BreakerState, CircuitBreaker


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(threshold: int = 3, cooldown: float = 60.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(threshold, cooldown, clock), clock


def test_starts_closed_and_allows_every_run() -> None:
    breaker, _ = make()
    assert breaker.state == BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(10))
    assert breaker.seconds_until_allowed() == 0.0
    snap = breaker.snapshot()
    assert snap == BreakerSnapshot(BreakerState.CLOSED, 0, 3, 60.0, None)
    assert snap.probe_at is None


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, clock = make(threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == BreakerState.OPEN
    assert breaker.opened_at == clock.now
    assert breaker.consecutive_failures == 3
    assert not breaker.allow()
    assert breaker.seconds_until_allowed() == 60.0
    assert breaker.snapshot().probe_at == clock.now + 60.0


def test_a_success_resets_the_count() -> None:
    breaker, _ = make(threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == BreakerState.CLOSED
    assert breaker.consecutive_failures == 2


def test_half_open_after_cooldown_lets_exactly_one_probe() -> None:
    breaker, clock = make(threshold=1, cooldown=10.0)
    breaker.record_failure()
    clock.advance(9.9)
    assert not breaker.allow()
    assert breaker.seconds_until_allowed() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state == BreakerState.HALF_OPEN  # reads half-open once the cooldown is over
    assert breaker.seconds_until_allowed() == 0.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # nothing else while it runs
    assert not breaker.allow()
    assert breaker.seconds_until_allowed() > 0


def test_probe_success_closes() -> None:
    breaker, clock = make(threshold=2, cooldown=5.0)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.opened_at is None
    assert breaker.allow() and breaker.allow()


def test_probe_failure_opens_again_for_a_new_cooldown() -> None:
    breaker, clock = make(threshold=2, cooldown=5.0)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(7.0)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == BreakerState.OPEN
    assert breaker.opened_at == clock.now
    assert breaker.consecutive_failures == 3
    assert not breaker.allow()
    clock.advance(5.0)
    assert breaker.allow()


def test_neutral_probe_result_lets_another_probe_go() -> None:
    breaker, clock = make(threshold=1, cooldown=1.0)
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.record_neutral()  # e.g. the job was cancelled by a person
    assert breaker.state == BreakerState.HALF_OPEN
    assert breaker.allow()


def test_threshold_zero_never_opens() -> None:
    breaker, _ = make(threshold=0)
    for _ in range(100):
        breaker.record_failure()
    assert breaker.state == BreakerState.CLOSED
    assert breaker.allow()
    assert breaker.consecutive_failures == 100


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(-1, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0.0)


def test_snapshot_round_trips_through_a_redis_hash() -> None:
    breaker, clock = make(threshold=2, cooldown=30.0)
    breaker.record_failure()
    breaker.record_failure()
    snap = breaker.snapshot()
    fields = snap.to_redis_hash()
    assert fields["state"] == "open"
    assert fields["opened_at"] == str(clock.now)
    assert fields["probe_at"] == str(clock.now + 30.0)
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    assert BreakerSnapshot.from_redis_hash(as_bytes) == snap
    closed = CircuitBreaker(2, 30.0).snapshot()
    assert BreakerSnapshot.from_redis_hash(closed.to_redis_hash()) == closed
    assert BreakerSnapshot.from_redis_hash({}) is None
    assert BreakerSnapshot.from_redis_hash({"state": "weird"}) is None
    assert snap.to_json_dict() == {
        "state": "open",
        "consecutive_failures": 2,
        "threshold": 2,
        "cooldown": 30.0,
        "opened_at": clock.now,
        "probe_at": clock.now + 30.0,
    }


def test_restore_takes_over_an_open_circuit() -> None:
    first, clock = make(threshold=2, cooldown=30.0)
    first.record_failure()
    first.record_failure()
    second = CircuitBreaker(2, 30.0, clock)
    second.restore(first.snapshot())
    assert second.state == BreakerState.OPEN
    assert second.opened_at == first.opened_at
    assert not second.allow()
    clock.advance(30.0)
    assert second.allow()
    assert not second.allow()


def test_restore_of_half_open_waits_for_a_new_probe() -> None:
    breaker, clock = make(threshold=1, cooldown=10.0)
    breaker.record_failure()
    clock.advance(10.0)
    assert breaker.allow()  # probe in flight when the instance died
    snap = breaker.snapshot()
    assert snap.state == BreakerState.HALF_OPEN
    heir = CircuitBreaker(1, 10.0, clock)
    heir.restore(snap)
    assert heir.allow()  # cooldown long over: the re-delivered trigger is the next probe
    heir.record_success()
    assert heir.state == BreakerState.CLOSED


def test_restore_of_closed_state() -> None:
    breaker, _ = make(threshold=3)
    breaker.record_failure()
    heir = CircuitBreaker(3, 60.0)
    heir.restore(breaker.snapshot())
    assert heir.state == BreakerState.CLOSED
    assert heir.consecutive_failures == 1
