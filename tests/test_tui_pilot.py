"""The console's keys drive a real Engine against the session's broker and Redis.

Each test runs the app headless (``run_test``) with the engine as its worker, presses keys and
checks what Redis, the engine and the pipeline received. ``q`` must stop the engine gracefully
before the app exits.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aredis
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable

from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.alerts import AlertEvent, AlertStatus
from kafkaconsole.engine.audit import AuditLog
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.status import ConsumerState
from kafkaconsole.tui.app import KafkaConsoleApp
from kafkaconsole.tui.sample import SAMPLE_NOW_MS, sample_config, sample_source
from kafkaconsole.tui.screens import ConfirmDialog, DetailScreen
from kafkaconsole.tui.source import StaticSource
from kafkaconsole.tui.widgets import ConsumerTable
from tests import pipeline_targets
from tests.engine_support import make_config
from tests.helpers import KafkaHelper, wait_for

SIZE = (120, 40)


def _app(cfg: AppConfig) -> tuple[KafkaConsoleApp, Engine]:
    engine = Engine(cfg, lease_ms=1500, snapshot_interval=0.2)
    return KafkaConsoleApp(cfg, engine=engine), engine


@contextlib.asynccontextmanager
async def running(app: KafkaConsoleApp) -> AsyncIterator[Pilot[Any]]:
    """``run_test``, and the engine stopped even when the test fails half-way."""
    try:
        async with app.run_test(size=SIZE) as pilot:
            yield pilot
    finally:
        await app.close_engine()


async def _running(app: KafkaConsoleApp, engine: Engine, cid: str) -> None:
    async def ready() -> bool:
        snap = app.source.latest()
        c = snap.consumer(cid) if snap else None
        return engine.started and c is not None and c.state == ConsumerState.RUNNING

    await wait_for(ready, 20, what="engine running in the app")


async def _quit(pilot: Pilot[Any], app: KafkaConsoleApp, engine: Engine) -> None:
    """`q`: the engine stops (commits, closes) before the app exits, with exit code 0."""
    await pilot.press("q")

    async def stopped() -> bool:
        return app.return_code is not None

    await wait_for(stopped, 20, what="graceful stop")
    assert not engine.started
    assert app.return_code == 0


def _messages(app: KafkaConsoleApp) -> list[str]:
    return [n.message for n in app._notifications]


def _notes(app: KafkaConsoleApp) -> list[tuple[str, str, str]]:
    """(title, message, severity) of every notification shown so far."""
    return [(n.title, n.message, n.severity) for n in app._notifications]


async def _dialog(pilot: Pilot[Any], app: KafkaConsoleApp) -> ConfirmDialog:
    async def shown() -> bool:
        return isinstance(app.screen, ConfirmDialog)

    await wait_for(shown, 10, what="confirm dialog")
    assert isinstance(app.screen, ConfirmDialog)
    return app.screen


def screen_text(app: KafkaConsoleApp) -> str:
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        record=True,
        color_system=None,
        legacy_windows=False,
    )
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


async def test_p_pauses_fleet_wide_and_resumes(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}],
        api={"enabled": True, "port": 0},
    )
    app, engine = _app(cfg)
    control = f"{unique}:{cid}:control"
    async with running(app) as pilot:
        await _running(app, engine, cid)
        # the HTTP API runs beside the engine, as in headless mode
        (api,) = app._closers
        async with aiohttp.ClientSession() as http, http.get(f"{api.url}/consumers") as resp:  # type: ignore[attr-defined]
            assert resp.status == 200
            assert cid in await resp.text()
        await pilot.press("p")

        async def paused() -> bool:
            return await redis_client.hget(control, "paused") == b"1"

        await wait_for(paused, 10, what="pause flag in Redis")
        snap = await engine.refresh_snapshot()
        assert snap.consumer(cid).state == ConsumerState.PAUSED  # type: ignore[union-attr]

        async def shown_paused() -> bool:
            return "‖ paused" in screen_text(app)

        await wait_for(shown_paused, 5, what="paused on screen")
        assert any("paused on every instance" in m for m in _messages(app))

        await pilot.press("p")

        async def resumed() -> bool:
            return await redis_client.hget(control, "paused") == b"0"

        await wait_for(resumed, 10, what="resume flag in Redis")
        assert any("resumed on every instance" in m for m in _messages(app))
        await _quit(pilot, app, engine)
    assert app._closers == []  # the API stopped with the engine


async def test_r_and_confirm_zeroes_the_window(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services, unique, [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}]
    )
    key = f"{unique}:{cid}:events"
    await kafka.produce(unique, ({"i": i} for i in range(12)), partitions=1)
    app, engine = _app(cfg)
    async with running(app) as pilot:

        async def counted() -> bool:
            return int(await redis_client.get(key) or 0) == 12

        await wait_for(counted, 20, what="12 counted")
        await pilot.press("r")
        dialog = await _dialog(pilot, app)
        body = str(dialog.body)
        assert "12 event(s)" in body and "discarded" in body and "p0 0-11" in body
        await pilot.press("y")

        async def zeroed() -> bool:
            return int(await redis_client.get(key) or 0) == 0

        await wait_for(zeroed, 10, what="count reset")
        await wait_for(lambda: _has(app, "12 event(s) discarded"), 5, what="notification")
        assert pipeline_targets.calls_for(cid) == []  # a reset never triggers
        await _quit(pilot, app, engine)


async def _has(app: KafkaConsoleApp, text: str) -> bool:
    return any(text in m for m in _messages(app))


async def test_t_and_confirm_triggers_a_manual_window(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services, unique, [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}]
    )
    await kafka.produce(unique, ({"i": i} for i in range(3)), partitions=1)
    app, engine = _app(cfg)
    fleet = Fleet(redis_client, cfg)
    async with running(app) as pilot:

        async def counted() -> bool:
            return int(await redis_client.get(f"{unique}:{cid}:events") or 0) == 3

        await wait_for(counted, 20, what="3 counted")
        await pilot.press("enter")  # steering works from the detail view too
        assert isinstance(app.screen, DetailScreen)
        await pilot.press("t")
        dialog = await _dialog(pilot, app)
        assert "Window [b]#1[/b]" in dialog.body and "3 event(s)" in dialog.body
        await pilot.press("n")
        await wait_for(lambda: _has(app, "cancelled"), 5, what="cancel notice")
        assert await fleet.history(cid) == []

        await pilot.press("t")
        await _dialog(pilot, app)
        await pilot.press("y")

        async def manual_run() -> bool:
            return any(c["reason"] == "manual" for c in pipeline_targets.calls_for(cid))

        await wait_for(manual_run, 15, what="manual pipeline call")
        history = await fleet.history(cid)
        assert history[0]["reason"] == "manual" and history[0]["count"] == 3
        call = pipeline_targets.calls_for(cid)[0]
        assert call["window_id"] == 1 and call["count"] == 3
        await wait_for(
            lambda: _has(app, "window #1 closed (manual, 3 event(s))"),
            5,
            what="trigger notification",
        )
        await wait_for(
            lambda: _has(app, "succeeded for window #1"), 10, what="pipeline outcome notification"
        )
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailScreen)
        await _quit(pilot, app, engine)


def _unreachable_config(unique: str) -> AppConfig:
    return AppConfig.model_validate(
        {
            "redis": {"url": "redis://127.0.0.1:1/0", "key_prefix": unique},
            "kafka": {"bootstrap_servers": "127.0.0.1:1"},
            "pipelines": {"p": {"kind": "python", "target": "tests.pipeline_targets:record"}},
            "consumers": [
                {
                    "consumer_id": "c",
                    "kafka_topic": "t",
                    "pipeline_name": "p",
                    "connection_id": "x",
                    "max_event": 1,
                    "max_time": 1,
                }
            ],
        }
    )


async def test_engine_failure_is_shown_and_q_exits_with_1(unique: str) -> None:
    app = KafkaConsoleApp(_unreachable_config(unique))
    app.wait_timeout = 0  # --wait-timeout 0: fail at once
    async with running(app) as pilot:
        await wait_for(lambda: _has(app, "Press q to quit"), 15, what="engine failure notice")
        assert app.engine_state == "failed"
        assert "engine failed" in screen_text(app)
        await pilot.press("q")
    assert app.return_code == 1


async def test_the_header_says_what_the_engine_waits_for(unique: str) -> None:
    """By default the engine waits for Redis and the brokers; the header says why."""
    app = KafkaConsoleApp(_unreachable_config(unique))
    async with running(app) as pilot:

        async def waiting() -> bool:
            await app.refresh_now()
            return "waiting for Redis at redis://127.0.0.1:1/0" in screen_text(app)

        await wait_for(waiting, 15, what="the wait in the header")
        assert app.engine_state == "starting"
        await pilot.press("q")
    assert app.return_code == 0  # quitting while it waits is a clean stop


# ---- without an engine: read-only, keymap, themes ---------------------------------------------


def _static_app(**ui: Any) -> tuple[KafkaConsoleApp, StaticSource]:

    source = sample_source()
    app = KafkaConsoleApp(sample_config(**ui), data_source=source, clock=lambda: SAMPLE_NOW_MS)
    return app, source


async def test_read_only_refuses_every_command() -> None:
    app, source = _static_app(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p", "P", "r", "t")
        await pilot.pause()
        refused = [m for m in _messages(app) if "read-only" in m]
        assert len(refused) == 4
        assert (
            "Pause refused: this console is read-only ([ui] read_only = true or --read-only)."
            in refused
        )
        assert not isinstance(app.screen, ConfirmDialog)
    assert source.actions == []


async def test_keymap_remaps_by_id() -> None:
    app, source = _static_app(keymap={"pause": "space", "detail": "o", "bogus": "x"})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await pilot.pause()
        assert source.actions == []
        await pilot.press("space")
        await wait_for(lambda: _async(bool(source.actions)), 5, what="pause by space")
        assert source.actions == [("pause", "orders")]
        await pilot.press("o")
        assert isinstance(app.screen, DetailScreen)
        assert any("unknown id(s) bogus" in m for m in _messages(app))


async def _async(value: bool) -> bool:
    return value


async def test_pause_all_and_filter_and_theme_cycle() -> None:
    app, source = _static_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        await pilot.press("P")
        await wait_for(lambda: _async(bool(source.actions)), 5, what="pause all")
        assert source.actions == [("pause", None)]
        table = app.main_screen.query_one(ConsumerTable)
        columns = [str(c.key.value) for c in table.columns.values()]
        await pilot.press("slash", "c", "l", "i")
        assert table.row_count == 1 and table.selected_id == "clicks"
        # the columns are laid out for every consumer: filtering never adds or drops one
        assert [str(c.key.value) for c in table.columns.values()] == columns
        await pilot.press("escape")
        assert table.row_count == 6
        assert app.theme == "kafkaconsole-dark"
        await pilot.press("T")
        assert app.theme == "kafkaconsole-high-contrast"  # files load in name order
        assert "Theme: kafkaconsole-high-contrast" in _messages(app)


async def test_bad_user_theme_falls_back_with_a_notice(tmp_path: Any, monkeypatch: Any) -> None:
    themes = tmp_path / "themes"
    themes.mkdir()
    (themes / "mine.toml").write_text('name = "mine"\nprimary = "#zzzzzz"\n')
    monkeypatch.setenv("KAFKACONSOLE_THEME_DIR", str(themes))
    app, _ = _static_app(theme="mine")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.theme == "kafkaconsole-dark"
        notice = [m for m in _messages(app) if "mine.toml" in m]
        assert notice == [
            f"theme file {themes / 'mine.toml'}: primary: '#zzzzzz' is not a "
            "colour; using kafkaconsole-dark"
        ]


async def test_builtin_textual_theme_gets_derived_variables() -> None:
    app, _ = _static_app(theme="nord")
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        await pilot.pause()
        assert app.theme == "nord"
        assert "lag-warn" in app.theme_variables and "threshold-bar" in app.theme_variables


# ---- security and health with a real engine ----------------------------------------------------


async def test_read_only_refuses_p_in_the_console_and_in_the_engine(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    """`--read-only` (config.with_read_only()): `p` is refused with a notice and nothing is
    paused; were the console to let it through, the engine refuses it (ReadOnlyError); the
    HTTP API running inside the console answers 403."""
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}],
        api={"enabled": True, "port": 0, "token": "t0ken-for-the-test"},
    ).with_read_only()
    app, engine = _app(cfg)
    control = f"{unique}:{cid}:control"
    async with running(app) as pilot:
        await _running(app, engine, cid)
        assert "READ-ONLY" in screen_text(app)
        (api,) = app._closers
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{api.url}/consumer/{cid}/pause",  # type: ignore[attr-defined]
                headers={"Authorization": "Bearer t0ken-for-the-test"},
            ) as resp,
        ):
            assert resp.status == 403
        await pilot.press("p")
        await wait_for(lambda: _has(app, "Pause refused: this console is read-only"), 5)
        assert ("Read-only", "warning") in [(t, sev) for t, _, sev in _notes(app)]

        app.read_only = False  # the console's own check off: the engine still refuses
        await pilot.press("p")
        await wait_for(lambda: _has(app, "Pause refused by the engine: read-only mode"), 10)
        assert not any(sev == "error" for _, _, sev in _notes(app))

        assert await redis_client.hget(control, "paused") != b"1"
        snap = await engine.refresh_snapshot()
        assert snap.consumer(cid).state == ConsumerState.RUNNING  # type: ignore[union-attr]
        assert await AuditLog(redis_client, unique).entries() == []  # refusals stay local
        await _quit(pilot, app, engine)


async def test_tui_alert_toasts_badge_and_audit_via_tui(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    """A `[[monitoring.alerts]]` rule of channel "tui" on verdict "paused" (for = 0): `p`
    pauses, the alert fires (a warning toast and `!1` on the row), `p` resumes and it resolves
    (an information toast). Both commands are in the audit stream with via "tui"."""
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}],
        monitoring={
            "sample_interval": 0.2,
            "stall_after": 1,
            "stuck_after": 1,
            "storm_period": 1,
            "lagging_intervals": 1,
            "alerts": [{"verdict": "paused", "for": 0, "channel": "tui"}],
        },
    )
    app, engine = _app(cfg)
    audit = AuditLog(redis_client, unique)
    async with running(app) as pilot:
        await _running(app, engine, cid)
        await pilot.press("p")

        async def fired() -> bool:
            return ("Alert paused firing", "warning") in [(t, s) for t, _, s in _notes(app)]

        await wait_for(fired, 15, what="the alert's toast")
        (note,) = [m for t, m, _ in _notes(app) if t == "Alert paused firing"]
        assert note.startswith(f"{cid}: paused: paused by ")

        async def badge() -> bool:
            return "paused !1" in screen_text(app)

        await wait_for(badge, 10, what="the alert badge on the row")
        (entry,) = await audit.entries()
        assert (entry["via"], entry["action"], entry["consumer_id"], entry["result"]) == (
            "tui",
            "pause",
            cid,
            "ok",
        )

        await pilot.press("p")

        async def resolved() -> bool:
            return ("Alert paused resolved", "information") in [(t, s) for t, _, s in _notes(app)]

        await wait_for(resolved, 15, what="the resolved toast")
        entries = await audit.entries()
        assert [(e["action"], e["via"]) for e in entries] == [("resume", "tui"), ("pause", "tui")]
        await _quit(pilot, app, engine)


async def test_alert_events_of_channel_tui_become_toasts() -> None:
    """The app's alert handler, fed as the engine feeds it: tui alerts only, masked."""
    app, source = _static_app()
    event = AlertEvent(
        AlertStatus.FIRING,
        "stalled",
        "orders",
        "tui",
        "stalled: partition 0 has not moved (redis://u:hunter2@redis:6379/0)",
        SAMPLE_NOW_MS - 60_000,
        SAMPLE_NOW_MS,
        verdict="stalled",
    )
    async with app.run_test(size=SIZE) as pilot:
        source.emit_alert(event)
        source.emit_alert(replace(event, rule="by-webhook", channel="webhook"))
        await pilot.pause()
        notes = _notes(app)
        assert notes == [
            (
                "Alert stalled firing",
                "orders: stalled: partition 0 has not moved (redis://u:******@redis:6379/0)",
                "warning",
            )
        ]
        source.emit_alert(replace(event, status=AlertStatus.RESOLVED, message="ok: caught up"))
        await pilot.pause()
        assert _notes(app)[-1] == ("Alert stalled resolved", "orders: ok: caught up", "information")


async def test_toasts_stay_above_the_status_line() -> None:
    """Toasts stack upwards from above the status line; the selected consumer stays readable."""
    from textual.widgets._toast import Toast, ToastRack

    app, _ = _static_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await app.refresh_now()
        for i in range(3):
            app.notify(f"note {i}", title="Note")
        await pilot.pause()
        rack = app.screen.get_child_by_type(ToastRack)
        status = app.main_screen.query_one("#selection")

        def toasts() -> list[Toast]:
            return [t for t in rack.query(Toast) if t.region.height]

        await wait_for(lambda: _async(len(toasts()) == 3), 5, what="the toasts shown")
        assert max(t.region.bottom for t in toasts()) <= status.region.y


async def test_a_short_table_leaves_its_rows_to_the_selected_consumers_preview() -> None:
    """Under a short table, the selected consumer's sparklines and last triggers; a table that
    needs the room gets all of it."""
    from kafkaconsole.tui.widgets import ConsumerPreview

    app, _ = _static_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        await pilot.pause()
        await app.refresh_now()  # the preview's history is read with the fleet
        await pilot.pause()
        table = app.main_screen.query_one(ConsumerTable)
        preview = app.main_screen.query_one(ConsumerPreview)
        assert preview.display and table.region.height == 7  # six rows and the header
        text = str(preview.query_one("#preview-history").render())
        assert "#1841" in text and "succeeded" in text  # orders' newest trigger
        title = str(preview.query_one("#preview-title").render())
        assert title.startswith(" orders ·")
        await pilot.press("down")
        await pilot.pause()
        assert str(preview.query_one("#preview-title").render()).startswith(" clicks ·")

    app, _ = _static_app()
    async with app.run_test(size=(120, 12)) as pilot:  # 6 rows fill a 12-row terminal
        await app.refresh_now()
        await pilot.pause()
        preview = app.main_screen.query_one(ConsumerPreview)
        assert not preview.display
        assert app.main_screen.query_one(ConsumerTable).region.height == 12 - 3  # all but 3


async def test_confirm_dialog_figures_are_live() -> None:
    """The reset dialog reads the open window again while it is open: what is discarded is
    what the window holds when the operator answers, not when the dialog opened."""
    from kafkaconsole.engine.counting import WindowState

    app, source = _static_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        source.windows["orders"] = WindowState(1842, 340, SAMPLE_NOW_MS - 8000, ())
        await pilot.press("r")
        await wait_for(lambda: _async(isinstance(app.screen, ConfirmDialog)), 5, what="dialog")
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog)
        body = dialog.query_one("#dialog-body")
        assert "340 event(s)" in str(body.render())
        source.windows["orders"] = WindowState(1842, 377, SAMPLE_NOW_MS - 8000, ())
        await wait_for(
            lambda: _async("377 event(s)" in str(body.render())), 5, what="the live figures"
        )
        await pilot.press("n")
    assert source.actions == []


async def test_sort_keys_order_the_table_and_keep_the_selection() -> None:
    """k9s-style: a capital letter per column sorts by it (again: reversed), `s` cycles the
    columns shown, `O` is the config's order; the cursor stays on its consumer."""
    app, _ = _static_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        table = app.main_screen.query_one(ConsumerTable)
        config_order = ["orders", "clicks", "payments", "logs", "audit", "archive"]
        assert table._row_ids == config_order
        await pilot.press("down")  # clicks
        await pilot.press("L")
        assert table._row_ids[:4] == ["logs", "clicks", "payments", "orders"]  # biggest lag
        assert table.selected_id == "clicks"
        assert "Lag▼" in str(table.columns["lag"].label)  # type: ignore[index]
        assert "Sorted by lag, descending." in _messages(app)
        await pilot.press("L")
        assert table._row_ids[-4:] == ["orders", "payments", "clicks", "logs"]
        assert "Lag▲" in str(table.columns["lag"].label)  # type: ignore[index]
        await pilot.press("N")
        assert table._row_ids == sorted(config_order)
        await pilot.press("s")  # the column after the name among those shown: health
        assert table._row_ids[0] in ("logs", "archive") and app.sort_key == "health"
        await pilot.press("O")
        assert table._row_ids == config_order and app.sort_key is None
        assert table.selected_id == "clicks"


async def test_command_line_runs_the_same_actions_as_the_keys() -> None:
    """`:` then a command: pause by id, a trigger that asks first, a clear error for a line
    that cannot run; escape closes it; read-only refuses there too."""
    app, source = _static_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        bar = app.main_screen.query_one("#command-bar")
        await pilot.press("colon")
        assert bar.display
        await pilot.press(*"pause pay", "tab", "enter")  # tab takes the suggestion
        await wait_for(lambda: _async(bool(source.actions)), 5, what="pause by command")
        assert source.actions == [("pause", "payments")] and not bar.display
        await pilot.press("colon", *"trigger orders", "enter")
        await wait_for(lambda: _async(isinstance(app.screen, ConfirmDialog)), 5, what="dialog")
        await pilot.press("n")
        assert source.actions == [("pause", "payments")]
        await pilot.press("colon", *"reset nobody", "enter")
        await pilot.pause()
        assert any("no consumer 'nobody' in this config" in m for m in _messages(app))
        await pilot.press("colon", *"sort lag", "enter")
        assert app.main_screen.query_one(ConsumerTable)._row_ids[0] == "logs"
        await pilot.press("colon", "x", "escape")
        assert not bar.display and app.main_screen.query_one(ConsumerTable).has_focus

    app, source = _static_app(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        await pilot.press("colon", *"resume all", "enter")
        await pilot.pause()
        assert any(
            m.startswith("Resume all refused: this console is read-only") for m in _messages(app)
        )
    assert source.actions == []


async def test_enter_on_a_trigger_shows_that_windows_events_from_kafka(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    """The detail view's history: enter on a closed window re-reads its events from Kafka
    (payload pretty-printed, secrets masked); `d` browses the DLQ with why each record is
    there; escape goes back."""
    from kafkaconsole.tui.screens import EventsScreen

    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 3}],
    )
    events = [{"i": i, "password": "hunter2"} for i in range(3)]
    await kafka.produce(unique, iter(events), partitions=1)
    await kafka.produce(unique, [b"{not json"], partitions=1)
    app, engine = _app(cfg)
    fleet = Fleet(redis_client, cfg)
    async with running(app) as pilot:

        async def closed() -> bool:
            return bool(await fleet.history(cid))

        await wait_for(closed, 20, what="window 1 closed")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await wait_for(
            lambda: _async(app.screen.query_one("#history").row_count > 0), 10, what="history"
        )
        await pilot.press("enter")
        assert isinstance(app.screen, EventsScreen)
        screen = app.screen
        await wait_for(lambda: _async(screen.body is not None), 20, what="the window's events")
        assert screen.body is not None and screen.body.window_id == 1
        assert [e.value["i"] for e in screen.body.events] == [0, 1, 2]
        shown = str(screen.query_one("#event-text").render())
        assert '"i": 0' in shown and "hunter2" not in shown
        await pilot.press("escape")
        assert isinstance(app.screen, DetailScreen)

        async def sent_to_the_dlq() -> bool:
            return any(r.consumer_id == cid and r.dlq >= 1 for r in app._rows)

        await wait_for(sent_to_the_dlq, 20, what="the bad event sent to the DLQ")
        await pilot.press("d")
        assert isinstance(app.screen, EventsScreen)
        dlq = app.screen

        async def dead_lettered() -> bool:
            return dlq.body is not None or dlq.problem is not None

        await wait_for(dead_lettered, 20, what="the DLQ's records")
        assert dlq.body is not None and dlq.body.events, dlq.problem
        assert "{not json" in str(dlq.query_one("#event-text").render())
        assert "why in the DLQ" in str(dlq.query_one("#event-text").render())
        await pilot.press("escape", "escape")
        await _quit(pilot, app, engine)


async def test_detail_view_of_a_consumer_of_two_topics_lists_each_topic_partition(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    """Partition 0 of two topics: two rows, each naming its topic (one key per row)."""
    a, b = f"{unique}.a", f"{unique}.b"
    await kafka.create_topic(a, 1)
    await kafka.create_topic(b, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services, unique, [{"consumer_id": cid, "kafka_topics": [a, b], "max_event": 1000}]
    )
    await kafka.produce(a, ({"i": i} for i in range(2)), partitions=1)
    await kafka.produce(b, ({"i": i} for i in range(3)), partitions=1)
    app, engine = _app(cfg)
    async with running(app) as pilot:

        async def counted() -> bool:
            return int(await redis_client.get(f"{unique}:{cid}:events") or 0) == 5

        await wait_for(counted, 20, what="5 counted")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        screen = app.screen

        async def both_rows() -> bool:
            await pilot.pause()
            table = screen.query_one("#partitions", DataTable)
            rows = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
            return sorted(rows) == [f"{a} 0", f"{b} 0"]

        await wait_for(both_rows, 15, what="a row per topic-partition")
        await pilot.press("escape")
        await _quit(pilot, app, engine)


async def test_shift_r_reloads_the_config_and_the_table_follows(
    tmp_path: Path, services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    """`R` (and `:reload`) re-read the config file: an added consumer appears in the table and
    counts; a broken file changes nothing and says why in a toast."""
    from kafkaconsole.config.loader import load_config
    from tests.test_reload import write_config

    first, added = f"{unique}-a", f"{unique}-b"
    for topic in (first, added):
        await kafka.create_topic(topic, 1)
    path = tmp_path / "kafkaconsole.toml"
    write_config(path, services, unique, [{"consumer_id": first, "kafka_topic": first}])
    cfg = load_config(path)
    app, engine = _app(cfg)
    async with running(app) as pilot:
        await _running(app, engine, first)
        table = app.main_screen.query_one(ConsumerTable)
        assert table._row_ids == [first]
        write_config(
            path,
            services,
            unique,
            [
                {"consumer_id": first, "kafka_topic": first},
                {"consumer_id": added, "kafka_topic": added},
            ],
        )
        await pilot.press("R")
        await wait_for(lambda: _async(any("added" in m for m in _messages(app))), 20, what="toast")
        assert any(m.startswith(f"reloaded {path}: added {added}") for m in _messages(app))
        await _running(app, engine, added)
        await app.refresh_now()
        assert table._row_ids == [first, added]
        path.write_text(path.read_text() + "\n[[consumers]]\nconsumer_id = 1\n")
        await pilot.press("colon", *"reload", "enter")
        await wait_for(
            lambda: _async(any("is invalid" in m for m in _messages(app))), 20, what="refusal"
        )
        assert table._row_ids == [first, added]
        await _quit(pilot, app, engine)


async def test_reload_in_a_read_only_console_is_refused() -> None:
    app, source = _static_app(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        await pilot.press("R")
        await pilot.pause()
        assert any(m.startswith("Reload refused") for m in _messages(app))
    assert source.actions == []


async def test_seek_command_asks_with_the_plan_and_seeks_or_changes_nothing() -> None:
    """`:seek ID TARGET`: a bad line is one toast at once; the dialog shows the plan; `n`
    changes nothing; `y` seeks (the time ago pinned to when the dialog opened) and says what
    became of the window."""
    app, source = _static_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        for line, problem in [
            ("seek orders yesterday", "seek target 'yesterday' is not one of: earliest, latest"),
            ("seek nobody earliest", "seek: no consumer 'nobody' in this config"),
            ("seek orders", "seek takes a consumer id and a target"),
            ("seek orders latest keep", "seek: window must be close or discard (got 'keep')"),
        ]:
            await pilot.press("colon", *line, "enter")
            await pilot.pause()
            assert ("Command", problem) in [(t, m[: len(problem)]) for t, m, _ in _notes(app)]
            assert not isinstance(app.screen, ConfirmDialog)

        await pilot.press("colon", *"seek clicks earliest", "enter")
        await wait_for(lambda: _has(app, "clicks: no partition to seek"), 5, what="refusal")
        assert not isinstance(app.screen, ConfirmDialog)

        await pilot.press("colon", *"seek orders earliest", "enter")
        dialog = await _dialog(pilot, app)
        assert dialog.title_text == "Seek orders?"
        assert "goes on from [b]the earliest offset[/b] on 3 partition(s)" in dialog.body
        assert "orders[1]  300,980 → 118,400  [$accent]182,580 read again[/]" in dialog.body
        assert "The open window #1842 ([b]340 event(s)[/b]) closes now" in dialog.body
        await pilot.press("n")
        await wait_for(lambda: _has(app, "Seek of orders cancelled; nothing changed."), 5)
        assert source.actions == []

        await pilot.press("colon", *"seek orders -1h", "enter")
        dialog = await _dialog(pilot, app)
        assert "at or after 2025-12-31T23:00:00.000Z" in dialog.body
        await pilot.press("y")
        await wait_for(lambda: _has(app, "orders: 16,689 event(s) to read again"), 5)
        assert source.actions == [("seek", "orders", "2025-12-31T23:00:00.000Z", "close")]
        assert _notes(app)[-1] == (
            "Seek",
            "orders: 16,689 event(s) to read again, 0 skipped; window #1842 closed (seek), "
            "pipeline orders_sync dispatched; every instance follows within a second.",
            "information",
        )
        orders = source.snapshot.consumer("orders") if source.snapshot else None
        assert orders is not None and (orders.window_id, orders.count) == (1843, 0)
        assert app._watch_runs["orders"] == 1842  # its run's end is told as for a trigger

        await pilot.press("colon", *"seek orders latest discard", "enter")
        dialog = await _dialog(pilot, app)
        assert "The open window #1843 is empty: nothing closes." in dialog.body
        assert "orders[0]  295,670 → 301,262  [$warning]5,592 skipped[/]" in dialog.body
        await pilot.press("y")
        await wait_for(lambda: _has(app, "the open window was empty"), 5)
        assert source.actions[-1] == ("seek", "orders", "latest", "discard")


async def test_seek_dialog_figures_are_live() -> None:
    """While the seek dialog is open, the plan is read again: events counted meanwhile are
    more to read again, and the open window's count is the one it holds now."""
    from kafkaconsole.engine.counting import WindowState

    app, source = _static_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        await pilot.press("colon", *"seek orders earliest", "enter")
        dialog = await _dialog(pilot, app)
        body = dialog.query_one("#dialog-body")
        assert "181,220 read again" in str(body.render()) and "(340 event(s))" in str(body.render())
        parts = source.seek_positions["orders"]
        parts["orders", 0] = replace(parts["orders", 0], stored=301_250)
        source.windows["orders"] = WindowState(1842, 370, SAMPLE_NOW_MS - 9000, ())
        await wait_for(
            lambda: _async("181,250 read again" in str(body.render())), 5, what="live figures"
        )
        shown = str(body.render())
        assert "(370 event(s))" in shown and "In all 544,320 event(s)" in shown  # the new total
        await pilot.press("n")
    assert source.actions == []


async def test_seek_in_a_read_only_console_is_refused() -> None:
    app, source = _static_app(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_now()
        await pilot.press("colon", *"seek orders earliest", "enter")
        await pilot.pause()
        assert (
            "Seek refused: this console is read-only ([ui] read_only = true or --read-only)."
            in _messages(app)
        )
        assert not isinstance(app.screen, ConfirmDialog)
    assert source.actions == []


async def test_seek_dialog_of_many_partitions_fits_80x24() -> None:
    """Twelve partitions: seven listed, the rest summed up, and the whole dialog (its title
    and buttons included) on an 80x24 screen."""
    from kafkaconsole.tui.source import SeekPosition

    app, source = _static_app()
    source.seek_positions["orders"] = {
        ("orders", p): SeekPosition(1_000 + p, 0, 5_000) for p in range(12)
    }
    async with app.run_test(size=(80, 24)) as pilot:
        await app.refresh_now()
        await pilot.press("colon", *"seek orders earliest", "enter")
        dialog = await _dialog(pilot, app)
        await pilot.pause()
        assert "… and 5 more partition(s): 5,045 read again, 0 skipped" in dialog.body
        box = dialog.query_one("#dialog").region
        assert box.y >= 0 and box.bottom <= 24
        for part in ("#dialog-title", "#confirm", "#cancel"):
            region = dialog.query_one(part).region
            assert box.y < region.y and region.bottom < box.bottom, part
        await pilot.press("n")
    assert source.actions == []
