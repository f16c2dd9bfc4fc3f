"""The health monitor of one instance: samples the fleet, judges it, raises the alerts.

Once every ``[monitoring] sample_interval`` it reads the fleet as the CLI does
(:meth:`Fleet.read`: every heartbeat plus the shared Redis state, as typed
:class:`~kafkaconsole.engine.fleet_status.ConsumerStatus` values) and the latest pipeline
runs and breaker of each consumer, appends one :class:`~kafkaconsole.engine.health.HealthSample`
per consumer to a sliding window, computes each verdict
(:func:`~kafkaconsole.engine.health.verdict`) and steps the alert rules
(:class:`~kafkaconsole.engine.alerts.AlertEvaluator`). Because the input is fleet-wide, every
instance reaches the same verdicts; the :class:`~kafkaconsole.engine.alerts.AlertLedger` makes
one of them announce each alert. The engine puts :meth:`HealthMonitor.health` into its status
snapshots (and so into the heartbeats the CLI, the API and the TUI read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kafkaconsole.config.models import AppConfig
from kafkaconsole.engine.alerts import (
    AlertEvaluator,
    AlertEvent,
    AlertLedger,
    AlertNotifier,
)
from kafkaconsole.engine.breaker import BreakerSnapshot, BreakerState
from kafkaconsole.engine.fleet import YIELD_EVERY, Fleet
from kafkaconsole.engine.health import (
    HealthSample,
    Verdict,
    VerdictName,
    lookback,
    metrics,
    sample_from_status,
    samples_to_keep,
    verdict,
)
from kafkaconsole.engine.keys import ConsumerKeys, tagged_layout
from kafkaconsole.engine.records import HistoryEntry, stored_run
from kafkaconsole.engine.status import ActiveAlert

log = logging.getLogger("kafkaconsole.health")

AlertListener = Callable[[AlertEvent], None]


@dataclass(frozen=True, slots=True)
class ConsumerHealth:
    """A consumer's verdict as this instance last computed it, with its active alerts."""

    verdict: Verdict
    since_ms: int
    alerts: tuple[ActiveAlert, ...] = ()


@dataclass(frozen=True, slots=True)
class RunFacts:
    """The latest pipeline runs and the breaker of one consumer, from Redis."""

    runs: tuple[str, ...] = ()
    run_error: str | None = None
    breaker_state: str | None = None
    breaker_failures: int = 0


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def read_run_facts(
    redis: Redis,
    prefix: str,
    consumer_ids: Sequence[str],
    runs: int,
    now: float,
    tagged: bool = False,
) -> dict[str, RunFacts]:
    """Final statuses of each consumer's ``runs`` latest windows and its breaker state (an
    open breaker whose cooldown is over at ``now``, epoch seconds, reads as half-open)."""
    if not consumer_ids:
        return {}
    keys = [ConsumerKeys(prefix, cid, tagged) for cid in consumer_ids]
    pipe = redis.pipeline(transaction=False)
    for k in keys:
        pipe.xrevrange(k.history, count=runs)
        pipe.hgetall(k.breaker)
    res = await pipe.execute()
    wids: list[list[str]] = []
    pipe = redis.pipeline(transaction=False)
    for n, k in enumerate(keys):
        ids = [
            str(HistoryEntry.parse(f).window_id)
            for _, f in res[2 * n] or []
            if f and b"window_id" in f
        ]
        wids.append(ids)
        if ids:
            pipe.hmget(k.runs, ids)
    runs_raw = iter(await pipe.execute()) if any(wids) else iter(())
    out: dict[str, RunFacts] = {}
    for n, cid in enumerate(consumer_ids):
        statuses: list[str] = []
        error = None
        if wids[n]:
            for raw in next(runs_raw):
                body = stored_run(raw)
                status = str(body.get("status", "pending"))
                if status in ("pending", "queued", "running"):
                    continue  # not final yet: judge the finished runs
                statuses.append(status)
                if status == "failed" and error is None:
                    error = body.get("error")
        breaker = BreakerSnapshot.from_redis_hash(res[2 * n + 1] or {})
        state = None
        if breaker is not None:
            state = str(breaker.state)
            if (
                breaker.state == BreakerState.OPEN
                and breaker.probe_at is not None
                and now >= breaker.probe_at
            ):
                state = str(BreakerState.HALF_OPEN)
        out[cid] = RunFacts(
            runs=tuple(statuses),
            run_error=error,
            breaker_state=state,
            breaker_failures=breaker.consecutive_failures if breaker else 0,
        )
    return out


class HealthMonitor:
    """Samples the fleet once per interval; keeps verdicts and alerts for the snapshots."""

    def __init__(
        self,
        redis: Redis,
        config: AppConfig,
        instance_id: str,
        *,
        clock: Callable[[], float] = time.time,
        notifier: AlertNotifier | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.monitoring
        #: seconds between samples: [monitoring] sample_interval, longer for large fleets
        self.interval = self.cfg.sample_interval
        self.redis = redis
        self.instance_id = instance_id
        self.clock = clock
        self.fleet = Fleet(redis, config)
        self.evaluator = AlertEvaluator(self.cfg.alerts)
        self.ledger = AlertLedger(
            redis, config.redis.key_prefix, instance_id, tagged_layout(config.redis)
        )
        self.notifier = notifier or AlertNotifier(self.cfg)
        self._samples: dict[str, deque[HealthSample]] = {}
        self._sampled: set[str] = set()  # the consumers of the last sample reconciled
        self._health: dict[str, ConsumerHealth] = {}
        self._listeners: list[AlertListener] = []
        self._started_at: float | None = None
        self._failing = False

    def follow(self, config: AppConfig) -> None:
        """Sample the consumers of ``config`` from the next sample on: those a reload added
        or removed, and those defined at runtime (an alert rule naming one applies once it
        runs; the alerts of a consumer no longer run resolve). The [monitoring] settings stay
        those it started with (they change at a restart)."""
        self.fleet = Fleet(
            self.redis, config.model_copy(update={"monitoring": self.config.monitoring})
        )

    # ---- reading ---------------------------------------------------------------------------
    def health(self, consumer_id: str) -> ConsumerHealth | None:
        """The consumer's latest verdict and active alerts (None before the first sample)."""
        return self._health.get(consumer_id)

    def samples(self, consumer_id: str) -> tuple[HealthSample, ...]:
        return tuple(self._samples.get(consumer_id, ()))

    def subscribe(self, listener: AlertListener) -> None:
        """Call ``listener`` with every alert firing or resolving as this instance sees it."""
        self._listeners.append(listener)

    @property
    def settled(self) -> bool:
        """Whether the samples reach back far enough for every verdict to be possible."""
        return self._started_at is not None and self.clock() - self._started_at >= lookback(
            self.cfg
        )

    # ---- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.interval = self.config.monitor_interval_s(await self.tick())
                if self._failing:
                    log.info("health monitor: sampling the fleet again")
                self._failing = False
            except (RedisError, OSError) as exc:
                if not self._failing:
                    log.warning("health monitor: cannot read the fleet: %s", exc)
                self._failing = True
            except Exception:  # a bug here must not end health monitoring for good
                if not self._failing:
                    log.exception("health monitor: sample failed")
                self._failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def tick(self) -> int:
        """Take one sample of every consumer, judge it, step and reconcile the alerts; the
        number of consumers sampled."""
        consumers = (await self.fleet.read()).consumers
        ids = [c.consumer_id for c in consumers]
        now = self.clock()
        prefix = self.config.redis.key_prefix
        facts = await read_run_facts(
            self.redis, prefix, ids, self.cfg.failing_runs, now, tagged_layout(self.config.redis)
        )
        if self._started_at is None:
            self._started_at = now
        settled = self.settled
        local: list[AlertEvent] = []
        for n, c in enumerate(consumers):
            if n and n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # hundreds of verdicts must not hold up the loop
            cid = c.consumer_id
            window = self._samples.setdefault(cid, deque(maxlen=samples_to_keep(self.cfg)))
            f = facts.get(cid, RunFacts())
            window.append(
                sample_from_status(
                    c,
                    now,
                    runs=f.runs,
                    run_error=f.run_error,
                    breaker_state=f.breaker_state,
                    breaker_failures=f.breaker_failures,
                )
            )
            before = self._health.get(cid)
            v = verdict(window, self.cfg, now, before.verdict if before is not None else None)
            local += self.evaluator.evaluate(cid, v, metrics(window, self.cfg, now), now, settled)
            self._judged(cid, v, now)
        # consumers sampled before and no longer run (a reload, a runtime definition removed):
        # their alerts are known clear, so the ledger resolves those still firing
        retired = sorted(self._sampled - set(ids))
        for cid in retired:
            self.evaluator.retire(cid)
            self._samples.pop(cid, None)
            self._health.pop(cid, None)
        won = await self.ledger.reconcile(self.evaluator, [*ids, *retired], now)
        self._sampled = set(ids)
        for event in won:
            self.notifier.deliver(event)
        self.notifier.refresh(self.ledger.active, now)
        for event in local:
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("alert listener failed")
        return len(consumers)

    def _judged(self, cid: str, v: Verdict, now: float) -> None:
        before = self._health.get(cid)
        since_ms = int(now * 1000)
        if before is not None and before.verdict.name == v.name:
            since_ms = before.since_ms
        elif before is not None and v.name != VerdictName.OK:
            log.info("%s: verdict %s: %s", cid, v.name, v.reason)
        elif before is not None:
            log.info("%s: verdict ok again (was %s)", cid, before.verdict.name)
        alerts = tuple(
            ActiveAlert(
                alert=rule.rule_id,
                channel=rule.channel,
                message=track.message,
                since_ms=int((now if track.holding_since is None else track.holding_since) * 1000),
                value=track.value,
            )
            for rule, track in self.evaluator.firing(cid)
        )
        self._health[cid] = ConsumerHealth(v, since_ms, alerts)

    async def close(self) -> None:
        await self.notifier.close()
