"""Re-read a closed window's events from Kafka for ``job_type = "batch"`` pipelines.

A trigger record carries, per partition, the offset range ``[first, last]`` of its events. The
range may also hold events that were filtered out or dead-lettered, so the consumer's own
classifier is applied again and only the counted events are handed to the pipeline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from kafkaconsole.config.models import KafkaConfig
from kafkaconsole.engine.clients import kafka_kwargs
from kafkaconsole.engine.events import COUNT, EventClassifier
from kafkaconsole.engine.processing import ProcessorRunner
from kafkaconsole.engine.records import TriggerRecord


def _jsonable(event: Any) -> Any:
    if isinstance(event, bytes):
        return event.decode("utf-8", errors="replace")
    return event


class WindowEventReader:
    """Loads the counted events of a window by its recorded offset ranges."""

    def __init__(
        self,
        kafka: KafkaConfig,
        classifier: EventClassifier,
        timeout: float = 60.0,
        processors: ProcessorRunner | None = None,
    ) -> None:
        self.kafka = kafka
        self.classifier = classifier
        self.timeout = timeout
        # the processor hook is user code: never on the event loop (engine.processing)
        self.processors = processors

    async def _matching(self, values: list[bytes | None]) -> list[Any]:
        if self.processors is None:
            return self.classifier.matching_events(values)
        items = [(0, i, v) for i, v in enumerate(values)]
        outcomes = await self.processors.classify(items, asyncio.Event())
        return [o[1] for o in outcomes or () if o is not None and o[0] == COUNT]

    async def __call__(self, record: TriggerRecord) -> list[Any]:
        if not record.offsets:
            return []
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            group_id=None,
            isolation_level="read_committed",
            **kafka_kwargs(self.kafka),
        )
        await consumer.start()
        try:
            ranges = {TopicPartition(r.topic, r.partition): r for r in record.offsets}
            consumer.assign(list(ranges))
            for tp, r in ranges.items():
                consumer.seek(tp, r.first)
            values: dict[TopicPartition, list[bytes | None]] = {tp: [] for tp in ranges}
            remaining = set(ranges)
            async with asyncio.timeout(self.timeout):
                while remaining:
                    batch = await consumer.getmany(*remaining, timeout_ms=500)
                    for tp, recs in batch.items():
                        last = ranges[tp].last
                        for rec in recs:
                            if rec.offset <= last:
                                values[tp].append(rec.value)
                        if recs and recs[-1].offset >= last:
                            remaining.discard(tp)
                            consumer.pause(tp)
            ordered = [
                v for tp in sorted(ranges, key=lambda t: (t.topic, t.partition)) for v in values[tp]
            ]
            return [_jsonable(e) for e in await self._matching(ordered)]
        finally:
            await consumer.stop()
