"""The engine: every configured consumer, its timer and dispatcher, control and status.

One :class:`Engine` runs in one asyncio loop: ``asyncio.run`` in headless mode, a Textual
worker in the TUI. It exposes the seam every face uses: ``start``/``stop``, ``pause``/
``resume``, ``reset``, ``force_trigger``, ``reload`` (a changed config file, applied live)
and status snapshots (published to listeners and, as a heartbeat with a TTL, to Redis for the
CLI and the rest of the fleet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from kafkaconsole.config.errors import ConfigError
from kafkaconsole.config.loader import load_config
from kafkaconsole.config.models import AppConfig, ConsumerConfig, RetryPolicy
from kafkaconsole.config.secrets import mask_text, masker
from kafkaconsole.engine.audit import AuditLog
from kafkaconsole.engine.batch_reader import WindowEventReader
from kafkaconsole.engine.clients import (
    API_REDIS_CONNECTIONS,
    DEDICATED_REDIS_CONNECTIONS,
    MONITOR_REDIS_CONNECTIONS,
    check_redis_access,
    check_redis_capacity,
    dedicated_redis_client,
    engine_redis_client,
    kafka_kwargs,
    pool_exhausted,
    reader_redis_client,
    security_warnings,
)
from kafkaconsole.engine.consumer import ConsumerRunner, freeze_settled_heap
from kafkaconsole.engine.control import FleetControl, actor
from kafkaconsole.engine.counting import (
    ApplyResult,
    CloseResult,
    ResetResult,
    WindowCounter,
)
from kafkaconsole.engine.dispatch import DispatchWaker, LeaseRenewer, TriggerDispatcher
from kafkaconsole.engine.dlq import DLQ_MAX_RECORD_BYTES, DeadLetterSink
from kafkaconsole.engine.errors import ControlError, ReadOnlyError, UnknownConsumerError
from kafkaconsole.engine.faults import fault_hook_from_env
from kafkaconsole.engine.fleet import YIELD_EVERY, Fleet, publish_heartbeat, withdraw_heartbeat
from kafkaconsole.engine.health import consumer_time_lag
from kafkaconsole.engine.keys import ConsumerKeys, FleetKeys, tagged_layout
from kafkaconsole.engine.monitor import AlertListener, HealthMonitor
from kafkaconsole.engine.pipelines import build_pipeline
from kafkaconsole.engine.pipelines.base import Pipeline
from kafkaconsole.engine.processing import ProcessorRunner
from kafkaconsole.engine.records import (
    HistoryEntry,
    RunResult,
    RunStatus,
    TriggerRecord,
    stored_run,
)
from kafkaconsole.engine.redis_sentinel import NoPrimary
from kafkaconsole.engine.reload import (
    RESTART_SECTIONS,
    ConsumerChange,
    ReloadResult,
    ReloadStatus,
    plan_reload,
    store_result,
)
from kafkaconsole.engine.retry import backoff_delay, retry_call
from kafkaconsole.engine.runtime_consumers import (
    APPLY_ACTION,
    RuntimeConsumers,
    RuntimeMerge,
    merge_runtime,
)
from kafkaconsole.engine.seek import SeekResult
from kafkaconsole.engine.state_format import ensure_state_format
from kafkaconsole.engine.status import (
    ConsumerSnapshot,
    ConsumerState,
    InstanceSnapshot,
    TriggerSummary,
    consumer_lag,
    instance_state,
)
from kafkaconsole.engine.timer import ClosingThread, WindowTimer

log = logging.getLogger("kafkaconsole.engine")
trigger_log = logging.getLogger("kafkaconsole.trigger")


def log_fields(
    event: str,
    consumer_id: str | None = None,
    window_id: int | None = None,
    pipeline: str | None = None,
) -> dict[str, Any]:
    """``extra=`` of a log record: the structured fields JSON log lines carry."""
    return {
        "event": event,
        "consumer_id": consumer_id,
        "window_id": window_id,
        "pipeline": pipeline,
    }


HEARTBEAT_TTL_S = 5
#: The status loop reads at most about this many consumers' shared state a second.
SHARED_READS_PER_S = 250
# a run in these states may still change: its summary is read again at every shared read
UNFINISHED_RUN = frozenset({"pending", "queued", "running"})
# a consumer in these states has started: its client and connections are built
SETTLED_STATES = frozenset({ConsumerState.RUNNING, ConsumerState.PAUSED})
#: Seconds between the instance's own looks at the cluster's brokers (metadata)
METADATA_REFRESH_S = 10.0


#: An idle dispatcher looks at its stream at least this often (the dispatch wake-up wakes it).
IDLE_DISPATCH_POLL_S = 30.0


class DependencyUnreachable(ConnectionError):
    """Redis or the brokers did not answer (at start: waited for, see Engine.start)."""


class InstanceIdInUse(RuntimeError):
    """Another running instance publishes its heartbeat under this instance's id: two of
    them would hold each other's dispatch leases and both run the same windows' pipelines."""


#: Restarting a background task that failed: 0.5 s doubling to 30 s between restarts.
RESTART_POLICY = RetryPolicy(max_attempts=1, initial_backoff=0.5, max_backoff=30.0, jitter=True)
#: The control listener while Redis does not answer: 0.5 s doubling to 2 s (pause flags are
#: polled at least that often, so every instance applies a change within a few seconds).
CONTROL_POLICY = RetryPolicy(max_attempts=1, initial_backoff=0.5, max_backoff=2.0, jitter=False)
#: Waiting for Redis and the brokers at start: 0.2 s doubling to 2 s between attempts (a try
#: costs little; counting starts within about 2 s of both answering).
CONNECT_POLICY = RetryPolicy(max_attempts=1, initial_backoff=0.2, max_backoff=2.0, jitter=True)


class _BootstrapErrors(logging.Filter):
    """Drops aiokafka's "Unable connect to" lines while the engine waits for the brokers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unable connect to")


@contextlib.contextmanager
def _quiet_bootstrap_errors() -> Iterator[None]:
    logger, quiet = logging.getLogger("aiokafka"), _BootstrapErrors()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


#: The engines of this process (an embedding program may run several): their default ids
#: must differ, or two of them would hold each other's dispatch leases and both dispatch.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def default_instance_id(taken: Iterable[str] = ()) -> str:
    """``hostname-pid``; ``hostname-pid-2`` (and on) when ``taken`` holds it already."""
    base = f"{socket.gethostname()}-{os.getpid()}"
    used = set(taken)
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


@dataclass
class _SharedState:
    """What Redis says about a consumer (fleet-wide), refreshed by the status loop."""

    count: int = 0
    window_id: int = 1
    opened_at_ms: int | None = None
    total: int = 0
    errors: int = 0
    last_trigger: TriggerSummary | None = None
    paused: bool = False
    # the window id when the history was last read (only a close adds to it, and a close
    # moves the window id): the newest entry is read again only when that id moves
    history_read_for: int | None = None


@dataclass
class _Consumer:
    cfg: ConsumerConfig
    keys: ConsumerKeys
    counter: WindowCounter
    runner: ConsumerRunner
    timer: WindowTimer
    dispatcher: TriggerDispatcher
    shared: _SharedState = field(default_factory=_SharedState)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    #: set to stop this consumer alone (a reload removing or restarting it); the engine's stop
    #: sets it too
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class Engine:
    """Runs every consumer of a config in this process."""

    def __init__(
        self,
        config: AppConfig,
        *,
        instance_id: str | None = None,
        lease_ms: int | None = None,
        snapshot_interval: float = 1.0,
        redis: Redis | None = None,
    ) -> None:
        self.config = config
        # the configuration as given (its file's consumers); self.config adds the consumers
        # defined at runtime (kafkaconsole.engine.runtime_consumers)
        self._file_config = config
        #: consumers of self.config defined at runtime, and runtime definitions the file overrides
        self.runtime_consumer_ids: frozenset[str] = frozenset()
        self.runtime_clashes: tuple[str, ...] = ()
        self._runtime_defs: dict[str, Any] = {}
        self.instance_id: str = instance_id or default_instance_id(e.instance_id for e in _ENGINES)
        _ENGINES.add(self)
        self.lease_ms = lease_ms or config.redis.dispatch_lease_ms
        self.snapshot_interval = snapshot_interval
        #: the status loop reads the shared state (counts, windows, last trigger; this
        #: instance's own counting updates them at once) every snapshot, or so that it reads at
        #: most about SHARED_READS_PER_S consumers a second (2 s with 500 consumers)
        self.shared_read_s = max(snapshot_interval, len(config.consumers) / SHARED_READS_PER_S)
        self.prefix = config.redis.key_prefix
        self.tagged = tagged_layout(config.redis)
        self.fleet_keys = FleetKeys(self.prefix, self.tagged)
        # one bounded pool for counting, timers and dispatch; dedicated connections beside it
        # (control subscription, dispatch wake-up, health monitor): README "Redis connections"
        self.redis: Redis = redis or engine_redis_client(config.redis)
        # the time triggers due together are closed together (one pipeline per loop turn), on
        # a connection of their own: never queued behind dispatch work in the pool
        self.time_closer = ClosingThread(partial(dedicated_redis_client, config.redis))
        self.control = FleetControl(self.redis, self.prefix, self.tagged)
        self.audit = AuditLog(self.redis, self.prefix, mask=masker(config), tagged=self.tagged)
        # every dispatcher's lease renewed in one pipeline (not a round trip per consumer)
        self.lease_renewer = LeaseRenewer(self.redis, self.instance_id, self.lease_ms)
        self._fleet: Fleet | None = None
        self.started_at_ms = int(time.time() * 1000)
        self._brokers_seen: dict[int, str] = {}  # every broker seen in the cluster metadata
        self._kafka_missing: tuple[str, ...] = ()
        self._metadata_refreshed = 0.0
        self._stop = asyncio.Event()
        self._consumers: dict[str, _Consumer] = {}
        self._pipelines: dict[str, Pipeline] = {}
        # pipelines a reload replaced: a run may still hold one; closed when the engine stops
        self._retired_pipelines: list[Pipeline] = []
        self._dlq: DeadLetterSink | None = None
        self._reload_lock = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task[Any]] = set()
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._listeners: list[Callable[[InstanceSnapshot], None]] = []
        self._run_listeners: list[Callable[[TriggerRecord, RunResult], None]] = []
        self._snapshot: InstanceSnapshot | None = None
        self._snapshot_built = -math.inf  # monotonic
        self._heap_settled = False  # every consumer started once (consumer.freeze_settled_heap)
        self._redis_ok = False
        #: why the status loop's last Redis read failed (None: it succeeded); read live by
        #: ``/ready``: on a Redis Cluster one slot can be down while a PING is answered
        self.redis_problem: str | None = None
        self._last_heartbeat = 0.0
        self._fault = fault_hook_from_env()
        self._mask = masker(config)  # what the engine writes to Redis never holds a secret
        # health verdicts and alerts over the fleet view ([monitoring]; kafkaconsole.engine.health)
        self.monitor: HealthMonitor | None = None
        self._monitor_redis: Redis | None = None
        self.dispatch_waker = DispatchWaker(
            config.redis, self._dispatchers, hold=self.time_closer.wait_quiet
        )
        if config.monitoring.enabled:
            self._monitor_redis = reader_redis_client(
                config.redis, MONITOR_REDIS_CONNECTIONS, "health monitor's"
            )
            self.monitor = HealthMonitor(self._monitor_redis, config, self.instance_id)
        self.started = False
        self.waiting_for: str | None = None  # while start() waits: what does not answer
        # background task failures (each logged and restarted): name -> (text, epoch seconds)
        self.task_failures: dict[str, tuple[str, float]] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self, wait_timeout: float | None = None) -> None:
        """Connect, build every consumer and start its tasks.

        Redis or the brokers not answering yet is waited for (backoff, the reason in the log
        and in :attr:`waiting_for`), for at most ``wait_timeout`` seconds (None: until they
        answer or a stop is requested; 0: one attempt); then :class:`DependencyUnreachable`
        is raised. Other failures (a refused login, a missing ACL permission) raise at once.
        """
        for warning in security_warnings(self.config):
            log.warning("insecure setting: %s", warning)
        await self._connect(wait_timeout)
        await self._check_instance_id()
        merge = merge_runtime(self._file_config, await self._runtime_definitions())
        self._adopt(merge.config)
        self._adopt_runtime(merge)
        await self._ensure_dlq_topics()
        for name, pcfg in self.config.pipelines.items():
            if any(c.pipeline_name == name for c in self.config.consumers):
                pipeline = build_pipeline(name, pcfg, kafka=self.config.kafka)
                await pipeline.start()
                self._pipelines[name] = pipeline
        self._dlq = DeadLetterSink(
            self._producer, task_id=self.instance_id, renew=self._start_producer
        )
        for cfg in self.config.consumers:
            self._consumers[cfg.consumer_id] = self._build_consumer(cfg, self._dlq)
        await self._load_pause_flags()
        self.time_closer.start()  # before any timer: they hand their closes to it
        for c in self._consumers.values():
            self._start_consumer(c)
        self._tasks.append(
            asyncio.create_task(self._guard(self._status_loop, "status loop"), name="status")
        )
        self._tasks.append(
            asyncio.create_task(
                self._guard(self._control_listener, "control listener"), name="control"
            )
        )
        self._tasks.append(
            asyncio.create_task(
                self._guard(partial(self.lease_renewer.run, self._stop), "lease renewer"),
                name="lease-renewer",
            )
        )
        self._tasks.append(
            asyncio.create_task(
                self._guard(partial(self.dispatch_waker.run, self._stop), "dispatch wake-up"),
                name="dispatch-wake",
            )
        )
        if self.monitor is not None:
            monitor = self.monitor
            self._tasks.append(
                asyncio.create_task(
                    self._guard(partial(monitor.run, self._stop), "health monitor"),
                    name="health",
                )
            )
        self.started = True
        log.info("engine %s started with %d consumer(s)", self.instance_id, len(self._consumers))

    def _start_consumer(self, c: _Consumer) -> None:
        """Start a built consumer's tasks: its runner, timer and dispatcher."""
        cid = c.cfg.consumer_id
        c.tasks = [
            asyncio.create_task(
                self._guard(partial(c.runner.run, c.stop), f"consumer {cid}", c.runner, c.stop),
                name=f"consume:{cid}",
            ),
            asyncio.create_task(
                self._guard(partial(c.timer.run, c.stop), f"timer {cid}", c.runner, c.stop),
                name=f"timer:{cid}",
            ),
            asyncio.create_task(
                self._guard(partial(c.dispatcher.run, c.stop), f"dispatch {cid}", c.runner, c.stop),
                name=f"dispatch:{cid}",
            ),
        ]

    async def _stop_consumer(self, consumer_id: str, timeout: float = 10.0) -> None:
        """Stop one consumer as the engine's stop does: the batch in hand finished, counts and
        offsets recorded, offsets committed; its open window stays in Redis."""
        c = self._consumers[consumer_id]
        c.stop.set()
        c.timer.wake()
        c.dispatcher.wake()
        if c.tasks:
            _done, pending = await asyncio.wait(c.tasks, timeout=timeout)
            for t in pending:
                log.warning("task %s did not stop within %.0fs; cancelling", t.get_name(), timeout)
                t.cancel()
            for t in pending:
                with contextlib.suppress(BaseException):
                    await t
        del self._consumers[consumer_id]

    async def _check_instance_id(self) -> None:
        """Refuse to start under the id of a running instance (:class:`InstanceIdInUse`).

        A heartbeat under this id may also be what a crashed instance of the same id left
        (a stopped one withdraws its own): it is watched until it expires (at most
        :data:`HEARTBEAT_TTL_S`); renewed meanwhile, a live instance writes it."""
        key = self.fleet_keys.instance(self.instance_id)
        last = int(await self.redis.pttl(key))
        if last < 0:
            return  # none (-2), or not ours to judge (-1: no expiry)
        log.info(
            "a heartbeat of instance id %s is in Redis: waiting (at most %d s) to see whether "
            "it is a running instance's or one a crash left",
            self.instance_id,
            HEARTBEAT_TTL_S,
        )
        until = time.monotonic() + HEARTBEAT_TTL_S + 1
        while time.monotonic() < until and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.25)
            now = int(await self.redis.pttl(key))
            if now < 0:
                return
            if now > last + 100:  # renewed
                raise InstanceIdInUse(
                    f"instance id {self.instance_id!r} is in use: another running instance "
                    "publishes its heartbeat under it; give each instance its own id "
                    "(--instance-id, KAFKACONSOLE_INSTANCE_ID)"
                )
            last = now

    async def _connect(self, wait_timeout: float | None) -> None:
        """Reach Redis and the brokers, waiting for them under :data:`CONNECT_POLICY`."""
        noted: list[str] = []

        def on_error(attempt: int, exc: BaseException) -> None:
            reason = str(exc)
            self.waiting_for = reason
            if (not noted or noted[-1] != reason) and wait_timeout != 0:
                noted.append(reason)
                limit = "" if wait_timeout is None else f" (at most {wait_timeout:g}s)"
                log.warning("waiting for %s; retrying with backoff%s", reason, limit)

        try:
            await retry_call(
                self._connect_once,
                CONNECT_POLICY,
                retry_on=(DependencyUnreachable,),
                what="connecting to Redis and Kafka",
                attempts=0,
                stop=self._stop,
                give_up_after=wait_timeout,
                on_error=on_error,
                logger=log,
                give_up_level=logging.DEBUG,  # the caller reports it (headless: one line)
            )
        finally:
            self.waiting_for = None
        if noted:
            log.info("Redis and Kafka answer: starting")

    async def _connect_once(self) -> None:
        try:
            await self.redis.ping()
        except (AuthenticationError, AuthorizationError):
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            where = mask_text(self.config.redis.url, self.config)
            text = mask_text(str(exc) or type(exc).__name__, self.config)
            # a missing primary names the service and its sentinels (the url's host is unused)
            raise DependencyUnreachable(
                text if isinstance(exc, NoPrimary) else f"Redis at {where}: {text}"
            ) from exc
        # an ACL user lacking a command the engine needs fails here, with one clear message
        await check_redis_access(self.redis, self.prefix)
        await check_redis_capacity(self.redis, self.redis_connections_needed())
        checked = await ensure_state_format(self.redis, self.prefix, tagged=self.tagged)
        for summary in checked.migrated:
            log.info("migrated the state in Redis: %s", summary)
        self._redis_ok = True
        try:
            self._producer = await self._start_producer()
        except (KafkaConnectionError, KafkaTimeoutError, OSError, TimeoutError) as exc:
            brokers = mask_text(self.config.kafka.bootstrap_servers, self.config)
            raise DependencyUnreachable(
                f"Kafka at {brokers}: {type(exc).__name__}: {mask_text(str(exc), self.config)}"
            ) from exc

    async def _start_producer(self) -> AIOKafkaProducer:
        """A started producer for the DLQ topics (at start, and to replace one that stopped
        delivering: kafkaconsole.engine.dlq)."""
        producer = AIOKafkaProducer(
            acks="all",
            linger_ms=5,
            max_request_size=DLQ_MAX_RECORD_BYTES + 16 * 1024,
            **kafka_kwargs(self.config.kafka),
        )
        try:
            # each failed attempt is ours to report (once per reason), not one line per try
            with _quiet_bootstrap_errors():
                await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    def redis_pool_exhausted(self) -> tuple[str, ...]:
        """Why a Redis pool of this engine counts as exhausted (empty: none is)."""
        clients = [self.redis] + ([self._monitor_redis] if self._monitor_redis else [])
        return tuple(reason for client in clients if (reason := pool_exhausted(client)))

    def redis_connections_needed(self) -> int:
        """The most Redis connections this instance holds: its pool and the dedicated ones
        (the HTTP API's only when it is enabled)."""
        api = 0 if self.config.api.enabled else API_REDIS_CONNECTIONS
        return self.config.redis.max_connections + DEDICATED_REDIS_CONNECTIONS - api

    def _dispatchers(self) -> list[TriggerDispatcher]:
        return [c.dispatcher for c in self._consumers.values()]

    def _build_consumer(self, cfg: ConsumerConfig, dlq: DeadLetterSink) -> _Consumer:
        keys = ConsumerKeys(self.prefix, cfg.consumer_id, self.tagged)
        counter = WindowCounter(
            self.redis,
            keys,
            max_event=cfg.max_event,
            history_limit=self.config.redis.history_limit,
        )
        # the callbacks find the consumer by id: they fire only once it is running
        cid = cfg.consumer_id
        runner = ConsumerRunner(
            cfg,
            self.config,
            counter,
            dlq,
            on_applied=partial(self._on_applied, cid),
            fault_hook=self._fault,
        )
        timer = WindowTimer(
            counter, cfg.max_time, partial(self._on_timer_closed, cid), closer=self.time_closer
        )
        loader = None
        if cfg.job_type == "batch":
            loader = WindowEventReader(
                self.config.kafka,
                runner.classifier,
                processors=ProcessorRunner(
                    runner.classifier,
                    cfg.processor,
                    cfg.processor_timeout,
                    f"{cfg.consumer_id} (batch)",
                )
                if cfg.processor
                else None,
            )
        dispatcher = TriggerDispatcher(
            self.redis,
            keys,
            cfg,
            self._pipelines[cfg.pipeline_name],
            self.config.retry_policy_for(cfg),
            self.instance_id,
            lease_ms=self.lease_ms,
            history_limit=self.config.redis.history_limit,
            events_loader=loader,
            on_result=partial(self._on_result, cid),
            mask=self._mask,
            # the dispatch wake-up wakes it when its stream grows; this only looks for what
            # another instance left pending
            idle_poll_s=max(self.lease_ms / 1000, IDLE_DISPATCH_POLL_S),
            takeover_poll_s=self.config.takeover_poll_s(),
            renewer=self.lease_renewer,
            hold=self.time_closer.wait_quiet,
        )
        return _Consumer(cfg, keys, counter, runner, timer, dispatcher)

    def _on_applied(self, consumer_id: str, res: ApplyResult) -> None:
        c = self._consumers[consumer_id]
        cfg = c.cfg
        c.timer.observe(res.window_id, res.count, res.opened_at_ms, res.redis_now_ms)
        c.shared.count, c.shared.window_id = res.count, res.window_id
        c.shared.opened_at_ms = res.opened_at_ms
        if res.closed_window_ids:
            for wid in res.closed_window_ids:
                trigger_log.info(
                    "%s: window %d closed (count, %d events)",
                    cfg.consumer_id,
                    wid,
                    cfg.max_event,
                    extra=log_fields("trigger", cfg.consumer_id, wid, cfg.pipeline_name),
                )
            if self._fault:
                self._fault("after_close")
            c.dispatcher.wake()

    def _on_timer_closed(self, consumer_id: str, res: CloseResult) -> None:
        c = self._consumers[consumer_id]
        cfg = c.cfg
        trigger_log.info(
            "%s: window %d closed (time, %d events)",
            cfg.consumer_id,
            res.window_id,
            res.count,
            extra=log_fields("trigger", cfg.consumer_id, res.window_id, cfg.pipeline_name),
        )
        c.shared.count, c.shared.window_id, c.shared.opened_at_ms = 0, res.window_id + 1, None
        c.runner.window_floor = max(c.runner.window_floor, res.window_id + 1)
        if self._fault:
            self._fault("after_close")
        c.dispatcher.wake()

    def _on_result(self, consumer_id: str, record: TriggerRecord, result: RunResult) -> None:
        c = self._consumers[consumer_id]
        c.runner.window_floor = max(c.runner.window_floor, record.window_id + 1)
        c.shared.last_trigger = TriggerSummary(
            record.window_id,
            str(record.reason),
            record.count,
            record.closed_at_ms,
            str(result.status),
            record.replay,
        )
        fields = log_fields(
            "pipeline_run", record.consumer_id, record.window_id, record.pipeline_name
        )
        if result.status == RunStatus.FAILED:
            trigger_log.error(
                "%s: pipeline %s FAILED for window %d after %d attempt(s): %s",
                record.consumer_id,
                record.pipeline_name,
                record.window_id,
                result.attempts,
                result.error,
                extra=fields,
            )
        else:
            trigger_log.info(
                "%s: pipeline %s %s for window %d (%s, %d events, %s ms)",
                record.consumer_id,
                record.pipeline_name,
                result.status,
                record.window_id,
                record.reason,
                record.count,
                result.duration_ms,
                extra=fields,
            )
        for listener in list(self._run_listeners):
            try:
                listener(record, result)
            except Exception:
                log.exception("run listener failed")

    async def _ensure_dlq_topics(self) -> None:
        wanted = {c.dlq_topic for c in self.config.consumers if c.error_handling.on_error == "dlq"}
        if not wanted:
            return
        admin = AIOKafkaAdminClient(**kafka_kwargs(self.config.kafka))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = sorted(wanted - existing)
            if missing:
                # replicated like a production topic where the cluster allows (3 at most)
                cluster = await admin.describe_cluster()
                replicas = max(1, min(3, len(cluster.get("brokers", []))))
                await admin.create_topics([NewTopic(t, 1, replicas) for t in missing])
                log.info("created DLQ topic(s) %s", ", ".join(missing))
        except Exception as exc:
            log.warning("could not check or create DLQ topics: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    async def _guard(
        self,
        start: Callable[[], Awaitable[None]],
        what: str,
        runner: ConsumerRunner | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Run a background task until the engine stops (or ``stop``, a consumer's own); if it
        fails, log the failure (with its traceback, once per distinct error), surface it
        (:attr:`task_failures`, in the snapshot and on ``/ready``; the consumer's
        ``last_error``) and start it again after a backoff (:data:`RESTART_POLICY`). No task
        of the engine dies silently."""
        failures = 0
        last = ""
        while True:
            began = time.monotonic()
            try:
                await start()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                text = f"{what} failed: {type(exc).__name__}: {exc}"
                if text != last:
                    log.exception("%s (restarting it)", self._mask(text))
                last = text
                self.task_failures[what] = (self._mask(text), time.time())
                if runner is not None:
                    runner.last_error = text
            halt = stop or self._stop
            if halt.is_set():
                return
            failures = 1 if time.monotonic() - began > 60 else failures + 1
            delay = backoff_delay(failures, RESTART_POLICY)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(halt.wait(), delay)
            if halt.is_set():
                return

    def recent_task_failures(self, within_s: float = 60.0) -> tuple[str, ...]:
        """Background task failures of the last ``within_s`` seconds (each restarted)."""
        now = time.time()
        return tuple(text for text, at in self.task_failures.values() if now - at <= within_s)

    def request_stop(self) -> None:
        self._stop.set()
        for c in self._consumers.values():
            c.stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, record counts and offsets, commit, close everything."""
        self._stop.set()
        for c in self._consumers.values():
            c.stop.set()
            c.timer.wake()
            c.dispatcher.wake()
        tasks = [t for c in self._consumers.values() for t in c.tasks] + self._tasks
        tasks += list(self._reload_tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                log.warning("task %s did not stop within %.0fs; cancelling", t.get_name(), timeout)
                t.cancel()
            for t in pending:
                with contextlib.suppress(BaseException):
                    await t
        with contextlib.suppress(Exception):
            await withdraw_heartbeat(self.redis, self.fleet_keys, self.instance_id)
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                await self.monitor.close()
        if self._monitor_redis is not None:
            with contextlib.suppress(Exception):
                await self._monitor_redis.aclose()
        for pipeline in [*self._pipelines.values(), *self._retired_pipelines]:
            with contextlib.suppress(Exception):
                await pipeline.close()
        if self._dlq is not None:  # its producer: the one started, or the one replacing it
            await self._dlq.close()
        elif self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.time_closer.stop)
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        self.started = False
        log.info("engine %s stopped", self.instance_id)

    async def run(self) -> None:
        """Start, run until :meth:`request_stop`, stop."""
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    # ---- control ---------------------------------------------------------------------------
    def _get(self, consumer_id: str) -> _Consumer:
        try:
            return self._consumers[consumer_id]
        except KeyError:
            raise UnknownConsumerError(consumer_id, self.consumer_ids()) from None

    @property
    def file_config(self) -> AppConfig:
        """The configuration as given or last reloaded from its file, without the consumers
        defined at runtime (:attr:`config` has them)."""
        return self._file_config

    @property
    def fleet(self) -> Fleet:
        """Control actions go through the fleet's (the same checks and audit as the CLI's),
        with this engine's current config (read-only mode can be switched on)."""
        if self._fleet is None or self._fleet.config is not self.config:
            self._fleet = Fleet(self.redis, self.config, via="engine")
        return self._fleet

    def consumer_ids(self) -> list[str]:
        return [c.consumer_id for c in self.config.consumers]

    # Control actions are the fleet's (Fleet.pause...: the read-only refusal, the audit
    # record) plus their effect on this instance at once: ``via`` names the face (the TUI
    # passes "tui", the API "api"), ``user`` who acted (default: this process's user@host).

    async def pause(
        self,
        consumer_id: str | None = None,
        by: str | None = None,
        *,
        via: str = "engine",
        user: str | None = None,
    ) -> list[str]:
        """Pause one consumer (or all) fleet-wide. Returns the ids paused."""
        ids = [consumer_id] if consumer_id else self.consumer_ids()
        for cid in ids:
            c = self._get(cid)
            by_whom = by or f"{actor()} ({self.instance_id})"
            await self.fleet.pause(cid, by_whom, user, via=via, instance=self.instance_id)
            c.runner.set_paused(True)
            c.shared.paused = True
        return ids

    async def resume(
        self, consumer_id: str | None = None, *, via: str = "engine", user: str | None = None
    ) -> list[str]:
        ids = [consumer_id] if consumer_id else self.consumer_ids()
        for cid in ids:
            c = self._get(cid)
            await self.fleet.resume(cid, user, via=via, instance=self.instance_id)
            c.runner.set_paused(False)
            c.shared.paused = False
        return ids

    async def reset(
        self, consumer_id: str, *, via: str = "engine", user: str | None = None
    ) -> ResetResult:
        """Empty the open window without triggering."""
        c = self._get(consumer_id)
        res = await self.fleet.reset(consumer_id, user, via=via, instance=self.instance_id)
        c.timer.observe(res.window_id, 0, None, res.redis_now_ms)
        c.shared.count, c.shared.opened_at_ms = 0, None
        log.info(
            "%s: window %d reset, %d event(s) discarded", consumer_id, res.window_id, res.discarded
        )
        return res

    async def force_trigger(
        self, consumer_id: str, *, via: str = "engine", user: str | None = None
    ) -> CloseResult:
        """Close the open window now (even when empty) and dispatch its pipeline."""
        c = self._get(consumer_id)
        res = await self.fleet.trigger(consumer_id, user, via=via, instance=self.instance_id)
        trigger_log.info(
            "%s: window %d closed (manual, %d events)",
            consumer_id,
            res.window_id,
            res.count,
            extra=log_fields("trigger", consumer_id, res.window_id, c.cfg.pipeline_name),
        )
        c.timer.observe(res.window_id + 1, 0, None, res.redis_now_ms)
        c.shared.count, c.shared.window_id, c.shared.opened_at_ms = 0, res.window_id + 1, None
        c.dispatcher.wake()
        return res

    async def seek(
        self,
        consumer_id: str,
        to: str,
        *,
        window: str = "close",
        partitions: list[int] | None = None,
        via: str = "engine",
        user: str | None = None,
    ) -> SeekResult:
        """Move the consumer's position fleet-wide (:meth:`Fleet.seek`); this instance follows
        at once, the others within a second."""
        c = self._get(consumer_id)
        res = await self.fleet.seek(
            consumer_id,
            to,
            user,
            window=window,
            partitions=partitions,
            via=via,
            instance=self.instance_id,
        )
        if res.epoch is not None:
            c.runner.follow_seek(res.epoch)
        log.info(
            "%s: seek %s",
            consumer_id,
            res.detail(),
            extra={"event": "seek", "consumer_id": consumer_id},
        )
        if res.closed_window_id is not None or res.discarded:
            next_id = (
                res.closed_window_id + 1 if res.closed_window_id is not None else c.shared.window_id
            )
            c.timer.observe(next_id, 0, None, res.redis_now_ms)
            c.shared.count, c.shared.window_id, c.shared.opened_at_ms = 0, next_id, None
            c.dispatcher.wake()
        return res

    # ---- live reload ---------------------------------------------------------------------------
    async def reload(
        self,
        source: str | os.PathLike[str] | AppConfig | None = None,
        *,
        via: str = "engine",
        user: str | None = None,
    ) -> ReloadResult:
        """Apply a changed configuration to this running instance; returns what it did.

        ``source`` is a configuration file (default: the file this instance was started
        with, :attr:`AppConfig.source_file`) or an already loaded :class:`AppConfig`. The file
        is validated first with the loader's own checks and messages: an invalid file changes
        nothing and returns ``status == "invalid"`` with every problem in ``problems``
        (``FILE: dotted.key: message``). A valid one is applied at once:

        - consumers added start; consumers removed stop gracefully (batch finished, offsets
          committed, open window kept in Redis);
        - a changed ``max_event``/``max_time`` applies to the open window (a lowered
          ``max_event`` it already reaches closes it at once, the excess carried over);
        - a changed pipeline (``pipeline_name``, the ``[pipelines.NAME]`` table, the retry
          policy) applies from the next dispatch;
        - any other change to a consumer restarts it gracefully;
        - changed ``[kafka]``, ``[redis]``, ``[api]``, ``[ui]``, ``[monitoring]`` keys are
          listed in ``needs_restart`` and not applied.

        ``via`` names the face (``tui``, ``api``, ``signal``, ``cli``), ``user`` who acted
        (default: this process's user@host); the reload is recorded in the audit trail and
        logged. Raises :class:`ReadOnlyError` in read-only mode, :class:`ControlError` when no
        file is given and the configuration was not loaded from one. Never raises for a bad
        file or a failure to apply (``status == "failed"``, ``error``).
        """
        if self.config.ui.read_only:
            raise ReadOnlyError("reload")
        if not self.started or self._stop.is_set():
            raise ControlError("cannot reload: the engine is not running (starting or stopping)")
        async with self._reload_lock:
            result = await self._reload(source)
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "%s", self._mask(result.summary()), extra={"event": "reload"})
        for problem in result.problems:
            log.warning("%s", problem, extra={"event": "reload"})
        await self.audit.record(
            "reload",
            "*",
            via=via,
            user=user or actor(),
            instance=self.instance_id,
            result="ok" if result.ok else "error",
            detail=result.summary(),
        )
        return result

    async def _runtime_definitions(self) -> dict[str, Any]:
        """The consumers defined at runtime as stored in Redis (the last ones read when Redis
        does not answer: logged)."""
        try:
            self._runtime_defs = await RuntimeConsumers(
                self.redis, self.prefix, self.tagged
            ).definitions()
        except (RedisError, OSError) as exc:
            log.warning("runtime-defined consumers not read from Redis (kept as known): %s", exc)
        return self._runtime_defs

    def _adopt_runtime(self, merge: RuntimeMerge) -> None:
        self.runtime_consumer_ids = frozenset(merge.runtime_ids)
        self.runtime_clashes = merge.clashes
        for note in merge.notes():
            log.warning("%s", note, extra={"event": "runtime-consumers"})

    async def apply_runtime_consumers(self, *, via: str = "engine", user: str = "") -> ReloadResult:
        """Apply the consumers defined at runtime as Redis now stores them, beside this
        instance's file consumers (the reload machinery: added ones start, removed ones stop
        gracefully, replaced ones change or restart). Runs in read-only mode too: the fleet's
        definition changed, not this instance's. Raises :class:`ControlError` when the engine
        is not running."""
        if not self.started or self._stop.is_set():
            raise ControlError("cannot apply runtime consumers: the engine is not running")
        async with self._reload_lock:
            result = await self._reload(self._file_config, label="runtime-defined consumers")
        level = logging.INFO if result.ok else logging.WARNING
        log.log(
            level,
            "%s (asked via %s by %s)",
            self._mask(result.summary()),
            via,
            user or "?",
            extra={"event": "runtime-consumers"},
        )
        return result

    async def _reload(
        self, source: str | os.PathLike[str] | AppConfig | None, label: str | None = None
    ) -> ReloadResult:
        rid = self.instance_id
        if isinstance(source, AppConfig):
            new, file = source, label or source.source_file or "(configuration)"
        else:
            path = source if source is not None else self.config.source_file
            if path is None:
                raise ControlError(
                    "cannot reload: this instance's configuration was not loaded from a file"
                )
            file = os.fspath(path)
            try:
                new = load_config(file)
            except ConfigError as exc:
                problems = tuple(str(p) for p in exc.problems)
                return ReloadResult(ReloadStatus.INVALID, file, rid, problems=problems)
            except Exception as exc:  # the loader's own bug: one line, no traceback
                problem = f"{file}: (internal): unexpected {type(exc).__name__} while loading"
                return ReloadResult(ReloadStatus.INVALID, file, rid, problems=(problem,))
        file_new = new
        merge = merge_runtime(new, await self._runtime_definitions())
        new = merge.config
        notes = tuple(merge.notes())
        old = self.config
        plan = plan_reload(old, new)
        # the sections only a restart applies keep their running values
        effective = new.model_copy(update={name: getattr(old, name) for name in RESTART_SECTIONS})
        effective._secret_keys = old._secret_keys | new._secret_keys
        effective._resolved_secrets = old._resolved_secrets | new._resolved_secrets
        effective._source_file = new.source_file or old.source_file
        restart = plan.needs_restart
        if plan.empty:
            self._adopt(effective)
            self._file_config = file_new
            self._adopt_runtime(merge)
            status = ReloadStatus.UNCHANGED
            return ReloadResult(status, file, rid, needs_restart=restart, details=notes)
        # pipelines first: one that cannot be built fails the reload before anything changes
        wanted = {c.pipeline_name for c in (*plan.added, *plan.restarted)}
        wanted |= {ch.new.pipeline_name for ch in plan.changed if ch.pipeline}
        built: dict[str, Pipeline] = {}
        try:
            for name in sorted(wanted):
                if name in self._pipelines and name not in plan.pipelines:
                    continue
                pipeline = build_pipeline(name, effective.pipelines[name], kafka=effective.kafka)
                await pipeline.start()
                built[name] = pipeline
        except Exception as exc:
            for pipeline in built.values():
                with contextlib.suppress(Exception):
                    await pipeline.close()
            error = self._mask(f"pipeline {name!r}: {type(exc).__name__}: {exc}")
            return ReloadResult(ReloadStatus.FAILED, file, rid, needs_restart=restart, error=error)
        self._adopt(effective)
        self._file_config = file_new
        self._adopt_runtime(merge)
        for name, pipeline in built.items():
            if name in self._pipelines:
                self._retired_pipelines.append(self._pipelines[name])
            self._pipelines[name] = pipeline
        added: list[str] = []
        removed: list[str] = []
        changed: list[str] = []
        restarted: list[str] = []
        details: list[str] = list(notes)
        try:
            if plan.added or plan.restarted:
                await self._ensure_dlq_topics()
            for cid in plan.removed:
                await self._stop_consumer(cid)
                removed.append(cid)
            for cfg in plan.restarted:
                await self._stop_consumer(cfg.consumer_id)
                await self._add_consumer(cfg)
                restarted.append(cfg.consumer_id)
            for change in plan.changed:
                details += await self._apply_change(change)
                changed.append(change.new.consumer_id)
            for cfg in plan.added:
                await self._add_consumer(cfg)
                added.append(cfg.consumer_id)
        except Exception as exc:
            log.exception("reload failed while applying")
            return ReloadResult(
                ReloadStatus.FAILED,
                file,
                rid,
                tuple(added),
                tuple(removed),
                tuple(changed),
                tuple(restarted),
                restart,
                tuple(details),
                error=self._mask(f"{type(exc).__name__}: {exc}"),
            )
        return ReloadResult(
            ReloadStatus.APPLIED,
            file,
            rid,
            tuple(added),
            tuple(removed),
            tuple(changed),
            tuple(restarted),
            restart,
            tuple(details),
        )

    def _adopt(self, config: AppConfig) -> None:
        self.config = config
        self._mask = masker(config)
        self.audit.mask = self._mask
        if self.monitor is not None:
            self.monitor.follow(config)
        self.shared_read_s = max(self.snapshot_interval, len(config.consumers) / SHARED_READS_PER_S)

    async def _add_consumer(self, cfg: ConsumerConfig) -> None:
        assert self._dlq is not None
        c = self._build_consumer(cfg, self._dlq)
        paused = (await self.control.pause_states([cfg.consumer_id]))[cfg.consumer_id].paused
        c.runner.set_paused(paused)
        c.shared.paused = paused
        self._consumers[cfg.consumer_id] = c
        self._start_consumer(c)

    async def _apply_change(self, change: ConsumerChange) -> list[str]:
        """A running consumer's new thresholds and pipeline, applied live."""
        cid, old, new = change.new.consumer_id, change.old, change.new
        c = self._consumers[cid]
        c.cfg = new
        c.runner.cfg = new
        details = []
        if change.pipeline:
            c.dispatcher.cfg = new
            c.dispatcher.pipeline = self._pipelines[new.pipeline_name]
            c.dispatcher.policy = self.config.retry_policy_for(new)
            details.append(
                f"{cid}: pipeline {new.pipeline_name}"
                + (f" (was {old.pipeline_name})" if old.pipeline_name != new.pipeline_name else "")
                + " from the next dispatch"
            )
        if not change.thresholds:
            return details
        c.timer.set_max_time(new.max_time)
        res = await c.counter.set_max_event(new.max_event)
        c.timer.observe(res.window_id, res.count, res.opened_at_ms, res.redis_now_ms)
        c.shared.count, c.shared.window_id = res.count, res.window_id
        c.shared.opened_at_ms = res.opened_at_ms
        line = f"{cid}: max_event {old.max_event} -> {new.max_event}, max_time {old.max_time:g} -> "
        line += f"{new.max_time:g}"
        if res.closed_window_ids:
            for wid in res.closed_window_ids:
                trigger_log.info(
                    "%s: window %d closed (count, %d events; lowered max_event)",
                    cid,
                    wid,
                    new.max_event,
                    extra=log_fields("trigger", cid, wid, new.pipeline_name),
                )
            closed = ", ".join(str(w) for w in res.closed_window_ids)
            line += f"; window(s) {closed} closed at once, {res.count} event(s) carried over"
            c.dispatcher.wake()
        details.append(line)
        return details

    def _on_control_message(self, data: Any) -> str | None:
        """A control announcement: a fleet-wide reload request starts this instance's reload.
        Returns the consumer a pause, resume, seek... names (the listener then reads that
        consumer's flags at once), else None."""
        try:
            message = orjson.loads(data) if isinstance(data, bytes | str) else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(message, dict):
            return None
        named = message.get("consumer_id")
        if isinstance(named, str) and named:
            return named
        if message.get("action") not in ("reload", APPLY_ACTION):
            return None
        request_id = str(message.get("request_id") or "")
        if not request_id:
            return None
        via, user = str(message.get("via") or "cli"), str(message.get("user") or "")
        task = asyncio.create_task(
            self._answer_reload(request_id, via, user, runtime=message["action"] == APPLY_ACTION),
            name=f"{message['action']}:{request_id}",
        )
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)
        return None

    async def _answer_reload(
        self, request_id: str, via: str, user: str, *, runtime: bool = False
    ) -> None:
        """Reload this instance's own file (``runtime``: apply the consumers defined at
        runtime) for a fleet-wide request and store the result."""
        file = self.config.source_file or "(configuration)"
        try:
            if runtime:
                result = await self.apply_runtime_consumers(via=via, user=user)
            else:
                result = await self.reload(via=via, user=user or None)
        except ControlError as exc:
            result = ReloadResult(ReloadStatus.FAILED, file, self.instance_id, error=str(exc))
            log.warning("reload refused: %s", exc, extra={"event": "reload"})
        except Exception as exc:
            log.exception("reload failed")
            error = self._mask(f"{type(exc).__name__}: {exc}")
            result = ReloadResult(ReloadStatus.FAILED, file, self.instance_id, error=error)
        try:
            await store_result(self.redis, self.prefix, request_id, result, self.tagged)
        except (RedisError, OSError) as exc:
            log.warning("reload result not stored in Redis: %s", exc)

    async def _resync_runtime_consumers(self) -> None:
        """Apply the runtime definitions if Redis holds others than this instance last read."""
        known = dict(self._runtime_defs)
        current = await RuntimeConsumers(self.redis, self.prefix, self.tagged).definitions()
        if current == known:
            return
        task = asyncio.create_task(self._answer_runtime_change(), name="consumers:resync")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def _answer_runtime_change(self) -> None:
        try:
            await self.apply_runtime_consumers(via="resync", user=self.instance_id)
        except ControlError as exc:
            log.warning("runtime consumers not applied: %s", exc)
        except Exception:
            log.exception("applying the runtime consumers failed")

    async def _load_pause_flags(self, only: str | None = None) -> None:
        """Apply every consumer's pause flag and seek epoch as Redis has them (``only``: that
        consumer's, when it runs here)."""
        if only is not None and only not in self._consumers:
            return
        states = await self.control.pause_states([only] if only else list(self._consumers))
        for cid, st in states.items():
            c = self._consumers.get(cid)
            if c is None:  # removed by a reload meanwhile
                continue
            c.runner.set_paused(st.paused)
            c.shared.paused = st.paused
            if st.seek_epoch > c.runner.seek_epoch:
                c.runner.follow_seek(st.seek_epoch)  # a seek from any face, any process

    async def _control_listener(self) -> None:
        """Apply pause flags (and seeks) set by other processes: at once via pub/sub (the
        consumer an announcement names), and by polling every consumer's flags (in case an
        announcement was missed) every :meth:`AppConfig.control_poll_s`."""
        # a connection of its own: the subscription never holds one of the pool's
        subscriber = dedicated_redis_client(self.config.redis)
        pubsub = subscriber.pubsub()
        listening: PubSub | None = None
        resync_runtime = False
        failures = 0
        polled = -math.inf
        try:
            while not self._stop.is_set():
                named: str | None = None
                try:
                    if listening is None:  # (re)subscribe once Redis answers again
                        if failures:  # a new subscription (on a cluster: maybe another node)
                            with contextlib.suppress(Exception):
                                await pubsub.aclose()
                            pubsub = subscriber.pubsub()
                        await pubsub.subscribe(self.fleet_keys.control_channel)
                        listening = pubsub
                        # a definition changed before the subscription (or while Redis was
                        # away) was announced to no one here: compare once subscribed
                        resync_runtime = True
                    if resync_runtime and self.started:
                        resync_runtime = False
                        await self._resync_runtime_consumers()
                    message = await listening.get_message(
                        ignore_subscribe_messages=True, timeout=1.0
                    )
                    if message is not None:
                        named = self._on_control_message(message.get("data"))
                    if failures:
                        log.info("control listener: Redis answers again")
                    failures = 0
                except (RedisError, OSError) as exc:
                    # an unreachable Redis fails at once: back off, never spin (polling goes on)
                    listening = None
                    failures += 1
                    if failures == 1:
                        log.warning("control listener: Redis: %s (retrying with backoff)", exc)
                    with contextlib.suppress(TimeoutError):
                        delay = max(backoff_delay(failures, CONTROL_POLICY), 0.5)
                        await asyncio.wait_for(self._stop.wait(), delay)
                with contextlib.suppress(RedisError, OSError):
                    if time.monotonic() - polled >= self.config.control_poll_s():
                        polled = time.monotonic()
                        await self._load_pause_flags()
                    elif named is not None:
                        await self._load_pause_flags(only=named)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await subscriber.aclose()

    # ---- status ----------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[InstanceSnapshot], None]) -> None:
        """Call ``listener`` with every new snapshot (on the engine's loop)."""
        self._listeners.append(listener)

    def subscribe_runs(self, listener: Callable[[TriggerRecord, RunResult], None]) -> None:
        """Call ``listener`` with every pipeline run this instance finishes (for metrics)."""
        self._run_listeners.append(listener)

    def subscribe_alerts(self, listener: AlertListener) -> None:
        """Call ``listener`` with every alert that fires or resolves, as this instance sees it
        (every instance's console gets its own toast; log and webhook go out once per fleet)."""
        if self.monitor is not None:
            self.monitor.subscribe(listener)

    def snapshot(self) -> InstanceSnapshot:
        """The instance's status now: the status loop's newest, or built here when that is
        older than the snapshot interval (with no listener, as headless, the loop builds one
        only for each heartbeat)."""
        snap = self._snapshot
        if snap is None or time.monotonic() - self._snapshot_built >= self.snapshot_interval:
            snap = self._new_snapshot()
        return snap

    def _new_snapshot(self) -> InstanceSnapshot:
        snap = self._snapshot = self._build_snapshot()
        self._snapshot_built = time.monotonic()
        return snap

    async def refresh_snapshot(self) -> InstanceSnapshot:
        await self._read_shared()
        return self._new_snapshot()

    async def _status_loop(self) -> None:
        """Once per snapshot interval: read the shared state, build the snapshot, publish the
        heartbeat (every :meth:`AppConfig.heartbeat_s`) and tell the listeners. With no
        listener a snapshot is built only for a heartbeat (:meth:`snapshot` builds one when
        asked). An unexpected error in one step is logged (once per distinct error), surfaced
        (:attr:`task_failures`: the snapshot, ``/ready``) and the loop goes on with what it
        has: the heartbeat never stops over one bad value."""
        shared_at = -math.inf
        while not self._stop.is_set():
            try:
                beat = time.monotonic() - self._last_heartbeat >= self.config.heartbeat_s()
                snap: InstanceSnapshot | None = None
                try:
                    if time.monotonic() - shared_at >= self.shared_read_s:
                        shared_at = time.monotonic()
                        await self._read_shared()
                    if beat or self._listeners:
                        snap = self._new_snapshot()
                except (RedisError, OSError):
                    raise
                except Exception as exc:
                    self._status_failed("reading the shared state", exc)
                    snap = self._new_snapshot()
                if not self._heap_settled and all(
                    c.runner.state in SETTLED_STATES for c in self._consumers.values()
                ):
                    self._heap_settled = True
                    freeze_settled_heap()
                if snap is not None:
                    if beat:
                        self._last_heartbeat = time.monotonic()
                        await publish_heartbeat(
                            self.redis,
                            self.fleet_keys,
                            self.instance_id,
                            # orjson writes the frozen dataclasses as to_json_dict() does, at
                            # a fraction of dataclasses.asdict's cost (hundreds of consumers)
                            snap,
                            HEARTBEAT_TTL_S,
                        )
                    self._tell_listeners(snap)
                await self._refresh_cluster_view()
            except (RedisError, OSError) as exc:
                if self._redis_ok:
                    log.error("Redis unreachable: %s", exc)
                self._redis_ok = False
                self.redis_problem = self._mask(str(exc) or type(exc).__name__)
                # the snapshot says so without Redis (and why: a pool exhausted, no primary)
                self._tell_listeners(self._new_snapshot())
            except Exception as exc:  # a bug must not end the heartbeat: log, surface, go on
                self._status_failed("publishing the heartbeat", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.snapshot_interval)

    def _tell_listeners(self, snap: InstanceSnapshot) -> None:
        for listener in list(self._listeners):
            try:
                listener(snap)
            except Exception:
                log.exception("status listener failed")

    def _status_failed(self, step: str, exc: Exception) -> None:
        text = self._mask(f"status loop failed {step}: {type(exc).__name__}: {exc}")
        if self.task_failures.get("status loop", ("",))[0] != text:
            log.exception("%s (going on)", text)
        self.task_failures["status loop"] = (text, time.time())

    async def _read_shared(self) -> None:
        """Every consumer's count, window and totals in one pipeline; then, for the consumers
        whose window id moved since (a close, a reset, a purge) or whose last run is not
        finished, the newest history entry and its run in a second one."""
        consumers = list(self._consumers.values())
        if not consumers:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute_command("TIME")  # a cluster pipeline refuses pipe.time()
        for c in consumers:
            pipe.get(c.keys.events)
            pipe.hmget(c.keys.window, ["id", "opened_at"])
            pipe.hmget(c.keys.stats, ["total", "errors"])
        res = await pipe.execute()
        self._redis_ok = True
        self.redis_problem = None
        sec, usec = res[0]
        now_ms = int(sec) * 1000 + int(usec) // 1000
        stale: list[_Consumer] = []
        i = 1
        for n, c in enumerate(consumers):
            if n and n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # hundreds of consumers must not hold up the loop
            count_raw, (wid, opened), (total, errors) = res[i : i + 3]
            i += 3
            s = c.shared
            s.count = int(count_raw or 0)
            s.window_id = int(wid or 1)
            s.opened_at_ms = int(opened) if opened else None
            s.total = int(total or 0)
            s.errors = int(errors or 0)
            c.timer.observe(s.window_id, s.count, s.opened_at_ms, now_ms)
            if s.history_read_for != s.window_id or (
                s.last_trigger is not None and s.last_trigger.status in UNFINISHED_RUN
            ):
                stale.append(c)
        if not stale:
            return
        pipe = self.redis.pipeline(transaction=False)
        for c in stale:
            pipe.xrevrange(c.keys.history, count=1)
        lasts = await pipe.execute()
        changed: list[tuple[_Consumer, HistoryEntry]] = []
        runs = self.redis.pipeline(transaction=False)
        for c, last in zip(stale, lasts, strict=True):
            s = c.shared
            s.history_read_for = s.window_id
            if not last:
                s.last_trigger = None
                continue
            entry = HistoryEntry.parse(last[0][1])
            if (
                s.last_trigger is None
                or s.last_trigger.window_id != entry.window_id
                or s.last_trigger.status in UNFINISHED_RUN
            ):
                runs.hget(c.keys.runs, str(entry.window_id))
                changed.append((c, entry))
        if changed:
            for (c, entry), run in zip(changed, await runs.execute(), strict=True):
                c.shared.last_trigger = TriggerSummary.of(entry, stored_run(run))

    def _build_snapshot(self) -> InstanceSnapshot:
        consumers = []
        for c in self._consumers.values():
            r = c.runner
            parts = r.partitions()
            consumers.append(
                ConsumerSnapshot(
                    consumer_id=c.cfg.consumer_id,
                    kafka_topic=c.cfg.topic_label,
                    pipeline_name=c.cfg.pipeline_name,
                    state=instance_state(r.state, c.shared.paused),
                    count=c.shared.count,
                    max_event=c.cfg.max_event,
                    max_time=c.cfg.max_time,
                    window_id=c.shared.window_id,
                    window_opened_at_ms=c.shared.opened_at_ms,
                    total=c.shared.total,
                    errors=c.shared.errors,
                    rate=round(r.rate.rate(), 1),
                    lag=consumer_lag(p.lag for p in parts),
                    partitions=parts,
                    last_trigger=c.shared.last_trigger,
                    last_error=self._mask(r.last_error) if r.last_error else None,
                    dlq=r.dlq_count,
                    dlq_refused=r.dlq_refused,
                    redis_state_losses=r.state_losses,
                    topic_end_offsets=tuple(
                        (tp.topic, tp.partition, end) for tp, end in sorted(r.topic_ends.items())
                    ),
                    processor_stall=stall.describe() if (stall := r.processor_stall()) else None,
                    breaker=c.dispatcher.breaker.to_json_dict(),
                    time_lag_seconds=consumer_time_lag([p.time_lag_seconds for p in parts]),
                    **self._health_fields(c.cfg.consumer_id),
                )
            )
        kafka_ok = any(c.runner.kafka_ok for c in self._consumers.values()) or not self._consumers
        self._watch_brokers()
        return InstanceSnapshot(
            instance_id=self.instance_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at_ms=self.started_at_ms,
            taken_at_ms=int(time.time() * 1000),
            redis_ok=self._redis_ok,
            kafka_ok=kafka_ok,
            consumers=tuple(consumers),
            task_failures=self.recent_task_failures(),
            kafka_missing=self._kafka_missing,
            redis_pool=self.redis_pool_exhausted(),
            runtime_consumers=tuple(sorted(self.runtime_consumer_ids)),
            runtime_clashes=self.runtime_clashes,
        )

    def _metadata_watcher(self) -> ConsumerRunner | None:
        """The consumer whose view of the cluster's brokers is the instance's (the first)."""
        return next(iter(self._consumers.values())).runner if self._consumers else None

    def _watch_brokers(self) -> None:
        """Say once when a broker seen in the cluster's metadata is gone from it (dead, or
        fenced by the controller: its partitions moved to the others), and when it is back."""
        watcher = self._metadata_watcher()
        current = watcher.known_brokers() if watcher is not None else None
        if not current:
            return
        self._brokers_seen.update(current)
        missing = tuple(
            f"broker {node} ({address})"
            for node, address in sorted(self._brokers_seen.items())
            if node not in current
        )
        if missing == self._kafka_missing:
            return
        for broker in sorted(set(missing) - set(self._kafka_missing)):
            log.warning(
                "Kafka %s is gone from the cluster's metadata (dead or fenced); the other "
                "brokers took over its partitions",
                broker,
            )
        for broker in sorted(set(self._kafka_missing) - set(missing)):
            log.info("Kafka %s is back in the cluster", broker)
        self._kafka_missing = missing

    async def _refresh_cluster_view(self) -> None:
        """Ask for the cluster's metadata every 10 s (every 2 s while a broker is missing), so a
        broker that dies or comes back is seen even when no request of ours failed."""
        now = time.monotonic()
        every = 2.0 if self._kafka_missing else METADATA_REFRESH_S
        watcher = self._metadata_watcher()
        if watcher is not None and now - self._metadata_refreshed >= every:
            self._metadata_refreshed = now
            await watcher.refresh_metadata()

    def _health_fields(self, consumer_id: str) -> dict[str, Any]:
        health = self.monitor.health(consumer_id) if self.monitor is not None else None
        if health is None:
            return {}
        return {
            "verdict": str(health.verdict.name),
            "verdict_reason": health.verdict.reason,
            "verdict_since_ms": health.since_ms,
            "alerts": health.alerts,
        }
