"""The ``command`` pipeline kind: run a program (argv, no shell) once per closed window.

The trigger record arrives as JSON on stdin and, in short, in ``KAFKACONSOLE_*`` environment
variables. Exit 0 is success. The program runs in its own process group so a timeout or a
cancelled call kills it together with anything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

import orjson

from kafkaconsole.config.models import CommandPipeline as CommandPipelineConfig
from kafkaconsole.engine.pipelines.base import (
    CallOutcome,
    Pipeline,
    PipelineError,
    format_seconds,
    one_line,
)
from kafkaconsole.engine.records import RunStatus, TriggerRecord

LINE_LIMIT = 200
"""Longest stdout/stderr line kept in a detail or an error message."""

_POSIX = sys.platform != "win32"


def _last_line(data: bytes) -> str:
    """The last non-blank line of ``data``, on one line, at most LINE_LIMIT characters."""
    for line in reversed(data.decode("utf-8", errors="replace").splitlines()):
        if line.strip():
            return one_line(line, LINE_LIMIT)
    return ""


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


class CommandPipeline(Pipeline):
    kind = "command"
    cfg: CommandPipelineConfig

    def __init__(self, name: str, cfg: CommandPipelineConfig) -> None:
        super().__init__(name, cfg)

    def environment(self, record: TriggerRecord) -> dict[str, str]:
        """os.environ + the configured env + the record's KAFKACONSOLE_* variables."""
        env = dict(os.environ)
        env.update(self.cfg.env)
        env.update(
            {
                "KAFKACONSOLE_CONSUMER_ID": record.consumer_id,
                "KAFKACONSOLE_WINDOW_ID": str(record.window_id),
                "KAFKACONSOLE_IDEMPOTENCY_KEY": record.idempotency_key,
                "KAFKACONSOLE_REASON": str(record.reason),
                "KAFKACONSOLE_COUNT": str(record.count),
                "KAFKACONSOLE_PIPELINE_NAME": record.pipeline_name,
                "KAFKACONSOLE_CONNECTION_ID": record.connection_id,
            }
        )
        return env

    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        argv = self.cfg.command
        cwd = self.cfg.cwd
        data = orjson.dumps(payload)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.environment(record),
                cwd=cwd,
                start_new_session=_POSIX,
            )
        except FileNotFoundError:
            if cwd is not None and not await asyncio.to_thread(os.path.isdir, cwd):
                raise PipelineError(
                    f"working directory not found: {cwd}", retryable=False
                ) from None
            raise PipelineError(f"program not found: {argv[0]}", retryable=False) from None
        except PermissionError:
            raise PipelineError(f"program not executable: {argv[0]}", retryable=False) from None
        except OSError as exc:
            raise PipelineError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None

        try:
            async with asyncio.timeout(self.timeout):
                stdout, stderr = await proc.communicate(data)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            raise PipelineError(
                f"timed out after {format_seconds(self.timeout)}", retryable=True
            ) from None
        except BaseException:
            _kill(proc)  # cancelled (consumer stopping): leave nothing running behind
            raise

        code = proc.returncode if proc.returncode is not None else await proc.wait()
        if code != 0:
            message = _describe_exit(code)
            last = _last_line(stderr)
            raise PipelineError(f"{message}: {last}" if last else message, retryable=True)
        return CallOutcome(
            run_id=f"pid-{proc.pid}",
            status=RunStatus.SUCCEEDED,
            detail={"exit_code": code, "stdout_last_line": _last_line(stdout)},
        )


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process and its process group (it leads its own session on POSIX)."""
    if _POSIX:
        # Also when the leader has exited: what it started may still hold the pipes open.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
