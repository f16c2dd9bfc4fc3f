"""Python pipeline targets used by the engine tests: they record every call they receive."""

from __future__ import annotations

import threading
from typing import Any

CALLS: list[dict[str, Any]] = []
_lock = threading.Lock()


def record(payload: dict[str, Any]) -> dict[str, Any]:
    with _lock:
        CALLS.append(payload)
    return {"run_id": f"run-{payload['idempotency_key']}"}


def calls_for(consumer_id: str) -> list[dict[str, Any]]:
    with _lock:
        return [c for c in CALLS if c["consumer_id"] == consumer_id]


def only_orders(event: Any) -> Any:
    """A processor: drops non-order events, raises on a poison one."""
    if event.get("poison"):
        raise ValueError("poison event")
    if event.get("type") != "order":
        return None
    return event


GATES: dict[str, Any] = {}
"""consumer_id -> an asyncio.Event that :func:`gated` waits for before recording a call."""


async def gated(payload: dict[str, Any]) -> dict[str, Any]:
    """Like :func:`record`, but waits while the consumer's gate in :data:`GATES` is closed
    (a pipeline that is down and comes back)."""
    gate = GATES.get(payload["consumer_id"])
    if gate is not None:
        await gate.wait()
    return record(payload)
