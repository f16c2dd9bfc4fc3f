"""Exact, atomic window counting in Redis: one Lua call per polled batch.

The :class:`WindowCounter` owns the four scripts that change a consumer's counting state:

- ``apply``: skips offsets already counted (per partition, the stored *next offset to count*),
  adds the new events to the open window, closes windows at exactly ``max_event`` (carrying the
  excess into the next one), appends a trigger record for each closed window to the history and
  dispatch streams, and advances the stored offsets, all in one step;
- ``close``: closes the open window for a reason (``time`` only once the deadline has passed on
  Redis's clock and only for the expected window id, so several instances' timers close it once;
  ``manual`` also when empty);
- ``reset``: empties the open window without triggering;
- ``shrink``: applies a lowered ``max_event`` to the open window (a live reload);
- ``seek``: moves the stored offsets (an operator's seek or replay), closing or discarding the
  open window and raising the consumer's seek epoch in the same step.

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
local K_EVENTS, K_WINDOW, K_STATS, K_OFFSETS, K_HISTORY, K_DISPATCH, K_CONTROL =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local count = tonumber(redis.call('GET', K_EVENTS) or '0')
local w = redis.call('HMGET', K_WINDOW, 'id', 'opened_at', 'after_loss', 'replay')
local has_id = w[1] ~= false
local wid = tonumber(w[1] or '1')
local opened = w[2]
if opened then opened = tonumber(opened) end
-- the first window after Redis lost this consumer's state: any client that saw a higher
-- window id before the loss renumbers it (it never closed, so its id was never used)
local after_loss = w[3] ~= false
-- the open window holds events read again after a seek back (recorded as a replay)
local replay = w[4] ~= false
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

local function range_less(a, b)
  local ta, pa = string.match(a, '^(.*)|(%d+)$')
  local tb, pb = string.match(b, '^(.*)|(%d+)$')
  if ta ~= tb then return ta < tb end
  return tonumber(pa) < tonumber(pb)
end

local function offsets_json()
  load_ranges()
  if #range_order == 0 then return '[]' end
  table.sort(range_order, range_less)
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
  if replay then
    table.insert(fields, 'replay')
    table.insert(fields, 1)
  end
  redis.call('XADD', K_HISTORY, 'MAXLEN', '~', history_limit, '*', unpack(fields))
  redis.call('XADD', K_DISPATCH, '*', unpack(fields))
  redis.call('HINCRBY', K_STATS, 'windows', 1)
  redis.call('HINCRBY', K_STATS, 'windows_' .. reason, 1)
  local closed_id = wid
  wid = wid + 1
  count = 0
  opened = nil
  after_loss = false
  replay = false
  ranges = {}
  range_order = {}
  window_dirty = true
  return closed_id
end

-- A lowered max_event (a reload) can leave the open window holding max_event or more: close
-- windows of exactly max_event while it does, carrying the rest over as the count rule does.
-- The offset ranges are split by position, in partition order: the closed window takes the
-- first max_event offsets of the ranges, the carry-over the rest (with gaps, such as filtered
-- events, inside a range the split is by offset position).
local function close_excess(max_event, history_limit, closed)
  while count > 0 and count >= max_event do
    load_ranges()
    table.sort(range_order, range_less)
    local need = max_event
    local take, take_order, keep, keep_order = {}, {}, {}, {}
    for _, key in ipairs(range_order) do
      local r = ranges[key]
      local span = r[2] - r[1] + 1
      if need >= span then
        take[key] = r
        table.insert(take_order, key)
        need = need - span
      elseif need > 0 then
        take[key] = {r[1], r[1] + need - 1}
        table.insert(take_order, key)
        keep[key] = {r[1] + need, r[2]}
        table.insert(keep_order, key)
        need = 0
      else
        keep[key] = r
        table.insert(keep_order, key)
      end
    end
    local rest = count - max_event
    local was_replay = replay
    ranges, range_order, count = take, take_order, max_event
    table.insert(closed, close_window('count', history_limit))
    if rest > 0 then
      ranges, range_order, count, opened, replay = keep, keep_order, rest, now, was_replay
    end
  end
end

local function save_window()
  redis.call('SET', K_EVENTS, count)
  if not window_dirty then return end
  redis.call('DEL', K_WINDOW)
  local f = {'id', wid}
  if opened then table.insert(f, 'opened_at'); table.insert(f, opened) end
  if after_loss then table.insert(f, 'after_loss'); table.insert(f, 1) end
  if replay then table.insert(f, 'replay'); table.insert(f, 1) end
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
-- ARGV: max_event, history_limit, the client's seek epoch, then ONE space-separated string
-- of tokens (topic names
-- hold no spaces, every other token is an integer):
--   window_floor, n_expect, (topic, partition, expected)*, n_parts, then per partition:
--   topic, partition, next_after, first_offset, n_records, n_ranges, (a, b)*, n_err,
--   err_offset*, n_skipped (records skipped on purpose: tombstones, heartbeats; stats
--   field "skipped")
-- (one argument instead of dozens: the client packs a poll's deltas with a single join)
local A = {ARGV[1], ARGV[2]}
for tok in string.gmatch(ARGV[4], '%S+') do A[#A + 1] = tok end

-- A seek (the seek script) moved this consumer's stored offsets on purpose and raised the
-- epoch: a client that has not followed it yet counts nothing and is told to re-read its
-- positions, so a seek back is never taken for lost writes (below) nor a poll read before
-- it counted after it. An epoch below the client's means Redis lost the seek itself: it is
-- restored, and the offset checks below judge the offsets.
local client_epoch = tonumber(ARGV[3])
local sk = redis.call('HMGET', K_CONTROL, 'seek_epoch', 'replaying')
local epoch = tonumber(sk[1] or '0')
if client_epoch < epoch then return {'seeked', epoch} end
if client_epoch > epoch then redis.call('HSET', K_CONTROL, 'seek_epoch', client_epoch) end
local replaying = tonumber(sk[2] or '0') > 0
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
close_excess(max_event, history_limit, closed)
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
  -- below this offset the partition is being read again after a seek back
  local mark = nil
  if replaying then
    mark = tonumber(redis.call('HGET', K_CONTROL, 'replay|' .. key) or '-1')
  end
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
      if mark ~= nil and a < mark then replay = true end
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
  if mark ~= nil and mark >= 0 and stored_of[key] >= mark then  -- the replay is over here
    redis.call('HDEL', K_CONTROL, 'replay|' .. key)
    redis.call('HINCRBY', K_CONTROL, 'replaying', -1)
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

_SHRINK = (
    _PRELUDE
    + r"""
-- ARGV: max_event, history_limit
local closed = {}
close_excess(tonumber(ARGV[1]), tonumber(ARGV[2]), closed)
if #closed > 0 then save_window() end
return {count, wid, opened or -1, now, closed}
"""
)

_SEEK = (
    _PRELUDE
    + r"""
-- ARGV: window action (close | discard), history_limit, then ONE space-separated string:
--   n, (topic, partition, target)*  (target: the next offset to count from now on)
-- In one step: the open window is closed (reason seek, its pipeline runs) or discarded, the
-- stored offsets are rewritten, the epoch is raised (every instance re-reads its positions
-- before it counts again), and each partition moved back is marked as replaying up to where
-- it had been counted (the windows holding those events are recorded as replays).
local action = ARGV[1]
local history_limit = tonumber(ARGV[2])
local A = {}
for tok in string.gmatch(ARGV[3], '%S+') do A[#A + 1] = tok end
local epoch = redis.call('HINCRBY', K_CONTROL, 'seek_epoch', 1)
local closed_id, n = -1, count
if count > 0 then
  if action == 'close' then
    closed_id = close_window('seek', history_limit)
  else
    redis.call('HINCRBY', K_STATS, 'discarded', count)
    count, opened, replay, window_dirty = 0, nil, false, true
    ranges, range_order = {}, {}
  end
end
local before = {}
local reread, skipped = 0, 0
local i = 2
for _ = 1, tonumber(A[1]) do
  local key = A[i] .. '|' .. A[i + 1]
  local target = tonumber(A[i + 2])
  i = i + 3
  local old = tonumber(redis.call('HGET', K_OFFSETS, key) or '-1')
  table.insert(before, old)
  redis.call('HSET', K_OFFSETS, key, target)
  local mkey = 'replay|' .. key
  local mark = tonumber(redis.call('HGET', K_CONTROL, mkey) or '-1')
  local counted_to = math.max(old, mark)  -- past a replay's start: counted once already
  if counted_to > target then
    redis.call('HSET', K_CONTROL, mkey, counted_to)
  elseif mark >= 0 then
    redis.call('HDEL', K_CONTROL, mkey)
  end
  if old >= 0 and target < old then reread = reread + old - target end
  if counted_to >= 0 and target > counted_to then skipped = skipped + target - counted_to end
end
local marks = 0
for _, f in ipairs(redis.call('HKEYS', K_CONTROL)) do
  if string.sub(f, 1, 7) == 'replay|' then marks = marks + 1 end
end
redis.call('HSET', K_CONTROL, 'replaying', marks)
redis.call('HINCRBY', K_STATS, 'seeks', 1)
if reread > 0 then redis.call('HINCRBY', K_STATS, 'seek_reread', reread) end
if skipped > 0 then redis.call('HINCRBY', K_STATS, 'seek_skipped', skipped) end
save_window()
return {epoch, closed_id, n, now, before, reread, skipped}
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


class SeekMoved(Exception):
    """A seek moved the consumer's stored offsets since this client last read them (its seek
    epoch is behind ``epoch``): nothing was applied; the client re-reads its positions."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        super().__init__(f"a seek moved the stored offsets (epoch {epoch})")


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
class ThresholdResult:
    """The open window after a new ``max_event`` was applied to it."""

    count: int
    window_id: int
    opened_at_ms: int | None
    redis_now_ms: int
    closed_window_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SeekApplied:
    """What the seek script did: the new epoch, the open window closed (``closed_window_id``,
    -1 when it was empty or discarded) holding ``window_count`` events, the stored offsets
    before the seek (-1: none), and the offsets to be read again and skipped."""

    epoch: int
    closed_window_id: int
    window_count: int
    redis_now_ms: int
    before: dict[TopicPartition, int]
    reread: int
    skipped: int


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
        self._shrink = redis.register_script(_SHRINK)
        self._seek = redis.register_script(_SEEK)

    async def apply(
        self,
        deltas: list[PartitionDelta],
        expected: dict[TopicPartition, int] | None = None,
        window_floor: int = 0,
        epoch: int = 0,
    ) -> ApplyResult:
        """Count ``deltas`` in one atomic step. ``expected`` holds, per topic-partition, the
        next offset the caller last saw stored: Redis holding less raises
        :class:`RedisBehind` (nothing applied); Redis holding none re-seeds it and reports it
        in ``lost``, and the window id then starts at ``window_floor`` at least. ``epoch`` is
        the seek epoch the caller last read with its positions: a later seek raises
        :class:`SeekMoved` (nothing applied)."""
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
        args: list[Any] = [self.max_event, self.history_limit, epoch, " ".join(map(str, nums))]
        res = await self._apply(keys=self._keys, args=args)
        if isinstance(res[0], bytes | str):
            if _str(res[0]) == "seeked":
                raise SeekMoved(_int(res[1]))
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
        res = await self._close(
            keys=self._keys, args=self._close_args(reason, expected_window_id, max_time_ms)
        )
        return self.close_result(res)

    def _close_args(
        self, reason: TriggerReason, expected_window_id: int | None, max_time_ms: int
    ) -> list[Any]:
        return [
            str(reason),
            -1 if expected_window_id is None else expected_window_id,
            max_time_ms,
            "1" if reason == TriggerReason.MANUAL else "0",
            self.history_limit,
        ]

    def queue_close(
        self,
        pipe: Any,
        reason: TriggerReason,
        *,
        expected_window_id: int | None = None,
        max_time_ms: int = 0,
    ) -> None:
        """Add :meth:`close` to a pipeline as an EVALSHA (its answer: :meth:`close_result`;
        a ``NoScriptError`` answer: load :attr:`close_script` and send it again)."""
        args = self._close_args(reason, expected_window_id, max_time_ms)
        # by execute_command: a cluster pipeline sends it to the slot of the keys (its evalsha
        # method refuses)
        pipe.execute_command("EVALSHA", self._close.sha, len(self._keys), *self._keys, *args)

    @property
    def close_script(self) -> str:
        return _CLOSE

    @staticmethod
    def close_result(res: Any) -> CloseResult:
        return CloseResult(_str(res[0]), _int(res[1]), _int(res[2]), _int(res[3]))

    async def set_max_event(self, max_event: int) -> ThresholdResult:
        """Apply a new count threshold to the open window: when it already holds
        ``max_event`` events or more, windows of exactly ``max_event`` close at once (the
        excess carried over, as a batch that overshoots). Later batches count to the new
        threshold (and so does an apply that runs with it first: it closes the excess too)."""
        self.max_event = max_event
        res = await self._shrink(keys=self._keys, args=[max_event, self.history_limit])
        opened = _int(res[2])
        return ThresholdResult(
            count=_int(res[0]),
            window_id=_int(res[1]),
            opened_at_ms=None if opened < 0 else opened,
            redis_now_ms=_int(res[3]),
            closed_window_ids=tuple(_int(x) for x in res[4]),
        )

    async def seek(
        self, targets: dict[TopicPartition, int], *, discard_window: bool = False
    ) -> SeekApplied:
        """Move the stored next-offset-to-count of each topic-partition in ``targets``, in one
        atomic step with closing (reason ``seek``) or discarding the open window."""
        order = sorted(targets)
        nums: list[int | str] = [len(order)]
        for tp in order:
            nums += (tp.topic, tp.partition, targets[tp])
        res = await self._seek(
            keys=self._keys,
            args=[
                "discard" if discard_window else "close",
                self.history_limit,
                " ".join(map(str, nums)),
            ],
        )
        return SeekApplied(
            epoch=_int(res[0]),
            closed_window_id=_int(res[1]),
            window_count=_int(res[2]),
            redis_now_ms=_int(res[3]),
            before={tp: _int(v) for tp, v in zip(order, res[4], strict=True)},
            reread=_int(res[5]),
            skipped=_int(res[6]),
        )

    async def positions(
        self, partitions: list[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], int]:
        """The stored next offset to count of each topic-partition Redis knows, and the seek
        epoch they belong to, read together."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(self.keys.control, "seek_epoch")
        if partitions:
            pipe.hmget(
                self.keys.offsets, [offset_field(tp.topic, tp.partition) for tp in partitions]
            )
        res = await pipe.execute()
        epoch = _int(res[0] or 0)
        if not partitions:
            return {}, epoch
        values = res[1]
        return (
            {tp: _int(v) for tp, v in zip(partitions, values, strict=True) if v is not None},
            epoch,
        )

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
