"""Quix Streams: a tumbling count window over the topic, with its state store.

``python -m benchmarks.peers.quix '<json spec>'``: the JSON events, filtered on
``type = "order"``, counted in ``tumbling_count_window(max_event)`` windows (RocksDB state
with a changelog topic, as Quix Streams sets up by default); each closed window goes to an
output topic (the no-op trigger's stand-in, and what the exactness check reads).
``guarantee`` is ``exactly-once`` or ``at-least-once``. ``crash_after``: kill -9 this process
after that many records (state and offsets as they are at that moment).
``verify``: instead of running, read the output topic (read_committed) and the source topic
and say whether every window closed once, with ``max_event`` events.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from quixstreams import Application

from benchmarks.peers.base import Spec, Tracker, ends_of, main


def run(spec: Spec) -> dict[str, Any]:
    if spec.get("verify"):
        return verify(spec)
    tracker = Tracker(ends_of(spec))
    crash_after = spec.get("crash_after") or 0
    app: Application

    def processed(topic: str, partition: int, offset: int) -> None:
        if tracker.seen(partition, offset):
            app.stop()
        if crash_after and tracker.n >= crash_after:
            os.kill(os.getpid(), signal.SIGKILL)

    app = Application(
        broker_address=spec["bootstrap"],
        consumer_group=spec["group"],
        auto_offset_reset="earliest",
        processing_guarantee=spec["guarantee"],
        state_dir=spec["state_dir"],
        on_message_processed=processed,
        loglevel=logging.WARNING,
        consumer_extra_config={"fetch.wait.max.ms": 50, "isolation.level": "read_committed"},
    )
    source = app.topic(spec["topic"], value_deserializer="json")
    sink = app.topic(spec["output"], value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.filter(lambda e: e["type"] == "order")
    sdf = sdf.tumbling_count_window(spec["max_event"]).count().final()
    sdf.to_topic(sink)
    app.run()
    return tracker.result(guarantee=spec["guarantee"])


def _read_all(spec: Spec, topic: str, group: str, wait_s: float = 0) -> list[Any]:
    """Every committed record of ``topic``. ``wait_s``: wait that long at most for open
    transactions to end (a read_committed reader stops at the first open one)."""
    consumer = Consumer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    # the end of every partition, open transactions included (a read_committed consumer is
    # told the last stable offset instead)
    peek = Consumer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "group.id": group + "-peek",
            "isolation.level": "read_uncommitted",  # librdkafka's default is read_committed
        }
    )
    meta = peek.list_topics(topic, timeout=10).topics[topic]
    marks = {
        p: peek.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in meta.partitions
    }
    peek.close()
    deadline = time.monotonic() + wait_s
    out = []
    try:
        for p, (low, high) in sorted(marks.items()):
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            while True:
                msgs = consumer.consume(num_messages=5000, timeout=1.0)
                out.extend((p, m) for m in msgs if not m.error())
                # aborted records and transaction markers never show up: the position says
                position = consumer.position([TopicPartition(topic, p)])[0].offset
                if position >= high or (not msgs and time.monotonic() > deadline):
                    break
    finally:
        consumer.close()
    return out


def verify(spec: Spec) -> dict[str, Any]:
    """Exact: the closed windows are each partition's orders // max_event, each of them
    counted ``max_event`` events (none missing, none closed twice)."""
    max_event = spec["max_event"]
    orders: dict[int, int] = {}
    for p, m in _read_all(spec, spec["topic"], spec["group"] + "-verify-src", wait_s=60):
        if orjson.loads(m.value())["type"] == "order":
            orders[p] = orders.get(p, 0) + 1
    want = sum(n // max_event for n in orders.values())
    t0 = time.monotonic()
    out = _read_all(spec, spec["output"], spec["group"] + "-verify-out", wait_s=180)
    held_s = time.monotonic() - t0
    windows = [orjson.loads(m.value()) for _, m in out]
    wrong = sum(1 for w in windows if w["value"] != max_event)
    # the records of partition p carry the key "p<p>", and so do its windows
    per_key: dict[int, int] = {}
    for _, m in out:
        k = int(m.key().decode()[1:])
        per_key[k] = per_key.get(k, 0) + 1
    extra = sum(max(per_key.get(p, 0) - n // max_event, 0) for p, n in orders.items())
    missing = sum(max(n // max_event - per_key.get(p, 0), 0) for p, n in orders.items())
    return {
        "windows": len(windows),
        "expected_windows": want,
        "duplicates": extra,  # windows closed again after a replay
        "missing": missing,
        "wrong_counts": wrong,
        "exact": not extra and not missing and not wrong and len(windows) == want,
        # how long the output took to be readable (read_committed) once the run had ended
        "held_s": held_s,
    }


if __name__ == "__main__":
    main(run)
