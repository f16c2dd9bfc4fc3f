"""Exact, atomic window counting in Redis: one Lua call per polled batch.

The :class:`WindowCounter` owns the three scripts that change a consumer's counting state:

- ``apply``: skips offsets already counted (per partition, the stored *next offset to count*),
  adds the new events to the open window, closes windows at exactly ``max_event`` (carrying the
  excess into the next one), appends a trigger record for each closed window to the history and
  dispatch streams, and advances the stored offsets, all in one step;
- ``close``: closes the open window for a reason (``time`` only once the deadline has passed on
  Redis's clock and only for the expected window id, so several instances' timers close it once;
  ``manual`` also when empty);
- ``reset``: empties the open window without triggering.

A batch arrives as compact per-partition *ranges* of consecutive counted offsets, so a
contiguous batch costs a handful of arguments whatever its size, and gaps (compacted or
transactional topics) are handled by offset, never by assuming contiguity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from redis.asyncio import Redis

from kafkaconsole.engine.keys import ConsumerKeys, offset_field
from kafkaconsole.engine.records import OffsetRange, TriggerReason

_PRELUDE = r"""
local K_EVENTS, K_WINDOW, K_STATS, K_OFFSETS, K_HISTORY, K_DISPATCH =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local count = tonumber(redis.call('GET', K_EVENTS) or '0')
local w = redis.call('HMGET', K_WINDOW, 'id', 'opened_at', 'after_loss')
local has_id = w[1] ~= false
local wid = tonumber(w[1] or '1')
local opened = w[2]
if opened then opened = tonumber(opened) end
-- the first window after Redis lost this consumer's state: any client that saw a higher
-- window id before the loss renumbers it (it never closed, so its id was never used)
local after_loss = w[3] ~= false
local ranges = nil      -- "topic|partition" -> {first, last} of the open window (lazy)
local range_order = nil
local window_dirty = false

local function load_ranges()
  if ranges ~= nil then return end
  ranges = {}
  range_order = {}
  local all = redis.call('HGETALL', K_WINDOW)
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) == 'r|' then
      local key = string.sub(f, 3)
      local sp = string.find(all[i + 1], ' ', 1, true)
      ranges[key] = {tonumber(string.sub(all[i + 1], 1, sp - 1)),
                     tonumber(string.sub(all[i + 1], sp + 1))}
      table.insert(range_order, key)
    end
  end
end

local function offsets_json()
  load_ranges()
  if #range_order == 0 then return '[]' end
  table.sort(range_order, function(a, b)
    local ta, pa = string.match(a, '^(.*)|(%d+)$')
    local tb, pb = string.match(b, '^(.*)|(%d+)$')
    if ta ~= tb then return ta < tb end
    return tonumber(pa) < tonumber(pb)
  end)
  local out = {}
  for _, key in ipairs(range_order) do
    local tp, p = string.match(key, '^(.*)|(%d+)$')
    local r = ranges[key]
    table.insert(out, cjson.encode(
      {topic = tp, partition = tonumber(p), first = r[1], last = r[2]}))
  end
  return '[' .. table.concat(out, ',') .. ']'
end

local function close_window(reason, history_limit)
  local offs = offsets_json()
  local fields = {'window_id', wid, 'reason', reason, 'count', count,
                  'opened_at', opened or '', 'closed_at', now, 'offsets', offs}
  redis.call('XADD', K_HISTORY, 'MAXLEN', '~', history_limit, '*', unpack(fields))
  redis.call('XADD', K_DISPATCH, '*', unpack(fields))
  redis.call('HINCRBY', K_STATS, 'windows', 1)
  redis.call('HINCRBY', K_STATS, 'windows_' .. reason, 1)
  local closed_id = wid
  wid = wid + 1
  count = 0
  opened = nil
  after_loss = false
  ranges = {}
  range_order = {}
  window_dirty = true
  return closed_id
end

local function save_window()
  redis.call('SET', K_EVENTS, count)
  if not window_dirty then return end
  redis.call('DEL', K_WINDOW)
  local f = {'id', wid}
  if opened then table.insert(f, 'opened_at'); table.insert(f, opened) end
  if after_loss then table.insert(f, 'after_loss'); table.insert(f, 1) end
  if ranges ~= nil then
    for _, key in ipairs(range_order) do
      local r = ranges[key]
      table.insert(f, 'r|' .. key)
      table.insert(f, r[1] .. ' ' .. r[2])
    end
  end
  redis.call('HSET', K_WINDOW, unpack(f))
end
"""

_APPLY = (
    _PRELUDE
    + r"""
-- ARGV: max_event, history_limit, then ONE space-separated string of tokens (topic names
-- hold no spaces, every other token is an integer):
--   window_floor, n_expect, (topic, partition, expected)*, n_parts, then per partition:
--   topic, partition, next_after, first_offset, n_records, n_ranges, (a, b)*, n_err,
--   err_offset*, n_skipped (records skipped on purpose: tombstones, heartbeats; stats
--   field "skipped")
-- (one argument instead of dozens: the client packs a poll's deltas with a single join)
local A = {ARGV[1], ARGV[2]}
for tok in string.gmatch(ARGV[3], '%S+') do A[#A + 1] = tok end
local max_event = tonumber(A[1])
local history_limit = tonumber(A[2])
local window_floor = tonumber(A[3])
local n_expect = tonumber(A[4])
local i = 5

-- What the client believes Redis holds: per partition, the next offset it last saw stored.
-- Stored offsets only grow, so a stored offset below that means Redis lost writes (a crash
-- under AOF everysec, a failover to a lagging replica): nothing is applied and the client is
-- told where to re-read from. A missing one means Redis lost this consumer's state: the
-- offset is re-seeded from the client's, the window id never goes back below what the
-- client saw, and the client reports the loss.
local stored_of = {}  -- "topic|partition" -> next offset to count (-1: none), read once
local function stored_offset(key)
  local s = stored_of[key]
  if s == nil then
    s = tonumber(redis.call('HGET', K_OFFSETS, key) or '-1')
    stored_of[key] = s
  end
  return s
end

local behind, lost = {}, {}  -- flat (topic, partition, offset)*
for _ = 1, n_expect do
  local tp, p, expected = A[i], A[i + 1], tonumber(A[i + 2])
  i = i + 3
  local stored = stored_offset(tp .. '|' .. p)
  if stored < 0 then
    table.insert(lost, tp)
    table.insert(lost, tonumber(p))
    table.insert(lost, expected)
  elseif stored < expected then
    table.insert(behind, tp)
    table.insert(behind, tonumber(p))
    table.insert(behind, stored)
  end
end
if #behind > 0 then return {'rewind', behind} end
for j = 1, #lost, 3 do
  local key = lost[j] .. '|' .. lost[j + 1]
  redis.call('HSET', K_OFFSETS, key, lost[j + 2])
  stored_of[key] = lost[j + 2]
end
if #lost > 0 and not has_id then
  after_loss = true
  window_dirty = true
end
if window_floor > wid and (after_loss or not has_id) then
  wid = window_floor
  window_dirty = true
end

local n_parts = tonumber(A[i])
i = i + 1
local closed = {}
local added, errors, filtered, skipped, passed = 0, 0, 0, 0, 0

for _ = 1, n_parts do
  local key = A[i] .. '|' .. A[i + 1]
  local next_after = tonumber(A[i + 2])
  local first_offset = tonumber(A[i + 3])
  local n_records = tonumber(A[i + 4])
  local n_ranges = tonumber(A[i + 5])
  i = i + 6
  local stored = stored_offset(key)
  local counted_here = 0
  for _ = 1, n_ranges do
    local a = tonumber(A[i])
    local b = tonumber(A[i + 1])
    i = i + 2
    if a < stored then
      skipped = skipped + math.min(b, stored - 1) - a + 1
      a = stored
    end
    while a <= b do
      load_ranges()
      if count == 0 then opened = now end
      local take = math.min(max_event - count, b - a + 1)
      local e = a + take - 1
      local r = ranges[key]
      if r == nil then
        ranges[key] = {a, e}
        table.insert(range_order, key)
      else
        r[2] = e
      end
      window_dirty = true
      count = count + take
      added = added + take
      counted_here = counted_here + take
      a = e + 1
      if count >= max_event then
        table.insert(closed, close_window('count', history_limit))
      end
    end
  end
  local n_err = tonumber(A[i])
  i = i + 1
  local errors_here = 0
  for _ = 1, n_err do
    if tonumber(A[i]) >= stored then errors_here = errors_here + 1 end
    i = i + 1
  end
  errors = errors + errors_here
  local passed_here = tonumber(A[i])
  i = i + 1
  if first_offset >= stored then
    passed = passed + passed_here
    filtered = filtered + n_records - counted_here - errors_here - passed_here
  end
  if next_after > stored then
    redis.call('HSET', K_OFFSETS, key, next_after)
    stored_of[key] = next_after
  end
end

if added > 0 then redis.call('HINCRBY', K_STATS, 'total', added) end
if errors > 0 then redis.call('HINCRBY', K_STATS, 'errors', errors) end
if filtered > 0 then redis.call('HINCRBY', K_STATS, 'filtered', filtered) end
if passed > 0 then redis.call('HINCRBY', K_STATS, 'skipped', passed) end
save_window()
return {count, wid, opened or -1, now, added, skipped, errors, closed, lost}
"""
)

_CLOSE = (
    _PRELUDE
    + r"""
-- ARGV: reason, expected_wid (-1 = any), max_time_ms, allow_empty, history_limit
local reason = ARGV[1]
local expected = tonumber(ARGV[2])
local max_time_ms = tonumber(ARGV[3])
local allow_empty = ARGV[4] == '1'
local history_limit = tonumber(ARGV[5])
if expected >= 0 and expected ~= wid then return {'stale', wid, 0, now} end
if count == 0 and not allow_empty then return {'empty', wid, 0, now} end
if reason == 'time' then
  if opened == nil then return {'empty', wid, 0, now} end
  local due = opened + max_time_ms
  if now < due then return {'early', wid, due - now, now} end
end
local n = count
local closed_id = close_window(reason, history_limit)
save_window()
return {'closed', closed_id, n, now}
"""
)

_RESET = (
    _PRELUDE
    + r"""
local n = count
redis.call('SET', K_EVENTS, 0)
redis.call('DEL', K_WINDOW)
redis.call('HSET', K_WINDOW, 'id', wid)
if n > 0 then redis.call('HINCRBY', K_STATS, 'discarded', n) end
return {wid, n, now}
"""
)


@dataclass(slots=True)
class PartitionDelta:
    """What one polled batch holds for one topic-partition, in the script's terms."""

    topic: str
    partition: int
    next_offset: int  # last offset in the batch + 1
    first_offset: int
    n_records: int
    ranges: list[tuple[int, int]] = field(default_factory=list)  # consecutive counted offsets
    errors: list[int] = field(default_factory=list)
    #: records skipped (tombstones, Debezium heartbeats...): neither counted nor filtered
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class ApplyResult:
    count: int
    window_id: int
    opened_at_ms: int | None
    redis_now_ms: int
    added: int
    skipped: int
    errors: int
    closed_window_ids: tuple[int, ...]
    #: topic-partitions whose stored offset Redis had lost, re-seeded from the client's
    #: expectation
    lost: dict[TopicPartition, int] = field(default_factory=dict)


class RedisBehind(Exception):
    """Redis holds stored offsets below what this client saw stored: it lost writes. Nothing
    was applied; ``stored`` gives, per topic-partition, where counting must resume."""

    def __init__(self, stored: dict[TopicPartition, int]) -> None:
        self.stored = stored
        parts = ", ".join(
            f"{tp.topic} partition {tp.partition} at {o}" for tp, o in sorted(stored.items())
        )
        super().__init__(f"Redis lost counted offsets ({parts})")


def _triples(flat: list[Any]) -> dict[TopicPartition, int]:
    """``[topic, partition, offset, ...]`` from the script -> {TopicPartition: offset}."""
    return {
        TopicPartition(_str(flat[j]), _int(flat[j + 1])): _int(flat[j + 2])
        for j in range(0, len(flat), 3)
    }


@dataclass(frozen=True, slots=True)
class CloseResult:
    status: str  # closed | stale | empty | early
    window_id: int
    count: int  # events in the closed window (or ms left when early)
    redis_now_ms: int

    @property
    def closed(self) -> bool:
        return self.status == "closed"


@dataclass(frozen=True, slots=True)
class ResetResult:
    window_id: int
    discarded: int
    redis_now_ms: int


@dataclass(frozen=True, slots=True)
class WindowState:
    window_id: int
    count: int
    opened_at_ms: int | None
    ranges: tuple[OffsetRange, ...]


def ranges_of(offsets: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive offsets, e.g. [1, 2, 3, 7, 8] -> [(1, 3), (7, 8)]."""
    out: list[tuple[int, int]] = []
    if not offsets:
        return out
    start = prev = offsets[0]
    for o in offsets[1:]:
        if o != prev + 1:
            out.append((start, prev))
            start = o
        prev = o
    out.append((start, prev))
    return out


def _int(value: Any) -> int:
    return int(value.decode() if isinstance(value, bytes) else value)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WindowCounter:
    """The counting state of one consumer in Redis (of every topic it reads: offsets and the
    open window's ranges are keyed by topic-partition)."""

    def __init__(
        self,
        redis: Redis,
        keys: ConsumerKeys,
        *,
        max_event: int,
        history_limit: int = 1000,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.max_event = max_event
        self.history_limit = history_limit
        self._keys = keys.counting_keys()
        self._apply = redis.register_script(_APPLY)
        self._close = redis.register_script(_CLOSE)
        self._reset = redis.register_script(_RESET)

    async def apply(
        self,
        deltas: list[PartitionDelta],
        expected: dict[TopicPartition, int] | None = None,
        window_floor: int = 0,
    ) -> ApplyResult:
        """Count ``deltas`` in one atomic step. ``expected`` holds, per topic-partition, the
        next offset the caller last saw stored: Redis holding less raises
        :class:`RedisBehind` (nothing applied); Redis holding none re-seeds it and reports it
        in ``lost``, and the window id then starts at ``window_floor`` at least."""
        exp = expected or {}
        nums: list[int | str] = [window_floor, len(exp)]
        for tp, o in exp.items():
            nums += (tp.topic, tp.partition, o)
        nums.append(len(deltas))
        for d in deltas:
            nums += (
                d.topic,
                d.partition,
                d.next_offset,
                d.first_offset,
                d.n_records,
                len(d.ranges),
            )
            for a, b in d.ranges:
                nums += (a, b)
            nums.append(len(d.errors))
            nums += d.errors
            nums.append(d.skipped)
        # the deltas travel as one string: packing each integer as its own argument costs
        # more client time than the whole script takes to run on the server
        args: list[Any] = [self.max_event, self.history_limit, " ".join(map(str, nums))]
        res = await self._apply(keys=self._keys, args=args)
        if isinstance(res[0], bytes | str):  # "rewind"
            raise RedisBehind(_triples(res[1]))
        opened = _int(res[2])
        return ApplyResult(
            count=_int(res[0]),
            window_id=_int(res[1]),
            opened_at_ms=None if opened < 0 else opened,
            redis_now_ms=_int(res[3]),
            added=_int(res[4]),
            skipped=_int(res[5]),
            errors=_int(res[6]),
            closed_window_ids=tuple(_int(x) for x in res[7]),
            lost=_triples(res[8]),
        )

    async def close(
        self, reason: TriggerReason, *, expected_window_id: int | None = None, max_time_ms: int = 0
    ) -> CloseResult:
        allow_empty = reason == TriggerReason.MANUAL
        res = await self._close(
            keys=self._keys,
            args=[
                str(reason),
                -1 if expected_window_id is None else expected_window_id,
                max_time_ms,
                "1" if allow_empty else "0",
                self.history_limit,
            ],
        )
        status = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        return CloseResult(status, _int(res[1]), _int(res[2]), _int(res[3]))

    async def reset(self) -> ResetResult:
        res = await self._reset(keys=self._keys, args=[])
        return ResetResult(_int(res[0]), _int(res[1]), _int(res[2]))

    async def window(self) -> WindowState:
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self.keys.events)
        pipe.hgetall(self.keys.window)
        count_raw, window = await pipe.execute()
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in window.items()
        }
        ranges = []
        for f, v in fields.items():
            if f.startswith("r|"):
                topic, _, part = f[2:].rpartition("|")
                first, last = v.split(" ")
                ranges.append(OffsetRange(topic, int(part), int(first), int(last)))
        ranges.sort(key=lambda r: (r.topic, r.partition))
        opened = fields.get("opened_at")
        return WindowState(
            window_id=int(fields.get("id", 1)),
            count=_int(count_raw or 0),
            opened_at_ms=int(opened) if opened else None,
            ranges=tuple(ranges),
        )

    async def record_refused(self, entries: list[dict[str, Any]], keep: int = 1000) -> None:
        """Record bad events even the DLQ refused in a capped stream (about the last ``keep``),
        and count them in the stats hash (``dlq_refused``)."""
        pipe = self.redis.pipeline(transaction=True)
        for entry in entries:
            fields = {k: str(v) for k, v in entry.items()}
            pipe.xadd(self.keys.dlq_refused, fields, maxlen=keep, approximate=True)  # type: ignore[arg-type]
        pipe.hincrby(self.keys.stats, "dlq_refused", len(entries))
        await pipe.execute()

    async def stored_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Next offset to count per topic-partition, for those Redis knows."""
        if not partitions:
            return {}
        fields = [offset_field(tp.topic, tp.partition) for tp in partitions]
        values = await self.redis.hmget(self.keys.offsets, fields)
        return {tp: _int(v) for tp, v in zip(partitions, values, strict=True) if v is not None}
