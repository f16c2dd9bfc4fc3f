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


def _read_all(spec: Spec, topic: str, group: str) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    out = []
    try:
        for p in meta.partitions:
            tp = TopicPartition(topic, p, 0)
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            while True:
                msgs = consumer.consume(num_messages=5000, timeout=2.0)
                if not msgs:
                    break  # with read_committed, aborted records and markers never show up
                out.extend((p, m) for m in msgs if not m.error())
                if msgs[-1].offset() >= high - 1:
                    break
    finally:
        consumer.close()
    return out


def verify(spec: Spec) -> dict[str, Any]:
    """Exact: every partition's closed windows are its orders // max_event, each one counted
    ``max_event`` events, none twice."""
    max_event = spec["max_event"]
    orders: dict[int, int] = {}
    for p, m in _read_all(spec, spec["topic"], spec["group"] + "-verify-src"):
        if orjson.loads(m.value())["type"] == "order":
            orders[p] = orders.get(p, 0) + 1
    want = sum(n // max_event for n in orders.values())
    windows = [
        orjson.loads(m.value())
        for _, m in _read_all(spec, spec["output"], spec["group"] + "-verify-out")
    ]
    starts = [(w["start"], w["end"]) for w in windows]
    duplicates = len(starts) - len(set(starts))
    wrong = sum(1 for w in windows if w["value"] != max_event)
    return {
        "windows": len(windows),
        "expected_windows": want,
        "duplicates": duplicates,
        "wrong_counts": wrong,
        "exact": len(windows) == want and not duplicates and not wrong,
    }


if __name__ == "__main__":
    main(run)
