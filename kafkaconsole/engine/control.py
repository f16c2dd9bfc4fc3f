"""Fleet-wide control through Redis: pause/resume flags and the announcements of changes.

Pause is a level (a flag per consumer) that every instance polls and also learns of at once
through a pub/sub announcement; reset and force-trigger are single atomic scripts
(:class:`~kafkaconsole.engine.counting.WindowCounter`) that any process may run, after which
whichever instance holds the dispatch lease runs the pipeline. So the CLI, the HTTP API and the
TUI all steer the same fleet without knowing where its instances run.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from kafkaconsole.engine.keys import ConsumerKeys, FleetKeys


def actor() -> str:
    """Who is acting: user@host, for pause records and the audit trail."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class PauseState:
    paused: bool
    by: str | None = None
    since_ms: int | None = None
    #: raised by every seek: an instance behind it re-reads its positions
    seek_epoch: int = 0

    @classmethod
    def parse(cls, raw: dict[Any, Any]) -> PauseState:
        """From the consumer's control hash (HGETALL)."""
        f = {_s(k): _s(v) for k, v in raw.items()}
        return cls(
            paused=f.get("paused") == "1",
            by=f.get("paused_by"),
            since_ms=int(f["paused_at"]) if f.get("paused_at") else None,
            seek_epoch=int(f.get("seek_epoch") or 0),
        )


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class FleetControl:
    """Reads and writes the control flags of a fleet's consumers."""

    def __init__(self, redis: Redis, prefix: str, tagged: bool = False) -> None:
        self.redis = redis
        self.prefix = prefix
        self.tagged = tagged
        self.fleet = FleetKeys(prefix, tagged)

    def keys(self, consumer_id: str) -> ConsumerKeys:
        return ConsumerKeys(self.prefix, consumer_id, self.tagged)

    async def set_paused(self, consumer_id: str, paused: bool, by: str | None = None) -> None:
        key = self.keys(consumer_id).control
        pipe = self.redis.pipeline(transaction=True)
        if paused:
            pipe.hset(
                key,
                mapping={
                    "paused": 1,
                    "paused_by": by or actor(),
                    "paused_at": int(time.time() * 1000),
                },
            )
        else:
            pipe.hset(key, mapping={"paused": 0})
            pipe.hdel(key, "paused_by", "paused_at")
        await pipe.execute()
        # after the MULTI (not in it: on a cluster the channel is no key of the consumer's slot)
        await self.redis.publish(
            self.fleet.control_channel, orjson.dumps({"consumer_id": consumer_id, "paused": paused})
        )

    async def pause_states(self, consumer_ids: list[str]) -> dict[str, PauseState]:
        pipe = self.redis.pipeline(transaction=False)
        for cid in consumer_ids:
            pipe.hgetall(self.keys(cid).control)
        return {
            cid: PauseState.parse(raw)
            for cid, raw in zip(consumer_ids, await pipe.execute(), strict=True)
        }

    async def announce(self, consumer_id: str, action: str) -> None:
        await self.redis.publish(
            self.fleet.control_channel, orjson.dumps({"consumer_id": consumer_id, "action": action})
        )
