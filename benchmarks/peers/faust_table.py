"""Faust (faust-streaming): an agent counting in a table, a window closed every ``max_event``.

It runs at a few hundred events/s here, so it is timed over the first ``limit`` records
(as the seed-style case is).

``python -m benchmarks.peers.faust_table '<json spec>'``: the JSON events, filtered on
``type = "order"``, counted per partition in a Faust table (in-memory store with its
changelog topic, Faust's default set-up) that resets at ``max_event`` and counts a closed
window; at-least-once, Faust's default guarantee.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import faust
import orjson

from benchmarks.peers.base import Spec, Tracker, ends_of


def run(spec: Spec) -> None:
    tracker = Tracker(ends_of(spec), limit=spec.get("limit", 0))
    max_event = spec["max_event"]
    app = faust.App(
        spec["group"],
        broker=f"kafka://{spec['bootstrap']}",
        store="memory://",
        topic_partitions=3,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        datadir=spec["state_dir"],
        topic_disable_leader=True,
    )
    source = app.topic(spec["topic"], value_serializer="raw", key_serializer="raw")
    table = app.Table("counts", default=int, partitions=3)
    windows = [0]
    loads = orjson.loads

    @app.agent(source)
    async def count(stream: Any) -> None:
        async for ev in stream.events():
            msg = ev.message
            if loads(ev.value)["type"] == "order":
                key = msg.partition
                n = table[key] + 1
                if n >= max_event:
                    windows[0] += 1
                    n = 0
                table[key] = n
            if tracker.seen(msg.partition, msg.offset):
                result = tracker.result(windows=windows[0])
                # Faust's worker sends sys.stdout to its logger and its spinner writes terminal
                # codes without a newline: a line of its own on the real stdout
                os.write(1, ("\nRESULT " + json.dumps(result) + "\n").encode())
                os._exit(0)  # measured; Faust's own shutdown takes seconds and adds nothing

    logging.getLogger().setLevel(logging.WARNING)
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
