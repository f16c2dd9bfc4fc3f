"""confluent-kafka (librdkafka) bare consume loop: the native ceiling of a Python process.

``python -m benchmarks.peers.confluent_loop '<json spec>'``: counts the records of the
pre-produced topic (``decode = "json"``: also ``orjson.loads`` of every value), set up as the
engine's consumer is: its own group, read_committed, batches of ``batch_size``.
"""

from __future__ import annotations

from typing import Any

import orjson
from confluent_kafka import Consumer

from benchmarks.peers.base import Spec, Tracker, ends_of, main


def run(spec: Spec) -> dict[str, Any]:
    tracker = Tracker(ends_of(spec))
    batch = spec["batch_size"]
    decode = spec.get("decode") == "json"
    loads = orjson.loads
    consumer = Consumer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "group.id": spec["group"],
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.subscribe([spec["topic"]])
    done = False
    try:
        while not done:
            msgs = consumer.consume(num_messages=batch, timeout=1.0)
            for msg in msgs:
                if msg.error():
                    raise RuntimeError(str(msg.error()))
                if decode:
                    loads(msg.value())
            # the last record of each partition in this batch marks its progress
            last: dict[int, int] = {}
            for msg in msgs:
                last[msg.partition()] = msg.offset()
            if msgs:
                tracker.n += len(msgs) - len(last)
            for p, off in last.items():
                done = tracker.seen(p, off) or done
    finally:
        consumer.close()
    return tracker.result()


if __name__ == "__main__":
    main(run)
