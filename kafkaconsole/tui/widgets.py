"""The console's widgets: fleet header, consumers table, progress bars, log panel.

Colours come from theme variables only: markup uses ``$variables`` and table cells (Rich text,
which cannot read stylesheet variables) take their colours from :class:`Palette`, built from the
app's resolved theme variables and rebuilt when the theme changes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.color import Color, ColorParseError
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.widgets import DataTable, Label, Sparkline, Static

from kafkaconsole.engine.redis_sentinel import NO_PRIMARY
from kafkaconsole.tui.viewmodel import (
    NONE_TEXT,
    ConsumerRow,
    HeaderModel,
    HistoryRow,
    LogLine,
    Series,
    Trend,
    fmt_clock,
    fmt_count,
    fmt_rate,
    fmt_span,
)

# ---- colours ----------------------------------------------------------------------------------


class Palette:
    """Rich styles from the app's theme variables (``$lag-warn`` -> ``palette["lag-warn"]``)."""

    def __init__(self, variables: dict[str, str]) -> None:
        self._vars = variables
        self._bg = self._parse(variables.get("background", "black")) or Color(0, 0, 0)
        self._cache: dict[str, Style] = {}

    @staticmethod
    def _parse(value: str) -> Color | None:
        try:
            return Color.parse(value)
        except (ColorParseError, ValueError):
            return None

    def color(self, name: str) -> Color | None:
        value = self._vars.get(name)
        if value is None:
            return None
        c = self._parse(value)
        if c is None:
            return None
        return self._bg + c if c.a < 1 else c

    def __getitem__(self, name: str) -> Style:
        if name not in self._cache:
            c = self.color(name)
            self._cache[name] = Style(color=c.rich_color) if c is not None else Style()
        return self._cache[name]

    def on(self, fg: str, bg: str) -> Style:
        key = f"{fg} on {bg}"
        if key not in self._cache:
            f, b = self.color(fg), self.color(bg)
            self._cache[key] = Style(
                color=f.rich_color if f else None, bgcolor=b.rich_color if b else None
            )
        return self._cache[key]


STATE_VARIABLE = {
    "running": "state-running",
    "paused": "state-paused",
    "rebalancing": "state-rebalancing",
    "error": "state-error",
    "stopped": "state-stopped",
    "starting": "state-stopped",
}
STATE_GLYPH = {
    "running": "●",
    "paused": "‖",
    "rebalancing": "↻",
    "error": "✗",
    "stopped": "○",
    "starting": "…",
}
STATE_SHORT = {"rebalancing": "rebal", "starting": "start", "stopped": "stop"}
PIPELINE_GLYPH = {
    "succeeded": "✓",
    "failed": "✗",
    "running": "…",
    "queued": "…",
    "pending": "·",
    "cancelled": "⊘",
    "coalesced": "≈",
}


#: Health verdicts (kafkaconsole.engine.health) and the theme variable colouring each.
VERDICT_VARIABLE = {
    "ok": "success",
    "paused": "foreground-muted",
    "lagging": "lag-warn",
    "trigger-storm": "lag-warn",
    "stalled": "error",
    "stopped": "error",
    "window-stuck": "error",
    "pipeline-failing": "error",
    "pipeline-backlog": "lag-warn",
    "topic-recreated": "error",
}
#: Shorter words for the table when the full verdict does not fit.
VERDICT_SHORT = {
    "window-stuck": "stuck",
    "pipeline-failing": "failing",
    "pipeline-backlog": "backlog",
    "trigger-storm": "storm",
    "topic-recreated": "recreated",
}
ALERT_VARIABLE = "warning"


def verdict_variable(verdict: str | None) -> str:
    return VERDICT_VARIABLE.get(verdict or "", "state-stopped")


def alert_badge(n: int) -> str:
    """``!N`` when N alerts fire for a consumer, else nothing."""
    return f"!{n}" if n else ""


def verdict_text(
    verdict: str | None, alerts: int, palette: Palette, width: int | None = None
) -> Text:
    """The verdict in its colour with ``!N`` (alerts firing); shortened to fit ``width``."""
    word = verdict or NONE_TEXT
    badge = alert_badge(alerts)
    if width is not None:
        short = VERDICT_SHORT.get(word, word)
        for candidate, sep in ((word, " "), (short, " "), (short, "")):
            if len(candidate) + len(sep) * bool(badge) + len(badge) <= width:
                word = candidate
                break
        else:  # keep the badge whole, cut the word
            word, sep = fit(short, max(width - len(badge), 1)), ""
    else:
        sep = " "
    text = Text(word, style=palette[verdict_variable(verdict)], no_wrap=True)
    if badge:
        text.append(sep + badge, style=palette[ALERT_VARIABLE] + Style(bold=True))
    return text


def health_text(row: ConsumerRow, palette: Palette, width: int) -> Text:
    """Compact tables: the state's glyph (state colour) and the verdict (verdict colour) in one
    cell: ``● ok``, ``‖ paused``, ``● lagging !1``; the state's word while there is no verdict,
    or when all is well but the consumer is not running here (``↻ rebal``)."""
    state_style = palette[STATE_VARIABLE.get(row.state, "state-stopped")]
    text = Text(STATE_GLYPH.get(row.state, "?") + " ", style=state_style, no_wrap=True)
    if row.verdict is None or (row.verdict == "ok" and row.state != "running" and not row.alerts):
        text.append(STATE_SHORT.get(row.state, row.state), style=state_style)
        return text
    text.append_text(verdict_text(row.verdict, len(row.alerts), palette, max(width - 2, 1)))
    return text


def pipeline_variable(status: str) -> str:
    if status == "succeeded":
        return "pipeline-ok"
    if status in ("failed", "cancelled"):
        return "pipeline-failed"
    return "pipeline-pending"


def state_text(state: str, palette: Palette, compact: bool = False) -> Text:
    word = STATE_SHORT.get(state, state) if compact else state
    if state == "rebalancing" and not compact:
        word = "rebalance"
    style = palette[STATE_VARIABLE.get(state, "state-stopped")]
    return Text(f"{STATE_GLYPH.get(state, '?')} {word}", style=style, no_wrap=True)


def bar_text(
    ratio: float,
    width: int,
    label: str | Sequence[str],
    fill: str,
    palette: Palette,
    short_label: str = "",
) -> Text:
    """A progress bar ``width`` cells wide with a label written over it (htop style).

    ``label`` may list candidates, longest first: the first that fits is used.
    """
    candidates = [label] if isinstance(label, str) else list(label)
    label = next((c for c in [*candidates, short_label] if len(c) <= width), "")
    cells = label.center(width)
    filled = min(max(round(ratio * width), 0), width)
    if ratio > 0 and filled == 0:
        filled = 1
    text = Text(no_wrap=True, overflow="crop")
    text.append(cells[:filled], style=palette.on("bar-text", fill))
    text.append(cells[filled:], style=palette.on("foreground", "bar-empty"))
    return text


def count_labels(count: int, max_event: int) -> list[str]:
    """ "1204/2000", then "1.2k/2k": the bar label shortens before it turns into a percent."""
    return [
        f"{fmt_count(count)}/{fmt_count(max_event)}",
        f"{fmt_short(count)}/{fmt_short(max_event)}",
    ]


def fmt_short(n: int) -> str:
    if n < 1000:
        return str(n)
    v = n / 1000
    if v < 1000:
        return f"{v:.1f}".rstrip("0").rstrip(".") + "k" if v < 10 else f"{v:.0f}k"
    return fmt_count(n)


def fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


# ---- header -----------------------------------------------------------------------------------


class FleetHeader(Static):
    """One line: Kafka and Redis reachability, live instances, events/s, uptime."""

    DEFAULT_CSS = """
    FleetHeader { height: 1; }
    """

    def show(self, model: HeaderModel, compact: bool) -> None:
        def dot(ok: bool | None) -> str:
            if ok is None:
                return "[$foreground-muted]○[/]"
            return "[$success]●[/]" if ok else "[$error]✗[/]"

        parts = [" [b]kafkaconsole[/b]"]
        kafka = "kafka" if compact else f"kafka {escape(fit(model.brokers, 28))}"
        missing = ""
        if model.kafka_missing:
            count = len(model.kafka_missing)
            missing = f" [$warning]{count} broker{'' if count == 1 else 's'} missing[/]"
        pool = " [$warning]pool exhausted[/]" if model.redis_pool else ""
        if any(reason.startswith(NO_PRIMARY) for reason in model.redis_pool):
            pool = " [$warning]no primary[/]"  # Redis Sentinel knows no primary
        parts.append(f"{kafka} {dot(model.kafka_ok)}{missing}  redis {dot(model.redis_ok)}{pool}")
        inst = "?" if model.instances is None else str(model.instances)
        parts.append(
            f"{inst} inst" if compact else f"{inst} instance{'' if model.instances == 1 else 's'}"
        )
        if model.workers_restarted:
            n = model.workers_restarted
            parts.append(f"[$warning]{n} worker{'' if n == 1 else 's'} restarted[/]")
        parts.append(f"{fmt_rate(model.rate)} ev/s")
        parts.append(f"up {fmt_clock(model.uptime_seconds)}")
        if model.waiting_for:
            parts.append(f"[$warning]waiting for {escape(fit(model.waiting_for, 60))}[/]")
        elif model.engine not in ("running", "none"):
            colour = "$error" if model.engine == "failed" else "$warning"
            parts.append(f"[{colour}]engine {model.engine}[/]")
        if model.filter_text:
            parts.append(f"[$accent]{model.shown}/{model.consumers} shown[/]")
        if model.read_only:
            parts.append("[$warning]READ-ONLY[/]")
        if not compact and model.instance_id:
            parts.append(f"[$foreground-muted]{escape(fit(model.instance_id, 24))}[/]")
        self.update(" │ ".join(parts))


# ---- consumers table --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int
    right: bool = False


def table_columns(rows: Sequence[ConsumerRow], available: int) -> tuple[list[Column], bool]:
    """Columns for the consumers table at ``available`` cells; True when compact.

    Each column is preceded by a one-cell gap (the table has no cell padding). Wide tables
    have a State and a Health (verdict) column, and a Behind (time lag) column when there is
    room; compact ones merge state and verdict into one cell and drop the topic first.
    """
    id_len = max([len(r.consumer_id) for r in rows] + [8])
    topic_len = max([len(r.topic) for r in rows] + [5])
    wide = [
        Column("id", "Consumer", min(id_len, 20)),
        Column("topic", "Topic", min(topic_len, 18)),
        Column("state", "State", 11),
        Column("health", "Health", 10),
        Column("rate", "ev/s", 6, right=True),
        Column("lag", "Lag", 8, right=True),
        Column("count", "Count", 12),
        Column("time", "Time", 10),
        Column("next", "Next", 10),
        Column("last", "Last trigger", 12),
        Column("err", "Err/DLQ", 7, right=True),
    ]
    used = sum(c.width + 1 for c in wide)
    if used <= available:
        spare = available - used
        behind = Column("tlag", "Behind", 6, right=True)
        if spare >= behind.width + 1:
            at = [c.key for c in wide].index("lag") + 1
            wide.insert(at, behind)
            spare -= behind.width + 1
        grow_count, grow_time = min(spare // 2, 10), min(spare - spare // 2, 8)
        return [
            Column(
                c.key,
                c.label,
                c.width + (grow_count if c.key == "count" else grow_time if c.key == "time" else 0),
                c.right,
            )
            for c in wide
        ], False
    compact = [
        Column("health", "Health", 11),
        Column("rate", "ev/s", 5, right=True),
        Column("lag", "Lag", 6, right=True),
        Column("count", "Count", 8),
        Column("time", "Time", 7),
        Column("next", "Next", 9),
        Column("last", "Last", 11),
        Column("err", "Err", 4, right=True),
    ]
    id_min = min(id_len, 8)
    for drop in ("err", "last", "time", "next"):  # very narrow: the least needed go first
        if available - sum(c.width + 1 for c in compact) - 1 - id_min >= 0:
            break
        compact = [c for c in compact if c.key != drop]
    rest = sum(c.width + 1 for c in compact) + 1
    id_width = max(min(id_len, available - rest), 6)
    spare = available - rest - id_width
    lead = [Column("id", "Consumer", id_width)]
    topic_width = min(topic_len, 12)
    if spare >= topic_width + 1 + 4:
        lead.append(Column("topic", "Topic", topic_width))
        spare -= topic_width + 1
    grow = {"health": min(max(spare, 0), 2)}
    spare -= grow["health"]
    grow["count"] = min(max(spare, 0) // 2, 6)
    grow["time"] = min(max(spare - grow["count"], 0), 4)
    compact = [Column(c.key, c.label, c.width + grow.get(c.key, 0), c.right) for c in compact]
    return [*lead, *compact], True


def sorted_label(col: Column, descending: bool) -> str:
    """A sorted column's header: its label with an arrow, cut to fit its width."""
    arrow = "▼" if descending else "▲"
    if len(col.label) >= col.width:
        return col.label[: col.width - 1] + arrow
    return col.label + arrow


def _cell(value: str | Text, col: Column) -> Text:
    text = value if isinstance(value, Text) else Text(value, no_wrap=True)
    text.truncate(col.width, overflow="ellipsis")
    if col.right:
        text.pad_left(col.width - text.cell_len)
    else:
        text.pad_right(col.width - text.cell_len)
    return Text(" ") + text


def row_cells(
    row: ConsumerRow, columns: Sequence[Column], palette: Palette, compact: bool
) -> list[Text]:
    p = row.progress
    out = []
    for col in columns:
        value: str | Text
        if col.key == "id":
            value = Text(fit(row.consumer_id, col.width), style="bold")
        elif col.key == "topic":
            value = row.topic
        elif col.key == "state":
            value = state_text(row.state, palette, compact)
        elif col.key == "health":
            value = (
                health_text(row, palette, col.width)
                if compact
                else verdict_text(row.verdict, len(row.alerts), palette, col.width)
            )
        elif col.key == "tlag":
            value = fmt_span(row.time_lag_seconds)
        elif col.key == "rate":
            value = fmt_rate(row.rate)
        elif col.key == "lag":
            arrow = {Trend.UP: "↑", Trend.DOWN: "↓"}.get(row.lag_trend, " ")
            style = {Trend.UP: palette["lag-warn"], Trend.DOWN: palette["lag-ok"]}.get(
                row.lag_trend, Style()
            )
            value = Text(f"{fmt_count(row.lag)}{arrow}", style=style)
        elif col.key == "count":
            value = bar_text(
                p.count_ratio,
                col.width,
                count_labels(row.count, row.max_event),
                "threshold-bar",
                palette,
                f"{p.count_ratio:.0%}",
            )
        elif col.key == "time":
            label = (
                f"{fmt_span(p.elapsed_seconds)}/{fmt_span(row.max_time)}"
                if p.elapsed_seconds or row.count
                else f"{NONE_TEXT}/{fmt_span(row.max_time)}"
            )
            value = bar_text(
                p.time_ratio, col.width, label, "time-bar", palette, f"{p.time_ratio:.0%}"
            )
        elif col.key == "next":
            style = palette["state-stopped"] if p.winner is None else Style()
            value = Text(row.eta_text, style=style)
        elif col.key == "last":
            t = row.last_trigger
            if t is None:
                value = Text("never", style=palette["state-stopped"])
            else:
                value = Text(f"{t.reason} {fmt_span(t.age_seconds)} ")
                value.append(
                    PIPELINE_GLYPH.get(t.status, "?"), style=palette[pipeline_variable(t.status)]
                )
        else:  # err
            label = (
                fmt_count(row.errors)
                if compact
                else f"{fmt_count(row.errors)}/{fmt_count(row.dlq)}"
            )
            value = Text(label, style=palette["state-error"] if row.errors else Style())
        out.append(_cell(value, col))
    return out


class ConsumerTable(DataTable[Text], inherit_bindings=False):
    """One row per consumer; keeps the cursor on the same consumer across refreshes.

    Enter is left to the app's ``detail`` binding, so ``[ui.keymap]`` can remap it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            b
            for b in DataTable.BINDINGS
            if isinstance(b, Binding) and b.key not in ("enter", "home", "end")
        ),
        # the table always fits the width: home and end go to the first and the last row
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]

    DEFAULT_CSS = """
    ConsumerTable { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            cursor_type="row",
            cell_padding=0,
            zebra_stripes=False,
            show_cursor=True,
            cursor_foreground_priority="renderable",
            cursor_background_priority="renderable",
            id=id,
            classes=classes,
        )
        self._columns_sig: tuple[tuple[str, int, str], ...] = ()
        self._row_ids: list[str] = []
        self._shown: dict[tuple[str, str], Text] = {}
        self._drawn_rows: dict[str, ConsumerRow] = {}
        self._drawn_with: tuple[tuple[tuple[str, int, str], ...], bool] | None = None
        self._drawn_palette: Palette | None = None
        self.compact = False
        self.redrawn: tuple[str, ...] = ()
        """The consumers whose cells the last :meth:`show` changed (all of them when the rows
        or columns changed)."""

    @property
    def column_keys(self) -> tuple[str, ...]:
        """The columns shown, left to right."""
        return tuple(key for key, _, _ in self._columns_sig)

    @property
    def selected_id(self) -> str | None:
        if not self._row_ids or self.cursor_row < 0 or self.cursor_row >= len(self._row_ids):
            return None
        return self._row_ids[self.cursor_row]

    def show(
        self,
        rows: Sequence[ConsumerRow],
        palette: Palette,
        available: int,
        layout_rows: Sequence[ConsumerRow] | None = None,
        sort: tuple[str | None, bool] = (None, False),
    ) -> None:
        """Draw ``rows``; the columns are laid out for ``layout_rows`` (all consumers, so a
        filter that hides the long names does not change which columns are shown). ``sort``
        (column key, descending) marks the sorted column's header with an arrow."""
        columns, compact = table_columns(rows if layout_rows is None else layout_rows, available)
        sort_key, descending = sort
        columns = [
            Column(c.key, sorted_label(c, descending), c.width, c.right) if c.key == sort_key else c
            for c in columns
        ]
        self.compact = compact
        sig = tuple((c.key, c.width, c.label) for c in columns)
        selected = self.selected_id
        ids = [r.consumer_id for r in rows]
        drawn_with = (sig, compact)
        if drawn_with != self._drawn_with or palette is not self._drawn_palette:
            self._drawn_rows = {}  # other columns or colours: every row's cells again
            self._drawn_with, self._drawn_palette = drawn_with, palette
        if sig != self._columns_sig:
            self.clear(columns=True)
            for c in columns:
                label = Text(" " + (c.label.rjust(c.width) if c.right else c.label), style="bold")
                self.add_column(label, key=c.key, width=c.width + 1)
            self._columns_sig = sig
            self._row_ids = []
        if ids != self._row_ids:
            self.clear()
            self._shown = {}
            for r in rows:
                cells = row_cells(r, columns, palette, compact)
                self.add_row(*cells, key=r.consumer_id)
                for c, cell in zip(columns, cells, strict=True):
                    self._shown[(r.consumer_id, c.key)] = cell
            self._row_ids = ids
            self.redrawn = tuple(ids)
            if selected in ids:
                self.move_cursor(row=ids.index(selected), animate=False)
        else:  # same rows: an unchanged row is skipped, a changed one touches changed cells
            redrawn = []
            for r in rows:
                cid = r.consumer_id
                if self._drawn_rows.get(cid) == r:
                    continue
                changed = False
                for c, cell in zip(columns, row_cells(r, columns, palette, compact), strict=True):
                    if self._shown.get((cid, c.key)) != cell:
                        self.update_cell(cid, c.key, cell)
                        self._shown[(cid, c.key)] = cell
                        changed = True
                if changed:
                    redrawn.append(cid)
            self.redrawn = tuple(redrawn)
        self._drawn_rows = {r.consumer_id: r for r in rows}

    def select_id(self, consumer_id: str) -> None:
        if consumer_id in self._row_ids:
            self.move_cursor(row=self._row_ids.index(consumer_id), animate=False)


# ---- preview of the selected consumer ---------------------------------------------------------

#: The fewest rows worth a preview under a short table (title, two sparklines, two triggers).
PREVIEW_MIN_ROWS = 5


def preview_rows(available: int, table_rows: int) -> int:
    """Rows left for the preview when a table of ``table_rows`` rows (header included) sits in
    ``available`` rows; 0 when the table needs the room (the preview is hidden then)."""
    spare = available - table_rows
    return spare if spare >= PREVIEW_MIN_ROWS else 0


def history_line(h: HistoryRow, palette: Palette, reason_width: int = 7) -> Text:
    """One trigger on one line; ``reason_width`` keeps the lines of a list aligned (a replay's
    ``count·replay`` is longer than ``count``)."""
    line = Text(f" #{h.window_id:<6} {h.reason:<{reason_width}}{h.count:>8,}  ")
    line.append(
        f"{PIPELINE_GLYPH.get(h.status, '?')} {h.status:<10}",
        style=palette[pipeline_variable(h.status)],
    )
    line.append(f" {h.duration:>7}  {fmt_span(h.closed_age_seconds) + ' ago':<9}  ")
    line.append(h.offsets, style=palette["state-stopped"])
    if h.error:
        line.append(f"  {h.error}", style=palette["state-error"])
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


class ConsumerPreview(Vertical):
    """Under a short table: the selected consumer's sparklines and its last triggers, so the
    screen's empty rows are put to use (the detail view has the rest)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._sig: tuple[object, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="preview-title")
        with Horizontal(classes="spark-row"):
            yield Label("events/s", classes="spark-label")
            yield Sparkline([], id="preview-rate", classes="spark")
            yield Static(id="preview-rate-value", classes="spark-value")
        with Horizontal(classes="spark-row"):
            yield Label("lag", classes="spark-label")
            yield Sparkline([], id="preview-lag", classes="spark")
            yield Static(id="preview-lag-value", classes="spark-value")
        yield Static(id="preview-history")

    def show(
        self,
        row: ConsumerRow,
        series: Series,
        history: Sequence[HistoryRow] | None,
        palette: Palette,
        lines: int,
    ) -> None:
        """Draw ``row``'s preview with at most ``lines`` trigger lines (``None``: not read yet);
        nothing is redrawn when nothing changed."""
        rates = list(series.rates) or [0.0]
        lags = list(series.lags) or [0.0]
        shown = tuple(history[:lines]) if history is not None else None
        sig = (row.consumer_id, row.rate, row.lag, tuple(rates), tuple(lags), shown, lines, palette)
        if sig == self._sig:
            return
        self._sig = sig
        title = Text(" ")
        title.append(row.consumer_id, style="bold")
        title.append(f" · {row.topic} → {row.pipeline} · last triggers and rates (enter: detail)")
        self.query_one("#preview-title", Static).update(title)
        self.query_one("#preview-rate", Sparkline).data = rates
        self.query_one("#preview-lag", Sparkline).data = lags
        self.query_one("#preview-rate-value", Static).update(
            f"{fmt_rate(row.rate)}/s  max {fmt_rate(max(*rates, row.rate))}"
        )
        self.query_one("#preview-lag-value", Static).update(
            f"{fmt_count(row.lag)}  max {fmt_count(max(*lags, row.lag or 0))}"
        )
        if shown is None:
            text = Text(" reading the trigger history…", style=palette["state-stopped"])
        elif not shown:
            text = Text(" no trigger yet", style=palette["state-stopped"])
        else:
            width = max(7, *(len(h.reason) + 1 for h in shown))
            text = Text("\n").join(history_line(h, palette, width) for h in shown)
        self.query_one("#preview-history", Static).update(text)


# ---- log panel --------------------------------------------------------------------------------


def log_text(line: LogLine, palette: Palette, clock: bool = True) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(line.created)) if clock else ""
    level = logging.getLevelName(line.level)
    style = (
        palette["state-error"]
        if line.level >= logging.ERROR
        else palette["lag-warn"]
        if line.level >= logging.WARNING
        else Style()
    )
    text = Text()
    if stamp:
        text.append(stamp + " ", style=palette["state-stopped"])
    text.append(f"{level:<7} ", style=style)
    text.append(line.message)
    return text


class LogPanel(VerticalScroll):
    """The engine's log lines, newest at the bottom (toggle with ``l``).

    The tail is re-rendered from the kept lines, so long lines wrap to the panel's current
    width, also after a resize.
    """

    def __init__(
        self,
        lines: Iterable[LogLine] = (),
        *,
        keep: int = 300,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes, can_focus=True)
        self._lines: deque[LogLine] = deque(lines, maxlen=keep)
        self._palette: Palette | None = None

    def compose(self) -> ComposeResult:
        yield Static(classes="log-text")

    def append(self, lines: Iterable[LogLine], palette: Palette) -> None:
        self._lines.extend(lines)
        self.repaint(palette)

    def repaint(self, palette: Palette) -> None:
        self._palette = palette
        if not self.is_mounted:
            return
        text = Text("\n").join(log_text(line, palette) for line in self._lines)
        at_end = not self.display or self.scroll_y >= self.max_scroll_y
        self.query_one(".log-text", Static).update(text)
        if at_end:
            self.call_after_refresh(self.scroll_end, animate=False)

    def on_mount(self) -> None:
        if self._palette is not None:
            self.repaint(self._palette)

    def reveal(self, shown: bool) -> None:
        """Show or hide; a panel that appears starts at its newest line."""
        self.display = shown
        if shown:
            self.call_after_refresh(self.scroll_end, animate=False)


__all__ = [
    "PREVIEW_MIN_ROWS",
    "Column",
    "ConsumerPreview",
    "ConsumerTable",
    "FleetHeader",
    "LogPanel",
    "Palette",
    "alert_badge",
    "bar_text",
    "health_text",
    "history_line",
    "log_text",
    "preview_rows",
    "row_cells",
    "state_text",
    "table_columns",
    "verdict_text",
    "verdict_variable",
]
