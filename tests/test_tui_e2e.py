"""End to end: the console with its engine, events flowing, counters moving on screen.

The real app runs headless (Textual's test driver) against the session's broker and Redis while
a producer keeps sending; the test reads what is drawn on the screen, as a person would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.tui.app import KafkaConsoleApp
from kafkaconsole.tui.screens import ConfirmDialog, DetailScreen
from tests.engine_support import make_config
from tests.helpers import KafkaHelper, wait_for
from tests.test_tui_pilot import screen_text


async def _produce(kafka: KafkaHelper, topic: str, stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        await kafka.produce(topic, ({"type": "order", "i": i + n} for n in range(40)), partitions=2)
        i += 40
        await asyncio.sleep(0.1)


def _count(label: str) -> int:
    """A count bar's number: ``912``, or ``1.2k`` once the window holds a thousand or more
    (the producer runs while the engine starts: a slow start finds a thousand waiting)."""
    return round(float(label[:-1]) * 1000) if label.endswith("k") else int(label)


async def test_counters_move_on_screen(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    await kafka.create_topic(unique, 2)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 100_000}],
        ui={"refresh_hz": 10},
    )
    engine = Engine(cfg, lease_ms=1500, snapshot_interval=0.1)
    app = KafkaConsoleApp(cfg, engine=engine)
    stop = asyncio.Event()
    producer = asyncio.create_task(_produce(kafka, unique, stop))
    row = re.compile(
        rf"{re.escape(cid)}\s+{re.escape(unique)}\s+● running\s+(?P<verdict>\S+)(?: !\d+)?\s+"
        r"(?P<rate>\S+)\s+\S+\s+(?:\S+\s+)?(?P<count>[\d.]+k?)/100k"
    )  # ev/s, lag, the Behind column where there is room, the count bar
    seen: list[int] = []
    try:
        # wide enough for the full layout whatever the length of the test's unique names
        # (they grow with the session's test count; at 120 columns a long one turns the
        # table compact, which merges the State and Health columns this row pattern reads)
        async with app.run_test(size=(160, 30)) as pilot:

            async def counted(minimum: int) -> bool:
                m = row.search(screen_text(app))
                if m is None:
                    return False
                seen.append(_count(m.group("count")))
                return seen[-1] >= minimum

            async def engine_started() -> bool:
                return engine.started

            # the start (Redis checks, the group join) is the machine's pace; the counting
            # on screen is what is tested, from there
            await wait_for(engine_started, 60, interval=0.2, what="the engine started")
            await wait_for(lambda: counted(1), 25, interval=0.2, what="a count on screen")
            first = seen[-1]
            await wait_for(
                lambda: counted(first + 200), 15, interval=0.2, what="the count moving on screen"
            )
            text = screen_text(app)
            assert f"kafka {services.bootstrap_servers} ●" in text and "redis ●" in text

            async def rate_shown() -> bool:
                m = row.search(screen_text(app))
                return m is not None and float(m.group("rate").rstrip("k")) > 0

            await wait_for(rate_shown, 10, what="events/s on screen")

            async def one_instance() -> bool:
                return "1 instance " in screen_text(app)

            await wait_for(one_instance, 10, what="fleet header")

            async def healthy() -> bool:  # the verdict column, and the time lag of the selection
                m = row.search(text := screen_text(app))
                return m is not None and m.group("verdict") == "ok" and "time lag " in text

            await wait_for(healthy, 15, what="verdict ok on screen")

            await pilot.press("enter")
            assert isinstance(app.screen, DetailScreen)

            async def partitions_shown() -> bool:
                return engine.instance_id in screen_text(app)  # partition owner column

            await wait_for(partitions_shown, 10, what="partition owners in the detail view")
            await pilot.press("escape", "q")

            async def exited() -> bool:
                return app.return_code is not None

            await wait_for(exited, 20, what="graceful quit")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await producer
        await app.close_engine()
    assert app.return_code == 0 and not engine.started
    assert seen == sorted(seen)  # counters only move forwards


async def test_seek_to_earliest_in_the_console_replays_the_events(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    """`:seek ID earliest` confirmed in the console: the events counted are read and counted
    again, into a new window recorded as a replay, shown as count·replay in the history."""
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    cfg = make_config(
        services, unique, [{"consumer_id": cid, "kafka_topic": unique, "max_event": 20}]
    )
    await kafka.produce(unique, ({"i": i} for i in range(20)), partitions=1)
    engine = Engine(cfg, lease_ms=1500, snapshot_interval=0.2)
    app = KafkaConsoleApp(cfg, engine=engine)
    fleet = Fleet(redis_client, cfg)
    try:
        async with app.run_test(size=(120, 40)) as pilot:

            async def closed() -> bool:
                return len(await fleet.history(cid)) >= 1

            await wait_for(closed, 40, interval=0.2, what="the first window of 20 closed")
            first = (await fleet.history(cid))[0]
            assert (first["window_id"], first["reason"], first["count"]) == (1, "count", 20)
            assert "replay" not in first
            await pilot.press("colon", *f"seek {cid} earliest", "enter")

            async def dialog() -> bool:
                return isinstance(app.screen, ConfirmDialog)

            await wait_for(dialog, 15, what="the seek dialog")
            assert isinstance(app.screen, ConfirmDialog)
            body = app.screen.body
            assert f"{unique}[0]  20 → 0  [$accent]20 read again[/]" in body
            assert "The open window #2 is empty: nothing closes." in body
            await pilot.press("y")

            async def replayed() -> bool:
                return any(h.get("replay") and h["count"] == 20 for h in await fleet.history(cid))

            await wait_for(replayed, 30, interval=0.2, what="the 20 events counted again")
            again = (await fleet.history(cid))[0]
            assert (again["window_id"], again["reason"], again["replay"]) == (2, "count", True)
            assert any(
                "20 event(s) to read again, 0 skipped; the open window was empty" in n.message
                for n in app._notifications
            )
            await pilot.press("escape", "enter")  # the detail view's history

            async def shown() -> bool:
                return "count·replay" in screen_text(app)

            await wait_for(shown, 15, what="count·replay in the history")
            await pilot.press("escape", "q")

            async def exited() -> bool:
                return app.return_code is not None

            await wait_for(exited, 20, what="graceful quit")
    finally:
        await app.close_engine()
    assert app.return_code == 0
