"""Peek at a consumer's events: a closed window's, the topic's latest, the DLQ's latest.

A closed window's events are read again from Kafka by the per-partition offset ranges its
trigger record holds (``history``); ``tail`` reads the newest records of the consumer's topic
and ``dlq`` those of its dead-letter topic, with the ``__connect.errors.*`` headers that say
why each record is there. Every read takes a throwaway consumer without a group
(``group_id=None``): it joins no group and commits nothing, so the consumer group, its
members and its committed offsets never notice. Payloads are decoded per the consumer's
``format``; secrets are masked (the configuration's secret values and URL passwords anywhere,
JSON fields named ``password``, ``token``, ``secret``..., credential-like header names).

The CLI (``kafkaconsole peek``) and the HTTP API (``/consumers/{id}/events``, ``/dlq``) share
this module; a refusal is a :class:`~kafkaconsole.engine.errors.ControlError` (404 / 410 / 503,
exit 1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from kafkaconsole.config.models import AppConfig, ConsumerConfig
from kafkaconsole.config.secrets import MASK, SECRET_FIELDS, is_secret_name, masker
from kafkaconsole.engine.clients import kafka_kwargs
from kafkaconsole.engine.dispatch import _find_window
from kafkaconsole.engine.dlq import HEADER_PREFIX
from kafkaconsole.engine.errors import ControlError, UnknownConsumerError
from kafkaconsole.engine.keys import ConsumerKeys, tagged_layout
from kafkaconsole.engine.records import iso_ms

#: Events shown when no limit is given, and the most one peek shows.
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
#: How long one peek may take (connecting to the brokers included).
READ_TIMEOUT_S = 20.0

Source = Literal["window", "tail", "dlq"]


# ---- refusals ---------------------------------------------------------------------------------


class PeekError(ControlError):
    """A peek that cannot be answered."""


class WindowNotFoundError(PeekError, LookupError):
    """The window is still open, was never opened, or has left the trigger history."""

    http_status = 404


class TopicNotFoundError(PeekError, LookupError):
    """The topic to read does not exist (a DLQ nothing was dead-lettered to yet)."""

    http_status = 404


class EventsExpiredError(PeekError):
    """The window's offsets are no longer in the topic (retention deleted them)."""

    http_status = 410


class KafkaUnreachableError(PeekError):
    """No broker answered (or not in time)."""

    http_status = 503


# ---- the answer -------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()


class PeekHeader(_Body):
    name: str
    value: str
    """UTF-8 text (undecodable bytes replaced), masked when the name is credential-like."""


class PeekEvent(_Body):
    topic: str
    partition: int
    offset: int
    timestamp: str | None
    """The record's timestamp, ISO 8601 UTC."""
    timestamp_ms: int | None
    key: str | None
    """UTF-8 text, or base64 when the key is not UTF-8 (``key_format``)."""
    key_format: Literal["text", "base64", "null"]
    value: Any
    """Decoded per the consumer's format: JSON as JSON, text as a string, else base64."""
    value_format: Literal["json", "text", "base64", "null"]
    headers: list[PeekHeader]
    error: dict[str, str] | None = None
    """DLQ records: the ``__connect.errors.*`` headers without the prefix (topic, partition,
    offset, stage, class.name, exception.class.name, exception.message, ...)."""


class PeekBody(_Body):
    """Events of one peek, oldest first."""

    consumer_id: str
    source: Source
    topic: str
    window_id: int | None
    """``source = window``: the window read."""
    window_count: int | None
    """``source = window``: events the window counted (its range may hold filtered or
    dead-lettered records too, shown as well)."""
    limit: int
    truncated: bool
    """More records were there than ``limit``."""
    warnings: list[str]
    events: list[PeekEvent]


# ---- decoding and masking ---------------------------------------------------------------------


def _text_or_base64(raw: bytes) -> tuple[str, Literal["text", "base64"]]:
    try:
        return raw.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def decode_value(raw: bytes | None, fmt: str) -> tuple[Any, str]:
    """``(value, value_format)`` of a record's value for a consumer of format ``fmt``."""
    if raw is None:
        return None, "null"
    if fmt == "json":
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(raw), "json"
    return _text_or_base64(raw)


def mask_payload(value: Any, mask: Callable[[str], str]) -> Any:
    """A copy of a decoded payload with JSON fields named like credentials (``password``,
    ``token``, ``secret``, ...) replaced by ``******`` and ``mask`` applied to every string."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {
            key: MASK
            if isinstance(key, str) and key.lower() in SECRET_FIELDS and item is not None
            else mask_payload(item, mask)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_payload(item, mask) for item in value]
    return value


def _header(name: str, raw: bytes | None, mask: Callable[[str], str]) -> PeekHeader:
    text = (raw or b"").decode("utf-8", errors="replace")
    if is_secret_name(name) and not name.startswith(HEADER_PREFIX) and text:
        return PeekHeader(name=name, value=MASK)
    return PeekHeader(name=name, value=mask(text))


def peek_event(record: Any, fmt: str, mask: Callable[[str], str], *, dlq: bool) -> PeekEvent:
    """One consumed record as shown (decoded, masked)."""
    value, value_format = decode_value(record.value, fmt)
    key: str | None = None
    key_format: Literal["text", "base64", "null"] = "null"
    if record.key is not None:
        key, key_format = _text_or_base64(record.key)
        key = mask(key)
    headers = [_header(name, raw, mask) for name, raw in record.headers or ()]
    error = None
    if dlq:
        error = {
            h.name[len(HEADER_PREFIX) :]: h.value
            for h in headers
            if h.name.startswith(HEADER_PREFIX)
        } or None
    return PeekEvent(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=iso_ms(record.timestamp) if record.timestamp is not None else None,
        timestamp_ms=record.timestamp,
        key=key,
        key_format=key_format,
        value=mask_payload(value, mask),
        value_format=value_format,  # type: ignore[arg-type]
        headers=headers,
        error=error,
    )


# ---- reading ----------------------------------------------------------------------------------


class EventPeek:
    """Reads a consumer's events for a person to look at, never as the consumer group."""

    def __init__(self, config: AppConfig, redis: Redis, *, timeout: float = READ_TIMEOUT_S):
        self.config = config
        self.redis = redis
        self.timeout = timeout
        self.mask = masker(config)

    def _consumer(self, consumer_id: str) -> ConsumerConfig:
        try:
            return self.config.consumer(consumer_id)
        except KeyError:
            raise UnknownConsumerError(
                consumer_id, [c.consumer_id for c in self.config.consumers]
            ) from None

    # ---- the three peeks ---------------------------------------------------------------------
    async def window(
        self, consumer_id: str, window_id: int, limit: int = DEFAULT_LIMIT
    ) -> PeekBody:
        """The events of a closed window, oldest first (by timestamp, partition, offset)."""
        cfg = self._consumer(consumer_id)
        limit = _bounded(limit)
        fields = await self._closed_window(consumer_id, window_id)
        ranges = orjson.loads(fields.get(b"offsets") or b"[]")
        count = int(fields.get(b"count") or 0)
        if not ranges:
            return self._body(
                cfg, "window", cfg.topic_label, limit, [], False, [], window_id, count
            )

        async def read(consumer: AIOKafkaConsumer) -> tuple[list[Any], bool, list[str]]:
            tps = [TopicPartition(r["topic"], int(r["partition"])) for r in ranges]
            starts = await consumer.beginning_offsets(tps)
            spans: list[tuple[TopicPartition, int, int]] = []
            warnings: list[str] = []
            gone: list[str] = []
            for tp, r in zip(tps, ranges, strict=True):
                first, last, oldest = int(r["first"]), int(r["last"]), starts.get(tp) or 0
                where = f"{tp.topic}[{tp.partition}] offsets {first}-{last}"
                if oldest > last:
                    gone.append(f"{where} (the oldest offset there is now {oldest})")
                    continue
                if oldest > first:
                    warnings.append(
                        f"window {window_id}: {where}: offsets {first}-{oldest - 1} are no "
                        "longer in the topic (retention); showing the rest"
                    )
                spans.append((tp, max(first, oldest), last))
            if not spans:
                raise EventsExpiredError(
                    f"the events of window {window_id} of {consumer_id} are no longer in the "
                    f"topic (retention deleted them): {'; '.join(gone)}"
                )
            warnings += [
                f"window {window_id}: {g} is no longer in the topic (retention)" for g in gone
            ]
            records, truncated, beyond = await _read_spans(consumer, spans, limit)
            if beyond and not records:
                raise EventsExpiredError(
                    f"the events of window {window_id} of {consumer_id} are not in the topic: "
                    f"{'; '.join(beyond)}; was the topic deleted and created again?"
                )
            warnings += [
                f"window {window_id}: {b} is beyond the partition's end: was the topic deleted "
                "and created again?"
                for b in beyond
            ]
            return records, truncated, warnings

        records, truncated, warnings = await self.with_reader(read)
        events = [peek_event(r, cfg.format, self.mask, dlq=False) for r in records]
        return self._body(
            cfg, "window", cfg.topic_label, limit, events, truncated, warnings, window_id, count
        )

    async def tail(self, consumer_id: str, limit: int = DEFAULT_LIMIT) -> PeekBody:
        """The newest ``limit`` records of the topics the consumer reads (its topic, its
        topics, or those its pattern matches on the brokers), oldest first."""
        cfg = self._consumer(consumer_id)
        return await self._latest(cfg, "tail", _bounded(limit))

    async def dlq(self, consumer_id: str, limit: int = DEFAULT_LIMIT) -> PeekBody:
        """The newest ``limit`` records of the consumer's DLQ topic, oldest first."""
        cfg = self._consumer(consumer_id)
        return await self._latest(cfg, "dlq", _bounded(limit))

    # ---- plumbing ----------------------------------------------------------------------------
    def _body(
        self,
        cfg: ConsumerConfig,
        source: Source,
        topic: str,
        limit: int,
        events: list[PeekEvent],
        truncated: bool,
        warnings: list[str],
        window_id: int | None = None,
        window_count: int | None = None,
    ) -> PeekBody:
        return PeekBody(
            consumer_id=cfg.consumer_id,
            source=source,
            topic=topic,
            window_id=window_id,
            window_count=window_count,
            limit=limit,
            truncated=truncated,
            warnings=[self.mask(w) for w in warnings],
            events=events,
        )

    async def _closed_window(self, consumer_id: str, window_id: int) -> dict[Any, Any]:
        """The trigger record (history stream entry) of a closed window."""
        keys = ConsumerKeys(
            self.config.redis.key_prefix, consumer_id, tagged_layout(self.config.redis)
        )
        fields = await _find_window(self.redis, keys.history, window_id, newest_first=True)
        if fields is not None:
            return {k if isinstance(k, bytes) else str(k).encode(): v for k, v in fields.items()}
        open_id = int(await self.redis.hget(keys.window, "id") or 1)
        if window_id >= open_id:
            raise WindowNotFoundError(
                f"window {window_id} of {consumer_id} is not closed yet (window {open_id} is "
                "the open one)"
            )
        oldest: Any = await self.redis.xrange(keys.history, count=1)
        kept = int(oldest[0][1][b"window_id"]) if oldest else None
        raise WindowNotFoundError(
            f"window {window_id} of {consumer_id} has expired from the trigger history (it "
            f"keeps the last {self.config.redis.history_limit} windows"
            + (f"; the oldest kept is {kept})" if kept is not None else ")")
        )

    async def _latest(self, cfg: ConsumerConfig, source: Source, limit: int) -> PeekBody:
        label = cfg.dlq_topic if source == "dlq" else cfg.topic_label

        async def read(consumer: AIOKafkaConsumer) -> tuple[list[Any], bool]:
            cluster = await consumer._client.fetch_all_metadata()
            if source == "dlq":
                topics = [cfg.dlq_topic]
            elif cfg.topic_pattern is not None:
                topics = sorted(t for t in cluster.topics() if cfg.reads_topic(t))
            else:
                topics = list(cfg.topics)
            tps = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(cluster.partitions_for_topic(topic) or ())
            ]
            if not tps:
                note = (
                    " (nothing was dead-lettered yet"
                    + (
                        f"; error_handling.on_error is {cfg.error_handling.on_error}"
                        if cfg.error_handling.on_error != "dlq"
                        else ""
                    )
                    + ")"
                    if source == "dlq"
                    else ""
                )
                if cfg.topic_pattern is not None and source != "dlq":
                    raise TopicNotFoundError(f"no topic matches the pattern {label}")
                what = "topic" if len(topics) == 1 else "none of the topics"
                raise TopicNotFoundError(f"{what} {label} does not exist{note}")
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            spans = [
                (tp, max(starts.get(tp) or 0, (ends.get(tp) or 0) - limit), (ends.get(tp) or 0) - 1)
                for tp in tps
                if (ends.get(tp) or 0) > (starts.get(tp) or 0)
            ]
            records, truncated, _ = await _read_spans(consumer, spans, limit, newest=True)
            return records, truncated

        records, truncated = await self.with_reader(read)
        events = [peek_event(r, cfg.format, self.mask, dlq=source == "dlq") for r in records]
        return self._body(cfg, source, label, limit, events, truncated, [])

    async def with_reader(self, read: Callable[[AIOKafkaConsumer], Any]) -> Any:
        """Run ``read`` with a throwaway consumer: no group, no commits, within the timeout."""
        bootstrap = self.config.kafka.bootstrap_servers
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            # an offset deleted under the read raises instead of jumping to the end unseen
            auto_offset_reset="none",
            isolation_level="read_committed",
            request_timeout_ms=int(self.timeout * 1000),
            **kafka_kwargs(self.config.kafka),
        )
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    await consumer.start()
                except (KafkaError, OSError) as exc:
                    raise KafkaUnreachableError(
                        f"cannot reach the brokers at {self.mask(bootstrap)}: "
                        f"{self.mask(str(exc) or type(exc).__name__)}"
                    ) from None
                return await read(consumer)
        except OffsetOutOfRangeError as exc:
            raise EventsExpiredError(
                f"records were deleted from the topic while being read (retention): {exc}"
            ) from None
        except TimeoutError:
            raise KafkaUnreachableError(
                f"the brokers at {self.mask(bootstrap)} did not answer within {self.timeout:g}s"
            ) from None
        except KafkaError as exc:
            raise KafkaUnreachableError(
                f"reading from the brokers at {self.mask(bootstrap)} failed: "
                f"{self.mask(str(exc) or type(exc).__name__)}"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()


def _bounded(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise PeekError(f"limit must be between 1 and {MAX_LIMIT} (got {limit})")
    return limit


def _order(record: Any) -> tuple[int, int, int]:
    return (record.timestamp or 0, record.partition, record.offset)


async def _read_spans(
    consumer: AIOKafkaConsumer,
    spans: Iterable[tuple[TopicPartition, int, int]],
    limit: int,
    *,
    newest: bool = False,
) -> tuple[list[Any], bool, list[str]]:
    """Records of the offset spans ``[start, stop]`` (inclusive), oldest first by timestamp:
    the first ``limit`` of them (the last ``limit`` when ``newest``), whether any was left
    out, and the spans found beyond their partition's end (``topic[p] offsets a-b (it ends
    at e)``). Each partition is read up to ``limit`` records from the side kept."""
    per_partition: list[list[Any]] = []
    truncated = False
    beyond: list[str] = []
    for tp, start, stop in spans:
        if stop < start:
            continue
        if newest and stop - start + 1 > limit:
            start = stop - limit + 1
            truncated = True
        consumer.assign([tp])
        consumer.seek(tp, start)
        found: list[Any] = []
        while len(found) < limit:
            try:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=limit - len(found))
            except OffsetOutOfRangeError:
                position = await consumer.position(tp)
                end = (await consumer.end_offsets([tp])).get(tp)
                if end is None or position < end:  # below the start: retention, just now
                    raise
                beyond.append(
                    f"{tp.topic}[{tp.partition}] offsets {position}-{stop} (it ends at {end})"
                )
                break
            records = batch.get(tp, [])
            for record in records:
                if record.offset > stop:
                    break
                found.append(record)
            # the position passes control records and compacted gaps the records do not show
            position = await consumer.position(tp)
            if position > stop:
                break
            end = consumer.highwater(tp)
            if not records and end is not None and position >= end:
                beyond.append(
                    f"{tp.topic}[{tp.partition}] offsets {position}-{stop} (it ends at {end})"
                )
                break
        else:
            truncated = truncated or await consumer.position(tp) <= stop
        per_partition.append(found)
    merged = list(heapq.merge(*(sorted(p, key=_order) for p in per_partition), key=_order))
    if len(merged) > limit:
        truncated = True
        merged = merged[-limit:] if newest else merged[:limit]
    return merged, truncated, beyond
