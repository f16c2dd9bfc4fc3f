"""Redis Cluster clients (``[redis] mode = "cluster"``) and the reads that differ there.

The engine keeps its single-Redis code; in cluster mode the factories of :mod:`.clients`
hand out a :class:`BoundedRedisCluster` instead, and the state uses the tagged key layout of
:mod:`.keys` (every key of one consumer in one slot), so each Lua script and each MULTI block
of the engine touches one slot, as the cluster requires.

What a cluster changes, and where it is handled:

- connections: redis-py keeps a pool per node, capped by ``max_connections`` (a command
  finding the cap reached fails at once with ``MaxConnectionsError``). A
  :class:`BoundedRedisCluster` lets at most ``max_connections`` commands (or pipelines) run at
  once, first come first served, each waiting up to :data:`~.clients.POOL_WAIT_S` for its
  turn, and caps every node's pool at the same number: so no node ever holds more than
  ``max_connections`` connections of a client, and exhaustion is the degraded state it is on
  one server (:class:`~.clients.PoolExhausted`, one warning, ``/ready`` says why);
- cluster errors: a slot no primary serves (a primary down before its replica took over, a
  slot moving) surfaces as :class:`ClusterUnavailable`, a Redis connection error with one
  clear line, which the engine treats like Redis being away (retry with backoff, never a
  crashed task); redis-py follows MOVED and ASK itself and re-reads the slot map;
- reads over many consumers (several slots): :func:`mget_any` splits an MGET per slot;
  non-transactional pipelines are split per node by redis-py;
- the start-up checks run on every primary (:func:`check_cluster_access`,
  :func:`check_cluster_capacity`): ACLs and ``maxclients`` are per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, ClusterPubSub, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AuthorizationError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    MaxConnectionsError,
    NoPermissionError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)

from kafkaconsole.config.models import RedisConfig
from kafkaconsole.engine.clients import (
    POOL_DEGRADED_S,
    POOL_WAIT_S,
    PoolExhausted,
    RedisCapacityError,
    RemembersExhaustion,
    _redis_args,
    check_redis_access,
)
from kafkaconsole.engine.keys import FleetKeys

log = logging.getLogger("kafkaconsole.redis")


class ClusterUnavailable(RedisConnectionError):
    """The cluster cannot serve a command now: no node reachable, or a slot not served."""


class ClusterAccessDenied(AuthorizationError):
    """The Redis user may not run what the cluster client needs to connect (CLUSTER SLOTS,
    COMMAND)."""


def cluster_nodes(cfg: RedisConfig) -> list[tuple[str, int]]:
    """The startup nodes: ``[redis] nodes``, else the url's host and port."""
    if cfg.nodes:
        out = []
        for node in cfg.nodes:
            host, _, port = str(node).rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out
    parts = urlsplit(cfg.url)
    return [(parts.hostname or "127.0.0.1", parts.port or 6379)]


class CommandGate(RemembersExhaustion):
    """At most ``size`` commands of one client at once, first come first served; a command
    that waits :attr:`timeout` for its turn fails with :class:`~.clients.PoolExhausted`, and
    the client counts as exhausted (:attr:`exhausted`) for :data:`~.clients.POOL_DEGRADED_S`."""

    def __init__(self, size: int, timeout: float, label: str) -> None:
        self.size = size
        self.timeout = timeout
        self.label = label
        self.exhaustions = 0
        self.degraded_s = POOL_DEGRADED_S
        self._turns = asyncio.Semaphore(size)
        self._exhausted_at: float | None = None
        self._reason = ""
        self._episode = False

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.timeout):
                await self._turns.acquire()
        except TimeoutError:
            self._exhaust(
                f"Redis connections exhausted: every connection of the {self.label} stayed "
                f"busy for {self.timeout:g} s"
            )
        if self._episode and self.exhausted is None:
            self._episode = False
            log.info("Redis connections: the %s has free connections again", self.label)
        try:
            yield
        except MaxConnectionsError:
            self._exhaust(f"Redis connections exhausted: a node's pool of the {self.label} is full")
        finally:
            self._turns.release()

    def _exhaust(self, reason: str) -> None:
        self.exhaustions += 1
        self._exhausted_at = time.monotonic()
        self._reason = reason
        if not self._episode:
            self._episode = True
            log.warning("%s", reason)
        raise PoolExhausted(reason) from None


def _unavailable(exc: RedisClusterException) -> ClusterUnavailable | None:
    """The connection error a cluster exception stands for (None: a programming error, such
    as keys of several slots in one script or transaction, which is raised as it is)."""
    if isinstance(exc, CrossSlotTransactionError | InvalidPipelineStack):
        return None
    text = str(exc)
    if "same key slot" in text or "blocked when running" in text or "No way to dispatch" in text:
        return None
    if "Cluster mode is not enabled" in text:
        return ClusterUnavailable(
            'Redis Cluster: the server is not a cluster node ([redis] mode = "cluster" needs '
            'one; use mode = "single" for a single server)'
        )
    return ClusterUnavailable(f"Redis Cluster: {text.splitlines()[0] if text else exc!r}")


def _torn(exc: AttributeError) -> Exception:
    """redis-py closes every connection when it re-reads the slot map (after a node went
    down), also one a command is using: that command then fails inside redis-py writing to
    or reading from a closed socket (``'NoneType' object has no attribute ...``). It was not
    answered: a connection error, retried like any other."""
    if "'NoneType' object has no attribute" not in str(exc):
        return exc
    return ClusterUnavailable("Redis Cluster: the connection was closed while the slot map changed")


class BoundedRedisCluster(RedisCluster):
    """A :class:`~redis.asyncio.cluster.RedisCluster` whose commands take turns through a
    :class:`CommandGate` (see the module docstring) and whose cluster-level failures are
    Redis connection errors (:class:`ClusterUnavailable`)."""

    def __init__(self, *args: Any, gate: CommandGate, cfg: RedisConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.cfg = cfg

    @property
    def exhausted(self) -> str | None:
        return self.gate.exhausted

    async def initialize(self, *args: Any, **kwargs: Any) -> BoundedRedisCluster:
        try:
            await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise (_unavailable(exc) or exc) from exc
        except NoPermissionError as exc:  # a user error: the engine refuses to start at once
            raise ClusterAccessDenied(
                f"the Redis user may not read the cluster's layout ({exc}): grant the ACL "
                "line of README Security on every node"
            ) from exc
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.gate.turn():
            try:
                return await super().execute_command(*args, **kwargs)
            except RedisClusterException as exc:
                raise (_unavailable(exc) or exc) from exc
            except AttributeError as exc:
                raise _torn(exc) from exc

    def pubsub(self, *args: Any, **kwargs: Any) -> ClusterPubSub:
        return ControlPubSub(self, *args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        """A cluster pipeline; ``transaction=True`` makes it a MULTI block, which must keep to
        one slot (one consumer's keys, or the fleet keys)."""
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return BoundedClusterPipeline(self, transaction)  # type: ignore[abstract]


class ControlPubSub(ClusterPubSub):
    """A subscription that reads the slot map before it picks its node: a fresh client has
    none yet, and after a failover the old one names a node that is gone. (PUBLISH reaches
    every node of a cluster, so any node serves the control channel.)"""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self.connection is None and self.connection_pool is None:
            try:
                if self.cluster._initialize:
                    await self.cluster.initialize()
                else:
                    await self.cluster.nodes_manager.initialize()
            except RedisClusterException as exc:
                raise (_unavailable(exc) or exc) from exc
        return await super().execute_command(*args, **kwargs)


class BoundedClusterPipeline(ClusterPipeline):
    """A pipeline that takes one turn of its client's gate while it runs."""

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = cast(BoundedRedisCluster, self.cluster_client)
        async with client.gate.turn():
            try:
                return await super().execute(raise_on_error, allow_redirections)
            except RedisClusterException as exc:
                raise (_unavailable(exc) or exc) from exc
            except AttributeError as exc:
                raise _torn(exc) from exc


def cluster_client(cfg: RedisConfig, connections: int, label: str, **extra: Any) -> Redis:
    """A cluster client of at most ``connections`` commands at once (and connections per
    node). Typed as :class:`~redis.asyncio.Redis`: the engine uses the commands both share."""
    _, kwargs = _redis_args(cfg, extra)
    kwargs.pop("health_check_interval", None)
    parts = urlsplit(cfg.url)
    if parts.scheme == "rediss" or cfg.tls:
        kwargs["ssl"] = True
    if parts.username and "username" not in kwargs:
        kwargs["username"] = parts.username
    if parts.password and "password" not in kwargs:
        kwargs["password"] = parts.password
    gate = CommandGate(connections, float(kwargs.pop("pool_wait_s", POOL_WAIT_S)), label)
    client = BoundedRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(cfg)],
        max_connections=connections,
        gate=gate,
        cfg=cfg,
        **kwargs,
    )
    return cast(Redis, client)


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


async def mget_any(redis: Redis, keys: Sequence[str]) -> list[Any]:
    """MGET of keys that may lie in several slots: one MGET per slot on a cluster (in one
    pipeline per node, not atomic across slots), a plain MGET on one server."""
    if not keys:
        return []
    if isinstance(redis, RedisCluster):
        return list(await redis.mget_nonatomic(list(keys)))
    return list(await redis.mget(list(keys)))


# ---- start-up checks, per primary ---------------------------------------------------------


async def _primaries(redis: Redis) -> list[ClusterNode]:
    cluster = cast(RedisCluster, redis)
    await cluster.initialize()
    return cluster.get_primaries()


def _tag_served_by(cluster: RedisCluster, node: ClusterNode) -> str:
    """A hash tag whose slot ``node`` serves (so probe keys land on it)."""
    manager = cluster.nodes_manager
    for n in itertools.count():
        tag = f"_probe{n}"
        owner = manager.slots_cache.get(key_slot(tag.encode()))
        if owner and owner[0].name == node.name:
            return tag
        if n > 100_000:
            raise LookupError(f"no slot of {node.name}")
    raise AssertionError("unreachable")


def _node_client(redis: Redis, node: ClusterNode) -> Redis:
    """A plain client of one node, with the cluster client's connection settings."""
    url, kwargs = _redis_args(cast(BoundedRedisCluster, redis).cfg, {})
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    host = f"[{node.host}]" if ":" in node.host else node.host
    where = f"{auth}@{host}:{node.port}" if auth else f"{host}:{node.port}"
    return Redis.from_url(f"{parts.scheme}://{where}/0", single_connection_client=True, **kwargs)


async def check_cluster_access(redis: Redis, prefix: str) -> None:
    """:func:`~.clients.check_redis_access` on every primary (ACLs are per node), each with
    throw-away keys in a slot that primary serves."""
    cluster = cast(RedisCluster, redis)
    for node in await _primaries(redis):
        tag = _tag_served_by(cluster, node)
        base = f"{prefix}:{{{tag}}}:probe:{uuid.uuid4().hex}"
        client = _node_client(redis, node)
        try:
            await check_redis_access(client, prefix, base=base, where=f" on {node.name}")
        finally:
            await client.aclose()


async def check_cluster_capacity(redis: Redis, needed: int) -> None:
    """Refuse to start when a primary's ``maxclients`` cannot fit ``needed`` more clients (the
    most this instance opens to one node)."""
    for node in await _primaries(redis):
        client = _node_client(redis, node)
        try:
            info: Any = await client.info("clients")
        except ResponseError:
            continue
        finally:
            await client.aclose()
        maxclients = info.get("maxclients")
        if maxclients is None:
            continue
        connected = int(info.get("connected_clients", 0))
        free = int(maxclients) - connected + 1
        if free < needed:
            raise RedisCapacityError(
                f"the Redis Cluster node {node.name} accepts at most {maxclients} clients "
                f"(maxclients) and {connected} are connected: this instance needs up to "
                f"{needed} to each node; raise the nodes' maxclients or lower "
                "[redis] max_connections"
            )


def slot_of(key: str) -> int:
    return key_slot(key.encode())


def fleet_slot(prefix: str) -> int:
    """The slot of every fleet key of the tagged layout."""
    return slot_of(FleetKeys(prefix, True).format)


__all__ = [
    "BoundedRedisCluster",
    "ClusterUnavailable",
    "CommandGate",
    "check_cluster_access",
    "check_cluster_capacity",
    "cluster_client",
    "cluster_nodes",
    "fleet_slot",
    "is_cluster",
    "mget_any",
    "slot_of",
]
