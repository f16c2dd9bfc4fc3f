"""Dead-letter publishing for bad events, with Kafka Connect's error headers.

Bad events are produced to the consumer's DLQ topic and acknowledged *before* the batch that
skips them is applied in Redis, so the stored offsets never move past an unrecorded bad event.
A crash between the two can publish a bad event twice; the headers (topic, partition, offset,
consumer id) let a reader drop such a duplicate.

Each record keeps the original key, headers and timestamp, and carries Kafka Connect's
``__connect.errors.*`` headers (see :func:`dlq_headers`). No single event may block its
consumer: a record larger than the DLQ accepts (:data:`DLQ_MAX_RECORD_BYTES`, the producer's
request limit) is cut to fit, with headers giving the original size and what was cut; a
record the brokers refuse for what it is (too large for the topic, invalid) is tried again
smaller under the consumer's retry policy and, if still refused, returned as *refused* so the
consumer records it as an error and goes on. A DLQ that is unreachable is different: nothing
is wrong with the event, so the consumer waits for the DLQ (:class:`DeadLetterError`).

A producer can also stop delivering for good: after a broker it wrote to died, aiokafka's
producer may keep a batch for it that it never sends again, though the cluster moved on
(aio-libs/aiokafka#642). So a publish that gets no answer within its timeout has the sink
replace its producer (when given a way to make one: the engine's is): the next attempt goes
through a new client, and the old one is stopped in the background (at most
:data:`RETIRE_TIMEOUT_S`). What the old one still held may then reach the DLQ as well: a
duplicate the headers let a reader drop, as after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)

from kafkaconsole.config.models import RetryPolicy
from kafkaconsole.engine.events import BadEvent
from kafkaconsole.engine.retry import retry_call

log = logging.getLogger("kafkaconsole.dlq")

HEADER_PREFIX = "__connect.errors."
#: The largest DLQ record produced: aiokafka's default ``max_request_size`` and Kafka's
#: default ``message.max.bytes`` are both about 1 MiB; the margin covers the batch framing.
DLQ_MAX_RECORD_BYTES = 1_048_576 - 16 * 1024
#: kafkaconsole's own headers on a record that was cut to fit.
ORIGINAL_SIZE_HEADER = "kafkaconsole.original.size"
TRUNCATED_HEADER = "kafkaconsole.truncated"
MAX_MESSAGE_CHARS = 1000
MAX_STACKTRACE_CHARS = 8000
#: A replaced DLQ producer gets this long to deliver what it holds and stop.
RETIRE_TIMEOUT_S = 30.0
#: Making and starting a new DLQ producer takes at most this long (else the old one stays).
RENEW_TIMEOUT_S = 30.0

#: Broker answers that say the record itself cannot be written (retrying it unchanged fails).
RECORD_REFUSED = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidMessageError,
    CorruptRecordException,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
)


class DeadLetterError(RuntimeError):
    """The DLQ topic is not reachable (or did not answer in time): wait and try again."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A bad event the DLQ would not take even cut down, after the retry policy."""

    event: BadEvent
    error: str

    def describe(self) -> str:
        return f"{self.event.describe()}; the DLQ refused it: {self.error}"


def dlq_headers(bad: BadEvent, consumer_id: str, task_id: str) -> list[tuple[str, bytes]]:
    """Kafka Connect's error headers (the meaning Connect documents for each):

    ``topic``/``partition``/``offset``: where the failed record was read; ``connector.name``:
    the consumer (kafkaconsole's connector); ``task.id``: the instance that handled it;
    ``stage``: the step that failed (``decode``, ``validate`` or ``process``: Connect's
    VALUE_CONVERTER and TRANSFORMATION stages); ``class.name``: the component that failed in
    that step; ``exception.class.name``/``exception.message``/``exception.stacktrace``: the
    error raised.
    """
    h = HEADER_PREFIX
    return [
        (f"{h}topic", bad.topic.encode()),
        (f"{h}partition", str(bad.partition).encode()),
        (f"{h}offset", str(bad.offset).encode()),
        (f"{h}connector.name", consumer_id.encode()),
        (f"{h}task.id", task_id.encode()),
        (f"{h}stage", bad.stage.encode()),
        (f"{h}class.name", bad.component.encode()),
        (f"{h}exception.class.name", bad.error_class.encode()),
        (f"{h}exception.message", bad.message[:MAX_MESSAGE_CHARS].encode()),
        (f"{h}exception.stacktrace", bad.stacktrace[-MAX_STACKTRACE_CHARS:].encode()),
        ("kafkaconsole.consumer_id", consumer_id.encode()),
    ]


def _headers_size(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(k.encode()) + len(v) + 10 for k, v in headers)


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None


def dead_letter_record(
    bad: BadEvent, consumer_id: str, task_id: str, limit: int = DLQ_MAX_RECORD_BYTES
) -> DeadLetterRecord:
    """The DLQ record of ``bad``: its key, value, headers and timestamp, plus Connect's error
    headers; cut to at most about ``limit`` bytes (value first, then the original headers and
    the key), with headers saying the original size and what was cut."""
    ours = dlq_headers(bad, consumer_id, task_id)
    original = list(bad.headers)
    key, value = bad.key, bad.value
    framing = 64
    size = framing + len(key or b"") + len(value or b"") + _headers_size(ours + original)
    if size <= limit:
        return DeadLetterRecord(key, value, original + ours, bad.timestamp)
    cut: list[str] = []
    marks = [
        (ORIGINAL_SIZE_HEADER, str(len(value or b"")).encode()),
        (TRUNCATED_HEADER, b""),
    ]
    fixed = framing + _headers_size(ours + marks) + 64
    if fixed + len(key or b"") + _headers_size(original) > limit:
        if original:
            cut.append("headers")
            original = []
        if key is not None and fixed + len(key) > limit:
            cut.append("key")
            key = key[: max(limit - fixed, 0)]
    room = max(limit - fixed - len(key or b"") - _headers_size(original), 0)
    if value is not None and len(value) > room:
        cut.insert(0, "value")
        value = value[:room]
    marks[1] = (TRUNCATED_HEADER, ",".join(cut).encode())
    return DeadLetterRecord(key, value, original + ours + marks, bad.timestamp)


class DeadLetterSink:
    """Produces bad events to DLQ topics through one shared producer.

    ``renew``: makes and starts a new producer, used when the current one does not answer a
    publish within its timeout (see the module doc); without it the sink keeps its producer.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        task_id: str = "kafkaconsole",
        limit: int = DLQ_MAX_RECORD_BYTES,
        renew: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
    ) -> None:
        self.producer = producer
        self.task_id = task_id
        self.limit = limit
        self.renewals = 0  # producers replaced so far
        self._renew = renew
        self._renewing = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop the producer, and wait (bounded) for replaced ones still stopping."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), RETIRE_TIMEOUT_S)
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=RETIRE_TIMEOUT_S)

    async def _replace(self, stuck: AIOKafkaProducer, topic: str, timeout: float) -> None:
        """Put a new producer in place of ``stuck`` (once, however many publishes found it
        stuck at the same time); the old one is stopped in the background."""
        if self._renew is None:
            return
        async with self._renewing:
            if self.producer is not stuck:
                return  # replaced meanwhile
            try:
                fresh = await asyncio.wait_for(self._renew(), RENEW_TIMEOUT_S)
            except Exception as exc:
                log.warning(
                    "the DLQ producer is not answering and no new one could be started: %s: %s",
                    type(exc).__name__,
                    exc,
                )
                return
            self.producer = fresh
            self.renewals += 1
            log.warning(
                "the DLQ producer delivered nothing to %r within %g s: replaced by a new one "
                "(what the old one still holds may reach the DLQ twice)",
                topic,
                timeout,
            )
            task = asyncio.create_task(self._retire(stuck), name="DLQ producer retiring")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(old: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(old.stop(), RETIRE_TIMEOUT_S)
        except Exception as exc:
            log.warning(
                "a replaced DLQ producer did not stop within %g s (%s: %s): left behind",
                RETIRE_TIMEOUT_S,
                type(exc).__name__,
                exc,
            )

    async def publish(
        self,
        topic: str,
        consumer_id: str,
        events: list[BadEvent],
        timeout: float = 30.0,
        policy: RetryPolicy | None = None,
    ) -> list[Refused]:
        """Produce ``events``; returns those the DLQ refused for good (see the module doc).

        Raises :class:`DeadLetterError` when the DLQ does not answer (nothing is refused then:
        the caller tries the whole list again later).
        """
        if not events:
            return []
        policy = policy or RetryPolicy()
        refused: list[Refused] = []
        producer = self.producer
        try:
            async with asyncio.timeout(timeout):
                sent: list[tuple[BadEvent, asyncio.Future[object] | None, Exception | None]] = []
                for bad in events:
                    try:  # a record over the producer's own limit is refused here
                        future = await self._send(producer, topic, consumer_id, bad, self.limit)
                        sent.append((bad, future, None))
                    except RECORD_REFUSED as exc:
                        sent.append((bad, None, exc))
                for bad, fut, error in sent:
                    if fut is not None:
                        try:
                            await fut
                        except RECORD_REFUSED as exc:
                            error = exc
                    if error is not None:
                        last = await self._smaller(producer, topic, consumer_id, bad, error, policy)
                        if last is not None:
                            refused.append(Refused(bad, last))
        except DeadLetterError:
            raise
        except TimeoutError as exc:
            await self._replace(producer, topic, timeout)
            raise DeadLetterError(
                f"DLQ topic {topic!r} did not accept {len(events)} bad event(s): no answer "
                f"within {timeout:g} s"
            ) from exc
        except Exception as exc:
            raise DeadLetterError(
                f"DLQ topic {topic!r} did not accept {len(events)} bad event(s): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return refused

    async def _send(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        consumer_id: str,
        bad: BadEvent,
        limit: int,
    ) -> asyncio.Future[object]:
        record = dead_letter_record(bad, consumer_id, self.task_id, limit)
        fut: asyncio.Future[object] = await producer.send(
            topic,
            record.value,
            key=record.key,
            headers=record.headers,
            timestamp_ms=record.timestamp_ms,
        )
        return fut

    async def _smaller(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        consumer_id: str,
        bad: BadEvent,
        first: Exception,
        policy: RetryPolicy,
    ) -> str | None:
        """Try ``bad`` again, cut to half the size each attempt, under ``policy``; None when
        the DLQ took it, else the last error."""
        limits = [self.limit]

        async def attempt() -> None:
            limits.append(max(limits[-1] // 2, 1024))
            fut = await self._send(producer, topic, consumer_id, bad, limits[-1])
            await fut

        try:
            await retry_call(
                attempt,
                policy,
                retry_on=RECORD_REFUSED,
                what=f"DLQ record of {bad.topic}[{bad.partition}]@{bad.offset}",
                attempts=max(policy.max_attempts - 1, 1),
            )
        except RECORD_REFUSED as exc:
            return f"{type(exc).__name__}: {exc}"
        log.warning(
            "%s: DLQ refused %s at %d bytes (%s: %s); took it cut to %d bytes",
            consumer_id,
            f"{bad.topic}[{bad.partition}]@{bad.offset}",
            self.limit,
            type(first).__name__,
            first,
            limits[-1],
        )
        return None
