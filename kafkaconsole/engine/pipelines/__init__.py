"""Pipeline kinds and the factory that builds one from its ``[pipelines.NAME]`` table.

Each kind lives in its own module and is imported only when a pipeline of that kind is built,
so an unused kind costs nothing (no aiohttp session, no client library). Adding a kind is one
line in :data:`PIPELINE_KINDS`.
"""

from __future__ import annotations

import importlib
from typing import Any

from kafkaconsole.config.models import KafkaConfig
from kafkaconsole.engine.pipelines.base import (
    CallOutcome,
    OnStatus,
    Pipeline,
    PipelineConfigError,
    PipelineError,
)

PIPELINE_KINDS: dict[str, str] = {
    # kind: "module (relative to this package):class"
    "command": ".command:CommandPipeline",
    "python": ".python:PythonPipeline",
    "http": ".http:HttpPipeline",
    "airbyte": ".airbyte:AirbytePipeline",
    "airflow": ".airflow:AirflowPipeline",
    "kafka": ".kafka:KafkaPipeline",
}
"""Implemented pipeline kinds and where their class lives."""

__all__ = [
    "PIPELINE_KINDS",
    "CallOutcome",
    "OnStatus",
    "Pipeline",
    "PipelineConfigError",
    "PipelineError",
    "build_pipeline",
    "pipeline_class",
]


def pipeline_class(kind: str) -> type[Pipeline]:
    """The :class:`Pipeline` subclass for ``kind``; PipelineConfigError if none is registered."""
    try:
        location = PIPELINE_KINDS[kind]
    except KeyError:
        supported = ", ".join(sorted(PIPELINE_KINDS))
        raise PipelineConfigError(
            f"pipeline kind {kind!r} is not supported (supported: {supported})"
        ) from None
    module_name, _, class_name = location.partition(":")
    module = importlib.import_module(module_name, __name__)
    cls: type[Pipeline] = getattr(module, class_name)
    return cls


def build_pipeline(name: str, cfg: Any, kafka: KafkaConfig | None = None) -> Pipeline:
    """Build the pipeline called ``name`` from its config model (dispatching on ``cfg.kind``).

    ``kafka`` is the app's ``[kafka]`` connection, used by kinds that produce to Kafka (default:
    ``KafkaConfig()``, as an app config without a ``[kafka]`` table has). The pipeline is not
    started; use ``async with`` or ``await pipeline.start()``.
    """
    kind = getattr(cfg, "kind", None)
    if not isinstance(kind, str):
        raise PipelineConfigError(f"pipeline {name!r}: config has no kind")
    try:
        cls = pipeline_class(kind)
    except PipelineConfigError as exc:
        raise PipelineConfigError(f"pipeline {name!r}: {exc}") from None
    if cls.needs_kafka:
        return cls(name, cfg, kafka=kafka)  # type: ignore[call-arg]
    return cls(name, cfg)
