"""A Redis Sentinel setup for tests: a primary, replicas and three sentinels on free ports.

Every server is the ``valkey-server`` binary :mod:`kafkaconsole.embedded` finds (a sentinel is
the same binary with ``--sentinel``). :func:`start_sentinel_setup` waits until every sentinel
sees the primary, its replicas and the other sentinels; :meth:`SentinelSetup.stop` stops only
the processes started here (by their own handles).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from kafkaconsole.embedded import EmbeddedError, ManagedProcess, free_port, redis_binary, stop_all

#: Sentinels of the setup; two must agree the primary is down (quorum).
SENTINELS = 3
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def _spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _client(port: int, password: str | None) -> redis.Redis:
    return redis.Redis(port=port, password=password, socket_timeout=1, socket_connect_timeout=1)


def _wait_ping(node: ManagedProcess, password: str | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not node.alive():
            raise EmbeddedError(f"{node.name} on port {node.port} exited; see {node.log_path}")
        try:
            with _client(node.port, password) as client:
                client.ping()
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise EmbeddedError(f"{node.name} on port {node.port} did not answer: {last}")


@dataclass
class SentinelSetup:
    """The processes of one setup (:attr:`primary`: the one started as primary)."""

    service: str
    primary: ManagedProcess
    replicas: list[ManagedProcess]
    sentinels: list[ManagedProcess]
    password: str | None = None
    sentinel_password: str | None = None

    @property
    def nodes(self) -> list[ManagedProcess]:
        return [self.primary, *self.replicas]

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    @property
    def url(self) -> str:
        """The data nodes' url: credentials and db (its host is not used in sentinel mode)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}localhost:6379/0"

    def redis_config(self, **extra: Any) -> dict[str, Any]:
        """The ``[redis]`` settings of this setup."""
        cfg: dict[str, Any] = {
            "url": self.url,
            "mode": "sentinel",
            "sentinels": self.sentinel_addresses,
            "service_name": self.service,
            **extra,
        }
        if self.sentinel_password:
            cfg["sentinel_password"] = self.sentinel_password
        return cfg

    def data_client(self, port: int) -> redis.Redis:
        """A plain client of the data node on ``port``."""
        return _client(port, self.password)

    def master_state(self, sentinel: ManagedProcess) -> dict[str, Any]:
        with _client(sentinel.port, self.sentinel_password) as client:
            state: dict[str, Any] = client.execute_command("SENTINEL MASTER", self.service)
            return state

    def failover(self) -> None:
        """A manual failover (``SENTINEL FAILOVER``): a replica is promoted and the primary,
        alive, is made its replica."""
        with _client(self.sentinels[0].port, self.sentinel_password) as client:
            client.execute_command("SENTINEL FAILOVER", self.service)

    def agreed_primary(self, replicas: int = 0) -> int | None:
        """The primary's port if every sentinel sees it up there, with at least ``replicas``
        replicas and every other sentinel (None: not so)."""
        ports = set()
        for sentinel in self.sentinels:
            try:
                state = self.master_state(sentinel)
            except (redis.RedisError, OSError):
                return None
            if (
                not state["is_master"]
                or state["is_sdown"]
                or state["is_odown"]
                or state["num-other-sentinels"] < len(self.sentinels) - 1
                or state["num-slaves"] < replicas
            ):
                return None
            ports.add(int(state["port"]))
        return ports.pop() if len(ports) == 1 else None

    def wait_primary(
        self, port: int | None = None, replicas: int = 0, timeout: float = 30.0
    ) -> int:
        """Wait until the sentinels agree on a primary (``port``, if given); its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            agreed = self.agreed_primary(replicas)
            if agreed is not None and (port is None or agreed == port):
                return agreed
            time.sleep(0.05)
        states = []
        for sentinel in self.sentinels:
            try:
                states.append(self.master_state(sentinel))
            except (redis.RedisError, OSError) as exc:
                states.append({"error": str(exc)})
        raise EmbeddedError(
            f"the sentinels did not agree on a primary within {timeout:g}s: {states}"
        )

    def wait_synced(self, timeout: float = 15.0) -> None:
        """Wait until every replica started here has its link to the primary up (its
        initial sync done)."""
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            while True:
                try:
                    with self.data_client(replica.port) as client:
                        info: Any = client.info("replication")
                        if info.get("master_link_status") == "up":
                            break
                except (redis.RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"replica on port {replica.port} did not sync")
                time.sleep(0.05)

    def node(self, port: int) -> ManagedProcess:
        return next(node for node in self.nodes if node.port == port)

    def restart(self, node: ManagedProcess) -> None:
        """Start a stopped node again with the same command (same port and data folder)."""
        assert node.log_path is not None
        node.proc = _spawn(node.argv, node.log_path)
        _wait_ping(node, self.sentinel_password if node.name == "sentinel" else self.password)

    def stop(self) -> None:
        stop_all([*self.sentinels, *self.nodes], timeout=5)


def _start_node(folder: Path, password: str | None, extra: list[str]) -> ManagedProcess:
    port = free_port()
    argv = [
        redis_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(folder),
        "--loglevel", "warning",
        "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
        *extra,
    ]  # fmt: skip
    if password:
        argv += ["--requirepass", password, "--masterauth", password]
    log_path = folder / "server.log"
    node = ManagedProcess("redis", _spawn(argv, log_path), port, argv, None, log_path)
    _wait_ping(node, password)
    return node


def _start_sentinel(
    folder: Path,
    service: str,
    primary_port: int,
    password: str | None,
    sentinel_password: str | None,
) -> ManagedProcess:
    port = free_port()
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f"dir {folder}",
        "sentinel resolve-hostnames no",
        f"sentinel monitor {service} 127.0.0.1 {primary_port} {QUORUM}",
        f"sentinel down-after-milliseconds {service} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {service} {FAILOVER_TIMEOUT_MS}",
    ]
    if password:
        lines.append(f"sentinel auth-pass {service} {password}")
    if sentinel_password:
        lines += [f"requirepass {sentinel_password}", f"sentinel sentinel-pass {sentinel_password}"]
    conf = folder / "sentinel.conf"  # each sentinel rewrites its own file
    conf.write_text("\n".join(lines) + "\n")
    argv = [redis_binary(), str(conf), "--sentinel"]
    log_path = folder / "sentinel.log"
    sentinel = ManagedProcess("sentinel", _spawn(argv, log_path), port, argv, None, log_path)
    _wait_ping(sentinel, sentinel_password)
    return sentinel


def start_sentinel_setup(
    workdir: Path,
    *,
    service: str = "kc",
    replicas: int = 1,
    password: str | None = None,
    sentinel_password: str | None = None,
    primary_args: list[str] | None = None,
) -> SentinelSetup:
    """Start a primary, ``replicas`` replicas (``--replicaof``) and three sentinels that
    monitor them as ``service``; wait until the sentinels agree."""
    started: list[ManagedProcess] = []

    def folder(name: str) -> Path:
        path = workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    try:
        primary = _start_node(folder("primary"), password, primary_args or [])
        started.append(primary)
        nodes = []
        for i in range(replicas):
            replica_of = ["--replicaof", "127.0.0.1", str(primary.port)]
            nodes.append(_start_node(folder(f"replica{i}"), password, replica_of))
            started.append(nodes[-1])
        sentinels = []
        for i in range(SENTINELS):
            sentinels.append(
                _start_sentinel(
                    folder(f"sentinel{i}"), service, primary.port, password, sentinel_password
                )
            )
            started.append(sentinels[-1])
        setup = SentinelSetup(service, primary, nodes, sentinels, password, sentinel_password)
        setup.wait_synced()
        setup.wait_primary(primary.port, replicas=replicas)
        return setup
    except BaseException:
        stop_all(started, timeout=5)
        raise
