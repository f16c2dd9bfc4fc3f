"""The ``airflow`` pipeline kind: trigger a DAG run with the window as its conf, follow it.

Trigger (Airflow 2, ``api_version = "v1"``): ``POST {url}/api/v1/dags/{dag_id}/dagRuns`` with
``{"dag_run_id": <idempotency key>, "conf": <trigger record>}``. Airflow 3 (``"v2"``):
``POST {url}/api/v2/dags/{dag_id}/dagRuns`` with ``"logical_date": null`` added. The DAG run
id is the idempotency key ``<consumer_id>:<window_id>``, so a trigger delivered twice (a retry
after a lost answer, a crash mid-call, a re-dispatch) meets Airflow's 409: the run is then
looked up and followed instead of started again. A 409 for which no run with our id exists is
Airflow 2 refusing a second run at the same logical date (the trigger time, when none is sent):
that attempt is retryable, and the next one gets a new logical date. To run a window's DAG
again after it failed, clear that DAG run in Airflow (a re-dispatch then follows the cleared
run).

Status: ``GET .../dagRuns/{dag_run_id}`` every ``poll_interval`` until ``state`` is ``success``
or ``failed``.

Auth: with v1, ``username``/``password`` go as basic auth. Airflow 3's API takes only JWTs:
with v2 they are exchanged at ``POST {url}/auth/token`` for an access token, which is renewed
before its ``exp`` (see :class:`~kafkaconsole.engine.pipelines.remote.AccessToken`) and once
when a 401 refuses it. A configured ``token`` is sent as it is and cannot be renewed: the
engine warns at start when it is a JWT that expires, and a 401 after its expiry says so.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kafkaconsole.config.models import AirflowPipeline as AirflowConfig
from kafkaconsole.engine.pipelines.base import CallOutcome, PipelineError
from kafkaconsole.engine.pipelines.remote import (
    AccessToken,
    RemoteRunPipeline,
    Reply,
    jwt_claims,
    jwt_lifetime,
)
from kafkaconsole.engine.records import RunStatus, TriggerRecord

log = logging.getLogger("kafkaconsole.pipelines")

DAG_RUN_STATES: dict[str, RunStatus] = {
    "queued": RunStatus.QUEUED,
    "running": RunStatus.RUNNING,
    "success": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
}
"""Airflow DagRunState -> run status (anything else counts as running)."""

_CREDENTIALS_REFUSED = frozenset({400, 401, 403})


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class AirflowPipeline(RemoteRunPipeline):
    kind = "airflow"
    cfg: AirflowConfig

    def __init__(self, name: str, cfg: AirflowConfig) -> None:
        super().__init__(name, cfg)
        self._static: str | None = None
        self._jwt: AccessToken | None = None
        self._warned = False
        if cfg.token is not None:
            self._static = f"Bearer {cfg.token}"
        elif cfg.username is not None and cfg.password is not None:
            if cfg.api_version == "v1":
                pair = f"{cfg.username}:{cfg.password}".encode()
                self._static = f"Basic {base64.b64encode(pair).decode('ascii')}"
            else:
                self._jwt = AccessToken(
                    self._exchange, clock=lambda: self.clock(), early=cfg.timeout
                )

    def secrets(self) -> Iterable[str | None]:
        return (
            self.cfg.password,
            self.cfg.token,
            self._static,
            *(self._jwt.recent if self._jwt is not None else ()),
        )

    @property
    def token_expires_at(self) -> float | None:
        """When the configured ``token`` expires (epoch seconds), if it is a JWT with ``exp``."""
        if self.cfg.token is None:
            return None
        expires = (jwt_claims(self.cfg.token) or {}).get("exp")
        return float(expires) if isinstance(expires, int | float) else None

    async def start(self) -> None:
        await super().start()
        expires = self.token_expires_at
        if expires is not None and not self._warned:
            self._warned = True
            state = "expired" if expires <= time.time() else "expires"
            log.warning(
                "pipeline %s: the configured Airflow token %s at %s and cannot be renewed; "
                "configure username/password to have tokens obtained and renewed",
                self.name,
                state,
                _iso(expires),
            )

    # -- credentials --------------------------------------------------------------------------

    async def _exchange(self) -> tuple[str, float | None]:
        what = "get access token"
        reply = await self.send(
            "POST",
            self.url("auth", "token"),
            what=what,
            json={"username": self.cfg.username, "password": self.cfg.password},
        )
        if reply.status in _CREDENTIALS_REFUSED:
            raise PipelineError(
                f"{what}: HTTP {reply.status}: Airflow refused username/password",
                retryable=False,
            )
        if not reply.ok:
            raise self.failure(what, reply)
        token = self.document(what, reply).get("access_token")
        if not isinstance(token, str) or not token:
            raise PipelineError(f"{what}: the answer holds no access_token", retryable=False)
        return token, jwt_lifetime(token)

    async def _authorization(self, *, stale: str | None = None) -> dict[str, str]:
        if self._jwt is not None:
            return {"Authorization": f"Bearer {await self._jwt.get(stale=stale)}"}
        return {"Authorization": self._static} if self._static else {}

    async def _api(self, method: str, *path: str, what: str, json: Any = None) -> Reply:
        """An authenticated request under ``/api/<version>/dags/<dag_id>/dagRuns``; a 401
        renews an obtained token once."""
        url = self.url("api", self.cfg.api_version, "dags", self.cfg.dag_id, "dagRuns", *path)
        headers = await self._authorization()
        reply = await self.send(method, url, what=what, json=json, headers=headers)
        if reply.status == 401 and self._jwt is not None:
            refused = self._jwt.value
            headers = await self._authorization(stale=refused)
            reply = await self.send(method, url, what=what, json=json, headers=headers)
        expires = self.token_expires_at
        if reply.status == 401 and expires is not None and expires <= time.time():
            raise PipelineError(
                f"{what}: HTTP 401: the configured token expired at {_iso(expires)}; configure "
                "username/password to have tokens obtained and renewed",
                retryable=False,
            )
        return reply

    # -- runs ---------------------------------------------------------------------------------

    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        what = "trigger DAG run"
        run_id = record.idempotency_key
        body: dict[str, Any] = {"dag_run_id": run_id}
        if self.cfg.api_version == "v2":
            body["logical_date"] = None
        body["conf"] = payload
        reply = await self._api("POST", what=what, json=body)
        if reply.status == 409:
            return await self._existing(run_id, reply)
        if not reply.ok:
            raise self.failure(what, reply)
        return self.outcome(self.document(what, reply), run_id)

    async def _existing(self, run_id: str, conflict: Reply) -> CallOutcome:
        """409: follow the run with our id (a re-delivery); if there is none, the conflict was
        another run's logical date (Airflow 2): retryable, the next attempt gets a new one."""
        what = f"DAG run {run_id} state"
        reply = await self._api("GET", run_id, what=what)
        if reply.status == 404:
            excerpt = self.excerpt(conflict.body)
            raise PipelineError(
                f"trigger DAG run: HTTP 409: {excerpt} (no run {run_id} exists: another run of "
                f"{self.cfg.dag_id} holds the same logical date; trying again)",
                retryable=True,
            )
        if not reply.ok:
            raise self.failure(what, reply)
        outcome = self.outcome(self.document(what, reply), run_id)
        return replace(outcome, detail={**outcome.detail, "existing_run": True})

    async def poll(self, run_id: str, record: TriggerRecord) -> CallOutcome:
        what = f"DAG run {run_id} state"
        reply = await self._api("GET", run_id, what=what)
        if not reply.ok:
            raise self.failure(what, reply)
        return self.outcome(self.document(what, reply), run_id)

    def outcome(self, dag_run: dict[str, Any], fallback_run_id: str) -> CallOutcome:
        run_id = str(dag_run.get("dag_run_id") or fallback_run_id)
        raw = str(dag_run.get("state") or "").lower()
        status = DAG_RUN_STATES.get(raw, RunStatus.RUNNING)
        detail: dict[str, Any] = {
            "dag_id": self.cfg.dag_id,
            "dag_run_id": run_id,
            "airflow_state": raw or None,
        }
        for key in ("logical_date", "start_date", "end_date"):
            if dag_run.get(key) is not None:
                detail[key] = dag_run[key]
        if status == RunStatus.FAILED:
            detail["error"] = f"Airflow DAG run {run_id} of {self.cfg.dag_id} failed"
        return CallOutcome(run_id=run_id, status=status, detail=detail)
