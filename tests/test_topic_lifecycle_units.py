"""The pure parts of the topic lifecycle: telling retention from a re-created topic, and
reading the ``lifecycle`` hash (including fields it does not know)."""

from __future__ import annotations

from kafkaconsole.engine.topic_lifecycle import (
    RECREATED,
    RETENTION,
    Lifecycle,
    RetentionLoss,
    TopicReset,
    classify,
)


def test_classify_by_log_start_and_end() -> None:
    assert classify(10, log_start=25, end=40) == RETENTION
    assert classify(10, log_start=0, end=3) == RECREATED
    assert classify(10, log_start=0, end=10) is None  # in range by now: fetch again
    assert classify(25, log_start=25, end=40) is None


def test_lifecycle_hash_is_read_and_unknown_fields_ignored() -> None:
    reset = TopicReset("orders.v2", 1, stored=10, log_start=0, end=3, at_ms=5)
    raw = {
        b"reset|orders.v2|1": reset.to_json(),
        b"lost|orders.v2|0": b"15",
        b"lost_last|orders.v2|0": b"13 27 1700000000000",
        b"someday|orders.v2|0": b"x",  # a field of a later version
        b"reset|orders.v2|2": b"not json",
    }
    life = Lifecycle.parse(raw)
    assert life.resets == (reset,)
    assert life.loss_rows() == [
        {
            "topic": "orders.v2",
            "partition": 0,
            "lost": 15,
            "last_first": 13,
            "last_last": 27,
            "last_at_ms": 1700000000000,
        }
    ]
    assert life.reset_rows() == [
        {
            "topic": "orders.v2",
            "partition": 1,
            "stored": 10,
            "log_start": 0,
            "end": 3,
            "since_ms": 5,
        }
    ]


def test_messages_name_topic_partition_and_range() -> None:
    loss = RetentionLoss("orders", 0, 13, 27)
    assert loss.count == 15
    assert loss.describe() == (
        "retention deleted offsets 13-27 (15) of orders partition 0 before they were counted; "
        "counting from 28"
    )
    assert (
        TopicReset("orders", 0, 10, 0, 3)
        .describe()
        .startswith("topic-recreated: orders partition 0 ends at 3, below the 10 counted")
    )
