"""Pipeline targets for the benchmarks: a no-op, and one that stamps when it was called."""

from __future__ import annotations

import threading
import time
from typing import Any

#: (window_id, wall-clock seconds when the pipeline was called), filled by :func:`stamp`.
STAMPS: list[tuple[int, float]] = []
_lock = threading.Lock()


def noop(record: Any) -> None:
    """The cheapest pipeline: called once per closed window, does nothing."""
    return None


def stamp(record: dict[str, Any]) -> None:
    """Record the time this window's pipeline was called (count-trigger latency)."""
    now = time.time()
    with _lock:
        STAMPS.append((int(record["window_id"]), now))
