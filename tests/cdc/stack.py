"""The change-data-capture stack of the tier: a PostgreSQL cluster and Kafka Connect workers
running Debezium's PostgreSQL connector, all child processes of the test session.

- :class:`Postgres`: a throw-away cluster made by ``initdb`` (Debian's packages) in a temp
  folder, on a free loopback port, ``wal_level = logical`` so Debezium can stream it with the
  built-in ``pgoutput`` plugin. ``initdb`` and ``postgres`` refuse to run as root: as root they
  run as the ``postgres`` system user (the package creates it), and the cluster's folder is
  given to that user. SQL goes through ``psql``.
- :class:`ConnectWorker`: Kafka Connect in standalone mode (its offsets in a local file) from
  the pinned jars of :mod:`tests.cdc.stack_jars`, with Debezium as its one plugin, its
  connectors given on the command line (so a restart brings them back), its REST API on a free
  port. :meth:`ConnectWorker.kill` is a crash (SIGKILL); :meth:`ConnectWorker.start` runs the
  same command again.

Only the processes started here are stopped, by their own handles.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafkaconsole.embedded import free_port
from kafkaconsole.kafka_jars import KafkaJarsError, ensure_jars, java_binary
from tests.cdc.stack_jars import CONNECT, DEBEZIUM_POSTGRES

POSTGRES_READY_TIMEOUT = 60.0
CONNECT_READY_TIMEOUT = 120.0
"""Seconds for a Connect worker's REST API to answer and its connector's task to run (a JVM
start, plugin scanning and a snapshot on 2 busy cores)."""


class StackUnavailable(RuntimeError):
    """A part of the stack cannot run on this machine (the tier skips with this reason)."""


# ---- PostgreSQL --------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The folder of ``initdb`` and ``postgres``: ``$KAFKACONSOLE_PG_BIN``, Debian's newest
    ``/usr/lib/postgresql/<major>/bin``, else the one of ``initdb`` on PATH."""
    configured = os.environ.get("KAFKACONSOLE_PG_BIN")
    candidates = [Path(configured)] if configured else []
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "postgres", "psql")):
            return folder
    raise StackUnavailable(
        "PostgreSQL is not installed (initdb, postgres and psql; Debian: apt-get install "
        "postgresql)"
    )


def _server_user() -> pwd.struct_passwd | None:
    """The system user the cluster runs as when the tests run as root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StackUnavailable(
            "running as root and no 'postgres' system user exists (initdb refuses root)"
        ) from exc


@dataclass
class Postgres:
    """A PostgreSQL cluster of its own, with logical decoding on."""

    bin_dir: Path
    home: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    user: pwd.struct_passwd | None = None

    @classmethod
    def start(cls) -> Postgres:
        bin_dir = postgres_bin_dir()
        user = _server_user()
        home = Path(tempfile.mkdtemp(prefix="kafkaconsole-pg-"))
        server = cls(bin_dir, home, free_port(), user=user)
        (home / "data").mkdir()
        (home / "socket").mkdir()
        if user is not None:
            for path in (home, home / "data", home / "socket"):
                os.chown(path, user.pw_uid, user.pw_gid)
        initdb = server._run_as_server(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(home / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        if initdb.returncode != 0:
            tail = initdb.stdout.decode(errors="replace").strip().splitlines()[-3:]
            shutil.rmtree(home, ignore_errors=True)
            raise StackUnavailable("initdb failed: " + " | ".join(tail))
        try:
            server.proc = server._spawn()
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _run_as_server(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            argv,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
            **self._identity(),
        )

    def _identity(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _spawn(self) -> subprocess.Popen[bytes]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.home / "socket"),
            "wal_level": "logical",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.home / "data")]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                argv,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                **self._identity(),
            )

    @property
    def log_path(self) -> Path:
        return self.home / "postgres.log"

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + POSTGRES_READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise StackUnavailable(
                    f"postgres exited with code {self.proc.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(subprocess.CalledProcessError):
                self.sql("SELECT 1")
                return
            time.sleep(0.2)
        raise StackUnavailable(f"postgres did not answer within {POSTGRES_READY_TIMEOUT:.0f}s")

    def sql(self, statements: str, database: str = "postgres") -> str:
        """Run SQL with psql (stop at the first error); its unaligned output."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statements,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, "psql", result.stdout, result.stderr
            )
        return result.stdout.strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)


# ---- Kafka Connect with Debezium ---------------------------------------------------------


def connect_jars() -> tuple[Path, Path]:
    """The Connect runtime's jar folder and the Debezium plugin's, fetched on first use."""
    if java_binary() is None:
        raise StackUnavailable("Java is not installed (Kafka Connect needs Java 17 or newer)")
    try:
        return ensure_jars(CONNECT), ensure_jars(DEBEZIUM_POSTGRES)
    except KafkaJarsError as exc:
        raise StackUnavailable(str(exc)) from exc


def debezium_connector(
    name: str,
    postgres: Postgres,
    database: str,
    *,
    topic_prefix: str,
    tables: list[str],
    schemas: bool,
    **extra: str,
) -> dict[str, str]:
    """A Debezium PostgreSQL connector's config: pgoutput, its own slot and publication (only
    ``tables``), JSON keys and values with or without the schema wrapper."""
    slot = name.replace("-", "_").lower()
    return {
        "name": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "database.hostname": "127.0.0.1",
        "database.port": str(postgres.port),
        "database.user": "postgres",
        "database.password": "postgres",
        "database.dbname": database,
        "topic.prefix": topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": f"{slot}_pub",
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(tables),
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": str(schemas).lower(),
        "value.converter.schemas.enable": str(schemas).lower(),
        **extra,
    }


def _log4j(path: Path) -> Path:
    path.write_text(
        "status = error\n"
        "appender.out.type = Console\n"
        "appender.out.name = out\n"
        "appender.out.layout.type = PatternLayout\n"
        "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = info\n"
        "rootLogger.appenderRef.out.ref = out\n"
        "logger.clients.name = org.apache.kafka.clients\nlogger.clients.level = warn\n"
        "logger.reflections.name = org.reflections\nlogger.reflections.level = error\n"
    )
    return path


@dataclass
class ConnectWorker:
    """A standalone Kafka Connect worker running ``connectors`` (configs by name)."""

    bootstrap_servers: str
    connectors: dict[str, dict[str, str]]
    home: Path
    offset_flush_interval_ms: int = 600_000
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "connect.log"

    @property
    def offsets_file(self) -> Path:
        return self.home / "offsets.dat"

    def prepare(self) -> None:
        runtime, plugin = connect_jars()
        java = java_binary()
        assert java is not None
        self.home.mkdir(parents=True, exist_ok=True)
        worker = {
            "bootstrap.servers": self.bootstrap_servers,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "offset.storage.file.filename": str(self.offsets_file),
            "offset.flush.interval.ms": str(self.offset_flush_interval_ms),
            # the plugin folder holds one plugin: the connector's jars
            "plugin.path": str(plugin.parent),
            "listeners": f"http://127.0.0.1:{self.port}",
        }
        config = self.home / "worker.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in worker.items()))
        files = []
        for name, settings in self.connectors.items():
            path = self.home / f"{name}.properties"
            # a backslash is an escape in a .properties file (regexes have them)
            text = "".join(f"{k}={v}\n".replace("\\", "\\\\") for k, v in settings.items())
            path.write_text(text)
            files.append(str(path))
        self.argv = [
            java,
            "-Xmx384m",
            "-Xms128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_log4j(self.home / 'log4j2.properties')}",
            "-cp",
            f"{runtime}/*",
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(config),
            *files,
        ]

    def start(self) -> None:
        """Start the worker (again, after a stop or kill); wait until every connector's task
        runs."""
        if not self.argv:
            self.prepare()
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"Kafka Connect on port {self.port} is still running")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "JAVA_TOOL"))}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + CONNECT_READY_TIMEOUT
        for name in self.connectors:
            self.wait_running(name, deadline)

    def status(self, name: str) -> dict[str, Any] | None:
        """The connector's REST status, or None while the worker does not answer or does not
        know it yet."""
        try:
            with urllib.request.urlopen(f"{self.url}/connectors/{name}/status", timeout=2) as r:
                body: dict[str, Any] = json.loads(r.read())
                return body
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def wait_running(self, name: str, deadline: float) -> None:
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Kafka Connect exited with code {self.proc.returncode} (log: {self.log_path})"
                )
            last = self.status(name)
            if last is not None:
                states = [last["connector"]["state"], *(t["state"] for t in last["tasks"])]
                if "FAILED" in states:
                    trace = next((t.get("trace", "") for t in last["tasks"] if t.get("trace")), "")
                    raise RuntimeError(f"connector {name} failed: {trace.splitlines()[:3]}")
                if last["tasks"] and all(state == "RUNNING" for state in states):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"connector {name} not running in time: {last} (log: {self.log_path})")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the worker crashes without committing its offsets."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM: the worker stops its tasks and commits their offsets."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def main() -> int:
    """``python -m tests.cdc.stack``: where PostgreSQL's binaries are, or why there are none."""
    try:
        print(f"PostgreSQL: {postgres_bin_dir()}")
    except StackUnavailable as exc:
        print(f"PostgreSQL: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
