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
  each local transition and a badge while the alert is active). ``slack`` (an incoming
  webhook), ``pagerduty`` (Events API v2: trigger, then resolve, one dedup key per consumer and
  rule) and ``alertmanager`` (``POST /api/v2/alerts``) POST their documented payloads the same
  way; Alertmanager forgets an alert that is not re-sent, so every instance re-sends the
  alerts active in Redis every :data:`ALERTMANAGER_RESEND_S` with ``endsAt`` a few minutes
  ahead, and the resolution with ``endsAt`` now.
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
from kafkaconsole.engine.fleet_status import AlertStatus as FiringAlert
from kafkaconsole.engine.health import Verdict
from kafkaconsole.engine.http_client import HttpClient, RedirectRefused, TlsSetupError
from kafkaconsole.engine.keys import ConsumerKeys
from kafkaconsole.engine.records import iso_ms
from kafkaconsole.engine.redis_cluster import mget_any
from kafkaconsole.engine.retry import retry_call

log = logging.getLogger("kafkaconsole.alert")

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
"""PagerDuty Events API v2 endpoint (``url`` of a pagerduty rule overrides it)."""
ALERTMANAGER_PATH = "/api/v2/alerts"
ALERTMANAGER_RESEND_S = 60.0
"""How often a firing alert is re-sent to Alertmanager (Prometheus re-sends every minute)."""
ALERTMANAGER_HOLD_S = 300.0
"""``endsAt`` of a firing alert is this far ahead: Alertmanager resolves it by itself if the
re-sends stop (every instance gone), instead of showing it firing for ever."""
SLACK_TEXT_MAX = 3000
"""Slack's limit on a section block's text."""
PAGERDUTY_SUMMARY_MAX = 1024


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


def alert_key(prefix: str, consumer_id: str, rule_id: str, tagged: bool = False) -> str:
    """``<prefix>:<consumer_id>:alert:<rule>`` (:mod:`.keys`): present, with the alert as JSON,
    while it fires."""
    return ConsumerKeys(prefix, consumer_id, tagged).alert(rule_id)


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


RETIRED = "the consumer is no longer run (removed from the configuration)"
"""The message of an alert resolved because its consumer was removed."""


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

    def retire(self, consumer_id: str) -> None:
        """``consumer_id`` is no longer run: every rule's condition is known clear for it
        (the ledger resolves the alerts still firing), with that as the message."""
        for rule in rules_for(self.rules, consumer_id):
            self._tracks[(consumer_id, rule.rule_id)] = RuleTrack(message=RETIRED, clear=True)

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

    def __init__(self, redis: Redis, prefix: str, instance_id: str, tagged: bool = False) -> None:
        self.redis = redis
        self.prefix = prefix
        self.tagged = tagged
        self.instance_id = instance_id
        self._take = redis.register_script(_TAKE)
        self.active: dict[tuple[str, str], dict[str, Any]] = {}
        """(consumer_id, rule) -> stored alert, for every alert active fleet-wide after the
        last :meth:`reconcile` (what Alertmanager is re-sent)."""

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
            self.active = {}
            return []
        keys = [alert_key(self.prefix, cid, rule.rule_id, self.tagged) for cid, rule in pairs]
        present = await mget_any(self.redis, keys)
        actions: list[tuple[str, str, AlertRule, RuleTrack]] = []
        active: dict[tuple[str, str], dict[str, Any]] = {}
        pipe = self.redis.pipeline(transaction=False)
        resolves: list[str] = []
        for (cid, rule), key, stored in zip(pairs, keys, present, strict=True):
            track = evaluator.track(cid, rule.rule_id)
            if stored is not None:
                active[(cid, rule.rule_id)] = _loads(stored)
            if track.firing and stored is None:
                event = event_of(rule, cid, AlertStatus.FIRING, track, now, self.instance_id)
                body = {
                    **event.to_json_dict(),
                    "channel": rule.channel,
                    "since_ms": event.since_ms,
                    "at_ms": event.at_ms,
                }
                pipe.set(key, orjson.dumps(body), nx=True)
                active[(cid, rule.rule_id)] = body
                actions.append(("fire", cid, rule, track))
            elif track.clear and stored is not None:
                resolves.append(key)  # a script each, after the pipeline (a cluster
                actions.append(("resolve", cid, rule, track))  # pipeline takes no script)
        self.active = active
        if not actions:
            return []
        fired = iter(await pipe.execute() if len(pipe) else [])
        taken = iter([await self._take(keys=[key]) for key in resolves])
        results = [next(taken if a[0] == "resolve" else fired) for a in actions]
        won = []
        for (action, cid, rule, track), result in zip(actions, results, strict=True):
            if action == "resolve":
                active.pop((cid, rule.rule_id), None)
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


def alert_fields(stored: Mapping[str, Any], rule: AlertRule) -> dict[str, Any]:
    """An active alert's fields (:class:`~kafkaconsole.engine.fleet_status.AlertStatus`'s, with
    ``since_ms`` in epoch ms), from its Redis value."""
    since = stored.get("since_ms")
    return {
        "alert": rule.rule_id,
        "channel": rule.channel,
        "message": stored.get("message"),
        "since_ms": since if isinstance(since, int) else stored.get("since"),
        "value": stored.get("value"),
        "verdict": rule.verdict,
        "metric": rule.metric,
    }


def stored_alert_fields(raw: Any, rule: AlertRule) -> dict[str, Any]:
    """:func:`alert_fields` from the Redis value as read (JSON)."""
    return alert_fields(_loads(raw), rule)


def stored_alert_view(raw: Any, rule: AlertRule) -> dict[str, Any]:
    """An active alert as ``status --json`` and the API show it, from its Redis value."""
    return FiringAlert.model_validate(stored_alert_fields(raw, rule)).to_json()


async def active_alerts(
    redis: Redis,
    prefix: str,
    rules: Sequence[AlertRule],
    consumer_id: str,
    tagged: bool = False,
) -> list[dict[str, Any]]:
    watching = rules_for(rules, consumer_id)
    if not watching:
        return []
    keys = [alert_key(prefix, consumer_id, r.rule_id, tagged) for r in watching]
    values = await mget_any(redis, keys)
    return [
        stored_alert_view(raw, rule)
        for rule, raw in zip(watching, values, strict=True)
        if raw is not None
    ]


# ---- channels: documented payloads (pure) -----------------------------------------------------


def _slack_escape(text: str) -> str:
    """Slack mrkdwn: &, < and > must be escaped (api.slack.com/reference/surfaces/formatting)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(event: AlertEvent, rule: AlertRule) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (notifications, fallback) and two blocks."""
    firing = event.status == AlertStatus.FIRING
    verb = "FIRING" if firing else "resolved"
    icon = ":red_circle:" if firing else ":large_green_circle:"
    head = (
        f"{icon} kafkaconsole alert *{_slack_escape(event.rule)}* {verb} for "
        f"*{_slack_escape(event.consumer_id)}*"
    )
    section = f"{head}\n{_slack_escape(event.message)}"
    if len(section) > SLACK_TEXT_MAX:
        section = section[: SLACK_TEXT_MAX - 1] + "…"
    context = f"severity {rule.severity} · since {iso_ms(event.since_ms)}"
    if event.instance:
        context += f" · instance {_slack_escape(event.instance)}"
    return {
        "text": _slack_escape(event.describe()),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": section}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def pagerduty_dedup_key(event: AlertEvent) -> str:
    return f"kafkaconsole/{event.consumer_id}/{event.rule}"[:255]


def pagerduty_body(event: AlertEvent, rule: AlertRule) -> dict[str, Any]:
    """A PagerDuty Events API v2 event: ``trigger`` with a payload, or ``resolve`` by dedup key
    (developer.pagerduty.com/docs/events-api-v2/trigger-events)."""
    base = {
        "routing_key": rule.routing_key or "",
        "dedup_key": pagerduty_dedup_key(event),
    }
    if event.status == AlertStatus.RESOLVED:
        return {**base, "event_action": "resolve"}
    summary = event.describe()
    if len(summary) > PAGERDUTY_SUMMARY_MAX:
        summary = summary[: PAGERDUTY_SUMMARY_MAX - 1] + "…"
    return {
        **base,
        "event_action": "trigger",
        "client": "kafkaconsole",
        "payload": {
            "summary": summary,
            "source": event.instance or "kafkaconsole",
            "severity": rule.severity,
            "timestamp": iso_ms(event.since_ms),
            "component": event.consumer_id,
            "group": "kafkaconsole",
            "class": event.verdict or event.metric or event.rule,
            "custom_details": event.to_json_dict(),
        },
    }


def alertmanager_url(rule: AlertRule) -> str:
    base = (rule.url or "").rstrip("/")
    return base if base.endswith(ALERTMANAGER_PATH) else base + ALERTMANAGER_PATH


def alertmanager_body(event: AlertEvent, rule: AlertRule) -> list[dict[str, Any]]:
    """Alertmanager API v2 ``postableAlerts``: one alert, labelled by rule and consumer;
    ``endsAt`` is now once resolved, :data:`ALERTMANAGER_HOLD_S` ahead while firing."""
    labels = {
        "alertname": event.rule,
        "consumer_id": event.consumer_id,
        "severity": rule.severity,
        "service": "kafkaconsole",
    }
    if event.verdict:
        labels["verdict"] = event.verdict
    if event.metric:
        labels["metric"] = event.metric
    annotations = {"summary": event.describe(), "description": event.message}
    if event.instance:
        annotations["instance"] = event.instance
    if event.value is not None:
        annotations["value"] = f"{event.value:g}"
    firing = event.status == AlertStatus.FIRING
    ends = event.at_ms + int(ALERTMANAGER_HOLD_S * 1000) if firing else event.at_ms
    return [
        {
            "labels": labels,
            "annotations": annotations,
            "startsAt": iso_ms(event.since_ms),
            "endsAt": iso_ms(ends),
        }
    ]


def channel_request(rule: AlertRule, event: AlertEvent) -> tuple[str, Any]:
    """URL and JSON body of ``event`` on the rule's HTTP channel."""
    if rule.channel == "slack":
        return rule.url or "", slack_body(event, rule)
    if rule.channel == "pagerduty":
        return rule.url or PAGERDUTY_URL, pagerduty_body(event, rule)
    if rule.channel == "alertmanager":
        return alertmanager_url(rule), alertmanager_body(event, rule)
    return rule.url or "", event.to_json_dict()


def stored_event(
    stored: Mapping[str, Any], rule: AlertRule, consumer_id: str, now: float
) -> AlertEvent:
    """A firing alert as kept in Redis by the ledger, ready to be sent again."""
    since = stored.get("since_ms")
    value = stored.get("value")
    return AlertEvent(
        status=AlertStatus.FIRING,
        rule=rule.rule_id,
        consumer_id=consumer_id,
        channel=rule.channel,
        message=str(stored.get("message") or ""),
        since_ms=int(since) if isinstance(since, int) else int(now * 1000),
        at_ms=int(now * 1000),
        value=float(value) if isinstance(value, int | float) else None,
        threshold=_threshold(rule),
        verdict=rule.verdict,
        metric=rule.metric,
        instance=stored.get("instance") if isinstance(stored.get("instance"), str) else None,
    )


HTTP_CHANNELS = ("webhook", "slack", "pagerduty", "alertmanager")


class AlertRejected(Exception):
    """The receiver refused the alert for good (4xx other than 408 and 429): not retried."""


# ---- channels ---------------------------------------------------------------------------------


@dataclass
class AlertNotifier:
    """Delivers announcements: a log line, or a webhook POST retried in the background."""

    cfg: MonitoringConfig
    rules: Mapping[str, AlertRule] = field(default_factory=dict)
    sleep: Callable[[float], Any] = asyncio.sleep
    _clients: dict[str, HttpClient] = field(default_factory=dict)
    _tasks: set[asyncio.Task[bool]] = field(default_factory=set)
    _resent: dict[tuple[str, str], float] = field(default_factory=dict)

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
        elif rule.channel in HTTP_CHANNELS:
            if rule.channel == "alertmanager":
                key = (event.consumer_id, event.rule)
                if event.status == AlertStatus.FIRING:
                    self._resent[key] = event.at_ms / 1000
                else:
                    self._resent.pop(key, None)
            self._spawn(rule, event)
        # "tui": shown by the console from the status model and its alert listener

    def _spawn(self, rule: AlertRule, event: AlertEvent) -> None:
        task = asyncio.create_task(self.post(rule, event), name=f"alert:{event.rule}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def refresh(self, active: Mapping[tuple[str, str], Mapping[str, Any]], now: float) -> None:
        """Re-send to Alertmanager the alerts active fleet-wide (the ledger's keys) that were
        not sent for :data:`ALERTMANAGER_RESEND_S`; every instance does (Alertmanager
        deduplicates by labels), so the alert stays firing while any instance lives."""
        for (consumer_id, rule_id), stored in active.items():
            rule = self.rules.get(rule_id)
            if rule is None or rule.channel != "alertmanager":
                continue
            last = self._resent.get((consumer_id, rule_id))
            if last is not None and now - last < ALERTMANAGER_RESEND_S:
                continue
            self._resent[(consumer_id, rule_id)] = now
            self._spawn(rule, stored_event(stored, rule, consumer_id, now))
        for key in [k for k in self._resent if k not in active]:
            del self._resent[key]

    async def post(self, rule: AlertRule, event: AlertEvent) -> bool:
        """POST ``event`` on the rule's channel (its documented payload); True once a 2xx
        answer came back. 4xx answers other than 408 and 429 are not retried."""
        url, payload = channel_request(rule, event)
        client = self._clients.get(rule.rule_id)
        if client is None:
            client = self._clients[rule.rule_id] = HttpClient(rule, self.cfg.webhook_timeout)
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json", **rule.headers}

        async def post() -> None:
            try:
                answer = await client.request("POST", url, body=body, headers=headers)
            except (TlsSetupError, RedirectRefused):
                raise  # a setting to fix, not an outage: never retried
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise WebhookFailed(f"{type(exc).__name__}: {exc}") from exc
            if 400 <= answer.status < 500 and answer.status not in (408, 429):
                raise AlertRejected(f"HTTP {answer.status}")
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
        except (WebhookFailed, AlertRejected, TlsSetupError, RedirectRefused) as exc:
            log.error(
                "alert %s (%s, %s): %s failed after %d attempt(s): %s",
                event.rule,
                event.consumer_id,
                event.status,
                rule.channel,
                attempts if isinstance(exc, WebhookFailed) else 1,
                exc,
                extra={"event": "alert", "consumer_id": event.consumer_id},
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
