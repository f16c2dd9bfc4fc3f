"""The ``airflow`` pipeline kind: trigger a DAG run with the window as its conf, follow it.

Trigger (Airflow 2, ``api_version = "v1"``): ``POST {url}/api/v1/dags/{dag_id}/dagRuns`` with
``{"dag_run_id": <idempotency key>, "conf": <trigger record>}``. Airflow 3 (``"v2"``):
``POST {url}/api/v2/dags/{dag_id}/dagRuns`` with ``"logical_date": null`` added. The DAG run
id is the idempotency key ``<consumer_id>:<window_id>``, so a trigger delivered twice (a retry
after a lost answer, a crash mid-call, a re-dispatch) meets Airflow's 409 "already exists": the
existing run is then followed instead of failing. To run a window's DAG again after it failed,
clear that DAG run in Airflow (or re-dispatch it after clearing: the cleared run is followed).

Status: ``GET .../dagRuns/{dag_run_id}`` every ``poll_interval`` until ``state`` is ``success``
or ``failed``. Auth: basic (``username``/``password``) or a bearer ``token``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from kafkaconsole.config.models import AirflowPipeline as AirflowConfig
from kafkaconsole.engine.pipelines.base import CallOutcome
from kafkaconsole.engine.pipelines.remote import RemoteRunPipeline, Reply
from kafkaconsole.engine.records import RunStatus, TriggerRecord

DAG_RUN_STATES: dict[str, RunStatus] = {
    "queued": RunStatus.QUEUED,
    "running": RunStatus.RUNNING,
    "success": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
}
"""Airflow DagRunState -> run status (anything else counts as running)."""


class AirflowPipeline(RemoteRunPipeline):
    kind = "airflow"
    cfg: AirflowConfig

    def __init__(self, name: str, cfg: AirflowConfig) -> None:
        super().__init__(name, cfg)
        self._authorization: str | None = None
        if cfg.token is not None:
            self._authorization = f"Bearer {cfg.token}"
        elif cfg.username is not None and cfg.password is not None:
            pair = f"{cfg.username}:{cfg.password}".encode()
            self._authorization = f"Basic {base64.b64encode(pair).decode('ascii')}"

    def secrets(self) -> Iterable[str | None]:
        return (self.cfg.password, self.cfg.token, self._authorization)

    async def _api(self, method: str, *path: str, what: str, json: Any = None) -> Reply:
        return await self.send(
            method,
            self.url("api", self.cfg.api_version, "dags", self.cfg.dag_id, "dagRuns", *path),
            what=what,
            json=json,
            headers={"Authorization": self._authorization} if self._authorization else None,
        )

    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        what = "trigger DAG run"
        run_id = record.idempotency_key
        body: dict[str, Any] = {"dag_run_id": run_id}
        if self.cfg.api_version == "v2":
            body["logical_date"] = None
        body["conf"] = payload
        reply = await self._api("POST", what=what, json=body)
        if reply.status == 409:  # this run id exists: a re-delivery; follow that run
            outcome = await self.poll(run_id, record)
            return replace(outcome, detail={**outcome.detail, "existing_run": True})
        if not reply.ok:
            raise self.failure(what, reply)
        return self.outcome(self.document(what, reply), run_id)

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
