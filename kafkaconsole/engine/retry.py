"""Retrying a pipeline call: capped exponential backoff with full jitter.

:func:`backoff_delay` is the pure maths; :func:`call_with_retry` drives a
:class:`~kafkaconsole.engine.pipelines.base.Pipeline` through up to ``max_attempts`` attempts
and folds them into one :class:`~kafkaconsole.engine.records.RunResult`. Sleep, randomness and
the clock are injected so tests run instantly and deterministically.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kafkaconsole.config.models import RetryPolicy
from kafkaconsole.engine.pipelines.base import Pipeline, PipelineError, one_line
from kafkaconsole.engine.records import RunResult, RunStatus, TriggerRecord

log = logging.getLogger(__name__)

_MAX_EXPONENT = 62  # 2**62 * any sane initial_backoff is far past every cap

Sleep = Callable[[float], Awaitable[Any]]
OnAttempt = Callable[[int, str | None], None]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

    ``initial_backoff * 2**(attempt-1)`` capped at ``max_backoff``; with ``policy.jitter`` a
    uniform draw from ``[0, capped]`` ("full jitter").
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    exponent = min(attempt - 1, _MAX_EXPONENT)
    capped = min(policy.initial_backoff * float(2**exponent), policy.max_backoff)
    if policy.jitter:
        return (rng if rng is not None else random).uniform(0.0, capped)
    return capped


def retry_delay(
    attempt: int, error: PipelineError, policy: RetryPolicy, rng: random.Random | None = None
) -> float:
    """The wait before the next attempt: the error's ``retry_after`` if it has one (capped at
    ``max_backoff``), else :func:`backoff_delay`."""
    if error.retry_after is not None:
        return min(max(error.retry_after, 0.0), policy.max_backoff)
    return backoff_delay(attempt, policy, rng)


def _report(on_attempt: OnAttempt | None, attempt: int, error: str | None) -> None:
    if on_attempt is None:
        return
    try:
        on_attempt(attempt, error)
    except Exception:
        log.exception("on_attempt callback failed")


async def call_with_retry(
    pipeline: Pipeline,
    record: TriggerRecord,
    payload: dict[str, Any],
    policy: RetryPolicy,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    on_attempt: OnAttempt | None = None,
    clock_ms: Callable[[], int] = _now_ms,
) -> RunResult:
    """Call ``pipeline`` for ``record`` up to ``policy.max_attempts`` times.

    Only a :class:`PipelineError` with ``retryable=True`` is retried; a non-retryable one, or
    any other exception, fails the run at once. Cancellation propagates. ``on_attempt(n, error)``
    is told about every attempt (``error`` is None when it succeeded).

    Returns the outcome's status (SUCCEEDED, or QUEUED/RUNNING for kinds that only start a
    run) or FAILED with the last error as one line.
    """
    started = clock_ms()
    attempt = 0
    error = "no attempt made"
    while True:
        attempt += 1
        try:
            outcome = await pipeline.call(record, payload)
        except PipelineError as exc:
            error = str(exc)
            _report(on_attempt, attempt, error)
            if not exc.retryable or attempt >= policy.max_attempts:
                break
            await sleep(retry_delay(attempt, exc, policy, rng))
            continue
        except Exception as exc:
            error = one_line(f"{type(exc).__name__}: {exc}")
            log.exception("pipeline %r raised an unexpected error", pipeline.name)
            _report(on_attempt, attempt, error)
            break
        if outcome.status == RunStatus.FAILED:
            error = one_line(str(outcome.detail.get("error") or "pipeline reported failure"))
            _report(on_attempt, attempt, error)
            return RunResult(
                status=RunStatus.FAILED,
                run_id=outcome.run_id,
                attempts=attempt,
                error=error,
                started_at_ms=started,
                finished_at_ms=clock_ms(),
                detail=dict(outcome.detail),
            )
        _report(on_attempt, attempt, None)
        return RunResult(
            status=outcome.status,
            run_id=outcome.run_id,
            attempts=attempt,
            error=None,
            started_at_ms=started,
            finished_at_ms=clock_ms(),
            detail=dict(outcome.detail),
        )
    return RunResult(
        status=RunStatus.FAILED,
        run_id=None,
        attempts=attempt,
        error=error,
        started_at_ms=started,
        finished_at_ms=clock_ms(),
    )
