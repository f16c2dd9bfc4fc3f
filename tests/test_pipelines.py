"""Pipelines against real parts: subprocesses, an imported hook module and a local HTTP server.

Retries run with a tiny RetryPolicy (or a recording ``sleep``) so the file stays fast.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import random
import socket
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import web

from kafkaconsole.config.models import AirbytePipeline as AirbyteConfig
from kafkaconsole.config.models import AirflowPipeline as AirflowConfig
from kafkaconsole.config.models import CommandPipeline as CommandConfig
from kafkaconsole.config.models import HttpPipeline as HttpConfig
from kafkaconsole.config.models import KafkaPipeline as KafkaConfig
from kafkaconsole.config.models import PythonPipeline as PythonConfig
from kafkaconsole.config.models import RetryPolicy
from kafkaconsole.engine.pipelines import (
    PIPELINE_KINDS,
    Pipeline,
    PipelineConfigError,
    PipelineError,
    build_pipeline,
)
from kafkaconsole.engine.pipelines.command import CommandPipeline
from kafkaconsole.engine.pipelines.http import HttpPipeline, parse_retry_after
from kafkaconsole.engine.pipelines.python import PythonPipeline
from kafkaconsole.engine.records import (
    OffsetRange,
    RunStatus,
    TriggerReason,
    TriggerRecord,
)
from kafkaconsole.engine.retry import backoff_delay, call_with_retry

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05, jitter=False)
ONCE = RetryPolicy(max_attempts=1, initial_backoff=0.01, max_backoff=0.05, jitter=False)

OPENED_MS = 1_717_243_200_000  # 2024-06-01T12:00:00.000Z
CLOSED_MS = OPENED_MS + 12_345


def make_record(**overrides: Any) -> TriggerRecord:
    values: dict[str, Any] = {
        "consumer_id": "orders",
        "pipeline_name": "sink",
        "connection_id": "conn-1",
        "job_type": "sync",
        "window_id": 7,
        "reason": TriggerReason.COUNT,
        "count": 100,
        "opened_at_ms": OPENED_MS,
        "closed_at_ms": CLOSED_MS,
        "offsets": (OffsetRange("orders", 0, 10, 59), OffsetRange("orders", 1, 5, 54)),
    }
    values.update(overrides)
    return TriggerRecord(**values)


RECORD = make_record()
PAYLOAD = RECORD.to_json_dict()


class RecordingSleep:
    """An injected ``sleep`` that remembers the delays and yields without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def write_script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # zombie: dead
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------------------------
# backoff_delay


def test_backoff_grows_exponentially_without_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=100.0, jitter=False)
    assert [backoff_delay(n, policy) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=3.0, jitter=False)
    assert [backoff_delay(n, policy) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff_delay(100, policy) == 3.0  # no overflow far past the cap


def test_backoff_full_jitter_stays_within_cap_and_is_seeded() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=3.0, jitter=True)
    rng = random.Random(42)
    for attempt in range(1, 30):
        cap = min(0.5 * 2 ** (attempt - 1), 3.0)
        for _ in range(20):
            assert 0.0 <= backoff_delay(attempt, policy, rng) <= cap
    first = [backoff_delay(n, policy, random.Random(7)) for n in range(1, 8)]
    again = [backoff_delay(n, policy, random.Random(7)) for n in range(1, 8)]
    assert first == again
    draws = {backoff_delay(5, policy, rng) for _ in range(50)}
    assert len(draws) > 1  # really random, not the cap every time


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, FAST)


def test_parse_retry_after() -> None:
    now = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == (
        30.0
    )
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("-5") == 0.0


# --------------------------------------------------------------------------------------------
# build_pipeline


def test_build_pipeline_by_kind(tmp_path: Path) -> None:
    command = build_pipeline("cmd", CommandConfig(kind="command", command=["true"]))
    python = build_pipeline("py", PythonConfig(kind="python", target="json:dumps"))
    http = build_pipeline("web", HttpConfig(kind="http", url="http://127.0.0.1:1/x"))
    assert isinstance(command, CommandPipeline)
    assert isinstance(python, PythonPipeline)
    assert isinstance(http, HttpPipeline)
    assert [p.name for p in (command, python, http)] == ["cmd", "py", "web"]
    assert [p.kind for p in (command, python, http)] == ["command", "python", "http"]
    assert all(isinstance(p, Pipeline) for p in (command, python, http))
    assert {"command", "python", "http"} <= set(PIPELINE_KINDS)


def test_build_pipeline_remote_and_kafka_kinds() -> None:
    airbyte = build_pipeline(
        "ab", AirbyteConfig(kind="airbyte", url="http://127.0.0.1:1/api/public")
    )
    airflow = build_pipeline(
        "af", AirflowConfig(kind="airflow", url="http://127.0.0.1:1", dag_id="d")
    )
    kafka = build_pipeline("k", KafkaConfig(kind="kafka", topic="t"))
    assert [p.kind for p in (airbyte, airflow, kafka)] == ["airbyte", "airflow", "kafka"]
    assert [p.remote_runs for p in (airbyte, airflow, kafka)] == [True, True, False]
    assert set(PIPELINE_KINDS) == {"command", "python", "http", "airbyte", "airflow", "kafka"}


def test_build_pipeline_unsupported_kind_is_a_clear_error() -> None:
    cfg = SimpleNamespace(kind="ftp")
    with pytest.raises(PipelineConfigError) as caught:
        build_pipeline("later", cfg)
    message = str(caught.value)
    assert "\n" not in message
    assert "'later'" in message and "'ftp'" in message and "supported" in message
    assert caught.value.retryable is False


async def test_wait_is_only_for_kinds_with_remote_runs() -> None:
    pipeline = build_pipeline("py", PythonConfig(kind="python", target="json:dumps"))
    assert pipeline.remote_runs is False
    with pytest.raises(NotImplementedError):
        await pipeline.wait("run-1", RECORD)


def test_new_pipeline_keys_have_safe_defaults() -> None:
    cfg = PythonConfig(kind="python", target="json:dumps")
    assert (cfg.max_concurrent_runs, cfg.breaker_threshold, cfg.breaker_cooldown) == (1, 5, 60.0)
    pipeline = build_pipeline("py", cfg)
    assert pipeline.run_slots is pipeline.run_slots  # one semaphore per pipeline


# --------------------------------------------------------------------------------------------
# command


ECHO_SCRIPT = """
    import json, os, sys
    out = sys.argv[1]
    data = sys.stdin.buffer.read()
    env = {k: v for k, v in os.environ.items() if k.startswith(("KAFKACONSOLE_", "KC_TEST_"))}
    with open(out, "w") as f:
        json.dump({"stdin": json.loads(data), "env": env, "cwd": os.getcwd()}, f)
    print("starting")
    print("done rows=100")
"""


async def test_command_receives_record_on_stdin_and_env(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    argv = [*write_script(tmp_path, "echo.py", ECHO_SCRIPT), str(out)]
    cfg = CommandConfig(kind="command", command=argv, env={"KC_TEST_FOO": "bar"}, cwd=str(tmp_path))
    async with build_pipeline("cmd", cfg) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)

    assert result.status == RunStatus.SUCCEEDED, result.error
    assert result.attempts == 1 and result.error is None
    assert result.run_id is not None and result.run_id.startswith("pid-")
    assert result.detail == {"exit_code": 0, "stdout_last_line": "done rows=100"}
    seen = orjson.loads(out.read_bytes())
    assert seen["stdin"] == PAYLOAD
    assert seen["cwd"] == str(tmp_path)
    # the parent's own KAFKACONSOLE_* variables (e.g. the test session's) pass through too
    assert {k: v for k, v in seen["env"].items() if k not in os.environ} == {
        "KC_TEST_FOO": "bar",
        "KAFKACONSOLE_CONSUMER_ID": "orders",
        "KAFKACONSOLE_WINDOW_ID": "7",
        "KAFKACONSOLE_IDEMPOTENCY_KEY": "orders:7",
        "KAFKACONSOLE_REASON": "count",
        "KAFKACONSOLE_COUNT": "100",
        "KAFKACONSOLE_PIPELINE_NAME": "sink",
        "KAFKACONSOLE_CONNECTION_ID": "conn-1",
    }


async def test_command_non_zero_exit_is_retried_then_fails(tmp_path: Path) -> None:
    argv = write_script(
        tmp_path,
        "fail.py",
        """
        import sys
        print("some context", file=sys.stderr)
        print("boom: warehouse refused", file=sys.stderr)
        print("", file=sys.stderr)
        sys.exit(3)
        """,
    )
    pipeline = build_pipeline("cmd", CommandConfig(kind="command", command=argv))
    attempts: list[tuple[int, str | None]] = []
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.05)
    result = await call_with_retry(
        pipeline, RECORD, PAYLOAD, policy, on_attempt=lambda n, e: attempts.append((n, e))
    )
    assert result.status == RunStatus.FAILED
    assert result.attempts == 2
    assert result.error == "exit code 3: boom: warehouse refused"
    assert attempts == [(1, result.error), (2, result.error)]


async def test_command_long_stderr_line_is_cut_to_200_chars(tmp_path: Path) -> None:
    argv = write_script(
        tmp_path, "long.py", "import sys\nsys.stderr.write('x' * 5000)\nsys.exit(1)\n"
    )
    pipeline = build_pipeline("cmd", CommandConfig(kind="command", command=argv))
    with pytest.raises(PipelineError) as caught:
        await pipeline.call(RECORD, PAYLOAD)
    assert caught.value.retryable is True
    assert str(caught.value).startswith("exit code 1: xxx")
    assert len(str(caught.value)) == len("exit code 1: ") + 200


async def test_command_program_not_found_fails_at_once(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    pipeline = build_pipeline("cmd", CommandConfig(kind="command", command=[missing, "x"]))
    result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error == f"program not found: {missing}"


async def test_command_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    argv = write_script(
        tmp_path,
        "slow.py",
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
        """,
    )
    cfg = CommandConfig(kind="command", command=argv, timeout=1.0)
    pipeline = build_pipeline("cmd", cfg)
    began = time.monotonic()
    result = await call_with_retry(pipeline, RECORD, PAYLOAD, ONCE)
    elapsed = time.monotonic() - began

    assert result.status == RunStatus.FAILED
    assert result.error == "timed out after 1s"
    assert elapsed < 10
    grandchild = int(pid_file.read_text())
    for _ in range(100):
        if process_gone(grandchild):
            break
        await asyncio.sleep(0.02)
    assert process_gone(grandchild), "the program's own child survived the timeout"


async def test_command_timeout_is_retryable(tmp_path: Path) -> None:
    argv = write_script(tmp_path, "sleepy.py", "import time\ntime.sleep(60)\n")
    pipeline = build_pipeline("cmd", CommandConfig(kind="command", command=argv, timeout=0.3))
    with pytest.raises(PipelineError) as caught:
        await pipeline.call(RECORD, PAYLOAD)
    assert caught.value.retryable is True
    assert str(caught.value) == "timed out after 0.3s"


# --------------------------------------------------------------------------------------------
# python


HOOK_MODULE = """
    import asyncio
    import threading

    CALLS = []
    FAILS_LEFT = [2]

    def sync_hook(payload):
        CALLS.append(("sync", payload, threading.current_thread() is threading.main_thread()))
        payload["count"] = -1  # must not leak into the caller's payload
        return {"run_id": 1234, "rows": 3}

    async def async_hook(payload):
        CALLS.append(("async", payload, threading.current_thread() is threading.main_thread()))
        await asyncio.sleep(0)
        return "async-run-7"

    def failing_hook(payload):
        raise RuntimeError("warehouse is down")

    def flaky_hook(payload):
        if FAILS_LEFT[0] > 0:
            FAILS_LEFT[0] -= 1
            raise ConnectionError("try again")
        return None

    async def slow_hook(payload):
        await asyncio.sleep(60)

    class Nested:
        @staticmethod
        def run(payload):
            return {"id": "not-a-run-id", "ok": True}

    NOT_CALLABLE = 42
"""


@pytest.fixture
def hook_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A freshly written hook module on sys.path, under a name unique to this test."""
    name = f"kc_hooks_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HOOK_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def python_pipeline(module: Any, func: str, timeout: float = 30.0) -> Pipeline:
    cfg = PythonConfig(kind="python", target=f"{module.__name__}:{func}", timeout=timeout)
    return build_pipeline("hook", cfg)


async def test_python_sync_hook_runs_in_a_thread(hook_module: Any) -> None:
    payload = RECORD.to_json_dict()
    async with python_pipeline(hook_module, "sync_hook") as pipeline:
        result = await call_with_retry(pipeline, RECORD, payload, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert result.run_id == "1234"
    assert result.detail == {"result": {"run_id": 1234, "rows": 3}}
    [(kind, seen, on_main_thread)] = hook_module.CALLS
    assert kind == "sync" and not on_main_thread
    assert seen["idempotency_key"] == "orders:7"
    assert payload == PAYLOAD  # the hook's edit stayed in its own copy


async def test_python_async_hook_is_awaited_on_the_loop(hook_module: Any) -> None:
    async with python_pipeline(hook_module, "async_hook") as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert result.run_id == "async-run-7"
    [(kind, seen, on_main_thread)] = hook_module.CALLS
    assert kind == "async" and on_main_thread
    assert seen == PAYLOAD


async def test_python_dotted_attribute_and_id_is_not_run_id(hook_module: Any) -> None:
    async with python_pipeline(hook_module, "Nested.run") as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert result.run_id is None  # only "run_id" counts for hooks
    assert result.detail == {"result": {"id": "not-a-run-id", "ok": True}}


async def test_python_exception_is_retryable_and_fails_after_max_attempts(
    hook_module: Any,
) -> None:
    sleep = RecordingSleep()
    async with python_pipeline(hook_module, "failing_hook") as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST, sleep=sleep)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 3
    assert result.error == "RuntimeError: warehouse is down"
    assert sleep.delays == [0.01, 0.02]


async def test_python_flaky_hook_succeeds_on_third_attempt(hook_module: Any) -> None:
    attempts: list[tuple[int, str | None]] = []
    clock = itertools.count(1_000, 10)
    async with python_pipeline(hook_module, "flaky_hook") as pipeline:
        result = await call_with_retry(
            pipeline,
            RECORD,
            PAYLOAD,
            FAST,
            on_attempt=lambda n, e: attempts.append((n, e)),
            clock_ms=lambda: next(clock),
        )
    assert result.status == RunStatus.SUCCEEDED
    assert result.attempts == 3
    assert result.run_id is None
    assert attempts == [
        (1, "ConnectionError: try again"),
        (2, "ConnectionError: try again"),
        (3, None),
    ]
    assert (result.started_at_ms, result.finished_at_ms, result.duration_ms) == (1000, 1010, 10)


async def test_python_timeout(hook_module: Any) -> None:
    pipeline = python_pipeline(hook_module, "slow_hook", timeout=0.2)
    result = await call_with_retry(pipeline, RECORD, PAYLOAD, ONCE)
    assert result.status == RunStatus.FAILED
    assert result.error == "timed out after 0.2s"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("kc_no_such_module_xyz:run", "cannot import python target 'kc_no_such_module_xyz:run'"),
        ("json:no_such_function", "no attribute 'no_such_function'"),
    ],
)
async def test_python_import_failure_is_not_retried(target: str, expected: str) -> None:
    pipeline = build_pipeline("hook", PythonConfig(kind="python", target=target))
    with pytest.raises(PipelineError) as caught:
        await pipeline.start()
    assert caught.value.retryable is False
    assert expected in str(caught.value)
    result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert expected in (result.error or "")


async def test_python_target_not_callable(hook_module: Any) -> None:
    with pytest.raises(PipelineConfigError, match="is not callable"):
        await python_pipeline(hook_module, "NOT_CALLABLE").start()


# --------------------------------------------------------------------------------------------
# http


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Webhook:
    """A real aiohttp server on 127.0.0.1 that records requests and plays scripted answers."""

    url: str = ""
    requests: list[SeenRequest] = field(default_factory=list)
    # (status, headers, body) per request, in order; then the default answer
    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    default: tuple[int, dict[str, str], bytes] = (200, {}, b'{"run_id": "run-42"}')
    stall: asyncio.Event = field(default_factory=asyncio.Event)

    def answer(self, status: int, body: bytes | str = b"", **headers: str) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.script.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, data))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            SeenRequest(request.method, request.path, dict(request.headers), await request.read())
        )
        status, headers, body = self.script.pop(0) if self.script else self.default
        if status == 0:  # "hang": wait until the test ends
            await self.stall.wait()
            status = 200
        return web.Response(status=status, headers=headers, body=body)


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hook.url = f"http://{host}:{port}/hooks/run"
    try:
        yield hook
    finally:
        hook.stall.set()
        await runner.cleanup()


def http_pipeline(url: str, **kwargs: Any) -> Pipeline:
    return build_pipeline("web", HttpConfig(kind="http", url=url, **kwargs))


async def test_http_sends_record_with_idempotency_key(webhook: Webhook) -> None:
    headers = {"Authorization": "Bearer s3cret", "X-Team": "data"}
    async with http_pipeline(webhook.url, headers=headers) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)

    assert result.status == RunStatus.SUCCEEDED
    assert result.run_id == "run-42"
    assert result.attempts == 1
    [seen] = webhook.requests
    assert seen.method == "POST" and seen.path == "/hooks/run"
    assert seen.headers["Idempotency-Key"] == "orders:7"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == "Bearer s3cret"
    assert seen.headers["X-Team"] == "data"
    body = orjson.loads(seen.body)
    assert body == PAYLOAD
    assert body["consumer_id"] == "orders"
    assert body["window_id"] == 7
    assert body["idempotency_key"] == "orders:7"
    assert body["reason"] == "count"
    assert body["count"] == 100
    assert body["opened_at"] == "2024-06-01T12:00:00.000Z"
    assert body["closed_at"] == "2024-06-01T12:00:12.345Z"
    assert body["offsets"] == [
        {"topic": "orders", "partition": 0, "first": 10, "last": 59},
        {"topic": "orders", "partition": 1, "first": 5, "last": 54},
    ]


async def test_http_method_and_events_in_batch_payload(webhook: Webhook) -> None:
    record = make_record(job_type="batch")
    payload = record.to_json_dict(events=[{"id": 1}, {"id": 2}])
    async with http_pipeline(webhook.url, method="PUT") as pipeline:
        result = await call_with_retry(pipeline, record, payload, FAST)
    assert result.status == RunStatus.SUCCEEDED
    [seen] = webhook.requests
    assert seen.method == "PUT"
    assert orjson.loads(seen.body)["events"] == [{"id": 1}, {"id": 2}]


@pytest.mark.parametrize(
    ("body", "run_id"),
    [
        (b'{"id": 99}', "99"),
        (b'{"run_id": "r-1", "id": 99}', "r-1"),
        (b"accepted", "orders:7"),
        (b"", "orders:7"),
        (b"[1, 2]", "orders:7"),
    ],
)
async def test_http_run_id_from_response(webhook: Webhook, body: bytes, run_id: str) -> None:
    webhook.answer(202, body)
    async with http_pipeline(webhook.url) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert result.run_id == run_id
    assert result.detail == {"http_status": 202}


async def test_http_500_twice_then_200_succeeds_on_third_attempt(webhook: Webhook) -> None:
    webhook.answer(500, "database on fire")
    webhook.answer(503, "maintenance\nback soon")
    attempts: list[tuple[int, str | None]] = []
    async with http_pipeline(webhook.url) as pipeline:
        result = await call_with_retry(
            pipeline, RECORD, PAYLOAD, FAST, on_attempt=lambda n, e: attempts.append((n, e))
        )
    assert result.status == RunStatus.SUCCEEDED
    assert result.attempts == 3
    assert result.run_id == "run-42"
    assert attempts == [
        (1, "HTTP 500: database on fire"),
        (2, "HTTP 503: maintenance back soon"),
        (3, None),
    ]
    assert len(webhook.requests) == 3
    assert {r.headers["Idempotency-Key"] for r in webhook.requests} == {"orders:7"}


async def test_http_404_fails_at_once_with_body_and_no_secrets(webhook: Webhook) -> None:
    webhook.answer(404, "no such hook " + "y" * 500)
    headers = {"Authorization": "Bearer s3cret-token"}
    async with http_pipeline(webhook.url, headers=headers) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error is not None
    assert result.error.startswith("HTTP 404: no such hook yyy")
    assert len(result.error) == len("HTTP 404: ") + 200
    assert "s3cret" not in result.error
    assert len(webhook.requests) == 1


async def test_http_429_honours_retry_after(webhook: Webhook) -> None:
    webhook.answer(429, "slow down", Retry_After="7")
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=30.0, jitter=False)
    async with http_pipeline(webhook.url) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, policy, sleep=sleep)
    assert result.status == RunStatus.SUCCEEDED
    assert result.attempts == 2
    assert sleep.delays == [7.0]


async def test_http_retry_after_is_capped_at_max_backoff(webhook: Webhook) -> None:
    webhook.answer(503, "", Retry_After="3600")
    webhook.answer(429, "", Retry_After="3600")
    sleep = RecordingSleep()
    async with http_pipeline(webhook.url) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST, sleep=sleep)
    assert result.status == RunStatus.SUCCEEDED
    assert result.attempts == 3
    assert sleep.delays == [0.05, 0.05]


async def test_http_429_exhausts_attempts(webhook: Webhook) -> None:
    for _ in range(3):
        webhook.answer(429, "quota", Retry_After="0")
    async with http_pipeline(webhook.url) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 3
    assert result.error == "HTTP 429: quota"


async def test_http_redirect_is_followed_with_the_method_and_body(webhook: Webhook) -> None:
    webhook.answer(302, "", Location="/elsewhere")
    async with http_pipeline(webhook.url) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert result.attempts == 1
    first, second = webhook.requests
    assert (second.method, second.path) == ("POST", "/elsewhere")
    assert second.body == first.body and orjson.loads(second.body) == PAYLOAD
    assert second.headers["Idempotency-Key"] == "orders:7"


async def test_http_redirect_without_location_fails_at_once(webhook: Webhook) -> None:
    webhook.answer(302, "")
    async with http_pipeline(webhook.url) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error == "HTTP 302: a redirect without a usable Location"


async def test_http_timeout_is_retryable(webhook: Webhook) -> None:
    webhook.answer(0)  # hang
    async with http_pipeline(webhook.url, timeout=0.3) as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED  # second attempt gets the default 200
    assert result.attempts == 2
    async with http_pipeline(webhook.url, timeout=0.3) as pipeline:
        webhook.answer(0)
        with pytest.raises(PipelineError) as caught:
            await pipeline.call(RECORD, PAYLOAD)
    assert caught.value.retryable is True
    assert str(caught.value) == "timed out after 0.3s"


async def test_http_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on the port any more
    async with http_pipeline(f"http://127.0.0.1:{port}/x") as pipeline:
        result = await call_with_retry(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.FAILED
    assert result.attempts == 3
    assert result.error is not None and result.error.startswith("connection error: ")


async def test_http_session_is_closed_by_close(webhook: Webhook) -> None:
    pipeline = http_pipeline(webhook.url)
    result = await call_with_retry(pipeline, RECORD, PAYLOAD, ONCE)  # starts lazily
    assert result.status == RunStatus.SUCCEEDED
    assert isinstance(pipeline, HttpPipeline)
    session = pipeline.client.session
    assert session is not None and not session.closed
    await pipeline.close()
    await pipeline.close()  # idempotent
    assert session.closed
