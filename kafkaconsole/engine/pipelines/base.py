"""What every pipeline kind shares: one call attempt, its outcome and its failure.

A :class:`Pipeline` makes exactly one attempt per :meth:`Pipeline.call`; retries, backoff and
the final :class:`~kafkaconsole.engine.records.RunResult` belong to
:func:`kafkaconsole.engine.retry.call_with_retry`. A call either returns a
:class:`CallOutcome` or raises :class:`PipelineError`, which says whether trying again may help.

Kinds whose run happens elsewhere (Airbyte jobs, Airflow DAG runs) split "start a run" from
"wait for its final status": :meth:`Pipeline.call` starts the run and answers QUEUED or RUNNING
with the remote run id; :meth:`Pipeline.wait` follows that run id to its final status. For the
other kinds ``call()`` is already final and ``wait()`` is never needed.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self

from kafkaconsole.config.models import PipelineBase, RetryPolicy
from kafkaconsole.engine.records import RunStatus, TriggerRecord

ERROR_LIMIT = 500
"""Longest error message kept (after folding it onto one line)."""


def one_line(text: str, limit: int = ERROR_LIMIT) -> str:
    """Fold whitespace (newlines included) to single spaces and cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    if len(line) > limit:
        line = line[: max(limit - 1, 0)] + "…"
    return line


def format_seconds(seconds: float) -> str:
    """``30.0`` -> ``"30s"``, ``0.5`` -> ``"0.5s"``."""
    return f"{seconds:g}s"


class PipelineError(Exception):
    """One failed call attempt.

    ``retryable`` says whether another attempt may succeed (timeouts, 5xx, non-zero exit);
    ``retry_after`` is the delay in seconds the far side asked for, if it asked.
    The message is always one line.
    """

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        self.message = one_line(message) or "pipeline call failed"
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, retryable={self.retryable}, "
            f"retry_after={self.retry_after})"
        )


class PipelineConfigError(PipelineError):
    """A pipeline that cannot work as configured (unknown kind, unimportable target, ...).

    Never retryable.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """A successful call attempt.

    ``status`` is SUCCEEDED for kinds that finish within the call; a kind that only starts a
    run elsewhere may answer QUEUED or RUNNING.
    """

    run_id: str | None
    status: RunStatus = RunStatus.SUCCEEDED
    detail: dict[str, Any] = field(default_factory=dict)


OnStatus = Callable[[CallOutcome], Awaitable[None]]
"""Told about every status change :meth:`Pipeline.wait` sees (e.g. queued -> running)."""


class Pipeline(ABC):
    """One configured pipeline. Use it as ``async with`` or call start() / close()."""

    kind: ClassVar[str]
    remote_runs: ClassVar[bool] = False
    """True for kinds whose ``call()`` may answer QUEUED/RUNNING and need :meth:`wait`."""
    needs_kafka: ClassVar[bool] = False
    """True for kinds built with the app's ``[kafka]`` connection."""

    def __init__(self, name: str, cfg: PipelineBase) -> None:
        self.name = name
        self.cfg = cfg
        self._run_slots: asyncio.Semaphore | None = None

    @property
    def run_slots(self) -> asyncio.Semaphore:
        """Bounds the runs of this pipeline in flight at once (``max_concurrent_runs``),
        shared by every async consumer that uses it."""
        if self._run_slots is None:
            self._run_slots = asyncio.Semaphore(self.cfg.max_concurrent_runs)
        return self._run_slots

    @property
    def timeout(self) -> float:
        """Seconds one call may take."""
        return self.cfg.timeout

    @property
    def retry_policy(self) -> RetryPolicy:
        return self.cfg.retry_policy

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open sessions, import targets. The default does nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what start() opened. The default does nothing."""

    @abstractmethod
    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        """Make ONE attempt to run the pipeline for ``record``.

        ``payload`` is the JSON dict to send (``record.to_json_dict(events)``), built by the
        caller. Raises :class:`PipelineError` on failure. Kinds with :attr:`remote_runs` may
        answer QUEUED or RUNNING with the remote run id, and COALESCED when the far side
        folded the trigger into a run already in progress.
        """

    async def wait(
        self,
        run_id: str,
        record: TriggerRecord,
        *,
        policy: RetryPolicy | None = None,
        on_status: OnStatus | None = None,
    ) -> CallOutcome:
        """Follow the run ``run_id`` (started by :meth:`call`) to its final status.

        Returns SUCCEEDED, FAILED (``detail["error"]`` says why), CANCELLED or COALESCED.
        ``policy`` paces retries of failed status checks (default: the pipeline's);
        ``on_status`` hears of every intermediate status change. Only kinds with
        :attr:`remote_runs` implement it.
        """
        raise NotImplementedError(f"pipeline kind {self.kind!r} has no remote runs to wait for")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} kind={self.kind}>"
