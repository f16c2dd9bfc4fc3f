"""Alerts: rules over health verdicts and metrics that fire once and resolve once.

A rule (``[[monitoring.alerts]]``) names a verdict (``verdict = "stalled"``) or a metric and a
threshold (``metric = "time_lag_seconds"``, ``above = 60``), how long the condition must hold
(``for``) and a channel. Three layers, each testable alone:

- :func:`step` is the pure transition of one (consumer, rule): clear -> pending -> firing, and
  back to clear (resolved) as soon as the condition stops holding. :class:`AlertEvaluator` keeps
  those states for every consumer and returns the local transitions (the TUI's toasts).
- :class:`AlertLedger` makes the fleet agree: every instance evaluates the same fleet view, and
  the one whose ``SET NX`` creates ``<prefix>:<consumer_id>:alert:<rule>`` announces the firing,
  the one whose atomic get-and-delete removes it announces the resolution. The key holds the
  alert's state while it fires, so the CLI and the API list active alerts fleet-wide, and an
  instance started later resolves what an earlier one fired.
- :class:`AlertNotifier` delivers announcements: ``log`` writes a log line, ``webhook`` POSTs
  JSON (retried with backoff, in the background; TLS, proxies and redirects as every remote kind,
  :mod:`kafkaconsole.engine.http_client`), ``tui`` only shows in the console (a toast on
  each local transition and a badge while the alert is active).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from kafkaconsole.config.models import AlertRule, MonitoringConfig, RetryPolicy
from kafkaconsole.engine.health import Verdict
from kafkaconsole.engine.http_client import HttpClient, RedirectRefused, TlsSetupError
from kafkaconsole.engine.records import iso_ms
from kafkaconsole.engine.retry import retry_call

log = logging.getLogger("kafkaconsole.alert")


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


def alert_key(prefix: str, consumer_id: str, rule_id: str) -> str:
    """``<prefix>:<consumer_id>:alert:<rule>``: present, with the alert as JSON, while it fires."""
    return f"{prefix}:{consumer_id}:alert:{rule_id}"


def rules_for(rules: Sequence[AlertRule], consumer_id: str) -> list[AlertRule]:
    return [r for r in rules if r.watches(consumer_id)]


# ---- conditions and transitions (pure) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """Whether a rule's condition holds now: True, False, or None when it cannot be told yet."""

    holds: bool | None
    value: float | None
    message: str


def condition(
    rule: AlertRule, verdict: Verdict, metrics: Mapping[str, float | None], settled: bool = True
) -> Condition:
    """Evaluate ``rule`` against a consumer's verdict and metrics.

    ``settled`` is False while the samples do not reach back far enough for every verdict to be
    possible: a verdict rule that does not hold then is unknown (None), not clear, so that a
    newly started instance does not resolve what the others see firing.
    """
    if rule.verdict is not None:
        holds = str(verdict.name) == rule.verdict
        message = f"{verdict.name}: {verdict.reason}"
        return Condition(holds if holds or settled else None, None, message)
    assert rule.metric is not None
    value = metrics.get(rule.metric)
    if value is None:
        return Condition(None, None, f"{rule.metric} unknown")
    if rule.above is not None:
        holds = value > rule.above
        message = f"{rule.metric} = {value:g} {'>' if holds else '<='} {rule.above:g}"
    else:
        below = rule.below if rule.below is not None else 0.0
        holds = value < below
        message = f"{rule.metric} = {value:g} {'<' if holds else '>='} {below:g}"
    return Condition(holds, value, message)


@dataclass(frozen=True, slots=True)
class RuleTrack:
    """One (consumer, rule): since when its condition holds, and whether it fired."""

    holding_since: float | None = None
    fired_at: float | None = None
    value: float | None = None
    message: str = ""
    clear: bool = False
    """The condition is known not to hold (the ledger may resolve the alert)."""

    @property
    def firing(self) -> bool:
        return self.fired_at is not None


def step(
    track: RuleTrack, cond: Condition, hold: float, now: float
) -> tuple[RuleTrack, AlertStatus | None]:
    """The next state of one (consumer, rule) and the transition it makes, if any.

    It fires once the condition has held for ``hold`` seconds, and resolves (once) as soon as
    the condition is known not to hold. An unknown condition changes nothing.
    """
    if cond.holds is None:
        return replace(track, clear=False), None
    if cond.holds:
        since = track.holding_since if track.holding_since is not None else now
        if track.firing:
            return RuleTrack(since, track.fired_at, cond.value, cond.message), None
        if now - since >= hold:
            return RuleTrack(since, now, cond.value, cond.message), AlertStatus.FIRING
        return RuleTrack(since, None, cond.value, cond.message), None
    cleared = RuleTrack(None, None, cond.value, cond.message, clear=True)
    return cleared, AlertStatus.RESOLVED if track.firing else None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert starting or ending for one consumer: what a channel delivers."""

    status: AlertStatus
    rule: str
    consumer_id: str
    channel: str
    message: str
    since_ms: int
    """When the condition started to hold."""
    at_ms: int
    """When the alert fired or resolved."""
    value: float | None = None
    threshold: float | None = None
    verdict: str | None = None
    metric: str | None = None
    instance: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The webhook body."""
        return {
            "status": str(self.status),
            "alert": self.rule,
            "consumer_id": self.consumer_id,
            "message": self.message,
            "verdict": self.verdict,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "since": iso_ms(self.since_ms),
            "at": iso_ms(self.at_ms),
            "instance": self.instance,
        }

    def describe(self) -> str:
        verb = "FIRING" if self.status == AlertStatus.FIRING else "resolved"
        return f"alert {self.rule} {verb} for {self.consumer_id}: {self.message}"


def _threshold(rule: AlertRule) -> float | None:
    return rule.above if rule.above is not None else rule.below


def event_of(
    rule: AlertRule,
    consumer_id: str,
    status: AlertStatus,
    track: RuleTrack,
    now: float,
    instance: str | None = None,
) -> AlertEvent:
    since = track.holding_since if track.holding_since is not None else now
    return AlertEvent(
        status=status,
        rule=rule.rule_id,
        consumer_id=consumer_id,
        channel=rule.channel,
        message=track.message,
        since_ms=int(since * 1000),
        at_ms=int(now * 1000),
        value=track.value,
        threshold=_threshold(rule),
        verdict=rule.verdict,
        metric=rule.metric,
        instance=instance,
    )


class AlertEvaluator:
    """Keeps every (consumer, rule) state of this instance and returns its transitions."""

    def __init__(self, rules: Sequence[AlertRule]) -> None:
        self.rules = list(rules)
        self._tracks: dict[tuple[str, str], RuleTrack] = {}

    def evaluate(
        self,
        consumer_id: str,
        verdict: Verdict,
        metrics: Mapping[str, float | None],
        now: float,
        settled: bool = True,
    ) -> list[AlertEvent]:
        """Step every rule watching ``consumer_id``; the local firings and resolutions."""
        events = []
        for rule in rules_for(self.rules, consumer_id):
            key = (consumer_id, rule.rule_id)
            cond = condition(rule, verdict, metrics, settled)
            before = self._tracks.get(key, RuleTrack())
            track, change = step(before, cond, rule.for_, now)
            self._tracks[key] = track
            if change == AlertStatus.FIRING:
                events.append(event_of(rule, consumer_id, change, track, now))
            elif change == AlertStatus.RESOLVED:
                event = event_of(rule, consumer_id, change, track, now)
                since = before.holding_since if before.holding_since is not None else now
                events.append(replace(event, since_ms=int(since * 1000)))
        return events

    def track(self, consumer_id: str, rule_id: str) -> RuleTrack:
        return self._tracks.get((consumer_id, rule_id), RuleTrack())

    def firing(self, consumer_id: str) -> list[tuple[AlertRule, RuleTrack]]:
        """The rules firing for ``consumer_id`` on this instance, in rule order."""
        out = []
        for rule in rules_for(self.rules, consumer_id):
            track = self.track(consumer_id, rule.rule_id)
            if track.firing:
                out.append((rule, track))
        return out


# ---- the fleet-wide ledger ---------------------------------------------------------------------


_TAKE = """
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v
"""
"""GETDEL with the commands the engine's ACL grants already (GET, DEL, EVALSHA)."""


class WebhookFailed(Exception):
    """One webhook attempt failed (HTTP status or connection error)."""


class AlertLedger:
    """Fires and resolves each alert once across the fleet through Redis keys."""

    def __init__(self, redis: Redis, prefix: str, instance_id: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.instance_id = instance_id
        self._take = redis.register_script(_TAKE)

    async def reconcile(
        self,
        evaluator: AlertEvaluator,
        consumer_ids: Sequence[str],
        now: float,
    ) -> list[AlertEvent]:
        """Bring Redis in line with this instance's view; the announcements this instance won.

        An alert firing here but absent from Redis is created (``SET NX``: one instance wins);
        one present in Redis whose condition is known clear here is removed (an atomic
        get-and-delete: one instance wins). Pending and unknown conditions leave Redis alone.
        """
        pairs = [(cid, rule) for cid in consumer_ids for rule in rules_for(evaluator.rules, cid)]
        if not pairs:
            return []
        keys = [alert_key(self.prefix, cid, rule.rule_id) for cid, rule in pairs]
        present = await self.redis.mget(keys)
        actions: list[tuple[str, str, AlertRule, RuleTrack]] = []
        pipe = self.redis.pipeline(transaction=False)
        for (cid, rule), key, stored in zip(pairs, keys, present, strict=True):
            track = evaluator.track(cid, rule.rule_id)
            if track.firing and stored is None:
                event = event_of(rule, cid, AlertStatus.FIRING, track, now, self.instance_id)
                body = {
                    **event.to_json_dict(),
                    "channel": rule.channel,
                    "since_ms": event.since_ms,
                    "at_ms": event.at_ms,
                }
                pipe.set(key, orjson.dumps(body), nx=True)
                actions.append(("fire", cid, rule, track))
            elif track.clear and stored is not None:
                await self._take(keys=[key], client=pipe)  # queued in the pipeline
                actions.append(("resolve", cid, rule, track))
        if not actions:
            return []
        results = await pipe.execute()
        won = []
        for (action, cid, rule, track), result in zip(actions, results, strict=True):
            if action == "fire" and result:
                won.append(event_of(rule, cid, AlertStatus.FIRING, track, now, self.instance_id))
            elif action == "resolve" and result:
                since = _loads(result).get("since_ms")
                since_ms = int(since) if isinstance(since, int) else int(now * 1000)
                event = event_of(rule, cid, AlertStatus.RESOLVED, track, now, self.instance_id)
                won.append(replace(event, since_ms=since_ms))
        return won


def _loads(raw: Any) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def alert_view(stored: Mapping[str, Any], rule: AlertRule) -> dict[str, Any]:
    """An active alert as ``status --json`` and the API show it."""
    return {
        "alert": rule.rule_id,
        "channel": rule.channel,
        "message": stored.get("message"),
        "since": stored.get("since"),
        "value": stored.get("value"),
        "verdict": rule.verdict,
        "metric": rule.metric,
    }


def stored_alert_view(raw: Any, rule: AlertRule) -> dict[str, Any]:
    """An active alert as shown, from its Redis value (JSON)."""
    return alert_view(_loads(raw), rule)


async def active_alerts(
    redis: Redis, prefix: str, rules: Sequence[AlertRule], consumer_id: str
) -> list[dict[str, Any]]:
    watching = rules_for(rules, consumer_id)
    if not watching:
        return []
    values = await redis.mget([alert_key(prefix, consumer_id, r.rule_id) for r in watching])
    return [
        stored_alert_view(raw, rule)
        for rule, raw in zip(watching, values, strict=True)
        if raw is not None
    ]


# ---- channels ---------------------------------------------------------------------------------


@dataclass
class AlertNotifier:
    """Delivers announcements: a log line, or a webhook POST retried in the background."""

    cfg: MonitoringConfig
    rules: Mapping[str, AlertRule] = field(default_factory=dict)
    sleep: Callable[[float], Any] = asyncio.sleep
    _clients: dict[str, HttpClient] = field(default_factory=dict)
    _tasks: set[asyncio.Task[bool]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.rules:
            self.rules = {r.rule_id: r for r in self.cfg.alerts}

    def deliver(self, event: AlertEvent) -> None:
        rule = self.rules.get(event.rule)
        if rule is None:
            return
        if rule.channel == "log":
            level = logging.WARNING if event.status == AlertStatus.FIRING else logging.INFO
            log.log(level, "%s", event.describe())
        elif rule.channel == "webhook":
            task = asyncio.create_task(self.post(rule, event), name=f"alert:{event.rule}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # "tui": shown by the console from the status model and its alert listener

    async def post(self, rule: AlertRule, event: AlertEvent) -> bool:
        """POST ``event`` to the rule's URL; True once a 2xx answer came back."""
        assert rule.url is not None
        client = self._clients.get(rule.rule_id)
        if client is None:
            client = self._clients[rule.rule_id] = HttpClient(rule, self.cfg.webhook_timeout)
        body = orjson.dumps(event.to_json_dict())
        headers = {"Content-Type": "application/json", **rule.headers}

        async def post() -> None:
            try:
                answer = await client.request("POST", rule.url or "", body=body, headers=headers)
            except (TlsSetupError, RedirectRefused):
                raise  # a setting to fix, not an outage: never retried
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise WebhookFailed(f"{type(exc).__name__}: {exc}") from exc
            if not 200 <= answer.status < 300:
                raise WebhookFailed(f"HTTP {answer.status}")

        attempts = self.cfg.webhook_attempts
        try:
            await retry_call(
                post,
                RetryPolicy(
                    max_attempts=attempts, initial_backoff=0.5, max_backoff=30.0, jitter=False
                ),
                retry_on=(WebhookFailed,),
                what=f"alert {event.rule} webhook",
                sleep=self.sleep,
                logger=log,
                give_up_level=logging.DEBUG,  # the line below says it
            )
        except (WebhookFailed, TlsSetupError, RedirectRefused) as exc:
            log.error(
                "alert %s (%s, %s): webhook failed after %d attempt(s): %s",
                event.rule,
                event.consumer_id,
                event.status,
                attempts if isinstance(exc, WebhookFailed) else 1,
                exc,
            )
            return False
        return True

    async def close(self, timeout: float = 2.0) -> None:
        """Let deliveries in flight finish (up to ``timeout``), then close the HTTP session."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()


__all__ = [
    "AlertEvaluator",
    "AlertEvent",
    "AlertLedger",
    "AlertNotifier",
    "AlertStatus",
    "Condition",
    "RuleTrack",
    "active_alerts",
    "alert_key",
    "condition",
    "event_of",
    "rules_for",
    "step",
]
