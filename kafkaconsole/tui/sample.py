"""A fixed, realistic fleet for snapshot tests and the README screenshot.

Six consumers, one in each state (running, lag growing, paused, error, rebalancing, stopped),
two instances, health verdicts (ok, lagging, paused, stopped), time lags, active alerts (one of
channel ``tui``), trigger history, rate/lag series and a DLQ tail: everything the console
shows, with no broker, no Redis and no wall clock.
``python -m kafkaconsole.tui.sample docs/screenshot.svg`` writes the README screenshot from it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kafkaconsole.config.models import AppConfig
from kafkaconsole.engine.counting import WindowState
from kafkaconsole.engine.records import OffsetRange, iso_ms
from kafkaconsole.engine.status import (
    ActiveAlert,
    ConsumerSnapshot,
    ConsumerState,
    InstanceSnapshot,
    PartitionSnapshot,
    TriggerSummary,
)
from kafkaconsole.tui.source import SeekPosition, StaticSource

if TYPE_CHECKING:
    from kafkaconsole.engine.peek import PeekBody
from kafkaconsole.tui.viewmodel import (
    AlertView,
    FleetConsumer,
    FleetPartition,
    FleetView,
    LogLine,
    Series,
)

SAMPLE_NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
INSTANCE = "ops-1-4242"
OTHER = "ops-2-5151"


def sample_config(**ui: Any) -> AppConfig:
    """The demo fleet's config (secrets included, so the config tab shows them masked)."""
    consumers: list[dict[str, Any]] = [
        {
            "consumer_id": "orders",
            "kafka_topic": "orders",
            "pipeline_name": "orders_sync",
            "connection_id": "conn-orders",
            "max_event": 500,
            "max_time": 20,
            "filter": {"type": "order"},
        },
        {
            "consumer_id": "clicks",
            "kafka_topic": "clicks",
            "pipeline_name": "clicks_webhook",
            "connection_id": "conn-clicks",
            "max_event": 1000,
            "max_time": 10,
            "job_type": "async",
        },
        {
            "consumer_id": "payments",
            "kafka_topic": "payments",
            "pipeline_name": "payments_loader",
            "connection_id": "conn-payments",
            "max_event": 200,
            "max_time": 15,
            "job_type": "batch",
        },
        {
            "consumer_id": "logs",
            "kafka_topic": "app-logs",
            "pipeline_name": "warehouse",
            "connection_id": "conn-logs",
            "max_event": 2000,
            "max_time": 30,
            "format": "raw",
        },
        {
            "consumer_id": "audit",
            "kafka_topic": "audit-trail",
            "pipeline_name": "orders_sync",
            "connection_id": "conn-audit",
            "max_event": 100,
            "max_time": 60,
        },
        {
            "consumer_id": "archive",
            "kafka_topic": "archive",
            "pipeline_name": "warehouse",
            "connection_id": "conn-archive",
            "max_event": 5000,
            "max_time": 3600,
        },
    ]
    return AppConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": "kafka-1:9092,kafka-2:9092"},
            "redis": {"url": "redis://:hunter2@redis:6379/0"},
            "api": {"enabled": False},
            "ui": ui,
            "pipelines": {
                "orders_sync": {"kind": "python", "target": "kafkaconsole.demo:record_trigger"},
                "clicks_webhook": {
                    "kind": "http",
                    "url": "https://hooks.example.com/clicks",
                    "headers": {"Authorization": "Bearer s3cr3t-token"},
                },
                "payments_loader": {"kind": "command", "command": ["load-payments", "--batch"]},
                "warehouse": {
                    "kind": "airbyte",
                    "url": "http://airbyte:8000/api/public",
                    "token": "abc123secret",
                },
            },
            "monitoring": {
                "alerts": [
                    {"metric": "time_lag_seconds", "above": 30, "for": 10, "channel": "tui"},
                    {"verdict": "stopped", "for": 30, "channel": "log"},
                ]
            },
            "consumers": consumers,
        }
    )


def _ago(seconds: float) -> int:
    return SAMPLE_NOW_MS - int(seconds * 1000)


def _parts(spec: list[tuple[int, int, int, float]]) -> tuple[PartitionSnapshot, ...]:
    """(partition, position, highwater, time lag in seconds) -> partition snapshots."""
    return tuple(
        PartitionSnapshot(p, pos, hw, hw - pos, tl, _ago(tl) if hw > pos else None)
        for p, pos, hw, tl in spec
    )


TIME_LAG_ALERT = "time_lag_seconds_above_30"


# Health of each consumer: (verdict, reason, seconds since, alerts as (rule, channel, message,
# seconds since, value)). The same on this instance's snapshot and in the fleet view.
HEALTH: dict[str, tuple[str, str, float, tuple[tuple[str, str, str, float, float | None], ...]]] = {
    "orders": ("ok", "consuming normally", 3 * 3600, ()),
    "clicks": (
        "lagging",
        "lag grew from 5120 to 6350 over the last 5 interval(s) (5.0s)",
        95,
        ((TIME_LAG_ALERT, "tui", "time_lag_seconds = 41.5 > 30", 52, 41.5),),
    ),
    "payments": (
        "paused",
        "paused by alice@ops-laptop since 2025-12-31 23:57:48Z (2m ago)",
        132,
        (),
    ),
    "logs": (
        "stopped",
        "stopped on an error: Redis update failed (will retry): ConnectionError: Error 111 "
        "connecting to redis",
        29,
        (
            ("stopped", "log", "stopped: stopped on an error", 29, None),
            (TIME_LAG_ALERT, "tui", "time_lag_seconds = 842 > 30", 300, 842.0),
        ),
    ),
    "audit": ("ok", "no lag reported yet", 40, ()),
    "archive": ("stopped", "no live instance runs it", 3 * 3600, ()),
}
TIME_LAG: dict[str, float | None] = {
    "orders": 2.4,
    "clicks": 41.5,
    "payments": 131.0,
    "logs": 842.0,
    "audit": None,
    "archive": None,
}


def _health(cid: str) -> dict[str, Any]:
    verdict, reason, since, alerts = HEALTH[cid]
    return {
        "verdict": verdict,
        "verdict_reason": reason,
        "verdict_since_ms": _ago(since),
        "alerts": tuple(ActiveAlert(a, ch, m, _ago(t), v) for a, ch, m, t, v in alerts),
        "time_lag_seconds": TIME_LAG[cid],
    }


def sample_snapshot() -> InstanceSnapshot:
    c = ConsumerSnapshot
    consumers = (
        c(
            "orders",
            "orders",
            "orders_sync",
            ConsumerState.RUNNING,
            340,
            500,
            20,
            1842,
            _ago(8),
            920_113,
            2,
            42.5,
            120,
            _parts([(0, 301_220, 301_260, 2.4), (1, 300_980, 301_020, 1.9)]),
            TriggerSummary(1841, "count", 500, _ago(14), "succeeded"),
            None,
            2,
        ),
        c(
            "clicks",
            "clicks",
            "clicks_webhook",
            ConsumerState.RUNNING,
            912,
            1000,
            10,
            9_310,
            _ago(6),
            9_312_004,
            0,
            160.0,
            4_210,
            _parts([(0, 3_101_000, 3_103_400, 41.5), (1, 3_099_200, 3_101_010, 33.0)]),
            TriggerSummary(9309, "count", 1000, _ago(4), "running"),
        ),
        c(
            "payments",
            "payments",
            "payments_loader",
            ConsumerState.PAUSED,
            57,
            200,
            15,
            402,
            _ago(11),
            80_157,
            0,
            0.0,
            388,
            _parts([(0, 40_100, 40_300, 131.0), (1, 40_012, 40_200, 128.0)]),
            TriggerSummary(401, "time", 143, _ago(130), "succeeded"),
        ),
        c(
            "logs",
            "app-logs",
            "warehouse",
            ConsumerState.ERROR,
            1_204,
            2000,
            30,
            77,
            _ago(29),
            155_204,
            0,
            0.0,
            15_880,
            _parts([(0, 155_204, 171_084, 842.0)]),
            TriggerSummary(76, "time", 1_873, _ago(47), "failed"),
            "Redis update failed (will retry): ConnectionError: Error 111 connecting to redis",
        ),
        c(
            "audit",
            "audit-trail",
            "orders_sync",
            ConsumerState.REBALANCING,
            0,
            100,
            60,
            12,
            None,
            1_100,
            0,
            0.0,
            None,
            (),
            TriggerSummary(11, "manual", 37, _ago(3_600 * 3), "succeeded"),
        ),
        c(
            "archive",
            "archive",
            "warehouse",
            ConsumerState.STOPPED,
            0,
            5000,
            3600,
            3,
            None,
            10_000,
            0,
            0.0,
            None,
            (),
            None,
        ),
    )
    return InstanceSnapshot(
        INSTANCE,
        "ops-1",
        4242,
        _ago(3 * 3600 + 25 * 60 + 12),
        SAMPLE_NOW_MS,
        True,
        True,
        tuple(replace(c, **_health(c.consumer_id)) for c in consumers),
    )


def sample_fleet() -> FleetView:
    def fc(
        cid: str,
        state: str,
        rate: float,
        lag: int | None,
        parts: list[tuple[int, int, int, str, float]],
        paused_by: str | None = None,
    ) -> FleetConsumer:
        fp = tuple(
            FleetPartition(p, pos, hw, hw - pos, owner, tl) for p, pos, hw, owner, tl in parts
        )
        owners = tuple(sorted({p[3] for p in parts}))
        return _fleet_health(FleetConsumer(cid, state, rate, lag, fp, owners, paused_by))

    consumers = {
        "orders": fc(
            "orders",
            "running",
            63.5,
            180,
            [
                (0, 301_220, 301_260, INSTANCE, 2.4),
                (1, 300_980, 301_020, INSTANCE, 1.9),
                (2, 301_540, 301_600, OTHER, 1.2),
            ],
        ),
        "clicks": fc(
            "clicks",
            "running",
            240.0,
            6_350,
            [
                (0, 3_101_000, 3_103_400, INSTANCE, 41.5),
                (1, 3_099_200, 3_101_010, INSTANCE, 33.0),
                (2, 3_100_150, 3_102_290, OTHER, 36.8),
            ],
        ),
        "payments": fc(
            "payments",
            "paused",
            0.0,
            388,
            [(0, 40_100, 40_300, INSTANCE, 131.0), (1, 40_012, 40_200, INSTANCE, 128.0)],
            paused_by="alice@ops-laptop",
        ),
        "logs": fc("logs", "error", 0.0, 15_880, [(0, 155_204, 171_084, INSTANCE, 842.0)]),
        "audit": _fleet_health(FleetConsumer("audit", "running", 0.0, None, (), (INSTANCE, OTHER))),
        "archive": _fleet_health(FleetConsumer("archive", "stopped", 0.0, None, (), ())),
    }
    return FleetView((INSTANCE, OTHER), consumers)


def _fleet_health(c: FleetConsumer) -> FleetConsumer:
    """The fleet's view of a consumer's health (alerts as Redis lists them: fleet-wide)."""
    h = _health(c.consumer_id)
    return replace(
        c,
        verdict=h["verdict"],
        verdict_reason=h["verdict_reason"],
        # a pause shows at once in the fleet view, without the monitor's "since"
        verdict_since_ms=None if h["verdict"] == "paused" else h["verdict_since_ms"],
        alerts=tuple(
            AlertView(a.alert, a.channel, a.message, a.since_ms, a.value) for a in h["alerts"]
        ),
        time_lag_seconds=h["time_lag_seconds"],
    )


def _wave(n: int, base: float, amp: float, period: float, trend: float = 0.0) -> tuple[float, ...]:
    return tuple(
        round(max(base + amp * math.sin(i / period) + trend * i, 0.0), 1) for i in range(n)
    )


def sample_series() -> dict[str, Series]:
    return {
        "orders": Series(_wave(180, 60, 18, 7), _wave(180, 160, 60, 5)),
        "clicks": Series(_wave(180, 230, 40, 9), _wave(180, 900, 200, 11, trend=30)),
        "payments": Series(_wave(120, 14, 5, 4) + (0.0,) * 60, _wave(180, 120, 20, 6, trend=1.5)),
        "logs": Series(
            _wave(150, 30, 8, 5) + (0.0,) * 30,
            _wave(150, 200, 50, 7) + tuple(200.0 + 530 * i for i in range(30)),
        ),
        "audit": Series((0.0,) * 180, (0.0,) * 180),
        "archive": Series(),
    }


def sample_history() -> dict[str, list[dict[str, Any]]]:
    records = []
    statuses = [
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
        "succeeded",
        "succeeded",
        "succeeded",
        "succeeded",
    ]
    for i, status in enumerate(statuses):
        wid = 1841 - i
        closed = _ago(14 + 23 * i)
        reason = "manual" if i == 5 else ("time" if i in (3, 6) else "count")
        count = 500 if reason == "count" else 317 - 11 * i
        first = 300_000 - 500 * i
        records.append(
            {
                "consumer_id": "orders",
                "window_id": wid,
                "reason": reason,
                "count": count,
                "opened_at": iso_ms(closed - 9_000),
                "closed_at": iso_ms(closed),
                "offsets": [
                    {
                        "topic": "orders",
                        "partition": p,
                        "first": first + p * 7,
                        "last": first + p * 7 + count // 3,
                    }
                    for p in range(3)
                ],
                "status": status,
                "run": {
                    "status": status,
                    "duration_ms": 180 + 37 * i,
                    "error": "HTTP 503 from pipeline" if status == "failed" else None,
                },
            }
        )
    return {"orders": records}


def sample_windows() -> dict[str, WindowState]:
    return {
        "orders": WindowState(
            1842,
            340,
            _ago(8),
            (
                OffsetRange("orders", 0, 301_107, 301_219),
                OffsetRange("orders", 1, 300_867, 300_979),
                OffsetRange("orders", 2, 301_426, 301_539),
            ),
        ),
    }


def sample_log_lines() -> list[LogLine]:
    t = SAMPLE_NOW_MS / 1000
    lines = [
        LogLine(
            t - 95,
            logging.INFO,
            "kafkaconsole.engine",
            "engine ops-1-4242 started with 6 consumer(s)",
        ),
        LogLine(
            t - 60,
            logging.WARNING,
            "kafkaconsole.consumer",
            "orders: bad event orders[1]@300955: invalid JSON: unexpected end of data",
        ),
        LogLine(
            t - 31.0,
            logging.WARNING,
            "kafkaconsole.consumer",
            "orders: bad event orders[0]@301190: not UTF-8 text",
        ),
        LogLine(
            t - 47,
            logging.ERROR,
            "kafkaconsole.trigger",
            "logs: pipeline warehouse FAILED for window 76 after 5 attempt(s): HTTP 503",
        ),
        LogLine(
            t - 14,
            logging.INFO,
            "kafkaconsole.trigger",
            "orders: pipeline orders_sync succeeded for window 1841 (count, 500 events)",
        ),
        LogLine(
            t - 5,
            logging.ERROR,
            "kafkaconsole.consumer",
            "logs: Redis update failed (will retry): ConnectionError: Error 111",
        ),
    ]
    return sorted(lines, key=lambda line: line.created)


def sample_peeks() -> dict[tuple[str, str, int | None], PeekBody]:
    """What peeking shows on the sample fleet: window #1841 of orders and its DLQ."""
    from kafkaconsole.engine.peek import PeekBody, PeekEvent, PeekHeader

    closed = _ago(14)
    events = []
    for i in range(12):
        p, offset = i % 3, 300_000 + (i % 3) * 7 + i // 3
        ts = closed - 9_000 + i * 650
        events.append(
            PeekEvent(
                topic="orders",
                partition=p,
                offset=offset,
                timestamp=iso_ms(ts),
                timestamp_ms=ts,
                key=f"customer-{40 + i}",
                key_format="text",
                value={
                    "type": "refund" if i % 5 == 4 else "order",
                    "id": 91_000 + i,
                    "amount": round(12.5 + i * 7.25, 2),
                    "card": {"last4": f"{4000 + i}", "token": "********"},
                },
                value_format="json",
                headers=[PeekHeader(name="source", value="web")],
            )
        )
    window = PeekBody(
        consumer_id="orders",
        source="window",
        topic="orders",
        window_id=1841,
        window_count=500,
        limit=50,
        truncated=True,
        warnings=[],
        events=events,
    )
    bad = [(b"{not json", "invalid JSON: unexpected end of data", 300_955, 1)]
    bad.append((b"\xff\xfe", "not UTF-8 text", 301_190, 0))
    dlq_events = [
        PeekEvent(
            topic="orders.dlq",
            partition=0,
            offset=n,
            timestamp=iso_ms(_ago(60 - 17 * n)),
            timestamp_ms=_ago(60 - 17 * n),
            key=None,
            key_format="null",
            value=raw.decode("utf-8", "replace"),
            value_format="text",
            headers=[],
            error={
                "topic": "orders",
                "partition": str(part),
                "offset": str(off),
                "stage": "VALUE_CONVERTER",
                "exception.message": why,
            },
        )
        for n, (raw, why, off, part) in enumerate(bad)
    ]
    dlq = PeekBody(
        consumer_id="orders",
        source="dlq",
        topic="orders.dlq",
        window_id=None,
        window_count=None,
        limit=50,
        truncated=False,
        warnings=[],
        events=dlq_events,
    )
    return {("orders", "window", 1841): window, ("orders", "dlq", None): dlq}


def sample_seek_positions() -> dict[str, dict[tuple[str, int], SeekPosition]]:
    """Where orders stands for a seek: the next offsets after its open window, the logs'
    bounds, and an event timestamp every half hour or so for time targets."""
    stored = {0: 301_220, 1: 300_980, 2: 301_540}
    starts = {0: 120_000, 1: 118_400, 2: 121_050}
    ends = {0: 301_262, 1: 301_013, 2: 301_571}
    return {
        "orders": {
            ("orders", p): SeekPosition(
                stored[p],
                starts[p],
                ends[p],
                (
                    (starts[p], _ago(30 * 86_400)),
                    *(
                        (stored[p] - 5_550 * k - 13 * p, _ago(1_790 * k + 40))
                        for k in range(6, 0, -1)
                    ),
                ),
            )
            for p in range(3)
        }
    }


def sample_source() -> StaticSource:
    return StaticSource(
        snapshot=sample_snapshot(),
        fleet_view=sample_fleet(),
        histories=sample_history(),
        windows=sample_windows(),
        series_of=sample_series(),
        now_ms=SAMPLE_NOW_MS,
        peeks=sample_peeks(),
        seek_positions=sample_seek_positions(),
    )


def sample_app(**kwargs: Any) -> Any:
    """The console on the sample fleet, with a frozen clock."""
    from kafkaconsole.tui.app import KafkaConsoleApp

    ui = kwargs.pop("ui", {})
    app = KafkaConsoleApp(
        sample_config(**ui), data_source=sample_source(), clock=lambda: SAMPLE_NOW_MS, **kwargs
    )
    for line in sample_log_lines():
        app.logbook.add(line)
    return app


def write_screenshot(path: str, size: tuple[int, int] = (120, 24), *, log: bool = True) -> None:
    """Render the main view of the sample fleet (log panel open) to an SVG file."""
    os.environ["TZ"] = "UTC"  # log timestamps: the same picture on every machine
    time.tzset()
    app = sample_app()

    async def main() -> str:
        async with app.run_test(size=size) as pilot:
            await app.refresh_now()
            if log:
                await pilot.press("l")
            await app.refresh_now()
            await pilot.pause()
            return app.export_screenshot(title="kafkaconsole")

    svg = asyncio.run(main())
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(svg)


if __name__ == "__main__":  # pragma: no cover
    write_screenshot(sys.argv[1] if len(sys.argv) > 1 else "screenshot.svg")
