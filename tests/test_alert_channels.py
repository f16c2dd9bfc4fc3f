"""The slack, pagerduty and alertmanager alert channels against local receivers that behave as
the services document: they check the payload's shape and answer as the real ones do.

- Slack incoming webhooks (api.slack.com/messaging/webhooks): a JSON object with ``text``
  and/or ``blocks``; 200 ``ok`` (text/html), 400 ``invalid_payload`` otherwise, 404
  ``no_service`` for a revoked URL.
- PagerDuty Events API v2 (developer.pagerduty.com/docs/events-api-v2/overview):
  ``POST /v2/enqueue``, ``routing_key`` (32 characters), ``event_action`` trigger, acknowledge
  or resolve, ``dedup_key`` (at most 255), a ``payload`` with ``summary`` (at most 1024),
  ``source`` and ``severity`` (critical, error, warning, info) for a trigger; 202 with
  ``{"status": "success", "message": "Event processed", "dedup_key"}``, 400 ``invalid event``,
  429 when rate-limited.
- Alertmanager API v2 (github.com/prometheus/alertmanager, api/v2/openapi.yaml):
  ``POST /api/v2/alerts`` with a list of ``postableAlert`` (``labels`` required, label names
  ``[a-zA-Z_][a-zA-Z0-9_]*``, ``annotations``, ``startsAt``/``endsAt`` RFC 3339); 200. Alerts
  with the same labels merge, the latest update's ``endsAt`` winning; one whose ``endsAt``
  passed is resolved.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis
from aiohttp import web

from kafkaconsole.config import ConfigError, load_config
from kafkaconsole.config.models import AlertRule, MonitoringConfig
from kafkaconsole.engine.alerts import (
    ALERTMANAGER_HOLD_S,
    ALERTMANAGER_RESEND_S,
    AlertEvaluator,
    AlertEvent,
    AlertLedger,
    AlertNotifier,
)
from kafkaconsole.engine.health import Verdict, VerdictName
from tests.helpers import http_server

OK = Verdict(VerdictName.OK, "caught up")
STALLED = Verdict(VerdictName.STALLED, "partition 0 has not moved from offset 5 for 31s <&>")
T0 = 1_700_000_000.0
ROUTING_KEY = "R0123456789abcdef0123456789abcde"  # 32 characters, as PagerDuty issues them
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def rule(**kw: Any) -> AlertRule:
    return AlertRule.model_validate(kw)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Receivers:
    """Slack, PagerDuty and Alertmanager on one local server, each validating as documented."""

    def __init__(self) -> None:
        self.slack: list[dict[str, Any]] = []
        self.pagerduty: list[dict[str, Any]] = []
        self.pagerduty_open: dict[str, dict[str, Any]] = {}
        self.alertmanager: list[list[dict[str, Any]]] = []
        self.am_alerts: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        self.throttle = 0
        self.base = ""

    # -- Slack --------------------------------------------------------------------------------
    async def slack_hook(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        text, blocks = body.get("text"), body.get("blocks")
        valid = isinstance(body, dict) and ((isinstance(text, str) and text) or blocks)
        for block in blocks or []:
            if block.get("type") == "section":
                t = block["text"]
                valid = valid and t["type"] in ("mrkdwn", "plain_text") and len(t["text"]) <= 3000
            elif block.get("type") == "context":
                valid = valid and 0 < len(block["elements"]) <= 10
            else:
                valid = False
        if not valid:
            return web.Response(status=400, text="invalid_payload")
        self.slack.append(body)
        return web.Response(status=200, text="ok", content_type="text/html")

    # -- PagerDuty ----------------------------------------------------------------------------
    async def pagerduty_enqueue(self, request: web.Request) -> web.Response:
        if self.throttle > 0:
            self.throttle -= 1
            return web.json_response({"status": "throttle event"}, status=429)
        body = await request.json()
        errors = []
        if not isinstance(body.get("routing_key"), str) or len(body["routing_key"]) != 32:
            errors.append("'routing_key' must be 32 characters")
        action = body.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid")
        dedup = body.get("dedup_key")
        if action != "trigger" and not dedup:
            errors.append("'dedup_key' is required for acknowledge and resolve")
        if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
            errors.append("'dedup_key' is invalid")
        if action == "trigger":
            payload = body.get("payload") or {}
            if not payload.get("summary") or len(payload["summary"]) > 1024:
                errors.append("'payload.summary' is missing or too long")
            if not payload.get("source"):
                errors.append("'payload.source' is missing")
            if payload.get("severity") not in ("critical", "error", "warning", "info"):
                errors.append("'payload.severity' is invalid")
            if "timestamp" in payload:
                _time(payload["timestamp"])
        if errors:
            return web.json_response(
                {"status": "invalid event", "message": "Event object is invalid", "errors": errors},
                status=400,
            )
        self.pagerduty.append(body)
        if action == "trigger":
            self.pagerduty_open[dedup] = body
        elif action == "resolve":
            self.pagerduty_open.pop(dedup, None)
        return web.json_response(
            {"status": "success", "message": "Event processed", "dedup_key": dedup}, status=202
        )

    # -- Alertmanager -------------------------------------------------------------------------
    async def am_post_alerts(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, list):
            return web.json_response("body must be a list of postableAlert", status=400)
        for alert in body:
            labels = alert.get("labels")
            ok = isinstance(labels, dict) and labels
            ok = ok and all(
                LABEL_NAME.match(k) and isinstance(v, str) for k, v in (labels or {}).items()
            )
            ok = ok and all(isinstance(v, str) for v in alert.get("annotations", {}).values())
            if not ok:
                return web.json_response(f"invalid labels or annotations: {alert}", status=400)
            for key in ("startsAt", "endsAt"):
                if key in alert:
                    _time(alert[key])
        self.alertmanager.append(body)
        for alert in body:  # the merge: the latest update's endsAt wins, the earliest start
            key = tuple(sorted(alert["labels"].items()))
            old = self.am_alerts.get(key)
            merged = dict(alert)
            if old is not None and _time(old["startsAt"]) < _time(alert["startsAt"]):
                merged["startsAt"] = old["startsAt"]
            self.am_alerts[key] = merged
        return web.Response(status=200)

    def am_firing(self, at: float) -> list[dict[str, str]]:
        """The alerts Alertmanager holds as firing at time ``at``."""
        return [a["labels"] for a in self.am_alerts.values() if _time(a["endsAt"]).timestamp() > at]


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    r = Receivers()
    routes = [
        ("POST", "/services/T000/B000/XXXX", r.slack_hook),
        ("POST", "/v2/enqueue", r.pagerduty_enqueue),
        ("POST", "/api/v2/alerts", r.am_post_alerts),
    ]
    async with http_server(routes) as base:
        r.base = base
        yield r


async def _no_sleep(_: float) -> None:
    return None


def _events(r: AlertRule) -> tuple[AlertEvent, AlertEvent]:
    ev = AlertEvaluator([r])
    [firing] = ev.evaluate("orders", STALLED, {}, T0)
    [resolved] = ev.evaluate("orders", OK, {}, T0 + 90)
    return firing, resolved


async def _send(r: AlertRule, *events: AlertEvent, attempts: int = 3) -> list[bool]:
    notifier = AlertNotifier(
        MonitoringConfig(alerts=[r], webhook_attempts=attempts), sleep=_no_sleep
    )
    try:
        return [await notifier.post(r, e) for e in events]
    finally:
        await notifier.close()


# ---- Slack ------------------------------------------------------------------------------------


async def test_slack_incoming_webhook_message(receivers: Receivers) -> None:
    r = rule(
        verdict="stalled",
        channel="slack",
        url=f"{receivers.base}/services/T000/B000/XXXX",
        severity="critical",
    )
    firing, resolved = _events(r)
    assert await _send(r, firing, resolved) == [True, True]
    first, second = receivers.slack
    assert first["text"] == (
        "alert stalled FIRING for orders: stalled: partition 0 has not moved from offset 5 "
        "for 31s &lt;&amp;&gt;"
    )
    section, context = first["blocks"]
    assert section["text"]["text"].startswith(
        ":red_circle: kafkaconsole alert *stalled* FIRING for *orders*\n"
    )
    assert "&lt;&amp;&gt;" in section["text"]["text"]
    assert context["elements"][0]["text"] == "severity critical · since 2023-11-14T22:13:20.000Z"
    assert second["text"] == "alert stalled resolved for orders: ok: caught up"
    assert second["blocks"][0]["text"]["text"].startswith(":large_green_circle:")


# ---- PagerDuty --------------------------------------------------------------------------------


async def test_pagerduty_triggers_then_resolves_by_dedup_key(receivers: Receivers) -> None:
    r = rule(
        verdict="stalled",
        channel="pagerduty",
        url=f"{receivers.base}/v2/enqueue",
        routing_key=ROUTING_KEY,
        severity="critical",
    )
    firing, resolved = _events(r)
    assert await _send(r, firing) == [True]
    [trigger] = receivers.pagerduty
    assert trigger["event_action"] == "trigger"
    assert trigger["routing_key"] == ROUTING_KEY
    assert trigger["dedup_key"] == "kafkaconsole/orders/stalled"
    payload = trigger["payload"]
    assert payload["severity"] == "critical" and payload["source"] == "kafkaconsole"
    assert payload["component"] == "orders" and payload["class"] == "stalled"
    assert payload["timestamp"] == "2023-11-14T22:13:20.000Z"
    assert payload["custom_details"]["consumer_id"] == "orders"
    assert list(receivers.pagerduty_open) == ["kafkaconsole/orders/stalled"]

    assert await _send(r, resolved) == [True]
    assert receivers.pagerduty[-1] == {
        "routing_key": ROUTING_KEY,
        "dedup_key": "kafkaconsole/orders/stalled",
        "event_action": "resolve",
    }
    assert receivers.pagerduty_open == {}


async def test_pagerduty_rate_limit_is_retried_a_refusal_is_not(
    receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    r = rule(
        verdict="stalled",
        channel="pagerduty",
        url=f"{receivers.base}/v2/enqueue",
        routing_key=ROUTING_KEY,
    )
    firing, _ = _events(r)
    receivers.throttle = 2
    assert await _send(r, firing) == [True]  # two 429s, then accepted
    assert len(receivers.pagerduty) == 1 and receivers.throttle == 0

    bad = rule(
        verdict="stalled",
        channel="pagerduty",
        url=f"{receivers.base}/v2/enqueue",
        routing_key="too-short",
    )
    caplog.set_level(logging.ERROR, logger="kafkaconsole.alert")
    assert await _send(bad, firing, attempts=5) == [False]
    assert len(receivers.pagerduty) == 1  # refused once, never retried
    assert "pagerduty failed after 1 attempt(s): HTTP 400" in caplog.text


def test_pagerduty_needs_a_routing_key(tmp_path: Any) -> None:
    path = tmp_path / "k.toml"
    path.write_text('[[monitoring.alerts]]\nverdict = "stalled"\nchannel = "pagerduty"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert 'routing_key is required with channel = "pagerduty"' in str(info.value.problems[0])


# ---- Alertmanager -----------------------------------------------------------------------------


async def test_alertmanager_fires_and_resolves(receivers: Receivers) -> None:
    r = rule(verdict="stalled", channel="alertmanager", url=receivers.base, severity="critical")
    firing, resolved = _events(r)
    assert await _send(r, firing) == [True]
    [[alert]] = receivers.alertmanager
    assert alert["labels"] == {
        "alertname": "stalled",
        "consumer_id": "orders",
        "severity": "critical",
        "service": "kafkaconsole",
        "verdict": "stalled",
    }
    assert alert["annotations"]["description"] == f"stalled: {STALLED.reason}"
    assert alert["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert _time(alert["endsAt"]).timestamp() == T0 + ALERTMANAGER_HOLD_S
    assert receivers.am_firing(T0 + 60) == [alert["labels"]]

    assert await _send(r, resolved) == [True]
    assert receivers.am_firing(T0 + 90.001) == []


async def test_alertmanager_is_re_sent_while_active_fleet_wide(
    receivers: Receivers, redis_client: aredis.Redis, unique: str
) -> None:
    """Alertmanager resolves an alert that is not re-sent before its endsAt: every instance
    re-sends the alerts active in Redis, even one that did not announce it."""
    r = rule(verdict="stalled", channel="alertmanager", url=f"{receivers.base}/api/v2/alerts")
    cfg = MonitoringConfig(alerts=[r])
    a_eval, b_eval = AlertEvaluator([r]), AlertEvaluator([r])
    a = (AlertLedger(redis_client, unique, "a"), AlertNotifier(cfg, sleep=_no_sleep))
    b = (AlertLedger(redis_client, unique, "b"), AlertNotifier(cfg, sleep=_no_sleep))

    async def tick(now: float, v: Verdict, instances: list[str]) -> None:
        for name in instances:
            ev, (ledger, notifier) = (a_eval, a) if name == "a" else (b_eval, b)
            ev.evaluate("orders", v, {}, now)
            for event in await ledger.reconcile(ev, ["orders"], now):
                notifier.deliver(event)
            notifier.refresh(ledger.active, now)
        for _, notifier in (a, b):
            if notifier._tasks:
                await notifier.close()

    try:
        await tick(T0, STALLED, ["a", "b"])  # a announces; b re-sends what Redis holds
        assert len(receivers.alertmanager) == 2
        assert all(
            batch[0]["startsAt"] == "2023-11-14T22:13:20.000Z" for batch in receivers.alertmanager
        )
        await tick(T0 + 30, STALLED, ["a", "b"])
        assert len(receivers.alertmanager) == 2  # nothing before ALERTMANAGER_RESEND_S
        # "a" is gone; "b" alone keeps the alert firing past the first endsAt
        now = T0
        while now < T0 + ALERTMANAGER_HOLD_S + 2 * ALERTMANAGER_RESEND_S:
            now += ALERTMANAGER_RESEND_S
            await tick(now, STALLED, ["b"])
            assert receivers.am_firing(now + 1) != []
        labels = receivers.am_firing(now)[0]
        assert labels["alertname"] == "stalled" and labels["consumer_id"] == "orders"
        sent = len(receivers.alertmanager)
        await tick(now + 1, OK, ["b"])  # b resolves it: endsAt now, and no re-send after
        assert receivers.am_firing(now + 1.001) == []
        await tick(now + 1 + ALERTMANAGER_RESEND_S, OK, ["b"])
        assert len(receivers.alertmanager) == sent + 1
        stored = await redis_client.get(f"{unique}:orders:alert:stalled")
        assert stored is None
    finally:
        for _, notifier in (a, b):
            await notifier.close()
    assert orjson.dumps(receivers.alertmanager)  # every batch was JSON the receiver accepted
