"""Trigger records and pipeline run results: the data that crosses every boundary.

A :class:`TriggerRecord` is one closed window. Its JSON form (``to_json_dict``) is what every
pipeline kind receives (HTTP body, command stdin, python argument, kafka value, Airflow conf).
A :class:`RunResult` is what a pipeline reports back and what history shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson


def iso_ms(epoch_ms: int | None) -> str | None:
    """ISO 8601 UTC with milliseconds, or None."""
    if epoch_ms is None:
        return None
    return (
        datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class TriggerReason(StrEnum):
    COUNT = "count"
    TIME = "time"
    MANUAL = "manual"
    SEEK = "seek"  # closed by an operator's seek (kafkaconsole seek --window close)


class RunStatus(StrEnum):
    PENDING = "pending"  # recorded, not yet dispatched
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COALESCED = "coalesced"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.COALESCED,
            RunStatus.CANCELLED,
        )


@dataclass(frozen=True, slots=True)
class OffsetRange:
    topic: str
    partition: int
    first: int
    last: int

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "first": self.first,
            "last": self.last,
        }


@dataclass(frozen=True, slots=True)
class TriggerRecord:
    consumer_id: str
    pipeline_name: str
    connection_id: str
    job_type: str
    window_id: int
    reason: TriggerReason
    count: int
    opened_at_ms: int | None
    closed_at_ms: int
    offsets: tuple[OffsetRange, ...] = ()
    windows: tuple[TriggerRecord, ...] = ()
    """A coalesced run's windows, oldest first (empty: a run of this one window)."""
    replay: bool = False
    """The window holds events read again after a seek back (``"replay": true`` in JSON)."""

    @property
    def idempotency_key(self) -> str:
        """``<consumer_id>:<window_id>``; a coalesced run's is
        ``<consumer_id>:<first window id>-<last window id>``."""
        if self.windows:
            return f"{self.consumer_id}:{self.windows[0].window_id}-{self.windows[-1].window_id}"
        return f"{self.consumer_id}:{self.window_id}"

    @classmethod
    def coalesced(cls, windows: Sequence[TriggerRecord]) -> TriggerRecord:
        """One run of several closed windows (oldest first): window id, reason and closing
        time of the last, opening time of the first, the counts summed, per partition the
        offset range from the first offset to the last, and every window listed."""
        first, last = windows[0], windows[-1]
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for w in windows:
            for r in w.offsets:
                lo, hi = spans.get((r.topic, r.partition), (r.first, r.last))
                spans[(r.topic, r.partition)] = (min(lo, r.first), max(hi, r.last))
        return replace(
            last,
            count=sum(w.count for w in windows),
            opened_at_ms=first.opened_at_ms,
            offsets=tuple(OffsetRange(t, p, lo, hi) for (t, p), (lo, hi) in sorted(spans.items())),
            windows=tuple(windows),
            replay=any(w.replay for w in windows),
        )

    def to_json_dict(self, events: list[Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "consumer_id": self.consumer_id,
            "pipeline_name": self.pipeline_name,
            "connection_id": self.connection_id,
            "job_type": self.job_type,
            "window_id": self.window_id,
            "idempotency_key": self.idempotency_key,
            "reason": str(self.reason),
            "count": self.count,
            "opened_at": iso_ms(self.opened_at_ms),
            "closed_at": iso_ms(self.closed_at_ms),
            "offsets": [r.to_json_dict() for r in self.offsets],
        }
        if self.replay:
            body["replay"] = True
        if self.windows:
            body["coalesced"] = True
            body["windows"] = [
                {
                    "window_id": w.window_id,
                    "reason": str(w.reason),
                    "count": w.count,
                    "opened_at": iso_ms(w.opened_at_ms),
                    "closed_at": iso_ms(w.closed_at_ms),
                    "offsets": [r.to_json_dict() for r in w.offsets],
                }
                for w in self.windows
            ]
        if events is not None:
            body["events"] = events
        return body


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A closed window as the counting script appends it to the history (and dispatch)
    stream: the one reading of those fields, for the engine, the fleet and the dispatcher."""

    window_id: int
    reason: str
    count: int
    opened_at_ms: int | None
    closed_at_ms: int
    offsets: list[dict[str, Any]]
    """``[{topic, partition, first, last}]`` as stored."""
    replay: bool = False
    """It holds events read again after a seek back."""

    @classmethod
    def parse(cls, fields: Mapping[Any, Any]) -> HistoryEntry:
        f = {_text(k): _text(v) for k, v in fields.items()}
        opened = f.get("opened_at") or ""
        return cls(
            window_id=int(f["window_id"]),
            reason=f["reason"],
            count=int(f["count"]),
            opened_at_ms=int(opened) if opened else None,
            closed_at_ms=int(f["closed_at"]),
            offsets=orjson.loads(f.get("offsets") or "[]"),
            replay=f.get("replay") == "1",
        )


def stored_run(raw: bytes | str | None) -> dict[str, Any]:
    """A window's run as the ``runs`` hash holds it (``{"status": "pending"}`` until one is
    written)."""
    return orjson.loads(raw) if raw else {"status": "pending"}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of one pipeline run (after retries)."""

    status: RunStatus
    run_id: str | None = None
    attempts: int = 1
    error: str | None = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> int | None:
        if self.started_at_ms is None or self.finished_at_ms is None:
            return None
        return self.finished_at_ms - self.started_at_ms

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "run_id": self.run_id,
            "attempts": self.attempts,
            "error": self.error,
            "started_at": iso_ms(self.started_at_ms),
            "finished_at": iso_ms(self.finished_at_ms),
            "duration_ms": self.duration_ms,
            **({"detail": self.detail} if self.detail else {}),
        }
