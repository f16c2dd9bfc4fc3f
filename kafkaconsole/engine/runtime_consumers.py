"""Consumers defined at runtime: stored in Redis, run by every instance beside the file's.

``kafkaconsole consumer add`` and ``POST /consumers`` validate a consumer table with the model
and messages of a ``[[consumers]]`` table (:func:`~kafkaconsole.config.loader.validate_consumer`)
and store it in one hash (``<prefix>:_fleet:consumers``, consumer id -> JSON of the table), then
announce the change on the control channel. Every instance then applies its file's
configuration merged with the stored definitions through the reload machinery (added consumers
start, removed ones stop gracefully) and stores its result like a fleet-wide reload does. An
instance starting reads the hash too. A consumer of the same id in an instance's file wins: the
runtime definition is ignored there and the clash reported.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from kafkaconsole.config.errors import ConfigError
from kafkaconsole.config.loader import validate_consumer
from kafkaconsole.config.models import AppConfig, ConsumerConfig
from kafkaconsole.engine.audit import AuditLog
from kafkaconsole.engine.errors import ConsumerClashError, UnknownConsumerError
from kafkaconsole.engine.keys import FleetKeys, tagged_layout

#: The comment above a consumer defined at runtime (the console's config tab, ``config show``).
RUNTIME_MARK = "# defined at runtime (stored in Redis; kafkaconsole consumer remove ID)"
#: The control message's action: every instance applies the stored definitions.
APPLY_ACTION = "consumers"


def clash_note(consumer_id: str) -> str:
    """The report of a runtime definition a file consumer overrides."""
    return (
        f"{consumer_id}: runtime definition ignored: the configuration file defines a consumer "
        "of that id (the file's consumer wins)"
    )


def source_of(consumer_id: str) -> str:
    """How problems of a stored definition name it."""
    return f"runtime consumer {consumer_id!r}"


@dataclass(frozen=True)
class RuntimeMerge:
    """A file's configuration with the runtime definitions this instance can run."""

    config: AppConfig
    runtime_ids: tuple[str, ...] = ()
    """Consumers of ``config`` defined at runtime."""
    clashes: tuple[str, ...] = ()
    """Runtime definitions ignored: the file defines a consumer of that id."""
    problems: tuple[str, ...] = ()
    """Why stored definitions cannot run with this configuration (e.g. its file lacks the
    pipeline), each ``runtime consumer 'ID': key: message``."""

    def notes(self) -> list[str]:
        """The clashes and problems as an instance reports them (log, reload answer)."""
        problems = [f"{p} (not run by this instance)" for p in self.problems]
        return [clash_note(cid) for cid in self.clashes] + problems

    def problems_of(self, consumer_id: str) -> list[str]:
        """Why the stored definition of ``consumer_id`` cannot run here (empty: it runs, or
        none is stored)."""
        return [p for p in self.problems if p.startswith(f"{source_of(consumer_id)}:")]


def merge_runtime(file_config: AppConfig, definitions: dict[str, Any]) -> RuntimeMerge:
    """``file_config`` plus every stored definition that is valid against it (pure)."""
    file_ids = {c.consumer_id for c in file_config.consumers}
    added: list[ConsumerConfig] = []
    clashes: list[str] = []
    problems: list[str] = []
    for cid in sorted(definitions):
        if cid in file_ids:
            clashes.append(cid)
            continue
        try:
            cfg = validate_consumer(definitions[cid], file_config, source=source_of(cid))
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
            continue
        if cfg.consumer_id != cid:
            problems.append(f"{source_of(cid)}: consumer_id: stored under another id")
            continue
        added.append(cfg)
    if not added:
        return RuntimeMerge(file_config, (), tuple(clashes), tuple(problems))
    config = file_config.model_copy(update={"consumers": [*file_config.consumers, *added]})
    runtime_ids = tuple(c.consumer_id for c in added)
    return RuntimeMerge(config, runtime_ids, tuple(clashes), tuple(problems))


class RuntimeConsumers:
    """The stored definitions of one fleet (one key prefix)."""

    def __init__(self, redis: Redis, prefix: str, tagged: bool = False) -> None:
        self.redis = redis
        self.prefix = prefix
        self.fleet = FleetKeys(prefix, tagged)
        self.key = self.fleet.runtime_consumers

    async def definitions(self) -> dict[str, Any]:
        """Consumer id -> its stored table (a value that is not JSON is kept as text: the
        merge reports it)."""
        raw: Any = await self.redis.hgetall(self.key)
        out: dict[str, Any] = {}
        for k, v in (raw or {}).items():
            cid = k.decode() if isinstance(k, bytes) else str(k)
            try:
                out[cid] = orjson.loads(v)
            except orjson.JSONDecodeError:
                out[cid] = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        return out

    async def put(self, cfg: ConsumerConfig) -> bool:
        """Store (or replace) a validated definition; True when it is new."""
        table = cfg.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return bool(await self.redis.hset(self.key, cfg.consumer_id, orjson.dumps(table)))

    async def remove(self, consumer_id: str) -> bool:
        return bool(await self.redis.hdel(self.key, consumer_id))

    async def announce(self, *, via: str, user: str) -> str:
        """Ask every live instance to apply the stored definitions; returns the request id
        under which each stores its result (:func:`kafkaconsole.engine.reload.reload_results`)."""
        request_id = uuid.uuid4().hex
        message = {"action": APPLY_ACTION, "request_id": request_id, "via": via, "user": user}
        await self.redis.publish(self.fleet.control_channel, orjson.dumps(message))
        return request_id


@dataclass(frozen=True)
class Defined:
    """A stored definition and the request every instance answers."""

    consumer: ConsumerConfig
    created: bool
    request_id: str


async def define_consumer(
    redis: Redis,
    file_config: AppConfig,
    raw: Any,
    *,
    source: str,
    via: str,
    user: str,
    instance: str,
    audit: AuditLog,
) -> Defined:
    """Validate, store and announce one definition. Raises :class:`ConfigError` (nothing
    stored) or :class:`ConsumerClashError` when ``file_config`` defines that id."""
    cfg = validate_consumer(raw, file_config, source=source)
    if any(c.consumer_id == cfg.consumer_id for c in file_config.consumers):
        raise ConsumerClashError(cfg.consumer_id)
    store = RuntimeConsumers(redis, file_config.redis.key_prefix, tagged_layout(file_config.redis))
    created = await store.put(cfg)
    request_id = await store.announce(via=via, user=user)
    detail = f"{'defined' if created else 'replaced'}: topic {cfg.topic_label}, "
    detail += f"pipeline {cfg.pipeline_name}, max_event {cfg.max_event}, max_time {cfg.max_time:g}"
    await audit.record(
        "consumer-add", cfg.consumer_id, via=via, user=user, instance=instance, detail=detail
    )
    return Defined(cfg, created, request_id)


async def undefine_consumer(
    redis: Redis,
    file_config: AppConfig,
    consumer_id: str,
    *,
    via: str,
    user: str,
    instance: str,
    audit: AuditLog,
) -> str:
    """Remove one stored definition and announce it; returns the request id. Raises
    :class:`ConsumerClashError` for a consumer of the file, :class:`UnknownConsumerError` when
    no definition of that id is stored."""
    if any(c.consumer_id == consumer_id for c in file_config.consumers):
        raise ConsumerClashError(consumer_id, "remove")
    store = RuntimeConsumers(redis, file_config.redis.key_prefix, tagged_layout(file_config.redis))
    if not await store.remove(consumer_id):
        known = sorted(await store.definitions())
        raise UnknownConsumerError(consumer_id, known, "runtime-defined consumer")
    request_id = await store.announce(via=via, user=user)
    await audit.record(
        "consumer-remove", consumer_id, via=via, user=user, instance=instance, detail="removed"
    )
    return request_id


__all__ = [
    "APPLY_ACTION",
    "RUNTIME_MARK",
    "Defined",
    "RuntimeConsumers",
    "RuntimeMerge",
    "clash_note",
    "define_consumer",
    "merge_runtime",
    "undefine_consumer",
]
