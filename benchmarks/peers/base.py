"""What every peer shares: its spec on argv, its result on stdout, peak RSS (stdlib only)."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

Spec = dict[str, Any]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ends_of(spec: Spec) -> dict[int, int]:
    return {int(p): int(e) for p, e in spec["ends"].items()}


class Tracker:
    """Times a peer from its first processed record until every partition reached its end
    (or, with ``limit``, until it processed that many records)."""

    def __init__(self, ends: dict[int, int], limit: int = 0) -> None:
        self.ends = ends
        self.limit = limit
        self.left = {p for p, e in ends.items() if e > 0}
        self.t0: float | None = None
        self.seconds: float | None = None
        self.n = 0

    def seen(self, partition: int, offset: int, count: int = 1) -> bool:
        """Record ``count`` records up to ``offset`` of ``partition``; True once all are in."""
        if self.t0 is None:
            self.t0 = time.perf_counter()
        self.n += count
        if self.limit and self.n >= self.limit:
            self.seconds = time.perf_counter() - self.t0
            return True
        if offset + 1 >= self.ends.get(partition, 0) and partition in self.left:
            self.left.discard(partition)
            if not self.left:
                self.seconds = time.perf_counter() - self.t0
                return True
        return False

    def result(self, **extra: Any) -> dict[str, Any]:
        assert self.seconds is not None, "the peer stopped before the end of the topic"
        events = self.n if self.limit else sum(self.ends.values())
        return {
            "events": events,
            "seconds": self.seconds,
            "eps": events / self.seconds,
            "rss_mb": rss_mb(),
            **extra,
        }


def main(run: Callable[[Spec], dict[str, Any]]) -> None:
    spec: Spec = json.loads(sys.argv[1])
    result = run(spec)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
