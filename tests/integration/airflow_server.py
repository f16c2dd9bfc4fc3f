"""A real Apache Airflow (``airflow standalone``) for the integration tier.

``scripts/integration.sh`` installs Airflow 3 and Airflow 2 into cached virtual environments
and names their ``bin`` folders in ``KAFKACONSOLE_AIRFLOW3_BIN`` / ``KAFKACONSOLE_AIRFLOW2_BIN``.
:class:`AirflowServer` starts one of them on free loopback ports with SQLite, a fresh
``AIRFLOW_HOME`` and the DAG folder next to this file, waits until it answers, and stops it by
its process group (it was started in a new session, so the group is its own).

Airflow 3: the simple auth manager with one admin user whose password the test chooses, JWTs
living :data:`JWT_LIFETIME` seconds (short, so the token renewal runs for real). Airflow 2: the
standalone ``admin`` user (password read from ``standalone_admin_password.txt``) and the
basic-auth API backend.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DAGS = Path(__file__).resolve().parent / "dags"
DAG_IDS = ("kafkaconsole_it_load", "kafkaconsole_it_fails")
JWT_LIFETIME = 30
"""Seconds an Airflow 3 access token lives in the tier (Airflow's default is a day)."""
JWT_LEEWAY = 10
"""Seconds past its ``exp`` that Airflow 3 still accepts a token (its default, set explicitly)."""
READY_TIMEOUT = 360.0
"""Seconds a cold Airflow may take to answer (about 30-90 s on 2 busy cores)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AirflowNotReady(RuntimeError):
    pass


@dataclass
class AirflowServer:
    major: int
    bin_dir: Path
    home: Path
    port: int = field(default_factory=free_port)
    username: str = "kafkaconsole"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_version(self) -> str:
        return "v2" if self.major >= 3 else "v1"

    @property
    def log_path(self) -> Path:
        return self.home / "standalone.log"

    def environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("AIRFLOW") and key not in ("VIRTUAL_ENV", "PYTHONPATH")
        }
        env.update(
            PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL="5",
        )
        if self.major >= 3:
            passwords = self.home / "passwords.json"
            passwords.write_text(json.dumps({self.username: self.password}))
            env.update(
                AIRFLOW__API__HOST="127.0.0.1",
                AIRFLOW__API__PORT=str(self.port),
                AIRFLOW__API__WORKERS="1",
                AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{self.username}:admin",
                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
                AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME=str(JWT_LIFETIME),
                AIRFLOW__API_AUTH__JWT_LEEWAY=str(JWT_LEEWAY),
            )
        else:
            env.update(
                AIRFLOW__WEBSERVER__WEB_SERVER_HOST="127.0.0.1",
                AIRFLOW__WEBSERVER__WEB_SERVER_PORT=str(self.port),
                AIRFLOW__WEBSERVER__WORKERS="1",
                # Airflow 2's gunicorn monitor shuts the webserver down when a worker is slow to
                # boot (it counts 0 workers, asks for one more and waits for two): on busy
                # cores, give it an hour instead of 2 minutes, and slow requests 10 minutes.
                AIRFLOW__WEBSERVER__WEB_SERVER_MASTER_TIMEOUT="3600",
                AIRFLOW__WEBSERVER__WEB_SERVER_WORKER_TIMEOUT="600",
                AIRFLOW__API__AUTH_BACKENDS="airflow.api.auth.backend.basic_auth",
            )
        return env

    def start(self) -> AirflowServer:
        """Launch ``airflow standalone`` (returns at once; see :meth:`wait_ready`)."""
        self.home.mkdir(parents=True, exist_ok=True)
        airflow = self.bin_dir / "airflow"
        if not airflow.exists():
            raise AirflowNotReady(f"{airflow} is missing: run scripts/integration.sh")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(airflow), "standalone"],
                cwd=self.home,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    # -- talking to it (blocking: only from fixtures and threads) --------------------------------

    def _request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def _auth(self) -> dict[str, str]:
        if self.major >= 3:
            status, body = self._request(
                "POST", "/auth/token", {"username": self.username, "password": self.password}
            )
            if status != 201:
                raise AirflowNotReady(f"POST /auth/token: HTTP {status}: {body}")
            return {"Authorization": f"Bearer {body['access_token']}"}
        pair = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """An authenticated call to ``/api/<version><path>``."""
        return self._request(method, f"/api/{self.api_version}{path}", body, self._auth())

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        status, body = self.api("GET", f"/dags/{dag_id}/dagRuns?limit=100")
        assert status == 200, body
        runs: list[dict[str, Any]] = body["dag_runs"]
        return runs

    def _ready(self) -> str | None:
        """None once the API answers, every component is healthy and the DAGs are loaded
        and unpaused; else what is still missing."""
        health_path = "/api/v2/monitor/health" if self.major >= 3 else "/api/v1/health"
        status, health = self._request("GET", health_path)
        if status != 200 or not isinstance(health, dict):
            return f"health: HTTP {status}"
        for component in ("metadatabase", "scheduler", "triggerer"):
            if (health.get(component) or {}).get("status") != "healthy":
                return f"{component} not healthy yet"
        if self.major < 3:
            password_file = self.home / "standalone_admin_password.txt"
            if not password_file.exists():
                return "no admin password yet"
            self.username, self.password = "admin", password_file.read_text().strip()
        for dag_id in DAG_IDS:
            status, dag = self.api("GET", f"/dags/{dag_id}")
            if status != 200:
                return f"DAG {dag_id}: HTTP {status}"
            if dag.get("is_paused"):
                return f"DAG {dag_id} is paused"
        return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Block until :meth:`_ready`; returns the seconds it took since start."""
        assert self.process is not None
        started = time.monotonic()
        waiting_for = "nothing tried yet"
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise AirflowNotReady(
                    f"airflow standalone {self.major} exited with {self.process.returncode}:\n"
                    + self.log_tail()
                )
            try:
                missing = self._ready()
            except (OSError, AirflowNotReady) as exc:
                missing = f"{type(exc).__name__}: {exc}"
            if missing is None:
                return time.monotonic() - started
            waiting_for = missing
            time.sleep(1.0)
        raise AirflowNotReady(
            f"Airflow {self.major} not ready after {timeout:.0f}s ({waiting_for}):\n"
            + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the server's own process group, SIGKILL after 30 s."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; give its group (api-server, scheduler...) the same grace
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(process.pid):
                time.sleep(0.2)
            if not _group_alive(process.pid):
                return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
