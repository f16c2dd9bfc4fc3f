"""A local HTTP pipeline target that logs each idempotency key and attempt.

It can be told (``POST /mode``) to succeed, fail with 5xx, hang, or answer slowly, so scenarios
can break the pipeline on purpose. ``GET /log`` returns every request it saw.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class TargetLog:
    attempts: list[dict[str, Any]] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)  # idempotency key -> times accepted

    def accepted_keys(self) -> set[str]:
        return set(self.accepted)

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.accepted.values() if n > 1)


class PipelineTarget:
    """mode: ok | fail | hang | slow (with ``delay`` seconds)."""

    def __init__(self) -> None:
        self.log = TargetLog()
        self.mode = "ok"
        self.delay = 0.0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/run"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/run", self._run)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _run(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers.get("Idempotency-Key", "")
        entry = {
            "key": key,
            "at": time.time(),
            "mode": self.mode,
            "count": body.get("count"),
            "reason": body.get("reason"),
        }
        self.log.attempts.append(entry)
        if self.mode == "fail":
            return web.json_response({"error": "injected failure"}, status=503)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        self.log.accepted[key] = self.log.accepted.get(key, 0) + 1
        return web.json_response({"run_id": f"run-{key}"})
