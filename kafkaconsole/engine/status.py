"""Status snapshots: frozen dataclasses the engine publishes once a second.

The TUI, the HTTP API and the CLI never ask the engine's internals: they read these snapshots
(in-process for the TUI, through Redis for the CLI and other instances). ``to_json_dict`` is the
one JSON form shared by ``status --json``, the API and the Redis heartbeat.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


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

    def consumer(self, consumer_id: str) -> ConsumerSnapshot | None:
        for c in self.consumers:
            if c.consumer_id == consumer_id:
                return c
        return None

    def to_json_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "consumers"}
        d["consumers"] = [c.to_json_dict() for c in self.consumers]
        return d


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
