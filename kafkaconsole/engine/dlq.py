"""Dead-letter publishing for bad events, with Kafka Connect's error header names.

Bad events are produced to the consumer's DLQ topic and acknowledged *before* the batch that
skips them is applied in Redis, so the stored offsets never move past an unrecorded bad event.
A crash between the two can publish a bad event twice; the headers (topic, partition, offset,
consumer id) let a reader drop such a duplicate.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from kafkaconsole.engine.events import BadEvent

HEADER_PREFIX = "__connect.errors."


class DeadLetterError(RuntimeError):
    """The DLQ topic did not accept a bad event."""


def dlq_headers(bad: BadEvent, consumer_id: str) -> list[tuple[str, bytes]]:
    h = HEADER_PREFIX
    return [
        *bad.headers,
        (f"{h}topic", bad.topic.encode()),
        (f"{h}partition", str(bad.partition).encode()),
        (f"{h}offset", str(bad.offset).encode()),
        (f"{h}connector.name", consumer_id.encode()),
        (f"{h}stage", bad.stage.encode()),
        (f"{h}exception.class.name", bad.error_class.encode()),
        (f"{h}exception.message", bad.message[:1000].encode()),
        ("kafkaconsole.consumer_id", consumer_id.encode()),
    ]


class DeadLetterSink:
    """Produces bad events to DLQ topics through one shared producer."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def publish(
        self, topic: str, consumer_id: str, events: list[BadEvent], timeout: float = 30.0
    ) -> None:
        if not events:
            return
        try:
            async with asyncio.timeout(timeout):
                futures = [
                    await self.producer.send(
                        topic, bad.value, key=bad.key, headers=dlq_headers(bad, consumer_id)
                    )
                    for bad in events
                ]
                for fut in futures:
                    await fut
        except Exception as exc:
            raise DeadLetterError(
                f"DLQ topic {topic!r} did not accept {len(events)} bad event(s): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
