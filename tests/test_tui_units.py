"""The console's pure parts: view models, formatting, themes, bindings, log capture."""

from __future__ import annotations

import filecmp
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest

from kafkaconsole.config.models import AppConfig
from kafkaconsole.config.secrets import mask_config, masker
from kafkaconsole.engine.redis_sentinel import NO_PRIMARY
from kafkaconsole.engine.seek import PartitionMove, SeekPlan
from kafkaconsole.engine.status import ConsumerState
from kafkaconsole.engine.thresholds import Winner
from kafkaconsole.tui.bindings import ALL_COMMANDS, APP_COMMANDS, unknown_keymap_ids
from kafkaconsole.tui.logcapture import ConsoleLogHandler, LogCapture
from kafkaconsole.tui.sample import (
    SAMPLE_NOW_MS,
    sample_config,
    sample_fleet,
    sample_history,
    sample_series,
    sample_snapshot,
)
from kafkaconsole.tui.themes import (
    CUSTOM_VARIABLES,
    DEFAULT_THEME,
    PACKAGE_THEME_DIR,
    ThemeFileError,
    choose_theme,
    load_theme_file,
    load_themes,
    theme_from_mapping,
)
from kafkaconsole.tui.viewmodel import (
    AlertView,
    FleetView,
    HeaderModel,
    LogBook,
    LogLine,
    Series,
    SeriesRecorder,
    Trend,
    build_history,
    build_rows,
    config_lines,
    fmt_clock,
    fmt_count,
    fmt_offsets,
    fmt_rate,
    fmt_span,
    lag_trend,
    partitions_of,
)
from kafkaconsole.tui.widgets import (
    FleetHeader,
    Palette,
    alert_badge,
    count_labels,
    health_text,
    history_line,
    table_columns,
    verdict_text,
)

REPO_THEMES = Path(__file__).resolve().parents[1] / "themes"


# ---- formatting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "\u2013"),
        (0, "0"),
        (9_999, "9999"),
        (12_345, "12.3k"),
        (123_456, "123k"),
        (1_234_567, "1.2M"),
        (-15_000, "-15.0k"),
    ],
)
def test_fmt_count(n: int | None, text: str) -> None:
    assert fmt_count(n) == text


def test_fmt_rate_span_clock() -> None:
    assert [fmt_rate(r) for r in (0.0, 4.5, 312.0, 1234.0)] == ["0", "4.5", "312", "1234"]
    assert [fmt_span(s) for s in (0, 45, 150, 7200, 200_000)] == ["0s", "45s", "2m", "2h", "2d"]
    assert fmt_clock(3 * 3600 + 25 * 60 + 12) == "3:25:12"
    assert fmt_clock(2 * 86400 + 5) == "2d 00:00:05"


def test_count_labels_shorten_before_percent() -> None:
    assert count_labels(1204, 2000) == ["1204/2000", "1.2k/2k"]
    assert count_labels(340, 500)[0] == "340/500"


@pytest.mark.parametrize(
    ("lags", "trend"),
    [
        ([], Trend.FLAT),
        ([100.0] * 20, Trend.FLAT),
        ([100.0, 150.0], Trend.FLAT),
        ([1000.0 + 100 * i for i in range(12)], Trend.UP),
        ([5000.0 - 300 * i for i in range(12)], Trend.DOWN),
        ([10_000.0, 10_200.0], Trend.FLAT),
    ],  # +200 is under 10 % of 10k
)
def test_lag_trend(lags: list[float], trend: Trend) -> None:
    assert lag_trend(lags) == trend


def test_series_recorder_samples_once_per_second() -> None:
    rec = SeriesRecorder(keep=3)
    snap = sample_snapshot()
    for i in range(10):
        rec.record(replace(snap, taken_at_ms=snap.taken_at_ms + i * 250))
    assert len(rec.series("orders").rates) == 3  # t=0, 1000, 2000 ms
    assert rec.series("nope") == Series()


# ---- rows ------------------------------------------------------------------------------------


def _rows() -> dict[str, object]:
    rows = build_rows(
        sample_config(), sample_snapshot(), sample_fleet(), sample_series(), SAMPLE_NOW_MS
    )
    return {r.consumer_id: r for r in rows}


def test_rows_follow_config_order_and_states() -> None:
    rows = build_rows(
        sample_config(), sample_snapshot(), sample_fleet(), sample_series(), SAMPLE_NOW_MS
    )
    assert [r.consumer_id for r in rows] == [
        "orders",
        "clicks",
        "payments",
        "logs",
        "audit",
        "archive",
    ]
    assert [r.state for r in rows] == [
        "running",
        "running",
        "paused",
        "error",
        "rebalancing",
        "stopped",
    ]


def test_row_merges_fleet_rate_and_lag() -> None:
    orders = build_rows(
        sample_config(), sample_snapshot(), sample_fleet(), sample_series(), SAMPLE_NOW_MS
    )[0]
    assert orders.rate == 63.5 and orders.lag == 180  # the fleet's sums, not this instance's
    assert orders.instances == ("ops-1-4242", "ops-2-5151")
    assert orders.progress.winner == Winner.COUNT
    assert orders.eta_text == "count 3s"
    assert orders.last_trigger is not None and orders.last_trigger.age_seconds == 14


def test_fleet_pause_wins_over_a_stale_local_state() -> None:
    fleet = sample_fleet()
    consumers = dict(fleet.consumers)
    consumers["orders"] = replace(consumers["orders"], state="paused", paused_by="bob@x")
    rows = build_rows(
        sample_config(), sample_snapshot(), FleetView(fleet.instances, consumers), {}, SAMPLE_NOW_MS
    )
    assert rows[0].state == "paused" and rows[0].paused_by == "bob@x"
    assert rows[0].progress.winner == Winner.TIME  # paused: no rate, the timer decides


def test_rows_without_any_data_are_starting() -> None:
    rows = build_rows(sample_config(), None, None, {}, SAMPLE_NOW_MS)
    assert {r.state for r in rows} == {"starting"}
    assert all(r.eta_text == "idle" for r in rows)


def test_starting_locally_but_running_elsewhere() -> None:
    snap = sample_snapshot()
    snap = replace(
        snap,
        consumers=tuple(
            replace(c, state=ConsumerState.STARTING) if c.consumer_id == "orders" else c
            for c in snap.consumers
        ),
    )
    rows = build_rows(sample_config(), snap, sample_fleet(), {}, SAMPLE_NOW_MS)
    assert rows[0].state == "running"


def test_filter_matches_id_or_topic() -> None:
    rows = build_rows(sample_config(), sample_snapshot(), None, {}, SAMPLE_NOW_MS)
    assert [r.consumer_id for r in rows if r.matches("LOG")] == ["logs"]
    assert [r.consumer_id for r in rows if r.matches("trail")] == ["audit"]
    assert len([r for r in rows if r.matches("  ")]) == 6


def test_history_rows_and_partitions() -> None:
    hist = build_history(sample_history()["orders"], SAMPLE_NOW_MS, offsets_limit=1)
    assert hist[0].window_id == 1841 and hist[0].closed_age_seconds == 14
    assert hist[0].offsets.endswith("(+2)")
    assert hist[2].status == "failed" and hist[2].error == "HTTP 503 from pipeline"
    parts = partitions_of("orders", sample_snapshot(), sample_fleet())
    assert [p.owner for p in parts] == ["ops-1-4242", "ops-1-4242", "ops-2-5151"]
    local = partitions_of("orders", sample_snapshot(), None)
    assert [p.partition for p in local] == [0, 1] and local[0].owner == "ops-1-4242"


def test_many_topics_name_their_topic_in_offsets_and_partitions() -> None:
    one = [{"topic": "orders", "partition": 0, "first": 0, "last": 9}]
    assert fmt_offsets(one) == "p0 0-9"  # one topic: as it always was
    two = [*one, {"topic": "lines", "partition": 0, "first": 5, "last": 7}]
    assert fmt_offsets(two) == "orders p0 0-9, lines p0 5-7"
    status = {
        "consumers": [
            {
                "consumer_id": "shop",
                "state": "running",
                "partitions": [
                    {"topic": "orders", "partition": 0, "position": 3, "owner": "a"},
                    {"topic": "lines", "partition": 0, "position": 4, "owner": "a"},
                ],
            }
        ]
    }
    parts = FleetView.from_status(status).consumers["shop"].partitions
    assert [(p.topic, p.partition, p.position) for p in parts] == [
        ("orders", 0, 3),
        ("lines", 0, 4),
    ]


def test_config_lines_mask_secrets() -> None:
    masked = mask_config(sample_config())
    text = "\n".join(config_lines(masked, "clicks"))
    assert "s3cr3t" not in text
    assert 'headers = { Authorization = "******" }' in text
    assert text.startswith('[[consumers]]\nconsumer_id = "clicks"')
    assert "[pipelines.clicks_webhook]" in text
    assert config_lines(masked, "nope") == []


def test_table_columns_fit_the_width() -> None:
    rows = build_rows(sample_config(), sample_snapshot(), None, {}, SAMPLE_NOW_MS)
    for width in (50, 60, 78, 98, 116, 118, 200):
        cols, compact = table_columns(rows, width)
        assert sum(c.width + 1 for c in cols) <= width
        assert compact == (width < 116)
        keys = [c.key for c in cols]
        assert "health" in keys  # the verdict is never dropped
        assert ("state" in keys) == (not compact)  # compact: state and verdict share a cell
    assert "topic" not in [c.key for c in table_columns(rows, 78)[0]]
    assert "err" in [c.key for c in table_columns(rows, 78)[0]]  # 80 columns: all but topic
    assert "topic" in [c.key for c in table_columns(rows, 98)[0]]
    assert "tlag" not in [c.key for c in table_columns(rows, 118)[0]]
    assert "tlag" in [c.key for c in table_columns(rows, 130)[0]]  # room for "Behind"
    assert [c.key for c in table_columns(rows, 60)[0]][-1] == "next"  # err, last, time dropped


# ---- health: verdicts, time lag, alerts ------------------------------------------------------


def _palette() -> Palette:
    return Palette(
        {
            "background": "#000000",
            "success": "#00ff00",
            "foreground-muted": "#808080",
            "lag-warn": "#ffaa00",
            "error": "#ff0000",
            "warning": "#ffff00",
            "state-running": "#00ff00",
            "state-paused": "#ffaa00",
            "state-rebalancing": "#00ffff",
            "state-stopped": "#808080",
            "state-error": "#ff0000",
        }
    )


@pytest.mark.parametrize(
    ("verdict", "variable"),
    [
        ("ok", "success"),
        ("paused", "foreground-muted"),
        ("lagging", "lag-warn"),
        ("trigger-storm", "lag-warn"),
        ("stalled", "error"),
        ("stopped", "error"),
        ("window-stuck", "error"),
        ("pipeline-failing", "error"),
        ("pipeline-backlog", "lag-warn"),
    ],
)
def test_verdict_colours(verdict: str, variable: str) -> None:
    pal = _palette()
    text = verdict_text(verdict, 0, pal)
    assert text.plain == verdict
    assert text.style == pal[variable]


def test_pipeline_backlog_shows_in_the_row_and_the_detail_health_line() -> None:
    from kafkaconsole.tui.screens import health_line

    fleet = sample_fleet()
    orders = replace(fleet.consumers["orders"], backlog=4, backlog_age_seconds=95.0)
    fleet = replace(fleet, consumers={**fleet.consumers, "orders": orders})
    rows = build_rows(sample_config(), sample_snapshot(), fleet, sample_series(), SAMPLE_NOW_MS)
    row = next(r for r in rows if r.consumer_id == "orders")
    assert (row.backlog, row.backlog_age_seconds) == (4, 95.0)
    line = health_line(row, _palette(), SAMPLE_NOW_MS).plain
    assert "4 window(s) waiting for the pipeline, oldest 95s" in line
    calm = next(r for r in rows if r.consumer_id == "clicks")
    assert calm.backlog == 0
    assert "waiting for the pipeline" not in health_line(calm, _palette(), SAMPLE_NOW_MS).plain
    status = {"consumers": [{"consumer_id": "orders", "backlog": 3, "backlog_age_seconds": 1.5}]}
    parsed = FleetView.from_status(status).consumers["orders"]
    assert (parsed.backlog, parsed.backlog_age_seconds) == (3, 1.5)
    assert verdict_text("pipeline-backlog", 0, _palette(), 10).plain == "backlog"


def test_verdict_badge_and_shortening() -> None:
    pal = _palette()
    assert verdict_text("lagging", 2, pal).plain == "lagging !2"
    assert verdict_text("pipeline-failing", 1, pal, 10).plain == "failing !1"
    assert verdict_text("window-stuck", 0, pal, 10).plain == "stuck"
    assert verdict_text("trigger-storm", 0, pal, 13).plain == "trigger-storm"
    assert verdict_text("lagging", 1, pal, 9).plain == "lagging!1"
    assert verdict_text("stalled", 12, pal, 8).plain == "stal…!12"  # the badge stays whole
    assert verdict_text(None, 0, pal).plain == "\u2013"
    assert alert_badge(0) == "" and alert_badge(3) == "!3"


def test_rows_carry_verdict_time_lag_and_alerts() -> None:
    rows = {
        r.consumer_id: r
        for r in build_rows(
            sample_config(), sample_snapshot(), sample_fleet(), sample_series(), SAMPLE_NOW_MS
        )
    }
    clicks = rows["clicks"]
    assert clicks.verdict == "lagging" and clicks.verdict_reason is not None
    assert clicks.verdict_since_ms == SAMPLE_NOW_MS - 95_000
    assert clicks.time_lag_seconds == 41.5
    assert [(a.alert, a.channel) for a in clicks.alerts] == [("time_lag_seconds_above_30", "tui")]
    assert [a.alert for a in rows["logs"].alerts] == ["stopped", "time_lag_seconds_above_30"]
    # the fleet shows a pause at once (no "since"): this instance's monitor says since when
    assert rows["payments"].verdict == "paused"
    assert rows["payments"].verdict_since_ms == SAMPLE_NOW_MS - 132_000
    parts = partitions_of("clicks", sample_snapshot(), sample_fleet())
    assert [p.time_lag_seconds for p in parts] == [41.5, 33.0, 36.8]
    local = partitions_of("clicks", sample_snapshot(), None)
    assert [p.time_lag_seconds for p in local] == [41.5, 33.0]


def test_rows_without_fleet_use_the_local_health() -> None:
    rows = build_rows(sample_config(), sample_snapshot(), None, {}, SAMPLE_NOW_MS)
    assert [r.verdict for r in rows] == ["ok", "lagging", "paused", "stopped", "ok", "stopped"]
    assert len(rows[3].alerts) == 2 and rows[3].time_lag_seconds == 842.0


def test_fleet_view_reads_the_health_fields_of_status_json() -> None:
    status = {
        "instances": [{"instance_id": "i1"}],
        "consumers": [
            {
                "consumer_id": "orders",
                "state": "running",
                "rate": 3.5,
                "lag": 12,
                "instances": ["i1"],
                "partitions": [
                    {
                        "partition": 0,
                        "position": 5,
                        "highwater": 17,
                        "lag": 12,
                        "owner": "i1",
                        "oldest_ts_ms": 1,
                        "time_lag_seconds": 7.25,
                    }
                ],
                "verdict": "stalled",
                "verdict_reason": "partition 0 has not moved",
                "verdict_since": "2026-01-01T00:00:00.000Z",
                "alerts": [
                    {
                        "alert": "stalled",
                        "channel": "tui",
                        "message": "stalled: partition 0 has not moved",
                        "since": "2026-01-01T00:00:01.000Z",
                        "value": None,
                        "verdict": "stalled",
                        "metric": None,
                    }
                ],
                "time_lag_seconds": 7.25,
                "time_to_trigger_seconds": 3.0,
            }
        ],
    }
    c = FleetView.from_status(status).consumers["orders"]
    assert (c.verdict, c.verdict_since_ms) == ("stalled", SAMPLE_NOW_MS)
    assert c.alerts == (
        AlertView("stalled", "tui", "stalled: partition 0 has not moved", SAMPLE_NOW_MS + 1000),
    )
    assert c.partitions[0].time_lag_seconds == 7.25
    assert (c.time_lag_seconds, c.time_to_trigger_seconds) == (7.25, 3.0)


def test_engine_text_is_masked_in_rows_and_history() -> None:
    cfg = sample_config()
    mask = masker(cfg)
    snap = sample_snapshot()
    leak = "redis://:hunter2@redis:6379/0 said no; Bearer s3cr3t-token"
    snap = replace(
        snap,
        consumers=tuple(
            replace(c, last_error=leak, verdict_reason=leak) if c.consumer_id == "logs" else c
            for c in snap.consumers
        ),
    )
    rows = build_rows(cfg, snap, None, {}, SAMPLE_NOW_MS, mask)
    logs = next(r for r in rows if r.consumer_id == "logs")
    for text in (logs.last_error, logs.verdict_reason):
        assert text is not None and "hunter2" not in text and "s3cr3t" not in text
    records = [dict(sample_history()["orders"][0], run={"error": f"echo: {leak}"})]
    (row,) = build_history(records, SAMPLE_NOW_MS, mask=mask)
    assert row.error is not None and "s3cr3t" not in row.error and "******" in row.error


def test_health_text_merges_state_and_verdict_when_compact() -> None:
    pal = _palette()
    rows = {
        r.consumer_id: r
        for r in build_rows(sample_config(), sample_snapshot(), sample_fleet(), {}, SAMPLE_NOW_MS)
    }
    assert health_text(rows["orders"], pal, 11).plain == "● ok"
    assert health_text(rows["clicks"], pal, 11).plain == "● lagging!1"
    assert health_text(rows["payments"], pal, 11).plain == "‖ paused"
    assert health_text(rows["audit"], pal, 11).plain == "↻ rebal"  # ok, but not running here
    assert health_text(replace(rows["orders"], verdict=None), pal, 11).plain == "● running"


# ---- log book and capture --------------------------------------------------------------------


def test_logbook_indexes_consumer_warnings() -> None:
    book = LogBook(keep=3)
    for i in range(5):
        book.add(LogLine(float(i), logging.INFO, "x", f"line {i}"))
    book.add(LogLine(9.0, logging.WARNING, "x", "orders: bad event"))
    book.add(LogLine(9.0, logging.WARNING, "x", "not a consumer: has spaces"))
    assert [line.message for line in book.lines()][-1] == "not a consumer: has spaces"
    assert len(book.lines()) == 3
    assert [e.message for e in book.errors_for("orders")] == ["orders: bad event"]
    assert len(book.drain()) == 3 and book.drain() == []


def test_log_capture_routes_to_the_book_and_restores(capsys: pytest.CaptureFixture[str]) -> None:
    book = LogBook()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    capture = LogCapture(ConsoleLogHandler(book, secrets={"hunter2"}))
    capture.install()
    try:
        logging.getLogger("kafkaconsole.engine").info("password is hunter2")
        logging.getLogger("aiokafka").warning("broker gone")
        logging.getLogger("aiokafka").info("chatter")  # below the root's WARNING
    finally:
        capture.restore()
    assert [line.message for line in book.lines()] == ["password is ******", "broker gone"]
    assert (list(root.handlers), root.level) == before
    assert "hunter2" not in capsys.readouterr().err


def test_log_handler_masks_with_the_config_masker() -> None:
    """URL passwords and exception text are masked too, not only the known values."""
    book = LogBook()
    handler = ConsoleLogHandler(book, mask=masker(sample_config()))
    lg = logging.getLogger("kafkaconsole.test.mask")
    lg.addHandler(handler)
    lg.propagate = False
    try:
        try:
            raise ConnectionError("token abc123secret refused at http://u:pw0rd@host/x")
        except ConnectionError:
            lg.warning("orders: pipeline call failed", exc_info=True)
    finally:
        lg.removeHandler(handler)
        lg.propagate = True
    (line,) = book.lines()
    assert "abc123secret" not in line.message and "pw0rd" not in line.message
    assert line.message.count("******") == 2


# ---- themes ----------------------------------------------------------------------------------


def test_shipped_themes_are_complete_and_match_the_repo_folder() -> None:
    catalog = load_themes([PACKAGE_THEME_DIR])
    assert catalog.problems == []
    assert set(catalog.themes) == {
        "kafkaconsole-dark",
        "kafkaconsole-light",
        "kafkaconsole-high-contrast",
    }
    for theme in catalog.themes.values():
        assert set(CUSTOM_VARIABLES) <= set(theme.variables), theme.name
    assert catalog.themes["kafkaconsole-light"].dark is False
    repo = sorted(p.name for p in REPO_THEMES.glob("*.toml"))
    assert repo == sorted(p.name for p in PACKAGE_THEME_DIR.glob("*.toml"))
    _same, mismatch, errors = filecmp.cmpfiles(REPO_THEMES, PACKAGE_THEME_DIR, repo, shallow=False)
    assert mismatch == [] and errors == [], "themes/ and kafkaconsole/tui/themes/ differ"


def test_stylesheets_use_theme_variables_only() -> None:
    hex_colour = re.compile(r"#[0-9a-fA-F]{3,8}\b")
    sheets = list(PACKAGE_THEME_DIR.parent.glob("*.tcss"))
    assert sheets
    for tcss in sheets:
        for line in tcss.read_text().splitlines():
            line = line.strip()
            if line.endswith(";"):  # a declaration: property: value;
                value = line.split(":", 1)[1]
                assert not hex_colour.search(value), f"{tcss.name}: hex colour in {line!r}"
                assert not re.search(r"\b(rgb|hsl)a?\(", value), f"{tcss.name}: {line!r}"


def test_bad_colour_is_reported_with_file_key_and_value(tmp_path: Path) -> None:
    bad = tmp_path / "mine.toml"
    bad.write_text('name = "mine"\nprimary = "#12345"\n[variables]\nlag-warn = "orange"\n')
    with pytest.raises(ThemeFileError) as err:
        load_theme_file(bad)
    assert str(err.value) == f"theme file {bad}: primary: '#12345' is not a colour"
    bad.write_text('name = "mine"\nprimary = "red"\n[variables]\nlag-warn = "nope"\n')
    with pytest.raises(ThemeFileError, match=r"variables\.lag-warn: 'nope' is not a colour"):
        load_theme_file(bad)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"primary": "red"}, "`name` is required"),
        ({"name": "x"}, "`primary` is required"),
        ({"name": "x", "primary": "red", "colour": "blue"}, "unknown key(s) colour"),
        ({"name": "x", "primary": "red", "dark": "yes"}, "must be true or false"),
        ({"name": "x", "primary": 3}, "must be a colour string"),
    ],
)
def test_theme_validation(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ThemeFileError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        theme_from_mapping(data, "t.toml")


def test_choose_theme_falls_back_with_a_notice(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text('name = "broken"\nprimary = "not-a-colour"\n')
    (tmp_path / "mine.toml").write_text('name = "mine"\nprimary = "teal"\n')
    catalog = load_themes([PACKAGE_THEME_DIR, tmp_path])
    names = [*catalog.themes, "textual-dark"]
    assert choose_theme(None, catalog, names) == (DEFAULT_THEME, None)
    assert choose_theme("mine", catalog, names) == ("mine", None)
    name, notice = choose_theme("broken", catalog, names)
    assert name == DEFAULT_THEME and notice is not None
    assert "broken.toml: primary: 'not-a-colour' is not a colour" in notice
    name, notice = choose_theme("nope", catalog, names)
    assert name == DEFAULT_THEME and notice is not None and "unknown theme 'nope'" in notice
    name, notice = choose_theme(str(tmp_path / "mine.toml"), catalog, names)
    assert (name, notice) == ("mine", None)


# ---- bindings --------------------------------------------------------------------------------


def test_every_binding_has_a_unique_id_and_the_brief_keys() -> None:
    ids = [c.id for c in ALL_COMMANDS]
    assert len(ids) == len(set(ids))
    keys = {c.id: c.key for c in APP_COMMANDS}
    assert keys == {
        "pause": "p",
        "pause_all": "P",
        "reset": "r",
        "trigger": "t",
        "detail": "enter",
        "back": "escape",
        "filter": "slash",
        "log": "l",
        "reload": "R",
        "command": "colon",
        "theme": "T",
        "help": "question_mark",
        "quit": "q",
    }
    assert unknown_keymap_ids({"pause": "space", "bogus": "x"}) == ["bogus"]


# ---- kafkaconsole run --read-only ---------------------------------------------------------------


def test_run_read_only_sets_ui_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --read-only` hands the console (and so its engine and API) a read-only config."""
    from typer.testing import CliRunner

    import kafkaconsole.tui.app as tui_app
    from kafkaconsole.cli import run_cmd
    from kafkaconsole.cli.app import app

    seen: list[tuple[str, bool]] = []

    def fake_tui(cfg: AppConfig, **_: object) -> int:
        seen.append(("tui", cfg.ui.read_only))
        return 0

    def fake_headless(cfg: AppConfig, *_: object) -> int:
        seen.append(("headless", cfg.ui.read_only))
        return 0

    monkeypatch.setattr(tui_app, "run_tui", fake_tui)
    monkeypatch.setattr(run_cmd, "run_headless_cli", fake_headless)
    path = tmp_path / "kc.toml"
    path.write_text(
        """
[pipelines.p]
kind = "python"
target = "tests.pipeline_targets:record"

[[consumers]]
consumer_id = "c"
kafka_topic = "t"
pipeline_name = "p"
connection_id = "x"
max_event = 1
max_time = 1
"""
    )
    runner = CliRunner()
    for args in (["--read-only"], [], ["--no-ui", "--read-only"], ["--no-ui"]):
        result = runner.invoke(app, ["run", "--config", str(path), *args])
        assert result.exit_code == 0, result.output
    assert seen == [("tui", True), ("tui", False), ("headless", True), ("headless", False)]
    assert "--read-only" in runner.invoke(app, ["demo", "--help"]).output


# ---- the : command line and sorting ----------------------------------------------------------


def test_command_line_parses_commands_and_names_what_is_wrong() -> None:
    from kafkaconsole.tui.commandline import CommandLineError, ConsoleCommand, parse

    ids = ["orders", "clicks"]
    assert parse(":pause orders", ids) == ConsoleCommand("pause", "orders")
    assert parse("resume all", ids) == ConsoleCommand("resume", "all")
    assert parse("open clicks", ids) == ConsoleCommand("detail", "clicks")
    assert parse("sort lag", ids) == ConsoleCommand("sort", "lag", None)
    assert parse("sort behind asc", ids) == ConsoleCommand("sort", "tlag", False)
    assert parse("sort none", ids) == ConsoleCommand("sort", None)
    assert parse("filter pay ments", ids) == ConsoleCommand("filter", "pay ments")
    assert parse("q", ids) == ConsoleCommand("quit")
    for line, problem in [
        ("", "type a command"),
        ("frobnicate orders", "unknown command 'frobnicate'"),
        ("reset nobody", "no consumer 'nobody' in this config; known: orders, clicks"),
        ("reset all", "no consumer 'all'"),
        ("trigger", "trigger takes one consumer id"),
        ("sort colour", "sort: no column 'colour'"),
        ("sort lag sideways", "asc or desc"),
        ("help me", "help takes no argument"),
        ("pause 'orders", "cannot read"),
    ]:
        with pytest.raises(CommandLineError, match=re.escape(problem)):
            parse(line, ids)


def test_command_line_seek_takes_an_id_a_target_and_what_becomes_of_the_window() -> None:
    from kafkaconsole.tui.commandline import CommandLineError, ConsoleCommand, parse, suggester

    ids = ["orders", "clicks"]
    assert parse(":seek orders earliest", ids) == ConsoleCommand("seek", "orders", to="earliest")
    assert parse("seek orders -2h discard", ids) == ConsoleCommand(
        "seek", "orders", to="-2h", window="discard"
    )
    assert parse("seek clicks 1200 CLOSE", ids) == ConsoleCommand("seek", "clicks", to="1200")
    assert parse("seek orders 2026-11-30T08:00:00Z", ids).to == "2026-11-30T08:00:00Z"
    assert parse("seek orders '2026-11-30 08:00'", ids).to == "2026-11-30 08:00"
    for line, problem in [
        ("seek orders", "seek takes a consumer id and a target: seek ID TARGET [close|discard]"),
        ("seek orders earliest close now", "seek takes a consumer id and a target"),
        ("seek nobody earliest", "seek: no consumer 'nobody' in this config; known: orders"),
        ("seek orders yesterday", "seek target 'yesterday' is not one of: earliest, latest"),
        ("seek orders -2 hours", "seek target '-2' is not one of"),
        ("seek orders -2h hours", "seek: window must be close or discard (got 'hours')"),
        ("seek orders -2x", "seek target '-2x' is not one of"),
        ("seek orders 99999999999999999", "offsets stay below 2^53"),
        ("seek orders earliest keep", "seek: window must be close or discard (got 'keep')"),
    ]:
        with pytest.raises(CommandLineError, match=re.escape(problem)):
            parse(line, ids)
    suggest = suggester(ids)
    assert "seek orders " in suggest._suggestions
    assert "seek clicks latest discard" in suggest._suggestions


def _seek_plan(moves: int, *, window: str = "close", count: int = 340) -> SeekPlan:

    parts = [
        PartitionMove(
            topic="orders",
            partition=p,
            current=None if p == 2 else 1_000 + p,
            target=1_000 if p % 2 == 0 else 2_000,
            log_start=0,
            log_end=3_000,
            reread=p if p % 2 == 0 and p != 2 else 0,
            skipped=0 if p % 2 == 0 else 999 - p,
        )
        for p in range(moves)
    ]
    return SeekPlan(
        consumer_id="orders",
        to="1000",
        resolved="offset 1000",
        window=window,  # type: ignore[arg-type]
        window_id=7,
        window_count=count,
        reread=sum(m.reread for m in parts),
        skipped=sum(m.skipped for m in parts),
        partitions=parts,
        warnings=[],
    )


def test_seek_dialog_lists_eight_partitions_then_sums_up_the_rest() -> None:
    from kafkaconsole.tui.app import SEEK_DIALOG_PARTITIONS, seek_dialog_body

    body = seek_dialog_body(_seek_plan(12), "orders_sync")
    lines = body.splitlines()
    assert lines[0] == "[b]orders[/b] goes on from [b]offset 1000[/b] on 12 partition(s):"
    listed = [line for line in lines if line.startswith("  orders")]
    assert len(listed) == SEEK_DIALOG_PARTITIONS - 1 == 7  # the 8th line sums up the rest
    assert listed[0] == "  orders[0]  1,000 → 1,000  no change"
    assert listed[1] == "  orders[1]  1,001 → 2,000  [$warning]998 skipped[/]"
    assert listed[2] == "  orders[2]      - → 1,000  nothing counted yet"
    assert listed[4] == "  orders[4]  1,004 → 1,000  [$accent]4 read again[/]"
    # partitions 7 to 11: 8 and 10 read again 8 + 10; 7, 9 and 11 skip 992 + 990 + 988
    assert lines[len(listed) + 2] == "  … and 5 more partition(s): 18 read again, 2,970 skipped"
    eight = seek_dialog_body(_seek_plan(8), "orders_sync")
    assert "more partition" not in eight and "  orders[7]  1,007 → 2,000" in eight
    assert "closes now with reason [b]seek[/b]; pipeline [b]orders_sync[/b] runs" in body
    discard = seek_dialog_body(_seek_plan(2, window="discard"), "p")
    assert "is [b]discarded[/b]: no pipeline runs." in discard and "more partition" not in discard
    empty = seek_dialog_body(_seek_plan(1, count=0), "p")
    assert "The open window #7 is empty: nothing closes." in empty
    assert "In all 0 event(s) read again" in empty and "and 0 skipped" in empty


def test_seek_result_toast_says_what_became_of_the_window() -> None:
    from kafkaconsole.engine.seek import SeekResult
    from kafkaconsole.tui.app import seek_result_text

    plan = _seek_plan(2)
    base = SeekResult.dry_run(plan).model_copy(update={"applied": True, "epoch": 1})
    closed = base.model_copy(update={"closed_window_id": 7})
    assert seek_result_text(closed, "sync") == (
        "orders: 0 event(s) to read again, 998 skipped; window #7 closed (seek), "
        "pipeline sync dispatched; every instance follows within a second."
    )
    gone = base.model_copy(update={"discarded": 340})
    assert "340 event(s) of the open window discarded, no pipeline run;" in seek_result_text(
        gone, "sync"
    )
    assert "; the open window was empty; every instance" in seek_result_text(base, "sync")


def test_history_marks_replayed_windows_and_keeps_lines_aligned() -> None:
    from kafkaconsole.tui.viewmodel import reason_label

    records = sample_history()["orders"][:3]
    records = [
        {**records[0], "replay": True},
        {**records[1], "reason": "seek"},
        records[2],
    ]
    hist = build_history(records, SAMPLE_NOW_MS)
    assert [h.reason for h in hist] == ["count·replay", "seek", "count"]
    assert reason_label("time", True) == "time·replay" and reason_label("time") == "time"
    palette = _palette()
    ends = {
        line.index(f"{h.count:,}") + len(f"{h.count:,}")
        for line, h in ((history_line(h, palette, 13).plain, h) for h in hist)
    }
    assert len(ends) == 1  # the counts line up under a replay's longer reason
    assert history_line(hist[2], palette).plain.startswith(" #1839   count       500")


def test_sort_rows_orders_by_column_and_keeps_ties_in_config_order() -> None:
    from kafkaconsole.tui.viewmodel import sort_rows

    rows = build_rows(
        sample_config(), sample_snapshot(), sample_fleet(), sample_series(), SAMPLE_NOW_MS
    )
    ids = [r.consumer_id for r in rows]
    assert [r.consumer_id for r in sort_rows(rows, None, False)] == ids
    by_lag = [r.consumer_id for r in sort_rows(rows, "lag", False)]
    assert by_lag[:4] == ["logs", "clicks", "payments", "orders"]
    assert by_lag[4:] == ["audit", "archive"]  # no lag: last, in config order
    assert [r.consumer_id for r in sort_rows(rows, "lag", True)][:2] == ["audit", "archive"]
    assert [r.consumer_id for r in sort_rows(rows, "id", False)] == sorted(ids)
    worst = [r.consumer_id for r in sort_rows(rows, "health", False)]
    assert worst[0] == "logs" and worst[-1] in ("orders", "audit")


def test_header_names_a_missing_sentinel_primary_or_an_exhausted_pool() -> None:
    def shown(*reasons: str) -> str:
        header = FleetHeader()
        model = HeaderModel(
            brokers="b:9092",
            kafka_ok=True,
            redis_ok=not reasons,
            instances=1,
            rate=0,
            uptime_seconds=1,
            instance_id="i",
            engine="running",
            read_only=False,
            consumers=1,
            shown=1,
            redis_pool=reasons,
        )
        header.show(model, compact=False)
        return str(header.content)

    no_primary = (
        f"{NO_PRIMARY} for service 'kc' (sentinels a:1): the sentinels see the primary down"
    )
    assert "no primary" in shown(no_primary) and "pool exhausted" not in shown(no_primary)
    assert "pool exhausted" in shown("Redis connections exhausted: ...")
    assert "no primary" not in shown() and "pool exhausted" not in shown()
