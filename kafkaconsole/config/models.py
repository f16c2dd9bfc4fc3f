"""The configuration model: every section of the TOML file, frozen once loaded.

Unknown keys are errors (``extra="forbid"``); every field carries a docstring, which
``sample_config.toml`` mirrors. Secrets are plain strings here (already resolved from
``${VAR}``); :mod:`kafkaconsole.config.secrets` knows which of them to mask.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

CONSUMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TARGET_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class KafkaConfig(Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of the Kafka brokers."""
    client_id: str = "kafkaconsole"
    """Client id sent to the brokers (shows in broker logs and quotas)."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How to talk to the brokers."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism, for SASL_PLAINTEXT and SASL_SSL."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: str | None = None
    """SASL password (write it as ${ENV_VAR})."""
    ssl_cafile: str | None = None
    """CA bundle used to verify the brokers' certificates."""
    ssl_certfile: str | None = None
    """Client certificate (mutual TLS)."""
    ssl_keyfile: str | None = None
    """Client private key (mutual TLS)."""
    ssl_check_hostname: bool = True
    """Verify that the broker's certificate matches its host name."""
    allow_insecure: bool = False
    """Allow SASL credentials over PLAINTEXT (not recommended)."""
    fetch_max_wait_ms: int = Field(50, ge=0, le=10_000)
    """How long the broker may hold a fetch waiting for data (lower = lower latency)."""
    session_timeout_ms: int = Field(10_000, ge=1_000)
    """Consumer group session timeout: how fast a dead instance's partitions move."""
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    """Consumer group heartbeat interval."""
    commit_interval: float = Field(1.0, gt=0)
    """Seconds between Kafka commits (Redis holds the truth; commits keep lag tools right)."""

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ValueError("sasl_mechanism is required with a SASL security_protocol")
        return self


class RedisConfig(Section):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL: redis:// or rediss:// (TLS), optionally with user:password@."""
    key_prefix: str = Field("consumer", pattern=r"^[A-Za-z0-9_.-]+$")
    """Prefix of every key; the open window's count is <key_prefix>:<consumer_id>:events."""
    username: str | None = None
    """ACL user name (overrides the one in the URL)."""
    password: str | None = None
    """Password (write it as ${ENV_VAR})."""
    tls: bool = False
    """Use TLS even when the URL says redis://."""
    ssl_ca_certs: str | None = None
    """CA bundle for TLS."""
    history_limit: int = Field(1000, ge=10)
    """How many trigger records to keep per consumer."""
    dispatch_lease_ms: int = Field(10_000, ge=500)
    """How long a dead instance keeps the right to dispatch a consumer's triggers."""


class ApiConfig(Section):
    enabled: bool = True
    """Serve the HTTP API (status, control, /metrics)."""
    host: str = "127.0.0.1"
    """Address to bind; keep loopback unless a token is set."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    token: str | None = None
    """Bearer token for mutating endpoints; without it they answer 403."""


class UiConfig(Section):
    theme: str = "kafkaconsole-dark"
    """Theme name (a file in themes/ or a built-in Textual theme)."""
    refresh_hz: float = Field(4.0, gt=0, le=30)
    """How often the screen refreshes from engine snapshots."""
    read_only: bool = False
    """Refuse pause, reset and trigger from the TUI and CLI."""
    keymap: dict[str, str] = Field(default_factory=dict)
    """Remap bindings by id, e.g. { pause = "space" }."""


class RetryPolicy(Section):
    max_attempts: int = Field(5, ge=1, le=100)
    """Attempts per pipeline call, the first included."""
    initial_backoff: float = Field(0.5, ge=0)
    """Seconds before the first retry."""
    max_backoff: float = Field(30.0, ge=0)
    """Cap on the backoff between retries."""
    jitter: bool = True
    """Randomise each backoff (full jitter) so instances do not retry in step."""


class ErrorHandling(Section):
    on_error: Literal["dlq", "skip", "stop"] = "dlq"
    """Bad events: send to the DLQ topic, skip them (counted as errors), or stop the consumer."""
    dlq_topic: str | None = Field(None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    """Dead-letter topic (default: <kafka_topic>.dlq)."""


class PipelineBase(Section):
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    """Retries of a failed call (capped exponential backoff with jitter)."""
    timeout: float = Field(30.0, gt=0)
    """Seconds one call may take."""
    max_concurrent_runs: int = Field(1, ge=1, le=1000)
    """Runs of this pipeline in flight at once for job_type = "async" consumers."""
    breaker_threshold: int = Field(5, ge=0)
    """Consecutive failed runs that open the circuit (0 = never open it)."""
    breaker_cooldown: float = Field(60.0, gt=0)
    """Seconds an open circuit holds triggers back before one probe run is let through."""


class CommandPipeline(PipelineBase):
    kind: Literal["command"]
    command: list[str] = Field(min_length=1)
    """argv of the program (no shell); the trigger record arrives as JSON on stdin."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the program."""
    cwd: str | None = None
    """Working directory of the program."""


class PythonPipeline(PipelineBase):
    kind: Literal["python"]
    target: str = Field(pattern=TARGET_PATTERN)
    """"package.module:function", called with the trigger record (sync or async)."""


class HttpPipeline(PipelineBase):
    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    """Webhook URL; the trigger record is the JSON body; 2xx is success."""
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    """HTTP method."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers (values may be ${ENV_VAR} secrets)."""


class AirbytePipeline(PipelineBase):
    kind: Literal["airbyte"]
    url: str = Field(pattern=r"^https?://")
    """Airbyte public API base URL, e.g. http://localhost:8000/api/public."""
    token: str | None = None
    """Bearer token."""
    client_id: str | None = None
    """Client id exchanged for a token (instead of token)."""
    client_secret: str | None = None
    """Client secret exchanged for a token."""
    job_type: Literal["sync", "reset"] = "sync"
    """Airbyte jobType."""
    poll_interval: float = Field(5.0, gt=0)
    """Seconds between job status polls."""
    run_timeout: float = Field(3600.0, gt=0)
    """Seconds a job may run before it is marked failed."""

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> AirbytePipeline:
        if (self.client_id is None) != (self.client_secret is None):
            raise ValueError("client_id and client_secret must be given together")
        if self.token is not None and self.client_id is not None:
            raise ValueError("token cannot be combined with client_id/client_secret; use one")
        return self


class AirflowPipeline(PipelineBase):
    kind: Literal["airflow"]
    url: str = Field(pattern=r"^https?://")
    """Airflow base URL, e.g. http://localhost:8080."""
    dag_id: str
    """DAG to trigger."""
    api_version: Literal["v1", "v2"] = "v1"
    """REST API version: v1 (Airflow 2) or v2 (Airflow 3)."""
    username: str | None = None
    """Basic auth user."""
    password: str | None = None
    """Basic auth password."""
    token: str | None = None
    """Bearer token (instead of basic auth)."""
    poll_interval: float = Field(5.0, gt=0)
    """Seconds between DAG run state polls."""
    run_timeout: float = Field(3600.0, gt=0)
    """Seconds a DAG run may take before it is marked failed."""

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> AirflowPipeline:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        if self.token is not None and self.username is not None:
            raise ValueError("token cannot be combined with username/password; use one")
        return self


class KafkaPipeline(PipelineBase):
    kind: Literal["kafka"]
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    """Topic the trigger record is produced to (key = consumer_id)."""


PipelineConfig = Annotated[
    CommandPipeline
    | PythonPipeline
    | HttpPipeline
    | AirbytePipeline
    | AirflowPipeline
    | KafkaPipeline,
    Field(discriminator="kind"),
]


class ConsumerConfig(Section):
    consumer_id: str = Field(pattern=CONSUMER_ID_PATTERN)
    """Unique id; names the Redis keys (<key_prefix>:<consumer_id>:events)."""
    kafka_topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    """Topic to consume."""
    pipeline_name: str
    """Names a [pipelines.NAME] table."""
    connection_id: str
    """Passed to the pipeline (the Airbyte connection id)."""
    max_event: int = Field(gt=0)
    """A window closes when it holds exactly this many events."""
    max_time: float = Field(gt=0)
    """A window closes this many seconds after its first event, even if the topic is idle."""
    job_type: Literal["sync", "async", "batch"] = "sync"
    """sync: wait for the run before the next; async: fire and track; batch: sync + events."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where to start when nothing was ever counted or committed."""
    batch_size: int = Field(500, gt=0, le=100_000)
    """Maximum records per poll (one atomic Redis update per poll)."""
    poll_timeout: float = Field(1.0, gt=0)
    """Seconds a poll waits for records."""
    group_id: str | None = None
    """Kafka consumer group (default kafkaconsole-<consumer_id>)."""
    format: Literal["json", "text", "raw"] = "json"
    """json and text validate each event; raw counts bytes as they are."""
    filter: dict[str, Any] | None = None
    """Count only JSON events whose fields equal these values (dotted paths allowed)."""
    processor: str | None = Field(None, pattern=TARGET_PATTERN)
    """"package.module:function" called per event; returning None drops the event."""
    max_event_bytes: int = Field(1_048_576, gt=0)
    """Events larger than this go to the DLQ."""
    retry_policy: RetryPolicy | None = None
    """Overrides the pipeline's retry policy for this consumer."""
    error_handling: ErrorHandling = Field(default_factory=ErrorHandling)
    """What to do with events that fail to decode, validate or process."""

    @property
    def effective_group_id(self) -> str:
        return self.group_id or f"kafkaconsole-{self.consumer_id}"

    @property
    def dlq_topic(self) -> str:
        return self.error_handling.dlq_topic or f"{self.kafka_topic}.dlq"

    @field_validator("filter")
    @classmethod
    def _filter_needs_scalars(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        for key, item in value.items():
            if not re.match(r"^[^.\s][^\s]*$", key):
                raise ValueError(f"filter key {key!r} is not a field path")
            if isinstance(item, dict):
                raise ValueError(f"filter value of {key!r} must be a scalar or a list")
        return value


class AppConfig(Section):
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    """Kafka connection."""
    redis: RedisConfig = Field(default_factory=RedisConfig)
    """Redis connection and key layout."""
    api: ApiConfig = Field(default_factory=ApiConfig)
    """HTTP API."""
    ui: UiConfig = Field(default_factory=UiConfig)
    """Terminal UI."""
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)
    """Pipelines by name."""
    consumers: list[ConsumerConfig] = Field(default_factory=list)
    """Consumers."""

    # Set by the loader (not fields: never dumped, never validated). Dotted keys whose value
    # came from ${VAR}, and the values substituted, so that secrets.py can mask them.
    _secret_keys: frozenset[str] = PrivateAttr(default_factory=frozenset)
    _resolved_secrets: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def consumer(self, consumer_id: str) -> ConsumerConfig:
        for consumer in self.consumers:
            if consumer.consumer_id == consumer_id:
                return consumer
        raise KeyError(consumer_id)

    def pipeline_for(self, consumer: ConsumerConfig) -> Any:
        return self.pipelines[consumer.pipeline_name]

    def retry_policy_for(self, consumer: ConsumerConfig) -> RetryPolicy:
        pipeline = self.pipelines[consumer.pipeline_name]
        return consumer.retry_policy or pipeline.retry_policy
