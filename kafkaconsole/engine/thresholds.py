"""Window progress and the time to the next trigger: pure maths with an injected clock.

A window closes at ``max_event`` events or ``max_time`` seconds after its first event, whichever
comes first (DESIGN §2). The console shows how far each threshold is and which one will win;
:func:`window_progress` computes that from numbers only (no I/O, no clock of its own), so the
TUI, the CLI and the tests agree on it and can freeze time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Winner(StrEnum):
    """The threshold expected to close the open window."""

    COUNT = "count"
    TIME = "time"


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the open window is towards each threshold.

    ``eta_seconds`` and ``winner`` are ``None`` when nothing will close the window on its own:
    the window is empty and no events arrive (an empty window never time-triggers).
    """

    count_ratio: float
    """count / max_event, clamped to [0, 1]."""
    time_ratio: float
    """Seconds since the window opened / max_time, clamped to [0, 1]; 0 while empty."""
    eta_seconds: float | None
    """Seconds until the next trigger at the current rate."""
    winner: Winner | None
    """Which threshold is expected to fire first."""
    elapsed_seconds: float
    """Seconds since the window opened (0 while empty)."""


def _clamp(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(max(value, 0.0), 1.0)


def window_progress(
    count: int, max_event: int, opened_at_ms: int | None, max_time: float, rate: float, now_ms: int
) -> Progress:
    """Progress of an open window towards its count and time thresholds.

    Args:
        count: events in the open window.
        max_event: the count threshold (> 0).
        opened_at_ms: when the window opened (epoch ms), ``None`` while it is empty.
        max_time: the time threshold in seconds (> 0).
        rate: current counting rate in events per second (0 when idle or paused).
        now_ms: the clock, epoch ms.

    With an empty window and a positive rate, the window opens at once: the count threshold
    wins if ``max_event / rate`` is shorter than ``max_time``, else the time threshold does.
    """
    max_event = max(int(max_event), 1)
    max_time = max(float(max_time), 1e-9)
    rate = max(float(rate), 0.0) if math.isfinite(rate) else 0.0
    count_ratio = _clamp(count / max_event)
    remaining = max(max_event - count, 0)
    count_eta = remaining / rate if rate > 0 else math.inf
    if remaining == 0:
        count_eta = 0.0

    if opened_at_ms is None and count <= 0:
        if rate <= 0:
            return Progress(count_ratio, 0.0, None, None, 0.0)
        time_eta = max_time
        elapsed = 0.0
    else:
        # A count without an opening time should not happen; treat the window as just opened.
        elapsed = max((now_ms - opened_at_ms) / 1000.0, 0.0) if opened_at_ms is not None else 0.0
        time_eta = max(max_time - elapsed, 0.0)
    time_ratio = _clamp(elapsed / max_time)

    if count_eta < time_eta:
        return Progress(count_ratio, time_ratio, count_eta, Winner.COUNT, elapsed)
    return Progress(count_ratio, time_ratio, time_eta, Winner.TIME, elapsed)


__all__ = ["Progress", "Winner", "window_progress"]
