"""The airbyte, airflow and kafka kinds against real servers.

Airbyte and Airflow are local aiohttp servers that answer as the Airbyte public API and the
Airflow REST API document it (jobs/DAG runs that are created, run and end; 409 when busy or
when the run id exists; 401 for a bad credential); the kafka kind produces to the session's
real broker. Polls run every 0.05 s so the whole file stays fast.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer

from kafkaconsole.config.models import AirbytePipeline as AirbyteConfig
from kafkaconsole.config.models import AirflowPipeline as AirflowConfig
from kafkaconsole.config.models import ConsumerConfig, RetryPolicy
from kafkaconsole.config.models import KafkaConfig as KafkaConnection
from kafkaconsole.config.models import KafkaPipeline as KafkaConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.breaker import BreakerState
from kafkaconsole.engine.dispatch import TriggerDispatcher, read_breaker
from kafkaconsole.engine.keys import ConsumerKeys
from kafkaconsole.engine.pipelines import Pipeline, PipelineError, build_pipeline
from kafkaconsole.engine.pipelines.airbyte import JOB_STATUSES, AirbytePipeline
from kafkaconsole.engine.pipelines.airflow import AirflowPipeline
from kafkaconsole.engine.pipelines.kafka import KafkaPipeline
from kafkaconsole.engine.records import (
    OffsetRange,
    RunResult,
    RunStatus,
    TriggerReason,
    TriggerRecord,
)
from kafkaconsole.engine.retry import call_with_retry, run_pipeline
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for
from tests.remote_fakes import FakeAirbyte, FakeAirflow, serve

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05, jitter=False)
POLL = 0.05

RECORD = TriggerRecord(
    consumer_id="orders",
    pipeline_name="sink",
    connection_id="conn-1",
    job_type="sync",
    window_id=7,
    reason=TriggerReason.COUNT,
    count=100,
    opened_at_ms=1_717_243_200_000,
    closed_at_ms=1_717_243_212_345,
    offsets=(OffsetRange("orders", 0, 10, 59),),
)
PAYLOAD = RECORD.to_json_dict()


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


# --------------------------------------------------------------------------------------------
# A fake Airbyte public API


@pytest.fixture
async def airbyte() -> AsyncIterator[FakeAirbyte]:
    fake = FakeAirbyte()
    runner, base = await serve(fake.app())
    fake.url = f"{base}/api/public"
    try:
        yield fake
    finally:
        await runner.cleanup()


def airbyte_pipeline(fake: FakeAirbyte, **kwargs: Any) -> Pipeline:
    kwargs.setdefault("poll_interval", POLL)
    if "client_id" not in kwargs and "username" not in kwargs:
        kwargs.setdefault("token", fake.static_token)
    return build_pipeline("ab", AirbyteConfig(kind="airbyte", url=fake.url, **kwargs))


# --------------------------------------------------------------------------------------------
# airbyte


async def test_airbyte_creates_a_job_for_the_connection_and_follows_it(
    airbyte: FakeAirbyte,
) -> None:
    progress: list[RunResult] = []

    async def on_progress(result: RunResult) -> None:
        progress.append(result)

    async with airbyte_pipeline(airbyte) as pipeline:
        assert isinstance(pipeline, AirbytePipeline) and pipeline.remote_runs
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST, on_progress=on_progress)

    assert result.status == RunStatus.SUCCEEDED
    assert result.run_id == "1"
    assert result.attempts == 1 and result.error is None
    assert result.duration_ms is not None and result.duration_ms >= 0
    assert result.detail["job_id"] == "1"
    assert result.detail["rows_synced"] == 100 and result.detail["bytes_synced"] == 2048
    [create] = airbyte.creates
    assert create.body == {"connectionId": "conn-1", "jobType": "sync"}
    assert create.headers["Authorization"] == f"Bearer {airbyte.static_token}"
    assert create.headers["Content-Type"] == "application/json"
    assert [r.path for r in airbyte.requests[1:]] == ["/api/public/v1/jobs/1"] * 3
    # told "started" (queued, with the job id), then "running"
    assert [(p.status, p.run_id) for p in progress] == [
        (RunStatus.QUEUED, "1"),
        (RunStatus.RUNNING, "1"),
    ]


async def test_airbyte_job_type_reset(airbyte: FakeAirbyte) -> None:
    async with airbyte_pipeline(airbyte, job_type="reset") as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert airbyte.creates[0].body == {"connectionId": "conn-1", "jobType": "reset"}


async def test_airbyte_failed_job_fails_the_run_with_its_id(airbyte: FakeAirbyte) -> None:
    airbyte.final = "failed"
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.run_id == "1"
    assert result.error == "Airbyte job 1 failed"
    assert len(airbyte.creates) == 1  # a failed job is not retried by creating another


async def test_airbyte_cancelled_job(airbyte: FakeAirbyte) -> None:
    airbyte.final = "cancelled"
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.CANCELLED
    assert result.error == "Airbyte job 1 was cancelled"


RECORD_8 = replace(RECORD, window_id=8)
PAYLOAD_8 = RECORD_8.to_json_dict()


async def test_airbyte_409_busy_is_coalesced_into_the_running_sync_and_follows_it(
    airbyte: FakeAirbyte,
) -> None:
    airbyte.path = ["running"] * 4
    async with airbyte_pipeline(airbyte) as pipeline:
        first = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
        assert (first.status, first.run_id) == (RunStatus.QUEUED, "1")
        second = await run_pipeline(pipeline, RECORD_8, PAYLOAD_8, FAST)
    assert second.status == RunStatus.COALESCED
    assert second.error is None
    assert second.attempts == 1
    assert second.run_id == "1"
    assert second.detail["coalesced_into"] == "1"
    assert second.detail["http_status"] == 409
    assert "A sync is already running for: conn-1" in second.detail["message"]
    # followed to its end, not recorded while it still ran
    assert second.detail["airbyte_status"] == "succeeded"
    assert airbyte.jobs[1].status == "succeeded"
    assert len(airbyte.jobs) == 1
    [listing] = airbyte.lists
    assert listing.query == {
        "connectionId": "conn-1",
        "jobType": "sync",
        "limit": "10",
        "orderBy": "createdAt|DESC",
    }


async def test_airbyte_coalesced_into_a_job_that_fails_fails_the_window(
    airbyte: FakeAirbyte,
) -> None:
    airbyte.final = "failed"
    airbyte.add_job("conn-1")  # a sync started by Airbyte's scheduler
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.run_id == "1"
    assert result.error == "Airbyte job 1 failed (this window was coalesced into it)"
    assert result.detail["coalesced_into"] == "1"


async def test_airbyte_409_busy_with_no_sync_running_any_more_tries_again(
    airbyte: FakeAirbyte,
) -> None:
    # the sync that caused the 409 ended before the lookup: nothing to coalesce into
    airbyte.create_script.append(
        (
            409,
            {"Content-Type": "application/problem+json"},
            orjson.dumps(
                {
                    "type": "https://reference.airbyte.com/reference/errors#try-again-later",
                    "title": "try-again-later",
                    "status": 409,
                    "detail": "A sync is already running for: conn-1",
                }
            ).decode(),
        )
    )
    attempts: list[tuple[int, str | None]] = []
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(
            pipeline, RECORD, PAYLOAD, FAST, on_attempt=lambda n, e: attempts.append((n, e))
        )
    assert result.status == RunStatus.SUCCEEDED
    assert (result.run_id, result.attempts) == ("1", 2)
    first_error = attempts[0][1]
    assert first_error is not None and first_error.endswith(
        "(no sync of the connection is running any more; trying again)"
    )


async def test_airbyte_refused_reset_is_retried_and_never_a_success(
    airbyte: FakeAirbyte,
) -> None:
    airbyte.add_job("conn-1")  # a sync runs: Airbyte refuses the reset with 409
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.05, jitter=False)
    async with airbyte_pipeline(airbyte, job_type="reset") as pipeline:
        refused = await run_pipeline(pipeline, RECORD, PAYLOAD, policy)
        assert refused.status == RunStatus.FAILED
        assert refused.attempts == 2
        assert refused.error is not None
        assert refused.error.startswith("create job: HTTP 409: ")
        assert refused.error.endswith("(the reset did not start; trying again later)")
        airbyte.jobs[1].status = "succeeded"  # the sync ended
        done = await run_pipeline(pipeline, RECORD, PAYLOAD, policy)
    assert (done.status, done.run_id) == (RunStatus.SUCCEEDED, "2")
    assert airbyte.jobs[2].job_type == "reset"


async def test_airbyte_409_state_conflict_fails_at_once(airbyte: FakeAirbyte) -> None:
    body = {
        "type": "https://reference.airbyte.com/reference/errors#409-state-conflict",
        "title": "state-conflict",
        "status": 409,
        "detail": "Connection conn-1 is not active",
    }
    airbyte.create_script.append((409, {}, orjson.dumps(body).decode()))
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error is not None and result.error.startswith("create job: HTTP 409: ")
    assert "Connection conn-1 is not active" in result.error
    assert airbyte.lists == []  # nothing was looked up: no job recorded


async def test_airbyte_lost_create_answer_follows_the_job_it_started(
    airbyte: FakeAirbyte,
) -> None:
    airbyte.lose_replies = 1  # the job is created, its answer arrives after our timeout
    airbyte.clock_offset = -1.5  # Airbyte's clock is a little behind ours
    attempts: list[tuple[int, str | None]] = []
    airbyte.reply_delay = 10.0
    async with airbyte_pipeline(airbyte, timeout=1.5) as pipeline:
        result = await run_pipeline(
            pipeline, RECORD, PAYLOAD, FAST, on_attempt=lambda n, e: attempts.append((n, e))
        )
    assert attempts == [(1, "create job: timed out after 1.5s"), (2, None)]
    assert result.status == RunStatus.SUCCEEDED
    assert result.run_id == "1"
    assert result.detail["recovered_create"] is True
    assert len(airbyte.jobs) == 1  # no second job
    assert len(airbyte.creates) == 1
    [lookup] = airbyte.lists
    assert lookup.query["connectionId"] == "conn-1"
    assert lookup.query["jobType"] == "sync"
    assert lookup.query["orderBy"] == "createdAt|ASC"
    since = datetime.fromisoformat(lookup.query["createdAtStart"].replace("Z", "+00:00"))
    assert since <= airbyte.jobs[1].created_at


async def test_airbyte_lost_create_that_started_nothing_creates_one_job(
    airbyte: FakeAirbyte,
) -> None:
    airbyte.drop_before_create = 1  # the connection broke before Airbyte created anything
    older = airbyte.add_job("conn-1", status="succeeded")  # an older job: not ours
    older.created_at -= timedelta(seconds=30)
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert (result.run_id, result.attempts) == ("2", 2)
    assert "recovered_create" not in result.detail
    assert len(airbyte.creates) == 2 and len(airbyte.lists) == 1
    assert len(airbyte.jobs) == 2


async def test_airbyte_lost_create_does_not_take_a_job_another_window_claimed(
    airbyte: FakeAirbyte,
) -> None:
    async with airbyte_pipeline(airbyte) as pipeline:
        first = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)  # job 1
        airbyte.jobs[1].created_at = airbyte.now()  # within the lookup's reach, surely
        airbyte.drop_before_create = 1
        second = await run_pipeline(pipeline, RECORD_8, PAYLOAD_8, FAST)
    assert (first.run_id, second.run_id) == ("1", "2")
    assert second.status == RunStatus.SUCCEEDED
    assert len(airbyte.lists) == 1  # it saw job 1 (created within the skew) and left it


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("pending", RunStatus.QUEUED),
        ("queued", RunStatus.QUEUED),
        ("running", RunStatus.RUNNING),
        ("incomplete", RunStatus.RUNNING),
        ("succeeded", RunStatus.SUCCEEDED),
        ("failed", RunStatus.FAILED),
        ("cancelled", RunStatus.CANCELLED),
    ],
)
async def test_airbyte_every_job_status_is_mapped(
    airbyte: FakeAirbyte, status: str, expected: RunStatus
) -> None:
    assert set(JOB_STATUSES) == {
        "pending",
        "queued",
        "running",
        "incomplete",
        "succeeded",
        "failed",
        "cancelled",
    }
    job = airbyte.add_job("conn-1", status=status)
    airbyte.path, job.path = [], []
    async with airbyte_pipeline(airbyte) as pipeline:
        assert isinstance(pipeline, AirbytePipeline)
        reply = await pipeline.api("GET", "v1", "jobs", str(job.job_id), what="read")
        document = reply.json()
        assert document is not None
        if status not in ("succeeded", "failed", "cancelled"):
            assert document["status"] == "succeeded"  # a read advances the fake's job
            document["status"] = status
        outcome = pipeline.outcome(document)
    assert outcome.status == expected
    assert outcome.detail["airbyte_status"] == status


async def test_airbyte_follows_a_job_through_incomplete_and_queued(airbyte: FakeAirbyte) -> None:
    airbyte.path = ["queued", "running", "incomplete", "running"]
    seen: list[str] = []

    async def on_progress(result: RunResult) -> None:
        seen.append(f"{result.status}:{result.detail.get('airbyte_status')}")

    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST, on_progress=on_progress)
    assert result.status == RunStatus.SUCCEEDED
    # told of each change: incomplete (an attempt failed, Airbyte tries again) is still running
    assert seen == ["queued:pending", "queued:queued", "running:running"]


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_airbyte_base_url_may_end_in_v1(airbyte: FakeAirbyte, suffix: str) -> None:
    cfg = AirbyteConfig(
        kind="airbyte",
        url=airbyte.url + suffix,
        token=airbyte.static_token,
        poll_interval=POLL,
    )
    async with build_pipeline("ab", cfg) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert {r.path for r in airbyte.requests} == {"/api/public/v1/jobs", "/api/public/v1/jobs/1"}


async def test_airbyte_basic_auth_for_self_hosted(airbyte: FakeAirbyte) -> None:
    async with airbyte_pipeline(
        airbyte, username="airbyte", password="ab-basic-s3cret"
    ) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    expected = "Basic " + base64.b64encode(b"airbyte:ab-basic-s3cret").decode()
    assert {r.headers["Authorization"] for r in airbyte.requests} == {expected}
    assert airbyte.token_requests == []


async def test_airbyte_wrong_basic_password_fails_fast_without_it(airbyte: FakeAirbyte) -> None:
    async with airbyte_pipeline(airbyte, username="airbyte", password="wrong-s3cret") as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error is not None and result.error.startswith("create job: HTTP 401")
    encoded = base64.b64encode(b"airbyte:wrong-s3cret").decode()
    assert "wrong-s3cret" not in result.error and encoded not in result.error


async def test_airbyte_5xx_then_success_retries_the_create(airbyte: FakeAirbyte) -> None:
    airbyte.create_script += [(503, {}, "upstream down"), (500, {}, "oops")]
    attempts: list[tuple[int, str | None]] = []
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(
            pipeline, RECORD, PAYLOAD, FAST, on_attempt=lambda n, e: attempts.append((n, e))
        )
    assert result.status == RunStatus.SUCCEEDED
    assert result.attempts == 3
    assert attempts == [
        (1, "create job: HTTP 503: upstream down"),
        (2, "create job: HTTP 500: oops"),
        (3, None),
    ]


async def test_airbyte_429_honours_retry_after(airbyte: FakeAirbyte) -> None:
    airbyte.create_script.append((429, {"Retry-After": "4"}, "rate limited"))
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=30.0, jitter=False)
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, policy, sleep=sleep)
    assert (result.status, result.attempts) == (RunStatus.QUEUED, 2)
    assert sleep.delays == [4.0]


async def test_airbyte_4xx_fails_fast_with_the_body(airbyte: FakeAirbyte) -> None:
    airbyte.create_script.append((422, {}, '{"detail": "connection conn-1 is inactive"}'))
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error == 'create job: HTTP 422: {"detail": "connection conn-1 is inactive"}'


async def test_airbyte_status_poll_5xx_is_retried_until_the_job_ends(
    airbyte: FakeAirbyte,
) -> None:
    airbyte.poll_script += [(502, {}, "bad gateway"), (503, {"Retry-After": "0"}, "")]
    async with airbyte_pipeline(airbyte) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert result.run_id == "1"


async def test_airbyte_status_404_ends_the_wait_as_failed(airbyte: FakeAirbyte) -> None:
    async with airbyte_pipeline(airbyte) as pipeline:
        started = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
        airbyte.jobs.clear()
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)  # new job 2
        outcome = await pipeline.wait("1", RECORD)
    assert started.run_id == "1" and result.status == RunStatus.SUCCEEDED
    assert outcome.status == RunStatus.FAILED
    assert outcome.detail["error"].startswith("status check failed: job 1 status: HTTP 404")


async def test_airbyte_run_timeout_marks_the_run_failed(airbyte: FakeAirbyte) -> None:
    airbyte.path = ["running"] * 10_000
    async with airbyte_pipeline(airbyte, run_timeout=0.3) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.run_id == "1"
    assert result.error == "run 1 did not finish within run_timeout 0.3s"


async def test_airbyte_bad_token_fails_fast_and_never_shows_it(airbyte: FakeAirbyte) -> None:
    async with airbyte_pipeline(airbyte, token="wrong-s3cret-token") as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error is not None and result.error.startswith("create job: HTTP 401")
    assert "wrong-s3cret-token" not in result.error  # the server echoed it; we masked it
    assert "******" in result.error


async def test_airbyte_client_credentials_are_exchanged_and_renewed_on_401(
    airbyte: FakeAirbyte,
) -> None:
    async with airbyte_pipeline(
        airbyte, client_id="kc-client", client_secret="kc-client-s3cret"
    ) as pipeline:
        first = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
        assert first.status == RunStatus.SUCCEEDED
        [exchange] = airbyte.token_requests
        assert exchange.body == {
            "client_id": "kc-client",
            "client_secret": "kc-client-s3cret",
            "grant-type": "client_credentials",
        }
        assert airbyte.creates[0].headers["Authorization"] == "Bearer access-1-s3cret"
        airbyte.revoke_tokens()  # e.g. expired early
        second = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert second.status == RunStatus.SUCCEEDED
    assert second.attempts == 1  # the refresh happened inside the attempt
    assert len(airbyte.token_requests) == 2
    assert airbyte.creates[-1].headers["Authorization"] == "Bearer access-2-s3cret"


async def test_airbyte_token_is_renewed_before_it_expires(airbyte: FakeAirbyte) -> None:
    airbyte.expires_in = 0  # renew at once: every request needs a fresh token
    async with airbyte_pipeline(
        airbyte, client_id="kc-client", client_secret="kc-client-s3cret"
    ) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    requests_needing_auth = [r for r in airbyte.requests if "/applications/" not in r.path]
    assert len(airbyte.token_requests) == len(requests_needing_auth)


async def test_airbyte_bad_client_secret_fails_fast_without_the_secret(
    airbyte: FakeAirbyte,
) -> None:
    async with airbyte_pipeline(
        airbyte, client_id="kc-client", client_secret="not-the-s3cret"
    ) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error == ("get access token: HTTP 401: Airbyte refused client_id/client_secret")
    assert airbyte.creates == []


async def test_airbyte_unreachable_is_retried_then_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = AirbyteConfig(kind="airbyte", url=f"http://127.0.0.1:{port}/api/public", token="t0k3n")
    async with build_pipeline("ab", cfg) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 3
    assert result.error is not None and result.error.startswith("create job: connection error")
    assert "t0k3n" not in result.error


def test_airbyte_config_wants_one_way_to_authenticate() -> None:
    with pytest.raises(ValueError, match="client_id and client_secret must be given together"):
        AirbyteConfig(kind="airbyte", url="http://x", client_id="only-id")
    with pytest.raises(ValueError, match="username and password must be given together"):
        AirbyteConfig(kind="airbyte", url="http://x", username="only-user")
    with pytest.raises(ValueError, match="token cannot be combined"):
        AirbyteConfig(kind="airbyte", url="http://x", token="t", client_id="i", client_secret="s")
    with pytest.raises(
        ValueError, match="client_id/client_secret cannot be combined with username/password"
    ):
        AirbyteConfig(
            kind="airbyte",
            url="http://x",
            client_id="i",
            client_secret="s",
            username="u",
            password="p",
        )
    AirbyteConfig(kind="airbyte", url="http://x")  # an Airbyte without auth


# --------------------------------------------------------------------------------------------
# A fake Airflow REST API


@pytest.fixture
async def airflow() -> AsyncIterator[FakeAirflow]:
    fake = FakeAirflow()
    runner, base = await serve(fake.app())
    fake.url = base
    try:
        yield fake
    finally:
        await runner.cleanup()


def airflow_pipeline(fake: FakeAirflow, **kwargs: Any) -> Pipeline:
    kwargs.setdefault("poll_interval", POLL)
    kwargs.setdefault("dag_id", "load_orders")
    if "token" not in kwargs:
        kwargs.setdefault("username", fake.username)
        kwargs.setdefault("password", fake.password)
    return build_pipeline("af", AirflowConfig(kind="airflow", url=fake.url, **kwargs))


# --------------------------------------------------------------------------------------------
# airflow


async def test_airflow2_triggers_a_dag_run_with_the_record_as_conf(airflow: FakeAirflow) -> None:
    async with airflow_pipeline(airflow) as pipeline:
        assert isinstance(pipeline, AirflowPipeline) and pipeline.remote_runs
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert result.run_id == "orders:7"
    assert result.detail["dag_id"] == "load_orders"
    assert result.detail["airflow_state"] == "success"
    [trigger] = airflow.triggers
    assert trigger.path == "/api/v1/dags/load_orders/dagRuns"
    assert trigger.body == {"dag_run_id": "orders:7", "conf": PAYLOAD}
    assert trigger.headers["Authorization"].startswith("Basic ")
    polls = [r.path for r in airflow.requests if r.method == "GET"]
    assert polls == ["/api/v1/dags/load_orders/dagRuns/orders:7"] * 3


async def test_airflow3_exchanges_username_password_for_a_jwt(airflow: FakeAirflow) -> None:
    async with airflow_pipeline(airflow, api_version="v2") as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    [exchange] = airflow.token_requests
    assert exchange.body == {"username": "kc", "password": "af-s3cret-pw"}
    [trigger] = airflow.triggers
    assert trigger.path == "/api/v2/dags/load_orders/dagRuns"
    assert trigger.body == {"dag_run_id": "orders:7", "logical_date": None, "conf": PAYLOAD}
    [jwt] = airflow.jwts
    api_calls = [r for r in airflow.requests if r.path.startswith("/api/")]
    assert len(api_calls) == 4  # trigger + 3 polls, one token for all
    assert {r.headers["Authorization"] for r in api_calls} == {f"Bearer {jwt}"}


async def test_airflow3_refuses_basic_auth_which_is_why_v2_never_sends_it(
    airflow: FakeAirflow,
) -> None:
    basic = base64.b64encode(b"kc:af-s3cret-pw").decode()
    async with airflow_pipeline(airflow, api_version="v2") as pipeline:
        assert isinstance(pipeline, AirflowPipeline)
        refused = await pipeline.send(
            "GET",
            pipeline.url("api", "v2", "dags", "load_orders", "dagRuns", "x"),
            what="probe",
            headers={"Authorization": f"Basic {basic}"},
        )
        assert (refused.status, refused.json()) == (401, {"detail": "Not authenticated"})
        await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    sent = [r.headers.get("Authorization", "") for r in airflow.requests[1:]]
    assert sent and not any(value.startswith("Basic ") for value in sent)


async def test_airflow3_jwt_is_renewed_before_it_expires(airflow: FakeAirflow) -> None:
    airflow.jwt_lifetime = 600
    now = [1000.0]
    async with airflow_pipeline(airflow, api_version="v2") as pipeline:
        pipeline.clock = lambda: now[0]  # type: ignore[attr-defined]
        await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
        now[0] += 600 - 61  # more than TOKEN_EARLY (60 s) before its exp: still used
        await run_pipeline(pipeline, replace(RECORD, window_id=8), PAYLOAD_8, FAST)
        assert len(airflow.token_requests) == 1
        now[0] += 2  # within 60 s of its exp: renewed before the request leaves
        third = await run_pipeline(pipeline, replace(RECORD, window_id=9), PAYLOAD_8, FAST)
    assert third.status == RunStatus.SUCCEEDED
    assert len(airflow.token_requests) == 2
    second_jwt = list(airflow.jwts)[1]
    assert airflow.triggers[-1].headers["Authorization"] == f"Bearer {second_jwt}"


async def test_airflow3_renewal_margin_covers_a_short_lived_jwt(airflow: FakeAirflow) -> None:
    airflow.jwt_lifetime = 40  # shorter than twice the margin: renewed at half its life
    now = [1000.0]
    async with airflow_pipeline(airflow, api_version="v2") as pipeline:
        pipeline.clock = lambda: now[0]  # type: ignore[attr-defined]
        await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
        now[0] += 19
        await run_pipeline(pipeline, RECORD_8, PAYLOAD_8, FAST)
        assert len(airflow.token_requests) == 1
        now[0] += 2
        await run_pipeline(pipeline, replace(RECORD, window_id=9), PAYLOAD_8, FAST)
    assert len(airflow.token_requests) == 2


async def test_airflow3_jwt_refused_with_401_is_renewed_once(airflow: FakeAirflow) -> None:
    async with airflow_pipeline(airflow, api_version="v2") as pipeline:
        first = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
        airflow.expire_tokens()  # e.g. Airflow restarted with a new secret key
        second = await run_pipeline(pipeline, RECORD_8, PAYLOAD_8, FAST)
    assert (first.status, second.status) == (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED)
    assert second.attempts == 1  # the renewal happened inside the attempt
    assert len(airflow.token_requests) == 2


async def test_airflow3_wrong_password_fails_fast_and_is_never_shown(
    airflow: FakeAirflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with airflow_pipeline(airflow, api_version="v2", password="wrong-pw-s3cret") as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error == "get access token: HTTP 401: Airflow refused username/password"
    assert airflow.triggers == []
    assert "wrong-pw-s3cret" not in caplog.text


async def test_airflow3_tokens_and_password_are_never_logged(
    airflow: FakeAirflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    airflow.trigger_script.append((503, {}, "down"))
    async with airflow_pipeline(airflow, api_version="v2") as pipeline:
        airflow.expire_tokens()
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert airflow.jwts and caplog.records
    for secret in [airflow.password, *airflow.jwts]:
        assert secret not in caplog.text


async def test_airflow3_static_token_is_sent_and_its_expiry_is_told(
    airflow: FakeAirflow, caplog: pytest.LogCaptureFixture
) -> None:
    token = airflow.make_jwt(3600)
    async with airflow_pipeline(airflow, api_version="v2", token=token) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    [trigger] = airflow.triggers
    assert trigger.headers["Authorization"] == f"Bearer {token}"
    assert airflow.token_requests == []
    [warning] = [r for r in caplog.records if "cannot be renewed" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "the configured Airflow token expires at" in warning.getMessage()
    assert token not in caplog.text


async def test_airflow3_expired_static_token_says_so(airflow: FakeAirflow) -> None:
    token = airflow.make_jwt(60, issued=time.time() - 3600)
    async with airflow_pipeline(airflow, api_version="v2", token=token) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error is not None
    assert result.error.startswith("trigger DAG run: HTTP 401: the configured token expired at ")
    assert result.error.endswith("configure username/password to have tokens obtained and renewed")
    assert token not in result.error


@pytest.mark.parametrize("api_version", ["v1", "v2"])
async def test_airflow_409_follows_the_existing_run(airflow: FakeAirflow, api_version: str) -> None:
    airflow.polls = 3
    async with airflow_pipeline(airflow, api_version=api_version) as pipeline:
        first = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
        assert (first.status, first.run_id) == (RunStatus.QUEUED, "orders:7")
        # the same window delivered again (crash mid-call, re-dispatch): no second run
        again = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert again.status == RunStatus.SUCCEEDED
    assert again.run_id == "orders:7"
    assert again.detail["existing_run"] is True
    assert len(airflow.runs) == 1
    assert len(airflow.triggers) == 2


async def test_airflow2_409_for_a_logical_date_is_tried_again(airflow: FakeAirflow) -> None:
    airflow.frozen_now = "2024-06-01T12:00:00.000001+00:00"  # two triggers in one instant
    async with airflow_pipeline(airflow) as pipeline:
        other = await run_pipeline(pipeline, RECORD_8, PAYLOAD_8, FAST)
        attempts: list[tuple[int, str | None]] = []

        def on_attempt(number: int, error: str | None) -> None:
            attempts.append((number, error))
            airflow.frozen_now = None  # time moves on

        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST, on_attempt=on_attempt)
    assert other.status == RunStatus.SUCCEEDED
    assert result.status == RunStatus.SUCCEEDED
    assert (result.run_id, result.attempts) == ("orders:7", 2)
    first_error = attempts[0][1]
    assert first_error is not None
    assert first_error.startswith(
        'trigger DAG run: HTTP 409: {"detail": "DAGRun with DAG ID: \'load_orders\' and DAGRun '
        "logical date: '2024-06-01 12:00:00.000001+00:00' already exists\""
    )
    assert first_error.endswith(
        "(no run orders:7 exists: another run of load_orders holds the same logical date; "
        "trying again)"
    )
    assert {r.run_id for r in airflow.runs.values()} == {"orders:7", "orders:8"}


async def test_airflow_failed_dag_run(airflow: FakeAirflow) -> None:
    airflow.final = "failed"
    async with airflow_pipeline(airflow) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.run_id == "orders:7"
    assert result.error == "Airflow DAG run orders:7 of load_orders failed"


async def test_airflow_5xx_then_success(airflow: FakeAirflow) -> None:
    airflow.trigger_script.append((502, {}, "<html>bad gateway</html>"))
    async with airflow_pipeline(airflow) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert result.attempts == 2


async def test_airflow_unknown_dag_fails_fast(airflow: FakeAirflow) -> None:
    async with airflow_pipeline(airflow, dag_id="nope") as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error is not None
    assert result.error.startswith("trigger DAG run: HTTP 404:")
    assert "DAG with dag_id: 'nope' not found" in result.error


async def test_airflow_wrong_password_fails_fast_without_it(airflow: FakeAirflow) -> None:
    async with airflow_pipeline(airflow, password="wrong-pw-s3cret") as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error is not None and result.error.startswith("trigger DAG run: HTTP 401")
    assert "wrong-pw-s3cret" not in result.error


def test_airflow_config_wants_one_way_to_authenticate() -> None:
    with pytest.raises(ValueError, match="username and password must be given together"):
        AirflowConfig(kind="airflow", url="http://x", dag_id="d", username="u")
    with pytest.raises(ValueError, match="token cannot be combined"):
        AirflowConfig(
            kind="airflow", url="http://x", dag_id="d", token="t", username="u", password="p"
        )


# --------------------------------------------------------------------------------------------
# kafka


async def test_kafka_produces_the_record_with_key_and_idempotency_header(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    await kafka.create_topic(unique, 1)
    connection = KafkaConnection(bootstrap_servers=services.bootstrap_servers)
    pipeline = build_pipeline("out", KafkaConfig(kind="kafka", topic=unique), kafka=connection)
    assert isinstance(pipeline, KafkaPipeline)
    async with pipeline:
        first = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
        second = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert first.status == RunStatus.SUCCEEDED
    assert first.run_id == f"{unique}/0@0" and second.run_id == f"{unique}/0@1"
    assert first.detail == {"topic": unique, "partition": 0, "offset": 0}
    assert first.duration_ms is not None

    consumer = AIOKafkaConsumer(
        unique,
        bootstrap_servers=services.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        got = []
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=300)
            got += [r for records in batch.values() for r in records]
            if len(got) >= 2:
                break
    finally:
        await consumer.stop()
    assert len(got) == 2
    message = got[0]
    assert message.key == b"orders"
    assert orjson.loads(message.value) == PAYLOAD
    assert dict(message.headers)["idempotency-key"] == b"orders:7"


async def test_kafka_unreachable_broker_is_retried_then_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    connection = KafkaConnection(bootstrap_servers=f"127.0.0.1:{port}")
    cfg = KafkaConfig(kind="kafka", topic="t", timeout=1.0)
    pipeline = build_pipeline("out", cfg, kafka=connection)
    with pytest.raises(PipelineError) as caught:
        await pipeline.start()
    assert caught.value.retryable
    assert caught.value.message.startswith("cannot connect to Kafka")
    try:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    finally:
        await pipeline.close()
    assert result.status == RunStatus.FAILED
    assert result.attempts == 3
    assert result.error is not None and result.error.startswith("cannot connect to Kafka")


# --------------------------------------------------------------------------------------------
# through the dispatcher: status in the runs hash, the breaker, nothing lost


async def add_windows(redis: aredis.Redis, keys: ConsumerKeys, ids: range) -> None:
    for wid in ids:
        fields = {
            "window_id": wid,
            "reason": "count",
            "count": 10,
            "opened_at": 1_717_243_200_000 + wid,
            "closed_at": 1_717_243_260_000 + wid,
            "offsets": orjson.dumps(
                [{"topic": "t", "partition": 0, "first": wid * 10, "last": wid * 10 + 9}]
            ),
        }
        await redis.xadd(keys.history, fields)  # type: ignore[arg-type]
        await redis.xadd(keys.dispatch, fields)  # type: ignore[arg-type]


async def runs_of(redis: aredis.Redis, keys: ConsumerKeys) -> dict[int, dict[str, Any]]:
    raw = await redis.hgetall(keys.runs)
    return {int(k): orjson.loads(v) for k, v in raw.items()}


def consumer_cfg(cid: str, job_type: str = "sync") -> ConsumerConfig:
    return ConsumerConfig(
        consumer_id=cid,
        kafka_topic="t",
        pipeline_name="p",
        connection_id="conn-9",
        max_event=10,
        max_time=60,
        job_type=job_type,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("kind", ["airbyte", "airflow"])
async def test_breaker_opens_holds_triggers_and_a_probe_closes_it(
    kind: str,
    airbyte: FakeAirbyte,
    airflow: FakeAirflow,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    keys = ConsumerKeys(unique, f"{unique}-c")
    breaker = {"breaker_threshold": 2, "breaker_cooldown": 0.5, "retry_policy": FAST}
    if kind == "airbyte":
        pipeline = airbyte_pipeline(airbyte, **breaker)
        airbyte.create_script += [(503, {}, "down")] * 6  # 2 runs x 3 attempts
    else:
        pipeline = airflow_pipeline(airflow, **breaker)
        airflow.trigger_script += [(503, {}, "down")] * 6
    dispatcher = TriggerDispatcher(
        redis_client,
        keys,
        consumer_cfg(keys.consumer_id),
        pipeline,
        FAST,
        "inst-1",
        lease_ms=1000,
    )
    await add_windows(redis_client, keys, range(1, 6))
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:

        async def opened() -> bool:
            return dispatcher.breaker.state == BreakerState.OPEN

        await wait_for(opened, 10, what="circuit open")
        runs = await runs_of(redis_client, keys)
        assert runs[1]["status"] == runs[2]["status"] == "failed"
        assert runs[1]["error"] == ("create job" if kind == "airbyte" else "trigger DAG run") + (
            ": HTTP 503: down"
        )

        async def window3_held() -> bool:
            return (await runs_of(redis_client, keys)).get(3, {}).get("status") == "queued"

        await wait_for(window3_held, 5, what="window 3 held back")
        assert (await runs_of(redis_client, keys))[3]["detail"]["held"] == "circuit open"
        assert await redis_client.xlen(keys.dispatch) == 3  # 3, 4, 5: kept, not lost
        stored = await read_breaker(redis_client, keys)
        assert stored is not None and stored.state == BreakerState.OPEN
        assert stored.consecutive_failures == 2

        # the far side is back (the script ran out): the probe after the cooldown succeeds
        async def all_done() -> bool:
            runs = await runs_of(redis_client, keys)
            return all(runs.get(w, {}).get("status") == "succeeded" for w in (3, 4, 5))

        await wait_for(all_done, 10, what="held windows dispatched")
        assert dispatcher.breaker.state == BreakerState.CLOSED
        assert await redis_client.xlen(keys.dispatch) == 0
        stored = await read_breaker(redis_client, keys)
        assert stored is not None and stored.state == BreakerState.CLOSED
        runs = await runs_of(redis_client, keys)
        if kind == "airbyte":
            assert [runs[w]["run_id"] for w in (3, 4, 5)] == ["1", "2", "3"]
        else:
            assert [runs[w]["run_id"] for w in (3, 4, 5)] == [
                f"{keys.consumer_id}:{w}" for w in (3, 4, 5)
            ]
    finally:
        stop.set()
        await task
        await pipeline.close()


async def test_dispatcher_records_running_with_the_job_id_then_the_final_status(
    airbyte: FakeAirbyte, redis_client: aredis.Redis, unique: str
) -> None:
    airbyte.path = ["running"] * 8
    keys = ConsumerKeys(unique, f"{unique}-c")
    pipeline = airbyte_pipeline(airbyte)
    dispatcher = TriggerDispatcher(
        redis_client,
        keys,
        consumer_cfg(keys.consumer_id),
        pipeline,
        FAST,
        "inst-1",
        lease_ms=1000,
    )
    await add_windows(redis_client, keys, range(1, 3))
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:

        async def running() -> bool:
            run = (await runs_of(redis_client, keys)).get(1, {})
            return run.get("status") == "running" and run.get("run_id") == "1"

        await wait_for(running, 5, what="window 1 running with job id 1")
        assert 2 not in await runs_of(redis_client, keys)  # sync: window 2 waits its turn

        async def both_done() -> bool:
            runs = await runs_of(redis_client, keys)
            return all(runs.get(w, {}).get("status") == "succeeded" for w in (1, 2))

        await wait_for(both_done, 10, what="both windows succeeded")
        runs = await runs_of(redis_client, keys)
        assert [runs[w]["run_id"] for w in (1, 2)] == ["1", "2"]
        assert all(runs[w]["duration_ms"] >= 0 for w in (1, 2))
        assert [c.body["connectionId"] for c in airbyte.creates] == ["conn-9", "conn-9"]
        assert len(airbyte.jobs) == 2  # no overlap, so no 409 / coalescing
    finally:
        stop.set()
        await task
        await pipeline.close()


# --------------------------------------------------------------------------------------------
# through the real Engine


async def test_engine_triggers_airbyte_jobs_and_history_shows_them(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    airbyte: FakeAirbyte,
    unique: str,
) -> None:
    await kafka.create_topic(unique, 1)
    cid = f"{unique}-c"
    pipelines = {
        "orders_sync": {
            "kind": "airbyte",
            "url": airbyte.url,
            "token": airbyte.static_token,
            "poll_interval": POLL,
            "retry_policy": {"max_attempts": 3, "initial_backoff": 0.01},
        }
    }
    cfg = make_config(
        services,
        unique,
        [
            {
                "consumer_id": cid,
                "kafka_topic": unique,
                "max_event": 10,
                "connection_id": "airbyte-conn-42",
            }
        ],
        pipelines,
    )
    async with running_engine(cfg) as engine:
        await kafka.produce(unique, ({"i": i} for i in range(30)), partitions=1)
        keys = ConsumerKeys(unique, cid)

        async def three_succeeded() -> bool:
            runs = await runs_of(redis_client, keys)
            return sum(r["status"] == "succeeded" for r in runs.values()) == 3

        await wait_for(three_succeeded, 30, what="3 Airbyte jobs succeeded")
        runs = await runs_of(redis_client, keys)
        assert {w: (r["status"], r["run_id"]) for w, r in runs.items()} == {
            1: ("succeeded", "1"),
            2: ("succeeded", "2"),
            3: ("succeeded", "3"),
        }
        assert all(r["duration_ms"] is not None for r in runs.values())
        assert [c.body for c in airbyte.creates] == [
            {"connectionId": "airbyte-conn-42", "jobType": "sync"}
        ] * 3
        history: Any = await redis_client.xrange(keys.history)
        assert [int(f[b"window_id"]) for _, f in history] == [1, 2, 3]
        assert await redis_client.xlen(keys.dispatch) == 0
        snap = await engine.refresh_snapshot()
        consumer = snap.consumer(cid)
        assert consumer is not None and consumer.last_trigger is not None
        assert consumer.last_trigger.status == "succeeded"
