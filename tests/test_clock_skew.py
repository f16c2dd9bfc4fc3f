"""The timers' estimate of Redis's clock: answers read late never make a timer late."""

from __future__ import annotations

from kafkaconsole.engine.timer import SKEW_KEEP_MS, ClockSkew


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
