"""The airbyte, airflow and kafka kinds against real servers.

Airbyte and Airflow are local aiohttp servers that answer as the Airbyte public API and the
Airflow REST API document it (jobs/DAG runs that are created, run and end; 409 when busy or
when the run id exists; 401 for a bad credential); the kafka kind produces to the session's
real broker. Polls run every 0.05 s so the whole file stays fast.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis
from aiohttp import web
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
from kafkaconsole.engine.pipelines.airbyte import AirbytePipeline
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
from tests.engine_support import make_config, start_engine
from tests.helpers import KafkaHelper, wait_for

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


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


async def _seen(request: web.Request) -> Seen:
    raw = await request.read()
    body = orjson.loads(raw) if raw else None
    return Seen(request.method, request.path, dict(request.query), dict(request.headers), body)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def problem(status: int, title: str, detail: str) -> web.Response:
    return web.json_response(
        {
            "type": f"https://example/errors#{status}",
            "title": title,
            "status": status,
            "detail": detail,
        },
        status=status,
    )


# --------------------------------------------------------------------------------------------
# A fake Airbyte public API


@dataclass
class Job:
    job_id: int
    connection_id: str
    job_type: str
    polls_left: int
    final: str
    status: str = "pending"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "jobId": self.job_id,
            "status": self.status,
            "jobType": self.job_type,
            "connectionId": self.connection_id,
            "startTime": "2024-06-01T12:00:00Z",
        }
        if self.status == "succeeded":
            body.update(rowsSynced=100, bytesSynced=2048, duration="PT2S")
        return body

    @property
    def final_now(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


@dataclass
class FakeAirbyte:
    """Jobs go pending -> running (``polls`` status reads) -> ``final``. A connection with an
    unfinished job answers 409 to a new one, as Airbyte does."""

    url: str = ""
    static_token: str = "ab-token-s3cret"
    clients: dict[str, str] = field(default_factory=lambda: {"kc-client": "kc-client-s3cret"})
    expires_in: int = 180
    polls: int = 2
    final: str = "succeeded"
    issued: set[str] = field(default_factory=set)
    jobs: dict[int, Job] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    create_script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    poll_script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/public/v1/applications/token", self.token)
        app.router.add_post("/api/public/v1/jobs", self.create)
        app.router.add_get("/api/public/v1/jobs", self.list_jobs)
        app.router.add_get("/api/public/v1/jobs/{job_id}", self.get_job)
        return app

    @property
    def creates(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/v1/jobs")]

    @property
    def token_requests(self) -> list[Seen]:
        return [r for r in self.requests if r.path.endswith("/applications/token")]

    def revoke_tokens(self) -> None:
        self.issued.clear()

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        return auth.startswith("Bearer ") and (token == self.static_token or token in self.issued)

    def _unauthorized(self, request: web.Request) -> web.Response:
        # echoes the credential it refused: the client must never pass that on
        return problem(401, "unauthorized", f"invalid {request.headers.get('Authorization')}")

    @staticmethod
    def _scripted(script: list[tuple[int, dict[str, str], str]]) -> web.Response | None:
        if not script:
            return None
        status, headers, text = script.pop(0)
        return web.Response(status=status, headers=headers, text=text)

    async def token(self, request: web.Request) -> web.Response:
        seen = await _seen(request)
        self.requests.append(seen)
        body = seen.body or {}
        if self.clients.get(str(body.get("client_id"))) != body.get("client_secret"):
            return problem(401, "unauthorized", "bad client credentials")
        token = f"access-{len(self.token_requests)}-s3cret"
        self.issued.add(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    async def create(self, request: web.Request) -> web.Response:
        seen = await _seen(request)
        self.requests.append(seen)
        if not self._authorized(request):
            return self._unauthorized(request)
        scripted = self._scripted(self.create_script)
        if scripted is not None:
            return scripted
        connection = seen.body["connectionId"]
        if any(j.connection_id == connection and not j.final_now for j in self.jobs.values()):
            return problem(409, "state-conflict", f"A sync is already running for: {connection}")
        job = Job(next(self._ids), connection, seen.body["jobType"], self.polls, self.final)
        self.jobs[job.job_id] = job
        return web.json_response(job.to_json())

    async def list_jobs(self, request: web.Request) -> web.Response:
        self.requests.append(await _seen(request))
        if not self._authorized(request):
            return self._unauthorized(request)
        connection = request.query.get("connectionId")
        jobs = sorted(
            (j for j in self.jobs.values() if connection in (None, j.connection_id)),
            key=lambda j: -j.job_id,
        )
        limit = int(request.query.get("limit", "20"))
        return web.json_response({"data": [j.to_json() for j in jobs[:limit]], "next": ""})

    async def get_job(self, request: web.Request) -> web.Response:
        self.requests.append(await _seen(request))
        if not self._authorized(request):
            return self._unauthorized(request)
        scripted = self._scripted(self.poll_script)
        if scripted is not None:
            return scripted
        job = self.jobs.get(int(request.match_info["job_id"]))
        if job is None:
            return problem(404, "not-found", "Job not found")
        if not job.final_now:
            if job.polls_left > 0:
                job.polls_left -= 1
                job.status = "running"
            else:
                job.status = job.final
        return web.json_response(job.to_json())


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
    if "client_id" not in kwargs:
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


async def test_airbyte_409_busy_is_coalesced_into_the_running_job(airbyte: FakeAirbyte) -> None:
    airbyte.polls = 1000
    async with airbyte_pipeline(airbyte) as pipeline:
        first = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
        assert (first.status, first.run_id) == (RunStatus.QUEUED, "1")
        second = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert second.status == RunStatus.COALESCED
    assert second.error is None
    assert second.attempts == 1
    assert second.run_id == "1"
    assert second.detail["coalesced_into"] == "1"
    assert second.detail["http_status"] == 409
    assert "already running" in second.detail["message"]
    assert len(airbyte.jobs) == 1


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
    airbyte.polls = 10_000
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
    with pytest.raises(ValueError, match="token cannot be combined"):
        AirbyteConfig(kind="airbyte", url="http://x", token="t", client_id="i", client_secret="s")
    AirbyteConfig(kind="airbyte", url="http://x")  # an Airbyte without auth


# --------------------------------------------------------------------------------------------
# A fake Airflow REST API


@dataclass
class DagRun:
    dag_id: str
    run_id: str
    conf: Any
    polls_left: int
    final: str
    state: str = "queued"

    def to_json(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "dag_run_id": self.run_id,
            "state": self.state,
            "conf": self.conf,
            "logical_date": None,
            "run_type": "manual",
            "start_date": None if self.state == "queued" else "2024-06-01T12:00:01+00:00",
            "end_date": "2024-06-01T12:00:09+00:00"
            if self.state in ("success", "failed")
            else None,
        }


@dataclass
class FakeAirflow:
    """DAG runs go queued -> running (``polls`` reads) -> ``final``; a known run id is 409."""

    url: str = ""
    username: str = "kc"
    password: str = "af-s3cret-pw"
    token: str = "af-s3cret-token"
    dags: set[str] = field(default_factory=lambda: {"load_orders"})
    polls: int = 2
    final: str = "success"
    runs: dict[tuple[str, str], DagRun] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    trigger_script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        for version in ("v1", "v2"):
            base = f"/api/{version}/dags/{{dag_id}}/dagRuns"
            app.router.add_post(base, self.trigger)
            app.router.add_get(base + "/{run_id}", self.get_run)
        return app

    @property
    def triggers(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST"]

    def _authorized(self, request: web.Request) -> bool:
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return request.headers.get("Authorization") in (f"Basic {basic}", f"Bearer {self.token}")

    async def trigger(self, request: web.Request) -> web.Response:
        seen = await _seen(request)
        self.requests.append(seen)
        if not self._authorized(request):
            return problem(401, "Unauthorized", "Invalid credentials")
        if self.trigger_script:
            status, headers, text = self.trigger_script.pop(0)
            return web.Response(status=status, headers=headers, text=text)
        dag_id = request.match_info["dag_id"]
        if dag_id not in self.dags:
            return problem(404, "DAG not found", f"DAG with dag_id: '{dag_id}' not found")
        body = seen.body or {}
        if request.path.startswith("/api/v2/") and "logical_date" not in body:
            return problem(422, "Unprocessable Entity", "logical_date: Field required")
        run_id = body["dag_run_id"]
        if (dag_id, run_id) in self.runs:
            return problem(
                409,
                "Conflict",
                f"DAGRun with DAG ID: '{dag_id}' and DAGRun ID: '{run_id}' already exists",
            )
        run = DagRun(dag_id, run_id, body.get("conf"), self.polls, self.final)
        self.runs[(dag_id, run_id)] = run
        return web.json_response(run.to_json())

    async def get_run(self, request: web.Request) -> web.Response:
        self.requests.append(await _seen(request))
        if not self._authorized(request):
            return problem(401, "Unauthorized", "Invalid credentials")
        run = self.runs.get((request.match_info["dag_id"], request.match_info["run_id"]))
        if run is None:
            return problem(404, "DAGRun not found", "DAGRun not found")
        if run.state in ("queued", "running"):
            if run.polls_left > 0:
                run.polls_left -= 1
                run.state = "running"
            else:
                run.state = run.final
        return web.json_response(run.to_json())


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


async def test_airflow3_uses_api_v2_with_a_null_logical_date_and_a_token(
    airflow: FakeAirflow,
) -> None:
    async with airflow_pipeline(airflow, api_version="v2", token=airflow.token) as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    [trigger] = airflow.triggers
    assert trigger.path == "/api/v2/dags/load_orders/dagRuns"
    assert trigger.body == {"dag_run_id": "orders:7", "logical_date": None, "conf": PAYLOAD}
    assert trigger.headers["Authorization"] == f"Bearer {airflow.token}"


async def test_airflow_409_follows_the_existing_run(airflow: FakeAirflow) -> None:
    airflow.polls = 3
    async with airflow_pipeline(airflow) as pipeline:
        first = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
        assert (first.status, first.run_id) == (RunStatus.QUEUED, "orders:7")
        # the same window delivered again (crash mid-call, re-dispatch): no second run
        again = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert again.status == RunStatus.SUCCEEDED
    assert again.run_id == "orders:7"
    assert again.detail["existing_run"] is True
    assert len(airflow.runs) == 1
    assert len(airflow.triggers) == 2


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
    airbyte.polls = 8
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
    engine = await start_engine(cfg)
    try:
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
    finally:
        await engine.stop()
