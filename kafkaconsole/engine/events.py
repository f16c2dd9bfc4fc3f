"""Turn polled Kafka records into what the counter needs: counted, filtered or bad.

:class:`EventClassifier` applies the consumer's ``format`` (json | text | raw), size cap,
``filter`` and ``processor`` to each record. :func:`build_batch` walks one poll's records,
skips offsets already counted locally, and produces the compact per-partition
:class:`~kafkaconsole.engine.counting.PartitionDelta` list plus the bad events to send to the
DLQ. The raw format without filter or processor takes a fast path with no per-record Python.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import attrgetter, eq, itemgetter
from typing import Any

import orjson

from kafkaconsole.config.models import ConsumerConfig
from kafkaconsole.engine.counting import PartitionDelta, ranges_of
from kafkaconsole.engine.partitions import PartitionState

COUNT, FILTERED, BAD, SKIPPED = 0, 1, 2, 3
#: What ``classify`` says of a record it skips (a tombstone, a Debezium heartbeat...): never an
#: error, never counted, recorded in the consumer's stats as ``skipped``
_SKIP = (SKIPPED, None, "", "", "")

#: Debezium writes its heartbeats to topics named ``__debezium-heartbeat.<prefix>``
DEBEZIUM_HEARTBEAT_PREFIX = "__debezium-heartbeat"
#: Fields that mark a Debezium value as a schema change (``ddl``, ``databaseName``,
#: ``tableChanges``) rather than a change event: skipped, not bad
_SCHEMA_CHANGE_FIELDS = ("ddl", "databaseName", "tableChanges")


@dataclass(frozen=True, slots=True)
class BadEvent:
    """An event that failed to decode, validate or process."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    stage: str  # decode | validate | process
    error_class: str
    message: str
    timestamp: int | None = None  # the record's timestamp (ms), kept in the DLQ
    component: str = ""  # what failed: the processor's target, or the format's decoder
    stacktrace: str = ""

    def describe(self) -> str:
        return (
            f"{self.topic}[{self.partition}]@{self.offset}: {self.stage} failed: "
            f"{self.error_class}: {self.message}"
        )


def load_target(target: str) -> Callable[..., Any]:
    """Import ``"pkg.mod:func"`` (operator-written config only, never event data)."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj  # type: ignore[no-any-return]


def _lookup(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


_MISSING = object()


def debezium_envelope(doc: Any) -> dict[str, Any] | None:
    """The change event of a decoded Debezium value: the bare envelope ``{before, after, source,
    op, ts_ms}`` or the ``payload`` of the JsonConverter's ``{"schema", "payload"}`` wrapper.

    None for what Debezium writes beside change events and a consumer ignores: heartbeats
    (``{"ts_ms"}``), schema changes (``ddl``, ``databaseName``, ``tableChanges``), transaction
    boundaries (``status`` BEGIN | END with an ``id``) and a wrapped null payload. Raises
    ValueError for anything else (the event is bad).
    """
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        doc = doc["payload"]
        if doc is None:
            return None
    if not isinstance(doc, dict):
        kind = "null" if doc is None else type(doc).__name__
        raise ValueError(f"not a Debezium change event: the value is a JSON {kind}, not an object")
    op = doc.get("op")
    if isinstance(op, str) and op:
        return doc
    if op is None:
        if not doc.keys() - {"ts_ms"}:
            return None  # a heartbeat
        if any(f in doc for f in _SCHEMA_CHANGE_FIELDS):
            return None
        if doc.get("status") in ("BEGIN", "END") and "id" in doc:
            return None  # a transaction boundary
        fields = ", ".join(sorted(doc)[:8])
        raise ValueError(f'not a Debezium change event: no "op" field (fields: {fields})')
    raise ValueError(f'not a Debezium change event: "op" is {op!r}, not a string')


def make_filter(spec: Mapping[str, Any] | None) -> Callable[[Any], bool] | None:
    """A predicate for ``filter = { field = value, ... }``; a list value means any of."""
    if not spec:
        return None
    items = [(k, v, isinstance(v, list)) for k, v in spec.items()]

    def match(event: Any) -> bool:
        if not isinstance(event, dict):
            return False
        for path, want, any_of in items:
            got = event.get(path, _MISSING) if "." not in path else _lookup(event, path)
            if any_of:
                if got not in want:
                    return False
            elif got != want or (isinstance(got, bool) != isinstance(want, bool)):
                return False
        return True

    return match


def simple_filter(spec: Mapping[str, Any] | None) -> tuple[Callable[[Any], Any], Any] | None:
    """``(getter, want)`` when ``spec`` only asks top-level fields for string values.

    Then, for a decoded JSON event, ``getter(event) == want`` (KeyError or TypeError meaning
    no match) decides exactly what :func:`make_filter`'s predicate decides, in C: a string
    equals only an equal string, so the bool/int distinction cannot arise. Anything else
    (dotted paths, lists, numbers, booleans) returns None and keeps the general predicate.
    """
    if not spec or not all(isinstance(v, str) and "." not in k for k, v in spec.items()):
        return None
    keys = list(spec)
    want = tuple(spec[k] for k in keys) if len(keys) > 1 else spec[keys[0]]
    return itemgetter(*keys), want


class EventClassifier:
    """Decides, per record, whether it is counted, filtered out or bad."""

    def __init__(self, cfg: ConsumerConfig) -> None:
        self.format = cfg.format
        self.debezium = cfg.format == "debezium"
        self.skip_snapshot_reads = self.debezium and cfg.snapshot_reads == "skip"
        #: what a record with a null value (a tombstone) is: skipped or counted as it is
        self.tombstone: tuple[int, Any, str, str, str] = (
            _SKIP if cfg.tombstones == "skip" else (COUNT, None, "", "", "")
        )
        self.count_tombstones = cfg.tombstones == "count"
        self.max_bytes = cfg.max_event_bytes
        self.filter = make_filter(cfg.filter)
        self.processor = load_target(cfg.processor) if cfg.processor else None
        self.processor_target = cfg.processor
        self.fast_raw = self.format == "raw" and self.filter is None and self.processor is None
        # JSON without processor: build_batch decodes and filters inline, and falls back to
        # classify() for anything unusual (empty, oversized or undecodable values)
        self.fast_json = self.format == "json" and self.processor is None
        self.simple_filter = simple_filter(cfg.filter)
        # and when the filter is absent or one top-level field = string, a whole partition's
        # records at once, as long as none is unusual (then record by record, as below)
        self.single_filter: tuple[str, str] | None = None
        self.single_filter_key: bytes | None = None
        if self.simple_filter is not None and len(cfg.filter or {}) == 1:
            ((key, want),) = (cfg.filter or {}).items()
            self.single_filter = (key, want)
            if key.isprintable() and '"' not in key and "\\" not in key:
                #: the key as every value writes it when it has no escape (see _bulk_json)
                self.single_filter_key = b'"' + key.encode() + b'"'
        self.bulk_json = self.fast_json and (self.filter is None or self.single_filter is not None)
        #: the byte scan's (key, want) for the bulk path: (None, None) without a filter
        self.scan_args: tuple[bytes, bytes] | tuple[None, None] | None = None
        if self.bulk_json:
            if self.single_filter is None:
                self.scan_args = (None, None)
            else:
                k, w = self.single_filter
                with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate: value by value
                    self.scan_args = (k.encode(), w.encode())

    def decode(self, value: bytes | None) -> Any:
        """The decoded value; raises ValueError/TypeError for a bad event."""
        if self.format == "raw":
            return value
        if value is None or len(value) == 0:
            raise ValueError("empty value")
        if self.format == "json":
            return orjson.loads(value)
        if self.debezium:
            return debezium_envelope(orjson.loads(value))
        return value.decode("utf-8")

    def component(self, stage: str) -> str:
        """What rejects an event at ``stage`` (Kafka Connect's ``class.name`` header)."""
        if stage == "process" and self.processor_target:
            return self.processor_target
        return f"kafkaconsole.format.{self.format}"

    def classify(self, value: bytes | None) -> tuple[int, Any, str, str, str]:
        """(COUNT|FILTERED|BAD|SKIPPED, decoded event, stage, error, stack trace) for one
        value. A tombstone (null value) is skipped or counted as it is (``tombstones``), never
        decoded, filtered or processed."""
        if value is None:
            return self.tombstone
        if len(value) > self.max_bytes:
            return (
                BAD,
                None,
                "validate",
                f"ValueError: event of {len(value)} bytes exceeds "
                f"max_event_bytes ({self.max_bytes})",
                "",
            )
        try:
            event = self.decode(value)
        except (ValueError, TypeError) as exc:
            return BAD, None, "decode", f"{type(exc).__name__}: {exc}", _trace(exc)
        if self.debezium:
            if event is None:
                return _SKIP  # a heartbeat, schema change or transaction boundary
            if self.skip_snapshot_reads and event.get("op") == "r":
                return _SKIP
        if self.filter is not None and not self.filter(event):
            return FILTERED, None, "", "", ""
        if self.processor is not None:
            try:
                event = self.processor(event)
            except Exception as exc:
                return BAD, None, "process", f"{type(exc).__name__}: {exc}", _trace(exc)
            if event is None:
                return FILTERED, None, "", "", ""
        return COUNT, event, "", "", ""

    def matching_events(self, values: Iterable[bytes | None]) -> list[Any]:
        """The decoded counted events among ``values`` (for batch pipelines)."""
        out = []
        for v in values:
            kind, event, _, _, _ = self.classify(v)
            if kind == COUNT:
                out.append(event)
        return out


_value = attrgetter("value")
_value_size = attrgetter("serialized_value_size")  # -1 for a null value
_offset = attrgetter("offset")


try:
    from cysimdjson import JSONParser
except ImportError:  # no wheel for this platform (installed on Linux x86-64): orjson alone
    JSONParser = None


class _Validators(threading.local):
    """simdjson parsers, one per thread (a parser reuses its buffers from one value to the
    next, so it is never shared)."""

    def __init__(self) -> None:
        self.parser = JSONParser()


#: None without simdjson: the bulk path decodes with orjson
_validators: _Validators | None = _Validators() if JSONParser is not None else None
_BOM = b"\xef\xbb\xbf"


def size_bounds(records: list[Any]) -> tuple[int, int]:
    """The largest and smallest ``serialized_value_size`` of a poll's records (-1 for a
    tombstone); compiled in _jsonscan.c where it is built, the same answer in one C loop."""
    sizes = list(map(_value_size, records))
    return max(sizes), min(sizes)


_scan: Callable[[list[bytes], bytes | None, bytes | None, int], Any] | None
_runs: Callable[[bytes, int], list[tuple[int, int]]] | None
_size_bounds: Callable[[list[Any]], tuple[int, int]] = size_bounds
try:
    from kafkaconsole.engine._jsonscan import runs as _runs
    from kafkaconsole.engine._jsonscan import scan as _scan
    from kafkaconsole.engine._jsonscan import size_bounds as _c_size_bounds
except ImportError:  # not compiled (no C compiler at install): simdjson value by value
    _scan = _runs = None
else:
    _size_bounds = _c_size_bounds

#: The largest poll (bytes) simdjson checks as one document; a larger one goes value by value,
#: so the parser's buffers (kept per thread) stay this size
SCAN_MAX_BYTES = 8 << 20


def _bulk_json(classifier: EventClassifier, records: list[Any]) -> list[tuple[int, int]] | None:
    """The counted records' offset ranges when every record decodes and fits; None otherwise.

    The same decisions as classify() per record (see EventClassifier.bulk_json), made with C
    loops (map, a comprehension, the byte scan) instead of a Python step per record.

    simdjson checks the values, without building a Python object per event (about a third of
    ``orjson.loads``). It accepts everything orjson accepts except integers beyond 64 bits and
    objects nested 1,024 deep (those batches go the orjson way), and rejects everything orjson
    rejects except a byte order mark.

    Where the byte scan is compiled (_jsonscan.c), it vouches that each value is one object or
    array (no byte order mark) and reads a one-field filter from the bytes, and simdjson checks
    the poll as one document. Otherwise, or when the scan cannot vouch (an escape in a
    top-level key or the field; a scalar value), simdjson checks value by value and a filter's
    field is read from its object unless a value could read differently in the two: a byte
    order mark, an escape (simdjson and orjson read the same, but the guard below needs the
    plain bytes) or the field's key written twice in an object (orjson keeps the last, simdjson
    finds the first).
    """
    values = list(map(_value, records))
    try:
        if max(map(len, values)) > classifier.max_bytes:
            return None
    except TypeError:  # a tombstone: record by record
        return None
    first = records[0].offset
    gapless = records[-1].offset - first + 1 == len(records)
    if _scan is not None and _validators is not None and classifier.scan_args is not None:
        # the byte scan vouches for the values' boundaries and reads the filter's field;
        # simdjson then checks all of them in one call (see _jsonscan.c)
        scanned = _scan(values, classifier.scan_args[0], classifier.scan_args[1], SCAN_MAX_BYTES)
        if scanned is not None:
            doc, flags = scanned
            try:
                _validators.parser.parse(doc)
            except (ValueError, RuntimeError, TypeError, MemoryError):
                pass  # a value simdjson refuses: value by value, below, says which
            else:
                if flags is None:
                    if gapless:
                        return [(first, records[-1].offset)]
                    return ranges_of(list(map(_offset, records)))
                if gapless and _runs is not None:
                    return _runs(flags, first)
                return _ranges(list(compress(map(_offset, records), flags)))
    counted = _counted_offsets(classifier, values, list(map(_offset, records)))
    return None if counted is None else _ranges(counted)


def _counted_offsets(
    classifier: EventClassifier, values: list[bytes], offsets: list[int]
) -> list[int] | None:
    """_bulk_json's way without the byte scan: the counted offsets, or None."""
    joined = b"".join(values)
    single = classifier.single_filter
    # the byte order mark: its first byte alone first (memchr; rare in text)
    if _validators is not None and (b"\xef" not in joined or _BOM not in joined):
        parse = _validators.parser.parse
        try:
            if single is None:
                deque(map(parse, values), 0)  # valid or raises, nothing kept
                return offsets
            quoted = classifier.single_filter_key
            if quoted is not None and b"\\" not in joined:
                key, want = single
                try:
                    # a field holding an object or array stays a simdjson view, of a value
                    # parsed over since: only ever compared by identity below, never read
                    got = [parse(v).get(key, _MISSING) for v in values]
                except AttributeError:
                    pass  # an array or a scalar among them: the orjson way
                else:
                    # every object holding the key has it once, no other value names it
                    if joined.count(quoted) == len(got) - got.count(_MISSING):
                        return list(compress(offsets, map(eq, got, repeat(want))))
        except (ValueError, RuntimeError, TypeError, MemoryError):
            pass  # refused by simdjson (or too large for it): orjson decides, below
    try:
        events = list(map(orjson.loads, values))
    except (ValueError, TypeError):
        return None
    if single is None:
        return offsets
    key, want = single
    return [
        o
        for o, e in zip(offsets, events, strict=True)
        if e.__class__ is dict and e.get(key, _MISSING) == want
    ]


def _ranges(offsets: list[int]) -> list[tuple[int, int]]:
    """:func:`ranges_of` for offsets that only rise (a partition's records, or some of them):
    one run when they leave no gap, without a Python step per offset."""
    if offsets and offsets[-1] - offsets[0] + 1 == len(offsets):
        return [(offsets[0], offsets[-1])]
    return ranges_of(offsets)


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _split_error(error: str) -> tuple[str, str]:
    cls, _, msg = error.partition(": ")
    return cls, msg


def build_batch(
    classifier: EventClassifier,
    batch: Mapping[Any, list[Any]],
    parts: Mapping[Any, PartitionState],
    stop_at_bad: bool = False,
    outcomes: Sequence[tuple[int, Any, str, str, str] | None] | None = None,
) -> tuple[list[PartitionDelta], list[BadEvent], int]:
    """Deltas for the counter, bad events for the DLQ, and the number of records seen.

    ``parts`` holds this instance's state per topic-partition, its next offset (what it already
    applied) among it; records below that are dropped here so a re-delivered record is not
    re-sent to the DLQ.
    With ``stop_at_bad`` a partition's records stop before its first bad event.
    ``outcomes``, when given, are the classifications already made (by the processor runner,
    off the loop) of every record at or above that offset, in the batch's order; a None
    ends its partition's records there.
    """
    deltas: list[PartitionDelta] = []
    bad: list[BadEvent] = []
    seen = 0
    taken = 0  # outcomes used so far
    for tp, records in batch.items():
        if not records:
            continue
        p = tp.partition
        topic = tp.topic
        st = parts.get(tp)
        floor = st.next if st is not None and st.next is not None else -1
        if records[0].offset < floor:
            records = [r for r in records if r.offset >= floor]
            if not records:
                continue
        seen += len(records)
        first = records[0].offset
        last = records[-1].offset
        if classifier.debezium and topic.startswith(DEBEZIUM_HEARTBEAT_PREFIX):
            if outcomes is not None:
                taken += len(records)
            # a heartbeat topic's records are skipped, never decoded (offsets still advance)
            n = len(records)
            deltas.append(PartitionDelta(topic, p, last + 1, first, n, [], [], n))
            continue
        if classifier.fast_raw and not stop_at_bad and outcomes is None:
            largest, smallest = _size_bounds(records)  # -1 for a tombstone
            if largest <= classifier.max_bytes and (classifier.count_tombstones or smallest >= 0):
                if last - first + 1 == len(records):
                    ranges = [(first, last)]  # no offsets list to build
                else:
                    ranges = ranges_of([r.offset for r in records])
                deltas.append(PartitionDelta(topic, p, last + 1, first, len(records), ranges, []))
                continue
        if classifier.bulk_json and outcomes is None:
            bulk = _bulk_json(classifier, records)
            if bulk is not None:
                deltas.append(PartitionDelta(topic, p, last + 1, first, len(records), bulk, []))
                continue
        counted: list[int] = []
        errors: list[int] = []
        skipped = 0
        n = 0
        decided: Sequence[tuple[int, Any, str, str, str] | None] = ()
        if outcomes is not None:
            decided = outcomes[taken : taken + len(records)]
            taken += len(records)
        index = 0
        fast = classifier.fast_json and outcomes is None
        if fast:
            loads = orjson.loads
            max_bytes = classifier.max_bytes
            match = classifier.filter
            getter, want = classifier.simple_filter or (None, None)
        for rec in records:
            if fast:
                # the same decisions as classify(), without a call per step
                value = rec.value
                if value and len(value) <= max_bytes:
                    try:
                        event = loads(value)
                    except (ValueError, TypeError):
                        pass  # bad: classify() below reports it
                    else:
                        if getter is not None:
                            try:
                                ok = getter(event) == want
                            except (KeyError, TypeError):
                                ok = False
                        else:
                            ok = match is None or match(event)
                        if ok:
                            counted.append(rec.offset)
                        n += 1
                        last = rec.offset
                        continue
            if outcomes is not None:
                outcome = decided[index]
                index += 1
                if outcome is None:
                    break
                kind, _, stage, error, trace = outcome
            else:
                kind, _, stage, error, trace = classifier.classify(rec.value)
            if kind == BAD:
                cls, msg = _split_error(error)
                bad.append(
                    BadEvent(
                        topic,
                        p,
                        rec.offset,
                        rec.key,
                        rec.value,
                        tuple(rec.headers or ()),
                        stage,
                        cls,
                        msg,
                        rec.timestamp,
                        classifier.component(stage),
                        trace,
                    )
                )
                if stop_at_bad:
                    break
                errors.append(rec.offset)
            elif kind == COUNT:
                counted.append(rec.offset)
            elif kind == SKIPPED:
                skipped += 1
            n += 1
            last = rec.offset
        if n == 0:
            continue
        ranges = _ranges(counted)
        deltas.append(PartitionDelta(topic, p, last + 1, first, n, ranges, errors, skipped))
    return deltas, bad, seen
