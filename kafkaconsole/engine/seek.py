"""Seek and replay: move a consumer's position on every partition, fleet-wide.

``kafkaconsole seek ID --to earliest|latest|OFFSET|TIME`` (the HTTP API's
``POST /consumers/{id}/seek``, the console's ``:seek``) works in two steps:

1. :func:`plan_seek` resolves the target on the brokers (a throwaway reader without a group,
   as :mod:`peek` uses) into a next-offset-to-count per topic-partition and compares it with
   what Redis holds: per partition the events that will be read again (target below the
   stored offset) or skipped (above it), and the open window. Nothing changes. The faces show
   this as the confirmation (the console re-reads it every second).
2. :meth:`WindowCounter.seek` applies it in one atomic Redis step: the open window is closed
   (reason ``seek``, its pipeline runs) or discarded (as ``reset`` does), the stored offsets
   are rewritten, and the consumer's seek epoch goes up. Every instance re-reads its
   positions before it counts again (the counting script refuses a poll of an older epoch;
   the control listener notices within a second), so no poll read before the seek is counted
   after it, and a seek back is never taken for Redis having lost writes.

What exact counting means across a seek: counted = the events in the ranges the consumer was
told to read. Events read again are counted again, into new windows (new window ids); a
window that holds any of them is recorded as a replay (``"replay": true`` in its trigger
record and history). Events skipped are never counted and are added up in the consumer's
stats (``seek_skipped``). The numbers are offsets: a topic with transactions or compaction
has fewer events than offsets in a range.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from kafkaconsole.config.models import AppConfig, ConsumerConfig
from kafkaconsole.engine.counting import SeekApplied, WindowCounter
from kafkaconsole.engine.errors import ControlError, UnknownConsumerError
from kafkaconsole.engine.keys import ConsumerKeys, tagged_layout
from kafkaconsole.engine.peek import EventPeek, TopicNotFoundError
from kafkaconsole.engine.records import iso_ms

SeekWindow = Literal["close", "discard"]
SEEK_WINDOWS: tuple[str, ...] = ("close", "discard")

#: What ``--to`` accepts, as every refusal says it.
TARGET_HELP = (
    "earliest, latest, an offset (e.g. 1200), an ISO 8601 time (e.g. 2026-11-30T08:00:00Z) "
    "or a time ago (e.g. -2h, -30m, -1d)"
)

_AGO = re.compile(r"^-(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class SeekError(ControlError):
    """A seek refused before anything changed: a target or option that cannot be used."""

    http_status = 422
    exit_code = 2


class SeekRefusedError(ControlError):
    """A seek the fleet cannot follow now (an instance of an older release runs the
    consumer)."""

    http_status = 409


def older_instances(instances: list[dict[str, Any]], consumer_id: str) -> list[str]:
    """Live instances (heartbeats) running ``consumer_id`` that do not follow seeks."""
    return [
        str(i.get("instance_id"))
        for i in instances
        if consumer_id
        in (c if isinstance(c, str) else c.get("consumer_id") for c in i.get("consumers", []))
        and "seek" not in (i.get("features") or [])
    ]


@dataclass(frozen=True, slots=True)
class SeekTarget:
    """Where to move: ``earliest``, ``latest``, an ``offset`` (every partition, clamped to
    what the partition holds) or a ``time`` (per partition, the first event at or after it)."""

    kind: Literal["earliest", "latest", "offset", "time"]
    text: str
    offset: int | None = None
    time_ms: int | None = None

    def describe(self) -> str:
        if self.kind == "offset":
            return f"offset {self.offset}"
        if self.kind == "time":
            return f"the first event at or after {iso_ms(self.time_ms)}"
        return f"the {self.kind} offset"


def parse_target(text: str, now_ms: int | None = None) -> SeekTarget:
    """``--to`` as a :class:`SeekTarget`; a :class:`SeekError` names what is accepted."""
    raw = text.strip()
    low = raw.lower()
    if low in ("earliest", "latest"):
        return SeekTarget(low, raw)  # type: ignore[arg-type]
    if re.fullmatch(r"\d+", raw):
        offset = int(raw)
        if offset >= 2**53:
            raise SeekError(f"seek target {text!r}: offsets stay below 2^53")
        return SeekTarget("offset", raw, offset=offset)
    ago = _AGO.fullmatch(low)
    if ago:
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return SeekTarget("time", raw, time_ms=now - int(ago[1]) * _UNIT_MS[ago[2]])
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise SeekError(f"seek target {text!r} is not one of: {TARGET_HELP}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a time without a zone is UTC, as shown
    ms = int(moment.timestamp() * 1000)
    if ms < 0:
        raise SeekError(f"seek target {text!r}: a time before 1970 holds no event")
    return SeekTarget("time", raw, time_ms=ms)


def parse_window(value: str) -> SeekWindow:
    if value not in SEEK_WINDOWS:
        raise SeekError(f"window must be close or discard (got {value!r})")
    return value  # type: ignore[return-value]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()


class PartitionMove(_Body):
    topic: str
    partition: int
    current: int | None
    """The next offset to count Redis holds now (null: nothing counted on it yet)."""
    target: int
    """The next offset to count after the seek."""
    log_start: int
    log_end: int
    reread: int
    """Events counted already that will be read and counted again."""
    skipped: int
    """Events not counted yet that will be skipped."""


class SeekPlan(_Body):
    """What a seek will do (nothing is changed by planning it)."""

    consumer_id: str
    to: str
    """The target as given."""
    resolved: str
    """The target in words (``the first event at or after 2026-...Z``)."""
    window: SeekWindow
    """What happens to the open window: closed (its pipeline runs) or discarded."""
    window_id: int
    window_count: int
    """Events in the open window (closed or discarded by the seek)."""
    reread: int
    skipped: int
    partitions: list[PartitionMove]
    warnings: list[str]

    def targets(self) -> dict[TopicPartition, int]:
        return {TopicPartition(m.topic, m.partition): m.target for m in self.partitions}

    def summary(self) -> str:
        """One line: what the seek does."""
        n = len(self.partitions)
        window = (
            f"the open window {self.window_id} ({self.window_count} events) is "
            + ("closed and its pipeline runs" if self.window == "close" else "discarded")
            if self.window_count
            else "the open window is empty"
        )
        return (
            f"{self.consumer_id}: seek {n} partition(s) to {self.resolved}: "
            f"{self.reread} event(s) read again, {self.skipped} skipped; {window}"
        )


class SeekResult(_Body):
    """A seek: its plan, and what the atomic step did (``applied`` false: a dry run, the plan
    only)."""

    consumer_id: str
    applied: bool
    plan: SeekPlan
    epoch: int | None
    """The consumer's seek epoch after it (every instance re-reads its positions)."""
    closed_window_id: int | None
    """The open window closed by the seek (reason seek), if it held events and was closed."""
    discarded: int
    """Events of the open window discarded."""
    reread: int
    """Events counted already that are read and counted again."""
    skipped: int
    """Events not counted yet that are skipped (never counted)."""
    at: str | None
    """When it was applied (Redis's clock), ISO 8601 UTC."""
    redis_now_ms: int = Field(default=0, exclude=True)

    @classmethod
    def dry_run(cls, plan: SeekPlan) -> SeekResult:
        return cls(
            consumer_id=plan.consumer_id,
            applied=False,
            plan=plan,
            epoch=None,
            closed_window_id=None,
            discarded=0,
            reread=plan.reread,
            skipped=plan.skipped,
            at=None,
        )

    @classmethod
    def of(cls, plan: SeekPlan, applied: SeekApplied) -> SeekResult:
        closed = applied.closed_window_id if applied.closed_window_id >= 0 else None
        return cls(
            consumer_id=plan.consumer_id,
            applied=True,
            plan=plan,
            epoch=applied.epoch,
            closed_window_id=closed,
            discarded=applied.window_count if closed is None else 0,
            reread=applied.reread,
            skipped=applied.skipped,
            at=iso_ms(applied.redis_now_ms),
            redis_now_ms=applied.redis_now_ms,
        )

    def detail(self) -> str:
        """The audit trail's and the log's line."""
        moves = ", ".join(
            f"{m.topic}[{m.partition}] {'-' if m.current is None else m.current}->{m.target}"
            for m in self.plan.partitions
        )
        if self.closed_window_id is not None:
            window = f"window {self.closed_window_id} closed"
        elif self.discarded:
            window = f"{self.discarded} event(s) of the open window discarded"
        else:
            window = "open window empty"
        return (
            f"to {self.plan.to} (epoch {self.epoch}): {moves}; {self.reread} read again, "
            f"{self.skipped} skipped; {window}"
        )


def _consumer(config: AppConfig, consumer_id: str) -> ConsumerConfig:
    try:
        return config.consumer(consumer_id)
    except KeyError:
        raise UnknownConsumerError(consumer_id, [c.consumer_id for c in config.consumers]) from None


async def _topic_partitions(
    reader: AIOKafkaConsumer, cfg: ConsumerConfig, only: set[int] | None
) -> list[TopicPartition]:
    cluster = await reader._client.fetch_all_metadata()
    if cfg.topic_pattern is not None:
        topics = sorted(t for t in cluster.topics() if cfg.reads_topic(t))
        if not topics:
            raise TopicNotFoundError(f"no topic matches {cfg.topic_label} yet")
    else:
        topics = list(cfg.topics)
    out: list[TopicPartition] = []
    for topic in topics:
        parts = cluster.partitions_for_topic(topic)
        if not parts:
            raise TopicNotFoundError(f"topic {topic} does not exist")
        out += [TopicPartition(topic, p) for p in sorted(parts) if only is None or p in only]
    if not out:
        have = sorted({p for t in topics for p in cluster.partitions_for_topic(t) or ()})
        raise SeekError(
            f"no partition {', '.join(map(str, sorted(only or ())))} in {cfg.topic_label} "
            f"(it has {', '.join(map(str, have))})"
        )
    return out


async def plan_seek(
    config: AppConfig,
    redis: Redis,
    consumer_id: str,
    target: SeekTarget,
    *,
    window: SeekWindow = "close",
    partitions: list[int] | None = None,
) -> SeekPlan:
    """What seeking ``consumer_id`` to ``target`` would do (reads only)."""
    cfg = _consumer(config, consumer_id)
    only = set(partitions) if partitions else None
    warnings: list[str] = []

    async def resolve(reader: AIOKafkaConsumer) -> tuple[list[TopicPartition], dict[Any, Any]]:
        tps = await _topic_partitions(reader, cfg, only)
        starts = await reader.beginning_offsets(tps)
        ends = await reader.end_offsets(tps)
        targets: dict[TopicPartition, int] = {}
        for tp in tps:
            start, end = starts.get(tp) or 0, ends.get(tp) or 0
            if target.kind == "earliest":
                targets[tp] = start
            elif target.kind == "latest":
                targets[tp] = end
            elif target.kind == "offset":
                assert target.offset is not None
                targets[tp] = min(max(target.offset, start), end)
                if targets[tp] != target.offset:
                    warnings.append(
                        f"{tp.topic}[{tp.partition}] holds offsets {start} to {end}: "
                        f"offset {target.offset} moved to {targets[tp]}"
                    )
        if target.kind == "time":
            assert target.time_ms is not None
            found = await reader.offsets_for_times({tp: target.time_ms for tp in tps})
            for tp in tps:
                hit = found.get(tp)
                # no event at or after the time: the partition's end (nothing to read again)
                targets[tp] = hit.offset if hit is not None else ends.get(tp) or 0
        return tps, {"starts": starts, "ends": ends, "targets": targets}

    tps, found = await EventPeek(config, redis).with_reader(resolve)
    counter = WindowCounter(
        redis,
        ConsumerKeys(config.redis.key_prefix, consumer_id, tagged_layout(config.redis)),
        max_event=cfg.max_event,
        history_limit=config.redis.history_limit,
    )
    stored, _ = await counter.positions(tps)
    state = await counter.window()
    moves: list[PartitionMove] = []
    for tp in tps:
        current = stored.get(tp)
        new = found["targets"][tp]
        moves.append(
            PartitionMove(
                topic=tp.topic,
                partition=tp.partition,
                current=current,
                target=new,
                log_start=found["starts"].get(tp) or 0,
                log_end=found["ends"].get(tp) or 0,
                reread=max(0, current - new) if current is not None else 0,
                skipped=max(0, new - current) if current is not None else 0,
            )
        )
    return SeekPlan(
        consumer_id=consumer_id,
        to=target.text,
        resolved=target.describe(),
        window=window,
        window_id=state.window_id,
        window_count=state.count,
        reread=sum(m.reread for m in moves),
        skipped=sum(m.skipped for m in moves),
        partitions=moves,
        warnings=warnings,
    )
