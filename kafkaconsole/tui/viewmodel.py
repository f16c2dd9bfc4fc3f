"""What the console shows, as plain dataclasses built from snapshots and fleet data.

Nothing here imports Textual or Rich, reads a clock or does I/O: builders take an
:class:`~kafkaconsole.engine.status.InstanceSnapshot`, the fleet as Redis sees it
(:class:`FleetView`), recorded rate/lag series and ``now_ms``, and return the rows the widgets
draw. So the screens can be fed fixed data (snapshot tests, the README screenshot) and the
rules (which state wins, when lag counts as growing, how numbers are shortened) are unit-tested
without a terminal.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kafkaconsole.config.models import AppConfig, ConsumerConfig
from kafkaconsole.engine.fleet_status import ConsumerStatus, FleetStatus, moment_ms
from kafkaconsole.engine.runtime_consumers import RUNTIME_MARK
from kafkaconsole.engine.status import ConsumerSnapshot, InstanceSnapshot, shown_state
from kafkaconsole.engine.thresholds import Progress, window_progress

# ---- fleet data (from Redis, through kafkaconsole.engine.fleet.Fleet) ---------------------------


def identity(text: str) -> str:
    return text


Mask = Callable[[str], str]
"""Masks secrets in engine-provided text (:func:`kafkaconsole.config.secrets.masker`)."""


@dataclass(frozen=True, slots=True)
class FleetPartition:
    partition: int
    position: int | None
    highwater: int | None
    lag: int | None
    owner: str
    time_lag_seconds: float | None = None
    """Age of the partition's oldest unconsumed event (0: caught up, None: unknown)."""
    topic: str = ""
    """The partition's topic (a consumer may read several)."""


@dataclass(frozen=True, slots=True)
class AlertView:
    """An alert rule firing for a consumer (from the fleet's Redis keys or this instance)."""

    alert: str
    channel: str
    message: str
    since_ms: int | None
    value: float | None = None


@dataclass(frozen=True, slots=True)
class FleetConsumer:
    """One consumer as every live instance reports it (heartbeats) plus its Redis state."""

    consumer_id: str
    state: str
    rate: float
    lag: int | None
    partitions: tuple[FleetPartition, ...] = ()
    instances: tuple[str, ...] = ()
    paused_by: str | None = None
    errors: int = 0
    total: int = 0
    verdict: str | None = None
    verdict_reason: str | None = None
    verdict_since_ms: int | None = None
    alerts: tuple[AlertView, ...] = ()
    time_lag_seconds: float | None = None
    time_to_trigger_seconds: float | None = None
    backlog: int = 0
    """Closed windows waiting for their pipeline run."""
    backlog_age_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class FleetView:
    instances: tuple[str, ...]
    consumers: Mapping[str, FleetConsumer]

    @classmethod
    def from_fleet(cls, status: FleetStatus) -> FleetView:
        """Build from :meth:`Fleet.read`'s typed status (what the console polls)."""
        consumers = {c.consumer_id: _fleet_consumer(c) for c in status.consumers}
        return cls(tuple(i.instance_id for i in status.instances), consumers)

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> FleetView:
        """Build from the ``status --json`` body (JSON read from elsewhere, possibly partial)."""
        consumers: dict[str, FleetConsumer] = {}
        for c in status.get("consumers", []):
            parts = tuple(
                FleetPartition(
                    int(p["partition"]),
                    p.get("position"),
                    p.get("highwater"),
                    p.get("lag"),
                    str(p.get("owner") or ""),
                    _float(p.get("time_lag_seconds")),
                    str(p.get("topic") or ""),
                )
                for p in c.get("partitions", [])
            )
            alerts = tuple(
                AlertView(
                    alert=str(a.get("alert", "?")),
                    channel=str(a.get("channel", "")),
                    message=str(a.get("message") or ""),
                    since_ms=moment_ms(a.get("since")),
                    value=_float(a.get("value")),
                )
                for a in c.get("alerts") or []
            )
            consumers[c["consumer_id"]] = FleetConsumer(
                consumer_id=c["consumer_id"],
                state=str(c.get("state", "stopped")),
                rate=float(c.get("rate") or 0.0),
                lag=c.get("lag"),
                partitions=parts,
                instances=tuple(c.get("instances", [])),
                paused_by=c.get("paused_by"),
                errors=int(c.get("errors") or 0),
                total=int(c.get("total") or 0),
                verdict=c.get("verdict"),
                verdict_reason=c.get("verdict_reason"),
                verdict_since_ms=moment_ms(c.get("verdict_since")),
                alerts=alerts,
                time_lag_seconds=_float(c.get("time_lag_seconds")),
                time_to_trigger_seconds=_float(c.get("time_to_trigger_seconds")),
                backlog=int(c.get("backlog") or 0),
                backlog_age_seconds=_float(c.get("backlog_age_seconds")),
            )
        instances = tuple(str(i["instance_id"]) for i in status.get("instances", []))
        return cls(instances, consumers)


def _fleet_consumer(c: ConsumerStatus) -> FleetConsumer:
    return FleetConsumer(
        consumer_id=c.consumer_id,
        state=c.state,
        rate=c.rate,
        lag=c.lag,
        partitions=tuple(
            FleetPartition(
                p.partition,
                p.position,
                p.highwater,
                p.lag,
                p.owner or "",
                p.time_lag_seconds,
                p.topic,
            )
            for p in c.partitions
        ),
        instances=c.instances,
        paused_by=c.paused_by,
        errors=c.errors,
        total=c.total,
        verdict=c.verdict,
        verdict_reason=c.verdict_reason,
        verdict_since_ms=c.verdict_since_ms,
        alerts=tuple(
            AlertView(a.alert, a.channel, a.message or "", a.since_ms, a.value) for a in c.alerts
        ),
        time_lag_seconds=c.time_lag_seconds,
        time_to_trigger_seconds=c.time_to_trigger_seconds,
        backlog=c.backlog,
        backlog_age_seconds=c.backlog_age_seconds,
    )


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---- recorded series (sparklines, lag trend) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    """Recent samples of one consumer, oldest first, about one per second."""

    rates: tuple[float, ...] = ()
    lags: tuple[float, ...] = ()


class SeriesRecorder:
    """Keeps the last ``keep`` samples of rate and lag per consumer, one per ``every_ms``."""

    def __init__(self, keep: int = 300, every_ms: int = 1000) -> None:
        self.keep = keep
        self.every_ms = every_ms
        self._rates: dict[str, deque[float]] = {}
        self._lags: dict[str, deque[float]] = {}
        self._last_ms: int | None = None

    def record(self, snap: InstanceSnapshot) -> bool:
        """Add a sample per consumer if ``every_ms`` passed since the last one."""
        if self._last_ms is not None and snap.taken_at_ms - self._last_ms < self.every_ms:
            return False
        self._last_ms = snap.taken_at_ms
        for c in snap.consumers:
            self._rates.setdefault(c.consumer_id, deque(maxlen=self.keep)).append(float(c.rate))
            self._lags.setdefault(c.consumer_id, deque(maxlen=self.keep)).append(float(c.lag or 0))
        return True

    def series(self, consumer_id: str) -> Series:
        return Series(
            tuple(self._rates.get(consumer_id, ())), tuple(self._lags.get(consumer_id, ()))
        )


class Trend(StrEnum):
    UP = "up"
    DOWN = "down"
    FLAT = "flat"


def lag_trend(
    lags: Sequence[float], span: int = 10, min_change: float = 100.0, min_ratio: float = 0.10
) -> Trend:
    """Whether lag grew or shrank over the last ``span`` samples.

    Small wobbles (fewer than ``min_change`` events or less than ``min_ratio`` of the earlier
    value) are flat, so a healthy consumer whose lag jitters between polls stays calm.
    """
    if len(lags) < 2:
        return Trend.FLAT
    now = lags[-1]
    then = lags[-min(span, len(lags))]
    delta = now - then
    if abs(delta) < min_change or abs(delta) < min_ratio * max(then, 1.0):
        return Trend.FLAT
    return Trend.UP if delta > 0 else Trend.DOWN


# ---- one poll's worth of data ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsoleSnapshot:
    """Everything a redraw shows, read in one poll: this instance's snapshot, the fleet and the
    recorded series. The poll posts it to the app as one message; a newer one replaces one not
    drawn yet (``seq`` orders them)."""

    seq: int
    instance: InstanceSnapshot | None
    fleet: FleetView | None
    fleet_ok: bool | None
    """False when the last fleet read failed, None before the first one answered."""
    series: Mapping[str, Series] = field(default_factory=dict)
    histories: Mapping[str, tuple[Mapping[str, Any], ...]] = field(default_factory=dict)
    """Trigger records (newest first) of the consumer whose detail view is open."""


# ---- formatting -------------------------------------------------------------------------------

NONE_TEXT = "\u2013"  # an en dash: "no value"


def fmt_count(n: float | None) -> str:
    """1234 -> "1234", 12345 -> "12.3k", 123456 -> "123k", 1234567 -> "1.2M"."""
    if n is None:
        return NONE_TEXT
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 10_000:
        return f"{sign}{n:.0f}"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{sign}{v:.1f}{unit}" if v < 100 else f"{sign}{v:.0f}{unit}"
    return f"{sign}{n:.0f}"  # pragma: no cover


def fmt_rate(rate: float | None) -> str:
    """Events per second: "0", "4.5", "312", "1.2k"."""
    if rate is None:
        return NONE_TEXT
    if rate < 10 and rate != int(rate):
        return f"{rate:.1f}"
    if rate < 1000:
        return f"{rate:.0f}"
    return fmt_count(rate)


def fmt_span(seconds: float | None) -> str:
    """A short duration: "0s", "45s", "12m", "3h", "2d"."""
    if seconds is None or not math.isfinite(seconds):
        return NONE_TEXT
    s = max(seconds, 0.0)
    if s < 100:
        return f"{s:.0f}s"
    if s < 100 * 60:
        return f"{s / 60:.0f}m"
    if s < 48 * 3600:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def fmt_clock(seconds: float | None) -> str:
    """Uptime style: "0:12:34", "2d 03:04:05"."""
    if seconds is None:
        return NONE_TEXT
    s = int(max(seconds, 0))
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if days:
        return f"{days}d {h:02d}:{m:02d}:{s:02d}"
    return f"{h}:{m:02d}:{s:02d}"


def fmt_ms(ms: int | float | None) -> str:
    """A run duration: "85ms", "1.2s", "3m"."""
    if ms is None:
        return NONE_TEXT
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return fmt_span(ms / 1000)


def fmt_offsets(offsets: Iterable[Mapping[str, Any]], limit: int = 3) -> str:
    """Offset ranges of a trigger record: "p0 0-499, p1 0-480 (+2)"; with several topics
    each names its topic: "orders p0 0-499, lines p0 0-80"."""
    offsets = list(offsets)
    many = len({o.get("topic") for o in offsets}) > 1
    items = [
        f"{o['topic'] + ' ' if many else ''}p{o['partition']} {o['first']}-{o['last']}"
        for o in offsets
    ]
    if not items:
        return NONE_TEXT
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit})" if len(items) > limit else "")


# ---- consumers table --------------------------------------------------------------------------

ACTIVE_STATES = ("running", "paused", "rebalancing", "error", "stopped", "starting")


@dataclass(frozen=True, slots=True)
class TriggerView:
    window_id: int
    reason: str
    count: int
    age_seconds: float | None
    status: str


@dataclass(frozen=True, slots=True)
class ConsumerRow:
    """One consumer as the main table shows it."""

    consumer_id: str
    topic: str
    pipeline: str
    job_type: str
    state: str
    rate: float
    lag: int | None
    lag_trend: Trend
    count: int
    max_event: int
    max_time: float
    window_id: int
    progress: Progress
    last_trigger: TriggerView | None
    errors: int
    dlq: int
    total: int
    last_error: str | None = None
    paused_by: str | None = None
    instances: tuple[str, ...] = ()
    verdict: str | None = None
    """Health verdict (kafkaconsole.engine.health): ok, paused, lagging, stalled, ..."""
    verdict_reason: str | None = None
    verdict_since_ms: int | None = None
    alerts: tuple[AlertView, ...] = ()
    time_lag_seconds: float | None = None
    """Age of the oldest unconsumed event over the consumer's partitions."""
    backlog: int = 0
    """Closed windows waiting for their pipeline run (fleet-wide)."""
    backlog_age_seconds: float | None = None
    """How long the oldest of them has waited."""

    @property
    def paused(self) -> bool:
        return self.state == "paused"

    @property
    def eta_text(self) -> str:
        p = self.progress
        if p.winner is None:
            return "idle"
        if p.eta_seconds is not None and p.eta_seconds < 0.5:
            return f"{p.winner} now"
        return f"{p.winner} {fmt_span(p.eta_seconds)}"

    def matches(self, text: str) -> bool:
        """Filter: case-insensitive substring of the id or the topic."""
        t = text.strip().lower()
        return not t or t in self.consumer_id.lower() or t in self.topic.lower()


def _state_of(local: ConsumerSnapshot | None, fleet: FleetConsumer | None) -> str:
    """Local runner state, corrected by the fleet (:func:`shown_state`)."""
    return shown_state(
        str(local.state) if local is not None else None,
        fleet.state if fleet is not None else None,
    )


def _local_alerts(local: ConsumerSnapshot | None) -> tuple[AlertView, ...]:
    if local is None:
        return ()
    return tuple(
        AlertView(a.alert, a.channel, a.message, a.since_ms, a.value) for a in local.alerts
    )


def _health_of(
    local: ConsumerSnapshot | None, fleet: FleetConsumer | None
) -> tuple[str | None, str | None, int | None, tuple[AlertView, ...]]:
    """Verdict, reason, since and active alerts: the fleet's view (it shows a pause at once and
    lists alerts fleet-wide), else this instance's monitor."""
    if fleet is not None and fleet.verdict:
        since = fleet.verdict_since_ms
        if since is None and local is not None and local.verdict == fleet.verdict:
            since = local.verdict_since_ms
        return fleet.verdict, fleet.verdict_reason, since, fleet.alerts
    if local is not None and local.verdict:
        return local.verdict, local.verdict_reason, local.verdict_since_ms, _local_alerts(local)
    return None, None, None, _local_alerts(local)


def _masked(text: str | None, mask: Mask) -> str | None:
    return mask(text) if text else text


def build_row(
    cfg: ConsumerConfig,
    local: ConsumerSnapshot | None,
    fleet: FleetConsumer | None,
    series: Series,
    now_ms: int,
    mask: Mask = identity,
) -> ConsumerRow:
    """One consumer's row; ``mask`` is applied to every text the engine or Redis provided."""
    rate = fleet.rate if fleet is not None and fleet.instances else (local.rate if local else 0.0)
    lag = fleet.lag if fleet is not None and fleet.partitions else (local.lag if local else None)
    time_lag = (
        fleet.time_lag_seconds
        if fleet is not None and fleet.partitions
        else (local.time_lag_seconds if local else None)
    )
    verdict, reason, since, alerts = _health_of(local, fleet)
    count = local.count if local else 0
    window_id = local.window_id if local else 1
    opened = local.window_opened_at_ms if local else None
    state = _state_of(local, fleet)
    progress = window_progress(
        count, cfg.max_event, opened, cfg.max_time, 0.0 if state == "paused" else rate, now_ms
    )
    last = None
    if local is not None and local.last_trigger is not None:
        t = local.last_trigger
        last = TriggerView(
            t.window_id,
            reason_label(t.reason, t.replay),
            t.count,
            max(now_ms - t.closed_at_ms, 0) / 1000.0,
            t.status,
        )
    return ConsumerRow(
        consumer_id=cfg.consumer_id,
        topic=cfg.topic_label,
        pipeline=cfg.pipeline_name,
        job_type=cfg.job_type,
        state=state,
        rate=rate,
        lag=lag,
        lag_trend=lag_trend(series.lags),
        count=count,
        max_event=cfg.max_event,
        max_time=cfg.max_time,
        window_id=window_id,
        progress=progress,
        last_trigger=last,
        errors=local.errors if local else (fleet.errors if fleet else 0),
        dlq=local.dlq if local else 0,
        total=local.total if local else 0,
        last_error=_masked(local.last_error if local else None, mask),
        paused_by=_masked(fleet.paused_by if fleet is not None else None, mask),
        instances=fleet.instances if fleet is not None else (),
        verdict=verdict,
        verdict_reason=_masked(reason, mask),
        verdict_since_ms=since,
        alerts=tuple(
            AlertView(a.alert, a.channel, mask(a.message), a.since_ms, a.value) for a in alerts
        ),
        time_lag_seconds=time_lag,
        backlog=fleet.backlog if fleet is not None else 0,
        backlog_age_seconds=fleet.backlog_age_seconds if fleet is not None else None,
    )


def build_rows(
    config: AppConfig,
    snap: InstanceSnapshot | None,
    fleet: FleetView | None,
    series_of: Mapping[str, Series],
    now_ms: int,
    mask: Mask = identity,
) -> list[ConsumerRow]:
    """One row per configured consumer, in config order."""
    rows = []
    for cfg in config.consumers:
        cid = cfg.consumer_id
        local = snap.consumer(cid) if snap is not None else None
        remote = fleet.consumers.get(cid) if fleet is not None else None
        rows.append(build_row(cfg, local, remote, series_of.get(cid, Series()), now_ms, mask))
    return rows


# ---- header -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderModel:
    brokers: str
    kafka_ok: bool | None
    redis_ok: bool | None
    instances: int | None
    rate: float
    uptime_seconds: float | None
    instance_id: str | None
    engine: str  # starting | running | stopping | stopped | failed | none
    read_only: bool
    consumers: int
    shown: int
    filter_text: str = ""
    waiting_for: str | None = None  # the engine waits at start for Redis or the brokers
    kafka_missing: tuple[str, ...] = ()  # brokers gone from the cluster's metadata
    redis_pool: tuple[str, ...] = ()  # Redis connection pools exhausted lately (why)
    workers_restarted: int = 0  # run --workers: worker processes that exited lately


def build_header(
    config: AppConfig,
    snap: InstanceSnapshot | None,
    fleet: FleetView | None,
    rows: Sequence[ConsumerRow],
    now_ms: int,
    *,
    engine: str,
    read_only: bool,
    shown: int | None = None,
    filter_text: str = "",
    redis_ok: bool | None = None,
    mask: Mask = identity,
    waiting_for: str | None = None,
) -> HeaderModel:
    return HeaderModel(
        brokers=mask(config.kafka.bootstrap_servers),
        kafka_ok=snap.kafka_ok if snap is not None else None,
        kafka_missing=snap.kafka_missing if snap is not None else (),
        redis_pool=snap.redis_pool if snap is not None else (),
        workers_restarted=sum(1 for f in snap.task_failures if f.startswith("worker "))
        if snap is not None
        else 0,
        redis_ok=redis_ok if redis_ok is not None else (snap.redis_ok if snap else None),
        instances=len(fleet.instances) if fleet is not None else None,
        rate=sum(r.rate for r in rows),
        uptime_seconds=(now_ms - snap.started_at_ms) / 1000 if snap is not None else None,
        instance_id=snap.instance_id if snap is not None else None,
        engine=engine,
        read_only=read_only,
        consumers=len(rows),
        shown=len(rows) if shown is None else shown,
        filter_text=filter_text,
        waiting_for=mask(waiting_for) if waiting_for else None,
    )


# ---- detail -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryRow:
    window_id: int
    reason: str
    count: int
    offsets: str
    status: str
    duration: str
    closed_age_seconds: float | None
    error: str | None = None


REPLAY_MARK = "·replay"
"""After a window's reason when it holds events read again after a seek back."""


def reason_label(reason: str, replay: bool = False) -> str:
    """A trigger's reason as the console shows it: ``count``, ``seek``, ``count·replay``."""
    return reason + REPLAY_MARK if replay else reason


def build_history(
    records: Sequence[Mapping[str, Any]],
    now_ms: int,
    offsets_limit: int = 3,
    mask: Mask = identity,
) -> list[HistoryRow]:
    """Rows from :meth:`Fleet.history` records (newest first); run errors go through ``mask``."""
    out = []
    for r in records:
        run = r.get("run") or {}
        closed = moment_ms(r.get("closed_at"))
        out.append(
            HistoryRow(
                window_id=int(r["window_id"]),
                reason=reason_label(str(r["reason"]), bool(r.get("replay"))),
                count=int(r["count"]),
                offsets=fmt_offsets(r.get("offsets") or [], offsets_limit),
                status=str(r.get("status", "pending")),
                duration=fmt_ms(run.get("duration_ms")),
                closed_age_seconds=(now_ms - closed) / 1000 if closed is not None else None,
                error=_masked(run.get("error"), mask),
            )
        )
    return out


def partitions_of(
    row_id: str, snap: InstanceSnapshot | None, fleet: FleetView | None
) -> list[FleetPartition]:
    """Every partition of a consumer with its owner: the fleet's view, else this instance's."""
    if fleet is not None and row_id in fleet.consumers and fleet.consumers[row_id].partitions:
        return list(fleet.consumers[row_id].partitions)
    local = snap.consumer(row_id) if snap is not None else None
    if local is None or snap is None:
        return []
    return [
        FleetPartition(
            p.partition,
            p.position,
            p.highwater,
            p.lag,
            snap.instance_id,
            p.time_lag_seconds,
            p.topic,
        )
        for p in local.partitions
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{ " + inner + " }" if inner else "{}"
    return json.dumps(str(value))


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def config_lines(
    masked: Mapping[str, Any], consumer_id: str, *, runtime: bool = False
) -> list[str]:
    """A consumer's config and its pipeline's, as TOML, from :func:`mask_config` output;
    ``runtime`` marks a consumer defined at runtime."""
    consumer = next(
        (c for c in masked.get("consumers", []) if c["consumer_id"] == consumer_id), None
    )
    if consumer is None:
        return []
    lines = [RUNTIME_MARK] if runtime else []
    lines.append("[[consumers]]")
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in consumer.items() if v is not None]
    name = consumer.get("pipeline_name")
    pipeline = masked.get("pipelines", {}).get(name)
    if pipeline is not None:
        lines += ["", f"[pipelines.{_toml_key(name)}]"]
        lines += [
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in pipeline.items() if v is not None
        ]
    return lines


# ---- log lines --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    created: float
    level: int
    logger: str
    message: str


@dataclass
class LogBook:
    """Log lines captured while the console runs (thread-safe; drained by the UI timer).

    Warnings and errors whose message starts with ``<consumer_id>:`` (the engine's habit) also
    go to that consumer's error tail, shown in its detail view.
    """

    keep: int = 1000
    keep_per_consumer: int = 50
    _lines: deque[LogLine] = field(default_factory=deque)
    _pending: deque[LogLine] = field(default_factory=deque)
    _errors: dict[str, deque[LogLine]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, line: LogLine) -> None:
        with self._lock:
            self._lines.append(line)
            while len(self._lines) > self.keep:
                self._lines.popleft()
            self._pending.append(line)
            while len(self._pending) > self.keep:
                self._pending.popleft()
            if line.level >= 30:  # WARNING
                head, sep, _ = line.message.partition(":")
                if sep and head and " " not in head:
                    tail = self._errors.setdefault(head, deque(maxlen=self.keep_per_consumer))
                    tail.append(line)

    def drain(self) -> list[LogLine]:
        """Lines added since the last drain."""
        with self._lock:
            out = list(self._pending)
            self._pending.clear()
        return out

    def lines(self) -> list[LogLine]:
        with self._lock:
            return list(self._lines)

    def errors_for(self, consumer_id: str) -> list[LogLine]:
        with self._lock:
            return list(self._errors.get(consumer_id, ()))


# ---- sorting the table ---------------------------------------------------------------------

#: How bad a verdict is, for sorting by health (worst first).
VERDICT_SEVERITY = {
    "stalled": 3,
    "stopped": 3,
    "window-stuck": 3,
    "pipeline-failing": 3,
    "topic-recreated": 3,
    "lagging": 2,
    "pipeline-backlog": 2,
    "trigger-storm": 2,
    "paused": 1,
    "ok": 0,
}


@dataclass(frozen=True)
class SortColumn:
    key: str
    """The table column it sorts (``widgets.Column.key``)."""
    title: str
    descending: bool
    """The first press sorts biggest first (names sort A to Z)."""


SORT_COLUMNS: tuple[SortColumn, ...] = (
    SortColumn("id", "consumer", False),
    SortColumn("health", "health", True),
    SortColumn("rate", "events/s", True),
    SortColumn("lag", "lag", True),
    SortColumn("tlag", "time lag", True),
    SortColumn("count", "window fill", True),
    SortColumn("err", "errors", True),
)
SORT_BY_KEY = {c.key: c for c in SORT_COLUMNS}


def _sort_value(row: ConsumerRow, key: str) -> tuple[float, ...] | str:
    if key == "id":
        return row.consumer_id
    if key == "health":
        return (VERDICT_SEVERITY.get(row.verdict or "", -1), len(row.alerts))
    if key == "rate":
        return (row.rate,)
    if key == "lag":
        return (-1 if row.lag is None else row.lag,)
    if key == "tlag":
        return (-1.0 if row.time_lag_seconds is None else row.time_lag_seconds,)
    if key == "count":
        return (row.progress.count_ratio, row.count)
    if key == "err":
        return (row.errors, row.dlq)
    raise KeyError(key)


def sort_rows(rows: Sequence[ConsumerRow], key: str | None, reverse: bool) -> list[ConsumerRow]:
    """``rows`` in config order (``key`` None) or by a :data:`SORT_COLUMNS` column, its first
    direction unless ``reverse``; ties keep config order (the sort is stable)."""
    if key is None:
        return list(rows)
    col = SORT_BY_KEY[key]
    descending = col.descending != reverse
    return sorted(rows, key=lambda r: _sort_value(r, key), reverse=descending)


__all__ = [
    "SORT_BY_KEY",
    "SORT_COLUMNS",
    "VERDICT_SEVERITY",
    "AlertView",
    "ConsoleSnapshot",
    "ConsumerRow",
    "FleetConsumer",
    "FleetPartition",
    "FleetView",
    "HeaderModel",
    "HistoryRow",
    "LogBook",
    "LogLine",
    "Series",
    "SeriesRecorder",
    "SortColumn",
    "Trend",
    "TriggerView",
    "build_header",
    "build_history",
    "build_row",
    "build_rows",
    "config_lines",
    "fmt_clock",
    "fmt_count",
    "fmt_ms",
    "fmt_offsets",
    "fmt_rate",
    "fmt_span",
    "identity",
    "lag_trend",
    "partitions_of",
    "sort_rows",
]
