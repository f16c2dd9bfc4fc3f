"""What one instance reports of its consumers (the heartbeat), and the rules that turn reports
into a consumer's state and lag.

An :class:`InstanceSnapshot` is built once per status interval by the engine and published to
Redis as the instance's heartbeat (and to in-process listeners: the console). It holds what only
that instance knows: its runners' state, owned partitions, rate, DLQ counts, processor stalls.
The fleet-wide status every face reads (:class:`~kafkaconsole.engine.fleet_status.ConsumerStatus`)
is built from these reports plus the shared Redis state by
:meth:`~kafkaconsole.engine.fleet.Fleet.read`. The derivations both sides need (state, lag,
the last trigger) are the functions and constructors here, and nowhere else.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from kafkaconsole.engine.records import HistoryEntry


class ConsumerState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    REBALANCING = "rebalancing"
    ERROR = "error"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class PartitionSnapshot:
    partition: int
    position: int | None
    highwater: int | None
    lag: int | None
    time_lag_seconds: float | None = None
    """Age of the oldest unconsumed event (0 when caught up, None when unknown)."""
    oldest_ts_ms: int | None = None
    """Timestamp (ms) of the oldest unconsumed event, or a lower bound (None: caught up)."""
    topic: str = ""
    """The partition's topic (a consumer may read several)."""


@dataclass(frozen=True, slots=True)
class TriggerSummary:
    window_id: int
    reason: str
    count: int
    closed_at_ms: int
    status: str  # run status (pending until dispatched)
    replay: bool = False  # it holds events read again after a seek back

    @classmethod
    def of(cls, entry: HistoryEntry, run: dict[str, Any]) -> TriggerSummary:
        """A history entry and its run (as :func:`~kafkaconsole.engine.records.stored_run`)."""
        return cls(
            entry.window_id,
            entry.reason,
            entry.count,
            entry.closed_at_ms,
            str(run.get("status", "pending")),
            entry.replay,
        )

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    """An alert rule firing for a consumer (the console shows a badge on its row)."""

    alert: str
    channel: str
    message: str
    since_ms: int
    value: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ConsumerSnapshot:
    consumer_id: str
    kafka_topic: str
    pipeline_name: str
    state: ConsumerState
    count: int
    max_event: int
    max_time: float
    window_id: int
    window_opened_at_ms: int | None
    total: int
    errors: int
    rate: float
    lag: int | None
    partitions: tuple[PartitionSnapshot, ...] = ()
    last_trigger: TriggerSummary | None = None
    last_error: str | None = None
    dlq: int = 0
    dlq_refused: int = 0  # bad events even the DLQ refused: recorded in Redis and skipped
    breaker: dict[str, Any] | None = None  # the pipeline's circuit breaker, as dispatching sees it
    time_lag_seconds: float | None = None  # oldest unconsumed event of this instance's partitions
    redis_state_losses: int = 0  # times this instance found Redis had lost counting state
    # end offset of every partition of the topics read, owned here or not, as (topic,
    # partition, offset): the fleet measures the lag of partitions no instance owns against
    # Redis's stored offsets
    topic_end_offsets: tuple[tuple[str, int, int], ...] = ()
    processor_stall: str | None = None  # what holds the processor hook up (engine.processing)
    # health, fleet-wide (kafkaconsole.engine.health): the same on every instance
    verdict: str | None = None
    verdict_reason: str | None = None
    verdict_since_ms: int | None = None
    alerts: tuple[ActiveAlert, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = str(self.state)
        d["last_trigger"] = self.last_trigger.to_json_dict() if self.last_trigger else None
        return d


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    instance_id: str
    host: str
    pid: int
    started_at_ms: int
    taken_at_ms: int
    redis_ok: bool
    kafka_ok: bool
    consumers: tuple[ConsumerSnapshot, ...] = ()
    task_failures: tuple[str, ...] = ()  # background tasks that failed lately (restarted)
    # brokers this instance saw in the cluster's metadata that are gone from it now (dead or
    # fenced: their partitions moved to the others), as "broker ID (host:port)"
    kafka_missing: tuple[str, ...] = ()
    # Redis connection pools whose commands waited out for a free connection lately (why)
    redis_pool: tuple[str, ...] = ()
    # consumers it runs that were defined at runtime, and runtime definitions its file overrides
    runtime_consumers: tuple[str, ...] = ()
    runtime_clashes: tuple[str, ...] = ()
    # what this release does that an older one in the same fleet may not (a seek is refused
    # while an instance running the consumer does not follow seeks)
    features: tuple[str, ...] = ("seek",)

    def consumer(self, consumer_id: str) -> ConsumerSnapshot | None:
        for c in self.consumers:
            if c.consumer_id == consumer_id:
                return c
        return None

    def to_json_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "consumers"}
        d["consumers"] = [c.to_json_dict() for c in self.consumers]
        return d


# ---- the rules: a consumer's state and lag -----------------------------------------------------


def partition_lag(highwater: int | None, position: int | None) -> int | None:
    """A partition's lag: events between the next offset to consume and the end (None when
    either is unknown)."""
    if highwater is None or position is None:
        return None
    return max(highwater - position, 0)


def consumer_lag(partition_lags: Iterable[int | None]) -> int | None:
    """A consumer's lag: the sum of its partitions' known lags (0 when it has partitions but
    none is known yet; None when it has none)."""
    lags = list(partition_lags)
    known = [lag for lag in lags if lag is not None]
    return sum(known) if known else (0 if lags else None)


def instance_state(runner: ConsumerState, paused: bool) -> ConsumerState:
    """The state an instance reports: its runner's, shown paused once the fleet-wide pause flag
    is set (the runner keeps polling, so it still says running)."""
    if paused and runner in (ConsumerState.RUNNING, ConsumerState.STARTING):
        return ConsumerState.PAUSED
    return runner


def fleet_state(paused: bool, reported: Sequence[str]) -> str:
    """The state of a consumer across the fleet from the pause flag and the states its live
    instances report: paused, stopped (no live instance runs it), error or running."""
    if paused:
        return "paused"
    if not reported or all(state == "stopped" for state in reported):
        return "stopped"
    if any(state == "error" for state in reported):
        return "error"
    return "running"


def shown_state(local: str | None, fleet: str | None) -> str:
    """The state a console shows: this instance's, corrected by the fleet's (pause is
    fleet-wide, and a consumer whose partitions all live on other instances runs there)."""
    if fleet == "paused":
        return "paused"
    if local is None:
        return fleet if fleet is not None else "starting"
    if local == "starting" and fleet in ("running", "error"):
        return fleet
    return local


@dataclass
class RateMeter:
    """Events per second over a sliding window of a few seconds."""

    span: float = 5.0
    clock: Any = time.monotonic
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, n: int) -> None:
        if n:
            self._samples.append((self.clock(), n))

    def rate(self) -> float:
        now = self.clock()
        while self._samples and now - self._samples[0][0] > self.span:
            self._samples.popleft()
        if not self._samples:
            return 0.0
        return sum(n for _, n in self._samples) / self.span
