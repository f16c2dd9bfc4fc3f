"""The fleet's status as typed, frozen values: what ``status --json``, the HTTP API, ``/metrics``,
the health monitor and the console read about each consumer.

:class:`~kafkaconsole.engine.fleet.Fleet` builds them (one batch of Redis reads per status
read); every face takes them as they are and turns them into JSON only at its edge
(:meth:`ConsumerStatus.to_json`). The API's OpenAPI document is generated from these same
models (:func:`json_schemas`), so the document and the responses cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema


class _Status(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (plain dicts and lists; numbers as they are)."""
        return self.model_dump()


class PartitionStatus(_Status):
    topic: str = ""
    """The partition's topic (a consumer may read several: kafka_topics, topic_pattern)."""
    partition: int
    position: int | None
    """Next offset to consume (None: nothing counted there yet)."""
    highwater: int | None
    lag: int | None
    time_lag_seconds: float | None = None
    """Age of the oldest unconsumed event (0 when caught up, None when unknown)."""
    oldest_ts_ms: int | None = None
    owner: str | None = None
    """The instance that owns the partition (None: no live instance does)."""


class LastTrigger(_Status):
    window_id: int
    reason: str
    count: int
    closed_at: str
    status: str
    """Run status of the window's pipeline (pending until dispatched)."""


class AlertStatus(_Status):
    alert: str
    channel: str
    message: str | None
    since: str | None
    value: float | None
    verdict: str | None
    metric: str | None


class _ConsumerIdentity(_Status):
    """What every view of one consumer starts with: who it is and whether it runs."""

    consumer_id: str
    kafka_topic: str
    """The topic; with many: the topics joined with commas, or the pattern as /regex/."""
    topics: list[str] = []
    """The topics named by kafka_topic or kafka_topics (empty with topic_pattern)."""
    topic_pattern: str | None = None
    """The consumer's topic_pattern (its topics are those of its partitions)."""
    pipeline_name: str
    job_type: str
    state: str
    """paused, stopped, error or running."""
    paused_by: str | None
    paused_at: str | None


class ConsumerStatus(_ConsumerIdentity):
    """One consumer across the fleet: shared counting state merged with live heartbeats."""

    count: int
    max_event: int
    max_time: float
    window_id: int
    window_opened_at: str | None
    window_opened_at_ms: int | None
    time_left: float | None
    fill_ratio: float
    total: int
    errors: int
    filtered: int
    skipped: int = 0
    """Records skipped on purpose (tombstones, Debezium heartbeats, skipped snapshot reads)."""
    windows: int
    windows_by_reason: dict[str, int]
    discarded: int
    dlq: int
    rate: float
    lag: int | None
    partitions: tuple[PartitionStatus, ...]
    instances: tuple[str, ...]
    last_trigger: LastTrigger | None
    last_error: str | None
    processor_stall: str | None
    time_lag_seconds: float | None
    time_to_trigger_seconds: float | None
    reported_at_ms: int | None
    verdict: str
    verdict_reason: str | None
    verdict_since: str | None
    alerts: tuple[AlertStatus, ...]

    def to_json(self) -> dict[str, Any]:
        d = self.model_dump()
        d["partitions"] = list(d["partitions"])
        d["instances"] = list(d["instances"])
        d["alerts"] = list(d["alerts"])
        return d


class InstanceSummary(BaseModel):
    """A live instance's heartbeat without the per-consumer detail (consumers as ids)."""

    # a heartbeat written by a newer version may carry more: passed through as it is
    model_config = ConfigDict(frozen=True, extra="allow")

    instance_id: str
    host: str
    pid: int
    started_at_ms: int
    taken_at_ms: int
    redis_ok: bool
    kafka_ok: bool
    task_failures: list[str] = []
    kafka_missing: list[str] = []
    consumers: list[str]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()


class FleetStatus(_Status):
    """``status --json``: every configured consumer and every live instance."""

    consumers: tuple[ConsumerStatus, ...]
    instances: tuple[InstanceSummary, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "consumers": [c.to_json() for c in self.consumers],
            "instances": [i.to_json() for i in self.instances],
        }


# ---- GET /consumer/info/<id> ----------------------------------------------------------------


class WindowInfo(_Status):
    id: int
    count: int
    max_event: int
    max_time: float
    fill_ratio: float
    opened_at: str | None
    time_left: float | None
    closes_at: str | None


class Totals(_Status):
    events: int
    filtered: int
    skipped: int = 0
    discarded: int
    windows: int
    windows_by_reason: dict[str, int]


class ErrorsInfo(_Status):
    count: int
    dlq: int
    last_error: str | None


class TriggerEntry(_Status):
    """A closed window and its pipeline run."""

    consumer_id: str
    pipeline_name: str
    connection_id: str
    job_type: str
    window_id: int
    idempotency_key: str
    reason: str
    count: int
    opened_at: str | None
    closed_at: str | None
    offsets: list[Any]
    status: str
    run: dict[str, Any]


class ConsumerInfo(_ConsumerIdentity):
    """Everything about one consumer (config and pipeline with secrets masked)."""

    instances: list[str]
    config: dict[str, Any]
    pipeline: dict[str, Any] | None
    window: WindowInfo
    lag: int | None
    time_lag_seconds: float | None
    time_to_trigger_seconds: float | None
    verdict: str
    verdict_reason: str | None
    verdict_since: str | None
    alerts: list[AlertStatus]
    partitions: list[PartitionStatus]
    rate: float
    totals: Totals
    last_trigger: LastTrigger | None
    triggers: list[TriggerEntry]
    errors: ErrorsInfo


# ---- the API's other bodies -------------------------------------------------------------------


class ConsumersBody(_Status):
    consumers: list[ConsumerStatus]


class InstancesBody(_Status):
    instances: list[InstanceSummary]


class HealthBody(_Status):
    status: str
    instance_id: str
    uptime_s: float


class ReadyBody(_Status):
    ready: bool
    status: str
    """ready, degraded (running, but Kafka or Redis does not answer), waiting or not running."""
    instance_id: str
    kafka: bool
    redis: bool
    reasons: list[str]
    warnings: list[str]


class ControlResult(_Status):
    """A control action's outcome; the fields after ``action`` depend on the action."""

    consumer_id: str
    action: str
    paused: bool | None = None
    window_id: int | None = None
    discarded: int | None = None
    status: str | None = None
    reason: str | None = None
    count: int | None = None


class ErrorBody(_Status):
    error: str


API_MODELS: tuple[type[BaseModel], ...] = (
    ConsumersBody,
    ConsumerInfo,
    InstancesBody,
    HealthBody,
    ReadyBody,
    ControlResult,
    ErrorBody,
    FleetStatus,
)


def json_schemas(ref_template: str = "#/components/schemas/{model}") -> dict[str, Any]:
    """JSON Schemas (2020-12, as OpenAPI 3.1 takes them) of every body, by model name."""
    _, top = models_json_schema([(m, "validation") for m in API_MODELS], ref_template=ref_template)
    return dict(top.get("$defs", {}))
