"""A poll's records decided in bulk (build_batch's fast paths) get exactly what ``classify()``
gives each record alone, whatever their neighbours: counted, filtered out or bad.

The JSON bulk path decodes a whole partition's values with C loops and falls back to record by
record when one of them is unusual; orjson, the record-by-record decoder, defines what a bad
event is. These tests hold the two to the same answers on randomised batches mixing ordinary
events with odd values (invalid UTF-8, numbers beyond a double, deep nesting, non-objects,
duplicate keys, escapes, empty values, tombstones, oversized values), for every filter shape.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from kafkaconsole.config.models import ConsumerConfig
from kafkaconsole.engine import events
from kafkaconsole.engine.counting import ranges_of
from kafkaconsole.engine.events import BAD, COUNT, SKIPPED, EventClassifier, build_batch

TOPIC = "t"


def config(**extra: Any) -> ConsumerConfig:
    return ConsumerConfig.model_validate(
        {
            "consumer_id": "c",
            "kafka_topic": TOPIC,
            "pipeline_name": "p",
            "connection_id": "conn-1",
            "max_event": 10,
            "max_time": 60,
            **extra,
        }
    )


def record(offset: int, value: bytes | None, partition: int = 0) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        TOPIC,
        partition,
        offset,
        1_700_000_000_000 + offset,
        0,
        None,
        value,
        None,
        -1,
        -1 if value is None else len(value),
        [],
    )


def ordinary(rng: random.Random, i: int) -> bytes:
    return orjson.dumps(
        {
            "id": i,
            "type": rng.choice(["order", "order", "order", "refund", "Order"]),
            "region": rng.choice(["eu", "us"]),
            "amount": round(rng.random() * 1000, 2),
            "note": rng.choice(["", "café", "naïve ☃", "x" * 50]),
            "tags": [rng.randrange(10) for _ in range(rng.randrange(4))],
            "ts": 1_700_000_000_000 + i,
        }
    )


#: values where a validating decoder that skips what it does not build may differ from one
#: that builds everything, and the ordinary odd ones
UNUSUAL: list[bytes | None] = [
    b'{"type":"order","note":"\xff"}',  # invalid UTF-8 in a skipped string
    b'{"type":"order","note":"\xed\xa0\x80"}',  # a UTF-8-encoded surrogate
    b'{"type":"order","note":"\xc0\x80"}',  # an overlong encoding
    b'{"type":"order","\xff":1}',  # invalid UTF-8 in a key
    b'{"type":"order","amount":1e400}',  # beyond a double
    b'{"type":"order","amount":-1e400}',
    b'{"type":"order","amount":1E+309}',
    b'{"type":"order","amount":1e-400}',  # below the smallest double: 0.0
    b'{"type":"order","amount":' + b"9" * 400 + b".5}",
    b'{"type":"order","amount":' + b"9" * 400 + b"}",  # a big integer
    b'{"type":"order","amount":12e5}',  # an ordinary exponent
    b'{"type":"order","n":"0e000 is only a string"}',
    b'{"type":"order","deep":' + b"[" * 600 + b"]" * 600 + b"}",
    b'{"type":"order","deep":' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}",
    b'{"type":"order","deep":' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"type":"refund","type":"order"}',  # duplicate keys: the last one holds
    b'{"type":"order","type":"refund"}',
    b'{"type":"\\u006frder"}',  # an escape in the filtered field
    b'{"t\\u0079pe":"order"}',  # an escape in the filtered key
    b'{"type":"refund","t\\u0079pe":"order"}',  # a duplicate key, one written with an escape
    b'{"t\\u0079pe":"refund","type":"order"}',
    b'{"type":"refund","nested":{"type":"order"}}',  # the key again, deeper
    b'{"type":"order","nested":{"type":"refund"}}',
    b'{"type":"order","kind":"type"}',  # the key's bytes as a value
    b'{"kind":"type"}',
    b'{"type":"order","amount":18446744073709551616}',  # beyond 64 bits
    b'{"type":"order","amount":-9223372036854775809}',
    b'{"type":"order","deep":' + b'{"a":' * 1022 + b"1" + b"}" * 1022 + b"}",  # 1,023 deep
    b'{"type":"order","deep":' + b'{"a":' * 1023 + b"1" + b"}" * 1023 + b"}",  # 1,024 deep
    b'{"type":"order","deep":' + b"[" * 1022 + b"]" * 1022 + b"}",
    b'{"type":"order","deep":' + b"[" * 1023 + b"]" * 1023 + b"}",
    b'{"type":"order","note":"\\ud800"}',  # a lone surrogate escape
    b'{"type":"order","note":"\\x"}',  # an invalid escape
    b'{"type":"order","note":"\x01"}',  # a raw control character
    b'{"type":"order",}',
    b'{"type":"order"} trailing',
    b'{"type":"order"},{"type":"order"}',  # two objects: one value, not two
    b'{"type":"order"} {"type":"order"}',
    b'{"type":"order"}]',
    b'[{"type":"order"}',
    b'{"type":"order","note":"\\\\"}',  # an escaped backslash ends the string
    b'{"type":"order","note":"\\\\\\""}',  # then an escaped quote, inside
    b'{"type":"order","note":"a \\"b"}',
    b'\t{"type":"order"}\r\n',
    b" ",
    b",",
    b"]",
    b'{"type":"order","a":NaN}',
    b'\xef\xbb\xbf{"type":"order"}',  # a byte order mark
    b'{"type":"order","note":"\xef\xbb\xbf"}',  # one inside a string
    b' {"type":"order"} ',
    b'{"type":["order"]}',
    b'{"type":null}',
    b'{"type":true}',
    b'{"region":"eu"}',  # no type
    b'{"TYPE":"order"}',
    b"[]",
    b'["order"]',
    b'"order"',
    b"42",
    b"null",
    b"true",
    b"{",
    b"not json",
    b"",
    None,  # a tombstone
    b'{"type":"order","pad":"' + b"x" * 20_000 + b'"}',  # over max_event_bytes below
]

FILTERS: list[dict[str, Any] | None] = [
    None,
    {"type": "order"},
    {"type": "order", "region": "eu"},
    {"type": ["order", "refund"]},  # not a bulk filter: record by record
    {"amount": 1.5},
]


def expected(
    classifier: EventClassifier, batch: dict[TopicPartition, list[Any]]
) -> dict[int, tuple[list[tuple[int, int]], list[int], int, int]]:
    """Per partition: (counted ranges, bad offsets, records, skipped), from classify() alone."""
    out = {}
    for tp, records in batch.items():
        counted, bad, skipped = [], [], 0
        for rec in records:
            kind = classifier.classify(rec.value)[0]
            if kind == COUNT:
                counted.append(rec.offset)
            elif kind == BAD:
                bad.append(rec.offset)
            elif kind == SKIPPED:
                skipped += 1
        out[tp.partition] = (ranges_of(counted), bad, len(records), skipped)
    return out


def got(
    classifier: EventClassifier, batch: dict[TopicPartition, list[Any]]
) -> dict[int, tuple[list[tuple[int, int]], list[int], int, int]]:
    deltas, bad, seen = build_batch(classifier, batch, {})
    assert seen == sum(len(r) for r in batch.values())
    out = {}
    for d in deltas:
        assert d.topic == TOPIC
        bad_here = sorted(b.offset for b in bad if b.partition == d.partition)
        assert sorted(d.errors) == bad_here
        out[d.partition] = (d.ranges, bad_here, d.n_records, d.skipped)
    return out


@pytest.fixture(params=["scan", "simdjson", "orjson"])
def bulk_decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The bulk path as installed (the byte scan, then simdjson checking the poll as one
    document), without the byte scan (simdjson value by value, as where it is not compiled),
    and without simdjson (orjson alone, as on a platform simdjson ships no wheel for)."""
    if request.param == "orjson":
        monkeypatch.setattr(events, "_validators", None)
    elif events._validators is None:
        pytest.skip("cysimdjson is not installed on this platform")
    if request.param == "simdjson":
        monkeypatch.setattr(events, "_scan", None)
    elif request.param == "scan" and events._scan is None:
        pytest.skip("the byte scan is not compiled in this install")
    return str(request.param)


@pytest.mark.parametrize("tombstones", ["skip", "count"])
@pytest.mark.parametrize("filter_", FILTERS, ids=lambda f: "none" if f is None else ",".join(f))
def test_randomised_batches_decide_each_record_as_classify_does(
    filter_: dict[str, Any] | None, tombstones: str, bulk_decoder: str
) -> None:
    extra: dict[str, Any] = {"format": "json", "max_event_bytes": 16_384, "tombstones": tombstones}
    if filter_ is not None:
        extra["filter"] = filter_
    classifier = EventClassifier(config(**extra))
    rng = random.Random(f"{filter_}-{tombstones}")
    for round_ in range(300):
        batch: dict[TopicPartition, list[Any]] = {}
        for p in range(3):
            n = rng.choice([1, 2, 5, 40, 200])
            offset = rng.randrange(1000)
            records = []
            for i in range(n):
                # mostly ordinary batches (the bulk path), some with one odd value or more
                odd = round_ % 3 == 0 and rng.random() < 0.05
                value = rng.choice(UNUSUAL) if odd else ordinary(rng, i)
                records.append(record(offset, value, p))
                offset += 1 if rng.random() < 0.95 else rng.randrange(2, 5)  # gaps too
            batch[TopicPartition(TOPIC, p)] = records
        assert got(classifier, batch) == expected(classifier, batch)


@pytest.mark.parametrize("value", UNUSUAL, ids=range(len(UNUSUAL)))
def test_each_unusual_value_among_ordinary_ones_is_decided_as_alone(
    value: bytes | None, bulk_decoder: str
) -> None:
    classifier = EventClassifier(
        config(format="json", filter={"type": "order"}, max_event_bytes=16_384)
    )
    rng = random.Random(7)
    records = [record(o, ordinary(rng, o)) for o in range(100)]
    records[50] = record(50, value)
    batch = {TopicPartition(TOPIC, 0): records}
    assert got(classifier, batch) == expected(classifier, batch)


def test_a_batch_of_ordinary_events_is_counted_in_ranges_around_the_filtered_ones() -> None:
    classifier = EventClassifier(config(format="json", filter={"type": "order"}))
    values = [orjson.dumps({"type": "refund" if o in (3, 4, 9) else "order"}) for o in range(12)]
    batch = {TopicPartition(TOPIC, 0): [record(100 + o, v) for o, v in enumerate(values)]}
    (delta,), bad, seen = build_batch(classifier, batch, {})
    assert (bad, seen) == ([], 12)
    assert delta.ranges == [(100, 102), (105, 108), (110, 111)]
    assert (delta.first_offset, delta.next_offset, delta.n_records) == (100, 112, 12)


def test_invalid_utf8_and_a_number_beyond_a_double_are_bad_events() -> None:
    """What orjson refuses is bad, though the bulk decoder would have skipped past it."""
    classifier = EventClassifier(config(format="json", filter={"type": "order"}))
    values = [
        b'{"type":"order"}',
        b'{"type":"order","note":"\xff"}',
        b'{"type":"order","amount":1e400}',
        b'{"type":"order"}',
    ]
    batch = {TopicPartition(TOPIC, 0): [record(o, v) for o, v in enumerate(values)]}
    (delta,), bad, _ = build_batch(classifier, batch, {})
    assert [(b.offset, b.stage) for b in bad] == [(1, "decode"), (2, "decode")]
    assert delta.ranges == [(0, 0), (3, 3)] and delta.errors == [1, 2]


@pytest.mark.skipif(events._validators is None, reason="cysimdjson is not installed here")
@pytest.mark.parametrize("filter_", [None, {"type": "order"}], ids=["none", "type"])
def test_an_ordinary_batch_is_checked_by_simdjson_without_decoding_it(
    filter_: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk path validates (and filters) with simdjson; orjson is left for the odd batch."""
    extra: dict[str, Any] = {"format": "json"} | ({"filter": filter_} if filter_ else {})
    classifier = EventClassifier(config(**extra))
    rng = random.Random(3)
    records = [record(o, ordinary(rng, o)) for o in range(200)]
    batch = {TopicPartition(TOPIC, 0): records}
    want = expected(classifier, batch)

    def refuse(_: bytes) -> Any:
        raise AssertionError("orjson.loads called for an ordinary batch")

    monkeypatch.setattr(events.orjson, "loads", refuse)
    assert got(classifier, batch) == want
    # an escape in another field stays on the bulk path; one in the filtered field, whose
    # bytes would not be what a decoder reads, goes the orjson way
    records[7] = record(7, b'{"type":"order","note":"\\n"}')
    if events._scan is not None:
        build_batch(classifier, batch, {})
    records[7] = record(7, b'{"type":"\\u006frder"}')
    if filter_ is not None:
        with pytest.raises(AssertionError, match=r"orjson\.loads called"):
            build_batch(classifier, batch, {})


#: consecutive values that are no JSON alone but join into a valid array of as many elements
#: as there are values: the byte scan must refuse each, or the poll would pass as valid
PIECES: list[list[bytes]] = [
    [b'{"type":"order"},{"type":"order"}', b'{"x":[{}', b"{}]}"],
    [b'{"type":"order","a":"x', b'y"}'],
    [b'{"a":[1', b"2]}"],
    [b'{"type":"order"}]', b'[{"type":"order"}'],
    [b"1,2", b"[", b"]"],
    [b'"order"', b'"a","b"', b"[", b"3]"],
    [b'{"type":"order","note":"\\"}', b'{"type":"order","note":"\\\\"}'],
]


@pytest.mark.parametrize("pieces", PIECES, ids=range(len(PIECES)))
@pytest.mark.parametrize("filter_", [None, {"type": "order"}], ids=["none", "type"])
def test_values_that_join_into_a_valid_document_are_still_decided_one_by_one(
    pieces: list[bytes], filter_: dict[str, Any] | None, bulk_decoder: str
) -> None:
    extra: dict[str, Any] = {"format": "json"} | ({"filter": filter_} if filter_ else {})
    classifier = EventClassifier(config(**extra))
    rng = random.Random(11)
    values = [ordinary(rng, o) for o in range(20)]
    values[5:5] = pieces
    batch = {TopicPartition(TOPIC, 0): [record(o, v) for o, v in enumerate(values)]}
    want = expected(classifier, batch)
    assert want[0][1], "the pieces hold bad events"
    assert got(classifier, batch) == want


@pytest.mark.skipif(events._scan is None, reason="the byte scan is not compiled here")
def test_the_byte_scan_joins_the_values_and_reads_the_last_of_a_top_level_field() -> None:
    scan = events._scan
    assert scan is not None
    values = [
        b'{"type":"order","n":1}',
        b' {"type":"refund","x":{"type":"order"}} ',
        b'{"type":"refund","type":"order"}',
        b'{"type":"order","type":"refund"}',
        b'{"kind":"type","type":["order"]}',
        b'{"type" : "order" }',
        b'["order"]',
        b'{"type":"orders"}',
        b"{}",
    ]
    doc, flags = scan(values, b"type", b"order", 1 << 20)
    assert doc == b"[" + b",".join(values) + b"]"
    assert orjson.loads(doc) == [orjson.loads(v) for v in values]
    assert list(flags) == [1, 0, 1, 0, 0, 1, 0, 0, 0]
    assert scan(values, None, None, 1 << 20) == (doc, None)
    # what it cannot vouch for: the caller goes value by value
    assert scan(values, b"type", b"order", len(doc) - 1) is None  # over the cap
    assert scan([], None, None, 1 << 20) is None
    for odd in (
        b"",
        b" ",
        b"42",
        b'"order"',
        b"\xef\xbb\xbf{}",
        b"{} x",
        b'{"a":"b',
        b"{",
        b'{"t\\u0079pe":"order"}',
        b'{"type":"\\u006frder"}',
    ):
        assert scan([values[0], odd], b"type", b"order", 1 << 20) is None, odd
    assert scan([values[0], None], None, None, 1 << 20) is None  # a tombstone
    assert scan([values[0], bytearray(b"{}")], None, None, 1 << 20) is None
    # escapes elsewhere are read over; in a top-level key or the field only with a filter
    esc = [b'{"type":"order","x":{"n\\"o":"a\\"b\\\\"},"y":"\\""}', b'{"t\\u0079pe":"order"}']
    assert scan(esc, None, None, 1 << 20) is not None
    assert scan(esc[:1], b"type", b"order", 1 << 20) == (b"[" + esc[0] + b"]", b"\x01")


def test_an_ordinary_poll_is_checked_by_simdjson_in_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the byte scan compiled (as the install does here), an ordinary poll's values are
    validated as one document: one simdjson call per partition, not one per value."""
    assert events._scan is not None, "the byte scan (kafkaconsole/engine/_jsonscan.c) is not built"
    assert events._validators is not None
    calls: list[int] = []
    parser = events._validators.parser

    class Counting:
        def parse(self, doc: bytes) -> Any:
            calls.append(len(doc))
            return parser.parse(doc)

    monkeypatch.setattr(events._validators, "parser", Counting())
    classifier = EventClassifier(config(format="json", filter={"type": "order"}))
    rng = random.Random(5)
    batch = {
        TopicPartition(TOPIC, p): [record(o, ordinary(rng, o), p) for o in range(300)]
        for p in range(3)
    }
    want = expected(classifier, batch)
    calls.clear()
    assert got(classifier, batch) == want
    assert len(calls) == 3


@pytest.mark.skipif(events._runs is None, reason="the byte scan is not compiled here")
def test_the_runs_of_a_filters_flags_are_the_counted_offsets_ranges() -> None:
    runs = events._runs
    assert runs is not None
    assert runs(b"", 5) == []
    assert runs(b"\x00\x00", 5) == []
    assert runs(b"\x01\x01\x00\x01", 5) == [(5, 6), (8, 8)]
    assert runs(b"\x01", 2**62) == [(2**62, 2**62)]
    rng = random.Random(13)
    for _ in range(500):
        flags = bytes(rng.choice([0, 1, 1, 1]) for _ in range(rng.randrange(60)))
        first = rng.randrange(10**12)
        offsets = [first + i for i, f in enumerate(flags) if f]
        assert runs(flags, first) == ranges_of(offsets)


def test_a_poll_over_the_scan_cap_is_checked_value_by_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SCAN_MAX_BYTES bounds the one document (simdjson keeps its buffers per thread)."""
    if events._scan is None or events._validators is None:
        pytest.skip("the byte scan is not compiled here")
    sizes: list[int] = []
    parser = events._validators.parser

    class Counting:
        def parse(self, doc: bytes) -> Any:
            sizes.append(len(doc))
            return parser.parse(doc)

    monkeypatch.setattr(events._validators, "parser", Counting())
    monkeypatch.setattr(events, "SCAN_MAX_BYTES", 4_000)
    classifier = EventClassifier(config(format="json", filter={"type": "order"}))
    rng = random.Random(9)
    batch = {TopicPartition(TOPIC, 0): [record(o, ordinary(rng, o)) for o in range(100)]}
    want = expected(classifier, batch)
    sizes.clear()
    assert got(classifier, batch) == want
    assert len(sizes) == 100 and max(sizes) < 4_000


@pytest.mark.skipif(events._scan is None, reason="the byte scan is not compiled here")
@pytest.mark.skipif(
    events._validators is None, reason="cysimdjson is not installed on this platform"
)
def test_mutated_polls_the_scan_and_simdjson_pass_are_what_orjson_reads() -> None:
    """Random byte edits of a few values: whenever the scan vouches for a poll and simdjson
    accepts its document, orjson accepts every value and the filter's flags are its answers."""
    scan = events._scan
    assert scan is not None and events._validators is not None
    parse = events._validators.parser.parse
    rng = random.Random(21)
    base = [
        b'{"type":"order","a":[1,2,{"b":"c\\"d"}],"n":null}',
        b'{"type":"refund","x":"\\\\"}',
        b'[1,"type",{"type":"order"}]',
        b'{"k":{"type":"order"},"type":"order"}',
    ]
    alphabet = b'{}[],:"\\ \t\nabtypeorder0123456789.-+eE\xef\xbb\xbf\xff'
    passed = 0
    for _ in range(30_000):
        values = []
        for _ in range(rng.randrange(1, 6)):
            v = bytearray(rng.choice(base))
            for _ in range(rng.randrange(4)):
                i = rng.randrange(len(v))
                op = rng.randrange(3)
                if op == 0:
                    del v[i]
                elif op == 1:
                    v[i:i] = bytes([rng.choice(alphabet)])
                else:
                    v[i] = rng.choice(alphabet)
            values.append(bytes(v))
        scanned = scan(values, b"type", b"order", 1 << 20)
        if scanned is None:
            continue
        doc, flags = scanned
        try:
            parse(doc)
        except (ValueError, RuntimeError):
            continue
        passed += 1
        for v, flag in zip(values, flags, strict=True):
            event = orjson.loads(v)
            assert bool(flag) == (isinstance(event, dict) and event.get("type") == "order"), v
    assert passed > 1_000  # the edits leave many polls valid: the check above did run


@pytest.fixture(params=["compiled", "python"])
def size_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The raw format's check of a poll's sizes as installed (one C loop) and in Python (where
    the extension is not compiled)."""
    if request.param == "python":
        monkeypatch.setattr(events, "_size_bounds", events.size_bounds)
    elif events._size_bounds is events.size_bounds:
        pytest.skip("the byte scan is not compiled in this install")
    return str(request.param)


@pytest.mark.parametrize("tombstones", ["skip", "count"])
def test_randomised_raw_batches_decide_each_record_as_classify_does(
    tombstones: str, size_check: str
) -> None:
    classifier = EventClassifier(config(format="raw", max_event_bytes=64, tombstones=tombstones))
    rng = random.Random(f"raw-{tombstones}")
    for round_ in range(400):
        batch: dict[TopicPartition, list[Any]] = {}
        for p in range(3):
            offset = rng.randrange(1000)
            records = []
            for _ in range(rng.choice([1, 2, 5, 40, 200])):
                # mostly sizes under the cap (the fast path); now and then a tombstone, an
                # empty value, one at the cap or one over it
                odd = round_ % 2 == 0 and rng.random() < 0.03
                size = rng.choice([-1, 0, 64, 65, 10_000]) if odd else rng.randrange(1, 64)
                records.append(record(offset, None if size < 0 else b"x" * size, p))
                offset += 1 if rng.random() < 0.95 else rng.randrange(2, 5)  # gaps too
            batch[TopicPartition(TOPIC, p)] = records
        assert got(classifier, batch) == expected(classifier, batch)


def test_the_compiled_size_bounds_answer_as_the_python_ones() -> None:
    compiled = events._size_bounds
    if compiled is events.size_bounds:
        pytest.skip("the byte scan is not compiled in this install")
    rng = random.Random(5)
    for _ in range(300):
        records = [
            record(o, None if rng.random() < 0.05 else b"v" * rng.randrange(300))
            for o in range(rng.randrange(1, 50))
        ]
        assert compiled(records) == events.size_bounds(records)
    big = record(0, b"")
    big.serialized_value_size = 2**40  # sizes are read as they are, not from the value
    assert compiled([big, record(1, None)]) == events.size_bounds([big, record(1, None)])
    assert compiled([big, record(1, None)]) == (2**40, -1)
    for bad, error in (([], ValueError), ([object()], AttributeError), ((big,), TypeError)):
        with pytest.raises(error):
            compiled(bad)  # type: ignore[arg-type]

    class Shrinking:
        """A record whose size attribute empties the list being read."""

        def __init__(self, into: list[Any]) -> None:
            self.into = into

        @property
        def serialized_value_size(self) -> int:
            self.into.clear()
            return 7

    polled: list[Any] = []
    polled.extend([Shrinking(polled), record(1, b"x"), record(2, b"yy")])
    assert compiled(polled) == (7, 7)  # read up to where the list now ends, no stale item
