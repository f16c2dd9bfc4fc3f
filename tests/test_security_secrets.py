"""No secret leaks, end to end: the headless app as a subprocess, every CLI command and API
endpoint, forced errors, logs and crash paths, all grepped for unique sentinel secrets.

The sentinels (tests/secrets_support.py) are: the Redis ACL user's password (in the URL), the
API token, a pipeline's bearer token (an http pipeline whose receiver answers 401 and echoes
the token back) and a Kafka SASL password (a second run against the authenticating broker,
which refuses it: the embedded broker cannot be given a SASL user, see
test_security_transport). The TUI capture is added separately and reuses secrets_support.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aredis
from aiohttp import web

from kafkaconsole.embedded import EmbeddedServices, free_port, start_broker
from tests.helpers import KafkaHelper, http_server, wait_for
from tests.helpers import cli as run_cli
from tests.secrets_support import (
    SENTINELS,
    assert_no_sentinel,
    assert_no_sentinel_in,
    make_acl_user,
    masked_count,
    sentinel_config,
    sentinel_env,
)

REPO = Path(__file__).resolve().parent.parent
_lock = threading.Lock()


def _proc_env() -> dict[str, str]:
    env = sentinel_env({**os.environ, "PYTHONPATH": str(REPO)})
    env.pop("KAFKACONSOLE_FAULT", None)
    return env


def _start(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "kafkaconsole", "run", "--no-ui"),
                *("--config", str(config), "--log-format", "json", *extra),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=_proc_env(),
        )


def listening_addresses(pid: int, port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (psutil for the process
    when installed, else the kernel's socket table in /proc/net/tcp and tcp6)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return {
            c.laddr.ip
            for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    raw = bytes.fromhex(address)
                    if len(raw) == 4:
                        found.add(str(ipaddress.IPv4Address(raw[::-1])))
                    else:
                        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                        found.add(str(ipaddress.IPv6Address(words)))
    return found


async def cli(*args: str) -> Any:
    return await run_cli(*args, env=SENTINELS)


class Receiver:
    """An http pipeline target that refuses every call with 401, echoing the token."""

    def __init__(self) -> None:
        self.calls = 0
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        given = request.headers.get("Authorization", "")
        return web.json_response({"error": f"invalid credentials: {given}"}, status=401)


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    async with http_server([("POST", "/hook", r.handle)], r.port):
        yield r


async def test_no_secret_reaches_any_output(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    receiver: Receiver,
) -> None:
    assert services.redis is not None
    unique = f"sek{uuid.uuid4().hex[:8]}"
    topic, cid = unique, f"{unique}-c"
    await kafka.create_topic(topic, 2)
    admin = aredis.from_url(services.redis_url)
    user = await make_acl_user(admin, unique, SENTINELS["REDIS_ACL_PASSWORD"])
    api_port = free_port()
    config = sentinel_config(
        tmp_path / "kc.toml",
        bootstrap=services.bootstrap_servers,
        redis_host_port=f"127.0.0.1:{services.redis.port}",
        redis_user=user,
        prefix=unique,
        topic=topic,
        consumer_id=cid,
        hook_url=f"http://127.0.0.1:{receiver.port}/hook",
        api_port=api_port,
    )
    outputs: dict[str, str | bytes | Path] = {}
    log = tmp_path / "headless.log"
    proc = _start(config, log)
    token = SENTINELS["API_TOKEN"]
    auth = {"Authorization": f"Bearer {token}"}
    session = aiohttp.ClientSession()
    base = f"http://127.0.0.1:{api_port}"
    try:

        async def assigned() -> bool:
            try:
                async with session.get(f"{base}/consumer/info/{cid}") as resp:
                    return resp.status == 200 and len((await resp.json())["partitions"]) == 2
            except aiohttp.ClientError:
                assert proc.poll() is None, log.read_text()
                return False

        await wait_for(assigned, 30, interval=0.2, what="headless instance up with its API")
        # the API listens on loopback only (no [api] host in the config: the default)
        listening = listening_addresses(proc.pid, api_port)
        assert listening and all(ipaddress.ip_address(a).is_loopback for a in listening)

        # a window closes; its pipeline answers 401 with the token in the body
        await kafka.produce(topic, ({"i": i} for i in range(3)), partitions=2)

        async def failed() -> bool:
            result = await cli("history", cid, "--json", "--config", str(config))
            records = json.loads(result.stdout) if result.exit_code == 0 else []
            return bool(records) and records[0]["status"] == "failed"

        await wait_for(failed, 20, interval=0.3, what="the pipeline run failed with 401")
        assert receiver.calls >= 1

        # every API endpoint, good and bad
        for path in (
            "/health",
            "/ready",
            "/consumers",
            f"/consumer/info/{cid}",
            "/consumer/info/nope",
            "/instances",
            "/metrics",
            "/openapi.json",
        ):
            async with session.get(base + path) as resp:
                outputs[f"GET {path}"] = await resp.text()
        for action in ("pause", "resume", "reset", "trigger"):
            for label, headers in (
                ("ok", auth),
                ("bad token", {"Authorization": f"Bearer {token[::-1]}"}),
                ("no token", {}),
            ):
                async with session.post(f"{base}/consumer/{cid}/{action}", headers=headers) as r:
                    outputs[f"POST {action} {label}"] = f"{r.status} {await r.text()}"
                    assert (r.status == 200) == (label == "ok"), (action, label, r.status)
            async with session.post(f"{base}/consumer/nope/{action}", headers=auth) as resp:
                outputs[f"POST {action} unknown"] = await resp.text()
                assert resp.status == 404

        # every CLI command, good and bad
        commands = [
            ["status"],
            ["status", "--json"],
            ["info", cid],
            ["info", cid, "--json"],
            ["history", cid],
            ["history", cid, "--json"],
            ["lag"],
            ["lag", "--json"],
            ["pause", cid],
            ["resume", cid],
            ["reset", cid],
            ["trigger", cid, "--json"],
            ["audit"],
            ["audit", "--json"],
            ["config", "show"],
            ["config", "show", "--json"],
            ["config", "validate"],
            ["info", "nope"],
            ["pause", "nope"],
        ]
        for args in commands:
            result = await cli(*args, "--config", str(config))
            outputs[f"cli {' '.join(args)}"] = result.stdout + result.stderr
            assert result.exit_code == (1 if "nope" in args else 0), (args, result.output)

        history = json.loads((await cli("history", cid, "--json", "--config", str(config))).stdout)
        failed_run = next(r for r in history if r["status"] == "failed")
        assert "HTTP 401" in failed_run["run"]["error"] and "******" in failed_run["run"]["error"]
        shown = outputs["cli config show --json"]
        assert isinstance(shown, str) and masked_count(shown) >= 3

        # Redis unreachable (same password in the URL), and a wrong Redis password
        down = tmp_path / "down.toml"
        down.write_text(
            config.read_text()
            .replace(f"127.0.0.1:{services.redis.port}", f"127.0.0.1:{free_port()}")
            .replace(f"port = {api_port}", f"port = {free_port()}")
        )
        for args in (["status"], ["pause", cid], ["audit"]):
            result = await cli(*args, "--config", str(down))
            assert result.exit_code == 1 and "cannot reach Redis" in result.stderr
            outputs[f"cli down {args[0]}"] = result.output
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(config.read_text().replace("${REDIS_ACL_PASSWORD}", "${API_TOKEN}"))
        result = await cli("status", "--config", str(wrong))
        assert result.exit_code == 1 and "refused the credentials" in result.stderr
        outputs["cli wrong redis password"] = result.output

        # what the fleet stores in Redis: run statuses, history, audit, heartbeats
        stored = []
        async for key in admin.scan_iter(match=f"{unique}:*", count=500):
            kind = (await admin.type(key)).decode()
            if kind == "string":
                stored.append(repr(await admin.get(key)))
            elif kind == "hash":
                stored.append(repr(await admin.hgetall(key)))
            elif kind == "stream":
                stored.append(repr(await admin.xrange(key)))
        assert len(stored) >= 5
        outputs["redis contents"] = "\n".join(stored)

        # the headless process when Redis is unreachable at start
        down_log = tmp_path / "down.log"
        down_proc = _start(down, down_log, "--wait-timeout", "0")
        assert await asyncio.to_thread(down_proc.wait, 30) == 1
        assert "cannot start: Redis at" in down_log.read_text()
        outputs["headless redis down"] = down_log
    finally:
        await session.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
    assert code == 0, log.read_text()[-3000:]
    outputs["headless log"] = log
    text = log.read_text()
    assert "FAILED" in text and "HTTP 401" in text  # the failure is logged ... masked
    assert_no_sentinel_in(outputs)


async def test_kafka_sasl_password_never_shown(
    tmp_path: Path, services: EmbeddedServices, receiver: Receiver
) -> None:
    assert services.redis is not None
    broker = start_broker(authentication=True)
    admin = aredis.from_url(services.redis_url)
    unique = f"sas{uuid.uuid4().hex[:8]}"
    user = await make_acl_user(admin, unique, SENTINELS["REDIS_ACL_PASSWORD"])
    try:
        config = sentinel_config(
            tmp_path / "sasl.toml",
            bootstrap=f"127.0.0.1:{broker.port}",
            redis_host_port=f"127.0.0.1:{services.redis.port}",
            redis_user=user,
            prefix=unique,
            topic=unique,
            consumer_id=unique,
            hook_url=f"http://127.0.0.1:{receiver.port}/hook",
            api_port=free_port(),
            kafka='security_protocol = "SASL_PLAINTEXT"\nallow_insecure = true\n'
            'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "kc"\n'
            'sasl_password = "${KAFKA_SASL_PASSWORD}"\n',
        )
        log = tmp_path / "sasl.log"
        t0 = time.monotonic()
        proc = _start(config, log)
        code = await asyncio.to_thread(proc.wait, 60)
        text = log.read_text()
        assert code == 1, text[-3000:]
        assert time.monotonic() - t0 < 30
        assert "insecure setting: Kafka: SASL SCRAM-SHA-512 over an unencrypted connection" in text
        assert "cannot start: Kafka at" in text and "authentication failed" in text
        shown = await cli("config", "show", "--config", str(config))
        assert 'sasl_password = "******"' in shown.stdout
        assert_no_sentinel(text, "headless log (SASL refused)")
        assert_no_sentinel(shown.output, "config show (SASL)")
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
        broker.stop()


def test_sentinel_helpers_catch_partial_leaks() -> None:
    value = SENTINELS["PIPE_TOKEN"]
    with pytest.raises(AssertionError, match="leaked in here"):
        assert_no_sentinel(f"header: Bearer {value[:14]}…", "here")
    assert_no_sentinel("Authorization: Bearer ******", "masked")
