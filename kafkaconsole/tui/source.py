"""Where the console's data comes from, and where its commands go.

:class:`EngineSource` wraps the :class:`~kafkaconsole.engine.engine.Engine` that runs inside the
app: it receives the engine's snapshots (one per refresh interval, never one per event), records
the rate/lag series, reads the fleet's typed status through
:meth:`~kafkaconsole.engine.fleet.Fleet.read` and steers through the engine (which acts
fleet-wide through Redis). The app's one poll reads both and posts them as one snapshot.

:class:`StaticSource` holds fixed data: snapshot tests, the README screenshot and any test that
wants the screens without a broker. Its commands change its own data, so the screens react.

Commands go to the engine with ``via="tui"`` (the audit stream's face); a read-only engine
refuses them with :class:`~kafkaconsole.engine.errors.ReadOnlyError`, which the app shows.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kafkaconsole.engine.alerts import AlertEvent
from kafkaconsole.engine.counting import CloseResult, ResetResult, WindowState
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.errors import ControlError
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.peek import EventPeek, PeekBody, PeekError
from kafkaconsole.engine.records import iso_ms
from kafkaconsole.engine.reload import ReloadResult
from kafkaconsole.engine.seek import (
    PartitionMove,
    SeekError,
    SeekPlan,
    SeekResult,
    SeekTarget,
    parse_target,
    parse_window,
    plan_seek,
)
from kafkaconsole.engine.status import ConsumerState, InstanceSnapshot
from kafkaconsole.tui.viewmodel import FleetView, Series, SeriesRecorder

VIA = "tui"
"""How the console names itself in the audit stream."""

AlertListener = Callable[[AlertEvent], None]


class ConsoleSource(abc.ABC):
    """Everything the console reads and every command it sends."""

    @abc.abstractmethod
    def latest(self) -> InstanceSnapshot | None:
        """This instance's latest status snapshot (None before the engine's first one)."""

    @abc.abstractmethod
    def series(self, consumer_id: str) -> Series:
        """Recent rate and lag samples of a consumer."""

    @abc.abstractmethod
    async def fleet(self) -> FleetView | None:
        """The fleet as Redis sees it (None when Redis cannot be read)."""

    @abc.abstractmethod
    async def history(self, consumer_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Trigger records, newest first, with their pipeline status."""

    @abc.abstractmethod
    async def window(self, consumer_id: str) -> WindowState:
        """The open window: what a reset would discard, what a trigger would close."""

    @abc.abstractmethod
    async def pause(self, consumer_id: str | None) -> list[str]:
        """Pause one consumer (or all) fleet-wide; returns the ids."""

    @abc.abstractmethod
    async def resume(self, consumer_id: str | None) -> list[str]:
        """Resume one consumer (or all) fleet-wide; returns the ids."""

    @abc.abstractmethod
    async def reset(self, consumer_id: str) -> ResetResult:
        """Empty the open window without triggering."""

    @abc.abstractmethod
    async def trigger(self, consumer_id: str) -> CloseResult:
        """Close the open window now and dispatch its pipeline."""

    @abc.abstractmethod
    async def reload(self) -> ReloadResult:
        """Re-read this instance's config file and apply it (added consumers start, removed
        ones stop gracefully, thresholds and pipelines change live; a bad file changes
        nothing)."""

    @abc.abstractmethod
    async def peek(
        self, consumer_id: str, what: str, window_id: int | None = None, limit: int = 50
    ) -> PeekBody:
        """Events to look at: a closed window's (``what = "window"``), the topic's newest
        (``"tail"``) or the DLQ's (``"dlq"``); a refusal raises
        :class:`~kafkaconsole.engine.peek.PeekError` with one line."""

    @abc.abstractmethod
    async def seek_plan(self, consumer_id: str, to: str, window: str = "close") -> SeekPlan:
        """What seeking ``consumer_id`` to ``to`` would do, read now (nothing changes): per
        partition the stored offset, the target, the events read again or skipped, and the
        open window; a refusal raises a :class:`~kafkaconsole.engine.errors.ControlError`."""

    @abc.abstractmethod
    async def seek(self, consumer_id: str, to: str, window: str = "close") -> SeekResult:
        """Move the consumer's position fleet-wide; the open window is closed (reason
        ``seek``, its pipeline runs) or discarded."""

    def subscribe_alerts(self, listener: AlertListener) -> None:  # noqa: B027 (optional hook)
        """Call ``listener`` with every alert firing or resolving (on the app's loop)."""

    @property
    def ready(self) -> bool:
        """Whether commands can be sent now."""
        return True


class EngineSource(ConsoleSource):
    """The engine running in this process, and the fleet through its Redis connection."""

    def __init__(self, engine: Engine, *, keep_samples: int = 300) -> None:
        self.engine = engine
        self.fleet_reader = Fleet(engine.redis, engine.config)
        self.recorder = SeriesRecorder(keep=keep_samples)
        self._latest: InstanceSnapshot | None = None
        engine.subscribe(self._on_snapshot)

    def _on_snapshot(self, snap: InstanceSnapshot) -> None:
        # Called on the engine's loop once per snapshot interval: store, never draw.
        self._latest = snap
        self.recorder.record(snap)

    def latest(self) -> InstanceSnapshot | None:
        return self._latest

    def series(self, consumer_id: str) -> Series:
        return self.recorder.series(consumer_id)

    def subscribe_alerts(self, listener: AlertListener) -> None:
        # The engine's health monitor calls it on the engine's loop (the app's).
        self.engine.subscribe_alerts(listener)

    @property
    def ready(self) -> bool:
        return self.engine.started and not self.engine.stopping

    async def fleet(self) -> FleetView | None:
        if not self.ready:
            return None
        return FleetView.from_fleet(await self.fleet_reader.read())

    async def history(self, consumer_id: str, limit: int = 20) -> list[dict[str, Any]]:
        if not self.ready:
            return []
        return await self.fleet_reader.history(consumer_id, limit)

    async def window(self, consumer_id: str) -> WindowState:
        return await self.fleet_reader.counter(consumer_id).window()

    async def pause(self, consumer_id: str | None) -> list[str]:
        return await self.engine.pause(consumer_id, via=VIA)

    async def resume(self, consumer_id: str | None) -> list[str]:
        return await self.engine.resume(consumer_id, via=VIA)

    async def reset(self, consumer_id: str) -> ResetResult:
        return await self.engine.reset(consumer_id, via=VIA)

    async def trigger(self, consumer_id: str) -> CloseResult:
        return await self.engine.force_trigger(consumer_id, via=VIA)

    async def reload(self) -> ReloadResult:
        return await self.engine.reload(via=VIA)

    async def seek_plan(self, consumer_id: str, to: str, window: str = "close") -> SeekPlan:
        engine = self.engine
        return await plan_seek(
            engine.config, engine.redis, consumer_id, parse_target(to), window=parse_window(window)
        )

    async def seek(self, consumer_id: str, to: str, window: str = "close") -> SeekResult:
        return await self.engine.seek(consumer_id, to, window=window, via=VIA)

    async def peek(
        self, consumer_id: str, what: str, window_id: int | None = None, limit: int = 50
    ) -> PeekBody:
        reader = EventPeek(self.engine.config, self.engine.redis)
        if what == "window":
            return await reader.window(consumer_id, int(window_id or 0), limit)
        if what == "dlq":
            return await reader.dlq(consumer_id, limit)
        return await reader.tail(consumer_id, limit)


@dataclass(frozen=True, slots=True)
class SeekPosition:
    """One partition as a :class:`StaticSource` seek sees it: the next offset Redis holds
    (None: nothing counted yet), the log's first and end offsets, and ``(offset, timestamp
    ms)`` samples in offset order for time targets (the first at or after the time wins;
    none: the log's end)."""

    stored: int | None
    log_start: int
    log_end: int
    times: tuple[tuple[int, int], ...] = ()

    def target(self, to: SeekTarget) -> int:
        if to.kind == "earliest":
            return self.log_start
        if to.kind == "latest":
            return self.log_end
        if to.kind == "offset":
            return min(max(to.offset or 0, self.log_start), self.log_end)
        found = (o for o, ts in self.times if ts >= (to.time_ms or 0))
        return next(found, self.log_end)


@dataclass
class StaticSource(ConsoleSource):
    """Fixed data pushed by a test (or the screenshot script); commands edit it in place."""

    snapshot: InstanceSnapshot | None = None
    fleet_view: FleetView | None = None
    histories: Mapping[str, Sequence[dict[str, Any]]] = field(default_factory=dict)
    windows: dict[str, WindowState] = field(default_factory=dict)
    series_of: Mapping[str, Series] = field(default_factory=dict)
    now_ms: int = 0
    actions: list[tuple[str | None, ...]] = field(default_factory=list)
    """Every command received: ``(name, consumer)``, ``("seek", consumer, to, window)``."""
    peeks: Mapping[tuple[str, str, int | None], PeekBody] = field(default_factory=dict)
    """``(consumer, "window" | "tail" | "dlq", window id or None)`` -> what a peek shows."""
    reload_result: ReloadResult | None = None
    """What a reload answers (None: it is refused)."""
    alert_listeners: list[AlertListener] = field(default_factory=list)
    seek_positions: dict[str, dict[tuple[str, int], SeekPosition]] = field(default_factory=dict)
    """Consumer -> ``(topic, partition)`` -> where it stands: what a seek plan is computed
    from (a consumer not in it: the seek is refused)."""
    seeks: int = 0
    """Seeks applied (the seek epoch a result reports)."""

    def latest(self) -> InstanceSnapshot | None:
        return self.snapshot

    def subscribe_alerts(self, listener: AlertListener) -> None:
        self.alert_listeners.append(listener)

    def emit_alert(self, event: AlertEvent) -> None:
        """Deliver an alert transition as the engine's health monitor would."""
        for listener in list(self.alert_listeners):
            listener(event)

    def series(self, consumer_id: str) -> Series:
        return self.series_of.get(consumer_id, Series())

    def push(self, snapshot: InstanceSnapshot) -> None:
        """Replace the snapshot (as the engine would publish a new one)."""
        self.snapshot = snapshot

    async def fleet(self) -> FleetView | None:
        return self.fleet_view

    async def history(self, consumer_id: str, limit: int = 20) -> list[dict[str, Any]]:
        return list(self.histories.get(consumer_id, ()))[:limit]

    async def window(self, consumer_id: str) -> WindowState:
        if consumer_id in self.windows:
            return self.windows[consumer_id]
        c = self.snapshot.consumer(consumer_id) if self.snapshot else None
        if c is None:
            return WindowState(1, 0, None, ())
        return WindowState(c.window_id, c.count, c.window_opened_at_ms, ())

    async def reload(self) -> ReloadResult:
        self.actions.append(("reload", None))
        if self.reload_result is None:
            raise ControlError("no configuration file to reload")
        return self.reload_result

    async def peek(
        self, consumer_id: str, what: str, window_id: int | None = None, limit: int = 50
    ) -> PeekBody:
        body = self.peeks.get((consumer_id, what, window_id if what == "window" else None))
        if body is None:
            raise PeekError(f"nothing to show for {consumer_id} ({what})")
        return body.model_copy(update={"events": body.events[:limit]})

    async def seek_plan(self, consumer_id: str, to: str, window: str = "close") -> SeekPlan:
        target = parse_target(to, now_ms=self.now_ms)
        parts = self.seek_positions.get(consumer_id)
        if not parts:
            raise SeekError("no partition to seek")
        moves = []
        for (topic, partition), pos in sorted(parts.items()):
            new = pos.target(target)
            cur = pos.stored
            moves.append(
                PartitionMove(
                    topic=topic,
                    partition=partition,
                    current=cur,
                    target=new,
                    log_start=pos.log_start,
                    log_end=pos.log_end,
                    reread=max(0, cur - new) if cur is not None else 0,
                    skipped=max(0, new - cur) if cur is not None else 0,
                )
            )
        w = await self.window(consumer_id)
        return SeekPlan(
            consumer_id=consumer_id,
            to=target.text,
            resolved=target.describe(),
            window=parse_window(window),
            window_id=w.window_id,
            window_count=w.count,
            reread=sum(m.reread for m in moves),
            skipped=sum(m.skipped for m in moves),
            partitions=moves,
            warnings=[],
        )

    async def seek(self, consumer_id: str, to: str, window: str = "close") -> SeekResult:
        plan = await self.seek_plan(consumer_id, to, window)
        self.actions.append(("seek", consumer_id, to, window))
        closed = plan.window_id if plan.window == "close" and plan.window_count else None
        next_id = plan.window_id + 1 if closed is not None else plan.window_id
        self._edit(consumer_id, count=0, window_opened_at_ms=None, window_id=next_id)
        parts = self.seek_positions[consumer_id]
        for m in plan.partitions:
            key = (m.topic, m.partition)
            parts[key] = replace(parts[key], stored=m.target)
        self.seeks += 1
        return SeekResult(
            consumer_id=consumer_id,
            applied=True,
            plan=plan,
            epoch=self.seeks,
            closed_window_id=closed,
            discarded=plan.window_count if closed is None else 0,
            reread=plan.reread,
            skipped=plan.skipped,
            at=iso_ms(self.now_ms),
            redis_now_ms=self.now_ms,
        )

    def _ids(self, consumer_id: str | None) -> list[str]:
        if consumer_id is not None:
            return [consumer_id]
        return [c.consumer_id for c in self.snapshot.consumers] if self.snapshot else []

    def _set_state(self, ids: list[str], state: ConsumerState) -> None:
        if self.snapshot is None:
            return
        paused = state == ConsumerState.PAUSED
        health: dict[str, Any] = {
            "verdict": "paused" if paused else "ok",
            "verdict_reason": "paused by you" if paused else "consuming normally",
            "verdict_since_ms": self.now_ms,
        }
        self.snapshot = replace(
            self.snapshot,
            consumers=tuple(
                replace(c, state=state, **health) if c.consumer_id in ids else c
                for c in self.snapshot.consumers
            ),
        )
        if self.fleet_view is not None:
            consumers = dict(self.fleet_view.consumers)
            for cid in ids:
                if cid in consumers:
                    consumers[cid] = replace(
                        consumers[cid],
                        state=str(state),
                        paused_by="you" if paused else None,
                        **health,
                    )
            self.fleet_view = replace(self.fleet_view, consumers=consumers)

    async def pause(self, consumer_id: str | None) -> list[str]:
        ids = self._ids(consumer_id)
        self.actions.append(("pause", consumer_id))
        self._set_state(ids, ConsumerState.PAUSED)
        return ids

    async def resume(self, consumer_id: str | None) -> list[str]:
        ids = self._ids(consumer_id)
        self.actions.append(("resume", consumer_id))
        self._set_state(ids, ConsumerState.RUNNING)
        return ids

    async def reset(self, consumer_id: str) -> ResetResult:
        self.actions.append(("reset", consumer_id))
        w = await self.window(consumer_id)
        self._edit(consumer_id, count=0, window_opened_at_ms=None)
        return ResetResult(w.window_id, w.count, self.now_ms)

    async def trigger(self, consumer_id: str) -> CloseResult:
        self.actions.append(("trigger", consumer_id))
        w = await self.window(consumer_id)
        self._edit(consumer_id, count=0, window_opened_at_ms=None, window_id=w.window_id + 1)
        return CloseResult("closed", w.window_id, w.count, self.now_ms)

    def _edit(self, consumer_id: str, **changes: Any) -> None:
        self.windows.pop(consumer_id, None)
        if self.snapshot is None:
            return
        self.snapshot = replace(
            self.snapshot,
            consumers=tuple(
                replace(c, **changes) if c.consumer_id == consumer_id else c
                for c in self.snapshot.consumers
            ),
        )
