"""The HTTP API against a real engine, broker and Redis: every endpoint, auth, schema, metrics."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aredis
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from kafkaconsole.api import ApiServer, openapi_document, start_api
from kafkaconsole.embedded import BrokerKind, EmbeddedServices
from kafkaconsole.engine.clients import PoolExhausted, WatchedConnectionPool
from kafkaconsole.engine.engine import Engine
from tests.engine_support import make_config, start_engine
from tests.helpers import KafkaHelper, wait_for

TOKEN = "api-token-for-tests"
SECRET = "pipeline-secret-value"

INFO_KEYS = {
    "consumer_id",
    "kafka_topic",
    "topics",
    "topic_pattern",
    "pipeline_name",
    "job_type",
    "state",
    "paused_by",
    "paused_at",
    "instances",
    "config",
    "pipeline",
    "window",
    "lag",
    "time_lag_seconds",
    "time_to_trigger_seconds",
    "backlog",
    "backlog_age_seconds",
    "verdict",
    "verdict_reason",
    "verdict_since",
    "alerts",
    "partitions",
    "rate",
    "totals",
    "last_trigger",
    "triggers",
    "errors",
}
WINDOW_KEYS = {
    "id",
    "count",
    "max_event",
    "max_time",
    "fill_ratio",
    "opened_at",
    "time_left",
    "closes_at",
}
TOTALS_KEYS = {"events", "filtered", "skipped", "discarded", "windows", "windows_by_reason"}
ERRORS_KEYS = {"count", "dlq", "last_error"}
PARTITION_KEYS = {
    "topic",
    "partition",
    "position",
    "highwater",
    "lag",
    "time_lag_seconds",
    "oldest_ts_ms",
    "owner",
}
CONSUMER_KEYS = {
    "consumer_id",
    "kafka_topic",
    "pipeline_name",
    "job_type",
    "state",
    "count",
    "max_event",
    "max_time",
    "window_opened_at",
    "time_left",
    "lag",
    "instances",
    "last_trigger",
    "partitions",
}


@dataclass
class Env:
    engine: Engine
    api: ApiServer
    redis: aredis.Redis
    kafka: KafkaHelper
    session: aiohttp.ClientSession
    topic: str
    cid: str
    prefix: str

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.api.url + path, **kw) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def post(self, path: str, token: str | None = TOKEN, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        async with self.session.post(self.api.url + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json()

    async def count(self) -> int:
        return int(await self.redis.get(f"{self.prefix}:{self.cid}:events") or 0)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(services: EmbeddedServices) -> AsyncIterator[Env]:
    unique = f"api{uuid.uuid4().hex[:8]}"
    kafka = KafkaHelper(services.bootstrap_servers)
    await kafka.start()
    await kafka.create_topic(unique, 2)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}],
        pipelines={
            "cmd": {
                "kind": "command",
                "command": [sys.executable, "-c", "import sys; sys.stdin.read()"],
                "env": {"API_TOKEN": SECRET},
                "retry_policy": {"max_attempts": 2, "initial_backoff": 0.01},
            }
        },
        api={"enabled": True, "host": "127.0.0.1", "port": 0, "token": TOKEN},
    )
    engine = await start_engine(cfg)
    api = await start_api(engine, cfg)
    redis = aredis.from_url(services.redis_url)
    session = aiohttp.ClientSession()
    e = Env(engine, api, redis, kafka, session, unique, cid, unique)
    try:

        async def assigned() -> bool:
            status, body = await e.get(f"/consumer/info/{cid}")
            return status == 200 and len(body["partitions"]) == 2

        await wait_for(assigned, 20, what="both partitions assigned and published")
        yield e
    finally:
        await session.close()
        await api()
        await engine.stop()
        await redis.aclose()
        await kafka.stop()


async def test_health_ready_instances(env: Env) -> None:
    assert env.api.port > 0
    status, body = await env.get("/health")
    assert status == 200 and body["status"] == "ok"
    assert body["instance_id"] == env.engine.instance_id

    async def ready() -> bool:
        return (await env.get("/ready"))[0] == 200

    await wait_for(ready, 10, what="/ready 200")
    _, body = await env.get("/ready")
    assert body == {
        "ready": True,
        "status": "ready",
        "instance_id": env.engine.instance_id,
        "kafka": True,
        "redis": True,
        "reasons": [],
        "warnings": [],
    }
    status, body = await env.get("/instances")
    assert status == 200
    [inst] = [i for i in body["instances"] if i["instance_id"] == env.engine.instance_id]
    assert inst["consumers"] == [env.cid] and inst["kafka_ok"] and inst["redis_ok"]


async def test_ready_says_degraded_while_the_redis_pool_is_exhausted(env: Env) -> None:
    """A command that waited out for a pooled connection makes the instance degraded, with
    the reason, and ready again once the pool has had room for the degraded period."""
    pool = env.engine.redis.connection_pool
    assert isinstance(pool, WatchedConnectionPool)
    timeout, degraded_s = pool.timeout, pool.degraded_s
    pool.timeout, pool.degraded_s = 0.2, 60.0
    held = []
    try:
        while len(held) < pool.max_connections:  # the engine's tasks hand theirs back
            held.append(await pool.get_connection())
        with pytest.raises(PoolExhausted, match=r"stayed busy for 0\.2 s"):
            await env.engine.redis.get(f"{env.prefix}:probe")
    finally:
        for connection in held:
            await pool.release(connection)
        pool.timeout = timeout
    reason = (
        f"Redis connections exhausted: every connection of the pool of "
        f"{env.engine.config.redis.max_connections} ([redis] max_connections) stayed busy "
        "for 0.2 s"
    )
    try:

        async def redis_answers_again() -> bool:
            status, body = await env.get("/ready")
            return status == 503 and body["redis"] is True and body["kafka"] is True

        await wait_for(redis_answers_again, 10, what="/ready 503 with Redis answering")
        status, body = await env.get("/ready")
        assert status == 503
        assert body == {
            "ready": False,
            "status": "degraded",
            "instance_id": env.engine.instance_id,
            "kafka": True,
            "redis": True,
            "reasons": [reason],
            "warnings": [],
        }

        async def in_the_snapshot() -> bool:
            # the status loop builds the snapshot; its own reads waited out with the rest and
            # back off before the next one, so the snapshot follows /ready shortly after
            return env.engine.snapshot().redis_pool == (reason,)

        await wait_for(in_the_snapshot, 10, what="the exhaustion in the instance's snapshot")
    finally:
        pool.degraded_s = 0.0

    async def ready() -> bool:
        return (await env.get("/ready"))[0] == 200

    await wait_for(ready, 10, what="/ready 200 again")
    pool.degraded_s = degraded_s


async def test_consumers_and_info_schema(env: Env) -> None:
    await env.kafka.produce(env.topic, ({"i": i} for i in range(3)), partitions=2)

    async def counted() -> bool:
        return await env.count() >= 3

    await wait_for(counted, 15, what="3 events counted")
    status, body = await env.get("/consumers")
    assert status == 200
    [c] = body["consumers"]
    assert set(c) >= CONSUMER_KEYS
    assert c["consumer_id"] == env.cid and c["state"] == "running"
    assert c["count"] == await env.count()

    status, info = await env.get(f"/consumer/info/{env.cid}")
    assert status == 200
    assert set(info) == INFO_KEYS
    assert set(info["window"]) == WINDOW_KEYS
    assert set(info["totals"]) == TOTALS_KEYS
    assert set(info["errors"]) == ERRORS_KEYS
    assert all(set(p) == PARTITION_KEYS for p in info["partitions"])
    assert [p["partition"] for p in info["partitions"]] == [0, 1]
    assert {p["owner"] for p in info["partitions"]} == {env.engine.instance_id}
    w = info["window"]
    assert w["count"] >= 3 and w["max_event"] == 1000 and w["opened_at"]
    assert 0 < w["time_left"] <= 3600 and w["closes_at"]
    assert info["config"]["consumer_id"] == env.cid
    assert info["pipeline"]["kind"] == "command"
    assert info["pipeline"]["env"]["API_TOKEN"] == "******"
    raw = await env.session.get(f"{env.api.url}/consumer/info/{env.cid}")
    text = await raw.text()
    raw.release()
    assert SECRET not in text and TOKEN not in text

    status, body = await env.get("/consumer/info/nope")
    assert status == 404 and "unknown consumer 'nope'" in body["error"]


async def test_unknown_route_and_method_are_json(env: Env) -> None:
    status, body = await env.get("/nothing-here")
    assert status == 404 and body == {"error": "not found"}
    async with env.session.delete(f"{env.api.url}/health") as resp:
        assert resp.status == 405 and "error" in await resp.json()


async def test_control_needs_the_token(env: Env) -> None:
    path = f"/consumer/{env.cid}/pause"
    status, body = await env.post(path, token=None)
    assert status == 401 and "error" in body
    status, _ = await env.post(path, token="wrong")
    assert status == 401
    status, _ = await env.post(path, token=None, headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401
    status, body = await env.post("/consumer/nope/pause")
    assert status == 404 and "error" in body
    status, _ = await env.post(path, data=b"x" * 10_000)
    assert status == 413
    assert not (await env.get(f"/consumer/info/{env.cid}"))[1]["paused_by"]

    # without a configured token the control endpoints are disabled
    no_token = env.engine.config.model_copy(
        update={"api": env.engine.config.api.model_copy(update={"token": None})}
    )
    other = await start_api(env.engine, no_token)
    try:
        async with env.session.post(
            f"{other.url}/consumer/{env.cid}/trigger", headers={"Authorization": "Bearer x"}
        ) as resp:
            assert resp.status == 403 and "token" in (await resp.json())["error"]
    finally:
        await other()


async def test_pause_resume_reset_trigger(env: Env) -> None:
    status, body = await env.post(f"/consumer/{env.cid}/pause")
    assert status == 200 and body == {"consumer_id": env.cid, "action": "pause", "paused": True}
    before = await env.count()
    _, info = await env.get(f"/consumer/info/{env.cid}")
    assert info["state"] == "paused" and info["paused_by"].startswith("api")
    await env.kafka.produce(env.topic, ({"i": i} for i in range(4)), partitions=2)
    await asyncio.sleep(1.0)
    assert await env.count() == before

    status, body = await env.post(f"/consumer/{env.cid}/resume")
    assert status == 200 and body["paused"] is False

    async def resumed() -> bool:
        return await env.count() == before + 4

    await wait_for(resumed, 10, what="counting resumed")

    status, body = await env.post(f"/consumer/{env.cid}/reset")
    assert status == 200 and body["action"] == "reset" and body["discarded"] == before + 4
    assert await env.count() == 0

    await env.kafka.produce(env.topic, ({"i": i} for i in range(2)), partitions=2)

    async def two() -> bool:
        return await env.count() == 2

    await wait_for(two, 10, what="2 counted")
    status, body = await env.post(f"/consumer/{env.cid}/trigger")
    assert status == 200 and body["status"] == "closed" and body["count"] == 2
    wid = body["window_id"]

    async def ran() -> bool:
        _, info = await env.get(f"/consumer/info/{env.cid}")
        lt = info["last_trigger"]
        return lt is not None and lt["window_id"] == wid and lt["status"] == "succeeded"

    await wait_for(ran, 15, what="manual trigger's pipeline run")
    _, info = await env.get(f"/consumer/info/{env.cid}")
    newest = info["triggers"][0]
    assert newest["reason"] == "manual" and newest["count"] == 2 and newest["status"] == "succeeded"
    assert info["totals"]["windows_by_reason"]["manual"] >= 1


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_metrics_parse(env: Env) -> None:
    status, body = await env.post(f"/consumer/{env.cid}/trigger")
    assert status == 200
    wid = body["window_id"]

    async def ran() -> bool:
        _, info = await env.get(f"/consumer/info/{env.cid}")
        lt = info["last_trigger"]
        return lt is not None and lt["window_id"] == wid and lt["status"] == "succeeded"

    await wait_for(ran, 15, what="pipeline run")
    async with env.session.get(f"{env.api.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    fams = _families(text)
    for name in (
        "kafkaconsole_events_counted",
        "kafkaconsole_event_errors",
        "kafkaconsole_dlq_events",
        "kafkaconsole_redis_state_losses",
        "kafkaconsole_triggers",
        "kafkaconsole_pipeline_runs",
        "kafkaconsole_pipeline_run_duration_seconds",
        "kafkaconsole_consumer_lag",
        "kafkaconsole_window_fill_ratio",
        "kafkaconsole_kafka_up",
        "kafkaconsole_redis_up",
    ):
        assert name in fams, name

    def value(family: str, sample: str, **labels: str) -> float:
        for s in fams[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no {sample} {labels}")

    cid = env.cid
    assert value("kafkaconsole_triggers", "kafkaconsole_triggers_total", reason="manual") >= 1
    assert (
        value(
            "kafkaconsole_pipeline_runs",
            "kafkaconsole_pipeline_runs_total",
            consumer_id=cid,
            status="succeeded",
        )
        >= 1
    )
    assert (
        value(
            "kafkaconsole_pipeline_run_duration_seconds",
            "kafkaconsole_pipeline_run_duration_seconds_count",
            consumer_id=cid,
        )
        >= 1
    )
    lag_partitions = {s.labels["partition"] for s in fams["kafkaconsole_consumer_lag"].samples}
    assert lag_partitions == {"0", "1"}
    assert value("kafkaconsole_redis_up", "kafkaconsole_redis_up") == 1
    assert 0 <= value("kafkaconsole_window_fill_ratio", "kafkaconsole_window_fill_ratio") <= 1


async def test_openapi_lists_every_route(env: Env) -> None:
    status, doc = await env.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    routes = [
        (r.method.lower(), r.resource.canonical)
        for r in env.api.app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    ]
    assert len(routes) == 17
    for method, path in routes:
        assert method in doc["paths"][path], (method, path)
    for method in ("pause", "resume", "reset", "trigger"):
        op = doc["paths"][f"/consumer/{{consumer_id}}/{method}"]["post"]
        assert op["security"] == [{"bearerAuth": []}] and "401" in op["responses"]
    op = doc["paths"]["/reload"]["post"]
    assert op["security"] == [{"bearerAuth": []}] and "422" in op["responses"]
    op = doc["paths"]["/consumers"]["post"]
    assert op["security"] == [{"bearerAuth": []}]
    assert {"201", "401", "403", "409", "422"} <= set(op["responses"])
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"type": "object"}
    op = doc["paths"]["/consumers/{consumer_id}"]["delete"]
    assert op["security"] == [{"bearerAuth": []}] and {"404", "409"} <= set(op["responses"])


@pytest.mark.parametrize("path", ["/health", "/metrics", "/openapi.json"])
async def test_read_endpoints_need_no_token(env: Env, path: str) -> None:
    status, _ = await env.get(path)
    assert status == 200


def _response_validator(doc: dict[str, Any], path: str, method: str, code: int) -> Any:
    """A JSON Schema validator of one documented response, its $refs resolved in ``doc``."""
    base = "urn:kafkaconsole:openapi"
    registry: Registry[Any] = Registry().with_resource(
        base, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    schema = doc["paths"][path][method]["responses"][str(code)]["content"]["application/json"]
    ref = schema["schema"].get("$ref")
    assert ref is not None, f"{method} {path} {code}: no schema of its own"
    return Draft202012Validator({"$ref": base + ref}, registry=registry)


async def test_live_responses_match_the_openapi_document(env: Env) -> None:
    """Every JSON response, success or error, is what the document says (no key more or
    less, every type right): a client generated from the document reads them all."""
    _, doc = await env.get("/openapi.json")
    assert doc["openapi"] == "3.1.0"
    cid = env.cid
    info = "/consumer/info/{consumer_id}"
    calls: list[tuple[str, str, str, Any]] = [
        ("post", f"/consumer/{cid}/pause", "/consumer/{consumer_id}/pause", None),
        ("get", "/consumers", "/consumers", None),
        ("post", f"/consumer/{cid}/resume", "/consumer/{consumer_id}/resume", None),
        ("post", f"/consumer/{cid}/reset", "/consumer/{consumer_id}/reset", None),
        ("post", f"/consumer/{cid}/trigger", "/consumer/{consumer_id}/trigger", None),
        ("post", f"/consumer/{cid}/pause", "/consumer/{consumer_id}/pause", "wrong"),
        ("post", "/consumer/nope/reset", "/consumer/{consumer_id}/reset", None),
        ("get", "/health", "/health", None),
        ("get", "/ready", "/ready", None),
        ("get", "/consumers", "/consumers", None),
        ("get", f"/consumer/info/{cid}", info, None),
        ("get", "/consumer/info/nope", info, None),
        ("get", "/instances", "/instances", None),
    ]
    seen = set()
    for method, url, path, token in calls:
        if method == "get":
            code, body = await env.get(url)
        else:
            code, body = await env.post(url, token=token or TOKEN)
        assert str(code) in doc["paths"][path][method]["responses"], (url, code)
        _response_validator(doc, path, method, code).validate(body)
        seen.add((path, code))
    assert {("/consumer/{consumer_id}/pause", 401), (info, 404), (info, 200)} <= seen
    # the trigger went through: the info validated above had a trigger record to check
    _, body = await env.get(f"/consumer/info/{cid}")
    assert body["triggers"] and body["last_trigger"] is not None
    _response_validator(doc, info, "get", 200).validate(body)
    # status --json prints the same model the document describes
    fleet_schema = {"$ref": "urn:kafkaconsole:openapi#/components/schemas/FleetStatus"}
    registry: Registry[Any] = Registry().with_resource(
        "urn:kafkaconsole:openapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    Draft202012Validator(fleet_schema, registry=registry).validate(await env.api.fleet.status())


def test_a_response_the_document_does_not_describe_is_refused() -> None:
    """The check above can fail: an undocumented key or a wrong type does not validate."""
    doc = openapi_document()
    validator = _response_validator(doc, "/health", "get", 200)
    good = {"status": "ok", "instance_id": "i-1", "uptime_s": 1.5}
    validator.validate(good)
    assert not validator.is_valid({**good, "extra": 1})
    assert not validator.is_valid({**good, "uptime_s": "long"})
    assert not validator.is_valid({k: v for k, v in good.items() if k != "status"})


async def test_peek_endpoints_need_the_token_and_match_the_document(env: Env) -> None:
    """GET /consumers/{id}/events (a closed window, the topic's newest) and /dlq: guarded by
    the bearer token, refusals as documented, bodies as the document describes."""
    _, doc = await env.get("/openapi.json")
    events = "/consumers/{consumer_id}/events"
    dlq = "/consumers/{consumer_id}/dlq"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    cid = env.cid
    before = await env.count()
    await env.kafka.produce(
        env.topic, ({"peek": i, "token": "t-1"} for i in range(3)), partitions=2
    )

    async def counted() -> bool:
        return await env.count() == before + 3

    await wait_for(counted, 20, what="the three events counted")
    code, closed = await env.post(f"/consumer/{cid}/trigger")
    assert code == 200

    async def check(url: str, path: str, code: int, **kw: Any) -> Any:
        status, body = await env.get(url, **kw)
        assert status == code, (url, body)
        assert str(status) in doc["paths"][path]["get"]["responses"]
        _response_validator(doc, path, "get", status).validate(body)
        return body

    await check(f"/consumers/{cid}/events", events, 401)
    await check(f"/consumers/{cid}/dlq", dlq, 401, headers={"Authorization": "Bearer wrong"})
    window = await check(
        f"/consumers/{cid}/events?window={closed['window_id']}", events, 200, headers=auth
    )
    assert window["source"] == "window" and window["window_id"] == closed["window_id"]
    assert len(window["events"]) == window["window_count"] == closed["count"]
    assert any(e["value"].get("peek") == 2 for e in window["events"])
    assert all(e["value"].get("token") in (None, "******") for e in window["events"])
    tail = await check(f"/consumers/{cid}/events?window=tail&limit=2", events, 200, headers=auth)
    assert tail["source"] == "tail" and len(tail["events"]) == 2 and tail["truncated"]
    body = await check(f"/consumers/{cid}/events?window=999", events, 404, headers=auth)
    assert body["error"].startswith(f"window 999 of {cid} is not closed yet (window ")
    for bad in ("window=abc", "limit=0", "limit=1001", "limit=x"):
        await check(f"/consumers/{cid}/events?{bad}", events, 400, headers=auth)
    await check("/consumers/nope/events", events, 404, headers=auth)

    # without a configured token, and in read-only mode: disabled, and still served
    no_token = env.engine.config.model_copy(
        update={"api": env.engine.config.api.model_copy(update={"token": None})}
    )
    for cfg, code in ((no_token, 403), (env.engine.config.with_read_only(), 200)):
        other = await start_api(env.engine, cfg)
        try:
            url = f"{other.url}/consumers/{cid}/events?limit=1"
            async with env.session.get(url, headers=auth) as resp:
                body = await resp.json()
                assert resp.status == code, body
                _response_validator(doc, events, "get", code).validate(body)
        finally:
            await other()
    await env.kafka.produce(env.topic, [b"{peek-bad"], partitions=1)

    async def dead_lettered() -> bool:
        status, body = await env.get(f"/consumers/{cid}/dlq?limit=1000", headers=auth)
        return status == 200 and any(e["value"] == "{peek-bad" for e in body["events"])

    await wait_for(dead_lettered, 20, what="the bad event in the DLQ")
    body = await check(f"/consumers/{cid}/dlq?limit=1000", dlq, 200, headers=auth)
    (dead,) = [e for e in body["events"] if e["value"] == "{peek-bad"]
    assert body["source"] == "dlq" and dead["topic"] == f"{env.topic}.dlq"
    assert dead["error"]["stage"] == "decode" and dead["error"]["topic"] == env.topic


async def test_seek_endpoint(env: Env, broker_kind: BrokerKind) -> None:
    """POST /consumers/{id}/seek: guarded by the token, bad bodies refused in one line (422),
    a dry run changes nothing, a seek back replays exactly what it says, bodies as the
    document describes."""
    if broker_kind == "tansu":
        pytest.skip("Tansu answers ListOffsets latest wrongly (a seek to latest resolves from it)")
    _, doc = await env.get("/openapi.json")
    path, url = "/consumers/{consumer_id}/seek", f"/consumers/{env.cid}/seek"

    def valid(code: int, body: Any) -> None:
        assert str(code) in doc["paths"][path]["post"]["responses"], code
        _response_validator(doc, path, "post", code).validate(body)

    code, body = await env.post(url, token=None, json={"to": "latest"})
    assert code == 401
    valid(code, body)
    for bad, says in (
        ({}, "to: expected earliest, latest"),
        ({"to": "soon"}, "seek target 'soon' is not one of"),
        ({"to": "latest", "window": "keep"}, "window must be close or discard"),
        ({"to": "latest", "x": 1}, "unknown key(s) x"),
        ({"to": "latest", "partitions": [-1]}, "partitions: expected a list"),
        ({"to": "latest", "dry_run": "yes"}, "dry_run: expected true or false"),
    ):
        code, body = await env.post(url, json=bad)
        assert code == 422 and says in body["error"], (bad, body)
        valid(code, body)
    code, body = await env.post("/consumers/nope/seek", json={"to": "latest"})
    assert code == 404
    valid(code, body)

    # a clean start: past everything, the open window discarded
    code, body = await env.post(url, json={"to": "latest", "window": "discard"})
    assert code == 200 and body["applied"] and body["reread"] == 0, body
    valid(code, body)
    ends = {m["partition"]: m["target"] for m in body["plan"]["partitions"]}
    await env.kafka.produce(env.topic, ({"seek": i} for i in range(4)), partitions=2)
    await wait_for(lambda: _count_is(env, 4), 20, what="4 events counted")

    code, body = await env.post(
        url, json={"to": ends[0], "partitions": [0], "window": "discard", "dry_run": True}
    )
    assert code == 200 and not body["applied"] and body["epoch"] is None, body
    assert (body["reread"], body["plan"]["window_count"]) == (2, 4)
    valid(code, body)
    assert await env.count() == 4  # the dry run changed nothing

    code, body = await env.post(url, json={"to": ends[0], "partitions": [0], "window": "discard"})
    assert code == 200 and body["applied"] and (body["reread"], body["discarded"]) == (2, 4)
    valid(code, body)
    # partition 0's two events are read and counted again; partition 1's are not
    await wait_for(lambda: _count_is(env, 2), 20, what="partition 0's 2 events replayed")


async def _count_is(env: Env, n: int) -> bool:
    return await env.count() == n
