"""Kafka and Redis client settings built from the config, in one place.

Also what "safe by default" checks at start: :func:`security_warnings` (settings that work but
weaken security, logged once by the engine) and :func:`check_redis_access` (the Redis ACL user
may run every command the engine needs, on keys under the prefix; see :data:`REDIS_COMMANDS`).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import ssl
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from kafkaconsole.config.models import AppConfig, KafkaConfig, RedisConfig
from kafkaconsole.engine.http_client import insecure_warning
from kafkaconsole.engine.keys import FleetKeys

REDIS_COMMANDS: tuple[str, ...] = (
    # connection (HELLO/AUTH at connect; CLIENT SETINFO is sent by redis-py, errors ignored)
    "ping", "hello", "auth", "client|setinfo", "select",
    # the start-up check that the server's maxclients fits this instance (INFO clients)
    "info",
    # Redis Cluster (mode = "cluster"): the slot map, read at connect and after MOVED, and the
    # command table (COMMAND: where each command's keys are, to route it to their slot)
    "cluster|slots", "command",
    # scripts: the counting and lease scripts (EVALSHA; SCRIPT LOAD/EXISTS when not cached)
    "evalsha", "script|load", "script|exists",
    # transactions
    "multi", "exec", "discard", "watch", "unwatch",
    # strings and keys
    "get", "set", "mget", "del", "pexpire", "pttl", "time", "scan",
    # hashes
    "hget", "hset", "hdel", "hgetall", "hmget", "hincrby",
    # streams: history, dispatch (consumer group), audit
    "xadd", "xrange", "xrevrange", "xreadgroup", "xack", "xdel", "xautoclaim", "xclaim",
    "xread", "xlen",
    "xgroup|create",
    # sorted set: the registry of instances' heartbeats
    "zadd", "zrange", "zrem", "zremrangebyscore",
    # pub/sub: control announcements
    "publish", "subscribe", "unsubscribe",
)  # fmt: skip
"""Every Redis command the engine, the CLI and the HTTP API send (scripts included)."""


log = logging.getLogger("kafkaconsole.redis")


class RedisAccessError(NoPermissionError):
    """The Redis user lacks commands (or key access) the engine needs."""


class RedisCapacityError(RedisError):
    """The Redis server's ``maxclients`` cannot fit the connections this instance needs."""


def redis_acl_line(prefix: str = "consumer", user: str = "kafkaconsole") -> str:
    """The ``ACL SETUSER`` line granting exactly what kafkaconsole needs under ``prefix``."""
    commands = " ".join(f"+{c}" for c in REDIS_COMMANDS)
    return (
        f"ACL SETUSER {user} on >PASSWORD resetkeys ~{prefix}:* resetchannels &{prefix}:* "
        f"-@all {commands}"
    )


def kafka_ssl_context(cfg: KafkaConfig) -> ssl.SSLContext | None:
    if cfg.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=cfg.ssl_cafile)
    ctx.check_hostname = cfg.ssl_check_hostname
    if cfg.ssl_certfile:
        ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    return ctx


def kafka_kwargs(cfg: KafkaConfig) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client the engine creates."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
    }
    ctx = kafka_ssl_context(cfg)
    if ctx is not None:
        kwargs["ssl_context"] = ctx
    if cfg.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = cfg.sasl_mechanism
        kwargs["sasl_plain_username"] = cfg.sasl_username
        kwargs["sasl_plain_password"] = cfg.sasl_password
    return kwargs


def redis_client(cfg: RedisConfig, **extra: Any) -> Redis:
    """An asyncio Redis client for the configured server."""
    if cfg.mode == "cluster":
        return _cluster().cluster_client(cfg, cfg.max_connections, "client", **extra)
    if cfg.mode == "sentinel":
        from kafkaconsole.engine.redis_sentinel import sentinel_client  # builds on this module

        return sentinel_client(cfg, *_redis_args(cfg, extra), connections=100)
    url, kwargs = _redis_args(cfg, extra)
    return Redis.from_url(url, **kwargs)


#: Connections of the HTTP API's own Redis pool (never the counting path's).
API_REDIS_CONNECTIONS = 4
#: The health monitor's own pool (its fleet reads never wait behind the counting path).
MONITOR_REDIS_CONNECTIONS = 2
#: Connections an engine holds beside its pool: the control listener's subscription (1), the
#: dispatch wake-up's blocking read (1), the time triggers' closes (1), the health monitor (2)
#: and the HTTP API (4).
DEDICATED_REDIS_CONNECTIONS = 3 + MONITOR_REDIS_CONNECTIONS + API_REDIS_CONNECTIONS
#: How long a command waits for a free pooled connection before the pool counts as exhausted.
POOL_WAIT_S = 20.0
#: How long an exhaustion keeps the instance degraded after the last command that waited out.
POOL_DEGRADED_S = 60.0


def _pool_label(connections: int) -> str:
    return f"pool of {connections} ([redis] max_connections)"


def _cluster() -> Any:
    """:mod:`.redis_cluster` (imported on use: it builds on this module)."""
    from kafkaconsole.engine import redis_cluster

    return redis_cluster


class PoolExhausted(RedisConnectionError):
    """Every pooled connection stayed busy for :data:`POOL_WAIT_S`: the command was not sent."""


class RemembersExhaustion:
    """What a bounded set of connections remembers of its last exhaustion: the reason, shown
    for :attr:`degraded_s` after the last command that waited out (``/ready``, the console
    header)."""

    degraded_s: float = POOL_DEGRADED_S
    _exhausted_at: float | None = None
    _reason: str = ""

    @property
    def exhausted(self) -> str | None:
        """Why it is degraded (None: no command waited out in the last minute)."""
        at = self._exhausted_at
        if at is None or time.monotonic() - at > self.degraded_s:
            return None
        return self._reason


class WatchedConnectionPool(RemembersExhaustion, BlockingConnectionPool):
    """A bounded pool whose commands wait (up to :data:`POOL_WAIT_S`) for a free connection
    instead of failing at once, and which remembers when that wait ran out.

    Exhaustion is a degraded state, never a retry storm: the command fails with
    :class:`PoolExhausted`, one warning is logged per episode (and one line when the pool
    has room again), and :attr:`exhausted` names the reason for ``/ready`` and the console
    header for :attr:`degraded_s` (:data:`POOL_DEGRADED_S`) after the last such failure.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # first come, first served: commands queue here in order (redis-py's own wait is a
        # condition any newcomer can overtake, so under a burst of hundreds of commands a few
        # waited out the timeout while later ones were served)
        self._turns = asyncio.Semaphore(self.max_connections)
        self._holding: set[Any] = set()
        self.label = _pool_label(self.max_connections)
        self.exhaustions = 0
        self.degraded_s = POOL_DEGRADED_S
        self._exhausted_at: float | None = None
        self._reason = ""
        self._episode = False

    async def get_connection(self, *_args: Any, **_options: Any) -> Any:  # type: ignore[override]
        try:
            async with asyncio.timeout(self.timeout):
                await self._turns.acquire()
        except TimeoutError:
            exhausted = True
        else:
            exhausted = False
            try:
                connection = await super().get_connection()
            except RedisConnectionError as exc:
                self._turns.release()
                if "No connection available" not in str(exc):
                    raise
                exhausted = True
            except BaseException:
                self._turns.release()
                raise
            else:
                self._holding.add(connection)
        if exhausted:
            self.exhaustions += 1
            self._exhausted_at = time.monotonic()
            reason = self._reason = self.reason()
            if not self._episode:
                self._episode = True
                log.warning("%s", reason)
            raise PoolExhausted(reason) from None
        if self._episode and self.exhausted is None:
            self._episode = False
            log.info("Redis connections: the %s has free connections again", self.label)
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            # a connection handed out by get_connection gives its turn back once
            if connection in self._holding:
                self._holding.discard(connection)
                self._turns.release()

    def reason(self) -> str:
        return (
            f"Redis connections exhausted: every connection of the {self.label} stayed busy "
            f"for {self.timeout:g} s"
        )


def engine_redis_client(cfg: RedisConfig) -> Redis:
    """The engine's client: a :class:`WatchedConnectionPool` of ``[redis] max_connections``
    shared by the counting path, the timers and the dispatchers."""
    if cfg.mode == "cluster":
        return _cluster().cluster_client(cfg, cfg.max_connections, _pool_label(cfg.max_connections))
    if cfg.mode == "sentinel":
        from kafkaconsole.engine.redis_sentinel import sentinel_client  # builds on this module

        return sentinel_client(cfg, *_redis_args(cfg, {}), connections=cfg.max_connections)
    url, kwargs = _redis_args(cfg, {})
    pool = WatchedConnectionPool.from_url(
        url, max_connections=cfg.max_connections, timeout=POOL_WAIT_S, **kwargs
    )
    return Redis.from_pool(pool)


def dedicated_redis_client(cfg: RedisConfig, **extra: Any) -> Redis:
    """A client of one connection of its own (a subscription, a blocking read)."""
    if cfg.mode == "cluster":  # one connection per node
        return _cluster().cluster_client(cfg, 1, "dedicated connection", **extra)
    if cfg.mode == "sentinel":
        from kafkaconsole.engine.redis_sentinel import sentinel_client  # builds on this module

        return sentinel_client(cfg, *_redis_args(cfg, extra), connections=1)
    url, kwargs = _redis_args(cfg, extra)
    return Redis.from_url(url, max_connections=1, **kwargs)


def pool_exhausted(redis: Redis) -> str | None:
    """The reason ``redis``'s pool counts as exhausted, if it is a watched pool (or a cluster
    client, which watches its own turns: :mod:`.redis_cluster`)."""
    pool = getattr(redis, "connection_pool", None)
    if isinstance(pool, WatchedConnectionPool):
        return pool.exhausted
    exhausted = getattr(redis, "exhausted", None)
    return exhausted if isinstance(exhausted, str) else None


async def check_redis_capacity(redis: Redis, needed: int) -> None:
    """Refuse to start when the server's ``maxclients`` cannot fit ``needed`` more clients.

    Reads ``INFO clients`` (``maxclients`` since Redis 7 and Valkey); a server that does not
    report it, or refuses INFO, is not checked. On a cluster: every primary.
    """
    if _cluster().is_cluster(redis):
        return await _cluster().check_cluster_capacity(redis, needed)
    try:
        info: Any = await redis.info("clients")
    except ResponseError:
        return
    maxclients = info.get("maxclients")
    if maxclients is None:
        return
    connected = int(info.get("connected_clients", 0))
    free = int(maxclients) - connected + 1  # this check's own connection is part of ours
    if free < needed:
        raise RedisCapacityError(
            f"the Redis server accepts at most {maxclients} clients (maxclients) and "
            f"{connected} are connected: this instance needs up to {needed} "
            f"([redis] max_connections + {DEDICATED_REDIS_CONNECTIONS}); raise the server's "
            "maxclients or lower [redis] max_connections"
        )


def reader_redis_client(
    cfg: RedisConfig, connections: int = API_REDIS_CONNECTIONS, name: str = "the HTTP API's"
) -> Redis:
    """A client with a small pool of its own, for readers that must never take the counting
    path's connections (the HTTP API, the health monitor): at most ``connections`` at once; a
    request waits up to 5 s for one to be free (then fails, the pool reported exhausted)."""
    if cfg.mode == "cluster":
        label = f"{name} pool of {connections}"
        return _cluster().cluster_client(cfg, connections, label, socket_timeout=5)
    if cfg.mode == "sentinel":
        from kafkaconsole.engine.redis_sentinel import sentinel_client  # builds on this module

        args = _redis_args(cfg, {"socket_timeout": 5})
        label = f"{name} pool of {connections}"
        return sentinel_client(cfg, *args, connections=connections, label=label)
    url, kwargs = _redis_args(cfg, {"socket_timeout": 5})
    pool = WatchedConnectionPool.from_url(
        url, max_connections=connections, timeout=POOL_WAIT_S, **kwargs
    )
    pool.label = f"{name} pool of {connections}"
    return Redis.from_pool(pool)


def _redis_args(cfg: RedisConfig, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {"health_check_interval": 10, "socket_connect_timeout": 5}
    if cfg.username:
        kwargs["username"] = cfg.username
    if cfg.password:
        kwargs["password"] = cfg.password
    url = cfg.url
    if cfg.tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://") :]
    if url.startswith("rediss://") and cfg.ssl_ca_certs:
        kwargs["ssl_ca_certs"] = cfg.ssl_ca_certs
    kwargs.update(extra)
    return url, kwargs


def _is_loopback_host(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def security_warnings(config: AppConfig) -> list[str]:
    """Settings that work but weaken security (each logged once when the engine starts)."""
    out: list[str] = []
    kafka = config.kafka
    if kafka.security_protocol == "SASL_PLAINTEXT":
        out.append(
            f"Kafka: SASL {kafka.sasl_mechanism} over an unencrypted connection "
            "(security_protocol SASL_PLAINTEXT, allow_insecure = true): use SASL_SSL"
        )
    if kafka.security_protocol in ("SSL", "SASL_SSL") and not kafka.ssl_check_hostname:
        out.append(
            "Kafka: ssl_check_hostname = false: the brokers' certificates are not matched "
            "against their host names"
        )
    redis = config.redis
    parts = urlsplit(redis.url)
    tls = redis.tls or parts.scheme == "rediss"
    has_password = bool(redis.password or parts.password)
    if (
        has_password
        and not tls
        and parts.scheme != "unix"
        and not _is_loopback_host(parts.hostname)
    ):
        out.append(
            f"Redis: password sent without TLS to {parts.hostname}: use rediss:// (or tls = true)"
        )
    api = config.api
    if api.enabled and api.token is not None and 0 < len(api.token) < 16:
        out.append("API: [api] token is shorter than 16 characters; use a long random token")
    for name, pipeline in config.pipelines.items():
        if getattr(pipeline, "verify", True) is False:
            out.append(insecure_warning(f"pipeline {name}"))
    for rule in config.monitoring.alerts:
        if rule.channel == "webhook" and not rule.verify:
            out.append(insecure_warning(f"alert {rule.rule_id}"))
    return out


async def check_redis_access(
    redis: Redis, prefix: str, *, base: str | None = None, where: str = ""
) -> None:
    """Run each command of :data:`REDIS_COMMANDS` once on throw-away keys under ``prefix``
    (their names start with ``base``; on a cluster: on every primary, see
    :func:`.redis_cluster.check_cluster_access`).

    Raises :class:`RedisAccessError` naming every command (or the key pattern) the Redis user
    may not use, so an ACL user missing a permission fails at start with one clear message
    instead of in a background task later. Other errors of the probe are ignored.
    """
    if _cluster().is_cluster(redis):
        return await _cluster().check_cluster_access(redis, prefix)
    base = base or FleetKeys(prefix).probe(uuid.uuid4().hex)
    k_str, k_hash, k_stream, k_zset = f"{base}:s", f"{base}:h", f"{base}:x", f"{base}:z"
    script = "return 1"
    sha = hashlib.sha1(script.encode()).hexdigest()  # Redis names scripts by their SHA-1
    probes: list[tuple[str, tuple[Any, ...]]] = [
        ("time", ("TIME",)),
        ("info", ("INFO", "clients")),
        ("cluster|slots", ("CLUSTER", "SLOTS")),  # a single server answers an error: fine
        ("command", ("COMMAND", "INFO", "get")),  # (parsed like COMMAND: same shape)
        ("set", ("SET", k_str, "1", "PX", 60_000)),
        ("get", ("GET", k_str)),
        ("mget", ("MGET", k_str)),
        ("pexpire", ("PEXPIRE", k_str, 60_000)),
        ("pttl", ("PTTL", k_str)),
        ("hset", ("HSET", k_hash, "f", "1")),
        ("hincrby", ("HINCRBY", k_hash, "n", 1)),
        ("hget", ("HGET", k_hash, "f")),
        ("hmget", ("HMGET", k_hash, "f", "n")),
        ("hgetall", ("HGETALL", k_hash)),
        ("hdel", ("HDEL", k_hash, "f")),
        ("xadd", ("XADD", k_stream, "MAXLEN", "~", 10, "*", "f", "1")),
        ("xgroup|create", ("XGROUP", "CREATE", k_stream, "g", "0", "MKSTREAM")),
        ("xreadgroup", ("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "STREAMS", k_stream, ">")),
        ("xautoclaim", ("XAUTOCLAIM", k_stream, "g", "c", 0, "0-0", "COUNT", 1)),
        ("xclaim", ("XCLAIM", k_stream, "g", "c", 0, "0-1", "JUSTID")),
        ("xack", ("XACK", k_stream, "g", "0-1")),
        ("xdel", ("XDEL", k_stream, "0-1")),
        ("xrange", ("XRANGE", k_stream, "-", "+", "COUNT", 1)),
        ("xrevrange", ("XREVRANGE", k_stream, "+", "-", "COUNT", 1)),
        ("xlen", ("XLEN", k_stream)),
        ("zadd", ("ZADD", k_zset, 1, "m")),
        ("zrange", ("ZRANGE", k_zset, 0, -1)),
        ("zremrangebyscore", ("ZREMRANGEBYSCORE", k_zset, "-inf", 0)),
        ("zrem", ("ZREM", k_zset, "m")),
        ("xread", ("XREAD", "COUNT", 1, "STREAMS", k_stream, "0-0")),
        ("publish", ("PUBLISH", f"{base}:channel", "probe")),
        ("scan", ("SCAN", 0, "MATCH", f"{base}:*", "COUNT", 10)),
        # the probe keys expire even if the clean-up below is refused
        ("pexpire", ("PEXPIRE", k_hash, 60_000)),
        ("pexpire", ("PEXPIRE", k_stream, 60_000)),
        ("pexpire", ("PEXPIRE", k_zset, 60_000)),
        ("script|load", ("SCRIPT", "LOAD", script)),
        ("script|exists", ("SCRIPT", "EXISTS", sha)),
        ("evalsha", ("EVALSHA", sha, 0)),
    ]
    pipe = redis.pipeline(transaction=False)
    for _, args in probes:
        pipe.execute_command(*args)
    results = await pipe.execute(raise_on_error=False)
    denied: list[str] = []
    scopes: set[str] = set()

    def note(name: str, exc: NoPermissionError) -> None:
        text = str(exc).lower()
        if "command" in text:
            denied.append(name)
        elif "channel" in text:
            scopes.add(f"channels {prefix}:*")
        else:
            scopes.add(f"keys {prefix}:*")

    for (name, _), result in zip(probes, results, strict=True):
        if isinstance(result, NoPermissionError):
            note(name, result)
    try:
        async with redis.pipeline(transaction=True) as tx:
            await tx.watch(k_str)
            tx.multi()
            tx.delete(k_str, k_hash, k_stream, k_zset)
            await tx.execute()
    except NoPermissionError as exc:
        named = [c for c in ("watch", "multi", "exec", "del") if f"'{c}'" in str(exc).lower()]
        for name in named or ["multi"]:
            note(name, exc)
    except ResponseError:
        pass
    if denied or scopes:
        missing = [f"the command(s) {', '.join(n.upper() for n in dict.fromkeys(denied))}"]
        missing = (missing if denied else []) + sorted(scopes)
        raise RedisAccessError(
            f"the Redis user{where} may not use {' and '.join(missing)}, which kafkaconsole needs "
            "(grant the ACL line of README Security)"
        )
