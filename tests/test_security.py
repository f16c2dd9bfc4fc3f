"""Safe by default, in-process: config checks, client settings, the HTTP API's
guards, read-only mode, the audit trail, log/crash masking and processors never taken from
event data. Transport security (Kafka TLS/SASL, Redis ACL/TLS) is in test_security_transport;
the end-to-end "no secret leaks" run is in test_security_secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aredis
from typer.testing import CliRunner

import kafkaconsole.headless as headless
from kafkaconsole.api import ROUTES, ApiServer, openapi_document, start_api
from kafkaconsole.cli.app import app
from kafkaconsole.config import ConfigError, load_config
from kafkaconsole.config.models import ApiConfig, AppConfig, KafkaConfig
from kafkaconsole.embedded import EmbeddedServices, free_port
from kafkaconsole.engine.audit import AuditLog, ReadOnlyError, audit_key
from kafkaconsole.engine.clients import (
    REDIS_COMMANDS,
    kafka_kwargs,
    redis_acl_line,
    security_warnings,
)
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.logs import SecretMaskFilter, setup_logging
from tests.engine_support import make_config, start_engine
from tests.helpers import KafkaHelper, wait_for
from tests.secrets_support import CANARY_ENV

TOKEN = "security-test-token-0123456789"
runner = CliRunner()

KAFKA_TAIL = """
[pipelines.p]
kind = "kafka"
topic = "windows"

[[consumers]]
consumer_id = "orders"
kafka_topic = "orders"
pipeline_name = "p"
connection_id = "conn-1"
max_event = 10
max_time = 60
"""


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(runner.invoke, app, list(args), env=env).result()


# ---- configuration and client settings --------------------------------------------------------


def test_sasl_over_plaintext_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    kafka = (
        '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
        'sasl_username = "kc"\nsasl_password = "${PW}"\n'
    )
    path.write_text(kafka + KAFKA_TAIL)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"PW": "pw-value-123"})
    [problem] = info.value.problems
    assert problem.key == "kafka.security_protocol"
    assert "SASL_SSL" in problem.message and "allow_insecure" in problem.message
    assert "pw-value-123" not in str(info.value)

    path.write_text(kafka + "allow_insecure = true\n" + KAFKA_TAIL)
    cfg = load_config(path, env={"PW": "pw-value-123"})
    warnings = security_warnings(cfg)
    assert any("SASL PLAIN over an unencrypted connection" in w for w in warnings)
    assert all("pw-value-123" not in w for w in warnings)


def test_kafka_client_settings() -> None:
    plain = kafka_kwargs(KafkaConfig())
    assert plain["security_protocol"] == "PLAINTEXT" and "ssl_context" not in plain
    assert "sasl_plain_password" not in plain

    cfg = KafkaConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="kc",
        sasl_password="pw",
    )
    kw = kafka_kwargs(cfg)
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "kc",
        "pw",
    )
    ctx: ssl.SSLContext = kw["ssl_context"]
    assert ctx.check_hostname is True and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert security_warnings(AppConfig(kafka=cfg)) == []

    lax = KafkaConfig(security_protocol="SSL", ssl_check_hostname=False)
    assert kafka_kwargs(lax)["ssl_context"].check_hostname is False
    assert any("ssl_check_hostname" in w for w in security_warnings(AppConfig(kafka=lax)))


def test_other_insecure_settings_warn() -> None:
    cfg = AppConfig.model_validate(
        {
            "redis": {"url": "redis://kc:pw@cache.internal:6379/0"},
            "api": {"token": "short"},
        }
    )
    warnings = security_warnings(cfg)
    assert any("Redis: password sent without TLS to cache.internal" in w for w in warnings)
    assert any("shorter than 16" in w for w in warnings)
    assert all("pw@" not in w for w in warnings)
    local = AppConfig.model_validate({"redis": {"url": "redis://kc:pw@127.0.0.1:6379/0"}})
    assert security_warnings(local) == []
    tls = AppConfig.model_validate({"redis": {"url": "rediss://kc:pw@cache.internal:6380/0"}})
    assert security_warnings(tls) == []


def test_redis_acl_line_grants_only_what_is_needed() -> None:
    line = redis_acl_line("orders")
    assert line.startswith("ACL SETUSER kafkaconsole on >PASSWORD resetkeys ~orders:* ")
    assert "resetchannels &orders:* -@all " in line
    granted = {token[1:] for token in line.split() if token.startswith("+")}
    assert granted == set(REDIS_COMMANDS)
    # no category grants, nothing that reads or changes other keys or the server
    for dangerous in ("@all", "@connection", "@admin", "keys", "flushall", "flushdb", "config"):
        assert dangerous not in granted
    assert not any(c.startswith(("client|kill", "acl", "debug", "shutdown")) for c in granted)


def test_api_binds_loopback_by_default() -> None:
    assert ApiConfig().host == "127.0.0.1"
    assert AppConfig().api.host == "127.0.0.1"


# ---- logs and crashes --------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    kc_level = logging.getLogger("kafkaconsole").level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("kafkaconsole").setLevel(kc_level)


def test_log_filter_masks_messages_tracebacks_and_urls(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging("json", secrets=["s3cret-value"], stream=stream)
    log = logging.getLogger("kafkaconsole.test")
    try:
        raise RuntimeError("failed with s3cret-value inside")
    except RuntimeError:
        log.exception("boom %s", "s3cret-value")
    log.warning("dsn postgres://user:otherpass@db/x and https://h/p?token=abcdef123")
    log.info("stack", stack_info=True)
    text = stream.getvalue()
    assert "s3cret-value" not in text and "otherpass" not in text and "abcdef123" not in text
    assert text.count("******") >= 4
    assert all(json.loads(line) for line in text.splitlines())
    assert isinstance(logging.getLogger().handlers[0].filters[0], SecretMaskFilter)


def test_headless_crash_output_is_masked(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "crash-secret-4711"
    cfg = AppConfig.model_validate({"api": {"enabled": False, "token": secret}})

    async def explode(config: AppConfig, **kw: Any) -> int:
        raise RuntimeError(f"unexpected failure holding {secret}")

    monkeypatch.setattr(headless, "serve", explode)
    stream = io.StringIO()
    setup_logging("text", secrets=(), stream=stream)  # the crash path masks by itself
    assert headless.run_headless(cfg) == 1
    out = stream.getvalue() + capsys.readouterr().err
    assert "RuntimeError" in out and "Traceback" in out and "crashed" in out
    assert secret not in out and "******" in out


def test_start_error_names_kafka_and_masks() -> None:
    cfg = AppConfig.model_validate(
        {
            "kafka": {
                "bootstrap_servers": "127.0.0.1:1",
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_username": "kc",
                "sasl_password": "pw-value-9876",
            }
        }
    )
    text = headless.start_error_text(KeyError("v pw-value-9876"), cfg)
    assert text.startswith("Kafka at 127.0.0.1:1 (SASL_SSL SCRAM-SHA-256 as user 'kc')")
    assert "authentication failed" in text and "pw-value-9876" not in text


# ---- CLI read-only ----------------------------------------------------------------------------


def _cli_config(tmp_path: Path, redis_url: str, extra: str = "") -> Path:
    path = tmp_path / "ro.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "ro{uuid.uuid4().hex[:6]}"\n'
        f"[api]\nenabled = false\n{extra}\n" + KAFKA_TAIL
    )
    return path


@pytest.mark.parametrize("command", ["pause", "resume", "reset", "trigger"])
def test_cli_read_only_refuses_without_touching_redis(tmp_path: Path, command: str) -> None:
    # Redis is unreachable: a refusal must come first, fast, exit 1, one line
    url = f"redis://127.0.0.1:{free_port()}/0"
    config = str(_cli_config(tmp_path, url))
    flag = invoke(command, "orders", "--read-only", "--config", config)
    assert flag.exit_code == 1, flag.output
    assert flag.stdout == ""
    assert flag.stderr == f"error: refusing to {command}: read-only mode (--read-only)\n"

    config_ro = str(_cli_config(tmp_path, url, "[ui]\nread_only = true"))
    by_config = invoke(command, "orders", "--config", config_ro)
    assert by_config.exit_code == 1
    assert "read-only mode (the configuration sets [ui] read_only = true)" in by_config.stderr

    by_env = invoke(command, "orders", "--config", config, env={"KAFKACONSOLE_UI__READ_ONLY": "1"})
    assert by_env.exit_code == 1 and "read-only mode" in by_env.stderr


def test_cli_read_only_allows_reads(tmp_path: Path, services: EmbeddedServices) -> None:
    config = str(_cli_config(tmp_path, services.redis_url, "[ui]\nread_only = true"))
    for args in (["status"], ["lag"], ["history", "orders"], ["info", "orders"], ["audit"]):
        result = invoke(*args, "--config", config)
        assert result.exit_code == 0, (args, result.output)


# ---- a live engine with the API ----------------------------------------------------------------


@dataclass
class Env:
    engine: Engine
    api: ApiServer
    ro_api: ApiServer
    redis: aredis.Redis
    kafka: KafkaHelper
    session: aiohttp.ClientSession
    topic: str
    cid: str
    proc_cid: str
    prefix: str
    canary: Path

    async def post(
        self, path: str, token: str | None = TOKEN, api: ApiServer | None = None, **kw: Any
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        url = (api or self.api).url + path
        async with self.session.post(url, headers=headers, **kw) as resp:
            return resp.status, await resp.json(), dict(resp.headers)

    async def count(self, cid: str | None = None) -> int:
        return int(await self.redis.get(f"{self.prefix}:{cid or self.cid}:events") or 0)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(
    services: EmbeddedServices, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    import os

    unique = f"sec{uuid.uuid4().hex[:8]}"
    canary = tmp_path_factory.mktemp("canary") / "canary.txt"
    os.environ[CANARY_ENV] = str(canary)
    kafka = KafkaHelper(services.bootstrap_servers)
    await kafka.start()
    await kafka.create_topic(unique, 2)
    cid, proc_cid = f"{unique}-c", f"{unique}-p"
    cfg = make_config(
        services,
        unique,
        [
            {"consumer_id": cid, "kafka_topic": unique, "max_event": 1000},
            {
                "consumer_id": proc_cid,
                "kafka_topic": unique,
                "max_event": 1000,
                "processor": "tests.secrets_support:passthrough",
            },
        ],
        api={"enabled": True, "host": "127.0.0.1", "port": 0, "token": TOKEN},
    )
    engine = await start_engine(cfg)
    api = await start_api(engine, cfg)
    ro_api = await start_api(engine, cfg.with_read_only())
    redis = aredis.from_url(services.redis_url)
    session = aiohttp.ClientSession()
    e = Env(engine, api, ro_api, redis, kafka, session, unique, cid, proc_cid, unique, canary)
    try:

        async def assigned() -> bool:
            snap = engine.snapshot()
            return all(len(c.partitions) == 2 for c in snap.consumers)

        await wait_for(assigned, 20, what="partitions assigned")
        yield e
    finally:
        await session.close()
        await ro_api()
        await api()
        await engine.stop()
        await redis.aclose()
        await kafka.stop()
        os.environ.pop(CANARY_ENV, None)


async def test_read_only_api_answers_403_after_auth(env: Env) -> None:
    for action in ("pause", "resume", "reset", "trigger"):
        path = f"/consumer/{env.cid}/{action}"
        status, body, _ = await env.post(path, api=env.ro_api)
        assert status == 403 and "read-only" in body["error"], (action, body)
        status, _, _ = await env.post(path, token="wrong", api=env.ro_api)
        assert status == 401
        status, _, _ = await env.post(path, token=None, api=env.ro_api)
        assert status == 401
    assert (await env.redis.hget(f"{env.prefix}:{env.cid}:control", "paused")) in (None, b"0")
    entries = await AuditLog(env.redis, env.prefix).entries(100)
    assert not any(e["via"] == "api" and e["result"] != "ok" for e in entries)


async def test_engine_and_fleet_refuse_in_read_only_mode(env: Env) -> None:
    original = env.engine.config
    env.engine.config = original.with_read_only()
    try:
        for call in (
            env.engine.pause(env.cid),
            env.engine.resume(env.cid),
            env.engine.reset(env.cid),
            env.engine.force_trigger(env.cid),
        ):
            with pytest.raises(ReadOnlyError):
                await call
    finally:
        env.engine.config = original
    fleet = Fleet(env.redis, original.with_read_only())
    for action in (fleet.pause, fleet.resume, fleet.reset, fleet.trigger):
        with pytest.raises(ReadOnlyError, match="read-only"):
            await action(env.cid)


async def test_post_bodies_are_ignored_and_capped(env: Env) -> None:
    before = env.engine.config.model_dump(mode="json")
    kwargs_before = kafka_kwargs(env.engine.config.kafka)
    hostile = {
        "bootstrap_servers": "evil.example:9092",
        "security_protocol": "PLAINTEXT",
        "sasl_jaas_config": "com.sun.security.auth.module.JndiLoginModule required;",
        "redis": {"url": "redis://evil.example:6379/0"},
        "processor": "os:system",
        "filter": {"type": "__import__('os').system('id')"},
        "command": ["sh", "-c", "id"],
    }
    path = f"/consumer/{env.cid}/reset?processor=os:system&bootstrap_servers=evil:9092"
    status, body, _ = await env.post(path, json=hostile)
    assert status == 200 and set(body) == {"consumer_id", "action", "window_id", "discarded"}
    assert env.engine.config.model_dump(mode="json") == before
    assert kafka_kwargs(env.engine.config.kafka).keys() == kwargs_before.keys()
    assert env.engine.config.kafka.bootstrap_servers == kwargs_before["bootstrap_servers"]

    status, body, _ = await env.post(f"/consumer/{env.cid}/reset", data=b"{" + b" " * 2000 + b"}")
    assert status == 413 and "error" in body
    # the documented surface takes no request body but a consumer definition (validated as
    # the file's, processor refused) and a seek (four known keys, no other), and no route
    # writes connection settings
    doc = openapi_document()
    bodies = [
        (path, method)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    ]
    assert bodies == [("/consumers", "post"), ("/consumers/{consumer_id}/seek", "post")]
    seek = f"/consumers/{env.cid}/seek"
    status, body, _ = await env.post(seek, json={**hostile, "to": "earliest", "dry_run": True})
    assert status == 422 and body["error"].startswith("request body: unknown key(s) bootstrap")
    status, body, _ = await env.post(seek, data=b'{"to": "' + b"1" * 20_000 + b'"}')
    assert status == 413 and "error" in body
    assert env.engine.config.model_dump(mode="json") == before
    # reads are open but the peeks (they return event payloads); every write needs the token
    peeks = {
        r.name
        for r in ROUTES
        if r.path.startswith("/consumers/{consumer_id}/") and r.method == "GET"
    }
    assert peeks == {"peek_events", "peek_dlq"}
    assert {(r.method, r.auth) for r in ROUTES if r.name in peeks} == {("GET", True)}
    assert {(r.method, r.auth) for r in ROUTES if r.name not in peeks} == {
        ("GET", False),
        ("POST", True),
        ("DELETE", True),
    }
    for method in ("PUT", "PATCH", "DELETE"):
        async with env.session.request(method, f"{env.api.url}/consumer/{env.cid}/pause") as r:
            assert r.status == 405


async def test_security_headers(env: Env) -> None:
    async with env.session.get(f"{env.api.url}/consumer/info/{env.cid}") as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    _, _, headers = await env.post(f"/consumer/{env.cid}/pause", token="wrong")
    assert headers["Cache-Control"] == "no-store"


async def test_api_warns_when_exposed_without_token(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    exposed = env.engine.config.model_copy(
        update={"api": env.engine.config.api.model_copy(update={"host": "0.0.0.0", "token": None})}
    )
    with caplog.at_level(logging.WARNING, logger="kafkaconsole.api"):
        server = await start_api(env.engine, exposed)
        await server()
    assert any("without [api] token" in r.getMessage() for r in caplog.records)


async def test_every_face_is_audited(env: Env, tmp_path: Path, services: EmbeddedServices) -> None:
    audit = AuditLog(env.redis, env.prefix)
    # API
    for action in ("pause", "resume", "trigger", "reset"):
        status, _, _ = await env.post(f"/consumer/{env.cid}/{action}")
        assert status == 200
    # engine-level calls, as the TUI makes them
    await env.engine.pause(env.cid, via="tui")
    await env.engine.resume(env.cid, via="tui")
    # CLI (through Fleet)
    fleet = Fleet(env.redis, env.engine.config)
    await fleet.reset(env.cid)
    entries = await audit.entries(50)
    newest = entries[:7]
    assert [(e["via"], e["action"]) for e in newest] == [
        ("cli", "reset"),
        ("tui", "resume"),
        ("tui", "pause"),
        ("api", "reset"),
        ("api", "trigger"),
        ("api", "resume"),
        ("api", "pause"),
    ]
    for e in newest:
        assert e["consumer_id"] == env.cid and e["result"] == "ok" and e["at"].endswith("Z")
        assert e["user"]
    api_entries = [e for e in newest if e["via"] == "api"]
    assert all(e["user"] == "api-token@127.0.0.1" for e in api_entries)
    assert all(e["instance"] == env.engine.instance_id for e in api_entries)
    assert newest[0]["instance"].startswith("cli:")
    assert "window" in newest[0]["detail"] and "discarded" in newest[0]["detail"]
    trigger = next(e for e in newest if e["action"] == "trigger")
    assert "closed with" in trigger["detail"]

    # the command shows the same, newest first
    config = tmp_path / "audit.toml"
    config.write_text(
        f'[redis]\nurl = "{services.redis_url}"\nkey_prefix = "{env.prefix}"\n'
        f"[api]\nenabled = false\n" + KAFKA_TAIL
    )
    result = invoke("audit", "--limit", "3", "--json", "--config", str(config))
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert [e["id"] for e in shown] == [e["id"] for e in entries[:3]]
    assert set(shown[0]) == {
        "id",
        "at",
        "via",
        "user",
        "instance",
        "action",
        "consumer_id",
        "result",
        "detail",
    }
    text = invoke("audit", "--limit", "7", "--config", str(config))
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0].split()[:4] == ["TIME", "VIA", "USER", "INSTANCE"] and len(lines) == 8
    assert " cli " in lines[1] and " tui " in lines[2] and " api " in lines[4]


async def test_audit_records_errors_masked_and_is_capped(env: Env) -> None:
    prefix = f"aud{uuid.uuid4().hex[:6]}"
    log = AuditLog(env.redis, prefix, mask=lambda t: t.replace("hunter2hunter2", "******"))
    with pytest.raises(RuntimeError):
        async with log.action("trigger", "c1", via="cli", user="me", instance="i"):
            raise RuntimeError("pipeline said hunter2hunter2")
    [entry] = await log.entries()
    assert entry["result"] == "error" and entry["action"] == "trigger"
    assert entry["detail"] == "RuntimeError: pipeline said ******"

    capped = AuditLog(env.redis, prefix, maxlen=10)
    for i in range(300):
        await capped.record("pause", f"c{i}", via="api", user="u", instance="i")
    assert await env.redis.xlen(audit_key(prefix)) <= 110  # MAXLEN ~ trims whole nodes
    await env.redis.delete(audit_key(prefix))


async def test_processor_never_comes_from_event_data(env: Env) -> None:
    before, before_p = await env.count(), await env.count(env.proc_cid)
    events = [
        {"processor": "tests.secrets_support:canary", "i": 0},
        {"processor": "os:system", "target": "tests.secrets_support:canary", "i": 1},
        {"filter": {"processor": "tests.secrets_support:canary"}, "i": 2},
        {"format": "raw", "consumer": {"processor": "tests.secrets_support:canary"}, "i": 3},
    ]
    await env.kafka.produce(env.topic, events, partitions=2)

    async def counted() -> bool:
        plain, processed = await env.count(), await env.count(env.proc_cid)
        return plain == before + len(events) and processed == before_p + len(events)

    await wait_for(counted, 15, what="the events counted as plain data by both consumers")
    await asyncio.sleep(0.2)
    assert not env.canary.exists()
