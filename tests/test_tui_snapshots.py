"""Snapshot tests of every screen, on the fixed sample fleet (kafkaconsole.tui.sample).

Plain ``def`` tests (``snap_compare`` runs the app in its own event loop), a fixed terminal
size, a frozen clock and data pushed into the app through a StaticSource: no broker, no Redis,
no wall clock, no randomness. Update with ``pytest tests/test_tui_snapshots.py
--snapshot-update`` and look at the SVGs in tests/__snapshots__/ before committing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from kafkaconsole.engine.alerts import AlertEvent, AlertStatus
from kafkaconsole.tui.sample import SAMPLE_NOW_MS, TIME_LAG_ALERT, sample_app
from kafkaconsole.tui.screens import ConfirmDialog
from kafkaconsole.tui.source import StaticSource

SnapCompare = Callable[..., bool]
WIDE = (120, 32)
NARROW = (80, 24)


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """UTC log timestamps, and no user themes from the machine running the tests."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("KAFKACONSOLE_THEME_DIR", str(tmp_path / "no-user-themes"))
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _then(*keys: str, dialog: bool = False) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """run_before: load the sample data, press keys, wait for a confirm dialog if asked."""

    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await app.refresh_now()  # type: ignore[attr-defined]
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        if dialog:
            for _ in range(200):
                if isinstance(app.screen, ConfirmDialog):
                    break
                await pilot.pause(0.01)
            assert isinstance(app.screen, ConfirmDialog)
        await app.refresh_now()  # type: ignore[attr-defined]
        await pilot.pause()

    return run_before


def test_main_view(snap_compare: SnapCompare) -> None:
    """Six consumers: running, lag growing, paused, error, rebalancing, stopped; each with its
    health verdict (ok, lagging !1, paused, stopped !2, ...) beside its state."""
    assert snap_compare(sample_app(), terminal_size=WIDE, run_before=_then())


def test_main_view_narrow_80x24(snap_compare: SnapCompare) -> None:
    """The same fleet in an 80x24 SSH terminal: topic hidden, bars shortened, state glyph and
    verdict in one Health cell (``● lagging!1``)."""
    assert snap_compare(sample_app(), terminal_size=NARROW, run_before=_then())


def test_main_view_with_log_panel(snap_compare: SnapCompare) -> None:
    """`l` shows the engine's log lines under the table."""
    assert snap_compare(sample_app(), terminal_size=WIDE, run_before=_then("l"))


def test_filter_applied(snap_compare: SnapCompare) -> None:
    """`/` then "pay" and enter: only payments is left, the header says 1/6 shown."""
    assert snap_compare(
        sample_app(), terminal_size=NARROW, run_before=_then("slash", "p", "a", "y", "enter")
    )


def test_detail_view(snap_compare: SnapCompare) -> None:
    """Enter on orders: window bars, sparklines, partitions with owners, trigger history."""
    assert snap_compare(sample_app(), terminal_size=WIDE, run_before=_then("enter"))


def test_detail_view_narrow(snap_compare: SnapCompare) -> None:
    assert snap_compare(sample_app(), terminal_size=NARROW, run_before=_then("enter"))


def test_detail_health_and_alerts(snap_compare: SnapCompare) -> None:
    """Enter on clicks: verdict lagging with its reason and since when, time lag, the active
    alert (channel tui) and each partition's time lag."""
    assert snap_compare(sample_app(), terminal_size=WIDE, run_before=_then("down", "enter"))


def test_detail_health_and_alerts_narrow(snap_compare: SnapCompare) -> None:
    """logs at 80x24: verdict stopped, two alerts (one line each), the reason wraps."""
    assert snap_compare(
        sample_app(), terminal_size=NARROW, run_before=_then("down", "down", "down", "enter")
    )


def test_main_view_wide_shows_time_lag(snap_compare: SnapCompare) -> None:
    """At 140 columns the table has room for Behind (time lag) as well."""
    assert snap_compare(sample_app(), terminal_size=(140, 16), run_before=_then("down"))


def test_detail_errors_tab(snap_compare: SnapCompare) -> None:
    """Tab 2: error counts, DLQ topic and the consumer's warning/error tail."""
    assert snap_compare(sample_app(), terminal_size=NARROW, run_before=_then("enter", "2"))


def test_detail_config_tab_masks_secrets(snap_compare: SnapCompare) -> None:
    """Tab 3 of clicks: its config and its http pipeline, Authorization header masked."""
    assert snap_compare(
        sample_app(), terminal_size=(120, 44), run_before=_then("down", "enter", "3")
    )


def test_alert_toast(snap_compare: SnapCompare) -> None:
    """An alert of channel "tui" fires (warning toast) and another resolves (information)."""
    fired = AlertEvent(
        AlertStatus.FIRING,
        TIME_LAG_ALERT,
        "clicks",
        "tui",
        "time_lag_seconds = 41.5 > 30",
        SAMPLE_NOW_MS - 52_000,
        SAMPLE_NOW_MS,
        value=41.5,
        threshold=30,
        metric="time_lag_seconds",
    )
    resolved = AlertEvent(
        AlertStatus.RESOLVED,
        TIME_LAG_ALERT,
        "orders",
        "tui",
        "time_lag_seconds = 2.4 <= 30",
        SAMPLE_NOW_MS - 300_000,
        SAMPLE_NOW_MS,
        value=2.4,
        threshold=30,
        metric="time_lag_seconds",
    )

    async def run_before(pilot: Pilot[Any]) -> None:
        await _then()(pilot)
        source = pilot.app.source  # type: ignore[attr-defined]
        assert isinstance(source, StaticSource)
        source.emit_alert(fired)
        source.emit_alert(resolved)
        await pilot.pause()

    assert snap_compare(sample_app(), terminal_size=NARROW, run_before=run_before)


def test_reset_confirm_dialog(snap_compare: SnapCompare) -> None:
    """`r` on orders: the dialog says how many events of which window will be discarded."""
    assert snap_compare(sample_app(), terminal_size=NARROW, run_before=_then("r", dialog=True))


def test_trigger_confirm_dialog(snap_compare: SnapCompare) -> None:
    """`t` on orders: the dialog shows the window that closes and the pipeline that runs."""
    assert snap_compare(sample_app(), terminal_size=WIDE, run_before=_then("t", dialog=True))


def test_help_screen(snap_compare: SnapCompare) -> None:
    """`?` lists every binding with its keymap id, and what colours and glyphs mean."""
    assert snap_compare(sample_app(), terminal_size=WIDE, run_before=_then("question_mark"))


def test_help_shows_remapped_keys(snap_compare: SnapCompare) -> None:
    """[ui.keymap] pause = "space", reset = "R": help shows the new keys."""
    app = sample_app(ui={"keymap": {"pause": "space", "reset": "R"}})
    assert snap_compare(app, terminal_size=NARROW, run_before=_then("question_mark"))


def test_header_names_missing_brokers(snap_compare: SnapCompare) -> None:
    """A broker gone from the cluster's metadata: the header says how many (the instance
    still counts through the others, so Kafka stays green)."""
    app = sample_app()
    source = app.source
    assert isinstance(source, StaticSource) and source.snapshot is not None
    source.snapshot = replace(source.snapshot, kafka_missing=("broker 3 (kafka-3:9092)",))
    assert snap_compare(app, terminal_size=WIDE, run_before=_then())


def test_header_shows_an_exhausted_redis_pool(snap_compare: SnapCompare) -> None:
    """Commands waited out for a pooled Redis connection: the header says the pool is
    exhausted beside Redis (the instance is degraded, /ready gives the reason)."""
    app = sample_app()
    source = app.source
    assert isinstance(source, StaticSource) and source.snapshot is not None
    reason = (
        "Redis connections exhausted: every connection of the pool of 32 "
        "([redis] max_connections) stayed busy for 20 s"
    )
    source.snapshot = replace(source.snapshot, redis_pool=(reason,))
    assert snap_compare(app, terminal_size=WIDE, run_before=_then())


def test_read_only_header(snap_compare: SnapCompare) -> None:
    """[ui] read_only = true: READ-ONLY in the header, `p` refused with a notice."""
    app = sample_app(ui={"read_only": True})
    assert snap_compare(app, terminal_size=NARROW, run_before=_then("p"))


@pytest.mark.parametrize(
    "theme", ["kafkaconsole-dark", "kafkaconsole-light", "kafkaconsole-high-contrast"]
)
def test_theme(snap_compare: SnapCompare, theme: str) -> None:
    """Each shipped theme on the main view."""
    assert snap_compare(sample_app(theme=theme), terminal_size=WIDE, run_before=_then())


def test_theme_detail_light(snap_compare: SnapCompare) -> None:
    """The light theme's sparklines and history colours."""
    app = sample_app(theme="kafkaconsole-light")
    assert snap_compare(app, terminal_size=WIDE, run_before=_then("enter"))


def test_sorted_by_lag(snap_compare: SnapCompare) -> None:
    """`L`: the table by lag, largest first, the column marked with an arrow."""
    assert snap_compare(sample_app(), terminal_size=WIDE, run_before=_then("L"))


def test_command_line_with_a_suggestion(snap_compare: SnapCompare) -> None:
    """`:` opens the command line; a consumer id is suggested as it is typed."""
    keys = ("colon", "t", "r", "i", "g", "g", "e", "r", "space", "c", "l")
    assert snap_compare(sample_app(), terminal_size=NARROW, run_before=_then(*keys))


def test_window_events(snap_compare: SnapCompare) -> None:
    """Enter on a trigger in the detail view: that window's events, the selected one
    pretty-printed with its secrets masked."""
    assert snap_compare(sample_app(), terminal_size=WIDE, run_before=_then("enter", "enter"))


def test_dlq_records(snap_compare: SnapCompare) -> None:
    """`d` in the detail view: the DLQ's latest records and why each is there."""
    assert snap_compare(
        sample_app(), terminal_size=NARROW, run_before=_then("enter", "2", "d", "down")
    )


def test_seek_confirm_dialog(snap_compare: SnapCompare) -> None:
    """`:seek orders -1h`: the plan per partition (now -> to, read again), the totals and
    what becomes of the open window, before anything changes."""
    keys = ("colon", *"seek orders ", "minus", "1", "h", "enter")
    assert snap_compare(sample_app(), terminal_size=WIDE, run_before=_then(*keys, dialog=True))


def test_seek_discard_confirm_dialog_narrow(snap_compare: SnapCompare) -> None:
    """`:seek orders latest discard` at 80x24: events skipped, the open window discarded."""
    keys = ("colon", *"seek orders latest discard", "enter")
    assert snap_compare(sample_app(), terminal_size=NARROW, run_before=_then(*keys, dialog=True))


def test_detail_history_shows_replays(snap_compare: SnapCompare) -> None:
    """A window closed by a seek (reason seek) and the windows of the events read again
    (count·replay) in the detail view's trigger history."""
    app = sample_app()
    records = app.source.histories["orders"]
    app.source.histories["orders"] = [
        {**records[0], "window_id": 1844, "reason": "count", "replay": True},
        {**records[1], "window_id": 1843, "reason": "count", "replay": True},
        {**records[2], "window_id": 1842, "reason": "seek", "count": 340},
        *records[3:],
    ]
    assert snap_compare(app, terminal_size=WIDE, run_before=_then("enter"))
