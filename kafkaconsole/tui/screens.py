"""Screens on top of the consumers table: consumer detail, confirm dialogs, help."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Label,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.button import ButtonVariant

from kafkaconsole.tui.bindings import (
    APP_COMMANDS,
    CONFIRM_COMMANDS,
    DETAIL_COMMANDS,
    bindings_for,
)
from kafkaconsole.tui.viewmodel import (
    NONE_TEXT,
    AlertView,
    ConsumerRow,
    FleetPartition,
    HistoryRow,
    LogLine,
    Series,
    fmt_count,
    fmt_rate,
    fmt_span,
)
from kafkaconsole.tui.widgets import (
    ALERT_VARIABLE,
    PIPELINE_GLYPH,
    STATE_GLYPH,
    VERDICT_VARIABLE,
    FleetHeader,
    LogPanel,
    Palette,
    bar_text,
    count_labels,
    log_text,
    pipeline_variable,
    state_text,
    verdict_text,
    verdict_variable,
)


@dataclass(frozen=True, slots=True)
class DetailModel:
    """Everything the detail view shows for one consumer."""

    row: ConsumerRow
    partitions: Sequence[FleetPartition]
    history: Sequence[HistoryRow]
    errors: Sequence[LogLine]
    config: Sequence[str]
    series: Series
    dlq_topic: str | None
    now_ms: int = 0


def _num(value: int | None) -> str:
    return NONE_TEXT if value is None else f"{value:,}"


def clock_text(ms: int) -> str:
    """A wall-clock time like the log panel's (local time, HH:MM:SS)."""
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def since_text(since_ms: int | None, now_ms: int) -> str:
    """``for 2m (since 12:03:04)``, or nothing when unknown."""
    if since_ms is None:
        return ""
    return f"for {fmt_span((now_ms - since_ms) / 1000)} (since {clock_text(since_ms)})"


def health_line(row: ConsumerRow, palette: Palette, now_ms: int) -> Text:
    """The detail view's health line: verdict, since when, time lag, then the reason."""
    text = Text("health ", style=palette["foreground-muted"])
    text.append_text(verdict_text(row.verdict, len(row.alerts), palette))
    since = since_text(row.verdict_since_ms, now_ms)
    if since:
        text.append(f" {since}")
    text.append(f" · time lag {fmt_span(row.time_lag_seconds)}")
    if row.verdict_reason:
        text.append(" · ")
        bad = row.verdict not in (None, "ok")
        text.append(row.verdict_reason, style=palette[verdict_variable(row.verdict)] if bad else "")
    return text


def alerts_text(alerts: Sequence[AlertView], palette: Palette, now_ms: int) -> Text:
    """One line per active alert: name, channel, since when, message."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for n, a in enumerate(alerts):
        if n:
            text.append("\n")
        text.append("! ", style=palette[ALERT_VARIABLE] + Style(bold=True))
        text.append(a.alert, style=Style(bold=True))
        text.append(f" ({a.channel})", style=palette["foreground-muted"])
        since = since_text(a.since_ms, now_ms)
        if since:
            text.append(f" {since}")
        if a.message:
            text.append(f": {a.message}")
    return text


class DetailScreen(Screen[None]):
    """One consumer: window progress, sparklines, partitions, trigger history, errors, config."""

    BINDINGS = bindings_for(DETAIL_COMMANDS)
    TAB_FOCUS = {"overview": "#history", "errors": "#errors-scroll", "config": "#config-scroll"}

    def __init__(
        self, consumer_id: str, log_lines: Sequence[LogLine] = (), palette: Palette | None = None
    ) -> None:
        super().__init__(id="detail")
        self.consumer_id = consumer_id
        self._log_lines = log_lines
        self._palette = palette
        self._history_sig: tuple[HistoryRow, ...] | None = None
        self._parts_sig: tuple[FleetPartition, ...] | None = None
        self._config_sig: tuple[str, ...] | None = None
        self._errors_sig: tuple[LogLine, ...] | None = None
        self._ready = False

    def compose(self) -> ComposeResult:
        yield FleetHeader(id="detail-header", classes="header")
        yield Static(id="detail-title")
        yield Static(id="detail-health")
        yield Static(id="detail-window")
        with Horizontal(classes="spark-row"):
            yield Label("events/s", classes="spark-label")
            yield Sparkline([], id="spark-rate", classes="spark")
            yield Static(id="rate-value", classes="spark-value")
        with Horizontal(classes="spark-row"):
            yield Label("lag", classes="spark-label")
            yield Sparkline([], id="spark-lag", classes="spark")
            yield Static(id="lag-value", classes="spark-value")
        with TabbedContent(initial="overview", id="detail-tabs"):
            with TabPane("1 Overview", id="overview"):
                yield Static(id="alerts")
                yield DataTable(id="partitions", cursor_type="row", show_cursor=False)
                yield DataTable(id="history", cursor_type="row")
            with TabPane("2 Errors", id="errors"), VerticalScroll(id="errors-scroll"):
                yield Static(id="errors-summary")
                yield Static(id="errors-tail")
            with TabPane("3 Config", id="config"), VerticalScroll(id="config-scroll"):
                yield Static(id="config-text")
        panel = LogPanel(self._log_lines, id="detail-log", classes="log")
        if self._palette is not None:
            panel.repaint(self._palette)
        yield panel
        yield Footer(compact=True)

    def on_mount(self) -> None:
        parts = self.query_one("#partitions", DataTable)
        for label in ("Partition", "Position", "High watermark", "Lag", "Time lag", "Owner"):
            parts.add_column(label, key=label)
        hist = self.query_one("#history", DataTable)
        for label in ("Window", "Reason", "Count", "Status", "Duration", "Closed", "Offsets"):
            hist.add_column(label, key=label)
        self.query_one("#history", DataTable).focus()
        self._ready = True

    def action_show_tab(self, tab: str) -> None:
        # Focus moves into the pane too: a focused widget in another pane would switch back.
        self.query_one(TabbedContent).active = tab
        self.query_one(self.TAB_FOCUS[tab]).focus()

    def show(self, model: DetailModel, palette: Palette, compact: bool) -> None:
        if not self._ready:  # the refresh timer may fire between push and mount
            return
        try:
            self._show(model, palette, compact)
        except NoMatches:
            # the refresh timer fired while the app was exiting and removing this screen's
            # widgets; any other missing widget is a real fault
            if self.query("#detail-title"):
                raise

    def _show(self, model: DetailModel, palette: Palette, compact: bool) -> None:
        row = model.row
        p = row.progress
        title = Text()
        title.append(f" {row.consumer_id}", style="bold")
        title.append(f"  topic {row.topic} → {row.pipeline} ({row.job_type})  ")
        title.append_text(state_text(row.state, palette))
        if row.paused_by:
            title.append(f" by {row.paused_by}", style=palette["state-paused"])
        self.query_one("#detail-title", Static).update(title)
        self.query_one("#detail-health", Static).update(health_line(row, palette, model.now_ms))
        alerts = self.query_one("#alerts", Static)
        alerts.display = bool(row.alerts)
        alerts.update(alerts_text(row.alerts, palette, model.now_ms))

        width = 12 if compact else 20
        line = Text(f" window #{row.window_id}  ")
        line.append_text(
            bar_text(
                p.count_ratio,
                width,
                count_labels(row.count, row.max_event),
                "threshold-bar",
                palette,
                f"{p.count_ratio:.0%}",
            )
        )
        line.append("  ")
        line.append_text(
            bar_text(
                p.time_ratio,
                width,
                f"{fmt_span(p.elapsed_seconds)}/{fmt_span(row.max_time)}",
                "time-bar",
                palette,
                f"{p.time_ratio:.0%}",
            )
        )
        line.append(f"  next: {row.eta_text}")
        if not compact:
            line.append(f"  total {fmt_count(row.total)}")
        self.query_one("#detail-window", Static).update(line)

        rates = list(model.series.rates) or [0.0]
        lags = list(model.series.lags) or [0.0]
        self.query_one("#spark-rate", Sparkline).data = rates
        self.query_one("#spark-lag", Sparkline).data = lags
        self.query_one("#rate-value", Static).update(
            f"{fmt_rate(row.rate)}/s  max {fmt_rate(max(*rates, row.rate))}"
        )
        self.query_one("#lag-value", Static).update(
            f"{fmt_count(row.lag)}  max {fmt_count(max(*lags, row.lag or 0))}"
        )

        parts = tuple(model.partitions)
        if parts != self._parts_sig:
            self._parts_sig = parts
            table = self.query_one("#partitions", DataTable)
            table.clear()
            many = len({part.topic for part in parts}) > 1  # then each row names its topic
            for part in parts:
                name = f"{part.topic} {part.partition}" if many else str(part.partition)
                table.add_row(
                    Text(name, justify="right"),
                    Text(_num(part.position), justify="right"),
                    Text(_num(part.highwater), justify="right"),
                    Text(_num(part.lag), justify="right"),
                    Text(fmt_span(part.time_lag_seconds), justify="right"),
                    part.owner,
                    key=f"{part.topic}|{part.partition}",
                )
            table.styles.height = max(len(parts), 1) + 1

        history = tuple(model.history)
        if history != self._history_sig:
            self._history_sig = history
            table = self.query_one("#history", DataTable)
            cursor = table.cursor_row
            table.clear()
            for h in history:
                status = Text(
                    f"{PIPELINE_GLYPH.get(h.status, '?')} {h.status}",
                    style=palette[pipeline_variable(h.status)],
                )
                table.add_row(
                    Text(f"#{h.window_id}", justify="right"),
                    h.reason,
                    Text(f"{h.count:,}", justify="right"),
                    status,
                    Text(h.duration, justify="right"),
                    f"{fmt_span(h.closed_age_seconds)} ago",
                    h.offsets,
                    key=str(h.window_id),
                )
            if history:
                table.move_cursor(row=min(max(cursor, 0), len(history) - 1), animate=False)

        errors = tuple(model.errors)
        if errors != self._errors_sig:
            self._errors_sig = errors
            tail = Text()
            for e in errors[-50:]:
                tail.append_text(log_text(e, palette))
                tail.append("\n")
            if not errors:
                tail.append(
                    "No warnings or errors logged for this consumer since the console started.",
                    style=palette["state-stopped"],
                )
            self.query_one("#errors-tail", Static).update(tail)
        summary = Text()
        summary.append(
            f" errors {row.errors:,}", style=palette["state-error"] if row.errors else ""
        )
        summary.append(" (bad events, fleet-wide)   ")
        summary.append(f"DLQ {row.dlq:,} sent by this instance")
        if model.dlq_topic:
            summary.append(f" to {model.dlq_topic}")
        if row.last_error:
            summary.append("\n last error: ")
            summary.append(row.last_error, style=palette["state-error"])
        self.query_one("#errors-summary", Static).update(summary)

        config = tuple(model.config)
        if config != self._config_sig:
            self._config_sig = config
            rendered = Text()
            for entry in config:
                key, sep, value = entry.partition(" = ")
                if sep:
                    rendered.append(key, style=palette["accent"])
                    rendered.append(f" = {value}\n")
                else:
                    rendered.append(entry + "\n", style="bold")
            self.query_one("#config-text", Static).update(rendered)


class ConfirmDialog(ModalScreen[bool]):
    """Asks before a command that changes counting state. ``y``/enter: go, ``n``/escape: not."""

    BINDINGS = [
        *bindings_for(CONFIRM_COMMANDS),
        Binding("escape", "cancel", "Cancel", show=False),
    ]

    def __init__(
        self, title: str, body: str, confirm_label: str, *, variant: ButtonVariant = "warning"
    ) -> None:
        super().__init__(classes="confirm")
        self.title_text = title
        self.body = body
        self.confirm_label = confirm_label
        self.variant = variant

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, id="dialog-title")
            yield Static(self.body, id="dialog-body")
            with Horizontal(id="dialog-buttons"):
                yield Button(
                    f"{self.confirm_label} (y)", id="confirm", compact=True, variant=self.variant
                )  # type: ignore[arg-type]
                yield Button("Cancel (n)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#confirm", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


class HelpScreen(ModalScreen[None]):
    """Every binding (after ``[ui.keymap]``), and what the colours and glyphs mean."""

    BINDINGS = [
        Binding("escape", "close", "Close", show=False),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, key_display: dict[str, str], palette: Palette) -> None:
        super().__init__(classes="help")
        self.key_display = key_display
        self.palette = palette

    def _keys(self) -> Table:
        table = Table(
            box=None,
            show_header=True,
            expand=True,
            padding=(0, 1),
            header_style=self.palette["accent"] + Style(bold=True),
        )
        table.add_column("Key", no_wrap=True, style="bold", min_width=7)
        table.add_column("What it does", ratio=1)
        table.add_column("Keymap id", no_wrap=True, style=self.palette["state-stopped"])
        sections = (
            ("", APP_COMMANDS),
            ("Detail view", DETAIL_COMMANDS),
            ("Confirm dialogs", CONFIRM_COMMANDS),
        )
        for title, commands in sections:
            if title:
                table.add_row("", Text(title, style=self.palette["accent"] + Style(bold=True)), "")
            for c in commands:
                table.add_row(self.key_display.get(c.id, c.key), c.help, c.id)
        table.add_row("ctrl+p", "Command palette: every action above, by name", "")
        return table

    def _legend(self) -> Text:
        pal = self.palette
        text = Text()
        heading = pal["accent"] + Style(bold=True)
        text.append("\nStates  ", style=heading)
        for state, var in (
            ("running", "state-running"),
            ("paused", "state-paused"),
            ("rebalancing", "state-rebalancing"),
            ("error", "state-error"),
            ("stopped", "state-stopped"),
        ):
            text.append(f"{STATE_GLYPH[state]} {state}  ", style=pal[var])
        text.append("\nHealth  ", style=heading)
        for verdict, var in VERDICT_VARIABLE.items():
            text.append(f"{verdict}  ", style=pal[var])
        text.append("!N", style=pal[ALERT_VARIABLE] + Style(bold=True))
        text.append(" N alerts firing")
        text.append("\nLast trigger  ", style=heading)
        text.append("✓ succeeded  ", style=pal["pipeline-ok"])
        text.append("✗ failed  ", style=pal["pipeline-failed"])
        text.append("… running  · pending", style=pal["pipeline-pending"])
        text.append("\nLag  ", style=heading)
        text.append("↑ growing  ", style=pal["lag-warn"])
        text.append("↓ shrinking", style=pal["lag-ok"])
        text.append("   Behind / time lag  ", style=heading)
        text.append("age of the oldest event not yet read")
        text.append("\nNext  ", style=heading)
        text.append("the threshold (count or time) that fires first, and when")
        text.append("\nNarrow terminals  ", style=heading)
        text.append("Health shows the state's glyph and the verdict in one cell")
        text.append("\n\nRemap keys in the config file: ")
        text.append('[ui.keymap] pause = "space"', style="bold")
        text.append(' (ids above; several keys: "space,p")')
        return text

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static("Keys", id="help-title")
            with VerticalScroll(id="help-scroll"):
                yield Static(self._keys(), id="help-keys")
                yield Static(self._legend(), id="help-legend")
            yield Static("escape, ? or q to close; arrows scroll", id="help-hint")

    def on_mount(self) -> None:
        self.query_one("#help-scroll").focus()

    def action_close(self) -> None:
        self.dismiss(None)


__all__ = ["ConfirmDialog", "DetailModel", "DetailScreen", "HelpScreen"]
