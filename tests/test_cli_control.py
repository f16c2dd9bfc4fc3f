"""The fleet commands against real headless instances (subprocesses), broker and Redis.

Two ``kafkaconsole run --no-ui`` processes share one consumer group and one Redis; the CLI
steers them through Redis only. Also the CLI contract: exit codes, one-line errors, --json.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from kafkaconsole.embedded import BrokerKind, EmbeddedServices, free_port
from tests.helpers import KafkaHelper, cli, wait_for
from tests.helpers import invoke_cli as invoke

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["status", "info", "pause", "resume", "reset", "trigger", "history", "lag"]


# ---- helpers ----------------------------------------------------------------------------------


def toml_str(value: str) -> str:
    return json.dumps(value)


def write_config(
    path: Path,
    *,
    bootstrap: str,
    redis_url: str,
    prefix: str,
    topic: str,
    cid: str,
    out_file: Path,
    max_event: int = 1000,
    extra: str = "",
) -> Path:
    script = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + chr(10))"
    command = ", ".join(toml_str(a) for a in [sys.executable, "-c", script, str(out_file)])
    path.write_text(
        f"""
[kafka]
bootstrap_servers = {toml_str(bootstrap)}
session_timeout_ms = 6000
heartbeat_interval_ms = 500

[redis]
url = {toml_str(redis_url)}
key_prefix = {toml_str(prefix)}

[api]
enabled = false

[pipelines.append]
kind = "command"
command = [{command}]

[[consumers]]
consumer_id = {toml_str(cid)}
kafka_topic = {toml_str(topic)}
pipeline_name = "append"
connection_id = "conn-1"
max_event = {max_event}
max_time = 3600
poll_timeout = 0.2
{extra}
"""
    )
    return path


async def cli_json(*args: str) -> Any:
    result = await cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


class Fleet:
    """The headless subprocesses of one test; stops only what it started."""

    def __init__(self, tmp: Path, config: Path) -> None:
        self.tmp = tmp
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, instance_id: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{instance_id}.log").open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("KAFKACONSOLE_FAULT", None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kafkaconsole",
                "run",
                "--config",
                str(self.config),
                "--no-ui",
                "--instance-id",
                instance_id,
                "--log-format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=REPO,
            env=env,
        )
        log.close()
        self.procs[instance_id] = proc
        return proc

    def log(self, instance_id: str) -> str:
        return (self.tmp / f"{instance_id}.log").read_text(errors="replace")

    async def wait_exit(self, instance_id: str, timeout: float) -> int:
        proc = self.procs[instance_id]
        return await asyncio.to_thread(proc.wait, timeout)

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[list[Fleet]]:
    fleets: list[Fleet] = []
    yield fleets
    for f in fleets:
        f.cleanup()


async def _owners(config: str, cid: str) -> dict[int, str]:
    status = await cli_json("status", "--config", config)
    [c] = [c for c in status["consumers"] if c["consumer_id"] == cid]
    return {p["partition"]: p["owner"] for p in c["partitions"]}


async def _setup(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    unique: str,
    fleets: list[Fleet],
    max_event: int = 1000,
) -> tuple[Fleet, str, str, Path]:
    topic, cid = unique, f"{unique}-c"
    await kafka.create_topic(topic, 4)
    out_file = tmp_path / "runs.jsonl"
    config = write_config(
        tmp_path / "kafkaconsole.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix=unique,
        topic=topic,
        cid=cid,
        out_file=out_file,
        max_event=max_event,
    )
    fleet = Fleet(tmp_path, config)
    fleets.append(fleet)
    fleet.start("a")
    fleet.start("b")

    async def split() -> bool:
        owners = await _owners(str(config), cid)
        return sorted(owners) == [0, 1, 2, 3] and set(owners.values()) == {"a", "b"}

    try:
        await wait_for(split, 30, interval=0.3, what="partitions split between a and b")
    except AssertionError:
        raise AssertionError(f"a: {fleet.log('a')[-2000:]}\nb: {fleet.log('b')[-2000:]}") from None
    return fleet, topic, cid, out_file


# ---- two live instances -----------------------------------------------------------------------


async def test_steer_two_headless_instances(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    fleet_factory: list[Fleet],
    broker_kind: BrokerKind,
) -> None:
    fleet, topic, cid, out_file = await _setup(tmp_path, services, kafka, unique, fleet_factory)
    config = str(fleet.config)
    key = f"{unique}:{cid}:events"

    async def count() -> int:
        return int(await redis_client.get(key) or 0)

    status = await cli_json("status", "--config", config)
    assert [i["instance_id"] for i in status["instances"]] == ["a", "b"]
    [c] = status["consumers"]
    assert c["state"] == "running" and sorted(c["instances"]) == ["a", "b"]
    human = await cli("status", "--config", config)
    assert human.exit_code == 0 and cid in human.stdout and "INSTANCE" in human.stdout

    await kafka.produce(topic, ({"i": i} for i in range(20)), partitions=4)
    await wait_for(lambda: _eq(count, 20), 15, what="20 counted")

    # pause: both instances apply it; nothing more is counted on any partition
    t0 = time.monotonic()
    paused = await cli("pause", cid, "--config", config)
    assert paused.exit_code == 0, paused.stderr
    assert "applied by 2 of 2 live instance(s)" in paused.stdout
    assert time.monotonic() - t0 < 4
    await kafka.produce(topic, ({"i": i} for i in range(10)), partitions=4)
    await asyncio.sleep(1.0)
    assert await count() == 20
    assert (await cli_json("status", "--config", config))["consumers"][0]["state"] == "paused"

    resumed = await cli_json("resume", cid, "--config", config)
    assert resumed == [
        {"consumer_id": cid, "paused": False, "changed": True, "instances": 2, "applied": 2}
    ]
    await wait_for(lambda: _eq(count, 30), 10, what="counting resumed")

    # reset zeroes the open window's count without triggering
    reset = await cli("reset", cid, "--config", config)
    assert reset.exit_code == 0 and "30 event(s) discarded" in reset.stdout
    assert await count() == 0
    assert await cli_json("history", cid, "--config", config) == []

    # trigger: exactly one manual trigger record and one pipeline run
    await kafka.produce(topic, ({"i": i} for i in range(5)), partitions=4)
    await wait_for(lambda: _eq(count, 5), 10, what="5 counted")
    trig = await cli_json("trigger", cid, "--config", config)
    assert trig["status"] == "closed" and trig["count"] == 5 and trig["reason"] == "manual"

    async def ran() -> bool:
        history = await cli_json("history", cid, "--config", config)
        return bool(history) and history[0]["status"] == "succeeded"

    await wait_for(ran, 15, interval=0.2, what="pipeline run of the manual trigger")
    history = await cli_json("history", cid, "--config", config)
    assert len(history) == 1
    assert history[0]["window_id"] == trig["window_id"] and history[0]["reason"] == "manual"
    runs = out_file.read_text().splitlines()
    assert len(runs) == 1 and json.loads(runs[0])["window_id"] == trig["window_id"]

    info = await cli_json("info", cid, "--config", config)
    assert info["last_trigger"]["status"] == "succeeded" and info["window"]["count"] == 0
    lag = await cli_json("lag", "--config", config)
    assert lag["total_lag"] == 0 and len(lag["consumers"][0]["partitions"]) == 4

    # Kafka's own view (OffsetFetch through the admin client) follows Redis within ~1 s;
    # Tansu's answer cannot be decoded by the admin client: the reason is shown instead
    async def kafka_view() -> bool:
        (consumer,) = (await cli_json("lag", "--committed", "--config", config))["consumers"]
        if broker_kind == "tansu":
            return consumer["committed_error"] is not None
        return consumer["committed_error"] is None and all(
            p["committed"] == p["position"] is not None for p in consumer["partitions"]
        )

    await wait_for(kafka_view, 15, interval=0.5, what="the group's committed offsets")
    human = await cli("lag", "--committed", "--config", config)
    assert human.exit_code == 0 and "COMMITTED" in human.stdout

    # SIGTERM: graceful, exit 0 within a few seconds, heartbeat gone
    for iid in ("a", "b"):
        fleet.procs[iid].send_signal(signal.SIGTERM)
    for iid in ("a", "b"):
        t0 = time.monotonic()
        assert await fleet.wait_exit(iid, 15) == 0, fleet.log(iid)[-2000:]
        assert time.monotonic() - t0 < 8
    status = await cli_json("status", "--config", config)
    assert status["instances"] == [] and status["consumers"][0]["state"] == "stopped"
    lines = [json.loads(line) for line in fleet.log("a").splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
    assert any(x.get("event") == "state_change" for x in lines)


async def _eq(fn: Any, n: int) -> bool:
    return bool(await fn() == n)


async def test_killed_instance_hands_over_without_losing_counts(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    fleet_factory: list[Fleet],
) -> None:
    fleet, topic, cid, _ = await _setup(
        tmp_path, services, kafka, unique, fleet_factory, max_event=7
    )
    config = str(fleet.config)
    produced = await kafka.produce(topic, ({"i": i} for i in range(100)), partitions=4)

    async def total() -> int:
        entries: Any = await redis_client.xrange(f"{unique}:{cid}:history")
        closed = sum(int(fields[b"count"]) for _, fields in entries)
        return closed + int(await redis_client.get(f"{unique}:{cid}:events") or 0)

    await wait_for(lambda: _eq(total, produced), 15, what="first batch counted")

    fleet.procs["b"].kill()  # SIGKILL: no goodbye, its heartbeat must expire
    await asyncio.to_thread(fleet.procs["b"].wait, 10)
    produced += await kafka.produce(topic, ({"i": i} for i in range(150)), partitions=4)

    async def taken_over() -> bool:
        status = await cli_json("status", "--config", config)
        [c] = status["consumers"]
        owners = {p["partition"]: p["owner"] for p in c["partitions"]}
        return (
            [i["instance_id"] for i in status["instances"]] == ["a"]
            and owners == {0: "a", 1: "a", 2: "a", 3: "a"}
            and c["instances"] == ["a"]
        )

    t0 = time.monotonic()
    await wait_for(taken_over, 6 + 10, interval=0.3, what="a owns every partition, b expired")
    assert time.monotonic() - t0 < 16
    await wait_for(lambda: _eq(total, produced), 10, what="every event counted exactly once")
    await asyncio.sleep(0.5)
    assert await total() == produced
    entries: Any = await redis_client.xrange(f"{unique}:{cid}:history")
    assert all(int(f[b"count"]) == 7 and f[b"reason"] == b"count" for _, f in entries)
    assert len(entries) == produced // 7

    fleet.procs["a"].send_signal(signal.SIGTERM)
    assert await fleet.wait_exit("a", 15) == 0


# ---- the CLI contract (no instance needed) ----------------------------------------------------


@pytest.fixture
def contract_config(tmp_path: Path, services: EmbeddedServices) -> Path:
    return write_config(
        tmp_path / "c.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix=f"contract{os.getpid()}",
        topic="contract-topic",
        cid="orders",
        out_file=tmp_path / "runs.jsonl",
    )


def test_unknown_consumer_exits_1_with_one_line(contract_config: Path) -> None:
    for args in (
        ["info", "nope"],
        ["pause", "nope"],
        ["resume", "nope"],
        ["reset", "nope"],
        ["trigger", "nope"],
        ["history", "nope"],
    ):
        result = invoke(*args, "--config", str(contract_config))
        assert result.exit_code == 1, args
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "unknown consumer 'nope'" in lines[0] and "orders" in lines[0]


def test_redis_unreachable_exits_1(tmp_path: Path, services: EmbeddedServices) -> None:
    config = write_config(
        tmp_path / "down.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=f"redis://:hunter2secret@127.0.0.1:{free_port()}/0",
        prefix="down",
        topic="t",
        cid="orders",
        out_file=tmp_path / "runs.jsonl",
    )
    t0 = time.monotonic()
    for args in (["status"], ["lag", "--json"], ["pause", "orders"], ["trigger", "orders"]):
        result = invoke(*args, "--config", str(config))
        assert result.exit_code == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis at"), lines
        assert "hunter2secret" not in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - t0 < 20


async def test_redis_unreachable_file_consumers_work_and_an_unknown_id_says_why(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    unique: str,
    broker_kind: BrokerKind,
) -> None:
    """The consumers defined at runtime cannot be read: a command on a consumer of the file
    works as before (peek --tail reads Kafka only), an unknown id's error says why it may
    exist all the same."""
    await kafka.create_topic(unique, 1)
    await kafka.produce(unique, [{"i": i} for i in range(2)], partitions=1)
    config = write_config(
        tmp_path / "down.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=f"redis://:hunter2secret@127.0.0.1:{free_port()}/0",
        prefix=unique,
        topic=unique,
        cid="orders",
        out_file=tmp_path / "runs.jsonl",
    )
    tail = await cli("peek", "orders", "--tail", "--json", "--config", str(config))
    assert tail.exit_code == 0, tail.stderr
    values = [json.loads(line)["value"] for line in tail.stdout.splitlines()]
    if broker_kind == "tansu":  # Tansu answers ListOffsets latest wrongly (--tail uses it)
        assert values and all(v in ({"i": 0}, {"i": 1}) for v in values)
    else:
        assert values == [{"i": 0}, {"i": 1}]
    for args in (["info", "nope"], ["pause", "nope"], ["peek", "nope", "--tail"]):
        result = await cli(*args, "--config", str(config))
        assert result.exit_code == 1 and result.stdout == "", args
        [line] = result.stderr.splitlines()
        assert line.startswith("error: unknown consumer 'nope' (known: orders); ")
        assert "the consumers defined at runtime could not be read: " in line
        assert "hunter2secret" not in line


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[redis]\nurll = 'redis://x'\n")
    for args in (["status"], ["info", "x"], ["pause", "x"], ["history", "x"], ["lag"]):
        result = invoke(*args, "--config", str(bad))
        assert result.exit_code == 2, args
        assert "redis.urll" in result.stderr and result.stdout == ""
    missing = invoke("status", "--config", str(tmp_path / "missing.toml"))
    assert missing.exit_code == 2
    env_result = invoke("status", env={"KAFKACONSOLE_CONFIG": str(bad)})
    assert env_result.exit_code == 2 and "redis.urll" in env_result.stderr


def test_usage_errors_exit_2(contract_config: Path) -> None:
    assert invoke("pause", "--config", str(contract_config)).exit_code == 2
    assert invoke("pause", "orders", "--all", "--config", str(contract_config)).exit_code == 2
    assert invoke("history", "orders", "--limit", "0").exit_code == 2
    assert invoke("info").exit_code == 2


def test_json_outputs_parse_without_instances(contract_config: Path) -> None:
    c = str(contract_config)
    status = json.loads(invoke("status", "--json", "--config", c).stdout)
    assert set(status) == {"consumers", "instances"} and status["instances"] == []
    [consumer] = status["consumers"]
    for key in (
        "consumer_id",
        "kafka_topic",
        "state",
        "count",
        "max_event",
        "max_time",
        "window_opened_at",
        "lag",
        "instances",
        "last_trigger",
    ):
        assert key in consumer
    assert consumer["state"] == "stopped" and consumer["lag"] is None
    assert json.loads(invoke("history", "orders", "--json", "--config", c).stdout) == []
    info = json.loads(invoke("info", "orders", "--json", "--config", c).stdout)
    assert info["consumer_id"] == "orders" and info["window"]["time_left"] is None
    lag = json.loads(invoke("lag", "--json", "--config", c).stdout)
    assert lag == {
        "consumers": [
            {
                "consumer_id": "orders",
                "kafka_topic": "contract-topic",
                "state": "stopped",
                "lag": None,
                "partitions": [],
            }
        ],
        "total_lag": None,
    }
    human = invoke("status", "--config", c)
    assert human.exit_code == 0 and "no live instance" in human.stdout


def test_read_only_config_refuses_control(tmp_path: Path, services: EmbeddedServices) -> None:
    config = write_config(
        tmp_path / "ro.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix="ro",
        topic="t",
        cid="orders",
        out_file=tmp_path / "runs.jsonl",
        extra="\n[ui]\nread_only = true\n",
    )
    for args in (["pause", "orders"], ["resume", "--all"], ["reset", "orders"]):
        result = invoke(*args, "--config", str(config))
        assert result.exit_code == 1 and "read_only" in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and f"kafkaconsole {command}" in result.stdout
