"""Crash points for fault-injection tests, armed only by an environment variable.

``KAFKACONSOLE_FAULT=after_apply:3`` kills the process (``os._exit``, no cleanup, like
``kill -9``) the third time the engine passes the ``after_apply`` point: right after a batch
was counted in Redis and before the Kafka commit. ``after_close`` is right after a window
closed and before its pipeline is dispatched. Unset, the hook costs one attribute lookup.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def fault_hook_from_env(env: dict[str, str] | None = None) -> Callable[[str], None] | None:
    spec = (env if env is not None else os.environ).get("KAFKACONSOLE_FAULT", "").strip()
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    target = int(nth) if nth else 1
    seen = 0

    def hook(at: str) -> None:
        nonlocal seen
        if at != point:
            return
        seen += 1
        if seen >= target:
            sys.stderr.write(f"kafkaconsole: fault injected at {point} ({seen})\n")
            sys.stderr.flush()
            os._exit(86)

    return hook
