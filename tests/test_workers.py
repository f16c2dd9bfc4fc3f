"""``kafkaconsole run --no-ui --workers N`` as real processes: the fleet, supervision, stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kafkaconsole.embedded import EmbeddedServices, free_port
from kafkaconsole.supervisor import parse_workers, usable_cores
from tests.helpers import KafkaHelper, wait_for
from tests.test_cli_control import write_config
from tests.test_headless import REPO, _env, _start, _with_api


def _gone(pid: int) -> bool:
    """No such process (or only its zombie, waiting for whoever adopted it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _children_running(instance_id: str) -> list[int]:
    """This process's children whose command line names ``instance_id``."""
    me = os.getpid()
    return [
        int(pid)
        for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split()
        if instance_id in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    ]


def _lines(log: Path) -> list[dict[str, Any]]:
    """The log's complete lines (a process may be writing the last one)."""
    text = log.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines() if x.strip()]


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_workers_value_exits_2_with_one_line(value: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kafkaconsole", "run", "--no-ui", "--workers", value],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --workers: "), lines


def test_parse_workers() -> None:
    assert parse_workers(None) == 1
    assert parse_workers("3") == 3
    assert parse_workers(" AUTO ") == usable_cores() >= 1


class Fleet:
    """The API of a ``--workers`` command, read by a test."""

    def __init__(self, session: aiohttp.ClientSession, url: str, cid: str) -> None:
        self.session, self.url, self.cid = session, url, cid

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(f"{self.url}{path}") as resp:
            return resp.status, await resp.json()

    async def pids(self) -> dict[str, int]:
        _, body = await self.get("/instances")
        return {i["instance_id"]: i["pid"] for i in body["instances"]}

    async def consumer(self) -> dict[str, Any]:
        _, body = await self.get("/consumers")
        (c,) = [c for c in body["consumers"] if c["consumer_id"] == self.cid]
        return c

    async def owners(self) -> set[str | None]:
        return {p["owner"] for p in (await self.consumer())["partitions"]}

    async def caught_up(self, produced: int) -> bool:
        """Every partition read to its end, by its owner, and the count where it must be."""
        c = await self.consumer()
        parts = c["partitions"]
        return (
            sum(p["highwater"] or 0 for p in parts) == produced
            and all(p["lag"] == 0 for p in parts)
            and c["total"] == produced
        )


async def test_two_workers_share_the_work_restart_and_stop(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    unique: str,
) -> None:
    await kafka.create_topic(unique, 4)
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix=unique,
        topic=unique,
        cid="c1",
        out_file=tmp_path / "out.txt",
        max_event=1_000_000,
    )
    port = free_port()
    _with_api(config, port)
    log = tmp_path / "run.log"
    proc = _start(config, log, "--workers", "2", "--instance-id", "w", "--log-format", "json")
    child_pids: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            fleet = Fleet(session, f"http://127.0.0.1:{port}", "c1")

            async def answers() -> bool:
                try:
                    await fleet.get("/health")
                except aiohttp.ClientError:
                    return False
                return True

            await wait_for(answers, 30, what="the API")

            async def both_own_partitions() -> bool:
                return await fleet.owners() == {"w", "w-w1"} and set(await fleet.pids()) == {
                    "w",
                    "w-w1",
                }

            await wait_for(both_own_partitions, 40, what="two instances sharing 4 partitions")
            first = (await fleet.pids())["w-w1"]
            child_pids.append(first)
            assert first != proc.pid
            await kafka.produce(unique, ({"i": i} for i in range(400)), partitions=4)

            async def counted_400() -> bool:
                return await fleet.caught_up(400)

            await wait_for(counted_400, 30, what="400 events counted")

            os.kill(first, signal.SIGKILL)

            async def reported() -> bool:
                status, body = await fleet.get("/ready")
                return status == 503 and any(
                    r.startswith("worker 1 (w-w1) exited with signal SIGKILL; restarting in 1 s")
                    for r in body["reasons"]
                )

            await wait_for(reported, 10, what="/ready degraded by the worker's exit")
            await kafka.produce(unique, ({"i": i} for i in range(400)), partitions=4)

            async def restarted() -> bool:
                pids = await fleet.pids()
                return pids.get("w-w1", first) != first and await fleet.owners() == {"w", "w-w1"}

            await wait_for(restarted, 40, what="worker 1 restarted and owning partitions")
            child_pids.append((await fleet.pids())["w-w1"])

            async def counted_800() -> bool:
                return await fleet.caught_up(800)

            await wait_for(counted_800, 30, what="800 events counted")
            assert (await fleet.consumer())["total"] == 800

            proc.send_signal(signal.SIGHUP)  # reload: the command and its worker

            async def both_reloaded() -> bool:
                ids = {x.get("instance_id") for x in _lines(log) if x.get("event") == "reload"}
                return ids == {"w", "w-w1"}

            await wait_for(both_reloaded, 20, what="a reload logged by each instance")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert all(_gone(pid) for pid in child_pids)
    lines = _lines(log)  # the workers log in the same format, on the same stderr
    exits = [x for x in lines if x.get("event") == "worker_exit"]
    assert [x["message"] for x in exits] == [
        "worker 1 (w-w1) exited with signal SIGKILL; restarting in 1 s (restart 1)"
    ]
    assert exits[0]["level"] == "error" and exits[0]["instance_id"] == "w"
    assert {x.get("instance_id") for x in lines} == {"w", "w-w1"}
    stopped = [x["message"] for x in lines if x["message"].startswith("engine ")]
    assert "engine w-w1 stopped" in stopped and stopped[-1] == "engine w stopped"


async def test_workers_die_with_a_killed_command(
    tmp_path: Path, services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    await kafka.create_topic(unique, 2)
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix=unique,
        topic=unique,
        cid="c1",
        out_file=tmp_path / "out.txt",
    )
    log = tmp_path / "run.log"
    proc = _start(config, log, "--workers", "3", "--instance-id", "k", "--log-format", "json")
    try:

        async def started() -> bool:
            ids = {x.get("instance_id") for x in _lines(log) if "running" in x["message"]}
            return ids == {"k", "k-w1", "k-w2"}

        await wait_for(started, 40, what="three instances running")
        listing = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        children = (await asyncio.to_thread(listing.read_text)).split()
        assert len(children) == 2
        proc.kill()
        proc.wait(10)

        async def orphans_gone() -> bool:
            return all(_gone(int(pid)) for pid in children)

        await wait_for(orphans_gone, 30, what="the workers to stop after the command died")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_console_header_names_restarted_workers() -> None:
    from kafkaconsole.config.models import AppConfig
    from kafkaconsole.engine.status import InstanceSnapshot
    from kafkaconsole.tui.viewmodel import build_header

    config = AppConfig.model_validate({"kafka": {"bootstrap_servers": "b:9092"}})
    snap = InstanceSnapshot(
        "h",
        "host",
        1,
        0,
        0,
        True,
        True,
        task_failures=(
            "worker 1 (h-w1) exited with code 1; restarting in 2 s (restart 2)",
            "status loop failed: OSError: x",
        ),
    )
    header = build_header(config, snap, None, [], 0, engine="running", read_only=False)
    assert header.workers_restarted == 1
    quiet = build_header(
        config,
        InstanceSnapshot("h", "host", 1, 0, 0, True, True),
        None,
        [],
        0,
        engine="running",
        read_only=False,
    )
    assert quiet.workers_restarted == 0


async def test_console_runs_the_workers_and_stops_them_on_quit(
    tmp_path: Path, services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    from kafkaconsole.config import load_config
    from kafkaconsole.supervisor import WorkerSpec
    from kafkaconsole.tui.app import KafkaConsoleApp
    from tests.test_tui_pilot import screen_text

    await kafka.create_topic(unique, 2)
    path = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix=unique,
        topic=unique,
        cid="c1",
        out_file=tmp_path / "out.txt",
    )
    app = KafkaConsoleApp(load_config(path), instance_id="tui")
    app.engine_workers = WorkerSpec(2, forward_logs=True)
    try:
        async with app.run_test(size=(160, 30)) as pilot:

            async def two_instances() -> bool:
                return "2 instances" in screen_text(app)

            await wait_for(two_instances, 60, interval=0.2, what="2 instances in the header")
            forwarded = [
                x.message for x in app.logbook.lines() if x.message.startswith("worker 1:")
            ]
            assert any("instance tui-w1 running" in m for m in forwarded), forwarded
            workers = await asyncio.to_thread(_children_running, "tui-w1")
            assert len(workers) == 1
            await pilot.press("q")

            async def exited() -> bool:
                return app.return_code is not None

            await wait_for(exited, 60, what="graceful quit")
    finally:
        await app.close_engine()
    assert app.return_code == 0
    assert _gone(workers[0])


async def test_a_crash_looping_worker_backs_off_and_recovers(
    tmp_path: Path, services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    """A worker that cannot start (its config file broken after the command read it) is
    restarted after 1, 2, 4 s; /ready says so; once the file is mended it comes back."""
    await kafka.create_topic(unique, 2)
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix=unique,
        topic=unique,
        cid="c1",
        out_file=tmp_path / "out.txt",
    )
    port = free_port()
    _with_api(config, port)
    good = config.read_text()
    log = tmp_path / "run.log"
    proc = _start(config, log, "--workers", "2", "--instance-id", "cl", "--log-format", "json")

    def exits() -> list[str]:  # the worker's own config error lines are plain text
        text = log.read_text()
        return [
            json.loads(x)["message"]
            for x in text[: text.rfind("\n") + 1].splitlines()
            if x.startswith("{") and '"worker_exit"' in x
        ]

    try:
        async with aiohttp.ClientSession() as session:
            fleet = Fleet(session, f"http://127.0.0.1:{port}", "c1")

            async def worker_up() -> bool:
                try:
                    return "cl-w1" in await fleet.pids()
                except aiohttp.ClientError:
                    return False

            await wait_for(worker_up, 40, what="worker 1 in the fleet")
            first = (await fleet.pids())["cl-w1"]
            config.write_text(good + "\nbogus = 1\n")
            os.kill(first, signal.SIGKILL)

            async def looped() -> bool:
                return len(exits()) >= 3

            await wait_for(looped, 30, what="three exits of worker 1")
            status, body = await fleet.get("/ready")
            assert status == 503 and any("worker 1 (cl-w1) exited" in r for r in body["reasons"])
            config.write_text(good)

            async def back() -> bool:
                return (await fleet.pids()).get("cl-w1", first) != first

            await wait_for(back, 30, what="worker 1 back once its config is mended")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert exits()[:3] == [
        "worker 1 (cl-w1) exited with signal SIGKILL; restarting in 1 s (restart 1)",
        "worker 1 (cl-w1) exited with code 2; restarting in 2 s (restart 2)",
        "worker 1 (cl-w1) exited with code 2; restarting in 4 s (restart 3)",
    ]
