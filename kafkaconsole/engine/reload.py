"""Live reload: what a changed configuration changes, and the fleet-wide reload request.

:func:`plan_reload` compares the running configuration with a newly loaded one (pure, no I/O):
consumers added, removed, whose thresholds (``max_event``, ``max_time``) or pipeline changed
(both apply live), restarted for any other change, and the keys of the sections that only a
restart applies (``[kafka]``, ``[redis]``, ``[api]``, ``[ui]``, ``[monitoring]``).
:meth:`Engine.reload <kafkaconsole.engine.engine.Engine.reload>` carries a plan out and answers
with a :class:`ReloadResult`.

``kafkaconsole reload`` reaches every instance through the control channel: each instance reads
its own configuration file again, applies it and stores its result in a short-lived hash
(``<prefix>:_fleet:reload:<request id>``, one field per instance) that the CLI reads back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from kafkaconsole.config.models import AppConfig, ConsumerConfig
from kafkaconsole.engine.keys import FleetKeys

#: Consumer keys a reload applies to a running consumer; any other change restarts it.
LIVE_CONSUMER_KEYS = frozenset({"max_event", "max_time", "pipeline_name", "retry_policy"})
#: Sections only a restart applies: a change there is reported, not applied.
RESTART_SECTIONS = ("kafka", "redis", "api", "ui", "monitoring")
#: Seconds a fleet-wide reload's results stay in Redis.
RESULT_TTL_S = 600


class ReloadStatus:
    APPLIED = "applied"
    """The new configuration runs (possibly with keys that need a restart, not applied)."""
    UNCHANGED = "unchanged"
    """Nothing this instance runs changed."""
    INVALID = "invalid"
    """The file has problems: nothing changed (``problems`` lists each)."""
    FAILED = "failed"
    """Applying failed (``error``); what was applied before the failure is listed."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload of one instance did."""

    status: str
    """applied | unchanged | invalid | failed (:class:`ReloadStatus`)."""
    file: str
    """The configuration file read."""
    instance_id: str = ""
    added: tuple[str, ...] = ()
    """Consumers started."""
    removed: tuple[str, ...] = ()
    """Consumers stopped gracefully (batch finished, offsets committed, window kept)."""
    changed: tuple[str, ...] = ()
    """Consumers whose thresholds or pipeline changed live."""
    restarted: tuple[str, ...] = ()
    """Consumers restarted gracefully for another change (topic, group, format...)."""
    needs_restart: tuple[str, ...] = ()
    """Dotted keys that changed but apply only at the next restart (not applied)."""
    details: tuple[str, ...] = ()
    """One line per live change (e.g. ``orders: max_event 1000 -> 10; closed window 4``)."""
    problems: tuple[str, ...] = ()
    """Every problem of an invalid file, ``FILE: dotted.key: message``."""
    error: str | None = None
    """Why applying failed."""

    @property
    def ok(self) -> bool:
        return self.status in (ReloadStatus.APPLIED, ReloadStatus.UNCHANGED)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "file": self.file,
            "instance_id": self.instance_id,
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "restarted": list(self.restarted),
            "needs_restart": list(self.needs_restart),
            "details": list(self.details),
            "problems": list(self.problems),
            "error": self.error,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ReloadResult:
        return cls(
            status=str(data.get("status", ReloadStatus.FAILED)),
            file=str(data.get("file", "")),
            instance_id=str(data.get("instance_id", "")),
            added=tuple(data.get("added") or ()),
            removed=tuple(data.get("removed") or ()),
            changed=tuple(data.get("changed") or ()),
            restarted=tuple(data.get("restarted") or ()),
            needs_restart=tuple(data.get("needs_restart") or ()),
            details=tuple(data.get("details") or ()),
            problems=tuple(data.get("problems") or ()),
            error=data.get("error"),
        )

    def summary(self) -> str:
        """One line: the status and what changed (for the log, a toast, the audit trail)."""
        if self.status == ReloadStatus.INVALID:
            return f"{self.file} is invalid ({len(self.problems)} problem(s)); nothing changed"
        parts = [
            f"{name} {', '.join(ids)}"
            for name, ids in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
                ("restarted", self.restarted),
            )
            if ids
        ]
        if self.needs_restart:
            parts.append(f"needs a restart: {', '.join(self.needs_restart)} (not applied)")
        text = "; ".join(parts) or "nothing to change"
        if self.status == ReloadStatus.FAILED:
            return f"reload of {self.file} failed: {self.error}" + (
                f" (applied before the failure: {text})" if parts else ""
            )
        return f"reloaded {self.file}: {text}"


@dataclass(frozen=True)
class ConsumerChange:
    """A running consumer's live change."""

    old: ConsumerConfig
    new: ConsumerConfig
    thresholds: bool
    pipeline: bool


@dataclass(frozen=True)
class ReloadPlan:
    """What applying ``new`` over ``old`` takes (see :func:`plan_reload`)."""

    added: tuple[ConsumerConfig, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[ConsumerChange, ...] = ()
    restarted: tuple[ConsumerConfig, ...] = ()
    needs_restart: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = field(default=())
    """Pipelines whose definition changed (rebuilt for the consumers that use them)."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.restarted)


def _changed_keys(section: str, old: Any, new: Any) -> list[str]:
    before = old.model_dump(mode="json", by_alias=True)
    after = new.model_dump(mode="json", by_alias=True)
    return [
        f"{section}.{key}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def plan_reload(old: AppConfig, new: AppConfig) -> ReloadPlan:
    """Compare the running configuration with a new one (both valid)."""
    needs_restart: list[str] = []
    for section in RESTART_SECTIONS:
        needs_restart += _changed_keys(section, getattr(old, section), getattr(new, section))
    pipelines = tuple(
        sorted(
            name
            for name in set(old.pipelines) & set(new.pipelines)
            if old.pipelines[name] != new.pipelines[name]
        )
    )
    old_by_id = {c.consumer_id: c for c in old.consumers}
    new_by_id = {c.consumer_id: c for c in new.consumers}
    added = tuple(c for cid, c in new_by_id.items() if cid not in old_by_id)
    removed = tuple(cid for cid in old_by_id if cid not in new_by_id)
    changed: list[ConsumerChange] = []
    restarted: list[ConsumerConfig] = []
    for cid, after in new_by_id.items():
        before = old_by_id.get(cid)
        if before is None:
            continue
        b = before.model_dump(mode="json", by_alias=True)
        a = after.model_dump(mode="json", by_alias=True)
        if any(b.get(k) != a.get(k) for k in set(a) | set(b) if k not in LIVE_CONSUMER_KEYS):
            restarted.append(after)
            continue
        thresholds = (before.max_event, before.max_time) != (after.max_event, after.max_time)
        pipeline = (
            before.pipeline_name != after.pipeline_name
            or after.pipeline_name in pipelines
            or old.retry_policy_for(before) != new.retry_policy_for(after)
        )
        if thresholds or pipeline:
            changed.append(ConsumerChange(before, after, thresholds, pipeline))
    return ReloadPlan(
        added=added,
        removed=removed,
        changed=tuple(changed),
        restarted=tuple(restarted),
        needs_restart=tuple(needs_restart),
        pipelines=pipelines,
    )


# ---- the fleet-wide request ------------------------------------------------------------------


def results_key(prefix: str, request_id: str, tagged: bool = False) -> str:
    """``<prefix>:_fleet:reload:<request id>`` (:mod:`.keys`): a hash, instance id -> its
    result (JSON)."""
    return FleetKeys(prefix, tagged).reload(request_id)


async def request_reload(
    redis: Redis, prefix: str, *, via: str, user: str, tagged: bool = False
) -> str:
    """Ask every live instance to reload its own configuration file; returns the request id
    under which they store their results (:func:`reload_results`)."""
    request_id = uuid.uuid4().hex
    message = {"action": "reload", "request_id": request_id, "via": via, "user": user}
    await redis.publish(FleetKeys(prefix, tagged).control_channel, orjson.dumps(message))
    return request_id


async def store_result(
    redis: Redis, prefix: str, request_id: str, result: ReloadResult, tagged: bool = False
) -> None:
    key = results_key(prefix, request_id, tagged)
    pipe = redis.pipeline(transaction=True)
    pipe.hset(key, result.instance_id, orjson.dumps(result.to_json_dict()))
    pipe.pexpire(key, RESULT_TTL_S * 1000)  # PEXPIRE: in the documented ACL
    await pipe.execute()


async def reload_results(
    redis: Redis, prefix: str, request_id: str, tagged: bool = False
) -> dict[str, ReloadResult]:
    raw: Any = await redis.hgetall(results_key(prefix, request_id, tagged))
    out = {}
    for k, v in (raw or {}).items():
        instance = k.decode() if isinstance(k, bytes) else str(k)
        out[instance] = ReloadResult.from_json_dict(orjson.loads(v))
    return out


__all__ = [
    "LIVE_CONSUMER_KEYS",
    "RESTART_SECTIONS",
    "ConsumerChange",
    "ReloadPlan",
    "ReloadResult",
    "ReloadStatus",
    "plan_reload",
    "reload_results",
    "request_reload",
    "results_key",
    "store_result",
]
