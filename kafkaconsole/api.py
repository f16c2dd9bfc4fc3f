"""The HTTP API beside a running engine: status, control, Prometheus ``/metrics``, OpenAPI.

Started by the headless process and by the TUI (``start_api(engine, config)`` returns an async
closer, so it plugs into :func:`kafkaconsole.headless.serve`'s ``extras``). Reads return the
same fleet model as ``kafkaconsole status --json`` (read from Redis by
:class:`~kafkaconsole.engine.fleet.Fleet`); liveness, readiness, lag and pipeline-run metrics
describe this instance. Mutating endpoints need ``Authorization: Bearer <api.token>`` and are
disabled (403) when no token is configured. No endpoint accepts connection settings or code;
``POST /consumers`` takes one consumer table (validated as the file's, ``processor`` refused,
at most 16 KiB); every other endpoint ignores its body, capped at 1 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from pydantic import BaseModel
from redis.exceptions import RedisError

from kafkaconsole.config.errors import ConfigError
from kafkaconsole.config.models import AppConfig
from kafkaconsole.config.secrets import mask_text
from kafkaconsole.engine.clients import pool_exhausted, reader_redis_client
from kafkaconsole.engine.consumer import KAFKA_SILENCE_S
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.errors import ControlError, ReadOnlyError
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.fleet_status import (
    ConsumerDefinitionBody,
    ConsumerInfo,
    ConsumersBody,
    ConsumerStatus,
    ControlResult,
    HealthBody,
    InstancesBody,
    ProblemsBody,
    ReadyBody,
    ReloadBody,
    json_schemas,
)
from kafkaconsole.engine.health import VerdictName
from kafkaconsole.engine.peek import DEFAULT_LIMIT as PEEK_DEFAULT_LIMIT
from kafkaconsole.engine.peek import MAX_LIMIT as PEEK_MAX_LIMIT
from kafkaconsole.engine.peek import EventPeek, PeekBody, PeekError
from kafkaconsole.engine.records import RunResult, TriggerRecord
from kafkaconsole.engine.reload import ReloadStatus
from kafkaconsole.engine.runtime_consumers import define_consumer, undefine_consumer
from kafkaconsole.engine.seek import TARGET_HELP as SEEK_TARGET_HELP
from kafkaconsole.engine.seek import SeekResult, plan_seek
from kafkaconsole.engine.seek import parse_target as parse_seek_target
from kafkaconsole.engine.seek import parse_window as parse_seek_window
from kafkaconsole.engine.status import ConsumerState, InstanceSnapshot

log = logging.getLogger("kafkaconsole.api")

CLIENT_MAX_SIZE = 16_384
"""Largest request body accepted (bytes): a consumer definition (``POST /consumers``)."""
IGNORED_BODY_MAX = 1024
"""Largest body of the other control endpoints (they need none; the body is ignored)."""
#: Requests served at once; more are answered 503 with Retry-After (never queued).
MAX_CONCURRENT_REQUESTS = 32
#: A /metrics exposition is reused for this long (Prometheus scrapes every 15 s or so).
METRICS_MAX_AGE_S = 1.0
#: Peeks (each a throwaway Kafka consumer) served at once; more are answered 503.
MAX_CONCURRENT_PEEKS = 2
#: No valid consumer id is longer (config.models.CONSUMER_ID_PATTERN).
MAX_CONSUMER_ID_LENGTH = 128

API_VERSION = "1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""Histogram buckets (seconds) of pipeline run durations."""


class ApiBindError(OSError):
    """The API's address cannot be bound (port in use, address not local...)."""


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _ignored_body(request: web.Request) -> web.Response | None:
    """Read (and ignore) the body of an endpoint that needs none: 413 above
    :data:`IGNORED_BODY_MAX` bytes."""
    if len(await request.read()) > IGNORED_BODY_MAX:
        return _error(413, "request body too large")
    return None


# ---- metrics ----------------------------------------------------------------------------------


@dataclass
class _Durations:
    counts: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    total: int = 0
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.total += 1
        self.sum_s += seconds
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1


class _Families:
    """A one-shot collector: yields metric families gathered before the scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


#: The client library's standard collectors: process_* (CPU, memory, open files, start time;
#: Linux), python_info and python_gc_*.
STANDARD_COLLECTORS = (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR)


def exposition(
    families: Iterable[Metric],
    *,
    accept: str = "",
    accept_encoding: str = "",
    names: Iterable[str] = (),
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a scrape, by prometheus_client's own exposition: the format the
    ``Accept`` header asks for (OpenMetrics 1.0 or the text format 0.0.4), gzip when
    ``Accept-Encoding`` allows it, only the ``name[]`` families when given."""
    registry = CollectorRegistry(auto_describe=True)  # name[] selection needs the names
    registry.register(_Families(families))  # type: ignore[arg-type]
    for collector in STANDARD_COLLECTORS:
        registry.register(collector)
    chosen = list(names)
    target = registry.restricted_registry(chosen) if chosen else registry
    encoder, content_type = choose_encoder(accept)
    body = encoder(target)  # type: ignore[arg-type]
    headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return body, headers


class ApiMetrics:
    """Prometheus metrics: fleet-wide counts from Redis plus this instance's own numbers.

    Fleet-wide series (events, errors, triggers, window progress) are read from Redis and so
    are the same on every instance (aggregate with ``max``); instance series (lag of the
    partitions this instance owns, DLQ writes, pipeline runs this instance dispatched and
    their durations) add up across instances (aggregate with ``sum``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.runs: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str], _Durations] = {}

    def on_run(self, record: TriggerRecord, result: RunResult) -> None:
        key = (record.consumer_id, record.pipeline_name)
        status_key = (*key, str(result.status))
        self.runs[status_key] = self.runs.get(status_key, 0) + 1
        if result.duration_ms is not None:
            self.durations.setdefault(key, _Durations()).observe(result.duration_ms / 1000)

    async def gather(self, fleet: Fleet) -> list[Metric]:
        """This instance's and the fleet's metric families (one fleet read)."""
        consumers: tuple[ConsumerStatus, ...] | None
        try:
            status = await fleet.read()
            consumers, instances = status.consumers, len(status.instances)
        except (RedisError, OSError) as exc:
            log.warning("metrics: fleet data unavailable: %s", exc)
            consumers, instances = None, 0
        return self._families(consumers, instances)

    def _families(
        self, consumers: tuple[ConsumerStatus, ...] | None, instances: int
    ) -> list[Metric]:
        snap = self.engine.snapshot()
        out: list[Metric] = []

        info = GaugeMetricFamily(
            "kafkaconsole_instance_info", "This instance (value 1).", labels=["instance_id", "host"]
        )
        info.add_metric([snap.instance_id, snap.host], 1)
        kafka_up = GaugeMetricFamily("kafkaconsole_kafka_up", "1 when this instance reaches Kafka.")
        kafka_up.add_metric([], 1 if snap.kafka_ok else 0)
        redis_up = GaugeMetricFamily("kafkaconsole_redis_up", "1 when this instance reaches Redis.")
        redis_up.add_metric([], 1 if snap.redis_ok and consumers is not None else 0)
        out += [info, kafka_up, redis_up]

        # -- this instance -------------------------------------------------------------------
        state = GaugeMetricFamily(
            "kafkaconsole_consumer_state",
            "State of each consumer on this instance (1 for the current state).",
            labels=["consumer_id", "state"],
        )
        lag = GaugeMetricFamily(
            "kafkaconsole_consumer_lag",
            "Events not yet consumed (highwater - position) per partition owned by this instance.",
            labels=["consumer_id", "topic", "partition"],
        )
        rate = GaugeMetricFamily(
            "kafkaconsole_consumer_rate_events_per_second",
            "Events counted per second by this instance (5 s average).",
            labels=["consumer_id"],
        )
        dlq = CounterMetricFamily(
            "kafkaconsole_dlq_events",
            "Bad events this instance wrote to the dead-letter topic since it started.",
            labels=["consumer_id"],
        )
        refused = CounterMetricFamily(
            "kafkaconsole_dlq_refused_events",
            "Bad events the dead-letter topic refused even cut down (recorded in Redis as "
            "errors and skipped) since this instance started.",
            labels=["consumer_id"],
        )
        losses = CounterMetricFamily(
            "kafkaconsole_redis_state_losses",
            "Times this instance found that Redis had lost counting state (offsets below what "
            "it saw stored: read again; missing: counted state gone).",
            labels=["consumer_id"],
        )
        for c in snap.consumers:
            losses.add_metric([c.consumer_id], c.redis_state_losses)
            for s in ConsumerState:
                state.add_metric([c.consumer_id, str(s)], 1 if c.state == s else 0)
            for p in c.partitions:
                if p.lag is not None:
                    labels = [c.consumer_id, p.topic or c.kafka_topic, str(p.partition)]
                    lag.add_metric(labels, p.lag)
            rate.add_metric([c.consumer_id], c.rate)
            dlq.add_metric([c.consumer_id], c.dlq)
            refused.add_metric([c.consumer_id], c.dlq_refused)
        out += [state, lag, rate, dlq, refused, losses, self._partition_time_lag(snap)]

        runs = CounterMetricFamily(
            "kafkaconsole_pipeline_runs",
            "Pipeline runs this instance dispatched, by final status.",
            labels=["consumer_id", "pipeline", "status"],
        )
        for (cid, pipeline, status), n in sorted(self.runs.items()):
            runs.add_metric([cid, pipeline, status], n)
        hist = HistogramMetricFamily(
            "kafkaconsole_pipeline_run_duration_seconds",
            "Duration of the pipeline runs this instance dispatched (retries included).",
            labels=["consumer_id", "pipeline"],
        )
        for (cid, pipeline), d in sorted(self.durations.items()):
            buckets = [(f"{b:g}", n) for b, n in zip(DURATION_BUCKETS, d.counts, strict=True)]
            hist.add_metric([cid, pipeline], [*buckets, ("+Inf", d.total)], d.sum_s)
        out += [runs, hist]

        # -- the fleet (from Redis) ----------------------------------------------------------
        if consumers is None:
            return out
        fleet_instances = GaugeMetricFamily(
            "kafkaconsole_fleet_instances", "Live instances of the fleet (fresh heartbeats)."
        )
        fleet_instances.add_metric([], instances)
        counted = CounterMetricFamily(
            "kafkaconsole_events_counted",
            "Events counted by the whole fleet (fleet-wide, from Redis).",
            labels=["consumer_id", "topic"],
        )
        errors = CounterMetricFamily(
            "kafkaconsole_event_errors",
            "Bad events (undecodable, invalid, processor errors), fleet-wide.",
            labels=["consumer_id"],
        )
        filtered = CounterMetricFamily(
            "kafkaconsole_events_filtered",
            "Events dropped by the filter or the processor, fleet-wide.",
            labels=["consumer_id"],
        )
        skipped = CounterMetricFamily(
            "kafkaconsole_events_skipped",
            "Records skipped on purpose (tombstones, Debezium heartbeats), fleet-wide.",
            labels=["consumer_id"],
        )
        discarded = CounterMetricFamily(
            "kafkaconsole_events_discarded",
            "Events discarded by window resets, fleet-wide.",
            labels=["consumer_id"],
        )
        triggers = CounterMetricFamily(
            "kafkaconsole_triggers",
            "Windows closed (pipeline triggers) by reason, fleet-wide.",
            labels=["consumer_id", "reason"],
        )
        w_events = GaugeMetricFamily(
            "kafkaconsole_window_events", "Events in the open window.", labels=["consumer_id"]
        )
        w_max = GaugeMetricFamily(
            "kafkaconsole_window_max_events",
            "Events that close a window (max_event).",
            labels=["consumer_id"],
        )
        w_fill = GaugeMetricFamily(
            "kafkaconsole_window_fill_ratio",
            "Open window's count / max_event (0..1).",
            labels=["consumer_id"],
        )
        w_left = GaugeMetricFamily(
            "kafkaconsole_window_time_left_seconds",
            "Seconds before the open window's time trigger (absent when no window is open).",
            labels=["consumer_id"],
        )
        paused = GaugeMetricFamily(
            "kafkaconsole_consumer_paused", "1 when paused fleet-wide.", labels=["consumer_id"]
        )
        live = GaugeMetricFamily(
            "kafkaconsole_consumer_instances",
            "Live instances running the consumer.",
            labels=["consumer_id"],
        )
        retention_lost = CounterMetricFamily(
            "kafkaconsole_retention_lost_events",
            "Offsets retention deleted before they were counted, per partition, fleet-wide.",
            labels=["consumer_id", "topic", "partition"],
        )
        resets = GaugeMetricFamily(
            "kafkaconsole_topic_reset_waiting",
            "1 per partition of a re-created topic counting nothing until accept-reset.",
            labels=["consumer_id", "topic", "partition"],
        )
        for fc in consumers:
            cid = fc.consumer_id
            for loss in fc.retention_losses:
                retention_lost.add_metric([cid, loss.topic, str(loss.partition)], loss.lost)
            for reset in fc.topic_resets:
                resets.add_metric([cid, reset.topic, str(reset.partition)], 1)
            counted.add_metric([cid, fc.kafka_topic], fc.total)
            errors.add_metric([cid], fc.errors)
            filtered.add_metric([cid], fc.filtered)
            skipped.add_metric([cid], fc.skipped)
            discarded.add_metric([cid], fc.discarded)
            for reason, n in fc.windows_by_reason.items():
                triggers.add_metric([cid, reason], n)
            w_events.add_metric([cid], fc.count)
            w_max.add_metric([cid], fc.max_event)
            w_fill.add_metric([cid], fc.fill_ratio)
            if fc.time_left is not None:
                w_left.add_metric([cid], fc.time_left)
            paused.add_metric([cid], 1 if fc.state == "paused" else 0)
            live.add_metric([cid], len(fc.instances))
        out += [fleet_instances, counted, errors, filtered, skipped, discarded, triggers]
        out += [w_events, w_max, w_fill, w_left, paused, live, retention_lost, resets]
        out += self._health(consumers)
        return out

    @staticmethod
    def _partition_time_lag(snap: InstanceSnapshot) -> Metric:
        family = GaugeMetricFamily(
            "kafkaconsole_partition_time_lag_seconds",
            "Age of the oldest unconsumed event per partition owned by this instance.",
            labels=["consumer_id", "topic", "partition"],
        )
        for c in snap.consumers:
            for p in c.partitions:
                if p.time_lag_seconds is not None:
                    labels = [c.consumer_id, p.topic or c.kafka_topic, str(p.partition)]
                    family.add_metric(labels, p.time_lag_seconds)
        return family

    @staticmethod
    def _health(consumers: tuple[ConsumerStatus, ...]) -> list[Metric]:
        """Fleet-wide health: verdicts, time lag, time to the next trigger, firing alerts."""
        verdict = GaugeMetricFamily(
            "kafkaconsole_consumer_verdict",
            "Health verdict of each consumer (1 for the current verdict), fleet-wide.",
            labels=["consumer_id", "verdict"],
        )
        time_lag = GaugeMetricFamily(
            "kafkaconsole_consumer_time_lag_seconds",
            "Age of the consumer's oldest unconsumed event, fleet-wide (absent when unknown).",
            labels=["consumer_id"],
        )
        to_trigger = GaugeMetricFamily(
            "kafkaconsole_window_time_to_trigger_seconds",
            "Expected seconds before the open window triggers, at the current rate.",
            labels=["consumer_id"],
        )
        alerts = GaugeMetricFamily(
            "kafkaconsole_alert_firing",
            "Alert rules firing, fleet-wide (value 1).",
            labels=["consumer_id", "alert"],
        )
        backlog = GaugeMetricFamily(
            "kafkaconsole_pipeline_backlog_windows",
            "Closed windows waiting for their pipeline run, fleet-wide.",
            labels=["consumer_id"],
        )
        backlog_age = GaugeMetricFamily(
            "kafkaconsole_pipeline_backlog_oldest_age_seconds",
            "Seconds the oldest window waiting for its pipeline run has waited (0: none waits).",
            labels=["consumer_id"],
        )
        for fc in consumers:
            cid = fc.consumer_id
            for v in VerdictName:
                verdict.add_metric([cid, str(v)], 1 if fc.verdict == v else 0)
            backlog.add_metric([cid], fc.backlog)
            backlog_age.add_metric([cid], fc.backlog_age_seconds or 0.0)
            if fc.time_lag_seconds is not None:
                time_lag.add_metric([cid], fc.time_lag_seconds)
            if fc.time_to_trigger_seconds is not None:
                to_trigger.add_metric([cid], fc.time_to_trigger_seconds)
            for alert in fc.alerts:
                alerts.add_metric([cid, alert.alert], 1)
        return [verdict, time_lag, to_trigger, alerts, backlog, backlog_age]


# ---- the server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    name: str
    summary: str
    auth: bool = False
    responses: tuple[int, ...] = (200,)
    produces: str = "application/json"
    body: type[BaseModel] | None = None
    """The model of the 200 body (the OpenAPI schema is generated from it)."""
    query: tuple[dict[str, Any], ...] = ()
    """OpenAPI parameter objects of the query string."""
    notes: tuple[tuple[int, str], ...] = ()
    """Descriptions of this route's statuses where they differ from the common ones."""
    bodies: tuple[tuple[int, type[BaseModel]], ...] = ()
    """Models of this route's non-200 bodies that are not the common error body."""
    request_body: str | None = None
    """Description of the JSON request body the route takes (None: it takes none)."""


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/health",
        "health",
        "Liveness: 200 while the process serves requests.",
        body=HealthBody,
    ),
    Route(
        "GET",
        "/ready",
        "ready",
        "Readiness: 200 when Kafka and Redis answer, else 503 with status degraded and reasons.",
        responses=(200, 503),
        body=ReadyBody,
    ),
    Route(
        "GET",
        "/consumers",
        "consumers",
        "Every consumer across the fleet (the consumers of `status --json`).",
        responses=(200, 503),
        body=ConsumersBody,
    ),
    Route(
        "GET",
        "/consumer/info/{consumer_id}",
        "consumer_info",
        "One consumer: config (secrets masked), state, window, lag, triggers, errors.",
        responses=(200, 404, 503),
        body=ConsumerInfo,
    ),
    Route(
        "GET",
        "/instances",
        "instances",
        "Live instances of the fleet (heartbeats in Redis).",
        responses=(200, 503),
        body=InstancesBody,
    ),
    Route(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus text exposition.",
        produces="text/plain",
    ),
    Route("GET", "/openapi.json", "openapi", "This OpenAPI 3 document."),
    Route(
        "POST",
        "/consumer/{consumer_id}/pause",
        "pause",
        "Pause the consumer on every instance (they keep polling, count nothing).",
        auth=True,
        responses=(200, 401, 403, 404, 413, 503),
        body=ControlResult,
    ),
    Route(
        "POST",
        "/consumer/{consumer_id}/resume",
        "resume",
        "Resume the consumer on every instance.",
        auth=True,
        responses=(200, 401, 403, 404, 413, 503),
        body=ControlResult,
    ),
    Route(
        "POST",
        "/consumer/{consumer_id}/reset",
        "reset",
        "Empty the open window without triggering.",
        auth=True,
        responses=(200, 401, 403, 404, 413, 503),
        body=ControlResult,
    ),
    Route(
        "POST",
        "/consumer/{consumer_id}/trigger",
        "trigger",
        "Close the open window now (even when empty) and run its pipeline.",
        auth=True,
        responses=(200, 401, 403, 404, 413, 503),
        body=ControlResult,
    ),
    Route(
        "POST",
        "/reload",
        "reload",
        "Read this instance's configuration file again and apply it live: consumers added "
        "start, removed ones stop gracefully, thresholds and pipelines change in place, other "
        "consumer changes restart that consumer; sections that need a restart are listed, not "
        "applied. A bad file changes nothing (422 with every problem).",
        auth=True,
        responses=(200, 401, 403, 413, 422, 500, 503),
        body=ReloadBody,
        notes=(
            (200, "Applied (or nothing changed): what was added, removed, changed, restarted"),
            (422, "The file is invalid: `problems` lists each (FILE: key: message)"),
            (500, "Applying failed part-way: `error` says why, the lists say what was applied"),
        ),
    ),
    Route(
        "POST",
        "/consumers",
        "define_consumer",
        "Define a consumer fleet-wide at runtime (or replace one defined so): the body is one "
        "consumer table as JSON, validated as a [[consumers]] table of the configuration file; "
        "it is stored in Redis and every instance runs it. A consumer of the configuration "
        "file with that id wins (409).",
        auth=True,
        responses=(200, 201, 401, 403, 409, 413, 422, 503),
        body=ConsumerDefinitionBody,
        bodies=((201, ConsumerDefinitionBody), (422, ProblemsBody)),
        notes=(
            (200, "Replaced the consumer defined at runtime with that id"),
            (201, "Defined: every live instance starts it"),
            (409, "The configuration file defines a consumer of that id (the file's wins)"),
            (422, "Invalid definition: `problems` lists each; nothing stored"),
        ),
        request_body="One consumer table: the keys of a [[consumers]] table (no processor).",
    ),
    Route(
        "DELETE",
        "/consumers/{consumer_id}",
        "remove_consumer",
        "Remove a consumer defined at runtime: every instance stops it gracefully (batch "
        "finished, offsets committed, open window kept in Redis).",
        auth=True,
        responses=(200, 401, 403, 404, 409, 503),
        body=ConsumerDefinitionBody,
        notes=(
            (404, "No consumer of that id is defined at runtime"),
            (409, "A consumer of the configuration file: remove it from the file and reload"),
        ),
    ),
    Route(
        "POST",
        "/consumers/{consumer_id}/seek",
        "seek",
        "Move the consumer's position on every partition (or `partitions`), fleet-wide: "
        "`to` is earliest, latest, an offset, an ISO 8601 time or a time ago (-2h). Events "
        "read again are counted again into new windows recorded as replays; events skipped "
        "are never counted; the open window is closed (`window`: close, its pipeline runs) "
        "or discarded. With `dry_run` the plan only (nothing changes; allowed read-only).",
        auth=True,
        responses=(200, 401, 403, 404, 413, 422, 503),
        body=SeekResult,
        notes=(
            (200, "Applied (`applied`: true), or the plan of a dry run"),
            (404, "Unknown consumer, or its topic does not exist"),
            (422, "A bad body: `to`, `window`, `partitions` or `dry_run`"),
            (503, "Kafka or Redis unreachable, the engine not running, or too many at once"),
        ),
        request_body='{"to": "earliest" | "latest" | OFFSET | TIME, "window": "close" | '
        '"discard" (default close), "partitions": [N, ...] (default all), "dry_run": false}',
    ),
    Route(
        "GET",
        "/consumers/{consumer_id}/events",
        "peek_events",
        "Events of a closed window (`window=N`, re-read from Kafka by its offset ranges) or "
        "the topic's newest (`window=tail`, the default), oldest first; payloads decoded per "
        "the consumer's format, secrets masked. Read by a consumer without a group: the "
        "consumer group is never disturbed.",
        auth=True,
        responses=(200, 400, 401, 403, 404, 410, 503),
        body=PeekBody,
        query=(
            {
                "name": "window",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "pattern": "^(tail|[1-9][0-9]*)$", "default": "tail"},
                "description": "A closed window's id, or `tail` for the topic's newest events.",
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": PEEK_MAX_LIMIT,
                    "default": PEEK_DEFAULT_LIMIT,
                },
                "description": "At most this many events.",
            },
        ),
        notes=(
            (403, "Peek disabled: no [api] token configured"),
            (404, "Unknown consumer, or the window is not closed yet or expired from history"),
            (410, "The window's events are no longer in the topic (retention)"),
            (503, "Kafka or Redis unreachable, or too many peeks at once (Retry-After)"),
        ),
    ),
    Route(
        "GET",
        "/consumers/{consumer_id}/dlq",
        "peek_dlq",
        "The newest records of the consumer's DLQ topic, oldest first, each with its "
        "`__connect.errors.*` headers as `error`; secrets masked.",
        auth=True,
        responses=(200, 400, 401, 403, 404, 503),
        body=PeekBody,
        query=(
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": PEEK_MAX_LIMIT,
                    "default": PEEK_DEFAULT_LIMIT,
                },
                "description": "At most this many records.",
            },
        ),
        notes=(
            (403, "Peek disabled: no [api] token configured"),
            (404, "Unknown consumer, or its DLQ topic does not exist (nothing dead-lettered)"),
            (503, "Kafka or Redis unreachable, or too many peeks at once (Retry-After)"),
        ),
    ),
)

_STATUS_TEXT = {
    200: "OK",
    400: "Bad query parameter",
    401: "Missing or wrong bearer token",
    403: "Control endpoints disabled (no [api] token configured, or read-only mode)",
    404: "Unknown consumer",
    201: "Created",
    409: "Conflict",
    410: "Gone",
    413: "Request body too large",
    422: "Invalid configuration",
    500: "Internal error",
    503: "Not ready, or Redis unreachable",
}


def openapi_document(routes: Iterable[Route] = ROUTES) -> dict[str, Any]:
    """An OpenAPI 3.1 description of every route, its bodies' schemas generated from the
    models the handlers answer with (:mod:`kafkaconsole.engine.fleet_status`)."""
    error = {"$ref": "#/components/schemas/ErrorBody"}
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"operationId": r.name, "summary": r.summary, "responses": {}}
        parameters: list[dict[str, Any]] = []
        if "{consumer_id}" in r.path:
            parameters.append(
                {
                    "name": "consumer_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "A consumer_id of the configuration.",
                }
            )
        parameters += list(r.query)
        if parameters:
            op["parameters"] = parameters
        if r.auth:
            op["security"] = [{"bearerAuth": []}]
        body = {"$ref": f"#/components/schemas/{r.body.__name__}"} if r.body else None
        for code in r.responses:
            if code == 200 and r.produces != "application/json":
                content = {r.produces: {"schema": {"type": "string"}}}
            elif (
                code == 200
                or (code == 503 and r.name == "ready")
                or (r.name == "reload" and code in (422, 500))
            ):
                content = {"application/json": {"schema": body or {"type": "object"}}}
            else:
                content = {"application/json": {"schema": error}}
            if code in dict(r.bodies):
                ref = {"$ref": f"#/components/schemas/{dict(r.bodies)[code].__name__}"}
                content = {"application/json": {"schema": ref}}
            description = dict(r.notes).get(code, _STATUS_TEXT[code])
            op["responses"][str(code)] = {"description": description, "content": content}
        if r.request_body is not None:
            op["requestBody"] = {
                "required": True,
                "description": r.request_body,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kafkaconsole",
            "version": API_VERSION,
            "description": "Status and control of a kafkaconsole fleet.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": json_schemas(),
        },
    }


class ApiServer:
    """The aiohttp server; awaiting the instance itself (``await server()``) closes it."""

    def __init__(self, engine: Engine, config: AppConfig) -> None:
        self.engine = engine
        self.config = config
        # reads take a small pool of their own: API load never takes the counting path's
        # connections (nor waits behind them)
        self.redis = reader_redis_client(config.redis)
        self._fleet = Fleet(self.redis, config)
        self._fleet_of = engine.config
        self.metrics = ApiMetrics(engine)
        self._in_flight = 0
        self._metrics_cache: tuple[float, list[Metric]] | None = None
        self._metrics_render: asyncio.Task[list[Metric]] | None = None
        self.host = config.api.host
        self.port = config.api.port
        self._runner: web.AppRunner | None = None
        self._token = (config.api.token or "").encode()
        self._peeks = EventPeek(config, self.redis)
        self._peeks_of = engine.config
        self._peeks_in_flight = 0
        self.app = self._build_app()

    @property
    def fleet(self) -> Fleet:
        """The fleet as the engine's configuration defines it (a reload changes its consumers;
        the sections the API runs with, [api] and [redis], apply only at a restart)."""
        if self.engine.config is not self._fleet_of:
            self._fleet_of = self.engine.config
            self._fleet = Fleet(self.redis, self.engine.config)
        return self._fleet

    @property
    def peeks(self) -> EventPeek:
        """Peeks at the consumers the engine runs now (a reload, the consumers defined at
        runtime), as :attr:`fleet` follows them."""
        if self.engine.config is not self._peeks_of:
            self._peeks_of = self.engine.config
            self._peeks = EventPeek(self.engine.config, self.redis)
        return self._peeks

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---- lifecycle ---------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=CLIENT_MAX_SIZE, middlewares=[self._limit, self._errors]
        )
        app.on_response_prepare.append(_security_headers)
        handlers: dict[str, Handler] = {
            "health": self.health,
            "ready": self.ready,
            "consumers": self.consumers,
            "consumer_info": self.consumer_info,
            "instances": self.instances,
            "metrics": self.metrics_text,
            "openapi": self.openapi,
            "pause": self._control(self._pause),
            "resume": self._control(self._resume),
            "reset": self._control(self._reset),
            "trigger": self._control(self._trigger),
            "reload": self.reload,
            "define_consumer": self.define_consumer,
            "remove_consumer": self.remove_consumer,
            "seek": self.seek,
            "peek_events": self._peek(self._peek_events),
            "peek_dlq": self._peek(self._peek_dlq),
        }
        for r in ROUTES:
            app.router.add_route(r.method, r.path, handlers[r.name], name=r.name)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ApiBindError(
                f"the HTTP API cannot listen on {self.host}:{self.port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}"
            ) from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logging.getLogger("aiohttp.server").addFilter(_BAD_REQUEST_LINE)
        addresses = runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        self.engine.subscribe_runs(self.metrics.on_run)
        log.info("HTTP API listening on %s", self.url)
        if not self._token and not _is_loopback(self.host):
            log.warning(
                "HTTP API bound to %s without [api] token: status is readable by anyone who "
                "reaches it (control endpoints stay disabled)",
                self.host,
            )

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("HTTP API stopped")
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    async def __call__(self) -> None:
        await self.close()

    # ---- plumbing ----------------------------------------------------------------------------
    @web.middleware
    async def _limit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """At most MAX_CONCURRENT_REQUESTS at once (``/health`` aside): a burst beyond that is
        answered 503 with Retry-After at once, never queued on the engine's loop; a consumer
        id longer than any valid one is a 404 without further work."""
        cid = request.match_info.get("consumer_id")
        if cid is not None and len(cid) > MAX_CONSUMER_ID_LENGTH:
            return _error(
                404, f"unknown consumer (ids are at most {MAX_CONSUMER_ID_LENGTH} characters)"
            )
        if request.path == "/health":
            return await handler(request)
        if self._in_flight >= MAX_CONCURRENT_REQUESTS:
            resp = _error(503, f"busy: {MAX_CONCURRENT_REQUESTS} requests in flight, retry shortly")
            resp.headers["Retry-After"] = "1"
            return resp
        self._in_flight += 1
        try:
            return await handler(request)
        finally:
            self._in_flight -= 1

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error as JSON ``{"error": ...}``; never a traceback or a secret."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.content_type == "application/json":
                raise
            headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
            return web.json_response(
                {"error": exc.reason.lower()}, status=exc.status, headers=headers
            )
        except ControlError as exc:
            return _error(exc.http_status, str(exc))
        except (RedisError, OSError) as exc:
            return _error(503, f"Redis unreachable: {mask_text(str(exc), self.config)}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("API %s %s failed: %s", request.method, request.path, exc)
            return _error(500, "internal error (see the instance's log)")

    def _authorize(
        self, request: web.Request, what: str = "control endpoints are"
    ) -> web.Response | None:
        if not self._token:
            return _error(403, f"{what} disabled: set [api] token to enable them")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token
        ):
            log.warning(
                "API %s %s refused: missing or wrong bearer token (from %s)",
                request.method,
                request.path,
                request.remote,
            )
            resp = _error(401, "missing or wrong bearer token")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="kafkaconsole"'
            return resp
        return None

    def _control(self, action: Callable[[str, web.Request], Awaitable[dict[str, Any]]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            denied = self._authorize(request)
            if denied is not None:
                return denied
            if self.config.ui.read_only:  # before the id is looked up: 403 for any id
                raise ReadOnlyError(request.path.rsplit("/", 1)[-1])
            too_large = await _ignored_body(request)
            if too_large is not None:
                return too_large
            cid = request.match_info["consumer_id"]
            self.fleet.consumer_cfg(cid)  # 404 for an unknown id
            if not self.engine.started or self.engine.stopping:
                return _error(503, "the engine is not running (starting or stopping)")
            body = await action(cid, request)
            log.info("API %s %s from %s", request.path.rsplit("/", 1)[-1], cid, request.remote)
            result = ControlResult(consumer_id=cid, **body)
            return web.json_response(result.model_dump(exclude_unset=True))

        return handler

    # ---- control -----------------------------------------------------------------------------
    # The audit trail names an API caller by the bearer token it proved and its address.
    async def _pause(self, cid: str, request: web.Request) -> dict[str, Any]:
        await self.engine.pause(
            cid, by=f"api ({request.remote})", via="api", user=_api_user(request)
        )
        return {"action": "pause", "paused": True}

    async def _resume(self, cid: str, request: web.Request) -> dict[str, Any]:
        await self.engine.resume(cid, via="api", user=_api_user(request))
        return {"action": "resume", "paused": False}

    async def _reset(self, cid: str, request: web.Request) -> dict[str, Any]:
        res = await self.engine.reset(cid, via="api", user=_api_user(request))
        return {"action": "reset", "window_id": res.window_id, "discarded": res.discarded}

    async def _trigger(self, cid: str, request: web.Request) -> dict[str, Any]:
        res = await self.engine.force_trigger(cid, via="api", user=_api_user(request))
        return {
            "action": "trigger",
            "status": res.status,
            "reason": "manual",
            "window_id": res.window_id,
            "count": res.count,
        }

    async def reload(self, request: web.Request) -> web.StreamResponse:
        """``POST /reload``: this instance reads its own configuration file again."""
        denied = self._authorize(request)
        if denied is not None:
            return denied
        if self.config.ui.read_only:
            return _error(
                403, "read-only mode ([ui] read_only = true or --read-only): reload is refused"
            )
        too_large = await _ignored_body(request)
        if too_large is not None:
            return too_large
        if not self.engine.started or self.engine.stopping:
            return _error(503, "the engine is not running (starting or stopping)")
        result = await self.engine.reload(via="api", user=_api_user(request))
        log.info("API reload from %s: %s", request.remote, result.status)
        status = 200 if result.ok else 422 if result.status == ReloadStatus.INVALID else 500
        return web.json_response(ReloadBody(**result.to_json_dict()).model_dump(), status=status)

    async def seek(self, request: web.Request) -> web.StreamResponse:
        """``POST /consumers/{id}/seek``: move the consumer's position (or plan it)."""
        denied = self._authorize(request)
        if denied is not None:
            return denied
        cid = request.match_info["consumer_id"]
        try:
            raw = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError as exc:
            return _error(422, f"request body: not JSON: {exc}")
        if not isinstance(raw, dict):
            return _error(422, "request body: a JSON object is expected")
        unknown = sorted(set(raw) - {"to", "window", "partitions", "dry_run"})
        if unknown:
            return _error(422, f"request body: unknown key(s) {', '.join(unknown)}")
        to, window = raw.get("to"), raw.get("window", "close")
        partitions, dry_run = raw.get("partitions"), raw.get("dry_run", False)
        if not isinstance(to, str | int) or isinstance(to, bool):
            return _error(422, f"to: expected {SEEK_TARGET_HELP}")
        if not isinstance(dry_run, bool):
            return _error(422, "dry_run: expected true or false")
        if partitions is not None and not (
            isinstance(partitions, list)
            and partitions
            and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in partitions)
        ):
            return _error(422, "partitions: expected a list of partition numbers")
        if not isinstance(window, str):
            return _error(422, "window: expected close or discard")
        self.fleet.consumer_cfg(cid)  # 404 for an unknown id
        target, how = parse_seek_target(str(to)), parse_seek_window(window)
        if not dry_run and self.config.ui.read_only:
            raise ReadOnlyError("seek")
        if not self.engine.started or self.engine.stopping:
            return _error(503, "the engine is not running (starting or stopping)")
        if self._peeks_in_flight >= MAX_CONCURRENT_PEEKS:  # both read Kafka with a reader
            resp = _error(503, f"busy: {MAX_CONCURRENT_PEEKS} Kafka reads in flight, retry shortly")
            resp.headers["Retry-After"] = "1"
            return resp
        self._peeks_in_flight += 1
        try:
            if dry_run:
                plan = await plan_seek(
                    self.engine.config, self.redis, cid, target, window=how, partitions=partitions
                )
                result = SeekResult.dry_run(plan)
            else:
                result = await self.engine.seek(
                    cid,
                    str(to),
                    window=how,
                    partitions=partitions,
                    via="api",
                    user=_api_user(request),
                )
                log.info("API seek %s from %s: %s", cid, request.remote, result.detail())
        finally:
            self._peeks_in_flight -= 1
        return web.json_response(result.to_json())

    # ---- consumers defined at runtime ---------------------------------------------------------
    def _may_define(self, request: web.Request, what: str) -> web.Response | None:
        denied = self._authorize(request)
        if denied is not None:
            return denied
        if self.config.ui.read_only:
            raise ReadOnlyError(what)
        if not self.engine.started or self.engine.stopping:
            return _error(503, "the engine is not running (starting or stopping)")
        return None

    async def define_consumer(self, request: web.Request) -> web.StreamResponse:
        """``POST /consumers``: store a consumer definition; every instance runs it."""
        denied = self._may_define(request, "define a consumer")
        if denied is not None:
            return denied
        try:
            raw = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            problem = f"request: (json): {exc}"
            return _error(422, "invalid consumer definition", problems=[problem])
        try:
            defined = await define_consumer(
                self.redis,
                self.engine.file_config,
                raw,
                source="request",
                via="api",
                user=_api_user(request),
                instance=self.engine.instance_id,
                audit=self.engine.audit,
            )
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
            return _error(422, "invalid consumer definition", problems=problems)
        cid = defined.consumer.consumer_id
        status = "created" if defined.created else "replaced"
        log.info("API consumer %s %s from %s", cid, status, request.remote)
        body = ConsumerDefinitionBody(
            consumer_id=cid,
            status=status,
            request_id=defined.request_id,
            definition=defined.consumer.model_dump(mode="json", exclude_unset=True),
        )
        return web.json_response(body.model_dump(), status=201 if defined.created else 200)

    async def remove_consumer(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /consumers/{consumer_id}``: every instance stops it gracefully."""
        denied = self._may_define(request, "remove a consumer")
        if denied is not None:
            return denied
        too_large = await _ignored_body(request)
        if too_large is not None:
            return too_large
        cid = request.match_info["consumer_id"]
        request_id = await undefine_consumer(
            self.redis,
            self.engine.file_config,
            cid,
            via="api",
            user=_api_user(request),
            instance=self.engine.instance_id,
            audit=self.engine.audit,
        )
        log.info("API consumer %s removed from %s", cid, request.remote)
        body = ConsumerDefinitionBody(consumer_id=cid, status="removed", request_id=request_id)
        return web.json_response(body.model_dump())

    # ---- peek: events behind a window, the topic's newest, the DLQ ------------------------------
    # Payloads may hold personal data: the bearer token guards them as it guards control.
    def _peek(self, read: Callable[[str, web.Request, int], Awaitable[PeekBody]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            denied = self._authorize(request, "peeking at events is")
            if denied is not None:
                return denied
            cid = request.match_info["consumer_id"]
            self.fleet.consumer_cfg(cid)  # 404 for an unknown id
            raw_limit = request.query.get("limit", str(PEEK_DEFAULT_LIMIT))
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= PEEK_MAX_LIMIT:
                return _error(400, f"limit must be an integer from 1 to {PEEK_MAX_LIMIT}")
            if self._peeks_in_flight >= MAX_CONCURRENT_PEEKS:
                resp = _error(503, f"busy: {MAX_CONCURRENT_PEEKS} peeks in flight, retry shortly")
                resp.headers["Retry-After"] = "1"
                return resp
            self._peeks_in_flight += 1
            try:
                body = await read(cid, request, int(raw_limit))
            finally:
                self._peeks_in_flight -= 1
            return web.json_response(body.to_json())

        return handler

    async def _peek_events(self, cid: str, request: web.Request, limit: int) -> PeekBody:
        window = request.query.get("window", "tail")
        if window == "tail":
            return await self.peeks.tail(cid, limit)
        if not window.isdigit() or int(window) < 1:
            raise PeekError(f"window must be a window id (1, 2, ...) or tail, not {window!r}")
        return await self.peeks.window(cid, int(window), limit)

    async def _peek_dlq(self, cid: str, request: web.Request, limit: int) -> PeekBody:
        return await self.peeks.dlq(cid, limit)

    # ---- reads -------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.StreamResponse:
        body = HealthBody(
            status="ok",
            instance_id=self.engine.instance_id,
            uptime_s=round(time.time() - self.engine.started_at_ms / 1000, 1),
        )
        return web.json_response(body.to_json())

    async def ready(self, request: web.Request) -> web.StreamResponse:
        snap = self.engine.snapshot()
        reasons = []
        running = self.engine.started and not self.engine.stopping
        waiting = self.engine.waiting_for
        if waiting is not None:
            reasons.append(f"waiting for {mask_text(waiting, self.config)} (retrying)")
        elif not running:
            reasons.append("engine is not running")
        if not snap.kafka_ok:
            reasons.append(f"Kafka unreachable: no broker answered for {KAFKA_SILENCE_S:g} s")
        failed = None
        try:
            await asyncio.wait_for(self.redis.ping(), 1.0)
            redis_ok = snap.redis_ok
            if (problem := self.engine.redis_problem) is not None:
                redis_ok = False  # (newer than the snapshot)
                reasons.append(f"Redis unreachable: {problem}")
        except (RedisError, OSError, TimeoutError) as exc:
            redis_ok = False
            failed = str(exc) or "timeout"
        # pool exhaustion: commands failed waiting for a connection (the engine's own pools,
        # read now, and this API's); a reason several pools share (Redis Sentinel: no
        # primary) is given once, and stands for the ping's failure when it is the same
        exhausted = [*self.engine.redis_pool_exhausted(), pool_exhausted(self.redis)]
        pools = [reason for reason in dict.fromkeys(exhausted) if reason]
        if failed is not None and failed not in pools:
            reasons.append(f"Redis unreachable: {mask_text(failed, self.config)}")
        if not redis_ok and failed not in pools and not any(r.startswith("Redis") for r in reasons):
            reasons.append("Redis unreachable")
        reasons += [f"{failure} (restarted)" for failure in snap.task_failures]
        reasons += [mask_text(r, self.config) for r in pools]
        body = ReadyBody(
            ready=not reasons,
            # degraded: running, but a broker or Redis does not answer, or a Redis connection
            # pool is exhausted (it resumes by itself)
            status="ready"
            if not reasons
            else ("degraded" if running else "waiting" if waiting else "not running"),
            instance_id=self.engine.instance_id,
            kafka=snap.kafka_ok,
            redis=redis_ok,
            reasons=reasons,
            # not a reason to be unready: the other brokers serve the partitions
            warnings=[f"Kafka {broker} missing from the cluster" for broker in snap.kafka_missing],
        )
        return web.json_response(body.to_json(), status=200 if not reasons else 503)

    async def consumers(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"consumers": await self.fleet.consumers()})

    async def consumer_info(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["consumer_id"]
        return web.json_response(await self.fleet.info(cid))

    async def instances(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"instances": await self.fleet.instance_summaries()})

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        body, headers = exposition(
            await self._metrics_families(),
            accept=request.headers.get("Accept", ""),
            accept_encoding=request.headers.get("Accept-Encoding", ""),
            names=request.query.getall("name[]", []),
        )
        return web.Response(body=body, headers=headers)

    async def _metrics_families(self) -> list[Metric]:
        """The metric families, gathered at most once per METRICS_MAX_AGE_S: concurrent scrapes
        share one gathering (one fleet read), whatever their number or format."""
        cached = self._metrics_cache
        if cached is not None and time.monotonic() - cached[0] < METRICS_MAX_AGE_S:
            return cached[1]
        task = self._metrics_render
        if task is None or task.done():
            task = asyncio.ensure_future(self.metrics.gather(self.fleet))
            self._metrics_render = task
        body = await asyncio.shield(task)
        self._metrics_cache = (time.monotonic(), body)
        return body

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(openapi_document())


def _api_user(request: web.Request) -> str:
    return f"api-token@{request.remote}"


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """No caching of status or config, no content sniffing, no framing."""
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")


class _BadRequestLine(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line over 8 KiB, say) with a full
    traceback at ERROR; the client got its 400 already. One warning line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            first = str(exc.message).splitlines()[0] if exc.message else type(exc).__name__
            record.msg = "API refused a malformed request (%s %s): %s"
            record.args = (exc.code, type(exc).__name__, first[:200])
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_BAD_REQUEST_LINE = _BadRequestLine()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_api(engine: Engine, config: AppConfig | None = None) -> ApiServer:
    """Serve the HTTP API for ``engine`` on ``[api] host:port``; returns the async closer.

    The returned :class:`ApiServer` is awaitable-callable (``await closer()`` stops it) and
    knows the bound ``port``/``url`` (port 0 picks a free one). Usable as a headless extra.
    """
    server = ApiServer(engine, config or engine.config)
    await server.start()
    return server
