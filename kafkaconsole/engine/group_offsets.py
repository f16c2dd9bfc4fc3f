"""What Kafka itself holds as each consumer group's committed offsets.

Redis holds the truth of what was counted; Kafka's committed offsets follow it (about once a
second) so that the tools people already run against the brokers (``kafka-consumer-groups.sh``,
Burrow, Kafka UI) see the same progress. ``kafkaconsole lag`` shows both side by side, read
through the admin client (OffsetFetch), the tool made for it: no group membership, no rebalance.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient

from kafkaconsole.config.models import KafkaConfig
from kafkaconsole.engine.clients import kafka_kwargs


@dataclass(frozen=True, slots=True)
class GroupOffsets:
    """One group's committed offsets per (topic, partition), or why they could not be read."""

    group_id: str
    offsets: dict[tuple[str, int], int]
    error: str | None = None


async def committed_offsets(
    kafka: KafkaConfig, groups: dict[str, Callable[[str], bool]], timeout: float = 5.0
) -> dict[str, GroupOffsets]:
    """Committed offsets of each group (``{group_id: whether a topic is the consumer's}``),
    per topic-partition of the topics it reads. A broker that cannot answer (down, no
    permission, or Tansu, whose OffsetFetch the admin client cannot decode) gives an
    ``error`` instead, never an exception."""
    if not groups:
        return {}
    admin = AIOKafkaAdminClient(**kafka_kwargs(kafka), request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await admin.close()
        reason = f"brokers unreachable: {type(exc).__name__}"
        return {g: GroupOffsets(g, {}, reason) for g in groups}
    out: dict[str, GroupOffsets] = {}
    try:
        for group_id, reads in groups.items():
            try:
                async with asyncio.timeout(timeout):
                    found = await admin.list_consumer_group_offsets(group_id)
            except Exception as exc:
                detail = str(exc) or type(exc).__name__
                out[group_id] = GroupOffsets(group_id, {}, f"{type(exc).__name__}: {detail}")
                continue
            out[group_id] = GroupOffsets(
                group_id,
                {
                    (tp.topic, tp.partition): meta.offset
                    for tp, meta in found.items()
                    if reads(tp.topic) and meta.offset >= 0
                },
            )
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return out
