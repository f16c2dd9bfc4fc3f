"""A client library's retry chatter is collapsed: aiokafka logs every failed reconnect to a
dead broker (about twenty lines a second); the log gets the first line, then once a minute the
line again with how often it was repeated. The project's own lines are never collapsed."""

from __future__ import annotations

import io
import logging

from kafkaconsole.logs import RepeatFilter, setup_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_repeats_within_the_window_are_dropped_then_counted() -> None:
    clock = Clock()
    repeats = RepeatFilter(window=60, clock=clock)
    dead = "Unable connect to node with id %s: [Errno 111] Connect call failed"
    assert repeats.filter(_record("aiokafka.conn", dead, 3))
    shown = 0
    for _ in range(1200):  # a minute of 20 lines a second
        clock.now += 0.05
        shown += repeats.filter(_record("aiokafka.conn", dead, 3))
    assert shown == 0
    other = _record("aiokafka.conn", dead, 2)  # another broker: a line of its own
    assert repeats.filter(other)
    clock.now += 0.1  # the window has passed: the line again, with the count
    again = _record("aiokafka.conn", dead, 3)
    assert repeats.filter(again)
    assert again.getMessage().endswith("Connect call failed (repeated 1200 times in 60 s)")
    for _ in range(5):  # the project's own lines always pass
        assert repeats.filter(_record("kafkaconsole.engine", "c1: Redis said no"))


def test_setup_logging_collapses_aiokafka_lines() -> None:
    stream = io.StringIO()
    handler = setup_logging("text", stream=stream)
    try:
        for _ in range(50):
            logging.getLogger("aiokafka.conn").error("Unable connect to node with id 3")
            logging.getLogger("kafkaconsole.engine").warning("c1: still waiting")
        lines = stream.getvalue().splitlines()
        assert sum("Unable connect" in line for line in lines) == 1
        assert sum("still waiting" in line for line in lines) == 50
    finally:
        logging.getLogger().removeHandler(handler)
