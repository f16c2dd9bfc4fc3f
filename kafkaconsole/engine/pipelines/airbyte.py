"""The ``airbyte`` pipeline kind: start an Airbyte job for the consumer's connection, follow it.

Trigger: ``POST {url}/v1/jobs`` with ``{"connectionId": <connection_id>, "jobType": ...}``,
answered with ``{"jobId": N, "status": ..., ...}``; the job id is the run id. ``url`` is the
public API's base (``.../api/public``, or ``https://api.airbyte.com``); one ending in ``/v1`` is
accepted too. Status: ``GET {url}/v1/jobs/{jobId}`` every ``poll_interval`` until the job is
``succeeded``, ``failed`` or ``cancelled`` (``pending``, ``queued``, ``running`` and
``incomplete``, an attempt failed and Airbyte tries again, are not final).

Airbyte answers 409 for two reasons, told apart by the problem's ``title``/``type``:

- ``try-again-later``: a job of the connection is already running. A ``sync`` trigger is then
  COALESCED into that job if it is a sync, and follows it: the window ends ``coalesced`` when
  that job succeeds, and failed when it fails. If no sync is running any more (it just ended),
  or this pipeline runs ``reset`` jobs (a reset that did not happen is not a success), the
  attempt fails retryably and is tried again per the retry policy.
- anything else (``state-conflict``): the attempt fails for good, with the problem quoted.

A create whose answer was lost (timeout, broken connection or 5xx after the request went out)
may have started a job. Before the next attempt creates one, the connection's jobs created
since the first attempt (minus :data:`CLOCK_SKEW` for the two clocks) are listed, and the
earliest one found that no other window of this pipeline claimed is followed instead. Should
a clock differ by more than that, the lookup misses the job while it runs, and the new create
meets the 409 above: the window is coalesced into that same job, still without a second one.

Credentials: a bearer ``token``; ``client_id``/``client_secret`` exchanged for an access token
at ``POST {url}/v1/applications/token`` (renewed before its ``expires_in`` and once on a 401);
or ``username``/``password`` as basic auth (self-hosted Airbyte).
"""

from __future__ import annotations

import base64
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kafkaconsole.config.models import AirbytePipeline as AirbyteConfig
from kafkaconsole.config.models import RetryPolicy
from kafkaconsole.engine.pipelines.base import CallOutcome, OnStatus, PipelineError
from kafkaconsole.engine.pipelines.remote import AccessToken, NotSent, RemoteRunPipeline, Reply
from kafkaconsole.engine.records import RunStatus, TriggerRecord

JOB_STATUSES: dict[str, RunStatus] = {
    "pending": RunStatus.QUEUED,
    "queued": RunStatus.QUEUED,
    "running": RunStatus.RUNNING,
    "incomplete": RunStatus.RUNNING,  # an attempt failed; Airbyte tries again
    "succeeded": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
    "cancelled": RunStatus.CANCELLED,
}
"""Airbyte JobStatusEnum -> run status (anything unknown counts as running)."""

BUSY_TITLE = "try-again-later"
"""The problem title of Airbyte's 409 "a sync is already running for the connection"."""

CLOCK_SKEW = 2.0
"""Seconds by which the lookup of a lost create reaches back before the first attempt, for a
difference between this host's clock and Airbyte's."""

REMEMBERED = 1000
"""Creates awaiting a lookup, coalesced runs and claimed jobs remembered (oldest dropped)."""

_CREDENTIAL_REJECTED = frozenset({400, 401, 403})


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _remember(store: OrderedDict[str, Any], key: str, value: Any) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > REMEMBERED:
        store.popitem(last=False)


class AirbytePipeline(RemoteRunPipeline):
    kind = "airbyte"
    cfg: AirbyteConfig

    def __init__(self, name: str, cfg: AirbyteConfig) -> None:
        super().__init__(name, cfg)
        if self.base_url.path.rstrip("/").endswith("/v1"):
            self.base_url = self.base_url.parent
        self._access: AccessToken | None = None
        self._basic: str | None = None
        if cfg.client_id is not None and cfg.client_secret is not None:
            self._access = AccessToken(self._exchange, clock=lambda: self.clock(), early=0.0)
        elif cfg.username is not None and cfg.password is not None:
            pair = f"{cfg.username}:{cfg.password}".encode()
            self._basic = f"Basic {base64.b64encode(pair).decode('ascii')}"
        self.wall_clock = time.time
        self._unanswered: OrderedDict[str, float] = OrderedDict()
        """idempotency key -> when its first unanswered create was sent (epoch seconds)"""
        self._coalesced: OrderedDict[str, str] = OrderedDict()
        """idempotency key -> the running job it was coalesced into"""
        self._claimed: OrderedDict[str, str] = OrderedDict()
        """job id -> the idempotency key it was created (or recovered) for"""

    def secrets(self) -> Iterable[str | None]:
        return (
            self.cfg.token,
            self.cfg.client_secret,
            self.cfg.password,
            self._basic,
            *(self._access.recent if self._access is not None else ()),
        )

    # -- credentials --------------------------------------------------------------------------

    async def _exchange(self) -> tuple[str, float | None]:
        what = "get access token"
        reply = await self.send(
            "POST",
            self.url("v1", "applications", "token"),
            what=what,
            json={
                "client_id": self.cfg.client_id,
                "client_secret": self.cfg.client_secret,
                "grant-type": "client_credentials",
            },
        )
        if reply.status in _CREDENTIAL_REJECTED:
            raise PipelineError(
                f"{what}: HTTP {reply.status}: Airbyte refused client_id/client_secret",
                retryable=False,
            )
        if not reply.ok:
            raise self.failure(what, reply)
        document = self.document(what, reply)
        token = document.get("access_token")
        if not isinstance(token, str) or not token:
            raise PipelineError(f"{what}: the answer holds no access_token", retryable=False)
        expires_in = document.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            return token, float(expires_in)
        return token, None

    async def _auth_headers(self, *, stale: str | None = None) -> dict[str, str]:
        if self.cfg.token is not None:
            return {"Authorization": f"Bearer {self.cfg.token}"}
        if self._access is not None:
            return {"Authorization": f"Bearer {await self._access.get(stale=stale)}"}
        if self._basic is not None:
            return {"Authorization": self._basic}
        return {}

    async def api(
        self,
        method: str,
        *path: str,
        what: str,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        """An authenticated request; with client credentials a 401 renews the token once."""
        url = self.url(*path)
        headers = await self._auth_headers()
        reply = await self.send(method, url, what=what, json=json, headers=headers, params=params)
        if reply.status == 401 and self._access is not None:
            refused = self._access.value
            headers = await self._auth_headers(stale=refused)
            reply = await self.send(
                method, url, what=what, json=json, headers=headers, params=params
            )
        return reply

    # -- runs ---------------------------------------------------------------------------------

    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        what = "create job"
        key = record.idempotency_key
        sent_at = self._unanswered.get(key)
        if sent_at is not None:
            found = await self._job_created_since(record.connection_id, sent_at, key)
            if found is not None:
                del self._unanswered[key]
                outcome = self.outcome(found)
                return replace(outcome, detail={**outcome.detail, "recovered_create": True})
        started = self.wall_clock()
        try:
            reply = await self.api(
                "POST",
                "v1",
                "jobs",
                what=what,
                json={"connectionId": record.connection_id, "jobType": self.cfg.job_type},
            )
        except PipelineError as exc:
            if exc.retryable and not isinstance(exc, NotSent):
                # the request may have reached Airbyte: look before creating another job
                _remember(self._unanswered, key, sent_at if sent_at is not None else started)
            raise
        if reply.status >= 500 and sent_at is None:
            _remember(self._unanswered, key, started)
        if reply.status == 409:
            return await self._busy(record, reply)
        if not reply.ok:
            raise self.failure(what, reply)
        self._unanswered.pop(key, None)
        job = self.document(what, reply)
        if job.get("jobId") is None:
            raise PipelineError(f"{what}: the answer holds no jobId", retryable=False)
        _remember(self._claimed, str(job["jobId"]), key)
        return self.outcome(job)

    async def poll(self, run_id: str, record: TriggerRecord) -> CallOutcome:
        what = f"job {run_id} status"
        reply = await self.api("GET", "v1", "jobs", run_id, what=what)
        if not reply.ok:
            raise self.failure(what, reply)
        job = self.document(what, reply)
        job.setdefault("jobId", run_id)
        return self.outcome(job)

    async def wait(
        self,
        run_id: str,
        record: TriggerRecord,
        *,
        policy: RetryPolicy | None = None,
        on_status: OnStatus | None = None,
    ) -> CallOutcome:
        """Follow the job; a window coalesced into it ends COALESCED if it succeeds."""
        outcome = await super().wait(run_id, record, policy=policy, on_status=on_status)
        if self._coalesced.get(record.idempotency_key) != run_id:
            return outcome
        del self._coalesced[record.idempotency_key]
        detail = {**outcome.detail, "coalesced_into": run_id}
        if outcome.status == RunStatus.SUCCEEDED:
            return replace(outcome, status=RunStatus.COALESCED, detail=detail)
        if "error" in detail and outcome.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            detail["error"] = f"{detail['error']} (this window was coalesced into it)"
        return replace(outcome, detail=detail)

    def outcome(self, job: dict[str, Any]) -> CallOutcome:
        job_id = str(job["jobId"])
        raw = str(job.get("status") or "").lower()
        status = JOB_STATUSES.get(raw, RunStatus.RUNNING)
        detail: dict[str, Any] = {"job_id": job_id, "airbyte_status": raw or None}
        for source, target in (
            ("jobType", "job_type"),
            ("rowsSynced", "rows_synced"),
            ("bytesSynced", "bytes_synced"),
            ("duration", "airbyte_duration"),
        ):
            if job.get(source) is not None:
                detail[target] = job[source]
        if status == RunStatus.FAILED:
            detail["error"] = f"Airbyte job {job_id} failed"
        elif status == RunStatus.CANCELLED:
            detail["error"] = f"Airbyte job {job_id} was cancelled"
        return CallOutcome(run_id=job_id, status=status, detail=detail)

    # -- 409 and lost answers -----------------------------------------------------------------

    async def _busy(self, record: TriggerRecord, reply: Reply) -> CallOutcome:
        """409: coalesce into the connection's running sync, or say why not."""
        problem = reply.json() or {}
        title = str(problem.get("title") or "")
        kind = str(problem.get("type") or "")
        excerpt = self.excerpt(reply.body)
        if title != BUSY_TITLE and not kind.endswith(f"#{BUSY_TITLE}"):
            raise PipelineError(f"create job: HTTP 409: {excerpt}", retryable=False)
        if self.cfg.job_type != "sync":
            raise PipelineError(
                f"create job: HTTP 409: {excerpt} (the {self.cfg.job_type} did not start; "
                "trying again later)",
                retryable=True,
                retry_after=reply.retry_after,
            )
        running = await self._running_sync(record.connection_id)
        if running is None:
            raise PipelineError(
                f"create job: HTTP 409: {excerpt} (no sync of the connection is running any "
                "more; trying again)",
                retryable=True,
                retry_after=reply.retry_after,
            )
        self._unanswered.pop(record.idempotency_key, None)
        outcome = self.outcome(running)
        _remember(self._coalesced, record.idempotency_key, outcome.run_id)
        detail = {
            **outcome.detail,
            "coalesced_into": outcome.run_id,
            "http_status": 409,
            "message": excerpt,
        }
        return replace(outcome, detail=detail)

    async def _jobs(self, what: str, params: dict[str, str]) -> list[dict[str, Any]]:
        reply = await self.api("GET", "v1", "jobs", what=what, params=params)
        if not reply.ok:
            raise self.failure(what, reply)
        jobs = self.document(what, reply).get("data")
        if not isinstance(jobs, list):
            raise PipelineError(f"{what}: the answer holds no data list", retryable=False)
        return [job for job in jobs if isinstance(job, dict) and job.get("jobId") is not None]

    async def _running_sync(self, connection_id: str) -> dict[str, Any] | None:
        """The connection's newest unfinished sync job, if any."""
        jobs = await self._jobs(
            "list running jobs",
            {
                "connectionId": connection_id,
                "jobType": "sync",
                "limit": "10",
                "orderBy": "createdAt|DESC",
            },
        )
        for job in jobs:
            status = JOB_STATUSES.get(str(job.get("status") or "").lower(), RunStatus.RUNNING)
            if not status.final and str(job.get("jobType") or "sync") == "sync":
                return job
        return None

    async def _job_created_since(
        self, connection_id: str, sent_at: float, key: str
    ) -> dict[str, Any] | None:
        """The earliest job of ``connection_id`` (of our job type) created since ``sent_at``
        that no other window claimed; it is then claimed for ``key``."""
        jobs = await self._jobs(
            "look up the unanswered create",
            {
                "connectionId": connection_id,
                "jobType": self.cfg.job_type,
                "createdAtStart": _iso(sent_at - CLOCK_SKEW),
                "limit": "20",
                "orderBy": "createdAt|ASC",
            },
        )
        for job in jobs:
            job_id = str(job["jobId"])
            if self._claimed.get(job_id, key) == key:
                _remember(self._claimed, job_id, key)
                return job
        return None
