"""The fleet as Redis sees it: one status model for the CLI, the HTTP API and the TUI.

:class:`Fleet` needs only the config (to find Redis and the consumers) and works from any
process, whether or not an instance runs there. Reads merge each consumer's shared counting
state with the heartbeats (status snapshots with a TTL) of the live instances; steering acts
through the same Redis scripts and flags the engine itself uses.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from redis.asyncio import Redis

from kafkaconsole.config.models import AppConfig, ConsumerConfig
from kafkaconsole.config.secrets import mask_config, mask_strings, masker
from kafkaconsole.engine.alerts import active_alerts
from kafkaconsole.engine.audit import (
    AuditLog,
    ReadOnlyError,
    cli_instance,
    reset_detail,
    trigger_detail,
)
from kafkaconsole.engine.control import FleetControl, actor
from kafkaconsole.engine.counting import CloseResult, ResetResult, WindowCounter
from kafkaconsole.engine.health import (
    VerdictName,
    consumer_time_lag,
    sample_from_status,
    time_lag_seconds,
    verdict,
)
from kafkaconsole.engine.keys import ConsumerKeys, FleetKeys
from kafkaconsole.engine.records import TriggerReason, iso_ms
from kafkaconsole.engine.thresholds import window_progress

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


def instance_summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    """An instance's heartbeat without the per-consumer detail (consumers as ids)."""
    return {k: v for k, v in snapshot.items() if k != "consumers"} | {
        "consumers": [c["consumer_id"] for c in snapshot.get("consumers", [])]
    }


class UnknownConsumerError(LookupError):
    def __init__(self, consumer_id: str, known: list[str]) -> None:
        super().__init__(f"unknown consumer {consumer_id!r} (known: {', '.join(known) or 'none'})")
        self.consumer_id = consumer_id


class Fleet:
    """Read and steer every instance of a config's fleet through Redis."""

    def __init__(self, redis: Redis, config: AppConfig, *, via: str = "cli") -> None:
        self.redis = redis
        self.config = config
        self.prefix = config.redis.key_prefix
        self.fleet_keys = FleetKeys(self.prefix)
        self.control = FleetControl(redis, self.prefix)
        # every string read back (errors, run details) is masked: no secret leaves through
        # the CLI or the HTTP API; control actions are recorded in the audit stream
        self.mask = masker(config)
        self.via = via
        self.audit = AuditLog(redis, self.prefix, mask=self.mask)

    # ---- helpers ---------------------------------------------------------------------------
    def consumer_cfg(self, consumer_id: str) -> ConsumerConfig:
        try:
            return self.config.consumer(consumer_id)
        except KeyError:
            raise UnknownConsumerError(
                consumer_id, [c.consumer_id for c in self.config.consumers]
            ) from None

    def keys(self, consumer_id: str) -> ConsumerKeys:
        return ConsumerKeys(self.prefix, consumer_id)

    def counter(self, consumer_id: str) -> WindowCounter:
        cfg = self.consumer_cfg(consumer_id)
        return WindowCounter(
            self.redis,
            self.keys(consumer_id),
            topic=cfg.kafka_topic,
            max_event=cfg.max_event,
            history_limit=self.config.redis.history_limit,
        )

    # ---- reads -----------------------------------------------------------------------------
    async def instances(self) -> list[dict[str, Any]]:
        """Live instances' latest snapshots (heartbeat keys that have not expired)."""
        keys = [
            k async for k in self.redis.scan_iter(match=self.fleet_keys.instance_pattern, count=500)
        ]
        if not keys:
            return []
        values = await self.redis.mget(keys)
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
            f = {_s(k): _s(v) for k, v in fields.items()}
            run = orjson.loads(run_raw) if run_raw else {"status": "pending"}
            wid = int(f["window_id"])
            opened = int(f["opened_at"]) if f.get("opened_at") else None
            out.append(
                {
                    "consumer_id": consumer_id,
                    "pipeline_name": cfg.pipeline_name,
                    "connection_id": cfg.connection_id,
                    "job_type": cfg.job_type,
                    "window_id": wid,
                    "idempotency_key": f"{consumer_id}:{wid}",
                    "reason": f["reason"],
                    "count": int(f["count"]),
                    "opened_at": iso_ms(opened),
                    "closed_at": iso_ms(int(f["closed_at"])),
                    "offsets": orjson.loads(f.get("offsets") or "[]"),
                    "status": run.get("status", "pending"),
                    "run": run,
                }
            )
        return list(mask_strings(out, self.mask))

    async def consumers(self) -> list[dict[str, Any]]:
        """Every configured consumer's fleet-wide status (``status --json``'s ``consumers``)."""
        instances = await self.instances()
        ids = [c.consumer_id for c in self.config.consumers]
        if not ids:
            return []
        pauses = await self.control.pause_states(ids)
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for cid in ids:
            k = self.keys(cid)
            pipe.get(k.events)
            pipe.hmget(k.window, ["id", "opened_at"])
            pipe.hgetall(k.stats)
            pipe.xrevrange(k.history, count=1)
        res = await pipe.execute()
        sec, usec = res[0]
        now_ms = int(sec) * 1000 + int(usec) // 1000
        out = []
        for n, cfg in enumerate(self.config.consumers):
            count_raw, (wid, opened), stats_raw, last = res[1 + 4 * n : 5 + 4 * n]
            stats = {_s(k): int(v) for k, v in stats_raw.items()}
            out.append(
                await self._consumer_status(
                    cfg,
                    instances,
                    pauses[cfg.consumer_id],
                    int(count_raw or 0),
                    int(wid or 1),
                    int(opened) if opened else None,
                    stats,
                    last,
                    now_ms,
                )
            )
        return list(mask_strings(out, self.mask))

    async def _consumer_status(
        self,
        cfg: ConsumerConfig,
        instances: list[dict[str, Any]],
        pause: Any,
        count: int,
        window_id: int,
        opened: int | None,
        stats: dict[str, int],
        last: list[Any],
        now_ms: int,
    ) -> dict[str, Any]:
        cid = cfg.consumer_id
        mine = []
        owners: dict[int, tuple[int, dict[str, Any]]] = {}
        errors_text = None
        any_error = None
        processor_stall = None
        rate = 0.0
        dlq = 0
        reported_ms, reported = 0, None  # the newest heartbeat's view of this consumer
        for inst in instances:
            for c in inst.get("consumers", []):
                if c["consumer_id"] != cid:
                    continue
                mine.append((inst["instance_id"], c))
                rate += float(c.get("rate") or 0)
                dlq += int(c.get("dlq") or 0)
                taken = int(inst.get("taken_at_ms") or 0)
                if taken >= reported_ms:
                    reported_ms, reported = taken, c
                for p in c.get("partitions", []):
                    # during a rebalance (or until a dead instance's heartbeat expires) two
                    # snapshots may claim a partition: the newest snapshot wins
                    seen = owners.get(p["partition"])
                    if seen is None or taken > seen[0]:
                        owners[p["partition"]] = (taken, {**p, "owner": inst["instance_id"]})
                processor_stall = processor_stall or c.get("processor_stall")
                if c.get("state") == "error":
                    errors_text = c.get("last_error")
                any_error = any_error or c.get("last_error")
        owners.update(await self._unowned_partitions(cid, mine, owners))
        partitions = [entry for _, (_, entry) in sorted(owners.items())]
        lags = [p["lag"] for p in partitions if p.get("lag") is not None]
        live_states = [c.get("state") for _, c in mine]
        if pause.paused:
            state = "paused"
        elif not mine or all(s == "stopped" for s in live_states):
            state = "stopped"
        elif any(s == "error" for s in live_states):
            state = "error"
        else:
            state = "running"
        last_trigger = None
        if last:
            f = {_s(k): _s(v) for k, v in last[0][1].items()}
            run_raw = await self.redis.hget(self.keys(cid).runs, f["window_id"])
            run = orjson.loads(run_raw) if run_raw else {"status": "pending"}
            last_trigger = {
                "window_id": int(f["window_id"]),
                "reason": f["reason"],
                "count": int(f["count"]),
                "closed_at": iso_ms(int(f["closed_at"])),
                "status": run.get("status", "pending"),
            }
        status = {
            "consumer_id": cid,
            "kafka_topic": cfg.kafka_topic,
            "pipeline_name": cfg.pipeline_name,
            "job_type": cfg.job_type,
            "state": state,
            "paused_by": pause.by if pause.paused else None,
            "paused_at": iso_ms(pause.since_ms) if pause.paused else None,
            "count": count,
            "max_event": cfg.max_event,
            "max_time": cfg.max_time,
            "window_id": window_id,
            "window_opened_at": iso_ms(opened),
            "window_opened_at_ms": opened,
            "time_left": window_time_left(opened, cfg.max_time, now_ms),
            "fill_ratio": round(min(count / cfg.max_event, 1.0), 4),
            "total": stats.get("total", 0),
            "errors": stats.get("errors", 0),
            "filtered": stats.get("filtered", 0),
            "windows": stats.get("windows", 0),
            "windows_by_reason": {r: stats.get(f"windows_{r}", 0) for r in TRIGGER_REASONS},
            "discarded": stats.get("discarded", 0),
            "dlq": dlq,
            "rate": round(rate, 1),
            "lag": sum(lags) if lags else (0 if partitions else None),
            "partitions": partitions,
            "instances": [iid for iid, _ in mine],
            "last_trigger": last_trigger,
            "last_error": errors_text or any_error,
            "processor_stall": processor_stall,
        }
        return await self._with_health(status, cfg, reported, reported_ms, now_ms)

    async def _unowned_partitions(
        self,
        consumer_id: str,
        mine: list[tuple[str, dict[str, Any]]],
        owners: dict[int, tuple[int, dict[str, Any]]],
    ) -> dict[int, tuple[int, dict[str, Any]]]:
        """Partitions of the topic that no live instance owns (the consumer is stopped,
        between rebalances, or has fewer members than partitions), with their lag measured
        as the broker's end offset minus the next offset Redis holds as counted (unknown when
        nothing was counted there yet)."""
        ends: dict[int, int] = {}
        for _, snapshot in mine:
            for partition, end in snapshot.get("topic_end_offsets") or ():
                ends[int(partition)] = max(int(end), ends.get(int(partition), 0))
        unowned = sorted(set(ends) - set(owners))
        if not unowned:
            return {}
        stored = await self.counter(consumer_id).stored_offsets(unowned)
        out = {}
        for partition in unowned:
            position = stored.get(partition)
            lag = max(ends[partition] - position, 0) if position is not None else None
            out[partition] = (
                0,
                {
                    "partition": partition,
                    "position": position,
                    "highwater": ends[partition],
                    "lag": lag,
                    "time_lag_seconds": None,
                    "oldest_ts_ms": None,
                    "owner": None,
                },
            )
        return out

    async def _with_health(
        self,
        status: dict[str, Any],
        cfg: ConsumerConfig,
        reported: dict[str, Any] | None,
        reported_ms: int,
        now_ms: int,
    ) -> dict[str, Any]:
        """Add time lag, time to the next trigger, the verdict and the active alerts.

        The verdict is the one the instances compute over their sliding window of fleet
        samples (the newest heartbeat's); facts that need no history win at once: no live
        instance is ``stopped``, a pause (or its end) shows without waiting for a heartbeat.
        """
        for p in status["partitions"]:
            if "oldest_ts_ms" in p:
                p["time_lag_seconds"] = time_lag_seconds(p.get("lag"), p["oldest_ts_ms"], now_ms)
        status["time_lag_seconds"] = consumer_time_lag(
            [p.get("time_lag_seconds") for p in status["partitions"]]
        )
        rate = 0.0 if status["state"] == "paused" else status["rate"]
        eta = window_progress(
            status["count"],
            cfg.max_event,
            status["window_opened_at_ms"],
            cfg.max_time,
            rate,
            now_ms,
        ).eta_seconds
        status["time_to_trigger_seconds"] = round(eta, 3) if eta is not None else None
        status["reported_at_ms"] = reported_ms or None
        now = now_ms / 1000
        instant = verdict([sample_from_status(status, now)], self.config.monitoring, now)
        judged = reported.get("verdict") if reported is not None else None
        immediate = (VerdictName.STOPPED, VerdictName.PAUSED)
        if reported is None or not judged or instant.name in immediate or judged == "paused":
            status["verdict"], status["verdict_reason"] = str(instant.name), instant.reason
            status["verdict_since"] = None
        else:
            status["verdict"] = judged
            status["verdict_reason"] = reported.get("verdict_reason")
            status["verdict_since"] = iso_ms(reported.get("verdict_since_ms"))
        status["alerts"] = await active_alerts(
            self.redis, self.prefix, self.config.monitoring.alerts, cfg.consumer_id
        )
        return status

    async def status(self) -> dict[str, Any]:
        """``{"consumers": [...], "instances": [...]}``: the model ``status --json`` prints."""
        consumers = await self.consumers()
        instances = await self.instances()
        return {"consumers": consumers, "instances": [instance_summary(i) for i in instances]}

    async def instance_summaries(self) -> list[dict[str, Any]]:
        """The live instances as ``status --json`` lists them (consumers as ids)."""
        return [instance_summary(i) for i in await self.instances()]

    async def consumer(self, consumer_id: str) -> dict[str, Any]:
        self.consumer_cfg(consumer_id)
        for c in await self.consumers():
            if c["consumer_id"] == consumer_id:
                return c
        raise UnknownConsumerError(consumer_id, [])  # pragma: no cover - checked above

    async def info(self, consumer_id: str, triggers: int = 10) -> dict[str, Any]:
        """Everything about one consumer: ``GET /consumer/info/<id>`` and ``info --json``.

        The key set is part of the contract (tests pin it): config and pipeline with secrets
        masked, state, window progress, per-partition lag, totals, last triggers, errors.
        """
        cfg = self.consumer_cfg(consumer_id)
        c = await self.consumer(consumer_id)
        history = await self.history(consumer_id, limit=triggers)
        masked = mask_config(self.config)
        index = [x.consumer_id for x in self.config.consumers].index(consumer_id)
        return {
            "consumer_id": consumer_id,
            "kafka_topic": cfg.kafka_topic,
            "pipeline_name": cfg.pipeline_name,
            "job_type": cfg.job_type,
            "state": c["state"],
            "paused_by": c["paused_by"],
            "paused_at": c["paused_at"],
            "instances": c["instances"],
            "config": masked["consumers"][index],
            "pipeline": masked["pipelines"].get(cfg.pipeline_name),
            "window": {
                "id": c["window_id"],
                "count": c["count"],
                "max_event": cfg.max_event,
                "max_time": cfg.max_time,
                "fill_ratio": c["fill_ratio"],
                "opened_at": c["window_opened_at"],
                "time_left": c["time_left"],
                "closes_at": iso_ms(window_closes_at(c["window_opened_at_ms"], cfg.max_time)),
            },
            "lag": c["lag"],
            "time_lag_seconds": c["time_lag_seconds"],
            "time_to_trigger_seconds": c["time_to_trigger_seconds"],
            "verdict": c["verdict"],
            "verdict_reason": c["verdict_reason"],
            "verdict_since": c["verdict_since"],
            "alerts": c["alerts"],
            "partitions": c["partitions"],
            "rate": c["rate"],
            "totals": {
                "events": c["total"],
                "filtered": c["filtered"],
                "discarded": c["discarded"],
                "windows": c["windows"],
                "windows_by_reason": c["windows_by_reason"],
            },
            "last_trigger": c["last_trigger"],
            "triggers": history,
            "errors": {"count": c["errors"], "dlq": c["dlq"], "last_error": c["last_error"]},
        }

    # ---- steering --------------------------------------------------------------------------
    # Each action refuses in read-only mode and is recorded in the audit stream (who: this
    # process's user and instance, via: this Fleet's face, what, when, result).
    def _audited(self, action: str, consumer_id: str, user: str | None) -> Any:
        self.consumer_cfg(consumer_id)
        if self.config.ui.read_only:
            raise ReadOnlyError(action)
        return self.audit.action(
            action, consumer_id, via=self.via, user=user or actor(), instance=cli_instance()
        )

    async def pause(self, consumer_id: str, by: str | None = None, user: str | None = None) -> None:
        async with self._audited("pause", consumer_id, user) as outcome:
            await self.control.set_paused(consumer_id, True, by)
            outcome.detail = "paused on every instance"

    async def resume(self, consumer_id: str, user: str | None = None) -> None:
        async with self._audited("resume", consumer_id, user) as outcome:
            await self.control.set_paused(consumer_id, False)
            outcome.detail = "resumed on every instance"

    async def reset(self, consumer_id: str, user: str | None = None) -> ResetResult:
        async with self._audited("reset", consumer_id, user) as outcome:
            res = await self.counter(consumer_id).reset()
            await self.control.announce(consumer_id, "reset")
            outcome.detail = reset_detail(res)
        return res

    async def trigger(self, consumer_id: str, user: str | None = None) -> CloseResult:
        async with self._audited("trigger", consumer_id, user) as outcome:
            res = await self.counter(consumer_id).close(TriggerReason.MANUAL)
            await self.control.announce(consumer_id, "trigger")
            outcome.detail = trigger_detail(res)
        return res
