"""Health verdicts and time lag: pure maths over samples, with the clock passed in.

Lag monitors such as Burrow judge a consumer group from a sliding window of offsets. kafkaconsole
sees more than offsets (windows, counts, pipeline runs, pauses), so each consumer gets one word
and a reason in words: :func:`verdict` reads a window of :class:`HealthSample` (one a second,
built from the fleet view: every heartbeat plus the shared Redis state, so every instance and
the CLI judge alike) and returns a :class:`Verdict`. :func:`metrics` gives the numbers that
metric alert rules compare. Nothing here does I/O or reads a clock: ``now`` is an argument.

The checks, most severe first (the first that holds wins):

- ``stopped``: no live instance runs the consumer, it stopped on an error, or no partition has
  been owned for ``stall_after`` seconds;
- ``paused``: paused by an operator (who and since when);
- ``topic-recreated``: a partition's topic ends below what was counted (deleted and created
  again) and, with ``on_topic_reset = "wait"``, counts nothing until ``kafkaconsole consumer
  accept-reset ID``;
- ``stalled``: not paused, and the processor hook has held one event for over half its
  ``processor_timeout`` (or every hung-call slot is taken), or events waiting (lag > 0) and a
  partition's position unchanged for ``stall_after`` seconds;
- ``pipeline-failing``: the last ``failing_runs`` runs failed, or the circuit breaker is open;
- ``pipeline-backlog``: more than ``backlog_windows`` closed windows wait for their pipeline
  run, or the oldest of them closed more than ``backlog_age`` seconds ago (or the backlog
  reached the consumer's ``max_backlog``, so the waiting windows run coalesced);
- ``window-stuck``: events read for ``stuck_after`` seconds and none counted (all filtered or
  bad);
- ``lagging``: over a window of ``lagging_intervals`` reports the lag never reached 0 and
  grew at every step; it clears only once the lag is 0 or shrank over the window
  (hysteresis: jitter neither raises nor clears it);
- ``trigger-storm``: more than ``storm_per_minute`` triggers a minute over ``storm_period``;
- ``ok``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from kafkaconsole.config.models import MonitoringConfig

if TYPE_CHECKING:
    from kafkaconsole.engine.fleet_status import ConsumerStatus


class VerdictName(StrEnum):
    OK = "ok"
    PAUSED = "paused"
    LAGGING = "lagging"
    STALLED = "stalled"
    STOPPED = "stopped"
    WINDOW_STUCK = "window-stuck"
    PIPELINE_FAILING = "pipeline-failing"
    PIPELINE_BACKLOG = "pipeline-backlog"
    TRIGGER_STORM = "trigger-storm"
    TOPIC_RECREATED = "topic-recreated"


@dataclass(frozen=True, slots=True)
class Verdict:
    name: VerdictName
    reason: str

    @property
    def ok(self) -> bool:
        return self.name == VerdictName.OK


@dataclass(frozen=True, slots=True)
class PartitionPoint:
    """One partition in a sample: its fetch position and lag as its owner last reported."""

    partition: int
    position: int | None
    lag: int | None
    topic: str = ""
    """The partition's topic (a consumer may read several)."""

    @property
    def key(self) -> tuple[str, int]:
        return self.topic, self.partition


@dataclass(frozen=True, slots=True)
class HealthSample:
    """What the fleet said about one consumer at time ``t`` (seconds, the monitor's clock)."""

    t: float
    observed_ms: int | None = None
    """Newest heartbeat behind the sample: equal values mean nothing new was reported."""
    live: bool = True
    """A live instance runs the consumer (a fresh heartbeat lists it)."""
    state: str = "running"
    """The fleet state: running | paused | stopped | error."""
    paused: bool = False
    paused_by: str | None = None
    paused_at_ms: int | None = None
    last_error: str | None = None
    processor_stall: str | None = None
    """What holds the consumer's processor hook up (an event over time, hung calls)."""
    lag: int | None = None
    time_lag_seconds: float | None = None
    rate: float = 0.0
    partitions: tuple[PartitionPoint, ...] = ()
    total: int = 0
    """Events counted since the beginning (fleet-wide)."""
    filtered: int = 0
    skipped: int = 0
    """Records skipped on purpose (tombstones...): read, never counted, yet no sign of a fault."""
    errors: int = 0
    windows: int = 0
    """Windows closed since the beginning (fleet-wide)."""
    runs: tuple[str, ...] = ()
    """Final statuses of the most recent pipeline runs, newest first."""
    run_error: str | None = None
    """The error of the newest failed run."""
    breaker_state: str | None = None
    breaker_failures: int = 0
    backlog: int = 0
    """Closed windows waiting for their pipeline run."""
    backlog_age_seconds: float | None = None
    """How long the oldest of them has waited."""
    max_backlog: int | None = None
    topic_resets: tuple[str, ...] = ()
    """Partitions of a re-created topic waiting for accept-reset, as ``topic[partition]``."""


def sample_from_status(
    c: ConsumerStatus,
    t: float,
    *,
    runs: tuple[str, ...] = (),
    run_error: str | None = None,
    breaker_state: str | None = None,
    breaker_failures: int = 0,
) -> HealthSample:
    """A sample from one consumer of the fleet's status (:meth:`Fleet.read`)."""
    return HealthSample(
        t=t,
        observed_ms=c.reported_at_ms,
        live=bool(c.instances),
        state=c.state,
        paused=c.state == "paused",
        paused_by=c.paused_by,
        paused_at_ms=c.paused_at_ms,
        last_error=c.last_error,
        processor_stall=c.processor_stall,
        lag=c.lag,
        time_lag_seconds=c.time_lag_seconds,
        rate=c.rate,
        partitions=tuple(
            PartitionPoint(p.partition, p.position, p.lag, p.topic or "") for p in c.partitions
        ),
        total=c.total,
        filtered=c.filtered,
        skipped=c.skipped,
        errors=c.errors,
        windows=c.windows,
        runs=runs,
        run_error=run_error,
        breaker_state=breaker_state,
        breaker_failures=breaker_failures,
        backlog=c.backlog,
        backlog_age_seconds=c.backlog_age_seconds,
        max_backlog=c.max_backlog,
        topic_resets=tuple(f"{r.topic}[{r.partition}]" for r in c.topic_resets),
    )


def fleet_verdict(
    instant: Verdict, reported: Mapping[str, Any] | None
) -> tuple[str, str | None, int | None]:
    """A consumer's verdict as the fleet shows it (name, reason, since in epoch ms).

    It is the one the instances compute over their sliding window of fleet samples (``reported``:
    the newest heartbeat's view of the consumer); facts that need no history win at once
    (``instant``, judged from the current status alone): no live instance is ``stopped``, a
    pause (or its end) shows without waiting for a heartbeat.
    """
    judged = reported.get("verdict") if reported is not None else None
    immediate = (VerdictName.STOPPED, VerdictName.PAUSED)
    if reported is None or not judged or instant.name in immediate or judged == "paused":
        return str(instant.name), instant.reason, None
    since = reported.get("verdict_since_ms")
    return str(judged), reported.get("verdict_reason"), int(since) if since is not None else None


# ---- time lag ---------------------------------------------------------------------------------


def time_lag_seconds(lag: int | None, oldest_ts_ms: int | None, now_ms: int) -> float | None:
    """Age in seconds of the oldest unconsumed event of a partition.

    ``lag`` is highwater - position; ``oldest_ts_ms`` the timestamp of the oldest event not yet
    consumed (or its upper bound, see :class:`~kafkaconsole.engine.consumer.ConsumerRunner`).
    0 when caught up, None when unknown.
    """
    if lag is None:
        return None
    if lag <= 0:
        return 0.0
    if oldest_ts_ms is None:
        return None
    return round(max(now_ms - oldest_ts_ms, 0) / 1000, 3)


def consumer_time_lag(partition_lags: Sequence[float | None]) -> float | None:
    """A consumer's time lag: its oldest partition's (None when no partition's is known)."""
    known = [t for t in partition_lags if t is not None]
    return max(known) if known else None


# ---- the verdict ------------------------------------------------------------------------------


def _iso(ms: int | None) -> str:
    if ms is None:
        return "an unknown time"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _span(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def covering(samples: Sequence[HealthSample], seconds: float, now: float) -> list[HealthSample]:
    """The samples of the last ``seconds`` (from the newest one at least that old), or ``[]``
    while the samples do not reach that far back yet."""
    start = None
    for i in range(len(samples) - 1, -1, -1):
        if samples[i].t <= now - seconds + 1e-9:
            start = i
            break
    return [samples[i] for i in range(start, len(samples))] if start is not None else []


def distinct(samples: Sequence[HealthSample]) -> list[HealthSample]:
    """Samples with a new report each: of a run with the same ``observed_ms``, the last."""
    out: list[HealthSample] = []
    for s in samples:
        if out and s.observed_ms is not None and out[-1].observed_ms == s.observed_ms:
            out[-1] = s
        else:
            out.append(s)
    return out


def _stopped(samples: Sequence[HealthSample], cfg: MonitoringConfig, now: float) -> str | None:
    last = samples[-1]
    paused = f" (and paused by {last.paused_by or 'someone'})" if last.paused else ""
    if not last.live:
        return f"no live instance runs it{paused}"
    if last.state == "error":
        return f"stopped on an error: {last.last_error or 'unknown error'}"
    if last.state == "stopped":
        return f"every instance running it has stopped{paused}"
    window = covering(samples, cfg.stall_after, now)
    if window and all(not s.partitions for s in window):
        return (
            f"no live instance has owned a partition for {_span(now - window[0].t)} "
            "(does the topic exist? are there more instances than partitions?)"
        )
    return None


def _paused(last: HealthSample, now: float) -> str | None:
    if not last.paused:
        return None
    since = ""
    if last.paused_at_ms is not None:
        since = f" since {_iso(last.paused_at_ms)} ({_span(now - last.paused_at_ms / 1000)} ago)"
    return f"paused by {last.paused_by or 'an unknown operator'}{since}"


def _stalled(samples: Sequence[HealthSample], cfg: MonitoringConfig, now: float) -> str | None:
    last = samples[-1]
    if last.processor_stall and not last.paused and last.live:
        return last.processor_stall
    window = covering(samples, cfg.stall_after, now)
    if not window or any(s.paused or not s.live for s in window):
        return None
    last = window[-1]
    stuck: list[PartitionPoint] = []
    for p in last.partitions:
        if not p.lag or p.position is None:
            continue
        held = True
        for s in window:
            q = next((x for x in s.partitions if x.key == p.key), None)
            if q is None or not q.lag or q.position != p.position:
                held = False
                break
        if held:
            stuck.append(p)
    if not stuck:
        return None
    first = stuck[0]
    since = window[0].t
    for s in reversed(samples):  # how long it has held: at least stall_after, maybe more
        q = next((x for x in s.partitions if x.key == first.key), None)
        if s.paused or q is None or not q.lag or q.position != first.position:
            break
        since = s.t
    more = f" (and {len(stuck) - 1} more partition(s))" if len(stuck) > 1 else ""
    many_topics = len({p.topic for p in last.partitions}) > 1
    where = f"{first.topic} " if many_topics else ""
    return (
        f"{where}partition {first.partition} has not moved from offset {first.position} for "
        f"{_span(now - since)} with {first.lag} event(s) waiting{more}"
    )


def _recreated(last: HealthSample) -> str:
    parts = ", ".join(last.topic_resets)
    return (
        f"{parts}: the topic ends below what was counted (deleted and created again); "
        "counting nothing there until `kafkaconsole consumer accept-reset ID`"
    )


def _failing(last: HealthSample, cfg: MonitoringConfig) -> str | None:
    error = f": {last.run_error}" if last.run_error else ""
    if last.breaker_state in ("open", "half-open"):
        return (
            f"circuit breaker {last.breaker_state} after {last.breaker_failures} consecutive "
            f"failed run(s){error}"
        )
    k = cfg.failing_runs
    if len(last.runs) >= k and all(r == "failed" for r in last.runs[:k]):
        return f"the last {k} pipeline run(s) failed{error}"
    return None


def _backlog(last: HealthSample, cfg: MonitoringConfig) -> str | None:
    age = last.backlog_age_seconds
    oldest = f", the oldest waiting {_span(age)}" if age is not None else ""
    if last.max_backlog is not None and last.backlog >= last.max_backlog:
        return (
            f"{last.backlog} window(s) wait for their pipeline run{oldest}: max_backlog "
            f"({last.max_backlog}) reached, they run as one coalesced run"
        )
    if last.backlog > cfg.backlog_windows:
        return (
            f"{last.backlog} window(s) wait for their pipeline run{oldest} "
            f"(more than backlog_windows = {cfg.backlog_windows})"
        )
    if age is not None and age > cfg.backlog_age:
        return (
            f"the oldest of {last.backlog} window(s) waiting for its pipeline run closed "
            f"{_span(age)} ago (more than backlog_age = {_span(cfg.backlog_age)})"
        )
    return None


def _read(first: HealthSample, last: HealthSample) -> int:
    """Events read between two samples (position moves of the partitions both know)."""
    before = {p.key: p.position for p in first.partitions if p.position is not None}
    moved = 0
    for p in last.partitions:
        start = before.get(p.key)
        if start is not None and p.position is not None and p.position > start:
            moved += p.position - start
    return moved


def _window_stuck(samples: Sequence[HealthSample], cfg: MonitoringConfig, now: float) -> str | None:
    window = covering(samples, cfg.stuck_after, now)
    if not window or any(s.paused for s in window):
        return None
    first, last = window[0], window[-1]
    # records skipped on purpose (a stream of tombstones after deletes) are not a stuck window
    read = _read(first, last) - (last.skipped - first.skipped)
    if read <= 0 or last.total > first.total:
        return None
    return (
        f"{read} event(s) read in the last {_span(now - first.t)}, none counted "
        f"({last.filtered - first.filtered} filtered, {last.errors - first.errors} bad)"
    )


#: lagging: over the window the lag must grow by more than each of these: this fraction of
#: its value at the window's start, what the consumer counts in this many seconds, and this
#: many events. Below that, a lag wandering up is the jitter of a consumer that keeps up.
LAG_GROWTH_MIN = 0.25
LAG_GROWTH_SECONDS = 0.5
LAG_GROWTH_EVENTS = 10


def _lagging(
    samples: Sequence[HealthSample], cfg: MonitoringConfig, was_lagging: bool = False
) -> str | None:
    """Lag judged over a window of ``lagging_intervals`` reports, with hysteresis (as Burrow
    evaluates a window of offsets, never two samples).

    Entering: the lag never reached 0 in the window (a consumer that catches up now and then
    keeps up: its jitter is not lagging), it grew at every step, and by more than the noise
    (:data:`LAG_GROWTH_MIN` of where it started, :data:`LAG_GROWTH_SECONDS` of the consumer's
    rate, :data:`LAG_GROWTH_EVENTS`). Leaving (once lagging):
    only when the lag is back to 0 or smaller at the end of the window than at its start; a
    dip within a growing lag does not clear it.
    """
    points = distinct(samples)[-(cfg.lagging_intervals + 1) :]
    if len(points) < cfg.lagging_intervals + 1 or any(s.paused for s in points):
        return None
    lags = [s.lag for s in points]
    if any(lag is None for lag in lags):
        return None
    values = [int(lag or 0) for lag in lags]
    span = _span(points[-1].t - points[0].t)
    if was_lagging:
        if values[-1] == 0 or values[-1] < values[0]:
            return None
        if values[-1] == values[0]:
            return f"lag not shrinking: {values[-1]} now, {values[0]} {span} ago"
        return (
            f"lag grew from {values[0]} to {values[-1]} over the last "
            f"{cfg.lagging_intervals} interval(s) ({span})"
        )
    if min(values) == 0 or any(b < a for a, b in pairwise(values)):
        return None
    rate = min(s.rate for s in points)
    noise = max(values[0] * LAG_GROWTH_MIN, rate * LAG_GROWTH_SECONDS, LAG_GROWTH_EVENTS)
    if values[-1] - values[0] <= noise:
        return None  # a steady lag wandering up a little is jitter, not falling behind
    return (
        f"lag grew from {values[0]} to {values[-1]} over the last {cfg.lagging_intervals} "
        f"interval(s) ({span})"
    )


def triggers_per_minute(
    samples: Sequence[HealthSample], cfg: MonitoringConfig, now: float
) -> float | None:
    """Triggers a minute over ``storm_period`` (None until the samples reach that far back)."""
    window = covering(samples, cfg.storm_period, now)
    if not window:
        return None
    return max(window[-1].windows - window[0].windows, 0) * 60.0 / cfg.storm_period


def _storm(samples: Sequence[HealthSample], cfg: MonitoringConfig, now: float) -> str | None:
    rate = triggers_per_minute(samples, cfg, now)
    if rate is None or rate <= cfg.storm_per_minute:
        return None
    window = covering(samples, cfg.storm_period, now)
    n = window[-1].windows - window[0].windows
    return (
        f"{n} trigger(s) in the last {_span(cfg.storm_period)} ({rate:.0f}/min, "
        f"limit {cfg.storm_per_minute:g}/min)"
    )


def verdict(
    samples: Sequence[HealthSample],
    cfg: MonitoringConfig,
    now: float,
    previous: Verdict | None = None,
) -> Verdict:
    """The consumer's verdict from its samples (oldest first; the newest is the present).

    ``previous`` is the verdict of the last judgement: ``lagging`` clears with hysteresis
    (see :func:`_lagging`)."""
    if not samples:
        return Verdict(VerdictName.STOPPED, "no status sample yet")
    last = samples[-1]
    reason = _stopped(samples, cfg, now)
    if reason:
        return Verdict(VerdictName.STOPPED, reason)
    reason = _paused(last, now)
    if reason:
        return Verdict(VerdictName.PAUSED, reason)
    if last.topic_resets:
        return Verdict(VerdictName.TOPIC_RECREATED, _recreated(last))
    reason = _stalled(samples, cfg, now)
    if reason:
        return Verdict(VerdictName.STALLED, reason)
    reason = _failing(last, cfg)
    if reason:
        return Verdict(VerdictName.PIPELINE_FAILING, reason)
    reason = _backlog(last, cfg)
    if reason:
        return Verdict(VerdictName.PIPELINE_BACKLOG, reason)
    reason = _window_stuck(samples, cfg, now)
    if reason:
        return Verdict(VerdictName.WINDOW_STUCK, reason)
    was_lagging = previous is not None and previous.name == VerdictName.LAGGING
    reason = _lagging(samples, cfg, was_lagging)
    if reason:
        return Verdict(VerdictName.LAGGING, reason)
    reason = _storm(samples, cfg, now)
    if reason:
        return Verdict(VerdictName.TRIGGER_STORM, reason)
    if last.lag is None:
        return Verdict(VerdictName.OK, "no lag reported yet")
    return Verdict(VerdictName.OK, "consuming normally" if last.lag else "caught up")


def lookback(cfg: MonitoringConfig) -> float:
    """Seconds of samples the verdicts look back over (before that, some cannot hold yet)."""
    return max(
        cfg.stall_after,
        cfg.stuck_after,
        cfg.storm_period,
        cfg.lagging_intervals * max(cfg.sample_interval, 1.0),
    )


def samples_to_keep(cfg: MonitoringConfig) -> int:
    """Length of the per-consumer sample window."""
    return math.ceil(lookback(cfg) / cfg.sample_interval) + 2


def failed_runs(sample: HealthSample) -> int:
    """Consecutive failed runs, newest first."""
    n = 0
    for status in sample.runs:
        if status != "failed":
            break
        n += 1
    return n


def metrics(
    samples: Sequence[HealthSample], cfg: MonitoringConfig, now: float
) -> Mapping[str, float | None]:
    """The numbers metric alert rules compare (None when unknown)."""
    if not samples:
        return {}
    last = samples[-1]
    return {
        "lag": float(last.lag) if last.lag is not None else None,
        "time_lag_seconds": last.time_lag_seconds,
        "rate": last.rate if last.live else 0.0,
        "triggers_per_minute": triggers_per_minute(samples, cfg, now),
        "failed_runs": float(failed_runs(last)),
        "backlog": float(last.backlog),
        "backlog_age_seconds": last.backlog_age_seconds or 0.0,
    }


__all__ = [
    "HealthSample",
    "PartitionPoint",
    "Verdict",
    "VerdictName",
    "consumer_time_lag",
    "covering",
    "distinct",
    "failed_runs",
    "fleet_verdict",
    "lookback",
    "metrics",
    "sample_from_status",
    "samples_to_keep",
    "time_lag_seconds",
    "triggers_per_minute",
    "verdict",
]
