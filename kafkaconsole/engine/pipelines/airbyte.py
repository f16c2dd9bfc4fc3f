"""The ``airbyte`` pipeline kind: start an Airbyte job for the consumer's connection, follow it.

Trigger: ``POST {url}/v1/jobs`` with ``{"connectionId": <connection_id>, "jobType": ...}``,
answered with ``{"jobId": N, "status": "pending" | "running", ...}``; the job id is the run id.
Status: ``GET {url}/v1/jobs/{jobId}`` every ``poll_interval`` until ``succeeded``, ``failed``
or ``cancelled`` (``incomplete`` means Airbyte retries an attempt: still running).

Airbyte answers 409 when a job for the connection is already running. The new window's data
will be picked up by that job (or the next one), so the trigger is COALESCED into it: not a
failure. Its job id is looked up (best effort) and recorded.

Credentials: a bearer ``token``, or ``client_id``/``client_secret`` exchanged for an access
token at ``POST {url}/v1/applications/token``. Access tokens are short-lived: a token is
renewed shortly before its ``expires_in`` and, once, on a 401.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from kafkaconsole.config.models import AirbytePipeline as AirbyteConfig
from kafkaconsole.engine.pipelines.base import CallOutcome, PipelineError
from kafkaconsole.engine.pipelines.remote import RemoteRunPipeline, Reply
from kafkaconsole.engine.records import RunStatus, TriggerRecord

JOB_STATUSES: dict[str, RunStatus] = {
    "pending": RunStatus.QUEUED,
    "running": RunStatus.RUNNING,
    "incomplete": RunStatus.RUNNING,  # an attempt failed; Airbyte tries again
    "succeeded": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
    "cancelled": RunStatus.CANCELLED,
}
"""Airbyte JobStatusEnum -> run status (anything unknown counts as running)."""

TOKEN_EARLY = 30.0
"""Seconds before its expiry that an access token is renewed (at most half its lifetime)."""

_CREDENTIAL_REJECTED = frozenset({400, 401, 403})


class AirbytePipeline(RemoteRunPipeline):
    kind = "airbyte"
    cfg: AirbyteConfig

    def __init__(self, name: str, cfg: AirbyteConfig) -> None:
        super().__init__(name, cfg)
        self._access_token: str | None = None
        self._token_renew_at: float | None = None
        self._token_lock: asyncio.Lock | None = None

    def secrets(self) -> Iterable[str | None]:
        return (self.cfg.token, self.cfg.client_secret, self._access_token)

    # -- credentials --------------------------------------------------------------------------

    @property
    def _exchanges_credentials(self) -> bool:
        return self.cfg.client_id is not None and self.cfg.client_secret is not None

    async def _token(self, *, stale: str | None = None) -> str:
        """The access token; renewed if it is about to expire or equals ``stale`` (the one
        a 401 just refused). One exchange at a time."""
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        async with self._token_lock:
            token = self._access_token
            fresh = self._token_renew_at is None or self.clock() < self._token_renew_at
            if token is not None and token != stale and fresh:
                return token
            return await self._exchange()

    async def _exchange(self) -> str:
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
        self._access_token = token
        expires_in = document.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            lifetime = float(expires_in)
            self._token_renew_at = self.clock() + max(lifetime - TOKEN_EARLY, lifetime / 2)
        else:
            self._token_renew_at = None
        return token

    async def _auth_headers(self, *, stale: str | None = None) -> dict[str, str]:
        if self.cfg.token is not None:
            return {"Authorization": f"Bearer {self.cfg.token}"}
        if self._exchanges_credentials:
            return {"Authorization": f"Bearer {await self._token(stale=stale)}"}
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
        if reply.status == 401 and self._exchanges_credentials:
            refused = self._access_token
            headers = await self._auth_headers(stale=refused)
            reply = await self.send(
                method, url, what=what, json=json, headers=headers, params=params
            )
        return reply

    # -- runs ---------------------------------------------------------------------------------

    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        what = "create job"
        reply = await self.api(
            "POST",
            "v1",
            "jobs",
            what=what,
            json={"connectionId": record.connection_id, "jobType": self.cfg.job_type},
        )
        if reply.status == 409:
            return await self._coalesced(record, reply)
        if not reply.ok:
            raise self.failure(what, reply)
        job = self.document(what, reply)
        if job.get("jobId") is None:
            raise PipelineError(f"{what}: the answer holds no jobId", retryable=False)
        return self.outcome(job)

    async def poll(self, run_id: str, record: TriggerRecord) -> CallOutcome:
        what = f"job {run_id} status"
        reply = await self.api("GET", "v1", "jobs", run_id, what=what)
        if not reply.ok:
            raise self.failure(what, reply)
        job = self.document(what, reply)
        job.setdefault("jobId", run_id)
        return self.outcome(job)

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

    async def _coalesced(self, record: TriggerRecord, reply: Reply) -> CallOutcome:
        """409: a job for this connection is running; name it if Airbyte tells us which."""
        running = await self._running_job_id(record.connection_id)
        detail: dict[str, Any] = {"http_status": 409, "message": self.excerpt(reply.body)}
        if running is not None:
            detail["coalesced_into"] = running
        return CallOutcome(run_id=running, status=RunStatus.COALESCED, detail=detail)

    async def _running_job_id(self, connection_id: str) -> str | None:
        try:
            reply = await self.api(
                "GET",
                "v1",
                "jobs",
                what="list jobs",
                params={"connectionId": connection_id, "limit": "5", "orderBy": "createdAt|DESC"},
            )
        except PipelineError:
            return None
        document = reply.json() if reply.ok else None
        jobs = document.get("data") if document else None
        if not isinstance(jobs, list):
            return None
        for job in jobs:
            if not isinstance(job, dict) or job.get("jobId") is None:
                continue
            status = JOB_STATUSES.get(str(job.get("status") or "").lower(), RunStatus.RUNNING)
            if not status.final:
                return str(job["jobId"])
        return None
