"""The consume loop of one consumer: poll, classify, dead-letter, count atomically, commit.

Redis holds the truth of what was counted (per partition, the next offset to count). On
assignment the consumer seeks to that offset (else Kafka's committed offset, else
``auto_offset_reset``). Each poll becomes one Lua call; Kafka commits follow periodically so
external lag tools stay right. Pausing uses aiokafka ``pause()`` while the loop keeps polling,
so the group keeps this member.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
import zlib
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    InvalidSessionTimeoutError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)
from redis.exceptions import RedisError

from kafkaconsole.config.models import AppConfig, ConsumerConfig, RetryPolicy
from kafkaconsole.engine.clients import kafka_kwargs
from kafkaconsole.engine.counting import (
    ApplyResult,
    PartitionDelta,
    RedisBehind,
    SeekMoved,
    WindowCounter,
)
from kafkaconsole.engine.dlq import DeadLetterError, DeadLetterSink, Refused
from kafkaconsole.engine.events import EventClassifier, build_batch
from kafkaconsole.engine.health import time_lag_seconds
from kafkaconsole.engine.kafka_acl import ACL_RETRY_S, AUTHORIZATION_ERRORS, authorization_message
from kafkaconsole.engine.partitions import PartitionState
from kafkaconsole.engine.processing import ProcessorRunner, ProcessorStall
from kafkaconsole.engine.retry import backoff_delay, retry_call
from kafkaconsole.engine.status import (
    ConsumerState,
    PartitionSnapshot,
    RateMeter,
    partition_lag,
)
from kafkaconsole.engine.topic_lifecycle import (
    RECREATED,
    RETENTION,
    TopicLifecycle,
    TopicReset,
    classify,
)

log = logging.getLogger("kafkaconsole.consumer")

#: Polls that may wait for their Redis update while the loop goes on polling; then it waits.
MAX_QUEUED_POLLS = 64
#: While a consumer is behind (its partitions hold more than it polled), polls are counted
#: in groups of this many per Redis call, or once the oldest has waited COALESCE_MAX_AGE_S;
#: caught up, paused, stopping or rebalancing, at once. Fewer, larger calls leave more of
#: the core to the records (BENCHMARKS.md: 4 per call ran ~10 % slower on Apache Kafka).
COALESCE_POLLS = 32
#: The longest a poll read while behind waits for the others of its Redis call (seconds).
COALESCE_MAX_AGE_S = 0.1
#: A poll of records already fetched returns without waiting, so while a consumer is behind its
#: poll loop would keep the event loop until its fetched records run out. It hands the loop
#: over this often (seconds), and right after it started a Redis call (so that the call is
#: sent while it polls on). Handing it over after every poll cost ~5 % of the CPU per event
#: (an iteration of the event loop per poll: BENCHMARKS.md).
HAND_OVER_S = 0.002


def coalesce_due(queued: int, oldest_s: float) -> bool:
    """Whether the polls queued while behind go to Redis now: :data:`COALESCE_POLLS` of them,
    or the oldest has waited :data:`COALESCE_MAX_AGE_S`."""
    return queued >= COALESCE_POLLS or (queued > 0 and oldest_s >= COALESCE_MAX_AGE_S)


#: Kafka counts as unreachable for a consumer when no broker answered it for this long: a
#: broker that hangs (a frozen process, a network partition) raises nothing, polls just come
#: back empty. Idle consumers learn it from the end-offset probe of the status loop (1/s).
KAFKA_SILENCE_S = 5.0
#: How long one probe request may take: a broker answering slowly (GC, load) still answered;
#: well below KAFKA_SILENCE_S, so a hung broker is seen within it
PROBE_TIMEOUT_S = 2.0
#: Prefetch budget of a process, shared by its consumers. aiokafka's defaults (50 MB per
#: fetch, 1 MB per partition) suit one consumer, but each consumer holds several times its
#: fetch size in memory, so 50 of them took ~1 GB. A fetch still returns at least one record
#: batch whatever its size. Measured in benchmarks/: one consumer keeps its throughput (small
#: fetches cost it ~25 %), 50 consumers in one process stay under 200 MB.
FETCH_BUDGET_BYTES = 32 * 1024 * 1024
MIN_FETCH_MAX_BYTES = 512 * 1024
#: Waiting for a dependency that does not answer (Redis, an unreachable DLQ): retried until
#: it answers or the consumer stops, 0.1 s doubling to 5 s between attempts.
WAIT_POLICY = RetryPolicy(max_attempts=1, initial_backoff=0.1, max_backoff=5.0, jitter=False)
#: Reading the stored offsets on assignment (inside the rebalance, which waits for it):
#: 50 attempts, 0.1 s doubling to 2 s (about 90 s), then Kafka's committed offsets.
ASSIGN_POLICY = RetryPolicy(max_attempts=50, initial_backoff=0.1, max_backoff=2.0, jitter=False)


def fetch_sizes(consumers_in_process: int) -> tuple[int, int]:
    """``(fetch_max_bytes, max_partition_fetch_bytes)`` for one of that many consumers."""
    total = FETCH_BUDGET_BYTES // max(consumers_in_process, 1)
    total = max(MIN_FETCH_MAX_BYTES, min(total, 50 * 1024 * 1024))
    return total, max(128 * 1024, min(total // 2, 1024 * 1024))


#: Collector thresholds once consuming: a poll allocates thousands of short-lived tracked
#: objects (aiokafka's records), so CPython's default (a collection every 700 allocations)
#: keeps scanning; and full collections over the engine's long-lived objects were the 25-40 ms
#: pauses that made time triggers late under load. Measured in benchmarks/: with 50
#: consumers in one process 1.8x the events/s, time-trigger lateness under load max ~10 ms.
GC_THRESHOLDS = (50_000, 50, 100)
_gc_tuned = False


def tune_gc() -> None:
    """Once per process, when the first consumer starts: move everything allocated so far
    (modules, config, clients) out of the collector's sight with ``gc.freeze()`` and collect
    young objects less often. Leaves a disabled collector or larger thresholds alone."""
    global _gc_tuned
    if _gc_tuned or not gc.isenabled():
        return
    _gc_tuned = True
    gc.freeze()
    current = gc.get_threshold()
    gc.set_threshold(*(max(a, b) for a, b in zip(current, GC_THRESHOLDS, strict=False)))


_heap_settled = False


def freeze_settled_heap() -> bool:
    """Once per process, after :func:`tune_gc`, when every consumer of the engine has started
    (its client built, its partitions assigned): move what start-up allocated (hundreds of
    clients, their connections and buffers) out of the collector's sight too, so a full
    collection walks only what came later. With 500 consumers a full collection paused the
    loop, and the closing thread with it, for 60-90 ms; after this 10-25 ms. True when it
    froze now."""
    global _heap_settled
    if _heap_settled or not _gc_tuned or not gc.isenabled():
        return False
    _heap_settled = True
    gc.freeze()
    return True


def missing_topic_message(topic: str) -> str:
    return f"topic {topic!r} does not exist on the brokers; waiting for it to be created"


def missing_topics_message(topics: list[str]) -> str:
    """The message for the named topics that do not exist (one: as for a single topic)."""
    if len(topics) == 1:
        return missing_topic_message(topics[0])
    names = ", ".join(repr(t) for t in topics)
    return f"topics {names} do not exist on the brokers; waiting for them to be created"


def session_timeout_message(session_timeout_ms: int) -> str:
    return (
        f"the brokers refused [kafka] session_timeout_ms = {session_timeout_ms}: it must lie "
        "within their group.min.session.timeout.ms and group.max.session.timeout.ms (6000 and "
        "1800000 by default)"
    )


def describe_partitions(partitions: Any) -> str:
    """``orders partition(s) 0, 1; payments partition(s) 2`` for log lines and errors."""
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(partitions):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return "; ".join(
        f"{topic} partition(s) {', '.join(map(str, parts))}" for topic, parts in by_topic.items()
    )


def consumer_phase(consumer_id: str) -> float:
    """This consumer's place in its process's periodic requests, a fraction in [0, 1) fixed
    by its id: where in every interval it probes (:func:`next_probe_in`), and how its fetch
    wait, fetch-routine wake-up and group heartbeat are spread
    (:meth:`AppConfig.fetch_wait_ms` and the like). Consumers started together, each waiting
    a whole period after its own request, stay together: 500 of them sent 500 requests in
    one burst every few seconds, the broker then taking both cores of a small machine for
    half a second (and a time close due in that half second waiting for a core). Spread by
    id, the same process sends about a hundredth of its probes in each 50 ms."""
    return zlib.crc32(consumer_id.encode()) / 2**32


def next_probe_in(now: float, interval: float, phase: float) -> float:
    """Seconds from ``now`` (monotonic) to this consumer's next probe: the next point after
    ``now`` of the grid of ``interval`` steps shifted by ``phase`` of an interval. A probe
    that took longer than an interval skips the points it overran instead of catching up."""
    offset = phase * interval
    due = (math.floor((now - offset) / interval) + 1) * interval + offset
    return due - now


class ConsumerStopped(Exception):
    """The consumer stopped itself (``on_error = "stop"`` or a fatal error)."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.runner._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.runner._on_assigned(set(assigned))


class ConsumerRunner:
    """Runs one ``[[consumers]]`` entry on this instance."""

    def __init__(
        self,
        cfg: ConsumerConfig,
        app: AppConfig,
        counter: WindowCounter,
        dlq: DeadLetterSink,
        *,
        on_applied: Callable[[ApplyResult], None],
        fault_hook: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.app = app
        self.counter = counter
        self.dlq = dlq
        self.on_applied = on_applied
        self.fault_hook = fault_hook or (lambda point: None)
        self.classifier = EventClassifier(cfg)
        self.processors: ProcessorRunner | None = None
        if cfg.processor is not None:
            self.processors = ProcessorRunner(
                self.classifier, cfg.processor, cfg.processor_timeout, cfg.consumer_id
            )
        #: the topics named (kafka_topic, kafka_topics); empty with topic_pattern
        self.topics = cfg.topics
        #: what messages call the consumer's topics (the topic, "a,b", or "/pattern/")
        self.topic = cfg.topic_label
        self.state = ConsumerState.STARTING
        self.paused = False
        self._pause_applied = False
        self.rate = RateMeter()
        self.errors = 0
        self.dlq_count = 0
        self.dlq_refused = 0  # bad events even the DLQ refused: recorded and skipped
        self.policy = (
            app.retry_policy_for(cfg) if cfg.pipeline_name in app.pipelines else RetryPolicy()
        )
        self.last_error: str | None = None
        self._acl_refused = False  # the brokers refused this consumer an ACL permission
        # what this consumer knows of each topic-partition it owns (or owned: the last commit
        # of a revoked partition is kept, the rest is reset)
        self.parts: dict[TopicPartition, PartitionState] = {}
        self.assigned: set[TopicPartition] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._queued: list[list[PartitionDelta]] = []  # polls classified, not yet counted
        self._counting: asyncio.Task[None] | None = None  # counts the queued polls
        self._flush = False  # count the queued polls now, however few
        self._queued_at = 0.0  # when the first of the polls queued now was (monotonic)
        self._stop_event: asyncio.Event | None = None
        self._last_commit = 0.0
        # this consumer's own point in the process's periodic requests (see consumer_phase)
        self._phase = consumer_phase(cfg.consumer_id)
        self.redis_ok = True
        self._kafka_contact: float | None = None  # monotonic time a broker last answered
        self._kafka_failed = False  # the last poll raised
        # Redis lost counting state (see WindowCounter.apply): where each partition must be
        # read again from, applied by the poll loop; polls fetched meanwhile are dropped
        self._resync: dict[TopicPartition, int] | None = None
        #: the task of the poll loop while it waits in a poll (:meth:`_wake` ends it early by
        #: cancelling that wait), and whether a wake-up did (its cancel is taken back)
        self._polling: asyncio.Task[Any] | None = None
        self._woken = False
        #: the poll loop hands the event loop over before its next poll (see HAND_OVER_S)
        self._hand_over = False
        #: the seek epoch the positions were read with (a seek raises it in Redis: the
        #: counter refuses polls of an older epoch), and the epoch to follow, once the poll
        #: loop re-reads every position (None: none pending)
        self.seek_epoch = 0
        self._follow_seek: int | None = None
        self.seeks_followed = 0
        self.window_floor = 0  # the highest open window id seen: ids never go back below it
        self.state_losses = 0  # times Redis was found to have lost counting state
        self.topic_missing = False  # the brokers do not know a named topic (waiting for it)
        self._missing: list[str] = []  # the named topics the brokers do not know
        # end offset of every partition of the topics read, owned here or not
        self.topic_ends: dict[TopicPartition, int] = {}
        self._topic_misses = 0
        # topic lifecycle (kafkaconsole.engine.topic_lifecycle): partitions held paused because
        # their topic ends below what was counted, until an operator accepts the reset
        self.lifecycle = TopicLifecycle(counter.redis, counter.keys, counter.history_limit)
        self._awaiting: dict[TopicPartition, TopicReset] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    def _make_consumer(self) -> AIOKafkaConsumer:
        k = self.app.kafka
        fetch_max, partition_max = fetch_sizes(len(self.app.consumers))
        phase = self._phase
        return AIOKafkaConsumer(
            group_id=self.cfg.effective_group_id,
            enable_auto_commit=False,
            # a fetch out of range raises instead of jumping silently (retention deleted what
            # was to be counted, or the topic was re-created): see _on_out_of_range, which also
            # applies the consumer's auto_offset_reset when nothing was counted or committed
            auto_offset_reset="none",
            max_poll_records=self.cfg.batch_size,
            fetch_max_wait_ms=self.app.fetch_wait_ms(phase),
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=self.app.group_heartbeat_ms(phase),
            max_poll_interval_ms=k.max_poll_interval_ms,
            request_timeout_ms=k.request_timeout_ms,
            isolation_level="read_committed",
            fetch_max_bytes=fetch_max,
            max_partition_fetch_bytes=partition_max,
            metadata_max_age_ms=k.metadata_max_age_ms,
            consumer_timeout_ms=self.app.fetcher_wake_ms(phase),
            **kafka_kwargs(k),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; commit and close on the way out."""
        consumer = self._make_consumer()
        self._consumer = consumer
        self._stop_event = stop
        stopped: asyncio.Future[Any] | None = None
        probe: asyncio.Task[None] | None = None
        try:
            await consumer.start()
            # subscribed after start: subscribed before, a start waits for the topic's
            # metadata and fails when the topic does not exist (auto-creation off); this way
            # the consumer waits for it, says so, and joins once it is created
            pattern = self.cfg.subscription_regex
            if pattern is not None:
                # topics created later join at the next metadata refresh (metadata_max_age_ms)
                consumer.subscribe(pattern=pattern, listener=_Listener(self))
            else:
                consumer.subscribe(list(self.topics), listener=_Listener(self))
            tune_gc()
            self._kafka_answered()
            probe = asyncio.create_task(
                self._probe_loop(stop), name=f"probe:{self.cfg.consumer_id}"
            )
            busy_ms = int(self.cfg.poll_timeout * 1000)
            idle_ms = int(max(self.cfg.poll_timeout, self.app.idle_poll_s()) * 1000)
            poller = asyncio.current_task()
            assert poller is not None, "ConsumerRunner.run runs in a task"
            stopped = asyncio.ensure_future(stop.wait())
            # a stop ends a waiting poll (which can block for a whole rebalance) at once
            stopped.add_done_callback(lambda _: self._wake())
            poll_failures = 0
            handed_over = time.monotonic()
            while not stop.is_set():
                if self._hand_over or time.monotonic() - handed_over >= HAND_OVER_S:
                    # the other tasks of the loop: a Redis call just started, heartbeats,
                    # fetches, the dispatch, other consumers
                    self._hand_over = False
                    await asyncio.sleep(0)
                    handed_over = time.monotonic()
                    if stop.is_set():
                        break
                self._apply_pause()
                if self._resync is not None and self._counting is None:
                    self._do_resync()
                if self._follow_seek is not None and self._counting is None:
                    await self._do_follow_seek()
                try:
                    # a poll can block for a whole rebalance: a stop request must not wait.
                    # The poll is awaited in this task, not in one of its own (a task per
                    # poll is an iteration of the event loop per poll, see HAND_OVER_S). A
                    # stop or a wake-up cancels this task while it waits in the poll (_wake)
                    # and the cancel is taken back here; aiokafka hands records out only
                    # after its last wait, so a cancelled poll loses none.
                    timeout_ms = busy_ms if self._pending() else idle_ms
                    self._polling = poller
                    cancelled = False
                    try:
                        batch = await consumer.getmany(
                            timeout_ms=timeout_ms, max_records=self.cfg.batch_size
                        )
                    except asyncio.CancelledError:
                        cancelled = True
                        # this runner is cancelled (not just its poll): on with the cancel;
                        # else a wake-up, or a wait of aiokafka's ended by a cancel of its own
                        if (poller.uncancel() if self._woken else poller.cancelling()) > 0:
                            raise
                        if stop.is_set():
                            break
                        continue  # woken: a seek to follow, a resync, a flush
                    finally:
                        self._polling = None
                        if self._woken:
                            self._woken = False
                            if not cancelled:  # the poll ended otherwise: take the cancel back
                                poller.uncancel()
                    self._kafka_failed = False
                    poll_failures = 0
                    if self._acl_refused:  # an ACL was granted: on with the group
                        self._acl_refused = False
                        self.state, self.last_error = ConsumerState.STARTING, None
                        log.info("%s: Kafka authorizes this consumer again", self.cfg.consumer_id)
                    if batch:
                        self._kafka_answered()
                except InvalidSessionTimeoutError as exc:
                    # the group coordinator refuses the configured timeout at every join: a
                    # configuration error, not an outage; this consumer stops, the rest go on
                    self.state = ConsumerState.ERROR
                    self.last_error = session_timeout_message(self.app.kafka.session_timeout_ms)
                    log.error("%s: %s", self.cfg.consumer_id, self.last_error)
                    raise ConsumerStopped(self.last_error) from exc
                except AUTHORIZATION_ERRORS as exc:
                    # a missing ACL is no outage: say which permission, show the error state,
                    # and try again now and then (granting it is enough, no restart)
                    self._kafka_failed = self._acl_refused = True
                    self.state = ConsumerState.ERROR
                    self._note_error(
                        authorization_message(
                            exc,
                            self.cfg.effective_group_id,
                            self.cfg.topic_label,
                            self.app.kafka,
                        )
                        or f"Kafka refused: {exc}"
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), ACL_RETRY_S)
                    continue
                except (OffsetOutOfRangeError, NoOffsetForPartitionError) as exc:
                    self._kafka_answered()
                    await self._on_out_of_range(exc, stop)
                    continue
                except KafkaError as exc:
                    self._kafka_failed = True
                    poll_failures += 1
                    self._note_error(f"Kafka poll failed: {type(exc).__name__}: {exc}")
                    with contextlib.suppress(TimeoutError):
                        delay = backoff_delay(poll_failures, WAIT_POLICY)
                        await asyncio.wait_for(stop.wait(), max(delay, 0.5))
                    continue
                self._note_highwaters(consumer)
                if batch:
                    self._note_times(batch)
                    await self._process(batch, stop)
                elif self._queued:
                    self._kick(flush=True)  # nothing came: count what waits
                if self.state == ConsumerState.STARTING and self.assigned:
                    self.state = ConsumerState.RUNNING
                await self._maybe_commit()
        except ConsumerStopped:
            pass
        finally:
            if stopped is not None:
                stopped.cancel()
            if probe is not None:
                probe.cancel()
                with contextlib.suppress(BaseException):
                    await probe
            with contextlib.suppress(Exception):  # an error of its own was raised already
                await self._settle()
            self._queued.clear()
            await self._commit()
            with contextlib.suppress(Exception):
                await consumer.stop()
            self._consumer = None
            if self.state != ConsumerState.ERROR:
                self.state = ConsumerState.STOPPED

    def _note_highwaters(self, consumer: AIOKafkaConsumer) -> None:
        """Take each assigned partition's highwater from the last fetch, and note when it was
        last caught up (the lower bound of its oldest unconsumed event's time)."""
        now_ms = time.time_ns() // 1_000_000
        parts = self.parts
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            st = parts.get(tp)
            if hw is not None:
                if st is None:
                    st = parts[tp] = PartitionState()
                # never below what refresh_positions learnt from the brokers
                if st.highwater is not None and st.highwater > hw:
                    hw = st.highwater
                st.highwater = hw
            if st is None or st.highwater is None:
                continue
            pos = st.next if st.next is not None else st.position
            if pos is not None and pos >= st.highwater:
                st.caught_up_ms = now_ms

    def _pending(self) -> bool:
        """Whether the poll loop has work due soon (polls to count, a count in flight, a
        resync or a seek to follow, offsets to commit): it then polls with ``poll_timeout``;
        else an idle poll may wait longer (:meth:`AppConfig.idle_poll_s`)."""
        if self._queued or self._counting is not None:
            return True
        if self._resync is not None or self._follow_seek is not None:
            return True
        return any(st.next is not None and st.committed != st.next for st in self.parts.values())

    def _wake(self) -> None:
        """End a waiting poll now: the loop has something to do before the next one."""
        poller = self._polling
        if poller is not None and not self._woken and poller is not asyncio.current_task():
            self._woken = True
            poller.cancel()

    @property
    def kafka_ok(self) -> bool:
        """Whether the brokers answer this consumer: it started, its last poll did not fail
        and a broker answered (records or the end-offset probe) within KAFKA_SILENCE_S."""
        contact = self._kafka_contact
        if contact is None or self._kafka_failed:
            return False
        return time.monotonic() - contact < KAFKA_SILENCE_S

    def _kafka_answered(self) -> None:
        self._kafka_contact = time.monotonic()

    def known_brokers(self) -> dict[int, str] | None:
        """The brokers in this consumer's view of the cluster metadata (id -> host:port), or
        None before it has any."""
        consumer = self._consumer
        if consumer is None:
            return None
        brokers = consumer._client.cluster.brokers()
        # node ids only: a metadata view made from bootstrap servers names them "bootstrap-N"
        return {
            b.nodeId: f"{b.host}:{b.port}" for b in brokers if isinstance(b.nodeId, int)
        } or None

    async def refresh_metadata(self) -> None:
        """Ask the brokers for the cluster metadata now (a broker that came back shows up)."""
        consumer = self._consumer
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer._client.force_metadata_update(), PROBE_TIMEOUT_S)

    def processor_stall(self) -> ProcessorStall | None:
        """What holds this consumer's processor up, if anything (see engine.processing)."""
        return self.processors.stall() if self.processors is not None else None

    # ---- time lag (per poll and partition, never per record) -------------------------------
    def _state(self, tp: TopicPartition) -> PartitionState:
        st = self.parts.get(tp)
        if st is None:
            st = self.parts[tp] = PartitionState()
        return st

    def next_offset(self, tp: TopicPartition) -> int | None:
        """The next offset of ``tp`` this instance counts (None: not known yet)."""
        st = self.parts.get(tp)
        return st.next if st is not None else None

    def _note_times(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batch.items():
            if records:
                st = self._state(tp)
                self._drop_counted(st)
                first, last = records[0], records[-1]
                if first.timestamp is not None and first.timestamp >= 0:
                    entry = (first.offset, first.timestamp, last.offset + 1, last.timestamp)
                    st.unapplied.append(entry)

    @staticmethod
    def _drop_counted(st: PartitionState) -> None:
        pending = st.unapplied
        done = st.next
        while pending and done is not None and pending[0][2] <= done:
            _, _, _, last_ts = pending.popleft()
            if st.last_ts is None or last_ts > st.last_ts:
                st.last_ts = last_ts

    def oldest_unconsumed_ts(self, tp: TopicPartition) -> int | None:
        """Timestamp of ``tp``'s oldest unconsumed event: exact while a polled batch waits to
        be counted (its first record), else a lower bound (the newest event counted, or when
        the partition was last caught up). None when neither is known."""
        st = self.parts.get(tp)
        if st is None:
            return None
        self._drop_counted(st)
        if st.unapplied:
            return st.unapplied[0][1]
        bounds = [t for t in (st.last_ts, st.caught_up_ms) if t is not None]
        return max(bounds) if bounds else None

    def _forget_times(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            st = self.parts.get(tp)
            if st is not None:
                st.forget_times()

    # ---- the hot path ----------------------------------------------------------------------
    # The Redis update of a poll runs while the loop polls and classifies the next ones, so
    # the round trip no longer stalls the loop. Polls queue (at most MAX_QUEUED_POLLS, then
    # the loop waits) and go to Redis together in one call, each as its own entries of the
    # script's delta list: the script applies them one after the other exactly as separate
    # calls would (per entry it skips what the stored offset says was counted and advances
    # it), in one atomic step. A poll is sent at once when the consumer has caught up (so
    # triggers are not delayed), else once COALESCE_POLLS are queued: while behind, the next
    # poll is already on its way, and fewer calls leave more of the core for records.
    # Bad events are dead-lettered only once everything polled before them was counted; a
    # pause, an empty poll, a rebalance's commit, a stop on a bad event and the final commit
    # first count what is queued.
    async def _process(self, batch: dict[TopicPartition, list[Any]], stop: asyncio.Event) -> None:
        if self._drop_if_resyncing(batch):
            return
        on_error = self.cfg.error_handling.on_error
        outcomes = None
        if self.processors is not None:
            # user code runs off the loop (kafkaconsole.engine.processing), in order
            batch = self._above_floor(batch)
            # one topic: records named by partition number (as messages say); many: by topic too
            many = len(self.topics) != 1
            items = [
                (tp if many else tp.partition, r.offset, r.value)
                for tp, recs in batch.items()
                for r in recs
            ]
            outcomes = await self.processors.classify(items, stop, stop_at_bad=on_error == "stop")
            if outcomes is None or self._drop_if_resyncing(batch):
                return  # stopping (or Redis lost state meanwhile): the records are read again
        deltas, bad, _ = build_batch(
            self.classifier,
            batch,
            self.parts,
            stop_at_bad=on_error == "stop",
            outcomes=outcomes,
        )
        if bad:
            await self._settle()
            if self._drop_if_resyncing(batch):
                return
            for b in bad:
                log.warning("%s: bad event %s", self.cfg.consumer_id, b.describe())
            if on_error == "dlq":
                try:
                    # an unreachable DLQ holds the partition at the bad event until it is back
                    refused = await retry_call(
                        lambda: self.dlq.publish(
                            self.cfg.dlq_topic, self.cfg.consumer_id, bad, policy=self.policy
                        ),
                        WAIT_POLICY,
                        retry_on=(DeadLetterError,),
                        what=f"{self.cfg.consumer_id}: dead-lettering {len(bad)} bad event(s)",
                        attempts=0,
                        stop=stop,
                        on_error=lambda _, exc: self._note_error(str(exc)),
                        logger=log,
                    )
                except DeadLetterError:
                    return  # stopping, nothing applied: the bad events will be read again
                self.dlq_count += len(bad) - len(refused)
                if refused:
                    await self._record_refused(refused)
        if deltas:
            if not self._queued:
                self._queued_at = time.monotonic()
            self._queued.append(deltas)
            self._kick(flush=self.paused or not self._behind(deltas))
            if len(self._queued) >= MAX_QUEUED_POLLS:
                await self._settle()
        if bad and on_error == "stop":
            await self._settle()
            first = bad[0]
            self.state = ConsumerState.ERROR
            self.last_error = f"stopped at bad event {first.describe()}"
            log.error("%s: %s", self.cfg.consumer_id, self.last_error)
            raise ConsumerStopped(self.last_error)

    def _above_floor(
        self, batch: dict[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[Any]]:
        """The records of ``batch`` not yet counted by this instance (as build_batch keeps)."""
        out = {}
        for tp, records in batch.items():
            st = self.parts.get(tp)
            floor = st.next if st is not None and st.next is not None else -1
            if records and records[0].offset < floor:
                records = [r for r in records if r.offset >= floor]
            if records:
                out[tp] = records
        return out

    async def _record_refused(self, refused: list[Refused]) -> None:
        """Bad events even the DLQ refused: logged, counted (metrics), recorded in Redis and
        skipped (they are counted as errors with the rest of the poll)."""
        self.dlq_refused += len(refused)
        for r in refused:
            self._note_error(f"bad event not dead-lettered, skipped: {r.describe()}")
        entries = [
            {
                "topic": r.event.topic,
                "partition": r.event.partition,
                "offset": r.event.offset,
                "bytes": len(r.event.value or b""),
                "stage": r.event.stage,
                "error": f"{r.event.error_class}: {r.event.message}"[:500],
                "dlq_error": r.error[:500],
            }
            for r in refused
        ]
        # logged by retry_call when it gives up; the log lines above name every event
        with contextlib.suppress(RedisError, OSError):
            await retry_call(
                lambda: self.counter.record_refused(entries),
                self.policy,
                retry_on=(RedisError, OSError),
                what=f"{self.cfg.consumer_id}: recording {len(refused)} refused event(s)",
                logger=log,
            )

    def _behind(self, deltas: list[PartitionDelta]) -> bool:
        """Whether a partition of this poll holds more than was polled, by the highwater of
        its latest fetch (only ever known-present records: the next poll has some)."""
        consumer = self._consumer
        if consumer is None:
            return False
        for d in deltas:
            hw = consumer.highwater(TopicPartition(d.topic, d.partition))
            if hw is not None and d.next_offset < hw:
                return True
        return False

    def _kick(self, flush: bool) -> None:
        """Start counting the queued polls when due: now if ``flush``, else once enough."""
        if flush:
            self._flush = True
        if self._counting is None and self._queued and self._due():
            assert self._stop_event is not None
            self._counting = asyncio.create_task(self._count_queued(self._stop_event))
            self._hand_over = True  # the poll loop lets it send its call before polling on

    def _due(self) -> bool:
        return self._flush or coalesce_due(len(self._queued), time.monotonic() - self._queued_at)

    async def _count_queued(self, stop: asyncio.Event) -> None:
        """Count the queued polls, in order, one Redis call for all that are queued."""
        try:
            while self._queued and self._due():
                polls, self._queued = self._queued, []
                self._flush = False
                deltas = polls[0] if len(polls) == 1 else [d for poll in polls for d in poll]
                parts = self.parts
                expected = {}
                for d in deltas:
                    tp = TopicPartition(d.topic, d.partition)
                    st = parts.get(tp)
                    if st is not None and st.next is not None:
                        expected[tp] = st.next
                try:
                    result = await self._apply(deltas, stop, expected)
                except RedisBehind as exc:
                    self._start_resync(exc.stored, deltas)
                    return
                except SeekMoved as exc:
                    self.follow_seek(exc.epoch)
                    return
                if result is None:
                    # stopping with Redis unreachable: nothing of these polls was counted, and
                    # no later poll may be (it would advance the offsets past them)
                    self._queued.clear()
                    return
                for d in deltas:
                    tp = TopicPartition(d.topic, d.partition)
                    st = parts.get(tp)
                    if st is None:
                        st = parts[tp] = PartitionState()
                    if st.next is None or d.next_offset > st.next:
                        st.next = d.next_offset
                self.fault_hook("after_apply")
                if result.lost:
                    self._note_lost(result.lost)
                self.window_floor = max(self.window_floor, result.window_id)
                self.rate.add(result.added)
                self.errors += result.errors
                self.on_applied(result)
        finally:
            self._counting = None
            if self._resync is not None or self._follow_seek is not None:
                self._wake()  # the loop does it now rather than after its poll

    async def _settle(self) -> None:
        """Count every queued poll now and wait until done (re-raising what counting raised)."""
        while True:
            if self._queued:
                self._kick(flush=True)
            task = self._counting
            if task is None:
                return
            await task

    async def _apply(
        self, deltas: list[Any], stop: asyncio.Event, expected: dict[TopicPartition, int]
    ) -> ApplyResult | None:
        """Count ``deltas``, waiting for Redis as long as it takes (None: stopping first)."""

        def failed(_: int, exc: BaseException) -> None:
            self.redis_ok = False
            self._note_error(f"Redis update failed (will retry): {type(exc).__name__}: {exc}")

        try:
            result = await retry_call(
                lambda: self.counter.apply(deltas, expected, self.window_floor, self.seek_epoch),
                WAIT_POLICY,
                retry_on=(RedisError, OSError),
                what=f"{self.cfg.consumer_id}: counting a poll",
                attempts=0,
                stop=stop,
                on_error=failed,
                logger=log,
            )
        except (RedisError, OSError):
            return None  # stopping: nothing of these polls was counted
        if not self.redis_ok:
            log.info("%s: Redis is reachable again", self.cfg.consumer_id)
        self.redis_ok = True
        return result

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.error("%s: %s", self.cfg.consumer_id, message)
        self.last_error = message

    # ---- Redis lost counting state ---------------------------------------------------------
    # Redis may come back without its last writes (restarted from an RDB snapshot, a machine
    # crash under AOF everysec, a failover to a replica that lagged): its stored offsets are
    # then below what this consumer saw stored. Counting on from here would silently skip the
    # events in between, so the counter refuses, and the consumer reads them again from where
    # Redis says counting stopped: the same events close the same windows (same ids, so a
    # pipeline already run for one sees its idempotency key again). Every poll fetched after
    # the refused one is dropped and its partition read again from what Redis holds.
    def _start_resync(
        self, stored: dict[TopicPartition, int], deltas: list[PartitionDelta]
    ) -> None:
        targets: dict[TopicPartition, int] = {}
        for d in deltas + [d for poll in self._queued for d in poll]:
            tp = TopicPartition(d.topic, d.partition)
            if tp not in targets:
                counted = self.next_offset(tp)
                targets[tp] = counted if counted is not None else d.first_offset
        self._queued.clear()
        targets.update(stored)
        for tp, o in stored.items():  # what a commit on the way out may say from now on
            st = self.parts.get(tp)
            if st is not None and st.next is not None:
                st.next = min(st.next, o)
        self.state_losses += 1
        for tp, o in sorted(stored.items()):
            self._note_error(
                f"Redis lost counting state: partition {tp.partition} of {tp.topic} is stored "
                f"at {o}, below what was counted; reading again from {o}"
            )
        self._resync = targets
        self._wake()

    def _drop_if_resyncing(self, batch: dict[TopicPartition, list[Any]]) -> bool:
        """While a resync is pending, a polled batch is dropped and read again (while a seek
        is to be followed, it is dropped: the positions it was read from are moved)."""
        if self._follow_seek is not None:
            return True
        if self._resync is None:
            return False
        for tp, records in batch.items():
            if records:
                counted = self.next_offset(tp)
                self._resync.setdefault(tp, counted if counted is not None else records[0].offset)
        return True

    def _do_resync(self) -> None:
        targets, self._resync = self._resync or {}, None
        consumer = self._consumer
        if consumer is None:
            return
        owned = set(consumer.assignment())
        for tp, offset in sorted(targets.items()):
            if tp not in owned:
                continue
            consumer.seek(tp, offset)
            st = self.parts.get(tp)
            if st is not None:
                st.unapplied.clear()
                st.committed = None
        log.warning(
            "%s: reading %s again after Redis lost state",
            self.cfg.consumer_id,
            describe_partitions(tp for tp in targets if tp in owned),
        )

    # ---- seek ------------------------------------------------------------------------------
    # An operator's seek (kafkaconsole seek, engine/seek.py) rewrites the stored offsets and
    # raises the consumer's seek epoch in Redis in one step. This instance learns it from the
    # control listener (within a second) or from the counter, which refuses a poll of an older
    # epoch. Either way the poll loop then drops what is queued or in flight, re-reads every
    # owned partition's stored offset with the new epoch, and seeks there.
    def follow_seek(self, epoch: int) -> None:
        """Re-read every position before counting again (a seek raised the epoch to
        ``epoch``)."""
        if epoch > self.seek_epoch and (self._follow_seek is None or epoch > self._follow_seek):
            self._follow_seek = epoch
            self._queued.clear()
            self._wake()

    async def _do_follow_seek(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        self._queued.clear()
        owned = sorted(consumer.assignment())
        try:
            stored, epoch = await retry_call(
                lambda: self.counter.positions(owned),
                ASSIGN_POLICY,
                retry_on=(RedisError, OSError),
                what=f"{self.cfg.consumer_id}: reading the positions a seek set",
                stop=self._stop_event,
                on_error=lambda _, exc: self._note_error(f"Redis unreachable after a seek: {exc}"),
                logger=log,
            )
        except (RedisError, OSError):
            return  # still pending: the next loop tries again
        self._follow_seek = None
        self._queued.clear()
        for tp in owned:
            st = self._state(tp)
            st.unapplied.clear()
            st.committed = None
            if tp in stored:
                consumer.seek(tp, stored[tp])
                st.next = stored[tp]
        self.seek_epoch = epoch
        self.seeks_followed += 1
        log.info(
            "%s: following a seek (epoch %d): %s",
            self.cfg.consumer_id,
            epoch,
            ", ".join(
                f"{tp.topic}[{tp.partition}] from {stored[tp]}" for tp in owned if tp in stored
            )
            or "no partition owned here",
            extra={"event": "seek", "consumer_id": self.cfg.consumer_id},
        )

    def _note_lost(self, lost: dict[TopicPartition, int]) -> None:
        self.state_losses += 1
        parts = describe_partitions(lost)
        self._note_error(
            f"Redis lost counting state of {parts}: the events "
            f"counted before (and the open window) are gone from Redis; counting goes on from "
            f"offset(s) {', '.join(str(lost[tp]) for tp in sorted(lost))} with window ids from "
            f"{self.window_floor}"
        )

    # ---- topic lifecycle (kafkaconsole.engine.topic_lifecycle) -----------------------------
    # The Kafka consumer runs with auto_offset_reset "none": a fetch out of range raises here
    # with the offset it fetched. Below the log start: retention deleted events never counted
    # (counted from the log start, the lost range recorded). Above the end: the topic was
    # re-created (on_topic_reset: wait for accept-reset, or restart from the log start).
    async def _on_out_of_range(self, exc: KafkaError, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None
        owned = consumer.assignment()
        if isinstance(exc, NoOffsetForPartitionError):
            # nothing counted in Redis nor committed to Kafka: where auto_offset_reset says
            tps = [tp for tp in exc.args[:1] if isinstance(tp, TopicPartition) and tp in owned]
            with contextlib.suppress(KafkaError):
                if self.cfg.auto_offset_reset == "earliest":
                    await consumer.seek_to_beginning(*tps)
                else:
                    await consumer.seek_to_end(*tps)
            return
        fetched = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        tps = sorted(tp for tp in fetched if tp in owned)
        if not tps:
            return
        await self._settle()  # everything read before the gap is counted first
        try:
            starts = await asyncio.wait_for(consumer.beginning_offsets(tps), PROBE_TIMEOUT_S)
            ends = await asyncio.wait_for(consumer.end_offsets(tps), PROBE_TIMEOUT_S)
            stored = await self.counter.stored_offsets(tps)
            for tp in tps:
                await self._out_of_range(tp, fetched[tp], starts[tp], ends[tp], stored.get(tp))
        except (KafkaError, TimeoutError, RedisError, OSError) as error:
            # the fetch raises again: tried again then
            self._note_error(f"cannot tell why a fetch was out of range: {error!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _out_of_range(
        self, tp: TopicPartition, fetched: int, start: int, end: int, stored: int | None
    ) -> None:
        consumer = self._consumer
        assert consumer is not None
        kind = classify(fetched, start, end)
        if kind == RETENTION:
            loss = await self.lifecycle.record_loss(tp.topic, tp.partition, fetched, start)
            if loss is not None:
                self._note_error(loss.describe())
            self._restart_at(tp, max(start, stored or 0))
        elif kind == RECREATED:
            if stored is None or stored <= end:
                # nothing counted here in Redis (a stale committed offset): from the log start
                self._restart_at(tp, start)
                return
            reset = TopicReset(tp.topic, tp.partition, stored, start, end, time.time_ns() // 10**6)
            await self.lifecycle.flag(reset)
            if self.cfg.on_topic_reset == "restart":
                done = await self.lifecycle.accept([(tp.topic, tp.partition)])
                closed = (
                    f" (window {done.closed_window_id} closed first)"
                    if done.closed_window_id is not None
                    else ""
                )
                log.warning(
                    "%s: %s; on_topic_reset = restart: counting it again from offset %d%s",
                    self.cfg.consumer_id,
                    reset.describe(),
                    start,
                    closed,
                )
                self._restart_at(tp, start)
            else:
                consumer.pause(tp)
                self._awaiting[tp] = reset
                self._note_error(
                    f"{reset.describe()}; counting nothing there until `kafkaconsole consumer "
                    f"accept-reset {self.cfg.consumer_id}` (on_topic_reset = wait)"
                )
        # else: in range by now (a transient answer): the next fetch goes on

    def _restart_at(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset``, which Redis now holds as the next offset to count."""
        consumer = self._consumer
        assert consumer is not None
        consumer.seek(tp, offset)
        st = self._state(tp)
        st.next = offset
        st.committed = None
        st.forget_times()

    async def _check_ends(self) -> None:
        """A partition whose end offset is below the next offset to count: its topic was
        re-created. Brokers that answer a fetch beyond the end with no records, rather than
        out of range, are caught here (once a second, from the probe loop).

        Suspected when the latest fetch's highwater and the last end-offset probe are both
        below; decided only by an end offset asked for now. Neither suspect figure is proof:
        just after a leader change the new leader's highwater lags the old one's (it learns
        it from its followers' next fetch), and the last probe may be from before, taken
        while the old leader was still catching its followers up. A ListOffsets answer is
        safe: a new leader refuses it (OFFSET_NOT_AVAILABLE) until its highwater has reached
        where its leadership began (Kafka's KIP-207), which is past everything read."""
        consumer = self._consumer
        if consumer is None:
            return
        suspects = []
        for tp in consumer.assignment():
            st = self.parts.get(tp)
            hw, probed = consumer.highwater(tp), self.topic_ends.get(tp)
            if tp in self._awaiting or st is None or st.next is None or hw is None:
                continue
            if probed is not None and max(hw, probed) < st.next:
                suspects.append((tp, st.next))
        if not suspects:
            return
        tps = [tp for tp, _ in suspects]
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(tps), PROBE_TIMEOUT_S)
            below = []
            for tp, counted in suspects:
                # the larger with the fetch's highwater, as lag takes it: a broker that
                # answers ListOffsets wrongly (Tansu) has no leader changes either
                end = max(ends.get(tp) or 0, consumer.highwater(tp) or 0)
                if tp in ends and end < counted:
                    below.append((tp, counted, end))
            if not below:
                return
            starts = await asyncio.wait_for(
                consumer.beginning_offsets([tp for tp, _, _ in below]), PROBE_TIMEOUT_S
            )
            stored = await self.counter.stored_offsets([tp for tp, _, _ in below])
            for tp, counted, end in below:
                if tp in consumer.assignment() and self.next_offset(tp) == counted:
                    await self._out_of_range(tp, counted, starts[tp], end, stored.get(tp))
        except (KafkaError, TimeoutError, RedisError, OSError) as error:
            log.debug("%s: end offsets not checked: %r", self.cfg.consumer_id, error)

    async def _resume_accepted(self) -> None:
        """Resume the partitions held for a re-created topic once accept-reset moved their
        stored offset (once a second, from the probe loop)."""
        consumer = self._consumer
        if not self._awaiting or consumer is None:
            return
        owned = consumer.assignment()
        for tp in [tp for tp in self._awaiting if tp not in owned]:
            del self._awaiting[tp]  # revoked: its next owner sees it again
        tps = sorted(self._awaiting)
        try:
            waiting = await self.lifecycle.waiting([(tp.topic, tp.partition) for tp in tps])
            stored = await self.counter.stored_offsets(tps)
        except (RedisError, OSError):
            return
        for tp in tps:
            if (tp.topic, tp.partition) in waiting:
                continue
            reset = self._awaiting.pop(tp)
            offset = stored.get(tp, reset.log_start)
            self._restart_at(tp, offset)
            if not self.paused:
                consumer.resume(tp)
            if self.last_error is not None and self.last_error.startswith(reset.describe()):
                self.last_error = None
            log.warning(
                "%s: reset of %s partition %d accepted: counting it again from offset %d",
                self.cfg.consumer_id,
                tp.topic,
                tp.partition,
                offset,
            )

    # ---- pause -----------------------------------------------------------------------------
    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self._apply_pause()

    def _apply_pause(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        parts = consumer.assignment()
        if self.paused:
            if parts:
                consumer.pause(*parts)
            if self.state in (ConsumerState.RUNNING, ConsumerState.STARTING):
                self.state = ConsumerState.PAUSED
            if self._queued:
                self._kick(flush=True)  # what was polled before the pause is counted now
        else:
            if self._pause_applied and parts:
                consumer.resume(*parts)
            if self.state == ConsumerState.PAUSED:
                self.state = ConsumerState.RUNNING
        self._pause_applied = self.paused

    # ---- rebalance -------------------------------------------------------------------------
    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.state = ConsumerState.REBALANCING if self.state != ConsumerState.ERROR else self.state
        with contextlib.suppress(Exception):  # the loop sees the same error when it settles
            await self._settle()
        await self._commit(only=set(revoked))
        self._forget_times(set(revoked))
        for tp in revoked:
            if self._resync is not None:
                self._resync.pop(tp, None)
            st = self.parts.get(tp)
            if st is not None:  # the last commit is kept: it is what Kafka holds
                st.next = st.highwater = st.position = None
            self.assigned.discard(tp)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._kafka_answered()  # the group coordinator just answered
        parts = sorted(assigned)
        stored: dict[TopicPartition, int] = {}
        try:
            stored, epoch = await retry_call(
                lambda: self.counter.positions(parts),
                ASSIGN_POLICY,
                retry_on=(RedisError, OSError),
                what=f"{self.cfg.consumer_id}: reading stored offsets on assignment",
                stop=self._stop_event,
                on_error=lambda _, exc: self._note_error(f"Redis unreachable on assignment: {exc}"),
                logger=log,
            )
        except (RedisError, OSError):
            # reading from Kafka's committed offsets instead: they never run ahead of what
            # Redis counted, and the counting script skips whatever it counted already
            log.warning(
                "%s: %s start from Kafka's committed offsets (Redis did not "
                "answer); nothing is counted twice",
                self.cfg.consumer_id,
                describe_partitions(parts),
            )
        else:
            if epoch > self.seek_epoch:
                # a seek before this assignment: the positions just read are its; the other
                # partitions owned here re-read theirs before counting again
                if self.assigned - set(parts):
                    self.follow_seek(epoch)
                else:
                    self.seek_epoch = epoch
        self._forget_times(set(parts))
        for tp in assigned:
            if tp in stored:
                consumer.seek(tp, stored[tp])
                self._state(tp).next = stored[tp]
        self.assigned = set(consumer.assignment())
        if self.paused and assigned:
            consumer.pause(*assigned)
        if self.state != ConsumerState.ERROR:
            self.state = ConsumerState.PAUSED if self.paused else ConsumerState.RUNNING
        log.info(
            "%s: assigned partitions %s",
            self.cfg.consumer_id,
            describe_partitions(parts) or "(none)",
            extra={"event": "rebalance", "consumer_id": self.cfg.consumer_id},
        )

    # ---- commits ---------------------------------------------------------------------------
    async def _maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.app.kafka.commit_interval:
            await self._commit()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        self._last_commit = time.monotonic()
        owned = consumer.assignment()
        offsets = {
            tp: st.next
            for tp, st in self.parts.items()
            if st.next is not None
            and tp in owned
            and (only is None or tp in only)
            and st.committed != st.next
        }
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            for tp, o in offsets.items():
                self.parts[tp].committed = o
        except Exception as exc:  # commits are advisory: Redis holds the truth
            log.debug("%s: commit skipped: %s", self.cfg.consumer_id, exc)

    # ---- status ----------------------------------------------------------------------------
    async def _probe_loop(self, stop: asyncio.Event) -> None:
        """At once, then once per :meth:`AppConfig.probe_interval_s` (a second, longer with
        hundreds of consumers in the process) at this consumer's own point of the interval
        (:func:`consumer_phase`: consumers started together do not probe together, and a
        hanging broker delays nothing else): refresh_positions."""
        interval = self.app.probe_interval_s()
        while not stop.is_set():
            await self.refresh_positions()
            await self._check_ends()
            await self._resume_accepted()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), next_probe_in(time.monotonic(), interval, self._phase)
                )

    async def refresh_positions(self) -> None:
        """Learn the fetch position of assigned partitions that have had no records yet, and
        the end offset of every assigned one: a fetch's highwater goes stale while a slow
        consumer works through prefetched records or is paused, and lag must stay true."""
        consumer = self._consumer
        if consumer is None:
            return
        assigned = list(consumer.assignment())
        # a named topic unknown to the metadata (a list of topics may have some assigned and
        # some not created yet): ask for the metadata, as with nothing assigned at all
        unknown = [t for t in self.topics if consumer.partitions_for_topic(t) is None]
        if not assigned or unknown:
            with contextlib.suppress(Exception):  # ask the brokers which topics exist
                topics = await asyncio.wait_for(consumer.topics(), PROBE_TIMEOUT_S)
                self._kafka_answered()
                await self._check_topic_exists(consumer, topics)
            if not assigned:
                return
        # every partition of the topics read, owned or not: the fleet's lag covers partitions
        # no instance owns right now (their lag is measured from what Redis says was counted)
        every = set(assigned)
        for topic in consumer.subscription():
            for p in consumer.partitions_for_topic(topic) or ():
                every.add(TopicPartition(topic, p))
        with contextlib.suppress(Exception):
            ends = await asyncio.wait_for(consumer.end_offsets(sorted(every)), PROBE_TIMEOUT_S)
            self._kafka_answered()
            self.topic_ends = {tp: end for tp, end in ends.items() if end is not None}
            for tp, end in ends.items():
                if tp in self.assigned and end is not None:
                    st = self._state(tp)
                    if st.highwater is None or end > st.highwater:
                        st.highwater = end
            # an idle poll may wait several seconds: the probe keeps "caught up" fresh
            self._note_highwaters(consumer)
        for tp in assigned:
            if self.next_offset(tp) is not None:
                continue
            with contextlib.suppress(Exception):
                position = await asyncio.wait_for(consumer.position(tp), PROBE_TIMEOUT_S)
                self._state(tp).position = position

    async def _check_topic_exists(self, consumer: AIOKafkaConsumer, topics: set[str]) -> None:
        """With a named topic not assigned: say so once if it does not exist (the consumer
        waits for it); once it exists, refresh the metadata at once so the group assigns its
        partitions now rather than at the next periodic refresh (minutes away). A pattern
        names no topic: it waits for a match quietly (the metadata refresh brings it)."""
        missing = [t for t in self.topics if t not in topics]
        if missing:
            # a broker that creates topics on first use does so on the group's first metadata
            # request: only a second probe that misses it means the topic does not exist
            self._topic_misses += 1
            if self._topic_misses >= 2:
                if (
                    self.topic_missing
                    and missing != self._missing
                    and self.last_error == missing_topics_message(self._missing)
                ):
                    self.last_error = None  # another set of topics is missing now
                self._note_error(missing_topics_message(missing))
                self.topic_missing = True
                self._missing = missing
            return
        self._topic_misses = 0
        if self.topic_missing:
            self.topic_missing = False
            if self.last_error == missing_topics_message(self._missing):
                self.last_error = None
            log.info(
                "%s: topic(s) %s exist now; joining",
                self.cfg.consumer_id,
                ", ".join(self._missing),
            )
            self._missing = []
            await consumer._client.force_metadata_update()

    def partitions(self) -> tuple[PartitionSnapshot, ...]:
        out = []
        now_ms = time.time_ns() // 1_000_000
        for tp in sorted(self.assigned):
            st = self._state(tp)
            pos = st.next if st.next is not None else st.position
            self._drop_counted(st)
            pending = st.unapplied
            if pending and pos is not None:
                # the fetch position is past a polled batch that is not counted yet (e.g. held
                # at a bad event the DLQ does not accept): those events still wait
                pos = min(pos, pending[0][0])
            hw = st.highwater
            lag = partition_lag(hw, pos)
            oldest = self.oldest_unconsumed_ts(tp) if lag else None
            tl = time_lag_seconds(lag, oldest, now_ms)
            out.append(PartitionSnapshot(tp.partition, pos, hw, lag, tl, oldest, tp.topic))
        return tuple(out)
