"""The console's CPU with 50 consumers at the default 4 Hz: the fleet it polls read from a real
Redis laid out as :mod:`benchmarks.status_reads` does, the instance snapshot fixed.

Run: ``.venv/bin/python -m benchmarks.console_cpu`` (prints CPU % of one core).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aredis

from benchmarks.status_reads import config, seed
from kafkaconsole.embedded import start_redis
from kafkaconsole.engine.counting import CloseResult, ResetResult, WindowState
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.status import InstanceSnapshot
from kafkaconsole.tui.app import KafkaConsoleApp
from kafkaconsole.tui.source import ConsoleSource
from kafkaconsole.tui.viewmodel import FleetView, Series

CONSUMERS = 50
SECONDS = 20.0


class RedisFleetSource(ConsoleSource):
    """The fleet from Redis (as the in-process engine's source reads it), a fixed snapshot."""

    def __init__(self, fleet: Fleet, snap: InstanceSnapshot) -> None:
        self.reader = fleet
        self.snap = snap

    def latest(self) -> InstanceSnapshot | None:
        return self.snap

    def series(self, consumer_id: str) -> Series:
        return Series()

    async def fleet(self) -> FleetView | None:
        return FleetView.from_fleet(await self.reader.read())

    async def history(self, consumer_id: str, limit: int = 20) -> list[dict[str, Any]]:
        return []

    async def window(self, consumer_id: str) -> WindowState:
        return await self.reader.counter(consumer_id).window()

    async def pause(self, consumer_id: str | None) -> list[str]:
        return []

    async def resume(self, consumer_id: str | None) -> list[str]:
        return []

    async def reset(self, consumer_id: str) -> ResetResult:
        raise NotImplementedError

    async def trigger(self, consumer_id: str) -> CloseResult:
        raise NotImplementedError


async def main() -> None:
    server = start_redis()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        redis = aredis.from_url(url)
        cfg = config(url, CONSUMERS)
        snap = await seed(redis, cfg)
        app = KafkaConsoleApp(cfg, data_source=RedisFleetSource(Fleet(redis, cfg), snap))
        async with app.run_test(size=(200, 70)):
            await asyncio.sleep(3)  # settle: first draws, first polls
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(SECONDS)
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
        await redis.aclose()
        print(
            f"console, {CONSUMERS} consumers, {cfg.ui.refresh_hz:g} Hz: "
            f"{100 * cpu / wall:.1f} % of one core over {wall:.0f} s"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
