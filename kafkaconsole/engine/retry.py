"""Retrying: capped exponential backoff with full jitter, one helper for every retry loop.

:func:`backoff_delay` is the pure maths; :func:`retry_call` is the one retry loop the engine
uses for Redis, Kafka and DLQ calls (it logs each retry once and says when it gives up);
:func:`call_with_retry` drives a
:class:`~kafkaconsole.engine.pipelines.base.Pipeline` through up to ``max_attempts`` attempts
and folds them into one :class:`~kafkaconsole.engine.records.RunResult`. For kinds whose run
happens elsewhere, :func:`follow_run` waits for the started run's final status and
:func:`run_pipeline` does both. Sleep, randomness and the clock are injected so tests run
instantly and deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from kafkaconsole.config.models import RetryPolicy
from kafkaconsole.engine.pipelines.base import CallOutcome, Pipeline, PipelineError, one_line
from kafkaconsole.engine.records import RunResult, RunStatus, TriggerRecord

log = logging.getLogger(__name__)

_MAX_EXPONENT = 62  # 2**62 * any sane initial_backoff is far past every cap

Sleep = Callable[[float], Awaitable[Any]]
OnAttempt = Callable[[int, str | None], None]
OnProgress = Callable[[RunResult], Awaitable[None]]
"""Told about a run that is not final yet: started (with its run id), then each change."""


T = TypeVar("T")


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: tuple[type[BaseException], ...],
    what: str,
    attempts: int | None = None,
    stop: asyncio.Event | None = None,
    give_up_after: float | None = None,
    on_error: Callable[[int, BaseException], None] | None = None,
    sleep: Sleep | None = None,
    rng: random.Random | None = None,
    logger: logging.Logger | None = None,
    give_up_level: int = logging.WARNING,
) -> T:
    """``await fn()`` until it succeeds, waiting :func:`backoff_delay` between attempts.

    Only exceptions in ``retry_on`` are retried; any other propagates at once. ``attempts``
    caps the attempts (default ``policy.max_attempts``; 0 retries until ``stop`` is set or
    ``give_up_after`` seconds have passed, 0 meaning one attempt). When it gives up it logs
    one line saying so (at ``give_up_level``: DEBUG when the caller reports the failure
    itself) and re-raises the last error. ``on_error(attempt, exc)`` hears about
    every failed attempt. A set ``stop`` also cuts a backoff wait short.
    """
    limit = policy.max_attempts if attempts is None else attempts
    logger = logger or log
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except retry_on as exc:
            if on_error is not None:
                on_error(attempt, exc)
            stopping = stop is not None and stop.is_set()
            left = None if give_up_after is None else give_up_after - (time.monotonic() - started)
            if (limit and attempt >= limit) or stopping or (left is not None and left <= 0):
                if stopping:
                    why = "stopping"
                elif limit and attempt >= limit:
                    why = f"after {attempt} attempt(s)"
                else:
                    why = f"after {give_up_after:g}s and {attempt} attempt(s)"
                logger.log(
                    give_up_level, "%s: giving up (%s): %s: %s", what, why, type(exc).__name__, exc
                )
                raise
            delay = backoff_delay(attempt, policy, rng)
            if left is not None:
                delay = min(delay, left)
            if sleep is not None:
                await sleep(delay)
            elif stop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                await asyncio.sleep(delay)


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


def _error_of(outcome: CallOutcome) -> str | None:
    if outcome.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
        return None
    default = "pipeline reported failure" if outcome.status == RunStatus.FAILED else "cancelled"
    return one_line(str(outcome.detail.get("error") or default))


async def follow_run(
    pipeline: Pipeline,
    record: TriggerRecord,
    started: RunResult,
    policy: RetryPolicy,
    *,
    on_progress: OnProgress | None = None,
    clock_ms: Callable[[], int] = _now_ms,
) -> RunResult:
    """Wait for the remote run ``started`` (a RunResult with a run id and a non-final status)
    to end; returns its final RunResult (attempts and start time carried over).

    A :class:`PipelineError` or unexpected exception from the wait ends the run as FAILED;
    cancellation propagates (the run goes on remotely and can be followed again).
    """
    if started.run_id is None:
        return replace(
            started,
            status=RunStatus.FAILED,
            error="the pipeline started a run without a run id; cannot follow it",
            finished_at_ms=clock_ms(),
        )

    async def on_status(outcome: CallOutcome) -> None:
        if on_progress is not None:
            await on_progress(
                replace(
                    started,
                    status=outcome.status,
                    run_id=outcome.run_id or started.run_id,
                    detail={**started.detail, **outcome.detail},
                )
            )

    try:
        outcome = await pipeline.wait(started.run_id, record, policy=policy, on_status=on_status)
    except PipelineError as exc:
        outcome = CallOutcome(started.run_id, RunStatus.FAILED, detail={"error": str(exc)})
    except Exception as exc:
        log.exception("pipeline %r raised an unexpected error while waiting", pipeline.name)
        outcome = CallOutcome(
            started.run_id,
            RunStatus.FAILED,
            detail={"error": one_line(f"{type(exc).__name__}: {exc}")},
        )
    status = outcome.status if outcome.status.final else RunStatus.FAILED
    error = _error_of(outcome)
    if not outcome.status.final:
        error = f"the pipeline stopped waiting while the run was {outcome.status}"
    return RunResult(
        status=status,
        run_id=outcome.run_id or started.run_id,
        attempts=started.attempts,
        error=error,
        started_at_ms=started.started_at_ms,
        finished_at_ms=clock_ms(),
        detail={**started.detail, **outcome.detail},
    )


async def run_pipeline(
    pipeline: Pipeline,
    record: TriggerRecord,
    payload: dict[str, Any],
    policy: RetryPolicy,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    on_attempt: OnAttempt | None = None,
    on_progress: OnProgress | None = None,
    clock_ms: Callable[[], int] = _now_ms,
) -> RunResult:
    """Start a run with retries (:func:`call_with_retry`) and, for kinds with remote runs,
    follow it to its final status (:func:`follow_run`). Always returns a final RunResult."""
    result = await call_with_retry(
        pipeline,
        record,
        payload,
        policy,
        sleep=sleep,
        rng=rng,
        on_attempt=on_attempt,
        clock_ms=clock_ms,
    )
    if result.status.final:
        return result
    if not pipeline.remote_runs:  # it said "started" but has nothing to follow
        detail = {**result.detail, "reported_status": str(result.status)}
        return replace(result, status=RunStatus.SUCCEEDED, detail=detail)
    if on_progress is not None and result.run_id is not None:
        await on_progress(result)
    return await follow_run(
        pipeline, record, result, policy, on_progress=on_progress, clock_ms=clock_ms
    )
