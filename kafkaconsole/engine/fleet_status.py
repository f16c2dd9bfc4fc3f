"""The fleet's status as typed, frozen values: what ``status --json``, the HTTP API, ``/metrics``,
the health monitor and the console read about each consumer.

:class:`~kafkaconsole.engine.fleet.Fleet` builds them (one batch of Redis reads per status
read); every face takes them as they are and turns them into JSON only at its edge
(:meth:`ConsumerStatus.to_json`). Moments are epoch milliseconds inside (``verdict_since_ms``,
``paused_at_ms``, an alert's ``since_ms``...) and ISO 8601 strings in the JSON form, under the
names the API has always used (``verdict_since``, ``paused_at``, ``since``). The API's OpenAPI
document is generated from these same models (:func:`json_schemas`, the JSON form), so the
document and the responses cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
)
from pydantic.json_schema import models_json_schema

from kafkaconsole.engine.peek import PeekBody
from kafkaconsole.engine.records import iso_ms
from kafkaconsole.engine.seek import SeekResult


def moment_ms(value: Any) -> Any:
    """An ISO 8601 moment (the JSON form, read back) as epoch ms (None when it is not one);
    anything else as it is."""
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return None
    return value


EpochMs = Annotated[
    int | None, BeforeValidator(moment_ms), PlainSerializer(iso_ms, return_type=str | None)
]
"""A moment: epoch ms in the model, ISO 8601 UTC (or null) in its JSON form."""


def _moment(name: str) -> Any:
    """The field ``<name>_ms`` of a model, written ``<name>`` in the JSON form (and read from
    either name)."""
    return Field(validation_alias=AliasChoices(f"{name}_ms", name), serialization_alias=name)


class _Status(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, serialize_by_alias=True
    )

    def to_json(self) -> dict[str, Any]:
        """The JSON form (plain dicts and lists; numbers as they are; moments as ISO text)."""
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


class RetentionLossStatus(_Status):
    """Offsets of a partition that retention deleted before they were counted."""

    topic: str
    partition: int
    lost: int
    """Offsets lost in all."""
    last_first: int | None = None
    """The latest range lost: its first offset."""
    last_last: int | None = None
    """The latest range lost: its last offset."""
    last_at_ms: EpochMs = _moment("last_at")


class TopicResetStatus(_Status):
    """A partition whose topic ends below what was counted (re-created), waiting for
    ``kafkaconsole consumer accept-reset``."""

    topic: str
    partition: int
    stored: int
    """The next offset to count Redis holds (from the topic before)."""
    log_start: int
    """Where counting starts again once accepted."""
    end: int
    """The partition's end offset when seen."""
    since_ms: EpochMs = _moment("since")


class LastTrigger(_Status):
    window_id: int
    reason: str
    count: int
    closed_at_ms: Annotated[
        int, BeforeValidator(moment_ms), PlainSerializer(iso_ms, return_type=str)
    ] = _moment("closed_at")
    status: str
    """Run status of the window's pipeline (pending until dispatched)."""
    replay: bool = False
    """The window holds events read again after a seek back."""


class AlertStatus(_Status):
    alert: str
    channel: str
    message: str | None
    since_ms: EpochMs = _moment("since")
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
    paused_at_ms: EpochMs = _moment("paused_at")


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
    verdict_since_ms: EpochMs = _moment("verdict_since")
    alerts: tuple[AlertStatus, ...]
    backlog: int = 0
    """Closed windows waiting for their pipeline run (the one being run included)."""
    backlog_age_seconds: float | None = None
    """How long the oldest of them has waited (None: none waits)."""
    max_backlog: int | None = None
    """From this many waiting windows on, they run as one coalesced run (the consumer's cap)."""
    backlog_policy: str = "each"
    """each (one run per window) or coalesce (the waiting windows as one run)."""
    retention_lost: int = 0
    """Offsets retention deleted before they were counted, fleet-wide."""
    retention_losses: tuple[RetentionLossStatus, ...] = ()
    """Per partition: offsets lost to retention and the latest range lost."""
    topic_resets: tuple[TopicResetStatus, ...] = ()
    """Partitions of a re-created topic counting nothing until accept-reset."""
    on_topic_reset: str = "wait"
    """wait (for accept-reset) or restart (from the log start at once)."""

    def to_json(self) -> dict[str, Any]:
        d = self.model_dump()
        d["partitions"] = list(d["partitions"])
        d["instances"] = list(d["instances"])
        d["alerts"] = list(d["alerts"])
        d["retention_losses"] = list(d["retention_losses"])
        d["topic_resets"] = list(d["topic_resets"])
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
    runtime_consumers: list[str] = []
    """Consumers it runs that were defined at runtime (``kafkaconsole consumer add``)."""
    runtime_clashes: list[str] = []
    """Runtime definitions it ignores: its configuration file defines a consumer of that id."""
    features: list[str] = []
    """What its release does that an older one may not (``seek``: it follows seeks)."""

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
    backlog: int = 0
    """Closed windows waiting for their pipeline run (the one being run included)."""
    backlog_age_seconds: float | None = None
    """How long the oldest of them has waited (None: none waits)."""
    verdict: str
    verdict_reason: str | None
    verdict_since_ms: EpochMs = _moment("verdict_since")
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


class ReloadBody(_Status):
    """What a live reload of one instance did (``POST /reload``; ``reload --json``)."""

    status: str
    """applied | unchanged | invalid | failed."""
    file: str
    """The configuration file read again."""
    instance_id: str
    added: list[str]
    """Consumers started."""
    removed: list[str]
    """Consumers stopped gracefully (offsets committed, open window kept in Redis)."""
    changed: list[str]
    """Consumers whose thresholds or pipeline changed live."""
    restarted: list[str]
    """Consumers restarted gracefully for another change."""
    needs_restart: list[str]
    """Dotted keys that changed but apply only at the next restart (not applied)."""
    details: list[str]
    """One line per live change."""
    problems: list[str]
    """Every problem of an invalid file (FILE: dotted.key: message); nothing changed."""
    error: str | None = None
    """Why applying failed."""


class ErrorBody(_Status):
    error: str


class ConsumerDefinitionBody(_Status):
    """A consumer defined or removed at runtime (``POST /consumers``,
    ``DELETE /consumers/{consumer_id}``)."""

    consumer_id: str
    status: str
    """created | replaced | removed."""
    request_id: str
    """Every live instance stores what it applied under this id (as a fleet-wide reload)."""
    definition: dict[str, Any] | None = None
    """The consumer table as stored (None when removed)."""


class ProblemsBody(_Status):
    """An invalid consumer definition: nothing stored."""

    error: str
    problems: list[str]
    """Every problem, ``request: key: message``."""


API_MODELS: tuple[type[BaseModel], ...] = (
    ConsumersBody,
    ConsumerInfo,
    InstancesBody,
    HealthBody,
    ReadyBody,
    ControlResult,
    ErrorBody,
    FleetStatus,
    PeekBody,
    ReloadBody,
    ConsumerDefinitionBody,
    ProblemsBody,
    SeekResult,
)


def json_schemas(ref_template: str = "#/components/schemas/{model}") -> dict[str, Any]:
    """JSON Schemas (2020-12, as OpenAPI 3.1 takes them) of every body as it is written (the
    JSON form), by model name."""
    _, top = models_json_schema(
        [(m, "serialization") for m in API_MODELS], ref_template=ref_template
    )
    return dict(top.get("$defs", {}))
