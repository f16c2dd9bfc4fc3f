"""The fleet as Redis sees it: one status model for the CLI, the HTTP API and the TUI.

:class:`Fleet` needs only the config (to find Redis and the consumers) and works from any
process, whether or not an instance runs there. Reads merge each consumer's shared counting
state with the heartbeats (status snapshots with a TTL) of the live instances; steering acts
through the same Redis scripts and flags the engine itself uses.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from kafkaconsole.config.models import AppConfig, ConsumerConfig
from kafkaconsole.engine.control import FleetControl
from kafkaconsole.engine.counting import CloseResult, ResetResult, WindowCounter
from kafkaconsole.engine.keys import ConsumerKeys, FleetKeys
from kafkaconsole.engine.records import TriggerReason, iso_ms


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class UnknownConsumerError(LookupError):
    def __init__(self, consumer_id: str, known: list[str]) -> None:
        super().__init__(f"unknown consumer {consumer_id!r} (known: {', '.join(known) or 'none'})")
        self.consumer_id = consumer_id


class Fleet:
    """Read and steer every instance of a config's fleet through Redis."""

    def __init__(self, redis: Redis, config: AppConfig) -> None:
        self.redis = redis
        self.config = config
        self.prefix = config.redis.key_prefix
        self.fleet_keys = FleetKeys(self.prefix)
        self.control = FleetControl(redis, self.prefix)

    # ---- helpers ---------------------------------------------------------------------------
    def consumer_cfg(self, consumer_id: str) -> ConsumerConfig:
        try:
            return self.config.consumer(consumer_id)
        except KeyError:
            raise UnknownConsumerError(consumer_id,
                                       [c.consumer_id for c in self.config.consumers]) from None

    def keys(self, consumer_id: str) -> ConsumerKeys:
        return ConsumerKeys(self.prefix, consumer_id)

    def counter(self, consumer_id: str) -> WindowCounter:
        cfg = self.consumer_cfg(consumer_id)
        return WindowCounter(self.redis, self.keys(consumer_id), topic=cfg.kafka_topic,
                             max_event=cfg.max_event, history_limit=self.config.redis.history_limit)

    # ---- reads -----------------------------------------------------------------------------
    async def instances(self) -> list[dict[str, Any]]:
        """Live instances' latest snapshots (heartbeat keys that have not expired)."""
        keys = [k async for k in self.redis.scan_iter(match=self.fleet_keys.instance_pattern,
                                                       count=500)]
        if not keys:
            return []
        values = await self.redis.mget(keys)
        out = [orjson.loads(v) for v in values if v]
        out.sort(key=lambda i: i["instance_id"])
        return out

    async def history(self, consumer_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Trigger records, newest first, each with its pipeline run status."""
        cfg = self.consumer_cfg(consumer_id)
        keys = self.keys(consumer_id)
        entries = await self.redis.xrevrange(keys.history, count=limit)
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
            out.append({
                "consumer_id": consumer_id, "pipeline_name": cfg.pipeline_name,
                "connection_id": cfg.connection_id, "job_type": cfg.job_type,
                "window_id": wid, "idempotency_key": f"{consumer_id}:{wid}",
                "reason": f["reason"], "count": int(f["count"]),
                "opened_at": iso_ms(opened), "closed_at": iso_ms(int(f["closed_at"])),
                "offsets": orjson.loads(f.get("offsets") or "[]"),
                "status": run.get("status", "pending"), "run": run,
            })
        return out

    async def consumers(self) -> list[dict[str, Any]]:
        """Every configured consumer's fleet-wide status (``status --json``'s ``consumers``)."""
        instances = await self.instances()
        ids = [c.consumer_id for c in self.config.consumers]
        if not ids:
            return []
        pauses = await self.control.pause_states(ids)
        pipe = self.redis.pipeline(transaction=False)
        for cid in ids:
            k = self.keys(cid)
            pipe.get(k.events)
            pipe.hmget(k.window, ["id", "opened_at"])
            pipe.hgetall(k.stats)
            pipe.xrevrange(k.history, count=1)
        res = await pipe.execute()
        out = []
        for n, cfg in enumerate(self.config.consumers):
            count_raw, (wid, opened), stats_raw, last = res[4 * n:4 * n + 4]
            stats = {_s(k): int(v) for k, v in stats_raw.items()}
            out.append(await self._consumer_status(cfg, instances, pauses[cfg.consumer_id],
                                                   int(count_raw or 0), int(wid or 1),
                                                   int(opened) if opened else None, stats, last))
        return out

    async def _consumer_status(self, cfg: ConsumerConfig, instances: list[dict[str, Any]],
                               pause: Any, count: int, window_id: int, opened: int | None,
                               stats: dict[str, int], last: list[Any]) -> dict[str, Any]:
        cid = cfg.consumer_id
        mine = []
        partitions = []
        errors_text = None
        rate = 0.0
        for inst in instances:
            for c in inst.get("consumers", []):
                if c["consumer_id"] != cid:
                    continue
                mine.append((inst["instance_id"], c))
                rate += float(c.get("rate") or 0)
                for p in c.get("partitions", []):
                    partitions.append({**p, "owner": inst["instance_id"]})
                if c.get("state") == "error":
                    errors_text = c.get("last_error")
        partitions.sort(key=lambda p: p["partition"])
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
            last_trigger = {"window_id": int(f["window_id"]), "reason": f["reason"],
                            "count": int(f["count"]), "closed_at": iso_ms(int(f["closed_at"])),
                            "status": run.get("status", "pending")}
        return {
            "consumer_id": cid, "kafka_topic": cfg.kafka_topic,
            "pipeline_name": cfg.pipeline_name, "job_type": cfg.job_type, "state": state,
            "paused_by": pause.by if pause.paused else None,
            "paused_at": iso_ms(pause.since_ms) if pause.paused else None,
            "count": count, "max_event": cfg.max_event, "max_time": cfg.max_time,
            "window_id": window_id, "window_opened_at": iso_ms(opened),
            "window_opened_at_ms": opened,
            "total": stats.get("total", 0), "errors": stats.get("errors", 0),
            "filtered": stats.get("filtered", 0), "windows": stats.get("windows", 0),
            "discarded": stats.get("discarded", 0), "rate": round(rate, 1),
            "lag": sum(lags) if lags else (0 if partitions else None),
            "partitions": partitions, "instances": [iid for iid, _ in mine],
            "last_trigger": last_trigger, "last_error": errors_text,
        }

    async def status(self) -> dict[str, Any]:
        """``{"consumers": [...], "instances": [...]}``: the model ``status --json`` prints."""
        consumers = await self.consumers()
        instances = await self.instances()
        return {
            "consumers": consumers,
            "instances": [{k: v for k, v in i.items() if k != "consumers"} |
                          {"consumers": [c["consumer_id"] for c in i.get("consumers", [])]}
                          for i in instances],
        }

    async def consumer(self, consumer_id: str) -> dict[str, Any]:
        self.consumer_cfg(consumer_id)
        for c in await self.consumers():
            if c["consumer_id"] == consumer_id:
                return c
        raise UnknownConsumerError(consumer_id, [])  # pragma: no cover - checked above

    # ---- steering --------------------------------------------------------------------------
    async def pause(self, consumer_id: str, by: str | None = None) -> None:
        self.consumer_cfg(consumer_id)
        await self.control.set_paused(consumer_id, True, by)

    async def resume(self, consumer_id: str) -> None:
        self.consumer_cfg(consumer_id)
        await self.control.set_paused(consumer_id, False)

    async def reset(self, consumer_id: str) -> ResetResult:
        res = await self.counter(consumer_id).reset()
        await self.control.announce(consumer_id, "reset")
        return res

    async def trigger(self, consumer_id: str) -> CloseResult:
        res = await self.counter(consumer_id).close(TriggerReason.MANUAL)
        await self.control.announce(consumer_id, "trigger")
        return res
