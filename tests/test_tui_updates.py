"""How snapshots reach the screen: one message per poll, the newest wins, unchanged rows stay.

The console runs on the sample fleet (a :class:`StaticSource`, frozen clock) with a poll so slow
(``refresh_hz`` 0.05: every 20 s) that only the snapshots the test hands over are drawn.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot

from kafkaconsole.engine.fleet_status import (
    AlertStatus,
    ConsumerStatus,
    FleetStatus,
    InstanceSummary,
    PartitionStatus,
)
from kafkaconsole.tui import app as app_module
from kafkaconsole.tui import widgets
from kafkaconsole.tui.app import KafkaConsoleApp, SnapshotReady
from kafkaconsole.tui.sample import sample_app
from kafkaconsole.tui.source import StaticSource
from kafkaconsole.tui.viewmodel import ConsoleSnapshot, ConsumerRow, FleetView
from kafkaconsole.tui.widgets import ConsumerTable, row_cells
from tests.helpers import wait_for

SIZE = (140, 30)


class CountingApp(KafkaConsoleApp):
    """Counts the snapshot messages it handles."""

    CSS_PATH = str(Path(app_module.__file__).with_name(KafkaConsoleApp.CSS_PATH))  # type: ignore[arg-type]
    handled = 0

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self.handled += 1
        super().on_snapshot_ready(message)


def _app() -> KafkaConsoleApp:
    app: KafkaConsoleApp = sample_app(ui={"refresh_hz": 0.05})
    return app


def _counting_app() -> CountingApp:
    base = _app()
    app = CountingApp(base.config, data_source=base.source, clock=base.clock)
    return app


async def _settled(app: KafkaConsoleApp, pilot: Pilot[Any]) -> None:
    """The mount's first poll finished and its message was handled."""

    async def idle() -> bool:
        return not app._polling and app._slot is None

    await wait_for(idle, 10, what="first poll drawn")
    await pilot.pause()


def _with_count(source: StaticSource, consumer_id: str, count: int) -> None:
    snap = source.snapshot
    assert snap is not None
    source.push(
        replace(
            snap,
            consumers=tuple(
                replace(c, count=count) if c.consumer_id == consumer_id else c
                for c in snap.consumers
            ),
        )
    )


def _count_cell(table: ConsumerTable, consumer_id: str) -> str:
    return str(table.get_cell(consumer_id, "count"))


async def test_a_busy_screen_draws_only_the_newest_snapshot_once() -> None:
    app = _counting_app()
    source = app.source
    assert isinstance(source, StaticSource)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        handled, drawn = app.handled, app.snapshots_drawn
        snaps: list[ConsoleSnapshot] = []
        for n in range(50):  # the loop never yields: the app is busy for all 50
            _with_count(source, "orders", 100 + n)
            snaps.append(await app.read_snapshot())
            app.deliver(snaps[-1])
        assert app._slot is snaps[-1]
        await pilot.pause()
        assert app.handled == handled + 1  # one message for 50 snapshots: no queue
        assert app.snapshots_drawn == drawn + 1
        assert app.drawn is snaps[-1]
        assert "149" in _count_cell(app.query_one(ConsumerTable), "orders")


async def test_an_older_snapshot_never_replaces_a_newer_one() -> None:
    app = _counting_app()
    source = app.source
    assert isinstance(source, StaticSource)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        _with_count(source, "orders", 111)
        old = await app.read_snapshot()
        _with_count(source, "orders", 222)
        new = await app.read_snapshot()
        app.deliver(new)
        app.deliver(old)  # a slow read finishing last
        await pilot.pause()
        assert app.drawn is new
        assert "222" in _count_cell(app.query_one(ConsumerTable), "orders")


async def test_only_the_rows_that_changed_are_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app()
    source = app.source
    assert isinstance(source, StaticSource)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        table = app.query_one(ConsumerTable)
        ids = [r.consumer_id for r in app._rows]
        assert len(ids) > 2
        touched: list[str] = []
        update_cell = table.update_cell

        def spy(row_key: Any, column_key: Any, value: Any, **kw: Any) -> None:
            touched.append(str(row_key))
            update_cell(row_key, column_key, value, **kw)

        table.update_cell = spy  # type: ignore[method-assign]
        built: list[str] = []

        def cells(row: ConsumerRow, *args: Any) -> list[Text]:
            built.append(row.consumer_id)
            return row_cells(row, *args)

        monkeypatch.setattr(widgets, "row_cells", cells)

        app.deliver(await app.read_snapshot())  # nothing changed
        await pilot.pause()
        assert table.redrawn == () and touched == [] and built == []

        _with_count(source, "clicks", 7)
        app.deliver(await app.read_snapshot())
        await pilot.pause()
        assert table.redrawn == ("clicks",)
        assert set(touched) == {"clicks"} and built == ["clicks"]
        assert "7" in _count_cell(table, "clicks")


def test_the_fleet_view_is_built_from_the_typed_status_as_from_its_json() -> None:
    partition = PartitionStatus(
        partition=0,
        position=5,
        highwater=17,
        lag=12,
        time_lag_seconds=7.25,
        oldest_ts_ms=1,
        owner="i1",
    )
    unowned = PartitionStatus(partition=1, position=None, highwater=3, lag=None)
    alert = AlertStatus(
        alert="stalled",
        channel="tui",
        message="stalled: partition 0 has not moved",
        since="2026-01-01T00:00:01.000Z",
        value=None,
        verdict="stalled",
        metric=None,
    )
    consumer = ConsumerStatus(
        consumer_id="orders",
        kafka_topic="orders",
        pipeline_name="orders_sync",
        job_type="sync",
        state="paused",
        paused_by="ops",
        paused_at="2026-01-01T00:00:00.000Z",
        count=3,
        max_event=500,
        max_time=20.0,
        window_id=4,
        window_opened_at=None,
        window_opened_at_ms=None,
        time_left=None,
        fill_ratio=0.006,
        total=90,
        errors=2,
        filtered=0,
        windows=3,
        windows_by_reason={"count": 3},
        discarded=0,
        dlq=0,
        rate=3.5,
        lag=12,
        partitions=(partition, unowned),
        instances=("i1",),
        last_trigger=None,
        last_error=None,
        processor_stall=None,
        time_lag_seconds=7.25,
        time_to_trigger_seconds=3.0,
        reported_at_ms=None,
        verdict="stalled",
        verdict_reason="partition 0 has not moved",
        verdict_since="2026-01-01T00:00:00.000Z",
        alerts=(alert,),
    )
    status = FleetStatus(
        consumers=(consumer,),
        instances=(
            InstanceSummary(
                instance_id="i1",
                host="h",
                pid=1,
                started_at_ms=0,
                taken_at_ms=0,
                redis_ok=True,
                kafka_ok=True,
                consumers=["orders"],
            ),
        ),
    )
    typed = FleetView.from_fleet(status)
    assert typed == FleetView.from_status(status.to_json())
    c = typed.consumers["orders"]
    assert typed.instances == ("i1",)
    assert (c.state, c.paused_by, c.errors, c.total, c.lag) == ("paused", "ops", 2, 90, 12)
    assert c.partitions[1].owner == "" and c.partitions[0].time_lag_seconds == 7.25
    assert c.verdict_since_ms == 1767225600000
    assert c.alerts[0].since_ms == 1767225601000


async def test_a_refresh_is_not_lost_to_a_poll_built_while_its_fleet_read_ran() -> None:
    """A refresh reads the fleet; a poll that was not due to read it builds its snapshot
    meanwhile from the previous read. The refresh, finishing last with the newer fleet, is the
    one drawn."""
    app = _counting_app()
    source = app.source
    assert isinstance(source, StaticSource)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        old_view = app._fleet_read
        assert old_view is not None
        new_view = replace(old_view, instances=(*old_view.instances, "another-instance"))
        release = asyncio.Event()
        reading = asyncio.Event()

        async def slow_fleet() -> FleetView | None:
            reading.set()
            await release.wait()
            return new_view

        source.fleet = slow_fleet  # type: ignore[method-assign]
        refresh = asyncio.create_task(app.refresh_now())
        await reading.wait()
        poll = await app.read_snapshot()  # not due: built from the previous fleet read
        assert poll.fleet is old_view
        app.deliver(poll)
        await pilot.pause()
        assert app.drawn is poll
        release.set()
        await refresh
        await pilot.pause()
        assert app.drawn is not None and app.drawn.fleet is new_view


def _fleet_app(n: int) -> KafkaConsoleApp:
    """The sample console with ``n`` consumers (copies of the sample's first one)."""
    from kafkaconsole.tui.sample import SAMPLE_NOW_MS, sample_config, sample_source

    base = sample_config(refresh_hz=0.05)
    proto = base.consumers[0]
    consumers = [
        proto.model_copy(update={"consumer_id": f"c{i:03d}", "kafka_topic": f"t{i % 50:02d}"})
        for i in range(n)
    ]
    cfg = base.model_copy(update={"consumers": consumers})
    source = sample_source()
    snap = source.snapshot
    assert snap is not None
    first = snap.consumers[0]
    source.snapshot = replace(
        snap,
        consumers=tuple(
            replace(first, consumer_id=c.consumer_id, kafka_topic=c.kafka_topic, count=i % 500)
            for i, c in enumerate(consumers)
        ),
    )
    source.fleet_view = None
    return KafkaConsoleApp(cfg, data_source=source, clock=lambda: SAMPLE_NOW_MS)


async def test_a_fleet_of_500_consumers_stays_usable() -> None:
    """500 rows: the filter, the sort keys and scrolling work, and a refresh in which one
    consumer changed redraws that row only."""
    app = _fleet_app(500)
    source = app.source
    assert isinstance(source, StaticSource)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        table = app.query_one(ConsumerTable)
        assert table.row_count == 500
        await pilot.press("end")  # scrolling: the last row, and the table followed it
        assert table.selected_id == "c499" and table.scroll_offset.y > 0
        await pilot.press("home")
        assert table.selected_id == "c000" and table.scroll_offset.y == 0
        await pilot.press("C")  # fullest window first: counts run 0..499
        assert table._row_ids[0] == "c499" and table._row_ids[-1] == "c000"
        await pilot.press("O")
        app.deliver(await app.read_snapshot())
        await pilot.pause()
        _with_count(source, "c250", 3)
        app.deliver(await app.read_snapshot())
        await pilot.pause()
        assert table.redrawn == ("c250",)
        await pilot.press("slash", "c", "2", "5")  # c250..c259
        assert table.row_count == 10
        await pilot.press("escape")
        assert table.row_count == 500
