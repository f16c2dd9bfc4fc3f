"""The ``python`` pipeline kind: call ``"package.module:function"`` in this process.

The target is imported at start() and called with the trigger record as a plain JSON dict.
Coroutine functions are awaited on the engine's loop; plain functions run in a worker thread
(asyncio.to_thread) so a slow hook cannot stall counting. A timed-out thread cannot be killed:
the call is abandoned and reported as failed, but the function runs on to its end.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import orjson

from kafkaconsole.config.models import PythonPipeline as PythonPipelineConfig
from kafkaconsole.engine.pipelines.base import (
    CallOutcome,
    Pipeline,
    PipelineConfigError,
    PipelineError,
    format_seconds,
)
from kafkaconsole.engine.records import RunStatus, TriggerRecord


def load_target(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attr.path"``; PipelineConfigError naming the target if it fails."""
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise PipelineConfigError(f"python target {target!r} is not 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise PipelineConfigError(
            f"cannot import python target {target!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PipelineConfigError(
                f"cannot import python target {target!r}: no attribute {part!r}"
            ) from None
    if not callable(obj):
        raise PipelineConfigError(f"python target {target!r} is not callable")
    return obj  # type: ignore[no-any-return]


class PythonPipeline(Pipeline):
    kind = "python"
    cfg: PythonPipelineConfig

    def __init__(self, name: str, cfg: PythonPipelineConfig) -> None:
        super().__init__(name, cfg)
        self._func: Callable[..., Any] | None = None

    async def start(self) -> None:
        if self._func is None:
            self._func = load_target(self.cfg.target)

    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        if self._func is None:
            await self.start()
        func = self._func
        assert func is not None
        # A private copy, exactly as JSON consumers see it: a hook that edits its argument
        # cannot change what the next attempt sends.
        argument = orjson.loads(orjson.dumps(payload))
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                if inspect.iscoroutinefunction(func):
                    result = await func(argument)
                else:
                    result = await asyncio.to_thread(func, argument)
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError as exc:
            if deadline.expired():
                raise PipelineError(
                    f"timed out after {format_seconds(self.timeout)}", retryable=True
                ) from None
            raise PipelineError(f"TimeoutError: {exc}", retryable=True) from exc
        except PipelineError:
            raise  # the hook chose its own retryability
        except Exception as exc:
            raise PipelineError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        return _outcome(result)


def _outcome(result: Any) -> CallOutcome:
    if isinstance(result, str):
        return CallOutcome(run_id=result or None, status=RunStatus.SUCCEEDED)
    if isinstance(result, dict):
        run_id = result.get("run_id")
        try:
            detail = orjson.loads(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS))
        except (TypeError, orjson.JSONEncodeError):
            detail = {}
        return CallOutcome(
            run_id=None if run_id is None else str(run_id),
            status=RunStatus.SUCCEEDED,
            detail={"result": detail} if detail else {},
        )
    return CallOutcome(run_id=None, status=RunStatus.SUCCEEDED)
