"""A circuit breaker per consumer pipeline: stop calling a pipeline that keeps failing.

After ``threshold`` consecutive failed runs the circuit *opens*: triggers are held back (they
wait in the dispatch stream, nothing is lost) until ``cooldown`` seconds have passed. Then it
is *half-open*: exactly one probe run is let through. A probe that succeeds closes the circuit;
one that fails opens it again for another cooldown.

Pure logic with an injected clock (epoch seconds, so ``opened_at`` means the same thing to every
process that reads it from Redis). The dispatcher owns one breaker and persists its
:class:`BreakerSnapshot` so the CLI and TUI of other processes can show it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What status, CLI and TUI show about a breaker."""

    state: BreakerState
    consecutive_failures: int
    threshold: int
    cooldown: float
    opened_at: float | None = None
    """Epoch seconds the circuit last opened (None while closed)."""

    @property
    def probe_at(self) -> float | None:
        """Epoch seconds from which a probe run may go (None unless open)."""
        if self.state != BreakerState.OPEN or self.opened_at is None:
            return None
        return self.opened_at + self.cooldown

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "consecutive_failures": self.consecutive_failures,
            "threshold": self.threshold,
            "cooldown": self.cooldown,
            "opened_at": self.opened_at,
            "probe_at": self.probe_at,
        }

    def to_redis_hash(self) -> dict[str, str]:
        """Flat string fields for a Redis hash (empty string = None)."""
        return {
            key: "" if value is None else str(value) for key, value in self.to_json_dict().items()
        }

    @classmethod
    def from_redis_hash(cls, fields: Mapping[Any, Any]) -> BreakerSnapshot | None:
        """The snapshot a :meth:`to_redis_hash` wrote; None if ``fields`` holds none."""
        f = {_text(k): _text(v) for k, v in fields.items()}
        try:
            return cls(
                state=BreakerState(f["state"]),
                consecutive_failures=int(f.get("consecutive_failures") or 0),
                threshold=int(f.get("threshold") or 0),
                cooldown=float(f.get("cooldown") or 0.0),
                opened_at=float(f["opened_at"]) if f.get("opened_at") else None,
            )
        except (KeyError, ValueError):
            return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CircuitBreaker:
    """Closed -> (threshold failures) -> open -> (cooldown) -> half-open -> probe -> closed/open.

    ``threshold = 0`` disables the breaker: it never opens.
    """

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.time
    ) -> None:
        if threshold < 0:
            raise ValueError("threshold must be >= 0")
        if cooldown <= 0:
            raise ValueError("cooldown must be > 0")
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The state now (an open circuit whose cooldown has passed reads as half-open)."""
        if self._state == BreakerState.OPEN and self._cooldown_over():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def opened_at(self) -> float | None:
        return self._opened_at

    def _cooldown_over(self) -> bool:
        return self._opened_at is None or self.clock() - self._opened_at >= self.cooldown

    def allow(self) -> bool:
        """May a run start now? In half-open, True exactly once (for the probe)."""
        if self._state == BreakerState.CLOSED:
            return True
        if self._state == BreakerState.OPEN:
            if not self._cooldown_over():
                return False
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def seconds_until_allowed(self) -> float:
        """0 if :meth:`allow` may say yes now; the rest of the cooldown while open; else a
        short poll interval while a probe is still in flight."""
        if self._state == BreakerState.CLOSED:
            return 0.0
        if self._state == BreakerState.OPEN and self._opened_at is not None:
            return max(self._opened_at + self.cooldown - self.clock(), 0.0)
        return 0.0 if not self._probe_in_flight else 0.5

    def record_success(self) -> None:
        """A run succeeded (or was coalesced into a running one): close the circuit."""
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def record_failure(self) -> None:
        """A run failed after its retries."""
        self._failures += 1
        if self._state == BreakerState.HALF_OPEN or (
            self.threshold and self._failures >= self.threshold
        ):
            self._open()

    def record_neutral(self) -> None:
        """A run ended neither way (e.g. cancelled by a person): a probe may go again."""
        self._probe_in_flight = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self.clock()
        self._probe_in_flight = False

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(
            state=self.state,
            consecutive_failures=self._failures,
            threshold=self.threshold,
            cooldown=self.cooldown,
            opened_at=self._opened_at,
        )

    def restore(self, snap: BreakerSnapshot) -> None:
        """Take over the state another instance persisted (a half-open probe whose fate is
        unknown counts as open: its trigger will be delivered again as the next probe)."""
        self._failures = max(snap.consecutive_failures, 0)
        self._probe_in_flight = False
        if snap.state == BreakerState.CLOSED:
            self._state, self._opened_at = BreakerState.CLOSED, None
        else:
            self._state = BreakerState.OPEN
            self._opened_at = snap.opened_at if snap.opened_at is not None else self.clock()

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.state} failures={self._failures}/{self.threshold} "
            f"cooldown={self.cooldown:g}s>"
        )
