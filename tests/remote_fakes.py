"""Local stand-ins for the Airbyte public API and the Airflow REST API (2 and 3).

They answer with the shapes the real systems document and send, not with what our client
happens to expect:

- Airbyte (``/api/public/v1``, reference.airbyte.com): integer ``jobId``; ``JobStatusEnum``
  statuses; ``GET /v1/jobs`` with ``connectionId``, ``jobType``, ``status``,
  ``createdAtStart``/``createdAtEnd``, ``orderBy`` (``createdAt|ASC``) ``limit``/``offset``
  and a ``{"previous", "next", "data"}`` page; errors as problem+json bodies from Airbyte's
  problem classes: a 409 ``try-again-later`` ("A sync is already running for: <id>") when the
  connection has an unfinished job, ``state-conflict`` for other conflicts,
  ``resource-not-found`` 404s; bearer tokens, client credentials at
  ``/v1/applications/token`` and basic auth (self-hosted).
- Airflow 2 (``/api/v1``): basic auth; a run without ``logical_date`` gets the trigger time as
  its logical date; a 409 problem for an existing run id *or* an existing logical date, with
  Airflow 2's messages.
- Airflow 3 (``/api/v2``): JWTs only (``POST /auth/token`` answers 201 with a signed token
  carrying ``iat``/``exp``; anything else is ``401 {"detail": "Not authenticated"}``);
  ``logical_date`` is a required (nullable) field; a duplicate run id is the generic 409
  "Unique constraint violation" body Airflow 3.3 sends (checked against a live 3.3.2).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


async def seen_of(request: web.Request) -> Seen:
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


Script = list[tuple[int, dict[str, str], str]]


def scripted(script: Script) -> web.Response | None:
    if not script:
        return None
    status, headers, text = script.pop(0)
    return web.Response(status=status, headers=headers, text=text)


# --------------------------------------------------------------------------------------------
# Airbyte

AIRBYTE_DOCS = "https://reference.airbyte.com/reference/errors"


def airbyte_problem(status: int, title: str, detail: str) -> web.Response:
    """An Airbyte problem body (``AbstractThrowableProblem``: type, title, status, detail)."""
    return web.json_response(
        {"type": f"{AIRBYTE_DOCS}#{title}", "title": title, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


FINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass
class Job:
    job_id: int
    connection_id: str
    job_type: str
    path: list[str]
    """statuses shown by the next status reads, then ``final`` for ever"""
    final: str
    created_at: datetime
    status: str = "pending"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "jobId": self.job_id,
            "status": self.status,
            "jobType": self.job_type,
            "startTime": iso_z(self.created_at),
            "connectionId": self.connection_id,
            "lastUpdatedAt": iso_z(self.created_at),
        }
        if self.status == "succeeded":
            body.update(rowsSynced=100, bytesSynced=2048, duration="PT2S")
        return body

    @property
    def final_now(self) -> bool:
        return self.status in FINAL_JOB_STATUSES

    def advance(self) -> None:
        if not self.final_now:
            self.status = self.path.pop(0) if self.path else self.final


@dataclass
class FakeAirbyte:
    """Jobs go pending -> ``path`` (one status per status read) -> ``final``. A connection with
    an unfinished job answers 409 ``try-again-later`` to a new job of any type."""

    url: str = ""
    static_token: str = "ab-token-s3cret"
    clients: dict[str, str] = field(default_factory=lambda: {"kc-client": "kc-client-s3cret"})
    basic_users: dict[str, str] = field(default_factory=lambda: {"airbyte": "ab-basic-s3cret"})
    expires_in: int = 180
    path: list[str] = field(default_factory=lambda: ["running", "running"])
    final: str = "succeeded"
    clock_offset: float = 0.0
    """seconds Airbyte's clock is ahead of ours"""
    issued: set[str] = field(default_factory=set)
    jobs: dict[int, Job] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    create_script: Script = field(default_factory=list)
    poll_script: Script = field(default_factory=list)
    lose_replies: int = 0
    """creates (that do create the job) whose answer never comes back in time"""
    drop_before_create: int = 0
    """creates that are dropped (connection closed) before any job is created"""
    reply_delay: float = 5.0
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/public/v1/applications/token", self.token)
        app.router.add_post("/api/public/v1/jobs", self.create)
        app.router.add_get("/api/public/v1/jobs", self.list_jobs)
        app.router.add_get("/api/public/v1/jobs/{job_id}", self.get_job)
        return app

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset)

    @property
    def creates(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/v1/jobs")]

    @property
    def lists(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/v1/jobs")]

    @property
    def token_requests(self) -> list[Seen]:
        return [r for r in self.requests if r.path.endswith("/applications/token")]

    def revoke_tokens(self) -> None:
        self.issued.clear()

    def add_job(self, connection_id: str, job_type: str = "sync", status: str = "running") -> Job:
        """A job started by someone else (the scheduler, the UI)."""
        job = Job(next(self._ids), connection_id, job_type, [], self.final, self.now(), status)
        self.jobs[job.job_id] = job
        return job

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return self.basic_users.get(user) == password
        token = auth.removeprefix("Bearer ")
        return auth.startswith("Bearer ") and (token == self.static_token or token in self.issued)

    def _unauthorized(self, request: web.Request) -> web.Response:
        # echoes the credential it refused: the client must never pass that on
        return airbyte_problem(
            401, "invalid-api-key", f"invalid {request.headers.get('Authorization')}"
        )

    async def token(self, request: web.Request) -> web.Response:
        seen = await seen_of(request)
        self.requests.append(seen)
        body = seen.body or {}
        if self.clients.get(str(body.get("client_id"))) != body.get("client_secret"):
            return airbyte_problem(401, "invalid-api-key", "bad client credentials")
        token = f"access-{len(self.token_requests)}-s3cret"
        self.issued.add(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    async def create(self, request: web.Request) -> web.StreamResponse:
        seen = await seen_of(request)
        self.requests.append(seen)
        if not self._authorized(request):
            return self._unauthorized(request)
        answer = scripted(self.create_script)
        if answer is not None:
            return answer
        if self.drop_before_create:
            self.drop_before_create -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        connection = seen.body["connectionId"]
        if any(j.connection_id == connection and not j.final_now for j in self.jobs.values()):
            return airbyte_problem(
                409, "try-again-later", f"A sync is already running for: {connection}"
            )
        job = Job(
            next(self._ids),
            connection,
            seen.body["jobType"],
            list(self.path),
            self.final,
            self.now(),
        )
        self.jobs[job.job_id] = job
        if self.lose_replies:
            self.lose_replies -= 1
            await asyncio.sleep(self.reply_delay)
        return web.json_response(job.to_json())

    async def list_jobs(self, request: web.Request) -> web.Response:
        self.requests.append(await seen_of(request))
        if not self._authorized(request):
            return self._unauthorized(request)
        query = request.query
        jobs = list(self.jobs.values())
        if "connectionId" in query:
            jobs = [j for j in jobs if j.connection_id == query["connectionId"]]
        if "jobType" in query:
            jobs = [j for j in jobs if j.job_type == query["jobType"]]
        if "status" in query:
            jobs = [j for j in jobs if j.status == query["status"]]
        if "createdAtStart" in query:
            start = parse_iso(query["createdAtStart"])
            jobs = [j for j in jobs if j.created_at >= start]
        if "createdAtEnd" in query:
            end = parse_iso(query["createdAtEnd"])
            jobs = [j for j in jobs if j.created_at <= end]
        field_name, _, direction = query.get("orderBy", "createdAt|DESC").partition("|")
        if field_name not in ("createdAt", "updatedAt") or direction not in ("ASC", "DESC"):
            return airbyte_problem(400, "bad-request", "Invalid orderBy")
        jobs.sort(key=lambda j: (j.created_at, j.job_id), reverse=direction == "DESC")
        limit = int(query.get("limit", "20"))
        offset = int(query.get("offset", "0"))
        if not 1 <= limit <= 100:
            return airbyte_problem(400, "bad-request", "limit must be between 1 and 100")
        page = jobs[offset : offset + limit]
        return web.json_response({"previous": "", "next": "", "data": [j.to_json() for j in page]})

    async def get_job(self, request: web.Request) -> web.Response:
        self.requests.append(await seen_of(request))
        if not self._authorized(request):
            return self._unauthorized(request)
        answer = scripted(self.poll_script)
        if answer is not None:
            return answer
        job_id = request.match_info["job_id"]
        job = self.jobs.get(int(job_id)) if job_id.isdigit() else None
        if job is None:
            return airbyte_problem(
                404, "resource-not-found", f"Could not find a resource for: {job_id}"
            )
        job.advance()
        return web.json_response(job.to_json())


# --------------------------------------------------------------------------------------------
# Airflow

AIRFLOW2_DOCS = (
    "https://airflow.apache.org/docs/apache-airflow/2.10.5/stable-rest-api-ref.html#section/Errors/"
)


def airflow2_problem(status: int, title: str, detail: str, error: str) -> web.Response:
    """An Airflow 2 (connexion) problem body."""
    return web.json_response(
        {"detail": detail, "status": status, "title": title, "type": AIRFLOW2_DOCS + error},
        status=status,
        content_type="application/problem+json",
    )


def airflow3_error(status: int, detail: Any) -> web.Response:
    """An Airflow 3 (FastAPI) error body."""
    return web.json_response({"detail": detail}, status=status)


@dataclass
class DagRun:
    dag_id: str
    run_id: str
    conf: Any
    logical_date: str | None
    polls_left: int
    final: str
    state: str = "queued"

    def to_json(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "dag_run_id": self.run_id,
            "state": self.state,
            "conf": self.conf,
            "logical_date": self.logical_date,
            "run_type": "manual",
            "start_date": None if self.state == "queued" else "2024-06-01T12:00:01+00:00",
            "end_date": "2024-06-01T12:00:09+00:00"
            if self.state in ("success", "failed")
            else None,
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class FakeAirflow:
    """DAG runs go queued -> running (``polls`` reads) -> ``final``.

    /api/v1 is Airflow 2 (basic auth, or the static ``token`` an auth backend may accept);
    /api/v2 is Airflow 3 (JWTs from /auth/token only, living ``jwt_lifetime`` seconds).
    """

    url: str = ""
    username: str = "kc"
    password: str = "af-s3cret-pw"
    token: str = "af-s3cret-token"
    jwt_lifetime: int = 86400
    dags: set[str] = field(default_factory=lambda: {"load_orders"})
    polls: int = 2
    final: str = "success"
    frozen_now: str | None = None
    """Airflow 2's "now" (the logical date of a run triggered without one), if frozen"""
    runs: dict[tuple[str, str], DagRun] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    trigger_script: Script = field(default_factory=list)
    jwts: dict[str, float] = field(default_factory=dict)
    """issued JWT -> its exp"""
    _key: bytes = b"fake-airflow-jwt-secret"
    _jti: Any = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/auth/token", self.issue_token)
        for version in ("v1", "v2"):
            base = f"/api/{version}/dags/{{dag_id}}/dagRuns"
            app.router.add_post(base, self.trigger)
            app.router.add_get(base + "/{run_id}", self.get_run)
        return app

    @property
    def triggers(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST" and "/dagRuns" in r.path]

    @property
    def token_requests(self) -> list[Seen]:
        return [r for r in self.requests if r.path == "/auth/token"]

    def make_jwt(self, lifetime: float, *, issued: float | None = None) -> str:
        now = time.time() if issued is None else issued
        header = _b64(orjson.dumps({"alg": "HS512", "kid": "not-used", "typ": "JWT"}))
        claims = {
            "sub": self.username,
            "role": "admin",
            "jti": f"{next(self._jti):032x}",
            "aud": "apache-airflow",
            "nbf": int(now),
            "exp": int(now + lifetime),
            "iat": int(now),
        }
        payload = _b64(orjson.dumps(claims))
        signature = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha512).digest()
        token = f"{header}.{payload}.{_b64(signature)}"
        self.jwts[token] = now + lifetime
        return token

    def expire_tokens(self) -> None:
        self.jwts = dict.fromkeys(self.jwts, 0.0)

    async def issue_token(self, request: web.Request) -> web.Response:
        seen = await seen_of(request)
        self.requests.append(seen)
        body = seen.body or {}
        if not isinstance(body.get("username"), str) or not isinstance(body.get("password"), str):
            return airflow3_error(422, [{"type": "missing", "loc": ["body", "username"]}])
        if (body["username"], body["password"]) != (self.username, self.password):
            return airflow3_error(401, "Invalid credentials")
        return web.json_response({"access_token": self.make_jwt(self.jwt_lifetime)}, status=201)

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if request.path.startswith("/api/v2/"):
            token = auth.removeprefix("Bearer ")
            return auth.startswith("Bearer ") and self.jwts.get(token, 0.0) > time.time()
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return auth in (f"Basic {basic}", f"Bearer {self.token}")

    def _unauthorized(self, request: web.Request) -> web.Response:
        if request.path.startswith("/api/v2/"):
            return airflow3_error(401, "Not authenticated")
        return airflow2_problem(401, "Unauthorized", "Invalid credentials", "Unauthenticated")

    async def trigger(self, request: web.Request) -> web.Response:
        seen = await seen_of(request)
        self.requests.append(seen)
        v2 = request.path.startswith("/api/v2/")
        if not self._authorized(request):
            return self._unauthorized(request)
        answer = scripted(self.trigger_script)
        if answer is not None:
            return answer
        dag_id = request.match_info["dag_id"]
        if dag_id not in self.dags:
            if v2:
                return airflow3_error(404, f"DAG with dag_id: '{dag_id}' not found")
            return airflow2_problem(
                404, "DAG not found", f"DAG with dag_id: '{dag_id}' not found", "NotFound"
            )
        body = seen.body or {}
        if v2 and "logical_date" not in body:
            return airflow3_error(
                422, [{"type": "missing", "loc": ["body", "logical_date"], "msg": "Field required"}]
            )
        run_id = body["dag_run_id"]
        logical_date = body.get("logical_date")
        if not v2 and logical_date is None:
            logical_date = self.frozen_now or datetime.now(UTC).isoformat()
        same_date = [
            r
            for r in self.runs.values()
            if r.dag_id == dag_id and logical_date is not None and r.logical_date == logical_date
        ]
        if (dag_id, run_id) in self.runs or same_date:
            if v2:
                return airflow3_error(
                    409,
                    {
                        "reason": "Unique constraint violation",
                        "statement": "hidden",
                        "orig_error": "hidden",
                        "message": "Serious error when handling your request. Check logs for "
                        "more details - you will find it in api server when you look for ID "
                        "L5iMWlIH",
                    },
                )
            if (dag_id, run_id) in self.runs:
                detail = f"DAGRun with DAG ID: '{dag_id}' and DAGRun ID: '{run_id}' already exists"
            else:
                shown = datetime.fromisoformat(logical_date).isoformat(sep=" ")
                detail = (
                    f"DAGRun with DAG ID: '{dag_id}' and DAGRun logical date: '{shown}' "
                    "already exists"
                )
            return airflow2_problem(409, "Conflict", detail, "AlreadyExists")
        run = DagRun(dag_id, run_id, body.get("conf"), logical_date, self.polls, self.final)
        self.runs[(dag_id, run_id)] = run
        return web.json_response(run.to_json())

    async def get_run(self, request: web.Request) -> web.Response:
        self.requests.append(await seen_of(request))
        if not self._authorized(request):
            return self._unauthorized(request)
        dag_id, run_id = request.match_info["dag_id"], request.match_info["run_id"]
        run = self.runs.get((dag_id, run_id))
        if run is None:
            if request.path.startswith("/api/v2/"):
                return airflow3_error(
                    404, f"The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found"
                )
            return airflow2_problem(
                404,
                "DAGRun not found",
                f"DAGRun with DAG ID: '{dag_id}' and DagRun ID: '{run_id}' not found",
                "NotFound",
            )
        if run.state in ("queued", "running"):
            if run.polls_left > 0:
                run.polls_left -= 1
                run.state = "running"
            else:
                run.state = run.final
        return web.json_response(run.to_json())
