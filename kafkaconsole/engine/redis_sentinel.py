"""Redis Sentinel (``[redis] mode = "sentinel"``): connections that follow the primary.

Every connection asks the sentinels where the primary of ``service_name`` is when it connects,
so after a failover (the primary dead, a replica promoted) each client of the engine reaches
the new primary by itself the next time it connects: the pool, the control listener's
subscription, the dispatch wake-up, the time closer, the health monitor and the HTTP API.
While commands run the process also asks again once a second, in the background
(:data:`RECHECK_S`), so a primary that moved while the connections stayed up (a manual
failover) is followed too: idle connections are closed then, and one in use when it is handed
back. A connection still open to an old primary that came back as a replica is left at its
first ``READONLY`` answer (redis-py's
:class:`~redis.asyncio.sentinel.SentinelManagedConnection`).

The pools are :class:`~kafkaconsole.engine.clients.WatchedConnectionPool` s (bounded, first
come first served, exhaustion a degraded state) whose connections are sentinel-managed. When
the sentinels know no primary (it is down and no replica could be promoted, or no sentinel
answers), connecting fails with :class:`NoPrimary`, one line naming the service and the
sentinels is logged for the whole process (not one per pool or command), and
:attr:`SentinelPool.exhausted` names the reason for ``/ready`` and the console header until
a primary is known again (one line then too).

The url of ``[redis]`` still gives the data nodes' credentials, db and TLS (its host and port
are not used); ``sentinel_password`` authenticates to the sentinels, which are reached over
TLS when the data nodes are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
    SlaveNotFoundError,
)
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from kafkaconsole.config.models import RedisConfig
from kafkaconsole.engine.clients import POOL_WAIT_S, WatchedConnectionPool

log = logging.getLogger("kafkaconsole.redis")

NO_PRIMARY = "Redis Sentinel: no primary"
"""How every reason of a missing primary begins (the console header looks for it)."""
#: How long one sentinel may take to answer (connect, then reply) before the next is asked.
SENTINEL_TIMEOUT_S = 2.0
#: How often the sentinels are asked again while commands run (by one pool of the process at
#: a time, in the background): a primary that moved is followed even when no connection
#: broke (a manual failover leaves the old primary writable until the sentinels demote it),
#: and a missing primary is noticed back without waiting for a new connection.
RECHECK_S = 1.0


class NoPrimary(MasterNotFoundError):
    """The sentinels know no primary of the service: nothing was sent."""


def sentinel_address(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:26379``) as a (host, port) pair."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class _ServiceState:
    """What this process knows of one service's primary, shared by all of its pools (so a
    failover or an outage is logged once, not once per pool)."""

    primary: tuple[str, int] | None = None
    missing: str | None = None
    checked_at: float = float("-inf")


_STATES: dict[tuple[str, tuple[str, ...]], _ServiceState] = {}


class PrimaryFinder:
    """Asks a service's sentinels for its primary (and replicas), in turn.

    Each pool has its own (its sentinel clients belong to the pool's event loop); what they
    find is kept in one :class:`_ServiceState` per service and process.
    """

    def __init__(self, cfg: RedisConfig, *, tls: dict[str, Any] | None) -> None:
        assert cfg.service_name is not None
        self.service = cfg.service_name
        self.addresses = tuple(cfg.sentinels)
        self.state = _STATES.setdefault((self.service, self.addresses), _ServiceState())
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "retry": Retry(NoBackoff(), 0),  # the next sentinel is the retry
            "password": cfg.sentinel_password,
            **(tls or {}),
        }
        self._sentinels = [
            (text, Redis(host=host, port=port, **kwargs))
            for text in self.addresses
            for host, port in [sentinel_address(text)]
        ]
        # one question at a time: connections opened together (after a failover, a whole
        # pool) ask in turn, over one connection per sentinel
        self._asking = asyncio.Lock()

    def describe(self) -> str:
        return f"service {self.service!r} (sentinels {', '.join(self.addresses)})"

    async def primary(self) -> tuple[str, int]:
        """The primary's address as the first sentinel that knows it up says; raises
        :class:`NoPrimary` (logged once per outage) when none does."""
        async with self._asking:
            return await self._ask_primary()

    async def _ask_primary(self) -> tuple[str, int]:
        self.state.checked_at = time.monotonic()
        problems: dict[str, list[str]] = {}
        for i, (text, sentinel) in enumerate(self._sentinels):
            try:
                state: Any = await sentinel.execute_command("SENTINEL MASTER", self.service)
            except AuthenticationError:
                problems.setdefault("refuse the password (sentinel_password)", []).append(text)
                continue
            except ResponseError as exc:
                if "no such master" in str(exc).lower():
                    problems.setdefault("do not monitor this service", []).append(text)
                elif "noauth" in str(exc).lower() or "wrongpass" in str(exc).lower():
                    problems.setdefault("refuse the password (sentinel_password)", []).append(text)
                else:
                    problems.setdefault(f"answer {exc}", []).append(text)
                continue
            except (RedisError, OSError):
                problems.setdefault("do not answer", []).append(text)
                continue
            if state["is_master"] and not state["is_sdown"] and not state["is_odown"]:
                if i:  # ask the one that knew first next time
                    self._sentinels.insert(0, self._sentinels.pop(i))
                address = (str(state["ip"]), int(state["port"]))
                self._found(address)
                return address
            problems.setdefault("see the primary down", []).append(text)
        reason = self._reason(problems)
        if self.state.missing is None:
            log.warning("%s", reason)
        self.state.missing = reason
        raise NoPrimary(reason)

    def _reason(self, problems: dict[str, list[str]]) -> str:
        parts = [
            f"{'the sentinels' if len(where) == len(self.addresses) else ', '.join(where)} {what}"
            for what, where in problems.items()
        ]
        return f"{NO_PRIMARY} for {self.describe()}: {'; '.join(parts)}"

    def _found(self, address: tuple[str, int]) -> None:
        state = self.state
        where = f"{address[0]}:{address[1]}"
        was = f"{state.primary[0]}:{state.primary[1]}" if state.primary else None
        if state.primary is not None and state.primary != address:
            log.warning(
                "Redis Sentinel: service %r failed over: its primary is now %s (was %s)",
                self.service,
                where,
                was,
            )
        elif state.missing is not None:
            log.info("Redis Sentinel: service %r has its primary again, at %s", self.service, where)
        elif state.primary is None:
            log.info("Redis Sentinel: the primary of service %r is at %s", self.service, where)
        state.primary = address
        state.missing = None

    def due(self) -> bool:
        """Whether the sentinels were last asked (by any pool of the process) over
        :data:`RECHECK_S` ago."""
        return time.monotonic() - self.state.checked_at >= RECHECK_S

    async def replicas(self) -> list[tuple[str, int]]:
        """The replicas the first answering sentinel sees up (none: an empty list)."""
        for _, sentinel in self._sentinels:
            try:
                found: Any = await sentinel.execute_command("SENTINEL SLAVES", self.service)
            except (RedisError, OSError):
                continue
            up = [
                (str(r["ip"]), int(r["port"]))
                for r in found
                if not (r["is_sdown"] or r["is_odown"])
            ]
            if up:
                return up
        return []

    async def aclose(self) -> None:
        for _, sentinel in self._sentinels:
            with contextlib.suppress(RedisError, OSError):
                await sentinel.aclose()


class SentinelPool(WatchedConnectionPool):
    """A :class:`WatchedConnectionPool` whose connections reach the service's primary.

    It plays the part of redis-py's ``SentinelConnectionPool`` for the sentinel-managed
    connections (``is_master``, ``get_master_address``, ``rotate_slaves``), asking a
    :class:`PrimaryFinder`.
    """

    def __init__(self, finder: PrimaryFinder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connection_kwargs["connection_pool"] = weakref.proxy(self)
        self.finder = finder
        self.is_master = True
        self.check_connection = False
        self.master_address: tuple[str, int] | None = None
        self._watching: asyncio.Task[None] | None = None

    async def get_master_address(self) -> tuple[str, int]:
        address = await self.finder.primary()
        await self._follow(address)
        return address

    async def _follow(self, address: tuple[str, int]) -> None:
        if self.master_address != address:
            moved = self.master_address is not None
            self.master_address = address
            if moved:  # idle connections reconnect to the new primary when next used; the
                # ones in use are closed when handed back (release)
                await self.disconnect(inuse_connections=False)

    async def rotate_slaves(self) -> AsyncIterator[tuple[str, int]]:
        for replica in await self.finder.replicas():
            yield replica
        with contextlib.suppress(MasterNotFoundError):
            yield await self.get_master_address()
        raise SlaveNotFoundError(f"no replica found for {self.finder.describe()}")

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        self._watch()
        return await super().get_connection(*args, **options)

    def _watch(self) -> None:
        """Check in the background, at most every :data:`RECHECK_S`, that the primary has not
        moved (one check at a time; nothing waits for it)."""
        if self._watching is None or self._watching.done():
            state = self.finder.state
            moved = state.missing is None and state.primary not in (None, self.master_address)
            if moved or self.finder.due():
                self._watching = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        state = self.finder.state
        try:
            if self.finder.due():
                await self.get_master_address()
            elif state.missing is None and state.primary is not None:
                await self._follow(state.primary)  # another pool of the process asked
        except MasterNotFoundError:
            pass  # logged once (PrimaryFinder.primary); the pool names it (exhausted)
        except Exception as exc:  # never an unretrieved task error: the next check retries
            log.debug("Redis Sentinel: checking the primary failed: %s", exc)

    async def release(self, connection: Any) -> None:
        # a connection to where the primary was is not kept: the next use connects anew
        address = (getattr(connection, "host", None), getattr(connection, "port", None))
        if self.master_address is not None and address != self.master_address:
            with contextlib.suppress(RedisError, OSError):
                await connection.disconnect()
        await super().release(connection)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        try:
            await super().disconnect(inuse_connections)
        finally:
            if inuse_connections:  # closing the client: the check and the sentinels too
                if self._watching is not None:
                    self._watching.cancel()
                    with contextlib.suppress(BaseException):
                        await self._watching
                    self._watching = None
                await self.finder.aclose()

    @property
    def exhausted(self) -> str | None:
        """Why the pool is degraded: no primary known now, or exhausted (see the base)."""
        return self.finder.state.missing or super().exhausted


def sentinel_client(
    cfg: RedisConfig,
    url: str,
    kwargs: dict[str, Any],
    *,
    connections: int,
    label: str | None = None,
) -> Redis:
    """A client of the service's primary: a :class:`SentinelPool` of ``connections``.

    ``url`` and ``kwargs`` are what the single-server client would use: the url's
    credentials, db and TLS (its host and port are not used) and the connection settings.
    """
    options = {**parse_url(url), **kwargs}
    if options.get("connection_class") is UnixDomainSocketConnection:
        raise ValueError('mode = "sentinel" needs a redis:// or rediss:// url, not unix://')
    for name in ("host", "port", "path"):
        options.pop(name, None)
    tls = options.pop("connection_class", None) is SSLConnection
    tls_kwargs: dict[str, Any] | None = None
    if tls:  # the sentinels are reached as the data nodes are
        tls_kwargs = {"ssl": True}
        if options.get("ssl_ca_certs"):
            tls_kwargs["ssl_ca_certs"] = options["ssl_ca_certs"]
    connection_class = SentinelManagedSSLConnection if tls else SentinelManagedConnection
    pool = SentinelPool(
        PrimaryFinder(cfg, tls=tls_kwargs),
        max_connections=connections,
        timeout=POOL_WAIT_S,
        connection_class=connection_class,
        **options,
    )
    if label is not None:
        pool.label = label
    return Redis.from_pool(pool)
