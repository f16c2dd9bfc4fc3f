"""The ``--no-ui`` face: the engine under ``asyncio.run`` with signals, logs and the API.

No Textual or Rich is imported here. SIGTERM or SIGINT asks the engine to stop gracefully
(finish the batch in hand, record counts and offsets, commit, close); a second SIGINT exits at
once. Exit codes: 0 after a clean stop, 1 when the engine could not start or failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from kafkaconsole.config.models import AppConfig
from kafkaconsole.engine.engine import Engine

log = logging.getLogger("kafkaconsole.headless")

#: Hook for extra services started beside the engine (the HTTP API); returns a closer.
ExtraService = Callable[[Engine], Awaitable[Callable[[], Awaitable[None]]]]


async def serve(config: AppConfig, *, instance_id: str | None = None,
                extras: list[ExtraService] | None = None,
                ready: Callable[[Engine], None] | None = None) -> int:
    """Run the engine until a signal; returns the exit code."""
    engine = Engine(config, instance_id=instance_id)
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal interrupts
        if sig == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                sys.stderr.write("kafkaconsole: second interrupt, exiting now\n")
                os._exit(130)
        log.info("received %s, stopping gracefully", sig.name)
        engine.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        try:
            await engine.start()
        except Exception as exc:
            log.error("cannot start: %s: %s", type(exc).__name__, exc)
            await engine.stop(timeout=2)
            return 1
        for extra in extras or []:
            closers.append(await extra(engine))
        if ready:
            ready(engine)
        await engine.wait_stopped()
        for close in closers:
            await close()
        await engine.stop()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_headless(config: AppConfig, *, instance_id: str | None = None,
                 extras: list[ExtraService] | None = None) -> int:
    return asyncio.run(serve(config, instance_id=instance_id, extras=extras))
