"""The configuration model: every section of the TOML file, frozen once loaded.

Unknown keys are errors (``extra="forbid"``); every field carries a docstring, which
``sample_config.toml`` mirrors. Secrets are plain strings here (already resolved from
``${VAR}``); :mod:`kafkaconsole.config.secrets` knows which of them to mask.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return value


HostPort = Annotated[str, Field(min_length=3, max_length=300), AfterValidator(_host_port)]
"""A "host:port" address (IPv6 as "[::1]:6379")."""

MAX_COUNT = 2**53 - 1
"""Counts, offsets and max_event stay below 2**53: Redis Lua numbers are doubles."""
CONSUMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TOPIC_PATTERN = r"^[A-Za-z0-9._-]+$"
TopicName = Annotated[str, Field(min_length=1, max_length=249, pattern=TOPIC_PATTERN)]
#: Topics a topic_pattern never subscribes to beside the consumer's own DLQ: internal ones
#: (``__consumer_offsets``, Debezium's ``__debezium-heartbeat.*``, Kafka Connect's
#: ``__connect.*`` and the like)
INTERNAL_TOPIC_PREFIX = "__"
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
    """Accept SASL_PLAINTEXT (credentials unencrypted); logs a warning. Not recommended."""
    fetch_max_wait_ms: int | None = Field(None, ge=0, le=10_000)
    """How long the broker may hold a fetch waiting for data; unset: 10 ms per consumer, 50-5000."""
    session_timeout_ms: int = Field(10_000, ge=1_000, le=3_600_000)
    """Consumer group session timeout: how fast a dead instance's partitions move."""
    heartbeat_interval_ms: int = Field(3_000, ge=100, le=600_000)
    """Consumer group heartbeat interval."""
    max_poll_interval_ms: int = Field(300_000, ge=1_000, le=86_400_000)
    """A consumer that does not poll for this long leaves its group (pipelines never block it)."""
    commit_interval: float = Field(1.0, gt=0, le=3600)
    """Seconds between Kafka commits (Redis holds the truth; commits keep lag tools right)."""
    request_timeout_ms: int = Field(40_000, ge=1_000, le=600_000)
    """How long a consumer waits for a broker's answer (a hung leader holds its partitions)."""
    metadata_max_age_ms: int = Field(300_000, ge=1_000, le=86_400_000)
    """Milliseconds between two metadata refreshes: a topic_pattern sees new topics within it."""

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaConfig:
        protocol = self.security_protocol
        if protocol.startswith("SASL"):
            if not self.sasl_mechanism:
                raise ValueError("sasl_mechanism is required with a SASL security_protocol")
            for name in ("sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name} is required with security_protocol {protocol}")
            if protocol == "SASL_PLAINTEXT" and not self.allow_insecure:
                raise ValueError(
                    f"security_protocol SASL_PLAINTEXT sends {self.sasl_mechanism} credentials "
                    "over an unencrypted connection: use SASL_SSL, or set allow_insecure = true "
                    "to accept the risk"
                )
        else:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} is set but security_protocol {protocol} does not use SASL "
                        "(use SASL_SSL)"
                    )
        if protocol not in ("SSL", "SASL_SSL"):
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} is set but security_protocol {protocol} does not use TLS "
                        "(use SSL or SASL_SSL)"
                    )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
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
    history_limit: int = Field(1000, ge=10, le=1_000_000)
    """How many trigger records to keep per consumer."""
    dispatch_lease_ms: int = Field(10_000, ge=500, le=3_600_000)
    """How long a dead instance keeps the right to dispatch a consumer's triggers."""
    max_connections: int = Field(32, ge=4, le=10_000)
    """Pooled Redis connections of the counting and dispatch paths (9 more: see README)."""
    mode: Literal["single", "cluster", "sentinel"] = "single"
    """single: the server at url; cluster: Redis Cluster; sentinel: the primary Sentinel names."""
    nodes: list[HostPort] = Field(default_factory=list, max_length=100)
    """Cluster startup nodes as "host:port" (default: the url's host and port)."""
    sentinels: list[HostPort] = Field(default_factory=list, max_length=100)
    """Sentinels as "host:port" (mode = "sentinel")."""
    service_name: str | None = Field(None, min_length=1, max_length=200)
    """The Sentinel service (master) name of the primary (mode = "sentinel")."""
    sentinel_password: str | None = None
    """Password of the Sentinels themselves, if they require one (write it as ${ENV_VAR})."""

    @model_validator(mode="after")
    def _mode_settings(self) -> RedisConfig:
        if self.mode == "sentinel":
            if not self.sentinels:
                raise ValueError('mode = "sentinel" needs sentinels = ["host:port", ...]')
            if not self.service_name:
                raise ValueError('mode = "sentinel" needs service_name (the monitored master)')
        else:
            if self.sentinels or self.service_name or self.sentinel_password:
                raise ValueError(
                    'sentinels, service_name and sentinel_password apply only to mode = "sentinel"'
                )
        if self.nodes and self.mode != "cluster":
            raise ValueError('nodes applies only to mode = "cluster"')
        if self.mode == "cluster" and self.url.startswith("unix://"):
            raise ValueError('mode = "cluster" needs a redis:// or rediss:// url, not unix://')
        if self.mode == "sentinel" and self.url.startswith("unix://"):
            raise ValueError('mode = "sentinel" needs a redis:// or rediss:// url, not unix://')
        return self

    @model_validator(mode="after")
    def _ca_needs_tls(self) -> RedisConfig:
        if self.ssl_ca_certs is not None and not self.tls and not self.url.startswith("rediss://"):
            raise ValueError(
                "ssl_ca_certs is set but the connection does not use TLS "
                "(use a rediss:// url or set tls = true)"
            )
        return self


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
    """Refuse pause, resume, reset and trigger from the TUI, the CLI and the HTTP API (403)."""
    keymap: dict[str, str] = Field(default_factory=dict)
    """Remap bindings by id, e.g. { pause = "space" }."""


class RetryPolicy(Section):
    max_attempts: int = Field(5, ge=1, le=100)
    """Attempts per pipeline call, the first included."""
    initial_backoff: float = Field(0.5, ge=0, le=3600)
    """Seconds before the first retry."""
    max_backoff: float = Field(30.0, ge=0, le=86_400)
    """Cap on the backoff between retries."""
    jitter: bool = True
    """Randomise each backoff (full jitter) so instances do not retry in step."""


class ErrorHandling(Section):
    on_error: Literal["dlq", "skip", "stop"] = "dlq"
    """Bad events: send to the DLQ topic, skip them (counted as errors), or stop the consumer."""
    dlq_topic: str | None = Field(None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    """Dead-letter topic (default: <kafka_topic>.dlq, or <consumer_id>.dlq with many topics)."""


class PipelineBase(Section):
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    """Retries of a failed call (capped exponential backoff with jitter)."""
    timeout: float = Field(30.0, gt=0, le=86_400)
    """Seconds one call may take (http, airbyte, airflow: each HTTP request, redirects included)."""
    max_concurrent_runs: int = Field(1, ge=1, le=1000)
    """Runs of this pipeline in flight at once for job_type = "async" consumers."""
    breaker_threshold: int = Field(5, ge=0, le=10_000)
    """Consecutive failed runs that open the circuit (0 = never open it)."""
    breaker_cooldown: float = Field(60.0, gt=0, le=86_400)
    """Seconds an open circuit holds triggers back before one probe run is let through."""


class RemoteEndpoint(Section):
    """TLS keys of the kinds that call an HTTP(S) endpoint (http, airbyte, airflow, webhooks).

    Proxies come from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY); redirects are
    followed within the same scheme or from http to https (see
    :mod:`kafkaconsole.engine.http_client`).
    """

    ca_file: str | None = None
    """CA bundle (PEM) that verifies the server's certificate, instead of the system's."""
    cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS."""
    key_file: str | None = None
    """Private key of cert_file (PEM; omit it when cert_file holds the key)."""
    verify: bool = True
    """Verify the server's certificate and host name; false is logged as a warning at start."""

    @model_validator(mode="after")
    def _tls_files_fit(self) -> Any:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate)")
        if not self.verify and self.ca_file is not None:
            raise ValueError("ca_file has no use with verify = false (nothing is verified)")
        return self


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


class HttpPipeline(PipelineBase, RemoteEndpoint):
    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    """Webhook URL; the trigger record is the JSON body; 2xx is success."""
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    """HTTP method."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers (values may be ${ENV_VAR} secrets)."""


class AirbytePipeline(PipelineBase, RemoteEndpoint):
    kind: Literal["airbyte"]
    url: str = Field(pattern=r"^https?://")
    """Airbyte public API base URL, e.g. http://localhost:8000/api/public (/v1 may end it)."""
    token: str | None = None
    """Bearer token."""
    client_id: str | None = None
    """Client id exchanged for a token (instead of token)."""
    client_secret: str | None = None
    """Client secret exchanged for a token."""
    username: str | None = None
    """Basic auth user (self-hosted Airbyte), instead of token or client_id."""
    password: str | None = None
    """Basic auth password."""
    job_type: Literal["sync", "reset"] = "sync"
    """Airbyte jobType."""
    poll_interval: float = Field(5.0, gt=0, le=3600)
    """Seconds between job status polls."""
    run_timeout: float = Field(3600.0, gt=0, le=604_800)
    """Seconds a job may run before it is marked failed."""

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> AirbytePipeline:
        if (self.client_id is None) != (self.client_secret is None):
            raise ValueError("client_id and client_secret must be given together")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        ways = [
            name
            for name, given in (
                ("token", self.token is not None),
                ("client_id/client_secret", self.client_id is not None),
                ("username/password", self.username is not None),
            )
            if given
        ]
        if len(ways) > 1:
            raise ValueError(f"{' cannot be combined with '.join(ways)}; use one")
        return self


class AirflowPipeline(PipelineBase, RemoteEndpoint):
    kind: Literal["airflow"]
    url: str = Field(pattern=r"^https?://")
    """Airflow base URL, e.g. http://localhost:8080."""
    dag_id: str
    """DAG to trigger."""
    api_version: Literal["v1", "v2"] = "v1"
    """REST API version: v1 (Airflow 2) or v2 (Airflow 3)."""
    username: str | None = None
    """User: basic auth with v1; with v2 exchanged for a JWT at POST {url}/auth/token."""
    password: str | None = None
    """Password of username."""
    token: str | None = None
    """Bearer token instead of username/password (a JWT with v2: never renewed)."""
    poll_interval: float = Field(5.0, gt=0, le=3600)
    """Seconds between DAG run state polls."""
    run_timeout: float = Field(3600.0, gt=0, le=604_800)
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
    kafka_topic: str | None = Field(None, min_length=1, max_length=249, pattern=TOPIC_PATTERN)
    """Topic to consume (or kafka_topics, or topic_pattern: exactly one of the three)."""
    kafka_topics: list[TopicName] | None = Field(None, min_length=1, max_length=1000)
    """Topics to consume into one window (instead of kafka_topic)."""
    topic_pattern: str | None = Field(None, min_length=1, max_length=1000)
    """Regex a topic's whole name must match, topics created later included (see README)."""
    pipeline_name: str
    """Names a [pipelines.NAME] table."""
    connection_id: str
    """Passed to the pipeline (the Airbyte connection id)."""
    max_event: int = Field(gt=0, le=MAX_COUNT)
    """A window closes when it holds exactly this many events."""
    max_time: float = Field(gt=0, le=31_536_000)
    """A window closes this many seconds after its first event, even if the topic is idle."""
    job_type: Literal["sync", "async", "batch"] = "sync"
    """sync: wait for the run before the next; async: fire and track; batch: sync + events."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where to start when nothing was ever counted or committed."""
    on_topic_reset: Literal["wait", "restart"] = "wait"
    """A topic that ends below what was counted (re-created): wait for accept-reset, or restart."""
    batch_size: int = Field(500, gt=0, le=100_000)
    """Maximum records per poll (one atomic Redis update per poll)."""
    poll_timeout: float = Field(1.0, gt=0, le=60)
    """Seconds a poll waits for records."""
    group_id: str | None = None
    """Kafka consumer group (default kafkaconsole-<consumer_id>)."""
    format: Literal["json", "text", "raw", "debezium"] = "json"
    """json and text validate each event; raw counts bytes; debezium reads change events."""
    tombstones: Literal["skip", "count"] = "skip"
    """Records with a null value: skip (recorded as skipped, never an error) or count them."""
    snapshot_reads: Literal["count", "skip"] = "count"
    """format = "debezium": count snapshot reads (op = r) or skip them (recorded as skipped)."""
    filter: dict[str, Any] | None = None
    """Count only JSON events whose fields equal these values (dotted paths allowed)."""
    processor: str | None = Field(None, pattern=TARGET_PATTERN)
    """"package.module:function" called per event; returning None drops the event."""
    processor_timeout: float = Field(30.0, gt=0, le=3600)
    """Seconds the processor may take on one event; then the event is handled per error_handling."""
    max_event_bytes: int = Field(1_048_576, gt=0, le=104_857_600)
    """Events larger than this go to the DLQ (cut to what the DLQ accepts)."""
    retry_policy: RetryPolicy | None = None
    """Overrides the pipeline's retry policy for this consumer."""
    error_handling: ErrorHandling = Field(default_factory=ErrorHandling)
    """What to do with events that fail to decode, validate or process."""
    backlog_policy: Literal["each", "coalesce"] = "each"
    """Windows waiting for the pipeline: each runs them one by one; coalesce runs them as one."""
    max_backlog: int = Field(100, ge=2, le=100_000)
    """Windows waiting beyond this many are run as one coalesced run, whatever backlog_policy."""

    @property
    def effective_group_id(self) -> str:
        return self.group_id or f"kafkaconsole-{self.consumer_id}"

    @property
    def dlq_topic(self) -> str:
        """The DLQ: ``<kafka_topic>.dlq`` by default, ``<consumer_id>.dlq`` with many topics."""
        if self.error_handling.dlq_topic:
            return self.error_handling.dlq_topic
        if self.kafka_topic is not None:
            return f"{self.kafka_topic}.dlq"
        return f"{self.consumer_id}.dlq"

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics named (kafka_topic or kafka_topics); empty with topic_pattern."""
        if self.kafka_topic is not None:
            return (self.kafka_topic,)
        return tuple(self.kafka_topics or ())

    @property
    def topic_label(self) -> str:
        """What status and the console show as the consumer's topic: the topic, the topics
        joined with commas, or the pattern as ``/regex/``."""
        if self.topic_pattern is not None:
            return f"/{self.topic_pattern}/"
        return ",".join(self.topics)

    @property
    def subscription_regex(self) -> str | None:
        """The regex the consumer subscribes with (topic_pattern only): the whole name must
        match, and internal topics (``__`` prefix) and the consumer's DLQ never do."""
        if self.topic_pattern is None:
            return None
        return (
            f"(?!{INTERNAL_TOPIC_PREFIX})(?!{re.escape(self.dlq_topic)}\\Z)"
            f"(?:{self.topic_pattern})\\Z"
        )

    def reads_topic(self, topic: str) -> bool:
        """Whether ``topic`` is one this consumer reads (named, or matched by its pattern)."""
        regex = self.subscription_regex
        if regex is None:
            return topic in self.topics
        return re.match(regex, topic) is not None

    @model_validator(mode="after")
    def _one_topic_source(self) -> ConsumerConfig:
        given = [
            name
            for name, value in (
                ("kafka_topic", self.kafka_topic),
                ("kafka_topics", self.kafka_topics),
                ("topic_pattern", self.topic_pattern),
            )
            if value is not None
        ]
        if len(given) != 1:
            which = "none" if not given else " and ".join(given)
            raise ValueError(
                f"consumer {self.consumer_id!r} needs exactly one of kafka_topic, kafka_topics "
                f"or topic_pattern ({which} given)"
            )
        if self.kafka_topics is not None and len(set(self.kafka_topics)) != len(self.kafka_topics):
            raise ValueError(f"consumer {self.consumer_id!r}: kafka_topics names a topic twice")
        if self.topic_pattern is not None:
            try:
                re.compile(self.topic_pattern)
            except re.error as exc:
                raise ValueError(
                    f"consumer {self.consumer_id!r}: topic_pattern is not a valid regex: {exc}"
                ) from None
        if self.dlq_topic in self.topics:
            raise ValueError(
                f"consumer {self.consumer_id!r}: its DLQ topic {self.dlq_topic!r} is also a "
                "topic it reads"
            )
        return self

    @model_validator(mode="after")
    def _snapshot_reads_need_debezium(self) -> ConsumerConfig:
        if self.snapshot_reads == "skip" and self.format != "debezium":
            raise ValueError('snapshot_reads = "skip" needs format = "debezium"')
        return self

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


VERDICTS: tuple[str, ...] = (
    "ok",
    "paused",
    "lagging",
    "stalled",
    "stopped",
    "window-stuck",
    "pipeline-failing",
    "pipeline-backlog",
    "trigger-storm",
    "topic-recreated",
)
"""Every health verdict, from :mod:`kafkaconsole.engine.health`."""
AlertVerdict = Literal[
    "paused",
    "lagging",
    "stalled",
    "stopped",
    "window-stuck",
    "pipeline-failing",
    "pipeline-backlog",
    "trigger-storm",
    "topic-recreated",
]
AlertMetric = Literal[
    "lag",
    "time_lag_seconds",
    "rate",
    "triggers_per_minute",
    "failed_runs",
    "backlog",
    "backlog_age_seconds",
]


def _short_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class AlertRule(RemoteEndpoint):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$", max_length=64)
    """Names the alert in notifications and its Redis key (default: verdict or metric_above_N)."""
    verdict: AlertVerdict | None = None
    """Fire while a consumer has this verdict (set verdict or metric, not both)."""
    metric: AlertMetric | None = None
    """Fire while this number of a consumer is above or below a threshold."""
    above: float | None = Field(None, ge=-1e15, le=1e15)
    """With metric: fire while the metric is greater than this."""
    below: float | None = Field(None, ge=-1e15, le=1e15)
    """With metric: fire while the metric is less than this."""
    for_: float = Field(0.0, ge=0, le=86_400, alias="for")
    """Seconds the condition must hold before the alert fires (it resolves when it stops)."""
    channel: Literal["log", "webhook", "tui", "slack", "pagerduty", "alertmanager"] = "log"
    """Where it goes: log, webhook, tui, slack, pagerduty or alertmanager (see README)."""
    url: str | None = Field(None, pattern=r"^https?://")
    """Webhook URL, Slack incoming-webhook URL, Alertmanager base URL, or PagerDuty's."""
    routing_key: str | None = Field(None, min_length=1, max_length=256)
    """PagerDuty Events v2 integration key (channel = "pagerduty"; write it as ${ENV_VAR})."""
    severity: Literal["critical", "error", "warning", "info"] = "warning"
    """Severity sent to PagerDuty, Alertmanager (label) and Slack."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra webhook headers (write tokens as ${ENV_VAR})."""
    consumers: list[str] = Field(default_factory=list)
    """consumer_ids the rule watches (empty, with runtime_consumers empty: every consumer)."""
    runtime_consumers: list[Annotated[str, Field(pattern=CONSUMER_ID_PATTERN)]] = Field(
        default_factory=list
    )
    """Ids of consumers defined at runtime (kafkaconsole consumer add) the rule also watches."""

    @field_validator("for_", mode="before")
    @classmethod
    def _for_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool):  # the loader's boolean check cannot see through the alias
            raise ValueError("expected a number")
        return value

    @model_validator(mode="after")
    def _one_condition(self) -> AlertRule:
        if (self.verdict is None) == (self.metric is None):
            raise ValueError("a rule needs either verdict or metric (not both)")
        if self.metric is not None and (self.above is None) == (self.below is None):
            raise ValueError("a metric rule needs either above or below (not both)")
        if self.verdict is not None and (self.above is not None or self.below is not None):
            raise ValueError("above and below go with metric, not with verdict")
        if self.channel in ("webhook", "slack", "alertmanager") and not self.url:
            raise ValueError(f'url is required with channel = "{self.channel}"')
        if self.channel == "pagerduty" and not self.routing_key:
            raise ValueError('routing_key is required with channel = "pagerduty"')
        if self.routing_key is not None and self.channel != "pagerduty":
            raise ValueError('routing_key goes with channel = "pagerduty"')
        return self

    @property
    def rule_id(self) -> str:
        """The alert's name: ``name``, else the verdict, else e.g. ``time_lag_seconds_above_60``."""
        if self.name:
            return self.name
        if self.verdict is not None:
            return self.verdict
        if self.above is not None:
            return f"{self.metric}_above_{_short_number(self.above)}"
        return f"{self.metric}_below_{_short_number(self.below or 0.0)}"

    def watches(self, consumer_id: str) -> bool:
        """Whether the rule applies to ``consumer_id``: every consumer when it names none,
        else those named in ``consumers`` or ``runtime_consumers``."""
        if not self.consumers and not self.runtime_consumers:
            return True
        return consumer_id in self.consumers or consumer_id in self.runtime_consumers


class MonitoringConfig(Section):
    enabled: bool = True
    """Compute a health verdict per consumer and evaluate the alert rules."""
    sample_interval: float = Field(1.0, gt=0, le=60)
    """Seconds between two samples of the fleet (lag, positions, counts, runs)."""
    lagging_intervals: int = Field(5, ge=1, le=1000)
    """lagging: the lag grew over this many consecutive status intervals (about a second each)."""
    stall_after: float = Field(30.0, gt=0, le=86_400)
    """stalled: seconds with events waiting (lag > 0), not paused, and a position not moving."""
    stuck_after: float = Field(60.0, gt=0, le=86_400)
    """window-stuck: seconds with events being read but none counted (all filtered or bad)."""
    failing_runs: int = Field(3, ge=1, le=100)
    """pipeline-failing: this many most recent pipeline runs failed (or the breaker is open)."""
    storm_per_minute: float = Field(30.0, gt=0, le=1_000_000)
    """trigger-storm: more triggers per minute than this, counted over storm_period."""
    storm_period: float = Field(60.0, gt=0, le=86_400)
    """Seconds over which triggers are counted for trigger-storm."""
    backlog_windows: int = Field(10, ge=1, le=100_000)
    """pipeline-backlog: more closed windows than this wait for their pipeline run."""
    backlog_age: float = Field(300.0, gt=0, le=604_800)
    """pipeline-backlog: the oldest waiting window closed more than this many seconds ago."""
    webhook_timeout: float = Field(5.0, gt=0, le=300)
    """Seconds one webhook POST may take."""
    webhook_attempts: int = Field(3, ge=1, le=20)
    """Attempts per webhook notification (waiting 0.5 s, 1 s, 2 s... between them)."""
    alerts: list[AlertRule] = Field(default_factory=list)
    """Alert rules, one [[monitoring.alerts]] table each."""

    @model_validator(mode="after")
    def _unique_rule_names(self) -> MonitoringConfig:
        seen: set[str] = set()
        for rule in self.alerts:
            if rule.rule_id in seen:
                raise ValueError(
                    f"alerts has two rules named {rule.rule_id!r} (give one of them a name)"
                )
            seen.add(rule.rule_id)
        return self


def spread(value_ms: int, phase: float, low: float = 0.8, high: float = 1.2) -> int:
    """``value_ms`` scaled by ``low`` to ``high`` along ``phase`` (0 to 1; by default 0.5
    gives ``value_ms``): per-consumer periods that differ a little, so consumers that once
    acted together drift apart instead of acting together for good."""
    return round(value_ms * (low + (high - low) * min(max(phase, 0.0), 1.0)))


class AppConfig(Section):
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    """Kafka connection."""
    redis: RedisConfig = Field(default_factory=RedisConfig)
    """Redis connection and key layout."""
    api: ApiConfig = Field(default_factory=ApiConfig)
    """HTTP API."""
    ui: UiConfig = Field(default_factory=UiConfig)
    """Terminal UI."""
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    """Health verdicts and alerts."""
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)
    """Pipelines by name."""
    consumers: list[ConsumerConfig] = Field(default_factory=list)
    """Consumers."""

    # Set by the loader (not fields: never dumped, never validated). Dotted keys whose value
    # came from ${VAR}, and the values substituted, so that secrets.py can mask them.
    _secret_keys: frozenset[str] = PrivateAttr(default_factory=frozenset)
    _resolved_secrets: frozenset[str] = PrivateAttr(default_factory=frozenset)
    # The file it was loaded from (absolute), which a reload reads again; None when built in code.
    _source_file: str | None = PrivateAttr(default=None)

    @property
    def source_file(self) -> str | None:
        """The file this configuration was loaded from (absolute path), if any."""
        return self._source_file

    def with_read_only(self) -> AppConfig:
        """This configuration with ``[ui] read_only = true`` (for ``--read-only``); secrets
        stay known (the private attributes are copied)."""
        return self.model_copy(update={"ui": self.ui.model_copy(update={"read_only": True})})

    @model_validator(mode="after")
    def _alerts_name_known_consumers(self) -> AppConfig:
        # strict, so that a typo never silences a rule; a consumer defined at runtime is not
        # in the file: a rule names it in runtime_consumers
        ids = {c.consumer_id for c in self.consumers}
        for rule in self.monitoring.alerts:
            unknown = [cid for cid in rule.consumers if cid not in ids]
            if unknown:
                raise ValueError(
                    f"monitoring alert {rule.rule_id!r} names unknown consumer(s) "
                    f"{', '.join(repr(u) for u in unknown)} (a consumer defined at runtime "
                    "goes in runtime_consumers)"
                )
        return self

    def consumer(self, consumer_id: str) -> ConsumerConfig:
        for consumer in self.consumers:
            if consumer.consumer_id == consumer_id:
                return consumer
        raise KeyError(consumer_id)

    def pipeline_for(self, consumer: ConsumerConfig) -> Any:
        return self.pipelines[consumer.pipeline_name]

    def fetch_wait_ms(self, phase: float = 0.5) -> int:
        """The fetch wait of a consumer of this process: ``[kafka] fetch_max_wait_ms``, or
        when unset 10 ms per consumer between 50 and 5,000 ms (below half the request
        timeout), spread by the consumer's ``phase`` (0 to 1) over 80-120 % of that.

        An idle consumer sends one fetch per wait, so the process sends at most about 100
        fetches a second however many consumers it runs. A broker answers a fetch as soon as
        data arrives, so a longer wait costs no latency on Apache Kafka (Tansu holds every
        fetch for the whole wait). The spread: consumers whose fetches all ended together
        (events on every topic at once) would otherwise keep fetching together, hundreds of
        requests in one burst every wait, taking a small machine's cores from the engine at
        the moments a window opened a multiple of the wait earlier is due to close."""
        if self.kafka.fetch_max_wait_ms is not None:
            return self.kafka.fetch_max_wait_ms
        wait = spread(min(max(50, 10 * len(self.consumers)), 5_000), phase)
        return min(wait, self.kafka.request_timeout_ms // 2)

    def group_heartbeat_ms(self, phase: float = 1.0) -> int:
        """The group heartbeat interval of a consumer of this process: ``[kafka]
        heartbeat_interval_ms`` scaled by 0.8 to 1 along the consumer's ``phase`` (0 to 1),
        never longer than asked. Consumers that joined together otherwise heartbeat together
        for good: 500 heartbeats in one burst every 3 s."""
        return max(100, spread(self.kafka.heartbeat_interval_ms, phase, high=1.0))

    def fetcher_wake_ms(self, phase: float = 0.5) -> int:
        """The longest a consumer's background fetch routine (aiokafka's
        ``consumer_timeout_ms``) sleeps with nothing to do: 200 ms, or so that the process's
        idle routines wake at most about 250 times a second (2 s with 500 consumers, at most
        5 s); spread by the consumer's ``phase`` as :meth:`fetch_wait_ms`.

        It is only a safety net: records, a seek, a reset, a resume, a new assignment and the
        answer of a fetch in flight all wake the routine at once."""
        return spread(min(max(200, 4 * len(self.consumers)), 5_000), phase)

    def probe_interval_s(self) -> float:
        """How often each consumer asks the brokers for its topic's end offsets and its
        positions (lag while idle or paused; a fetch's highwater keeps it live while events
        flow): once a second, or so that the process sends at most about 100 such requests a
        second (5 s with 500 consumers)."""
        return max(1.0, len(self.consumers) / 100)

    def heartbeat_s(self) -> float:
        """How often an instance publishes its status (its heartbeat, which lives 5 s) to
        Redis: every second, or so that it serialises at most about 250 consumers a second
        (2 s with 500, never longer)."""
        return min(max(1.0, len(self.consumers) / 250), 2.0)

    def control_poll_s(self) -> float:
        """How often an instance reads every consumer's pause flag and seek epoch (a net for
        a missed announcement; an announcement applies its consumer at once): every second,
        or so that it reads at most about 100 consumers' flags a second (5 s with 500)."""
        return max(1.0, len(self.consumers) / 100)

    def idle_poll_s(self) -> float:
        """How long a consumer with nothing to count or commit waits in one poll (records end
        it at once): ``poll_timeout``, or so that the process's idle consumers wake at most
        about 100 times a second (5 s with 500 consumers). A seek, a resync or a stop ends
        the wait at once."""
        return max(1.0, len(self.consumers) / 100)

    def monitor_interval_s(self, consumers: int) -> float:
        """How often the health monitor samples a fleet of ``consumers``: every
        ``[monitoring] sample_interval``, or so that it samples at most about 25 consumers a
        second (20 s with 500: verdicts and alerts come at most that much later; a sample of
        500 consumers is about half a second of CPU)."""
        return max(self.monitoring.sample_interval, consumers / 25)

    def takeover_poll_s(self) -> float:
        """How often a dispatcher that just took its lease looks for what a stopped instance
        left pending: every 0.5 s, or so that the process sends at most about 200 such looks
        a second (5 s with 1,000 consumers, all taking their lease at start)."""
        return max(0.5, len(self.consumers) / 200)

    def retry_policy_for(self, consumer: ConsumerConfig) -> RetryPolicy:
        return consumer.retry_policy or self.pipeline_for(consumer).retry_policy
