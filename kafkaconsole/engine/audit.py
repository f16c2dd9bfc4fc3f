"""The audit trail: every control action, from every face, appended to one capped Redis stream.

``<key_prefix>:_fleet:audit`` holds one entry per pause, resume, reset, trigger, reload (one
per instance that reloaded, consumer ``*``) and runtime definition (``consumer-add``,
``consumer-remove``), whoever
sent it: the CLI (through :class:`~kafkaconsole.engine.fleet.Fleet`), the HTTP API and the TUI
(both through :class:`~kafkaconsole.engine.engine.Engine`). An entry says who (``user``, and
``instance``: the engine instance that acted, or the CLI process), through which face (``via``),
what (``action``, ``consumer_id``), when (the stream id: Redis server time, so every instance
agrees) and the ``result`` (``ok`` or ``error``) with a short ``detail``, secrets masked.

Writing the entry never turns a done action into a failure: if Redis refuses it, a warning is
logged. Read-only refusals never reach the fleet and are not recorded here (they are local
policy, answered at once by the face that refused).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kafkaconsole.engine.counting import CloseResult, ResetResult
from kafkaconsole.engine.errors import ReadOnlyError as ReadOnlyError  # re-exported
from kafkaconsole.engine.keys import FleetKeys
from kafkaconsole.engine.records import iso_ms

log = logging.getLogger("kafkaconsole.audit")

AUDIT_MAXLEN = 10_000
"""Entries kept (approximately: the stream is trimmed with ``MAXLEN ~``)."""

ACTIONS = (
    "pause",
    "resume",
    "reset",
    "trigger",
    "reload",
    "consumer-add",
    "consumer-remove",
    "accept-reset",
)

FIELDS = ("via", "user", "instance", "action", "consumer_id", "result", "detail")
"""Fields of an entry, besides ``id`` and ``at`` (both from the stream id)."""


def audit_key(prefix: str, tagged: bool = False) -> str:
    """``<prefix>:_fleet:audit`` (:mod:`.keys`): the stream of control actions."""
    return FleetKeys(prefix, tagged).audit


def cli_instance() -> str:
    """How a CLI process names itself in the trail: ``cli:<host>-<pid>``."""
    return f"cli:{socket.gethostname()}-{os.getpid()}"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def reset_detail(res: ResetResult) -> str:
    """The audit detail of a reset."""
    return f"window {res.window_id} emptied, {res.discarded} event(s) discarded"


def trigger_detail(res: CloseResult) -> str:
    """The audit detail of a manual trigger."""
    if res.status == "closed":
        return f"window {res.window_id} closed with {res.count} event(s)"
    return f"window {res.window_id} not closed ({res.status})"


@dataclass
class AuditOutcome:
    """Filled in by the action inside :meth:`AuditLog.action`: the entry's ``detail``."""

    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class AuditLog:
    """Appends to and reads the audit stream of one fleet (one key prefix)."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        mask: Callable[[str], str] | None = None,
        maxlen: int = AUDIT_MAXLEN,
        tagged: bool = False,
    ) -> None:
        self.redis = redis
        self.key = audit_key(prefix, tagged)
        self.mask = mask or (lambda text: text)
        self.maxlen = maxlen

    async def record(
        self,
        action: str,
        consumer_id: str,
        *,
        via: str,
        user: str,
        instance: str,
        result: str = "ok",
        detail: str = "",
    ) -> str | None:
        """Append one entry; returns its id, or None when Redis refused it (logged)."""
        fields = {
            "via": via,
            "user": self.mask(user),
            "instance": instance,
            "action": action,
            "consumer_id": consumer_id,
            "result": result,
            "detail": self.mask(" ".join(detail.split()))[:500],
        }
        try:
            entry_id = await self.redis.xadd(
                self.key,
                fields,  # type: ignore[arg-type]
                maxlen=self.maxlen,
                approximate=True,
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "audit entry not written (%s %s by %s via %s, %s): %s",
                action,
                consumer_id,
                fields["user"],
                via,
                result,
                self.mask(str(exc)),
            )
            return None
        return _s(entry_id)

    @contextlib.asynccontextmanager
    async def action(
        self, action: str, consumer_id: str, *, via: str, user: str, instance: str
    ) -> AsyncIterator[AuditOutcome]:
        """Run the block as one audited action: ``ok`` with the outcome's detail, or ``error``
        with the exception's text (masked), which is re-raised."""
        outcome = AuditOutcome()
        try:
            yield outcome
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            with contextlib.suppress(Exception):
                await self.record(
                    action,
                    consumer_id,
                    via=via,
                    user=user,
                    instance=instance,
                    result="error",
                    detail=detail,
                )
            raise
        await self.record(
            action,
            consumer_id,
            via=via,
            user=user,
            instance=instance,
            result="ok",
            detail=outcome.detail,
        )

    async def entries(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, newest first: ``id, at`` + :data:`FIELDS`."""
        raw: Any = await self.redis.xrevrange(self.key, count=limit)
        out = []
        for entry_id, values in raw or []:
            f = {_s(k): _s(v) for k, v in values.items()}
            eid = _s(entry_id)
            out.append(
                {
                    "id": eid,
                    "at": iso_ms(int(eid.split("-", 1)[0])),
                    **{name: self.mask(f.get(name, "")) for name in FIELDS},
                }
            )
        return out
