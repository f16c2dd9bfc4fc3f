"""The airflow pipeline kind against a real Apache Airflow 3 (api v2) and Airflow 2 (api v1).

Windows trigger DAG runs of the tier's own DAGs (``tests/integration/dags``): the run id is the
window's idempotency key and the conf is its trigger record (the DAG checks both); runs are
followed to ``success`` or ``failed``; a window delivered twice does not start a second run;
Airflow 3's JWTs (30 s in the tier) are obtained from username/password and renewed; and a
real engine over the session's broker and Redis records the runs in its history.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aredis

from kafkaconsole.config.models import AirflowPipeline as AirflowConfig
from kafkaconsole.config.models import RetryPolicy
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.pipelines import Pipeline, build_pipeline
from kafkaconsole.engine.pipelines.airflow import AirflowPipeline
from kafkaconsole.engine.pipelines.remote import jwt_claims
from kafkaconsole.engine.records import OffsetRange, RunStatus, TriggerReason, TriggerRecord
from kafkaconsole.engine.retry import call_with_retry, run_pipeline
from tests.engine_support import make_config, start_engine
from tests.helpers import KafkaHelper, wait_for
from tests.integration.airflow_server import JWT_LEEWAY, JWT_LIFETIME, AirflowServer

pytestmark = pytest.mark.integration

LOAD = "kafkaconsole_it_load"
FAILS = "kafkaconsole_it_fails"
POLICY = RetryPolicy(max_attempts=3, initial_backoff=0.5, max_backoff=2.0, jitter=False)
RUN_TIMEOUT = 240.0
"""Seconds a DAG run may take here: a one-task run takes about 10 s on 2 idle cores."""


def record_of(consumer_id: str, window_id: int = 1) -> TriggerRecord:
    return TriggerRecord(
        consumer_id=consumer_id,
        pipeline_name="dag",
        connection_id="conn-1",
        job_type="sync",
        window_id=window_id,
        reason=TriggerReason.COUNT,
        count=10,
        opened_at_ms=1_717_243_200_000,
        closed_at_ms=1_717_243_212_345,
        offsets=(OffsetRange("orders", 0, 10 * window_id, 10 * window_id + 9),),
    )


def pipeline_for(server: AirflowServer, dag_id: str = LOAD, **overrides: Any) -> Pipeline:
    settings: dict[str, Any] = {
        "kind": "airflow",
        "url": server.url,
        "dag_id": dag_id,
        "api_version": server.api_version,
        "username": server.username,
        "password": server.password,
        "poll_interval": 1.0,
        "run_timeout": RUN_TIMEOUT,
        "timeout": 30.0,
        **overrides,
    }
    return build_pipeline("dag", AirflowConfig.model_validate(settings))


async def runs_of(server: AirflowServer, dag_id: str) -> dict[str, dict[str, Any]]:
    runs = await asyncio.to_thread(server.dag_runs, dag_id)
    return {run["dag_run_id"]: run for run in runs}


async def test_window_runs_the_dag_with_the_record_as_conf(
    airflow: AirflowServer, unique: str
) -> None:
    record = record_of(unique)
    payload = record.to_json_dict()
    async with pipeline_for(airflow) as pipeline:
        result = await run_pipeline(pipeline, record, payload, POLICY)
    assert result.status == RunStatus.SUCCEEDED, result.error
    assert (result.run_id, result.attempts) == (f"{unique}:1", 1)
    assert result.detail["airflow_state"] == "success"
    run = (await runs_of(airflow, LOAD))[f"{unique}:1"]
    assert run["state"] == "success"
    assert run["conf"] == payload


async def test_failed_dag_run_fails_the_window(airflow: AirflowServer, unique: str) -> None:
    record = record_of(unique)
    async with pipeline_for(airflow, FAILS) as pipeline:
        result = await run_pipeline(pipeline, record, record.to_json_dict(), POLICY)
    assert result.status == RunStatus.FAILED
    assert result.run_id == f"{unique}:1"
    assert result.error == f"Airflow DAG run {unique}:1 of {FAILS} failed"
    assert result.attempts == 1  # a failed run is not retried by triggering another
    assert (await runs_of(airflow, FAILS))[f"{unique}:1"]["state"] == "failed"


async def test_redelivered_window_follows_the_same_run(airflow: AirflowServer, unique: str) -> None:
    record = record_of(unique, window_id=4)
    payload = record.to_json_dict()
    async with pipeline_for(airflow) as pipeline:
        started = await call_with_retry(pipeline, record, payload, POLICY)
        assert started.status in (RunStatus.QUEUED, RunStatus.RUNNING)
        # the same window again (a crash after the trigger, a re-dispatch): Airflow's 409
        again = await run_pipeline(pipeline, record, payload, POLICY)
    assert again.status == RunStatus.SUCCEEDED, again.error
    assert again.detail["existing_run"] is True
    assert again.attempts == 1
    runs = await runs_of(airflow, LOAD)
    assert [run_id for run_id in runs if run_id.startswith(f"{unique}:")] == [f"{unique}:4"]


async def test_airflow3_tokens_are_obtained_renewed_and_an_expired_one_is_named(
    airflow3: AirflowServer, unique: str
) -> None:
    records = [record_of(unique, window) for window in (1, 2, 3)]
    async with pipeline_for(airflow3) as pipeline:
        assert isinstance(pipeline, AirflowPipeline) and pipeline._jwt is not None
        first = await run_pipeline(pipeline, records[0], records[0].to_json_dict(), POLICY)
        first_token = pipeline._jwt.value
        assert first_token is not None and pipeline._jwt.obtained == 1
        obtained_at = time.monotonic()  # (a little after the token was: on the safe side)
        # past half the token's life: JWT_LIFETIME is shorter than twice the renewal margin
        await asyncio.sleep(max(JWT_LIFETIME / 2 + 1 - (time.monotonic() - obtained_at), 0))
        second = await run_pipeline(pipeline, records[1], records[1].to_json_dict(), POLICY)
        assert pipeline._jwt.obtained >= 2
        assert pipeline._jwt.value != first_token
    assert (first.status, second.status) == (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED)
    assert (first.attempts, second.attempts) == (1, 1)
    # Airflow refuses the first token once it expired (and its leeway passed); a pipeline that
    # was given it as a static token says so
    expires = (jwt_claims(first_token) or {})["exp"]
    await asyncio.sleep(max(expires + JWT_LEEWAY + 2 - time.time(), 0))
    async with pipeline_for(airflow3, username=None, password=None, token=first_token) as expired:
        refused = await run_pipeline(expired, records[2], records[2].to_json_dict(), POLICY)
    assert refused.status == RunStatus.FAILED
    assert refused.attempts == 1
    assert refused.error is not None
    assert refused.error.startswith("trigger DAG run: HTTP 401: the configured token expired at")
    assert first_token not in refused.error


async def test_airflow3_wrong_password_fails_fast(airflow3: AirflowServer, unique: str) -> None:
    async with pipeline_for(airflow3, password="not-the-password") as pipeline:
        result = await run_pipeline(pipeline, record_of(unique), {}, POLICY)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error == "get access token: HTTP 401: Airflow refused username/password"


async def test_engine_windows_trigger_dag_runs_and_history_shows_them(
    airflow: AirflowServer,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    pipelines = {
        "dag": {
            "kind": "airflow",
            "url": airflow.url,
            "dag_id": LOAD,
            "api_version": airflow.api_version,
            "username": airflow.username,
            "password": airflow.password,
            "poll_interval": 1.0,
            "run_timeout": RUN_TIMEOUT,
            "retry_policy": {"max_attempts": 3, "initial_backoff": 0.5},
        }
    }
    consumer = {"consumer_id": cid, "kafka_topic": unique, "max_event": 5}
    cfg = make_config(services, unique, [consumer], pipelines)
    engine = await start_engine(cfg)
    try:
        await kafka.produce(unique, ({"i": i} for i in range(10)), partitions=1)

        fleet = Fleet(redis_client, cfg)

        async def both_succeeded() -> bool:
            history = await fleet.history(cid)
            return [entry["status"] for entry in history] == ["succeeded", "succeeded"]

        await wait_for(both_succeeded, 2 * RUN_TIMEOUT, what="two DAG runs succeeded")
        history = await fleet.history(cid)  # what `kafkaconsole history ID --json` prints
        assert [entry["window_id"] for entry in history] == [2, 1]
        runs = await runs_of(airflow, LOAD)
        for entry in history:
            window = entry["window_id"]
            assert entry["run"]["run_id"] == f"{cid}:{window}"
            run = runs[f"{cid}:{window}"]
            assert run["state"] == "success"
            assert run["conf"]["window_id"] == window
            assert run["conf"]["count"] == 5
            assert run["conf"]["offsets"] == [
                {"topic": unique, "partition": 0, "first": 5 * (window - 1), "last": 5 * window - 1}
            ]
        snapshot = await engine.refresh_snapshot()
        consumer_status = snapshot.consumer(cid)
        assert consumer_status is not None and consumer_status.last_trigger is not None
        assert consumer_status.last_trigger.status == "succeeded"
    finally:
        await engine.stop()
