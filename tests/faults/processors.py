"""The processor the fault scenarios configure: events must be objects with an integer seq."""

from __future__ import annotations

from typing import Any


def validate(event: Any) -> Any:
    if not isinstance(event, dict):
        raise TypeError(f"expected a JSON object, got {type(event).__name__}")
    if not isinstance(event.get("seq"), int):
        raise TypeError("seq must be an integer")
    return event
