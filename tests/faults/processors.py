"""The processor the fault scenarios configure: events must be objects with an integer seq."""

from __future__ import annotations

import time
from typing import Any

#: Seconds an event marked ``hang`` holds the processor (far past processor_timeout).
HANG_S = 8.0


def validate(event: Any) -> Any:
    if not isinstance(event, dict):
        raise TypeError(f"expected a JSON object, got {type(event).__name__}")
    if not isinstance(event.get("seq"), int):
        raise TypeError("seq must be an integer")
    return event


def validate_or_hang(event: Any) -> Any:
    """As :func:`validate`, but an event with ``"hang": true`` blocks for HANG_S first (as a
    processor stuck on a network call would)."""
    if isinstance(event, dict) and event.get("hang"):
        time.sleep(HANG_S)
    return validate(event)
