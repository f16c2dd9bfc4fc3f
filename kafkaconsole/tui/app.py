"""The Textual app: the engine runs inside it as a worker; the screens follow its snapshots.

The engine is a named, exclusive Textual worker (``exit_on_error=False``) on the app's event
loop; its failure is handled in one place (:meth:`KafkaConsoleApp.on_worker_state_changed`).
One poll at ``[ui] refresh_hz`` (never per event) takes this instance's latest snapshot and the
fleet's typed status (other instances, partition owners, trigger history; read from Redis at
most once a second) and posts them as one frozen :class:`ConsoleSnapshot` in a
:class:`SnapshotReady` message. The app keeps one slot and at most one such message queued: a
newer snapshot replaces one not drawn yet, so a slow screen draws the latest and never works
through a backlog. The table redraws only the cells that changed. Log records go to the log
panel, never to the terminal, while the app runs.

For tests and screenshots the app takes a ``data_source`` instead of an engine, and a ``clock``.

Every text the engine, Redis or a pipeline provided (errors, verdict reasons, alert messages,
log lines, notifications) passes through the config's :func:`~kafkaconsole.config.secrets.masker`
before it is drawn; the config itself is shown only through :func:`mask_config`. Commands go to
the engine with ``via="tui"`` (the audit stream records them); read-only mode refuses them here
and in the engine (:class:`~kafkaconsole.engine.errors.ReadOnlyError`). Alerts whose channel is
``tui`` become toasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.markup import escape
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.theme import Theme
from textual.widgets import DataTable, Footer, Input, Label, Static
from textual.worker import Worker, WorkerState

from kafkaconsole.config.models import AppConfig
from kafkaconsole.config.secrets import mask_config, masker
from kafkaconsole.engine.alerts import AlertEvent, AlertStatus
from kafkaconsole.engine.counting import WindowState
from kafkaconsole.engine.engine import DependencyUnreachable, Engine
from kafkaconsole.engine.errors import ControlError, ReadOnlyError, Toast
from kafkaconsole.engine.records import iso_ms
from kafkaconsole.engine.seek import SeekPlan, SeekResult, parse_target
from kafkaconsole.engine.status import InstanceSnapshot
from kafkaconsole.headless import default_extras, start_error_text
from kafkaconsole.supervisor import WorkerSpec
from kafkaconsole.tui.bindings import (
    ALL_COMMANDS,
    APP_COMMANDS,
    SORT_COMMANDS,
    bindings_for,
    unknown_keymap_ids,
)
from kafkaconsole.tui.commandline import CommandInput, CommandLineError
from kafkaconsole.tui.commandline import parse as parse_command
from kafkaconsole.tui.commandline import suggester as command_suggester
from kafkaconsole.tui.logcapture import ConsoleLogHandler, LogCapture
from kafkaconsole.tui.screens import ConfirmDialog, DetailModel, DetailScreen, HelpScreen
from kafkaconsole.tui.source import ConsoleSource, EngineSource
from kafkaconsole.tui.themes import (
    DEFAULT_THEME,
    ThemeCatalog,
    choose_theme,
    load_themes,
    variable_defaults,
)
from kafkaconsole.tui.viewmodel import (
    SORT_BY_KEY,
    SORT_COLUMNS,
    ConsoleSnapshot,
    ConsumerRow,
    FleetView,
    LogBook,
    Series,
    build_header,
    build_history,
    build_rows,
    config_lines,
    fmt_offsets,
    fmt_span,
    partitions_of,
    sort_rows,
)
from kafkaconsole.tui.widgets import (
    VERDICT_VARIABLE,
    ConsumerPreview,
    ConsumerTable,
    FleetHeader,
    LogPanel,
    Palette,
    alert_badge,
    preview_rows,
)

log = logging.getLogger("kafkaconsole.tui")

FLEET_POLL_S = 1.0
QUIT_GRACE_S = 20.0
ALERT_CHANNEL = "tui"
"""Alert rules with this channel show as toasts (every channel shows as a row badge)."""


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class SnapshotReady(Message):
    """A poll's snapshot is waiting in the app's slot (the slot may hold a newer one by the
    time this is handled: the handler draws whatever the slot holds)."""

    def __init__(self, snapshot: ConsoleSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class KafkaConsoleApp(App[int]):
    """Watch and steer every consumer of a config."""

    CSS_PATH = "console.tcss"
    TITLE = "kafkaconsole"
    BINDINGS = [
        *bindings_for(APP_COMMANDS),
        *bindings_for(SORT_COMMANDS),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        config: AppConfig,
        *,
        engine: Engine | None = None,
        data_source: ConsoleSource | None = None,
        clock: Callable[[], int] | None = None,
        instance_id: str | None = None,
        theme: str | None = None,
        theme_dirs: Iterable[Path] | None = None,
        notice: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.notice = notice
        """A line shown at start, in a toast and the log (the demo says where its config is)."""
        self.wait_timeout: float | None = None  # for Redis and the brokers at start
        self.engine_workers = WorkerSpec(1, forward_logs=True)  # run --workers N
        self.clock = clock or wall_clock_ms
        if data_source is None:
            engine = engine or Engine(
                config, instance_id=instance_id, snapshot_interval=1.0 / config.ui.refresh_hz
            )
            data_source = EngineSource(engine)
        self.engine = engine
        self.source = data_source
        self.read_only = config.ui.read_only
        self.mask = masker(config)
        self.logbook = LogBook()
        self.log_capture = LogCapture(ConsoleLogHandler(self.logbook, mask=self.mask))
        self.requested_theme = theme or config.ui.theme
        self.theme_catalog: ThemeCatalog = load_themes(theme_dirs)
        self.masked_config = mask_config(config)
        self.show_log = False
        self.filter_text = ""
        self.sort_key: str | None = None
        """The column the table is sorted by (None: the config's order)."""
        self.sort_reverse = False
        self.engine_state = "starting" if engine is not None else "none"
        self.engine_error: str | None = None
        self._fleet: FleetView | None = None
        self._fleet_ok: bool | None = None
        self._histories: dict[str, list[dict[str, Any]]] = {}
        self._palette: Palette | None = None
        self._quitting = False
        self._engine_launched = False
        self._engine_closed = False
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._watch_runs: dict[str, int] = {}
        self._rows: list[ConsumerRow] = []
        self._preview_for: str | None = None  # the consumer the preview shows
        self._preview_lines = 0  # trigger lines the preview has room for
        self._instance: InstanceSnapshot | None = None
        self._series_of: Mapping[str, Series] = {}
        # the poll: one in flight at a time, the fleet read at most every FLEET_POLL_S
        self._polling = False
        self._poll_seq = 0  # orders the fleet reads by when they started
        self._snapshot_seq = 0  # orders the snapshots by when they were built
        self._fleet_read: FleetView | None = None
        self._fleet_read_ok: bool | None = None
        self._fleet_read_at: float | None = None
        self._fleet_read_seq = 0
        # the mailbox: the newest snapshot not drawn yet, and whether a message is queued
        self._slot: ConsoleSnapshot | None = None
        self._posted = False
        self.drawn: ConsoleSnapshot | None = None
        """The snapshot on screen."""
        self.snapshots_drawn = 0
        """How many snapshots were drawn (each at most once; replaced ones never)."""

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Notifications carry ids, paths and config keys like ``[ui]``: plain text by default.

        Messages often quote an engine error: every one is masked."""
        super().notify(
            self.mask(message),
            title=self.mask(title),
            severity=severity,
            timeout=timeout,
            markup=markup,
        )

    # ---- theme -----------------------------------------------------------------------------
    def get_theme_variable_defaults(self) -> dict[str, str]:
        return variable_defaults(self.current_theme)

    def _register_themes(self) -> None:
        for theme in self.theme_catalog.themes.values():
            self.register_theme(theme)
        name, notice = choose_theme(self.requested_theme, self.theme_catalog, self.available_themes)
        for theme in self.theme_catalog.themes.values():  # a theme file named in the config
            if theme.name not in self.available_themes:
                self.register_theme(theme)
        self.theme = name
        if notice:
            self.notify(notice, title="Theme", severity="warning", timeout=15)
        for problem in self.theme_catalog.problems:
            if notice is None or str(problem) not in notice:
                self.notify(
                    str(problem), title="Theme file skipped", severity="warning", timeout=15
                )

    @property
    def console_themes(self) -> list[Theme]:
        return list(self.theme_catalog.themes.values())

    def _on_theme_changed(self, _theme: Theme) -> None:
        self._palette = None
        for panel in self._log_panels():
            panel.repaint(self.palette)
        self.refresh_view()

    @property
    def palette(self) -> Palette:
        if self._palette is None:
            self._palette = Palette(dict(self.theme_variables))
        return self._palette

    # ---- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield FleetHeader(id="header", classes="header")
        with Horizontal(id="filter-bar"):
            yield Label("filter", id="filter-label")
            yield Input(
                placeholder="consumer id or topic (enter: keep, escape: clear)", id="filter"
            )
        yield ConsumerTable(id="consumers")
        yield ConsumerPreview(id="preview")
        yield Static(id="selection")
        yield LogPanel(id="log", classes="log")
        with Horizontal(id="command-bar"):
            yield Label(":", id="command-label")
            yield CommandInput(
                placeholder="pause ID · resume ID · reset ID · trigger ID · detail ID · "
                "filter TEXT · sort COLUMN · help (tab completes, escape closes)",
                id="command",
                suggester=command_suggester([c.consumer_id for c in self.config.consumers]),
            )
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.log_capture.install()
        if self.notice:
            log.info("%s", self.notice)
            self.notify(self.notice, title="kafkaconsole", timeout=30, markup=False)
        self._register_themes()
        self.theme_changed_signal.subscribe(self, self._on_theme_changed)
        keymap = dict(self.config.ui.keymap)
        if keymap:
            self.set_keymap(keymap)
            unknown = unknown_keymap_ids(keymap)
            if unknown:
                known = ", ".join(c.id for c in ALL_COMMANDS)
                self.notify(
                    f"[ui.keymap] has unknown id(s) {', '.join(unknown)}; known: {known}",
                    title="Keymap",
                    severity="warning",
                    timeout=15,
                )
        self.query_one("#filter-bar").display = False
        self.source.subscribe_alerts(self._on_alert)
        self.set_interval(1.0 / self.config.ui.refresh_hz, self.poll, name="poll")
        if self.engine is not None:
            self.run_engine()
            self._handle_sigterm(True)
        # draw this instance's data at once; the first poll adds the fleet
        self._apply(self._snapshot({}))
        self.refresh_view()
        self.poll()
        self.query_one(ConsumerTable).focus()

    def on_unmount(self) -> None:
        self._handle_sigterm(False)
        self.log_capture.restore()

    def _handle_sigterm(self, install: bool) -> None:
        """SIGTERM (a container or service manager stopping us) quits gracefully, like q."""
        if self.is_headless:
            return
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            if install:
                loop.add_signal_handler(signal.SIGTERM, lambda: self.call_later(self.action_quit))
            else:
                loop.remove_signal_handler(signal.SIGTERM)

    def on_resize(self) -> None:
        self.refresh_view()

    # ---- the engine worker -----------------------------------------------------------------
    @work(name="engine", group="engine", exclusive=True, exit_on_error=False)
    async def run_engine(self) -> None:
        """Start the HTTP API (when enabled) and the engine, run until asked to stop, then
        stop both (the engine finishes its batch, records counts and offsets, commits).

        When the app is torn down instead (the worker is cancelled), :meth:`run_async` stops
        the engine after the app has exited, on the same loop.
        """
        engine = self.engine
        assert engine is not None
        self.engine_state = "starting"
        self._engine_launched = True
        await self._start_extras(engine)
        try:
            await engine.start(wait_timeout=self.wait_timeout)
        except asyncio.CancelledError:
            raise
        except DependencyUnreachable:
            if not engine.stopping:
                await self._failed_start(engine)
                raise
            # asked to quit while waiting for Redis or the brokers: a clean stop
            await self._close_extras()
            with contextlib.suppress(Exception):
                await engine.stop(timeout=2)
            self._engine_closed = True
            self.engine_state = "stopped"
            return
        except BaseException:
            await self._failed_start(engine)
            raise
        self.engine_state = "running"
        await engine.wait_stopped()
        self.engine_state = "stopping"
        self.refresh_view()
        await self._close_extras()
        await engine.stop()
        self._engine_closed = True
        self.engine_state = "stopped"

    async def _failed_start(self, engine: Engine) -> None:
        await self._close_extras()
        with contextlib.suppress(Exception):
            await engine.stop(timeout=2)
        self._engine_closed = True

    async def _start_extras(self, engine: Engine) -> None:
        """The services headless mode runs beside the engine (the HTTP API, when enabled).

        A failure (a port in use, say) is a warning here: the console still runs the engine.
        """
        for extra in default_extras(self.config, self.engine_workers):
            try:
                self._closers.append(await extra(engine))
            except Exception as exc:
                text = self.mask(f"{type(exc).__name__}: {exc}")
                log.warning("HTTP API not started: %s", text)
                self.notify(
                    f"HTTP API not started: {text}", title="API", severity="warning", timeout=15
                )

    async def _close_extras(self) -> None:
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            try:
                await close()
            except Exception as exc:
                log.warning("closing the HTTP API failed: %s", exc)

    async def close_engine(self) -> None:
        """Stop the engine if the app went away without a graceful stop (idempotent)."""
        if self.engine is not None and self._engine_launched and not self._engine_closed:
            self._engine_closed = True
            await self._close_extras()
            with contextlib.suppress(Exception):
                await self.engine.stop(timeout=5)

    async def run_async(self, *args: Any, **kwargs: Any) -> int | None:
        try:
            return await super().run_async(*args, **kwargs)
        finally:
            await self.close_engine()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.name != "engine":
            if event.state == WorkerState.ERROR and worker.error is not None:
                self.notify(
                    f"{type(worker.error).__name__}: {worker.error}",
                    title="Command failed",
                    severity="error",
                )
            return
        if event.state == WorkerState.ERROR:
            err = worker.error
            self.engine_state = "failed"
            self.engine_error = (
                start_error_text(err, self.config) if err is not None else "unknown error"
            )
            log.error("engine failed: %s", self.engine_error)
            self.notify(
                f"{self.engine_error}\nPress q to quit.",
                title="Engine failed",
                severity="error",
                timeout=60,
            )
        if event.state in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            self.refresh_view()
            if self._quitting:
                self.exit(return_code=1 if self.engine_state == "failed" else 0)

    def _engine_running(self) -> bool:
        return any(w.name == "engine" and w.is_running for w in self.workers)

    # ---- data ------------------------------------------------------------------------------
    def poll(self, *, fleet: bool = False) -> None:
        """Read a snapshot and post it (skipped while the previous read is still running).

        ``fleet=True`` reads the fleet now rather than when it is due (the detail view opens)."""
        if fleet:
            self._fleet_read_at = None
        if self._polling:
            return
        self._polling = True
        self._poll_worker()

    @work(group="poll", exit_on_error=False)
    async def _poll_worker(self) -> None:
        try:
            self.deliver(await self.read_snapshot())
        finally:
            self._polling = False

    async def read_snapshot(self, *, fleet: bool = False) -> ConsoleSnapshot:
        """This instance's latest snapshot, its series and the fleet (read from the source when
        due, else the last read) as one frozen snapshot."""
        self._poll_seq += 1
        seq = self._poll_seq
        due = (
            fleet
            or self._fleet_read_at is None
            or time.monotonic() - self._fleet_read_at >= FLEET_POLL_S
        )
        histories: dict[str, tuple[Mapping[str, Any], ...]] = {}
        if due:
            self._fleet_read_at = time.monotonic()
            ok: bool | None
            try:
                async with asyncio.timeout(3):
                    view = await self.source.fleet()
                ok = True if view is not None else self._fleet_read_ok
            except Exception as exc:
                if self._fleet_read_ok is not False:
                    log.warning("fleet status unavailable: %s", exc)
                view, ok = self._fleet_read, False
            if seq > self._fleet_read_seq:  # a read started earlier never overwrites a later one
                self._fleet_read, self._fleet_read_ok, self._fleet_read_seq = view, ok, seq
            detail = self._detail_screen()
            wanted = [detail.consumer_id] if detail is not None else []
            if self._preview_for is not None and self._preview_for not in wanted:
                wanted.append(self._preview_for)  # the preview under a short table
            for cid in wanted:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(3):
                        records = await self.source.history(cid, 20)
                    histories[cid] = tuple(records)
        return self._snapshot(histories)

    def _snapshot(self, histories: Mapping[str, tuple[Mapping[str, Any], ...]]) -> ConsoleSnapshot:
        # numbered when built, not when its read started: a snapshot built later holds the
        # newest fleet read that finished, so it never loses to one built earlier (a poll
        # that did not read the fleet while a refresh's read was still under way)
        self._snapshot_seq += 1
        return ConsoleSnapshot(
            seq=self._snapshot_seq,
            instance=self.source.latest(),
            fleet=self._fleet_read,
            fleet_ok=self._fleet_read_ok,
            series={
                c.consumer_id: self.source.series(c.consumer_id) for c in self.config.consumers
            },
            histories=histories,
        )

    def deliver(self, snapshot: ConsoleSnapshot) -> None:
        """Put a snapshot in the slot (unless it holds a newer one); post a message only if
        none is queued already."""
        if self._slot is None or snapshot.seq > self._slot.seq:
            self._slot = snapshot
        if not self._posted:
            self._posted = True
            self.post_message(SnapshotReady(snapshot))

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self._posted = False
        snapshot, self._slot = self._slot, None
        if snapshot is not None and self._apply(snapshot):
            self.refresh_view()

    def _apply(self, snapshot: ConsoleSnapshot) -> bool:
        """Take a snapshot as the one shown (an older one than shown is dropped)."""
        if self.drawn is not None and snapshot.seq <= self.drawn.seq:
            return False
        self.drawn = snapshot
        self.snapshots_drawn += 1
        self._instance = snapshot.instance
        self._fleet = snapshot.fleet
        self._fleet_ok = snapshot.fleet_ok
        self._series_of = snapshot.series
        for cid, records in snapshot.histories.items():
            self._histories[cid] = [dict(r) for r in records]
        return True

    async def refresh_now(self) -> None:
        """Read everything and redraw at once (tests and screenshots call this)."""
        if self._apply(await self.read_snapshot(fleet=True)):
            self.refresh_view()

    @property
    def main_screen(self) -> Screen[Any]:
        """The consumers table's screen (the bottom of the stack), whatever is on top."""
        return self.screen_stack[0]

    def _table(self) -> ConsumerTable:
        return self.main_screen.query_one(ConsumerTable)

    def refresh_view(self) -> None:
        """Draw the snapshot taken last (after each poll's, commands, resizes, the filter)."""
        if not self.screen_stack:
            return
        try:
            table = self._table()
        except NoMatches:
            return
        now = self.clock()
        if self.engine is not None and self.engine.config is not self.config:
            self.adopt_config(self.engine.config)
        snap = self._instance
        rows = build_rows(self.config, snap, self._fleet, self._series_of, now, self.mask)
        self._rows = rows
        self._notify_finished_runs(rows)
        shown = sort_rows(
            [r for r in rows if r.matches(self.filter_text)], self.sort_key, self.sort_reverse
        )
        width = self.size.width
        compact = width < 110
        header = build_header(
            self.config,
            snap,
            self._fleet,
            rows,
            now,
            engine=self.engine_state,
            read_only=self.read_only,
            shown=len(shown),
            filter_text=self.filter_text,
            redis_ok=False if self._fleet_ok is False else None,
            mask=self.mask,
            waiting_for=self.engine.waiting_for if self.engine is not None else None,
        )
        palette = self.palette
        for screen in self.screen_stack:
            for h in screen.query(FleetHeader):
                h.show(header, compact)
        table.show(
            shown,
            palette,
            max(width - 2, 40),
            layout_rows=rows,
            sort=(self.sort_key, self.sort_key is not None and self._sort_descending()),
        )
        self._layout_preview(len(shown))
        self._show_selection()
        new_lines = self.logbook.drain()
        if new_lines:
            for panel in self._log_panels():
                panel.append(new_lines, palette)
        detail = self._detail_screen()
        if detail is not None:
            self._show_detail(detail, rows, now, compact)

    def _log_panels(self) -> list[LogPanel]:
        return [panel for screen in self.screen_stack for panel in screen.query(LogPanel)]

    def _layout_preview(self, shown: int) -> None:
        """A short table takes the rows it needs and the selected consumer's preview the rest;
        a table that needs the room gets all of it."""
        main = self.main_screen
        table, preview = self._table(), main.query_one(ConsumerPreview)
        fixed = 3  # header, status line, footer
        if main.query_one("#filter-bar").display:
            fixed += 1
        if main.query_one("#command-bar").display:
            fixed += 1
        if self.show_log:
            fixed += 8
        spare = preview_rows(main.size.height - fixed, shown + 1)
        height = f"{shown + 1}" if spare else "1fr"
        if str(table.styles.height) != height:
            table.styles.height = height
        if preview.display != bool(spare):
            preview.display = bool(spare)
        self._preview_lines = max(spare - 4, 0)  # under the title, two sparklines and a rule

    def _show_preview(self, row: ConsumerRow | None) -> None:
        preview = self.main_screen.query_one(ConsumerPreview)
        if row is None or not preview.display:
            self._preview_for = None
            return
        if self._preview_for != row.consumer_id:
            self._preview_for = row.consumer_id
            if row.consumer_id not in self._histories:
                self.call_after_refresh(self.poll, fleet=True)  # read its history now
        records = self._histories.get(row.consumer_id)
        history = (
            None
            if records is None
            else build_history(
                records,
                self.clock(),
                offsets_limit=1 if self.size.width < 110 else 3,
                mask=self.mask,
            )
        )
        preview.show(
            row,
            self._series_of.get(row.consumer_id, Series()),
            history,
            self.palette,
            self._preview_lines,
        )

    def _show_selection(self) -> None:
        sel = self.main_screen.query_one("#selection", Static)
        cid = self._table().selected_id
        row = next((r for r in self._rows if r.consumer_id == cid), None)
        self._show_preview(row)
        if row is None:
            sel.update(" no consumer matches the filter" if self.filter_text else "")
            return
        bits = [
            f" [b]{escape(row.consumer_id)}[/b] → {escape(row.pipeline)} ({row.job_type})",
            f"time lag {fmt_span(row.time_lag_seconds)}",
        ]
        if row.verdict not in (None, "ok"):
            colour = VERDICT_VARIABLE.get(row.verdict or "", "foreground")
            reason = f": {escape(row.verdict_reason)}" if row.verdict_reason else ""
            badge = f" {alert_badge(len(row.alerts))}" if row.alerts else ""
            bits.append(f"[${colour}]{escape(row.verdict or '')}{badge}{reason}[/]")
        elif row.alerts:
            bits.append(f"[$warning]{alert_badge(len(row.alerts))} alert(s) firing[/]")
        if row.backlog:
            bits.append(
                f"[$lag-warn]{row.backlog} window(s) waiting for the pipeline, oldest "
                f"{fmt_span(row.backlog_age_seconds)}[/]"
            )
        bits += [
            f"topic {escape(row.topic)}",
            f"window #{row.window_id}",
            f"total {row.total:,}",
        ]
        if row.instances:
            n = len(row.instances)
            bits.append(f"on {n} instance{'s' if n > 1 else ''}")
        if row.paused_by and row.verdict != "paused":  # a paused verdict says who already
            bits.append(f"[$state-paused]paused by {escape(row.paused_by)}[/]")
        if row.last_error:
            bits.append(f"[$state-error]{escape(row.last_error)}[/]")
        sel.update(" · ".join(bits))

    def _detail_screen(self) -> DetailScreen | None:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, DetailScreen):
                return screen
        return None

    def _show_detail(
        self, detail: DetailScreen, rows: list[ConsumerRow], now: int, compact: bool
    ) -> None:
        row = next((r for r in rows if r.consumer_id == detail.consumer_id), None)
        if row is None:
            return
        cfg = self.config.consumer(row.consumer_id)
        model = DetailModel(
            row=row,
            partitions=partitions_of(row.consumer_id, self._instance, self._fleet),
            history=build_history(
                self._histories.get(row.consumer_id, []),
                now,
                offsets_limit=1 if compact else 3,
                mask=self.mask,
            ),
            errors=self.logbook.errors_for(row.consumer_id),
            config=config_lines(
                self.masked_config,
                row.consumer_id,
                runtime=self.engine is not None
                and row.consumer_id in self.engine.runtime_consumer_ids,
            ),
            series=self._series_of.get(row.consumer_id, Series()),
            dlq_topic=cfg.dlq_topic if cfg.error_handling.on_error == "dlq" else None,
            now_ms=now,
        )
        detail.show(model, self.palette, compact)
        for panel in detail.query(LogPanel):
            if panel.display != self.show_log:
                panel.reveal(self.show_log)

    def _notify_finished_runs(self, rows: list[ConsumerRow]) -> None:
        """After a manual trigger, say how its pipeline run ended."""
        for row in rows:
            wid = self._watch_runs.get(row.consumer_id)
            t = row.last_trigger
            if wid is None or t is None or t.window_id != wid:
                continue
            if t.status in ("succeeded", "failed", "cancelled", "coalesced"):
                del self._watch_runs[row.consumer_id]
                self.notify(
                    f"{row.consumer_id}: pipeline {row.pipeline} {t.status} for window #{wid}",
                    title="Pipeline run",
                    severity="error" if t.status == "failed" else "information",
                )

    # ---- selection helpers -----------------------------------------------------------------
    def selected_row(self) -> ConsumerRow | None:
        detail = self._detail_screen()
        cid = detail.consumer_id if detail is not None else self._table().selected_id
        return next((r for r in self._rows if r.consumer_id == cid), None)

    def _refused(self, what: str) -> bool:
        if self.read_only:
            self._toast(ReadOnlyError(what.lower(), local=True).toast(what))
            return True
        if not self.source.ready:
            self.notify(
                f"{what} not possible yet: the engine is {self.engine_state}.",
                title="Not ready",
                severity="warning",
            )
            return True
        return False

    def _toast(self, toast: Toast) -> None:
        self.notify(toast.message, title=toast.title, severity=toast.severity)

    def _command_failed(self, exc: Exception, what: str, cid: str | None = None) -> None:
        """Say why a command failed: a refusal of the control family as it maps itself (a
        read-only engine's refusal is a warning, not an error), anything else as an error."""
        if isinstance(exc, ControlError):
            self._toast(exc.toast(what, cid))
            return
        who = f"{cid}: " if cid else ""
        self.notify(f"{who}{type(exc).__name__}: {exc}", title=f"{what} failed", severity="error")

    # ---- alerts ----------------------------------------------------------------------------
    def _on_alert(self, event: AlertEvent) -> None:
        """The engine's alert listener (called on the engine's loop, the app's): draw later."""
        if event.channel == ALERT_CHANNEL and self.is_running:
            self.call_later(self.show_alert, event)

    def show_alert(self, event: AlertEvent) -> None:
        """A toast for an alert of channel ``tui``: a warning when it fires, information when
        it resolves."""
        if event.channel != ALERT_CHANNEL:
            return
        if event.status == AlertStatus.FIRING:
            self.notify(
                f"{event.consumer_id}: {event.message}",
                title=f"Alert {event.rule} firing",
                severity="warning",
                timeout=15,
            )
        else:
            self.notify(
                f"{event.consumer_id}: {event.message}",
                title=f"Alert {event.rule} resolved",
                severity="information",
            )
        self.refresh_view()

    def _need_row(self) -> ConsumerRow | None:
        row = self.selected_row()
        if row is None:
            self.notify("No consumer selected.", severity="warning")
        return row

    # ---- actions ---------------------------------------------------------------------------
    def action_toggle_pause(self) -> None:
        row = self._need_row()
        if row is None or self._refused("Pause" if not row.paused else "Resume"):
            return
        self._toggle_pause(row)

    @work(group="commands", exit_on_error=False)
    async def _toggle_pause(self, row: ConsumerRow) -> None:
        cid = row.consumer_id
        try:
            if row.paused:
                await self.source.resume(cid)
                self.notify(f"{cid} resumed on every instance.", title="Resumed")
            else:
                await self.source.pause(cid)
                self.notify(
                    f"{cid} paused on every instance (the group keeps its members).", title="Paused"
                )
        except Exception as exc:
            self._command_failed(exc, "Resume" if row.paused else "Pause", cid)
        await self.refresh_now()

    def action_toggle_pause_all(self) -> None:
        if not self._rows or self._refused("Pause all"):
            return
        self._toggle_pause_all(all(r.paused for r in self._rows))

    @work(group="commands", exit_on_error=False)
    async def _toggle_pause_all(self, resume: bool) -> None:
        try:
            if resume:
                ids = await self.source.resume(None)
                self.notify(f"All {len(ids)} consumers resumed on every instance.", title="Resumed")
            else:
                ids = await self.source.pause(None)
                self.notify(f"All {len(ids)} consumers paused on every instance.", title="Paused")
        except Exception as exc:
            self._command_failed(exc, "Resume all" if resume else "Pause all")
        await self.refresh_now()

    def action_reset(self) -> None:
        row = self._need_row()
        if row is None or self._refused("Reset"):
            return
        self._confirm_reset(row)

    async def _reset_body(self, cid: str) -> str:
        """The reset dialog's text, from the open window as it is now."""
        w = await self.source.window(cid)
        age = fmt_span((self.clock() - (w.opened_at_ms or 0)) / 1000) + " ago"
        return (
            f"Window [b]#{w.window_id}[/b] of [b]{cid}[/b] holds "
            f"[b $warning]{w.count:,} event(s)[/] ({_window_facts(w, age)}).\n\n"
            "They will be [b]discarded[/b]: the count goes back to 0 and "
            f"[b]no pipeline runs[/b]. The events are not counted again."
        )

    @work(group="commands", exit_on_error=False)
    async def _confirm_reset(self, row: ConsumerRow) -> None:
        cid = row.consumer_id
        try:
            body = await self._reset_body(cid)
        except Exception as exc:
            self.notify(
                f"{cid}: cannot read the open window: {exc}", title="Reset", severity="error"
            )
            return
        ok = await self.push_screen_wait(
            ConfirmDialog(
                f"Reset {cid}?",
                body,
                "Reset",
                variant="error",
                live=partial(self._reset_body, cid),
            )
        )
        if not ok:
            self.notify(f"Reset of {cid} cancelled; nothing changed.", title="Reset")
            return
        try:
            res = await self.source.reset(cid)
        except Exception as exc:
            self._command_failed(exc, "Reset", cid)
            return
        self.notify(
            f"{cid}: window #{res.window_id} reset, {res.discarded:,} event(s) "
            "discarded, no pipeline run.",
            title="Reset",
        )
        await self.refresh_now()

    def action_trigger(self) -> None:
        row = self._need_row()
        if row is None or self._refused("Trigger"):
            return
        self._confirm_trigger(row)

    async def _trigger_body(self, cid: str) -> str:
        """The trigger dialog's text, from the open window as it is now."""
        w = await self.source.window(cid)
        age = fmt_span((self.clock() - (w.opened_at_ms or 0)) / 1000) + " ago"
        cfg = self.config.consumer(cid)
        body = (
            f"Window [b]#{w.window_id}[/b] of [b]{cid}[/b] closes now with reason "
            f"[b]manual[/b]: [b $accent]{w.count:,} event(s)[/] "
            f"({_window_facts(w, age)}).\n\n"
            f"Pipeline [b]{cfg.pipeline_name}[/b] ({cfg.job_type}) runs with it; "
            f"counting goes on in window #{w.window_id + 1}."
        )
        if w.count == 0:
            body += "\nThe window is empty: the pipeline runs with 0 events."
        return body

    @work(group="commands", exit_on_error=False)
    async def _confirm_trigger(self, row: ConsumerRow) -> None:
        cid = row.consumer_id
        cfg = self.config.consumer(cid)
        try:
            body = await self._trigger_body(cid)
        except Exception as exc:
            self.notify(
                f"{cid}: cannot read the open window: {exc}", title="Trigger", severity="error"
            )
            return
        ok = await self.push_screen_wait(
            ConfirmDialog(
                f"Force-trigger {cid}?",
                body,
                "Trigger",
                variant="warning",
                live=partial(self._trigger_body, cid),
            )
        )
        if not ok:
            self.notify(f"Trigger of {cid} cancelled; nothing changed.", title="Trigger")
            return
        try:
            res = await self.source.trigger(cid)
        except Exception as exc:
            self._command_failed(exc, "Trigger", cid)
            return
        if res.closed:
            self._watch_runs[cid] = res.window_id
            self.notify(
                f"{cid}: window #{res.window_id} closed (manual, {res.count:,} "
                f"event(s)); pipeline {cfg.pipeline_name} dispatched.",
                title="Triggered",
            )
        else:
            self.notify(
                f"{cid}: nothing closed ({res.status}).", title="Trigger", severity="warning"
            )
        await self.refresh_now()

    async def _seek_body(self, cid: str, to: str, window: str) -> str:
        """The seek dialog's text, from a plan read now (positions and the open window)."""
        plan = await self.source.seek_plan(cid, to, window)
        return seek_dialog_body(plan, self.config.consumer(cid).pipeline_name)

    @work(group="commands", exit_on_error=False)
    async def _confirm_seek(self, row: ConsumerRow, to: str, window: str) -> None:
        """``:seek ID TARGET [close|discard]``: the plan in a live dialog, then the seek.

        A time ago (``-2h``) is pinned to the moment the dialog opens, so what is applied is
        the time the dialog shows, however long it stays open."""
        cid = row.consumer_id
        target = parse_target(to, now_ms=self.clock())
        if target.kind == "time" and target.time_ms is not None and to.startswith("-"):
            to = iso_ms(target.time_ms) or to
        try:
            body = await self._seek_body(cid, to, window)
        except ControlError as exc:
            self._command_failed(exc, "Seek", cid)
            return
        except Exception as exc:
            self.notify(
                f"{cid}: cannot read where it stands: {type(exc).__name__}: {exc}",
                title="Seek failed",
                severity="error",
            )
            return
        ok = await self.push_screen_wait(
            ConfirmDialog(
                f"Seek {cid}?",
                body,
                "Seek",
                variant="error" if window == "discard" else "warning",
                live=partial(self._seek_body, cid, to, window),
            )
        )
        if not ok:
            self.notify(f"Seek of {cid} cancelled; nothing changed.", title="Seek")
            return
        try:
            res = await self.source.seek(cid, to, window)
        except Exception as exc:
            self._command_failed(exc, "Seek", cid)
            return
        if res.closed_window_id is not None:
            self._watch_runs[cid] = res.closed_window_id
        self.notify(seek_result_text(res, self.config.consumer(cid).pipeline_name), title="Seek")
        await self.refresh_now()

    def action_detail(self) -> None:
        if self._detail_screen() is not None:
            return
        row = self._need_row()
        if row is None:
            return
        self.push_screen(DetailScreen(row.consumer_id, self.logbook.lines(), self.palette))
        self.call_after_refresh(self.poll, fleet=True)
        self.call_after_refresh(self.refresh_view)

    @on(DataTable.RowSelected, "#consumers")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_detail()

    @on(DataTable.RowHighlighted, "#consumers")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_selection()

    def action_leave(self) -> None:
        """Escape: leave the detail view or the command line, else clear and hide the filter."""
        if self._close_command_line():
            return
        if isinstance(self.screen, DetailScreen):
            self.pop_screen()
            self.refresh_view()
            return
        main = self.main_screen
        if self.filter_text or main.query_one("#filter-bar").display:
            self.filter_text = ""
            main.query_one("#filter", Input).value = ""
            main.query_one("#filter-bar").display = False
            self._table().focus()
            self.refresh_view()

    def action_filter(self) -> None:
        if isinstance(self.screen, DetailScreen):
            self.pop_screen()
        self.main_screen.query_one("#filter-bar").display = True
        self.main_screen.query_one("#filter", Input).focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.refresh_view()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value:
            self.main_screen.query_one("#filter-bar").display = False
        self._table().focus()

    def action_toggle_log(self) -> None:
        self.show_log = not self.show_log
        for panel in self._log_panels():
            panel.reveal(self.show_log)
        self.refresh_view()

    # ---- the command line ------------------------------------------------------------------
    def action_command_line(self) -> None:
        """``:`` opens the command line at the bottom of the table."""
        if isinstance(self.screen, DetailScreen):
            self.pop_screen()
        main = self.main_screen
        main.query_one("#command-bar").display = True
        field = main.query_one("#command", Input)
        field.value = ""
        field.focus()
        self.call_after_refresh(field.focus)  # after a popped screen gives focus back
        self.refresh_view()

    def _close_command_line(self) -> bool:
        bar = self.main_screen.query_one("#command-bar")
        if not bar.display:
            return False
        bar.display = False
        self._table().focus()
        self.refresh_view()
        return True

    @on(Input.Submitted, "#command")
    def _command_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._close_command_line()
        if event.value.strip():
            self.run_command_line(event.value)

    def run_command_line(self, line: str) -> None:
        """Run one ``:`` command through the same actions as the keys (confirm dialogs and the
        read-only refusal included); a line that cannot run says why in a toast."""
        try:
            cmd = parse_command(line, [c.consumer_id for c in self.config.consumers])
        except CommandLineError as exc:
            self.notify(str(exc), title="Command", severity="error")
            return
        row = next((r for r in self._rows if r.consumer_id == cmd.target), None)
        if cmd.name in ("pause", "resume"):
            what = "Pause" if cmd.name == "pause" else "Resume"
            if self._refused(what if cmd.target != "all" else f"{what} all"):
                return
            if cmd.target == "all":
                self._toggle_pause_all(cmd.name == "resume")
            else:
                self._set_paused(str(cmd.target), cmd.name == "pause")
        elif cmd.name in ("reset", "trigger", "detail", "seek"):
            if row is None:
                self.notify(f"{cmd.target}: not in the table yet.", severity="warning")
                return
            if cmd.name == "detail":
                self.push_screen(DetailScreen(row.consumer_id, self.logbook.lines(), self.palette))
                self.call_after_refresh(self.poll, fleet=True)
                self.call_after_refresh(self.refresh_view)
            elif not self._refused(cmd.name.capitalize()):
                if cmd.name == "seek":
                    self._confirm_seek(row, str(cmd.to), cmd.window)
                elif cmd.name == "reset":
                    self._confirm_reset(row)
                else:
                    self._confirm_trigger(row)
        elif cmd.name == "filter":
            main = self.main_screen
            self.filter_text = cmd.target or ""
            main.query_one("#filter", Input).value = self.filter_text
            main.query_one("#filter-bar").display = bool(self.filter_text)
            self.refresh_view()
        elif cmd.name == "sort":
            self.sort_key = cmd.target
            self.sort_reverse = (
                cmd.target is not None
                and cmd.descending is not None
                and cmd.descending != SORT_BY_KEY[cmd.target].descending
            )
            self._sorted()
        elif cmd.name == "theme":
            if cmd.target not in self.available_themes:
                known = ", ".join(sorted(self.available_themes))
                self.notify(f"no theme {cmd.target!r}; themes: {known}", severity="error")
                return
            self.theme = str(cmd.target)
            self.notify(f"Theme: {cmd.target}", title="Theme")
        elif cmd.name == "reload":
            self.action_reload()
        elif cmd.name == "log":
            self.action_toggle_log()
        elif cmd.name == "help":
            self.action_help()
        elif cmd.name == "quit":
            self.call_later(self.action_quit)

    def action_reload(self) -> None:
        """``R``: re-read this instance's config file and apply it live."""
        if self._refused("Reload"):
            return
        self._reload()

    @work(group="commands", exit_on_error=False)
    async def _reload(self) -> None:
        try:
            result = await self.source.reload()
        except Exception as exc:
            self._command_failed(exc, "Reload")
            return
        if result.ok:
            self.notify(result.summary(), title="Reloaded")
        else:
            problems = "; ".join(result.problems[:3])
            more = f" (+{len(result.problems) - 3} more)" if len(result.problems) > 3 else ""
            text = result.summary() + (f": {problems}{more}" if problems else "")
            self.notify(text, title="Reload refused", severity="error", timeout=20)
        await self.refresh_now()

    def adopt_config(self, config: AppConfig) -> None:
        """The engine runs another configuration (a reload, here or fleet-wide): the table,
        the masks and the command line's suggestions follow it."""
        self.config = config
        self.mask = masker(config)
        self.masked_config = mask_config(config)
        field = self.main_screen.query_one("#command", Input)
        field.suggester = command_suggester([c.consumer_id for c in config.consumers])

    @work(group="commands", exit_on_error=False)
    async def _set_paused(self, cid: str, pause: bool) -> None:
        try:
            if pause:
                await self.source.pause(cid)
                self.notify(
                    f"{cid} paused on every instance (the group keeps its members).", title="Paused"
                )
            else:
                await self.source.resume(cid)
                self.notify(f"{cid} resumed on every instance.", title="Resumed")
        except Exception as exc:
            self._command_failed(exc, "Pause" if pause else "Resume", cid)
        await self.refresh_now()

    def action_cycle_theme(self) -> None:
        names = [t.name for t in self.console_themes] or [DEFAULT_THEME]
        nxt = names[(names.index(self.theme) + 1) % len(names)] if self.theme in names else names[0]
        self.theme = nxt
        self.notify(f"Theme: {nxt}", title="Theme")

    # ---- sorting ---------------------------------------------------------------------------
    def _sort_descending(self) -> bool:
        return self.sort_key is not None and (
            SORT_BY_KEY[self.sort_key].descending != self.sort_reverse
        )

    def action_sort_by(self, key: str) -> None:
        """Sort by a column (its first direction); the same column again reverses it; ``""``
        goes back to the config's order."""
        if not key:
            self.sort_key, self.sort_reverse = None, False
        elif key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = key, False
        self._sorted()

    def action_cycle_sort(self) -> None:
        """The next sortable column shown, then the config's order again."""
        shown = self._table().column_keys
        keys = [c.key for c in SORT_COLUMNS if c.key in shown]
        at = keys.index(self.sort_key) + 1 if self.sort_key in keys else 0
        self.sort_key = keys[at] if at < len(keys) else None
        self.sort_reverse = False
        self._sorted()

    def _sorted(self) -> None:
        if isinstance(self.screen, DetailScreen):
            self.pop_screen()
        self.refresh_view()
        if self.sort_key is None:
            self.notify("Sorted in config order.", title="Sort")
        else:
            way = "descending" if self._sort_descending() else "ascending"
            title = SORT_BY_KEY[self.sort_key].title
            self.notify(f"Sorted by {title}, {way}.", title="Sort")

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        keymap = self.config.ui.keymap
        display = {
            c.id: ", ".join(
                self.get_key_display(Binding(k.strip(), ""))
                for k in keymap.get(c.id, c.key).split(",")
            )
            for c in ALL_COMMANDS
        }
        self.push_screen(HelpScreen(display, self.palette))

    async def action_quit(self) -> None:
        if self._quitting:
            self.exit(return_code=1)
            return
        self._quitting = True
        if self.engine is not None and self._engine_running():
            self.notify(
                "Stopping: finishing the batch in hand and committing offsets…",
                title="Quit",
                timeout=QUIT_GRACE_S,
            )
            self.engine.request_stop()
            self.set_timer(QUIT_GRACE_S, self._force_quit)
            self.refresh_view()
            return
        self.exit(return_code=1 if self.engine_state == "failed" else 0)

    def _force_quit(self) -> None:
        for w in self.workers:
            if w.name == "engine":
                w.cancel()
        self.exit(return_code=1)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide bindings that mean nothing where the user is (footer and keys alike)."""
        return not (action == "detail" and isinstance(self.screen, DetailScreen))

    # ---- command palette -------------------------------------------------------------------
    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        for c in APP_COMMANDS + SORT_COMMANDS:
            if c.palette and c.id != "quit":
                yield SystemCommand(c.title, c.help, partial(self.run_action, c.action))
        yield from super().get_system_commands(screen)


def _window_facts(w: WindowState, age: str) -> str:
    facts = f"opened {age}" if w.opened_at_ms else "not opened yet"
    if w.ranges:
        facts += "; offsets " + fmt_offsets([r.to_json_dict() for r in w.ranges], limit=4)
    return facts


#: Lines of partitions in the seek dialog: more partitions than this show one line fewer and
#: sum up the rest in the last line (the dialog fits an 80x24 terminal).
SEEK_DIALOG_PARTITIONS = 8


def seek_dialog_body(plan: SeekPlan, pipeline: str) -> str:
    """The seek dialog's text (markup): the target in words, per partition where counting
    stands and where it goes on from (at most :data:`SEEK_DIALOG_PARTITIONS` lines), the
    totals and what happens to the open window."""
    moves = plan.partitions
    fit = len(moves) if len(moves) <= SEEK_DIALOG_PARTITIONS else SEEK_DIALOG_PARTITIONS - 1
    shown = moves[:fit]
    names = [f"{m.topic}[{m.partition}]" for m in shown]
    nows = ["-" if m.current is None else f"{m.current:,}" for m in shown]
    tos = [f"{m.target:,}" for m in shown]
    wn, wc, wt = (max(map(len, col), default=0) for col in (names, nows, tos))
    lines = [
        f"[b]{escape(plan.consumer_id)}[/b] goes on from [b]{escape(plan.resolved)}[/b] "
        f"on {len(moves)} partition(s):",
        "",
    ]
    for m, name, now, to in zip(shown, names, nows, tos, strict=True):
        if m.reread:
            what = f"[$accent]{m.reread:,} read again[/]"
        elif m.skipped:
            what = f"[$warning]{m.skipped:,} skipped[/]"
        elif m.current is None:
            what = "nothing counted yet"
        else:
            what = "no change"
        lines.append(f"  {escape(f'{name:<{wn}}')}  {now:>{wc}} → {to:<{wt}}  {what}")
    rest = moves[fit:]
    if rest:
        reread, skipped = sum(m.reread for m in rest), sum(m.skipped for m in rest)
        lines.append(
            f"  … and {len(rest)} more partition(s): {reread:,} read again, {skipped:,} skipped"
        )
    reread_text = f"[b $accent]{plan.reread:,}[/]" if plan.reread else "0"
    skipped_text = f"[b $warning]{plan.skipped:,}[/]" if plan.skipped else "0"
    lines += [
        "",
        f"In all {reread_text} event(s) read again (counted again, in new windows marked "
        f"replay) and {skipped_text} skipped (never counted).",
    ]
    lines += [escape(w) for w in plan.warnings[:2]]
    if not plan.window_count:
        lines.append(f"The open window #{plan.window_id} is empty: nothing closes.")
    elif plan.window == "close":
        lines.append(
            f"The open window #{plan.window_id} ([b]{plan.window_count:,} event(s)[/b]) closes "
            f"now with reason [b]seek[/b]; pipeline [b]{escape(pipeline)}[/b] runs with it."
        )
    else:
        lines.append(
            f"The open window #{plan.window_id} ([b]{plan.window_count:,} event(s)[/b]) is "
            "[b]discarded[/b]: no pipeline runs."
        )
    return "\n".join(lines)


def seek_result_text(res: SeekResult, pipeline: str) -> str:
    """The toast after a seek: what is read again or skipped, what became of the window."""
    if res.closed_window_id is not None:
        window = f"window #{res.closed_window_id} closed (seek), pipeline {pipeline} dispatched"
    elif res.discarded:
        window = f"{res.discarded:,} event(s) of the open window discarded, no pipeline run"
    else:
        window = "the open window was empty"
    return (
        f"{res.consumer_id}: {res.reread:,} event(s) to read again, {res.skipped:,} "
        f"skipped; {window}; every instance follows within a second."
    )


def run_tui(
    config: AppConfig,
    *,
    instance_id: str | None = None,
    theme: str | None = None,
    wait_timeout: float | None = None,
    workers: int = 1,
) -> int:
    """Run the console (with its engine) until the user quits; returns the exit code.

    ``workers`` > 1 also runs that many minus one engine processes beside it (their log lines
    in the console's log)."""
    app = KafkaConsoleApp(config, instance_id=instance_id, theme=theme)
    app.wait_timeout = wait_timeout
    app.engine_workers = WorkerSpec(workers, forward_logs=True)
    app.run()
    return int(app.return_code or 0)


__all__ = ["KafkaConsoleApp", "run_tui", "seek_dialog_body", "seek_result_text"]
