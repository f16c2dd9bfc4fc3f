"""The ``kafka`` pipeline kind: produce the trigger record to a topic.

The value is the trigger record as JSON, the key the consumer id (so one consumer's windows stay
in order on one partition), and the ``idempotency-key`` header ``<consumer_id>:<window_id>``
lets a reader drop the duplicate a retry or a re-dispatch may produce. The run succeeds when
the brokers acknowledge the record (``acks=all``); the run id is ``<topic>/<partition>@<offset>``.

It uses the app's ``[kafka]`` connection (TLS and SASL included) with a producer of its own.
The topic must exist (or the cluster must create topics on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from kafkaconsole.config.models import KafkaConfig
from kafkaconsole.config.models import KafkaPipeline as KafkaPipelineConfig
from kafkaconsole.engine.clients import kafka_kwargs
from kafkaconsole.engine.pipelines.base import (
    CallOutcome,
    Pipeline,
    PipelineError,
    format_seconds,
)
from kafkaconsole.engine.records import RunStatus, TriggerRecord

IDEMPOTENCY_HEADER = "idempotency-key"


def _retryable(exc: KafkaError) -> bool:
    return isinstance(exc, KafkaTimeoutError | KafkaConnectionError) or bool(exc.retriable)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name


class KafkaPipeline(Pipeline):
    kind = "kafka"
    needs_kafka = True
    cfg: KafkaPipelineConfig

    def __init__(
        self, name: str, cfg: KafkaPipelineConfig, kafka: KafkaConfig | None = None
    ) -> None:
        super().__init__(name, cfg)
        self.kafka = kafka or KafkaConfig()
        self._producer: AIOKafkaProducer | None = None
        self._lock: asyncio.Lock | None = None

    async def start(self) -> None:
        """Connect the producer. Raises PipelineError (retryable) if the brokers cannot be
        reached; a later call() tries again."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._producer is not None:
                return
            timeout_ms = max(int(self.timeout * 1000), 1000)
            producer = AIOKafkaProducer(
                acks="all",
                linger_ms=0,
                request_timeout_ms=timeout_ms,
                **kafka_kwargs(self.kafka),
            )
            try:
                async with asyncio.timeout(self.timeout):
                    await producer.start()
            except (KafkaError, OSError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise PipelineError(
                    f"cannot connect to Kafka: {_describe(exc)}", retryable=True
                ) from None
            self._producer = producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        if self._producer is None:
            await self.start()
        producer = self._producer
        assert producer is not None
        topic = self.cfg.topic
        try:
            async with asyncio.timeout(self.timeout):
                meta = await producer.send_and_wait(
                    topic,
                    value=orjson.dumps(payload),
                    key=record.consumer_id.encode(),
                    headers=[
                        (IDEMPOTENCY_HEADER, record.idempotency_key.encode()),
                        ("content-type", b"application/json"),
                    ],
                )
        except TimeoutError:
            raise PipelineError(
                f"produce to {topic}: timed out after {format_seconds(self.timeout)}",
                retryable=True,
            ) from None
        except KafkaError as exc:
            raise PipelineError(
                f"produce to {topic}: {_describe(exc)}", retryable=_retryable(exc)
            ) from None
        return CallOutcome(
            run_id=f"{meta.topic}/{meta.partition}@{meta.offset}",
            status=RunStatus.SUCCEEDED,
            detail={"topic": meta.topic, "partition": meta.partition, "offset": meta.offset},
        )
