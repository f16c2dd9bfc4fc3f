"""The fleet as Redis sees it: one status model for the CLI, the HTTP API and the TUI.

:class:`Fleet` needs only the config (to find Redis and the consumers) and works from any
process, whether or not an instance runs there. Reads merge each consumer's shared counting
state with the heartbeats (status snapshots with a TTL) of the live instances; steering acts
through the same Redis scripts and flags the engine itself uses. A process that runs no engine
(the CLI) sees the consumers defined at runtime through :meth:`Fleet.as_running`.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from kafkaconsole.config.models import AlertRule, AppConfig, ConsumerConfig
from kafkaconsole.config.secrets import mask_config, mask_strings, masker
from kafkaconsole.engine.alerts import rules_for, stored_alert_fields
from kafkaconsole.engine.audit import (
    AuditLog,
    cli_instance,
    reset_detail,
    trigger_detail,
)
from kafkaconsole.engine.control import FleetControl, PauseState, actor
from kafkaconsole.engine.counting import CloseResult, ResetResult, WindowCounter
from kafkaconsole.engine.errors import ReadOnlyError, UnknownConsumerError
from kafkaconsole.engine.fleet_status import (
    ConsumerInfo,
    ConsumerStatus,
    FleetStatus,
    InstanceSummary,
)
from kafkaconsole.engine.health import (
    VerdictName,
    consumer_time_lag,
    fleet_verdict,
    sample_from_status,
    time_lag_seconds,
    verdict,
)
from kafkaconsole.engine.keys import ConsumerKeys, FleetKeys, offset_field, tagged_layout
from kafkaconsole.engine.records import HistoryEntry, TriggerReason, iso_ms, stored_run
from kafkaconsole.engine.redis_cluster import mget_any
from kafkaconsole.engine.runtime_consumers import RuntimeConsumers, RuntimeMerge, merge_runtime
from kafkaconsole.engine.seek import (
    SeekRefusedError,
    SeekResult,
    older_instances,
    parse_target,
    parse_window,
    plan_seek,
)
from kafkaconsole.engine.status import (
    TriggerSummary,
    consumer_lag,
    fleet_state,
    partition_lag,
)
from kafkaconsole.engine.thresholds import window_progress
from kafkaconsole.engine.topic_lifecycle import AcceptResult, Lifecycle, TopicLifecycle

TRIGGER_REASONS = tuple(str(r) for r in TriggerReason)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def window_closes_at(opened_ms: int | None, max_time: float) -> int | None:
    """When the open window's time trigger fires (epoch ms), or None when no window is open."""
    if opened_ms is None or not math.isfinite(max_time):
        return None
    return opened_ms + int(max_time * 1000)


def window_time_left(opened_ms: int | None, max_time: float, now_ms: int) -> float | None:
    """Seconds before the open window's time trigger (0 when due), None when none is open."""
    closes_ms = window_closes_at(opened_ms, max_time)
    if closes_ms is None:
        return None
    return round(max(0, closes_ms - now_ms) / 1000, 3)


def backlog_of(length: Any, oldest: Any, now_ms: int) -> tuple[int, float | None]:
    """Windows waiting in a dispatch stream (its XLEN: entries are deleted once their run's
    final status is recorded) and the age in seconds of the oldest (from its entry id, the
    Redis time it was queued; a re-dispatched window waits from its re-dispatch)."""
    depth = int(length or 0)
    if not depth or not oldest:
        return depth, None
    queued_ms = int(_s(oldest[0][0]).split("-", 1)[0])
    return depth, round(max(now_ms - queued_ms, 0) / 1000, 3)


def instance_summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    """An instance's heartbeat without the per-consumer detail (consumers as ids)."""
    return {k: v for k, v in snapshot.items() if k != "consumers"} | {
        "consumers": [c["consumer_id"] for c in snapshot.get("consumers", [])]
    }


#: Registry entries of instances silent this long are dropped by the next heartbeat written.
REGISTRY_FORGET_MS = 3_600_000


async def publish_heartbeat(
    redis: Redis, keys: FleetKeys, instance_id: str, snapshot: object, ttl_s: int
) -> None:
    """Write an instance's heartbeat (expiring after ``ttl_s``) and list it in the registry
    the fleet reads instead of scanning the keyspace, in one round trip. ``snapshot`` is
    anything orjson serialises (a dict, or the frozen snapshot dataclasses themselves)."""
    now_ms = int(time.time() * 1000)
    pipe = redis.pipeline(transaction=True)
    pipe.set(keys.instance(instance_id), orjson.dumps(snapshot), ex=ttl_s)
    pipe.zadd(keys.instances, {instance_id: now_ms})
    pipe.zremrangebyscore(keys.instances, "-inf", now_ms - REGISTRY_FORGET_MS)
    await pipe.execute()


async def withdraw_heartbeat(redis: Redis, keys: FleetKeys, instance_id: str) -> None:
    """An instance stopping: its heartbeat and registry entry go at once."""
    pipe = redis.pipeline(transaction=True)
    pipe.delete(keys.instance(instance_id))
    pipe.zrem(keys.instances, instance_id)
    await pipe.execute()


@dataclass
class _Shared:
    """One consumer's first read: its shared counting state (from Redis) merged with what
    the live instances' heartbeats say of it, before the follow-up reads."""

    cfg: ConsumerConfig
    pause: PauseState
    count: int
    window_id: int
    opened: int | None
    stats: dict[str, int]
    last: HistoryEntry | None  # the newest trigger record
    rules: list[AlertRule]
    mine: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # per (topic, partition)
    owners: dict[tuple[str, int], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    unowned: list[tuple[str, int]] = field(default_factory=list)
    rate: float = 0.0
    dlq: int = 0
    errors_text: str | None = None
    any_error: str | None = None
    processor_stall: str | None = None
    reported_ms: int = 0
    reported: dict[str, Any] | None = None  # the newest heartbeat's view of this consumer
    backlog: int = 0  # windows waiting in the dispatch stream
    backlog_age: float | None = None  # seconds the oldest of them has waited
    lifecycle: Lifecycle = field(default_factory=Lifecycle)  # re-created topics, retention losses

    @classmethod
    def of(cls, cfg: ConsumerConfig, instances: list[dict[str, Any]], raw: list[Any]) -> _Shared:
        control, count_raw, (wid, opened), stats_raw, last = raw
        s = cls(
            cfg=cfg,
            pause=PauseState.parse(control),
            count=int(count_raw or 0),
            window_id=int(wid or 1),
            opened=int(opened) if opened else None,
            stats={_s(k): int(v) for k, v in stats_raw.items()},
            last=HistoryEntry.parse(last[0][1]) if last else None,
            rules=[],
        )
        s._merge(instances)
        return s

    def _merge(self, instances: list[dict[str, Any]]) -> None:
        cid = self.cfg.consumer_id
        # an instance of an earlier version names no topic: it read the one kafka_topic
        default_topic = self.cfg.topics[0] if len(self.cfg.topics) == 1 else ""
        for inst in instances:
            for c in inst.get("consumers", []):
                if c["consumer_id"] != cid:
                    continue
                self.mine.append((inst["instance_id"], c))
                self.rate += float(c.get("rate") or 0)
                self.dlq += int(c.get("dlq") or 0)
                taken = int(inst.get("taken_at_ms") or 0)
                if taken >= self.reported_ms:
                    self.reported_ms, self.reported = taken, c
                for p in c.get("partitions", []):
                    # during a rebalance (or until a dead instance's heartbeat expires) two
                    # snapshots may claim a partition: the newest snapshot wins
                    topic = p.get("topic") or default_topic
                    key = (topic, int(p["partition"]))
                    seen = self.owners.get(key)
                    if seen is None or taken > seen[0]:
                        entry = {**p, "topic": topic, "owner": inst["instance_id"]}
                        self.owners[key] = (taken, entry)
                self.processor_stall = self.processor_stall or c.get("processor_stall")
                if c.get("state") == "error":
                    self.errors_text = c.get("last_error")
                self.any_error = self.any_error or c.get("last_error")
        # Partitions of the topic that no live instance owns (the consumer is stopped, between
        # rebalances, or has fewer members than partitions): their lag is measured as the
        # broker's end offset minus the next offset Redis holds as counted (unknown when
        # nothing was counted there yet).
        for _, snapshot in self.mine:
            for item in snapshot.get("topic_end_offsets") or ():
                # (topic, partition, end); an earlier version's (partition, end)
                topic, partition, end = item if len(item) == 3 else (default_topic, *item)
                key = (str(topic), int(partition))
                self.ends[key] = max(int(end), self.ends.get(key, 0))
        self.unowned = sorted(set(self.ends) - set(self.owners))


#: How many consumers a fleet read judges between two yields to the event loop: a read of
#: hundreds of consumers is a few hundred ms of CPU, which must not hold up the time triggers
#: and heartbeats that share the loop.
YIELD_EVERY = 25


async def _yield_every(n: int) -> None:
    """Let the event loop run other tasks after every :data:`YIELD_EVERY` consumers."""
    if n and n % YIELD_EVERY == 0:
        await asyncio.sleep(0)


class Fleet:
    """Read and steer every instance of a config's fleet through Redis."""

    def __init__(self, redis: Redis, config: AppConfig, *, via: str = "cli") -> None:
        self.redis = redis
        self.config = config
        self.prefix = config.redis.key_prefix
        self.tagged = tagged_layout(config.redis)
        self.fleet_keys = FleetKeys(self.prefix, self.tagged)
        self.control = FleetControl(redis, self.prefix, self.tagged)
        # every string read back (errors, run details) is masked: no secret leaves through
        # the CLI or the HTTP API; control actions are recorded in the audit stream
        self.mask = masker(config)
        self.via = via
        self.audit = AuditLog(redis, self.prefix, mask=self.mask, tagged=self.tagged)
        #: set by :meth:`as_running`: how the runtime definitions merged into ``config``
        self.runtime: RuntimeMerge | None = None
        #: set by :meth:`as_running` when the runtime definitions could not be read: why
        self.runtime_unread: str | None = None

    async def as_running(self) -> Fleet:
        """This fleet as it runs: the config's consumers and those defined at runtime that
        are valid with it (a consumer of the config wins on a clash, as in every instance),
        read from Redis once. When they cannot be read, the config's consumers alone, and the
        reason kept for the error of an unknown id (every other read fails as before)."""
        try:
            definitions = await RuntimeConsumers(self.redis, self.prefix, self.tagged).definitions()
        except (RedisError, OSError) as exc:
            fleet = Fleet(self.redis, self.config, via=self.via)
            reason = self.mask(str(exc) or type(exc).__name__)
            fleet.runtime_unread = f"the consumers defined at runtime could not be read: {reason}"
            return fleet
        merge = merge_runtime(self.config, definitions)
        fleet = Fleet(self.redis, merge.config, via=self.via)
        fleet.runtime = merge
        return fleet

    # ---- helpers ---------------------------------------------------------------------------
    def consumer_cfg(self, consumer_id: str) -> ConsumerConfig:
        try:
            return self.config.consumer(consumer_id)
        except KeyError:
            raise UnknownConsumerError(
                consumer_id,
                [c.consumer_id for c in self.config.consumers],
                note=self._unknown_note(consumer_id),
            ) from None

    def _unknown_note(self, consumer_id: str) -> str | None:
        """Why an id this fleet does not know may exist all the same."""
        if self.runtime_unread is not None:
            return self.runtime_unread
        problems = self.runtime.problems_of(consumer_id) if self.runtime is not None else []
        if problems:
            return "its runtime definition does not fit this configuration: " + "; ".join(problems)
        return None

    def keys(self, consumer_id: str) -> ConsumerKeys:
        return ConsumerKeys(self.prefix, consumer_id, self.tagged)

    def counter(self, consumer_id: str) -> WindowCounter:
        cfg = self.consumer_cfg(consumer_id)
        return WindowCounter(
            self.redis,
            self.keys(consumer_id),
            max_event=cfg.max_event,
            history_limit=self.config.redis.history_limit,
        )

    # ---- reads -----------------------------------------------------------------------------
    async def instances(self) -> list[dict[str, Any]]:
        """Live instances' latest snapshots (heartbeat keys that have not expired), found
        through the registry :func:`publish_heartbeat` keeps: two round trips however large
        the keyspace (scanning it took one per 500 keys)."""
        ids = [_s(i) for i in await self.redis.zrange(self.fleet_keys.instances, 0, -1)]
        if ids:
            keys = [self.fleet_keys.instance(i) for i in ids]
        else:  # heartbeats written before the registry existed
            keys = [
                k
                async for k in self.redis.scan_iter(
                    match=self.fleet_keys.instance_pattern, count=500
                )
            ]
        if not keys:
            return []
        values = await mget_any(self.redis, keys)
        out = [orjson.loads(v) for v in values if v]
        out.sort(key=lambda i: i["instance_id"])
        return list(mask_strings(out, self.mask))

    async def history(self, consumer_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Trigger records, newest first, each with its pipeline run status."""
        cfg = self.consumer_cfg(consumer_id)
        keys = self.keys(consumer_id)
        raw: Any = await self.redis.xrevrange(keys.history, count=limit)
        entries = [(entry_id, fields) for entry_id, fields in raw or [] if fields]
        if not entries:
            return []
        wids = [_s(fields[b"window_id"]) for _, fields in entries]
        runs = await self.redis.hmget(keys.runs, wids)
        out = []
        for (_, fields), run_raw in zip(entries, runs, strict=True):
            entry = HistoryEntry.parse(fields)
            run = stored_run(run_raw)
            out.append(
                {
                    "consumer_id": consumer_id,
                    "pipeline_name": cfg.pipeline_name,
                    "connection_id": cfg.connection_id,
                    "job_type": cfg.job_type,
                    "window_id": entry.window_id,
                    "idempotency_key": f"{consumer_id}:{entry.window_id}",
                    "reason": entry.reason,
                    "count": entry.count,
                    "opened_at": iso_ms(entry.opened_at_ms),
                    "closed_at": iso_ms(entry.closed_at_ms),
                    "offsets": entry.offsets,
                    **({"replay": True} if entry.replay else {}),
                    "status": run.get("status", "pending"),
                    "run": run,
                }
            )
        return list(mask_strings(out, self.mask))

    async def run_status(self, consumer_id: str, window_id: int) -> dict[str, Any]:
        """The pipeline run of one closed window as the ``runs`` hash records it (``{"status":
        "pending"}`` until a dispatcher writes it), secrets masked."""
        self.consumer_cfg(consumer_id)
        raw = await self.redis.hget(self.keys(consumer_id).runs, str(window_id))
        run = orjson.loads(raw) if raw else {"status": "pending"}
        return dict(mask_strings(run, self.mask))

    async def read(self) -> FleetStatus:
        """The whole fleet's status, in a constant number of Redis round trips whatever the
        number of consumers: the live heartbeats (SCAN + MGET), then one pipeline of every
        consumer's shared state, then one of what that first read points to (the last
        trigger's run, stored offsets of partitions no one owns, firing alerts)."""
        instances = await self.instances()
        cfgs = list(self.config.consumers)
        if not cfgs:
            return FleetStatus(
                consumers=(),
                instances=tuple(InstanceSummary(**instance_summary(i)) for i in instances),
            )
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute_command("TIME")  # a cluster pipeline refuses pipe.time()
        for cfg in cfgs:
            k = self.keys(cfg.consumer_id)
            pipe.hgetall(k.control)
            pipe.get(k.events)
            pipe.hmget(k.window, ["id", "opened_at"])
            pipe.hgetall(k.stats)
            pipe.xrevrange(k.history, count=1)
            pipe.xlen(k.dispatch)
            pipe.xrange(k.dispatch, count=1)
            pipe.hgetall(k.lifecycle)
        res = await pipe.execute()
        sec, usec = res[0]
        now_ms = int(sec) * 1000 + int(usec) // 1000
        shared = []
        for n, cfg in enumerate(cfgs):
            await _yield_every(n)
            sh = _Shared.of(cfg, instances, res[1 + 8 * n : 6 + 8 * n])
            sh.backlog, sh.backlog_age = backlog_of(res[6 + 8 * n], res[7 + 8 * n], now_ms)
            sh.lifecycle = Lifecycle.parse(res[8 + 8 * n])
            sh.rules = rules_for(self.config.monitoring.alerts, sh.cfg.consumer_id)
            shared.append(sh)

        # what the first read points to, for every consumer in one more pipeline
        follow = self.redis.pipeline(transaction=False)
        slots: list[tuple[int, int, int]] = []  # per consumer: commands for run, offsets, alerts
        for s in shared:
            k = self.keys(s.cfg.consumer_id)
            runs = offsets = alerts = 0
            if s.last is not None:
                follow.hget(k.runs, str(s.last.window_id))
                runs = 1
            if s.unowned:
                follow.hmget(k.offsets, [offset_field(t, p) for t, p in s.unowned])
                offsets = 1
            if s.rules:
                # one consumer's alert keys share its slot; MGET by execute_command, which
                # a cluster pipeline sends (its mget method refuses even one slot)
                alert_keys = [k.alert(r.rule_id) for r in s.rules]
                follow.execute_command("MGET", *alert_keys)
                alerts = 1
            slots.append((runs, offsets, alerts))
        more = await follow.execute() if any(sum(x) for x in slots) else []
        consumers = []
        i = 0
        for n, (s, (runs, offsets, alerts)) in enumerate(zip(shared, slots, strict=True)):
            await _yield_every(n)
            run_raw = more[i] if runs else None
            stored_raw = more[i + runs] if offsets else []
            alert_raw = more[i + runs + offsets] if alerts else []
            i += runs + offsets + alerts
            consumers.append(self._consumer_status(s, run_raw, stored_raw, alert_raw, now_ms))
        return FleetStatus(
            consumers=tuple(consumers),
            instances=tuple(InstanceSummary(**instance_summary(i)) for i in instances),
        )

    async def consumers(self) -> list[dict[str, Any]]:
        """Every configured consumer's fleet-wide status (``status --json``'s ``consumers``)."""
        return [c.to_json() for c in (await self.read()).consumers]

    def _consumer_status(
        self,
        s: _Shared,
        run_raw: bytes | None,
        stored_raw: list[Any],
        alert_raw: list[Any],
        now_ms: int,
    ) -> ConsumerStatus:
        """One consumer's status: the shared counting state, the live instances' reports of
        it, and the verdict (see :func:`~kafkaconsole.engine.health.fleet_verdict`)."""
        cfg, cid, pause = s.cfg, s.cfg.consumer_id, s.pause
        owners = dict(s.owners)
        stored = {p: int(v) for p, v in zip(s.unowned, stored_raw, strict=False) if v is not None}
        for key in s.unowned:
            position = stored.get(key)
            end = s.ends[key]
            owners[key] = (
                0,
                {
                    "topic": key[0],
                    "partition": key[1],
                    "position": position,
                    "highwater": end,
                    "lag": partition_lag(end, position),
                    "time_lag_seconds": None,
                    "oldest_ts_ms": None,
                    "owner": None,
                },
            )
        partitions = [entry for _, (_, entry) in sorted(owners.items())]
        for p in partitions:
            if "oldest_ts_ms" in p:
                p["time_lag_seconds"] = time_lag_seconds(p.get("lag"), p["oldest_ts_ms"], now_ms)
        time_lag = consumer_time_lag([p.get("time_lag_seconds") for p in partitions])
        state = fleet_state(pause.paused, [c.get("state") or "" for _, c in s.mine])
        last_trigger = None
        if s.last is not None:
            last_trigger = TriggerSummary.of(s.last, stored_run(run_raw)).to_json_dict()
        stats, opened, count = s.stats, s.opened, s.count
        rate = round(s.rate, 1)
        eta = window_progress(
            count, cfg.max_event, opened, cfg.max_time, 0.0 if state == "paused" else rate, now_ms
        ).eta_seconds
        status = {
            "consumer_id": cid,
            "kafka_topic": cfg.topic_label,
            "topics": list(cfg.topics),
            "topic_pattern": cfg.topic_pattern,
            "pipeline_name": cfg.pipeline_name,
            "job_type": cfg.job_type,
            "state": state,
            "paused_by": pause.by if pause.paused else None,
            "paused_at_ms": pause.since_ms if pause.paused else None,
            "count": count,
            "max_event": cfg.max_event,
            "max_time": cfg.max_time,
            "window_id": s.window_id,
            "window_opened_at": iso_ms(opened),
            "window_opened_at_ms": opened,
            "time_left": window_time_left(opened, cfg.max_time, now_ms),
            "fill_ratio": round(min(count / cfg.max_event, 1.0), 4),
            "total": stats.get("total", 0),
            "errors": stats.get("errors", 0),
            "filtered": stats.get("filtered", 0),
            "skipped": stats.get("skipped", 0),
            "windows": stats.get("windows", 0),
            "windows_by_reason": {r: stats.get(f"windows_{r}", 0) for r in TRIGGER_REASONS},
            "discarded": stats.get("discarded", 0),
            "dlq": s.dlq,
            "rate": rate,
            "lag": consumer_lag(p.get("lag") for p in partitions),
            "partitions": partitions,
            "instances": [iid for iid, _ in s.mine],
            "last_trigger": last_trigger,
            "last_error": s.errors_text or s.any_error,
            "processor_stall": s.processor_stall,
            "time_lag_seconds": time_lag,
            "time_to_trigger_seconds": round(eta, 3) if eta is not None else None,
            "reported_at_ms": s.reported_ms or None,
            "backlog": s.backlog,
            "backlog_age_seconds": s.backlog_age,
            "max_backlog": cfg.max_backlog,
            "backlog_policy": cfg.backlog_policy,
            "retention_lost": stats.get("retention_lost", 0),
            "retention_losses": s.lifecycle.loss_rows(),
            "topic_resets": s.lifecycle.reset_rows(),
            "on_topic_reset": cfg.on_topic_reset,
            # judged below, from the status itself
            "verdict": str(VerdictName.OK),
            "verdict_reason": None,
            "verdict_since_ms": None,
            "alerts": [
                stored_alert_fields(raw, rule)
                for rule, raw in zip(s.rules, alert_raw, strict=False)
                if raw is not None
            ],
        }
        unjudged = ConsumerStatus.model_validate(mask_strings(status, self.mask))
        now = now_ms / 1000
        instant = verdict([sample_from_status(unjudged, now)], self.config.monitoring, now)
        name, reason, since_ms = fleet_verdict(instant, s.reported)
        return unjudged.model_copy(
            update={"verdict": name, "verdict_reason": reason, "verdict_since_ms": since_ms}
        )

    async def status(self) -> dict[str, Any]:
        """``{"consumers": [...], "instances": [...]}``: the model ``status --json`` prints."""
        return (await self.read()).to_json()

    async def instance_summaries(self) -> list[dict[str, Any]]:
        """The live instances as ``status --json`` lists them (consumers as ids)."""
        return [InstanceSummary(**instance_summary(i)).to_json() for i in await self.instances()]

    async def consumer_status(self, consumer_id: str) -> ConsumerStatus:
        self.consumer_cfg(consumer_id)
        for c in (await self.read()).consumers:
            if c.consumer_id == consumer_id:
                return c
        raise UnknownConsumerError(consumer_id, [])  # pragma: no cover - checked above

    async def consumer(self, consumer_id: str) -> dict[str, Any]:
        return (await self.consumer_status(consumer_id)).to_json()

    async def info(self, consumer_id: str, triggers: int = 10) -> dict[str, Any]:
        """Everything about one consumer: ``GET /consumer/info/<id>`` and ``info --json``.

        The key set is part of the contract (tests pin it): config and pipeline with secrets
        masked, state, window progress, per-partition lag, totals, last triggers, errors.
        """
        cfg = self.consumer_cfg(consumer_id)
        c = await self.consumer_status(consumer_id)
        history = await self.history(consumer_id, limit=triggers)
        masked = mask_config(self.config)
        index = [x.consumer_id for x in self.config.consumers].index(consumer_id)
        info = {
            "consumer_id": consumer_id,
            "kafka_topic": cfg.topic_label,
            "topics": list(cfg.topics),
            "topic_pattern": cfg.topic_pattern,
            "pipeline_name": cfg.pipeline_name,
            "job_type": cfg.job_type,
            "state": c.state,
            "paused_by": c.paused_by,
            "paused_at_ms": c.paused_at_ms,
            "instances": list(c.instances),
            "config": masked["consumers"][index],
            "pipeline": masked["pipelines"].get(cfg.pipeline_name),
            "window": {
                "id": c.window_id,
                "count": c.count,
                "max_event": cfg.max_event,
                "max_time": cfg.max_time,
                "fill_ratio": c.fill_ratio,
                "opened_at": c.window_opened_at,
                "time_left": c.time_left,
                "closes_at": iso_ms(window_closes_at(c.window_opened_at_ms, cfg.max_time)),
            },
            "lag": c.lag,
            "time_lag_seconds": c.time_lag_seconds,
            "time_to_trigger_seconds": c.time_to_trigger_seconds,
            "backlog": c.backlog,
            "backlog_age_seconds": c.backlog_age_seconds,
            "verdict": c.verdict,
            "verdict_reason": c.verdict_reason,
            "verdict_since_ms": c.verdict_since_ms,
            "alerts": list(c.alerts),
            "partitions": list(c.partitions),
            "rate": c.rate,
            "totals": {
                "events": c.total,
                "filtered": c.filtered,
                "skipped": c.skipped,
                "discarded": c.discarded,
                "windows": c.windows,
                "windows_by_reason": c.windows_by_reason,
            },
            "last_trigger": c.last_trigger,
            "triggers": history,
            "errors": {"count": c.errors, "dlq": c.dlq, "last_error": c.last_error},
        }
        return ConsumerInfo.model_validate(info).to_json()

    # ---- steering --------------------------------------------------------------------------
    # Each action refuses in read-only mode and is recorded in the audit stream (who: this
    # process's user and instance, via: this Fleet's face, what, when, result).
    # The engine's own controls (console, HTTP API) come through here too, naming their face
    # (``via``) and instance: the refusals below exist once.
    def _audited(
        self, action: str, consumer_id: str, user: str | None, via: str | None, instance: str | None
    ) -> Any:
        self.consumer_cfg(consumer_id)
        if self.config.ui.read_only:
            raise ReadOnlyError(action)
        return self.audit.action(
            action,
            consumer_id,
            via=via or self.via,
            user=user or actor(),
            instance=instance or cli_instance(),
        )

    async def pause(
        self,
        consumer_id: str,
        by: str | None = None,
        user: str | None = None,
        *,
        via: str | None = None,
        instance: str | None = None,
    ) -> None:
        async with self._audited("pause", consumer_id, user, via, instance) as outcome:
            await self.control.set_paused(consumer_id, True, by)
            outcome.detail = "paused on every instance"

    async def resume(
        self,
        consumer_id: str,
        user: str | None = None,
        *,
        via: str | None = None,
        instance: str | None = None,
    ) -> None:
        async with self._audited("resume", consumer_id, user, via, instance) as outcome:
            await self.control.set_paused(consumer_id, False)
            outcome.detail = "resumed on every instance"

    async def reset(
        self,
        consumer_id: str,
        user: str | None = None,
        *,
        via: str | None = None,
        instance: str | None = None,
    ) -> ResetResult:
        async with self._audited("reset", consumer_id, user, via, instance) as outcome:
            res = await self.counter(consumer_id).reset()
            await self.control.announce(consumer_id, "reset")
            outcome.detail = reset_detail(res)
        return res

    async def seek(
        self,
        consumer_id: str,
        to: str,
        user: str | None = None,
        *,
        window: str = "close",
        partitions: list[int] | None = None,
        via: str | None = None,
        instance: str | None = None,
    ) -> SeekResult:
        """Move the consumer's position on every partition (or ``partitions``) to ``to``
        (:mod:`~kafkaconsole.engine.seek`), closing or discarding the open window, fleet-wide.
        The target is resolved again now: the plan a person confirmed may be seconds old."""
        target, how = parse_target(to), parse_window(window)
        async with self._audited("seek", consumer_id, user, via, instance) as outcome:
            older = older_instances(await self.instances(), consumer_id)
            if older:
                raise SeekRefusedError(
                    f"refusing to seek {consumer_id}: instance(s) {', '.join(older)} run a "
                    "release that does not follow seeks (upgrade them first)"
                )
            plan = await plan_seek(
                self.config, self.redis, consumer_id, target, window=how, partitions=partitions
            )
            applied = await self.counter(consumer_id).seek(
                plan.targets(), discard_window=how == "discard"
            )
            await self.control.announce(consumer_id, "seek")
            result = SeekResult.of(plan, applied)
            outcome.detail = result.detail()
        return result

    async def accept_reset(
        self,
        consumer_id: str,
        user: str | None = None,
        *,
        via: str | None = None,
        instance: str | None = None,
    ) -> AcceptResult:
        """Accept every reset of a re-created topic waiting for ``consumer_id``: each flagged
        partition counts again from its log start (kafkaconsole.engine.topic_lifecycle)."""
        async with self._audited("accept-reset", consumer_id, user, via, instance) as outcome:
            lifecycle = TopicLifecycle(
                self.redis, self.keys(consumer_id), self.config.redis.history_limit
            )
            res = await lifecycle.accept()
            parts = ", ".join(f"{r.topic}[{r.partition}]@{r.log_start}" for r in res.accepted)
            outcome.detail = f"accepted {parts or 'nothing (no reset waiting)'}"
        return res

    async def trigger(
        self,
        consumer_id: str,
        user: str | None = None,
        *,
        via: str | None = None,
        instance: str | None = None,
    ) -> CloseResult:
        async with self._audited("trigger", consumer_id, user, via, instance) as outcome:
            res = await self.counter(consumer_id).close(TriggerReason.MANUAL)
            await self.control.announce(consumer_id, "trigger")
            outcome.detail = trigger_detail(res)
        return res
