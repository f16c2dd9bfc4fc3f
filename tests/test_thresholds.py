"""Window progress and ETA maths (kafkaconsole.engine.thresholds): pure, with a frozen clock."""

from __future__ import annotations

import math

import pytest

from kafkaconsole.engine.thresholds import Winner, window_progress

NOW = 1_700_000_000_000


def test_count_wins_when_rate_fills_the_window_first() -> None:
    # 300 left at 100/s = 3 s; time has 20 - 5 = 15 s left
    p = window_progress(200, 500, NOW - 5_000, 20, 100.0, NOW)
    assert p.count_ratio == pytest.approx(0.4)
    assert p.time_ratio == pytest.approx(0.25)
    assert p.elapsed_seconds == pytest.approx(5.0)
    assert p.winner == Winner.COUNT
    assert p.eta_seconds == pytest.approx(3.0)


def test_time_wins_when_the_rate_is_too_slow() -> None:
    # 300 left at 10/s = 30 s; time has 12 s left
    p = window_progress(200, 500, NOW - 8_000, 20, 10.0, NOW)
    assert p.winner == Winner.TIME
    assert p.eta_seconds == pytest.approx(12.0)


def test_idle_window_with_events_waits_for_time() -> None:
    p = window_progress(3, 500, NOW - 1_000, 60, 0.0, NOW)
    assert p.winner == Winner.TIME
    assert p.eta_seconds == pytest.approx(59.0)


def test_empty_idle_window_never_triggers() -> None:
    p = window_progress(0, 500, None, 60, 0.0, NOW)
    assert p.winner is None and p.eta_seconds is None
    assert p.count_ratio == 0 and p.time_ratio == 0


@pytest.mark.parametrize(
    ("rate", "winner", "eta"),
    [(100.0, Winner.COUNT, 5.0), (5.0, Winner.TIME, 60.0)],
)
def test_empty_window_with_traffic_opens_now(rate: float, winner: Winner, eta: float) -> None:
    # 500 at 100/s = 5 s < 60 s; 500 at 5/s = 100 s > 60 s
    p = window_progress(0, 500, None, 60, rate, NOW)
    assert p.winner == winner
    assert p.eta_seconds == pytest.approx(eta)
    assert p.time_ratio == 0


def test_overdue_window_is_clamped() -> None:
    p = window_progress(900, 500, NOW - 90_000, 60, 10.0, NOW)
    assert p.count_ratio == 1.0 and p.time_ratio == 1.0
    assert p.eta_seconds == 0.0


def test_full_count_fires_now() -> None:
    p = window_progress(500, 500, NOW - 1_000, 60, 0.0, NOW)
    assert p.winner == Winner.COUNT and p.eta_seconds == 0.0


def test_clock_before_opening_counts_as_just_opened() -> None:
    p = window_progress(10, 100, NOW + 5_000, 30, 0.0, NOW)
    assert p.elapsed_seconds == 0.0 and p.time_ratio == 0.0
    assert p.eta_seconds == pytest.approx(30.0)


@pytest.mark.parametrize("bad_rate", [math.nan, math.inf, -3.0])
def test_bad_rates_are_treated_as_idle(bad_rate: float) -> None:
    p = window_progress(10, 100, NOW - 1_000, 30, bad_rate, NOW)
    assert p.winner == Winner.TIME
    assert p.eta_seconds == pytest.approx(29.0)


def test_ties_go_to_time() -> None:
    # 100 left at 10/s = 10 s, time left exactly 10 s
    p = window_progress(0, 100, NOW - 20_000, 30, 10.0, NOW)
    assert p.winner == Winner.TIME and p.eta_seconds == pytest.approx(10.0)
