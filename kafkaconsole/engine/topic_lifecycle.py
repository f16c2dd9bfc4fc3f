"""Topic lifecycle: what happens to the topics a consumer reads while it counts them.

Redis holds, per partition, the next offset to count. Three things move a topic under it:

- **Retention** deletes events that were never counted (the consumer was stopped or behind):
  the stored offset is below the partition's log start offset. Policy: count what is left,
  from the log start, and record the lost range (stats ``retention_lost``, the ``lifecycle``
  hash, a log line, ``kafkaconsole_retention_lost_events_total``). Counting stays exact for
  what exists: the counting script accepts gaps.
- **A topic deleted and created again** starts its offsets at 0 again, below the stored ones,
  so the counting script would skip every event as already counted. Seen as a partition whose
  end offset is below the offset Redis says to count next. Policy by ``on_topic_reset``:
  ``wait`` flags the partition (``reset|<topic>|<partition>`` in the ``lifecycle`` hash, the
  ``topic-recreated`` verdict) and counts nothing there until an operator runs
  ``kafkaconsole consumer accept-reset ID`` (:func:`accept_resets`); ``restart`` accepts it at
  once. Accepting moves the stored offset to the log start in one atomic step that first
  closes the open window (reason ``manual``) when it holds events of that partition, so no
  window spans the two topics.
- **Partitions added** join through the subscription at the metadata refresh
  (``[kafka] metadata_max_age_ms``); nothing here.

Both are seen by the Kafka consumer itself: it runs with ``auto_offset_reset = "none"``, so a
fetch out of range raises (with the offset it fetched) instead of silently jumping, and
:func:`classify` tells the two apart from the partition's log start and end offsets. The
consumer loop only calls in here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from kafkaconsole.engine.counting import _PRELUDE, _int, _str
from kafkaconsole.engine.keys import ConsumerKeys, offset_field

#: the ``lifecycle`` hash's field prefixes
RESET_PREFIX = "reset|"
LOST_PREFIX = "lost|"
LOST_LAST_PREFIX = "lost_last|"

RETENTION = "retention"
RECREATED = "recreated"


def classify(fetch_offset: int, log_start: int, end: int) -> str | None:
    """Why fetching ``fetch_offset`` was out of range: ``retention`` (below the log start:
    deleted), ``recreated`` (above the end: the topic was re-created, or its log truncated),
    or None (in range now: a transient answer, fetch again)."""
    if fetch_offset < log_start:
        return RETENTION
    if fetch_offset > end:
        return RECREATED
    return None


@dataclass(frozen=True, slots=True)
class RetentionLoss:
    """Offsets ``first``..``last`` of a partition, deleted by retention before being counted."""

    topic: str
    partition: int
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        return (
            f"retention deleted offsets {self.first}-{self.last} ({self.count}) of {self.topic} "
            f"partition {self.partition} before they were counted; counting from {self.last + 1}"
        )


@dataclass(frozen=True, slots=True)
class TopicReset:
    """A partition whose topic ends below what was counted (re-created): waiting, or done."""

    topic: str
    partition: int
    stored: int  # the next offset to count Redis held
    log_start: int  # where counting starts again
    end: int  # the partition's end offset when seen
    at_ms: int = 0

    def describe(self) -> str:
        return (
            f"topic-recreated: {self.topic} partition {self.partition} ends at {self.end}, below "
            f"the {self.stored} counted: the topic was deleted and created again"
        )

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def parse(cls, raw: Any) -> TopicReset:
        d = orjson.loads(raw)
        return cls(
            str(d["topic"]),
            int(d["partition"]),
            int(d["stored"]),
            int(d["log_start"]),
            int(d["end"]),
            int(d.get("at_ms") or 0),
        )


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A consumer's ``lifecycle`` hash, read: resets waiting, offsets lost per partition."""

    resets: tuple[TopicReset, ...] = ()
    #: (topic, partition) -> offsets lost in all
    lost: dict[tuple[str, int], int] | None = None
    #: (topic, partition) -> (first, last, at_ms) of the latest loss
    lost_last: dict[tuple[str, int], tuple[int, int, int]] | None = None

    @classmethod
    def parse(cls, raw: dict[Any, Any]) -> Lifecycle:
        resets: list[TopicReset] = []
        lost: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], tuple[int, int, int]] = {}
        for key, value in raw.items():
            name = _str(key)
            kind, _, tp = name.partition("|")
            topic, _, part = tp.rpartition("|")
            if not part.isdigit():
                continue
            try:
                if kind + "|" == RESET_PREFIX:
                    resets.append(TopicReset.parse(value))
                elif kind + "|" == LOST_PREFIX:
                    lost[(topic, int(part))] = _int(value)
                elif kind + "|" == LOST_LAST_PREFIX:
                    first, end, at = _str(value).split(" ")
                    last[(topic, int(part))] = (int(first), int(end), int(at))
            except (ValueError, KeyError, orjson.JSONDecodeError):
                continue  # a field another version wrote: shown as nothing, never an error
        resets.sort(key=lambda r: (r.topic, r.partition))
        return cls(tuple(resets), lost, last)

    def loss_rows(self) -> list[dict[str, Any]]:
        """Per partition: offsets lost to retention in all, and the latest range lost."""
        rows = []
        for (topic, partition), n in sorted((self.lost or {}).items()):
            first, last, at_ms = (self.lost_last or {}).get((topic, partition), (None, None, None))
            rows.append(
                {
                    "topic": topic,
                    "partition": partition,
                    "lost": n,
                    "last_first": first,
                    "last_last": last,
                    "last_at_ms": at_ms,
                }
            )
        return rows

    def reset_rows(self) -> list[dict[str, Any]]:
        """The partitions of a re-created topic waiting for accept-reset."""
        return [
            {
                "topic": r.topic,
                "partition": r.partition,
                "stored": r.stored,
                "log_start": r.log_start,
                "end": r.end,
                "since_ms": r.at_ms or None,
            }
            for r in self.resets
        ]


_RECORD_LOSS = r"""
-- KEYS: stats, offsets, lifecycle. ARGV: field (topic|partition), fetch_offset, log_start, now_ms
-- Offsets below the fetch offset were read already; what Redis says to count next may be
-- higher (another instance counted on). Lost: from the higher of the two to the log start.
local stored = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
local from = math.max(stored, tonumber(ARGV[2]))
local to = tonumber(ARGV[3])
if from >= to then return {from, 0} end
redis.call('HSET', KEYS[2], ARGV[1], to)
redis.call('HINCRBY', KEYS[1], 'retention_lost', to - from)
redis.call('HINCRBY', KEYS[3], 'lost|' .. ARGV[1], to - from)
redis.call('HSET', KEYS[3], 'lost_last|' .. ARGV[1], from .. ' ' .. (to - 1) .. ' ' .. ARGV[4])
return {from, to - from}
"""

_ACCEPT = (
    _PRELUDE
    + r"""
-- KEYS: the counting keys (7), then lifecycle. ARGV: history_limit, then the reset fields to
-- accept (reset|topic|partition); none: every one waiting.
-- Each accepted partition's stored offset goes to its log start, if it still holds what was
-- flagged (else the flag is dropped: the partition moved on). A window holding events of an
-- accepted partition closes first (reason manual): no window spans the two topics.
local K_LIFE = KEYS[8]
local history_limit = tonumber(ARGV[1])
local fields = {}
if #ARGV > 1 then
  for j = 2, #ARGV do fields[#fields + 1] = ARGV[j] end
else
  local all = redis.call('HGETALL', K_LIFE)
  for j = 1, #all, 2 do
    if string.sub(all[j], 1, 6) == 'reset|' then fields[#fields + 1] = all[j] end
  end
end
local accepted, dropped = {}, {}
local close = false
for _, f in ipairs(fields) do
  local raw = redis.call('HGET', K_LIFE, f)
  if raw then
    local r = cjson.decode(raw)
    local key = string.sub(f, 7)
    redis.call('HDEL', K_LIFE, f)
    local stored = tonumber(redis.call('HGET', K_OFFSETS, key) or '-1')
    if stored == tonumber(r['stored']) then
      redis.call('HSET', K_OFFSETS, key, r['log_start'])
      redis.call('HINCRBY', K_STATS, 'topic_resets', 1)
      table.insert(accepted, raw)
      if redis.call('HGET', K_WINDOW, 'r|' .. key) then close = true end
    else
      table.insert(dropped, raw)
    end
  end
end
local closed = -1
if close and count > 0 then
  closed = close_window('manual', history_limit)
  save_window()
end
-- stored offsets moved back on purpose: as a seek does, raise the epoch, so every instance
-- re-reads its positions (and none takes the move for Redis having lost writes)
if #accepted > 0 then redis.call('HINCRBY', K_CONTROL, 'seek_epoch', 1) end
return {accepted, dropped, closed}
"""
)


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """What :func:`accept_resets` did."""

    accepted: tuple[TopicReset, ...]
    #: flags dropped because the stored offset had moved since (nothing rewritten)
    dropped: tuple[TopicReset, ...]
    #: the window closed first because it held events of an accepted partition
    closed_window_id: int | None


class TopicLifecycle:
    """One consumer's topic lifecycle state in Redis (the ``lifecycle`` hash)."""

    def __init__(self, redis: Redis, keys: ConsumerKeys, history_limit: int = 1000) -> None:
        self.redis = redis
        self.keys = keys
        self.history_limit = history_limit
        self._record_loss = redis.register_script(_RECORD_LOSS)
        self._accept = redis.register_script(_ACCEPT)

    async def record_loss(
        self, topic: str, partition: int, fetch_offset: int, log_start: int
    ) -> RetentionLoss | None:
        """Move the partition's stored offset up to ``log_start`` and record the offsets lost
        (one atomic call: a loss is recorded once whichever instance sees it). None when
        nothing was lost (another instance recorded it already)."""
        res = await self._record_loss(
            keys=[self.keys.stats, self.keys.offsets, self.keys.lifecycle],
            args=[offset_field(topic, partition), fetch_offset, log_start, _now_ms()],
        )
        first, n = _int(res[0]), _int(res[1])
        if n <= 0:
            return None
        return RetentionLoss(topic, partition, first, first + n - 1)

    async def flag(self, reset: TopicReset) -> None:
        """Record a partition waiting for ``accept-reset``."""
        field = RESET_PREFIX + offset_field(reset.topic, reset.partition)
        await self.redis.hset(self.keys.lifecycle, field, reset.to_json())  # type: ignore[misc]

    async def read(self) -> Lifecycle:
        return Lifecycle.parse(await self.redis.hgetall(self.keys.lifecycle))  # type: ignore[misc]

    async def waiting(self, partitions: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of ``partitions`` are still flagged (not accepted yet)."""
        if not partitions:
            return set()
        fields = [RESET_PREFIX + offset_field(t, p) for t, p in partitions]
        values = await self.redis.hmget(self.keys.lifecycle, fields)  # type: ignore[misc]
        return {tp for tp, v in zip(partitions, values, strict=True) if v is not None}

    async def accept(self, partitions: list[tuple[str, int]] | None = None) -> AcceptResult:
        """Accept the flagged resets (of ``partitions``, else every one): their stored offsets
        go to their log start, in one Redis call that first closes a window holding their
        events. The consumer then counts them from there within a second."""
        fields = [RESET_PREFIX + offset_field(t, p) for t, p in partitions or ()]
        res = await self._accept(
            keys=[*self.keys.counting_keys(), self.keys.lifecycle],
            args=[self.history_limit, *fields],
        )
        closed = _int(res[2])
        return AcceptResult(
            tuple(TopicReset.parse(r) for r in res[0]),
            tuple(TopicReset.parse(r) for r in res[1]),
            None if closed < 0 else closed,
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
