"""``run --workers N``: worker processes on this host, each an ordinary instance of the fleet.

The command's own process is worker 0 (its engine, its HTTP API, its console). Workers
1..N-1 are child processes ``python -m kafkaconsole run --no-ui --config F --instance-id
<id>-w<k>`` with the HTTP API switched off (``KAFKACONSOLE_API__ENABLED=false``): each joins
every consumer's group and shares Redis like any other instance, so the fleet view (status,
``/instances``, the console's instance count) shows them as instances.

Supervision: a worker that exits while the command runs is reported in one log line (code or
signal, the delay, the how-manyth restart) and restarted after a capped exponential backoff
(1 s doubling to 30 s; back to 1 s once a worker stayed up 60 s). Each exit is also recorded
in the engine's :attr:`~kafkaconsole.engine.engine.Engine.task_failures` (``worker <k>``), so
``/ready`` answers 503 degraded with the reason for a minute after it, and a crash loop keeps
it there. On stop every worker gets SIGTERM (a graceful stop, as for any instance) and is
waited for, at most :data:`STOP_TIMEOUT_S` seconds, then killed. Workers die with the command
(Linux: ``PR_SET_PDEATHSIG``, SIGTERM), so even a ``kill -9`` of it leaves no orphan behind.
SIGHUP (reload) is forwarded to every worker.

No Textual or Rich here: the headless face and the console both use this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kafkaconsole.config.models import AppConfig
from kafkaconsole.engine.engine import Engine

log = logging.getLogger("kafkaconsole.workers")

RESTART_FIRST_S = 1.0
"""Delay before the first restart of a worker that exited."""
RESTART_MAX_S = 30.0
"""Cap of the restart delay (it doubles from :data:`RESTART_FIRST_S` on each exit)."""
RESET_AFTER_S = 60.0
"""A worker that stayed up this long restarts after :data:`RESTART_FIRST_S` again."""
STOP_TIMEOUT_S = 30.0
"""How long a worker may take to stop after SIGTERM before it is killed."""

_PR_SET_PDEATHSIG = 1


def parse_workers(value: str | int | None) -> int:
    """``--workers``: a whole number >= 1, or ``auto`` (the cores this process may run on).

    Raises ``ValueError`` with the one-line reason."""
    if value is None:
        return 1
    text = str(value).strip().lower()
    if text == "auto":
        return usable_cores()
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number or 'auto'") from None
    if n < 1:
        raise ValueError(f"{n} is less than 1")
    return n


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        with contextlib.suppress(OSError):
            return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How the command runs its workers (the flags a worker gets from it)."""

    count: int
    log_format: str = "text"
    log_level: str = "info"
    forward_logs: bool = False
    """The console: a worker's log lines go through this process's logging (its log
    panel) instead of the terminal."""


def _die_with_parent(parent: int) -> Callable[[], None]:
    libc_name = ctypes.util.find_library("c")

    def preexec() -> None:
        if sys.platform.startswith("linux") and libc_name:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return preexec


class WorkerSupervisor:
    """Runs workers 1..N-1 of one command beside its own engine (worker 0)."""

    def __init__(self, config: AppConfig, engine: Engine, spec: WorkerSpec) -> None:
        if spec.count > 1 and not config.source_file:
            raise ValueError("--workers needs a configuration file (the workers read it)")
        self.config = config
        self.engine = engine
        self.spec = spec
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts: dict[int, int] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def worker_id(self, k: int) -> str:
        return f"{self.engine.instance_id}-w{k}"

    def command(self, k: int) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "kafkaconsole",
            "run",
            "--no-ui",
            "--workers",
            "1",
            "--config",
            str(self.config.source_file),
            "--instance-id",
            self.worker_id(k),
            "--log-format",
            self.spec.log_format,
            "--log-level",
            self.spec.log_level,
        ]
        if self.config.ui.read_only:
            argv.append("--read-only")
        return argv

    def pids(self) -> dict[int, int]:
        """The live workers' process ids, by worker number."""
        return {k: p.pid for k, p in self.procs.items() if p.returncode is None}

    async def start(self) -> None:
        for k in range(1, self.spec.count):
            self._tasks.append(asyncio.create_task(self._keep(k), name=f"worker {k}"))
        if self.spec.count > 1:
            ids = [self.worker_id(k) for k in range(1, self.spec.count)]
            log.info(
                "%d worker process%s besides this one: %s",
                len(ids),
                "" if len(ids) == 1 else "es",
                ", ".join(ids),
            )

    async def _spawn(self, k: int) -> asyncio.subprocess.Process:
        env = {**os.environ, "KAFKACONSOLE_API__ENABLED": "false"}
        env.pop("KAFKACONSOLE_WORKERS", None)
        forward = self.spec.forward_logs
        return await asyncio.create_subprocess_exec(
            *self.command(k),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if forward else None,
            env=env,
            # its own process group: Ctrl-C reaches this process only, which stops the workers
            process_group=0,
            preexec_fn=_die_with_parent(os.getpid()),
        )

    async def _forward(self, k: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            level = logging.INFO
            for name in ("CRITICAL", "ERROR", "WARNING"):
                if f" {name} " in text[:40] or f'"level": "{name.lower()}"' in text:
                    level = logging.getLevelNamesMapping()[name]
                    break
            log.log(level, "worker %d: %s", k, text)

    async def _keep(self, k: int) -> None:
        """Run worker ``k``; restart it with backoff whenever it exits before the stop."""
        consecutive = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                proc = await self._spawn(k)
            except OSError as exc:
                how = f"could not start ({exc.strerror or type(exc).__name__})"
            else:
                self.procs[k] = proc
                if self._stopping.is_set():  # the stop came while it was being started
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
                forward = (
                    asyncio.create_task(self._forward(k, proc)) if proc.stderr is not None else None
                )
                rc = await proc.wait()
                if forward is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(forward, 2)
                how = f"exited with {exit_text(rc)}"
            if self._stopping.is_set():
                return
            consecutive = 1 if time.monotonic() - began >= RESET_AFTER_S else consecutive + 1
            self.restarts[k] = self.restarts.get(k, 0) + 1
            delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** (consecutive - 1))
            text = (
                f"worker {k} ({self.worker_id(k)}) {how}; restarting in {delay:g} s "
                f"(restart {self.restarts[k]})"
            )
            log.error(text, extra={"event": "worker_exit"})
            self.engine.task_failures[f"worker {k}"] = (text, time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def forward(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every live worker (SIGHUP: reload)."""
        for proc in list(self.procs.values()):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every worker, wait for them (at most ``timeout`` s, then SIGKILL)."""
        self._stopping.set()
        live = len(self.pids())
        if live:
            log.info("stopping %d worker process(es)", live)
        self.forward(signal.SIGTERM)
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("%d worker(s) did not stop within %g s: killed", len(pending), timeout)
                self.forward(signal.SIGKILL)
                _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._tasks.clear()


def exit_text(rc: int) -> str:
    """``code 3`` or ``signal SIGKILL`` (a negative return code is the killing signal)."""
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"code {rc}"


def workers_extra(
    spec: WorkerSpec, started: Callable[[WorkerSupervisor], None] | None = None
) -> Callable[[Engine], Awaitable[Callable[[], Awaitable[None]]]]:
    """The workers as a service started beside the engine (see ``headless.ExtraService``):
    started before the engine, stopped (every worker waited for) before it stops;
    ``started`` gets the supervisor (to forward SIGHUP)."""

    async def start(engine: Engine) -> Callable[[], Awaitable[None]]:
        supervisor = WorkerSupervisor(engine.config, engine, spec)
        if started is not None:
            started(supervisor)
        await supervisor.start()
        return supervisor.stop

    return start


__all__ = [
    "WorkerSpec",
    "WorkerSupervisor",
    "exit_text",
    "parse_workers",
    "usable_cores",
    "workers_extra",
]
