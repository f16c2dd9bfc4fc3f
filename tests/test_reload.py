"""Live reload on the real broker and Redis: the engine method, the CLI, SIGHUP and the API.

A reload reads the configuration file again and applies it to the running engine: consumers
added start and count, removed ones stop gracefully (offsets committed, open window kept in
Redis), a lowered max_event closes the open window at once with the carry-over, a changed
pipeline takes the next dispatch, and a bad file changes nothing and says why.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis import asyncio as aredis

from kafkaconsole.api import start_api
from kafkaconsole.config import load_config
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.audit import AuditLog
from kafkaconsole.engine.counting import PartitionDelta, WindowCounter
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.errors import ReadOnlyError
from kafkaconsole.engine.keys import ConsumerKeys
from kafkaconsole.engine.reload import plan_reload
from tests import procs
from tests.engine_support import running_engine
from tests.helpers import KafkaHelper, cli, wait_for
from tests.pipeline_targets import calls_for
from tests.test_api import _response_validator

TOKEN = "reload-token-for-tests"


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write_config(
    path: Path,
    services: EmbeddedServices,
    prefix: str,
    consumers: list[dict[str, Any]],
    *,
    pipelines: Sequence[str] = ("record",),
    api: dict[str, Any] | None = None,
    extra: str = "",
) -> Path:
    """A config file: python pipelines recording every call, the given consumers."""
    lines = [
        "[kafka]",
        f"bootstrap_servers = {_value(services.bootstrap_servers)}",
        "session_timeout_ms = 6000",
        "heartbeat_interval_ms = 500",
        "[redis]",
        f"url = {_value(services.redis_url)}",
        f"key_prefix = {_value(prefix)}",
        "dispatch_lease_ms = 1500",
        "[api]",
        *(f"{k} = {_value(v)}" for k, v in (api or {"enabled": False}).items()),
    ]
    for name in pipelines:
        lines += [
            f"[pipelines.{name}]",
            'kind = "python"',
            'target = "tests.pipeline_targets:record"',
            "retry_policy = { max_attempts = 3, initial_backoff = 0.01 }",
        ]
    for consumer in consumers:
        fields = {
            "pipeline_name": pipelines[0],
            "connection_id": "conn-1",
            "max_event": 100,
            "max_time": 3600,
            "poll_timeout": 0.2,
            **consumer,
        }
        lines.append("[[consumers]]")
        lines += [f"{k} = {_value(v)}" for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


async def count_of(redis: aredis.Redis, prefix: str, cid: str) -> int:
    return int(await redis.get(f"{prefix}:{cid}:events") or 0)


async def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            total += await consumer.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await consumer.stop()


async def history(redis: aredis.Redis, prefix: str, cid: str) -> list[dict[str, str]]:
    raw: Any = await redis.xrange(f"{prefix}:{cid}:history")
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]


async def wait_live(redis: aredis.Redis, prefix: str, engine: Engine) -> None:
    """Until the instance's heartbeat is in Redis (a fleet-wide request then reaches it)."""

    async def live() -> bool:
        raw = await redis.zrange(f"{prefix}:_fleet:instances", 0, -1)
        return engine.instance_id.encode() in raw

    await wait_for(live, what="the instance's heartbeat")


async def start_from(path: Path) -> Engine:
    engine = Engine(load_config(path), lease_ms=1500, snapshot_interval=0.2)
    await engine.start()
    return engine


# ---- the engine -------------------------------------------------------------------------------


async def test_reload_adds_removes_and_restarts_consumers(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    gone, kept, new = f"{unique}-gone", f"{unique}-kept", f"{unique}-new"
    for topic in (gone, kept, new):
        await kafka.create_topic(topic, 2)
    path = tmp_path / "kafkaconsole.toml"
    write_config(
        path,
        services,
        unique,
        [
            {"consumer_id": gone, "kafka_topic": gone, "max_event": 100},
            {"consumer_id": kept, "kafka_topic": kept, "max_event": 100},
        ],
    )
    engine = await start_from(path)
    try:
        await kafka.produce(gone, [{"n": i} for i in range(5)], partitions=2)
        await kafka.produce(kept, [{"n": i} for i in range(3)], partitions=2)

        async def counted() -> bool:
            return (
                await count_of(redis_client, unique, gone) == 5
                and await count_of(redis_client, unique, kept) == 3
            )

        await wait_for(counted, what="both consumers counted")
        write_config(
            path,
            services,
            unique,
            [
                # batch_size changed: restarted; gone: removed; new: added
                {"consumer_id": kept, "kafka_topic": kept, "max_event": 100, "batch_size": 50},
                {"consumer_id": new, "kafka_topic": new, "max_event": 100},
            ],
            extra="[ui]\ntheme = 'kafkaconsole-light'\n",
        )
        result = await engine.reload(via="test")
        assert result.status == "applied", result
        assert result.added == (new,) and result.removed == (gone,)
        assert result.restarted == (kept,) and result.changed == ()
        assert result.needs_restart == ("ui.theme",)
        assert engine.config.ui.theme == "kafkaconsole-dark"  # not applied
        assert sorted(engine.consumer_ids()) == sorted([kept, new])
        # the removed consumer: open window kept in Redis, its offsets committed to Kafka
        assert await count_of(redis_client, unique, gone) == 5
        group = f"kafkaconsole-{gone}"
        assert await committed_total(services.bootstrap_servers, group, gone, 2) == 5
        # the added one counts, the restarted one goes on counting where it was
        await kafka.produce(new, [{"n": i} for i in range(4)], partitions=2)
        await kafka.produce(kept, [{"n": i} for i in range(2)], partitions=2)

        async def counting() -> bool:
            return (
                await count_of(redis_client, unique, new) == 4
                and await count_of(redis_client, unique, kept) == 5
            )

        await wait_for(counting, what="the added and the restarted consumer counting")
        entries = await AuditLog(redis_client, unique).entries(5)
        reload_entry = next(e for e in entries if e["action"] == "reload")
        assert reload_entry["via"] == "test" and reload_entry["result"] == "ok"
        assert f"added {new}" in reload_entry["detail"]
    finally:
        await engine.stop()


async def test_lowered_max_event_closes_the_open_window_with_carry_over(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 1)
    path = tmp_path / "kafkaconsole.toml"
    write_config(
        path, services, unique, [{"consumer_id": cid, "kafka_topic": unique, "max_event": 100}]
    )
    engine = await start_from(path)
    try:
        await kafka.produce(unique, [{"n": i} for i in range(7)], partitions=1)

        async def seven() -> bool:
            return await count_of(redis_client, unique, cid) == 7

        await wait_for(seven, what="7 events in the open window")
        path.write_text(path.read_text().replace("max_event = 100", "max_event = 3"))
        result = await engine.reload()
        assert result.status == "applied" and result.changed == (cid,), result
        assert "window(s) 1, 2 closed at once, 1 event(s) carried over" in result.details[0]
        # 7 events, max_event 3: two windows of exactly 3, the seventh carried over
        records = await history(redis_client, unique, cid)
        assert [(r["window_id"], r["reason"], r["count"]) for r in records] == [
            ("1", "count", "3"),
            ("2", "count", "3"),
        ]
        offsets = [orjson.loads(r["offsets"]) for r in records]
        assert [(o[0]["first"], o[0]["last"]) for o in offsets] == [(0, 2), (3, 5)]
        assert await count_of(redis_client, unique, cid) == 1
        window = await engine._consumers[cid].counter.window()
        assert window.window_id == 3 and [(r.first, r.last) for r in window.ranges] == [(6, 6)]

        async def dispatched() -> bool:
            return sorted(c["window_id"] for c in calls_for(cid)) == [1, 2]

        await wait_for(dispatched, what="both closed windows dispatched")
        # the carried-over event opens window 3, which closes at the new threshold
        await kafka.produce(unique, [{"n": i} for i in range(2)], partitions=1)

        async def third() -> bool:
            return len(await history(redis_client, unique, cid)) == 3

        await wait_for(third, what="window 3 closed at 3 events")
        last = (await history(redis_client, unique, cid))[-1]
        assert last["count"] == "3" and orjson.loads(last["offsets"])[0]["first"] == 6
        assert await count_of(redis_client, unique, cid) == 0
    finally:
        await engine.stop()


async def test_changed_pipeline_takes_the_next_dispatch(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 1)
    path = tmp_path / "kafkaconsole.toml"
    consumer = {"consumer_id": cid, "kafka_topic": unique, "max_event": 2}
    write_config(path, services, unique, [consumer], pipelines=["first", "second"])
    engine = await start_from(path)
    try:
        await kafka.produce(unique, [{"n": 1}, {"n": 2}], partitions=1)

        async def calls(n: int) -> bool:
            return len(calls_for(cid)) == n

        await wait_for(lambda: calls(1), what="the first window dispatched")
        write_config(
            path,
            services,
            unique,
            [{**consumer, "pipeline_name": "second"}],
            pipelines=["first", "second"],
        )
        result = await engine.reload()
        assert result.changed == (cid,) and result.restarted == (), result
        await kafka.produce(unique, [{"n": 3}, {"n": 4}], partitions=1)
        await wait_for(lambda: calls(2), what="the second window dispatched")
        assert [c["pipeline_name"] for c in calls_for(cid)] == ["first", "second"]
    finally:
        await engine.stop()


async def test_bad_file_changes_nothing_and_says_why(
    tmp_path: Path, services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 1)
    path = tmp_path / "kafkaconsole.toml"
    write_config(path, services, unique, [{"consumer_id": cid, "kafka_topic": unique}])
    cfg = load_config(path)
    async with running_engine(cfg) as engine:
        write_config(
            path,
            services,
            unique,
            [{"consumer_id": cid, "kafka_topic": unique, "max_event": 0, "max_evnt": 3}],
        )
        result = await engine.reload(path)
        assert result.status == "invalid" and not result.ok
        assert any(p.startswith(f"{path}: consumers[0].max_event: ") for p in result.problems)
        assert any(
            p.startswith(f"{path}: consumers[0].max_evnt: ") and "max_event" in p
            for p in result.problems
        ), result.problems
        assert engine.config is cfg and engine.consumer_ids() == [cid]


async def test_read_only_refuses_reload(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 1)
    path = tmp_path / "kafkaconsole.toml"
    write_config(path, services, unique, [{"consumer_id": cid, "kafka_topic": unique}])
    async with running_engine(load_config(path).with_read_only()) as engine:
        with pytest.raises(ReadOnlyError, match="refusing to reload"):
            await engine.reload()
        await wait_live(redis_client, unique, engine)
        # asked fleet-wide, the read-only instance answers with the refusal: exit 1
        result = await cli("reload", "--config", str(path), "--timeout", "10")
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert "refusing to reload: read-only mode" in result.stdout
    refused = await cli("reload", "--config", str(path), "--read-only")
    assert refused.exit_code == 1 and "refusing to reload" in refused.stderr


def test_plan_lists_keys_that_need_a_restart(
    tmp_path: Path, services: EmbeddedServices, unique: str
) -> None:
    path = tmp_path / "kafkaconsole.toml"
    consumer = {"consumer_id": "c", "kafka_topic": "t", "max_event": 5}
    old = load_config(write_config(path, services, unique, [consumer]))
    new = load_config(
        write_config(
            path,
            services,
            unique,
            [{**consumer, "max_time": 60}],
            api={"enabled": False, "port": 9123},
        )
    )
    plan = plan_reload(old, new)
    assert plan.needs_restart == ("api.port",)
    assert [c.new.consumer_id for c in plan.changed] == ["c"] and plan.changed[0].thresholds
    assert not plan.changed[0].pipeline and not plan.restarted


async def test_lowered_max_time_closes_the_open_window_by_time(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 1)
    path = tmp_path / "kafkaconsole.toml"
    write_config(path, services, unique, [{"consumer_id": cid, "kafka_topic": unique}])
    engine = await start_from(path)
    try:
        await kafka.produce(unique, [{"n": 1}, {"n": 2}], partitions=1)

        async def two() -> bool:
            return await count_of(redis_client, unique, cid) == 2

        await wait_for(two, what="2 events in the open window")
        path.write_text(path.read_text().replace("max_time = 3600", "max_time = 0.5"))
        result = await engine.reload()
        assert result.changed == (cid,), result

        async def closed() -> bool:
            return len(await history(redis_client, unique, cid)) == 1

        await wait_for(closed, what="the open window closed by the new max_time")
        [record] = await history(redis_client, unique, cid)
        assert (record["reason"], record["count"]) == ("time", "2")
    finally:
        await engine.stop()


async def test_lowered_threshold_splits_ranges_over_partitions(
    redis_client: aredis.Redis, unique: str
) -> None:
    """The carry-over split by the counting scripts themselves: partitions in order, each
    closed window holding exactly max_event offsets; an apply that runs with the lowered
    threshold first (another instance reloaded) closes the excess the same way."""
    for first_close in ("set_max_event", "apply"):
        keys = ConsumerKeys(f"{unique}{first_close}", "c")
        counter = WindowCounter(redis_client, keys, max_event=100)
        await counter.apply(
            [
                PartitionDelta("t", 0, 4, 0, 4, [(0, 3)]),
                PartitionDelta("t", 1, 3, 0, 3, [(0, 2)]),
            ]
        )
        if first_close == "set_max_event":
            res = await counter.set_max_event(3)
            assert res.closed_window_ids == (1, 2) and res.count == 1
        else:
            counter.max_event = 3
            applied = await counter.apply([PartitionDelta("t", 1, 4, 3, 1, [(3, 3)])])
            # 7 open + 1 new: windows of 3 and 3 close first, then the new event joins the
            # carried-over one
            assert applied.closed_window_ids == (1, 2) and applied.count == 2
        raw: Any = await redis_client.xrange(keys.history)
        ranges = [
            [(o["partition"], o["first"], o["last"]) for o in orjson.loads(f[b"offsets"])]
            for _, f in raw
        ]
        assert ranges == [[(0, 0, 2)], [(0, 3, 3), (1, 0, 1)]]
        window = await counter.window()
        expected = [(1, 2, 2)] if first_close == "set_max_event" else [(1, 2, 3)]
        assert [(r.partition, r.first, r.last) for r in window.ranges] == expected


# ---- the CLI, fleet-wide ----------------------------------------------------------------------


async def test_cli_reload_fleet_wide(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    cid, added = f"{unique}-c", f"{unique}-added"
    await kafka.create_topic(unique, 1)
    await kafka.create_topic(added, 1)
    path = tmp_path / "instance.toml"
    write_config(path, services, unique, [{"consumer_id": cid, "kafka_topic": unique}])
    # the CLI reads its own copy (to find Redis); the instance reads the file it started with
    cli_file = tmp_path / "cli.toml"
    cli_file.write_text(path.read_text())
    engine = await start_from(path)
    try:
        await wait_live(redis_client, unique, engine)
        check = await cli("reload", "--check", "--config", str(cli_file))
        assert check.exit_code == 0 and "ok (1 consumer(s))" in check.stdout, check.stderr

        write_config(
            path,
            services,
            unique,
            [
                {"consumer_id": cid, "kafka_topic": unique},
                {"consumer_id": added, "kafka_topic": added},
            ],
        )
        result = await cli("reload", "--config", str(cli_file), "--json")
        assert result.exit_code == 0, (result.stdout, result.stderr)
        data = json.loads(result.stdout)
        [row] = data["instances"]
        assert row["instance_id"] == engine.instance_id and row["status"] == "applied"
        assert row["added"] == [added] and row["file"] == str(path.absolute())
        await kafka.produce(added, [{"n": 1}, {"n": 2}], partitions=1)

        async def counted() -> bool:
            return await count_of(redis_client, unique, added) == 2

        await wait_for(counted, what="the consumer added by the CLI's reload counting")
        entries = await AuditLog(redis_client, unique).entries(5)
        assert entries[0]["action"] == "reload" and entries[0]["via"] == "cli"

        # the instance's file turns bad: every problem, naming the file and key; exit 2
        path.write_text(path.read_text().replace("max_time = 3600", "max_time = -1", 1))
        bad = await cli("reload", "--config", str(cli_file))
        assert bad.exit_code == 2, (bad.stdout, bad.stderr)
        assert f"{engine.instance_id}: invalid" in bad.stdout
        assert f"{path.absolute()}: consumers[0].max_time: " in bad.stderr
        assert sorted(engine.consumer_ids()) == sorted([cid, added])  # nothing changed

        # the CLI's own file bad: exit 2 before anything is sent
        cli_file.write_text(cli_file.read_text() + "\n[ui]\nthem = 'x'\n")
        own = await cli("reload", "--config", str(cli_file))
        assert own.exit_code == 2 and f"{cli_file}: ui.them: " in own.stderr
        check = await cli("reload", "--check", "--config", str(cli_file))
        assert check.exit_code == 2 and "ui.them" in check.stderr
    finally:
        await engine.stop()


# ---- SIGHUP on a headless process -------------------------------------------------------------


async def test_sighup_reloads_a_headless_instance(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    cid, added = f"{unique}-c", f"{unique}-added"
    await kafka.create_topic(unique, 1)
    await kafka.create_topic(added, 1)
    config = procs.write_config(
        tmp_path / "kafkaconsole.toml",
        services,
        unique,
        unique,
        cid,
        tmp_path / "runs.jsonl",
        max_event=100,
        max_time=3600,
    )
    log = tmp_path / "instance.log"
    proc = procs.start(config, f"{unique}-i", log)
    try:

        async def running() -> bool:
            return "running 1 consumer(s)" in log.read_text()

        await wait_for(running, 30, what="the headless instance running")
        config.write_text(
            config.read_text()
            + f"""
[[consumers]]
consumer_id = "{added}"
kafka_topic = "{added}"
pipeline_name = "sink"
connection_id = "conn-1"
max_event = 100
max_time = 3600
poll_timeout = 0.2
"""
        )
        proc.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return f"added {added}" in log.read_text()

        await wait_for(reloaded, what="the reload's log line")
        await kafka.produce(added, [{"n": 1}, {"n": 2}, {"n": 3}], partitions=1)

        async def counted() -> bool:
            return await count_of(redis_client, unique, added) == 3

        await wait_for(counted, what="the consumer added by SIGHUP counting")

        config.write_text(config.read_text().replace("max_event = 100", "max_event = 0", 1))
        proc.send_signal(signal.SIGHUP)

        async def refused() -> bool:
            return "is invalid (1 problem(s)); nothing changed" in log.read_text()

        await wait_for(refused, what="the bad file's log line")
        assert f"{config}: consumers[0].max_event: " in log.read_text()

        async def both_audited() -> bool:  # the audit entry is written after the log line
            entries = await AuditLog(redis_client, unique).entries(5)
            return [e["via"] for e in entries if e["action"] == "reload"] == ["signal", "signal"]

        await wait_for(both_audited, what="both reloads in the audit trail")
        entries = await AuditLog(redis_client, unique).entries(5)
        assert entries[0]["result"] == "error"
        assert proc.poll() is None  # still running after the bad file
    finally:
        code = procs.stop(proc)
    assert code == 0, log.read_text()


# ---- the HTTP API -------------------------------------------------------------------------------


async def test_api_reload(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    unique: str,
) -> None:
    cid, added = f"{unique}-c", f"{unique}-added"
    await kafka.create_topic(unique, 1)
    await kafka.create_topic(added, 1)
    path = tmp_path / "kafkaconsole.toml"
    api = {"enabled": True, "host": "127.0.0.1", "port": 0, "token": TOKEN}
    consumer = {"consumer_id": cid, "kafka_topic": unique}
    write_config(path, services, unique, [consumer], api=api)
    engine = await start_from(path)
    server = await start_api(engine, engine.config)
    session = aiohttp.ClientSession()

    async def post(token: str | None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with session.post(server.url + "/reload", headers=headers) as resp:
            return resp.status, await resp.json()

    try:
        status, body = await post(None)
        assert status == 401, body
        status, body = await post("wrong")
        assert status == 401, body
        write_config(
            path,
            services,
            unique,
            [consumer, {"consumer_id": added, "kafka_topic": added}],
            api=api,
        )
        status, body = await post(TOKEN)
        assert status == 200 and body["status"] == "applied" and body["added"] == [added], body
        async with session.get(server.url + "/openapi.json") as resp:
            doc = await resp.json()
        _response_validator(doc, "/reload", "post", 200).validate(body)
        async with session.get(f"{server.url}/consumer/info/{added}") as resp:
            assert resp.status == 200  # the API knows the added consumer
        path.write_text(path.read_text().replace("max_time = 3600", "max_time = 0", 1))
        status, body = await post(TOKEN)
        assert status == 422 and body["status"] == "invalid", body
        assert any("consumers[0].max_time" in p for p in body["problems"])
        _response_validator(doc, "/reload", "post", 422).validate(body)
        assert sorted(engine.consumer_ids()) == sorted([cid, added])
        responses = doc["paths"]["/reload"]["post"]["responses"]
        assert {"200", "401", "403", "422"} <= set(responses)
    finally:
        await session.close()
        await server()
        await engine.stop()


async def test_api_reload_refused_in_read_only_mode(
    tmp_path: Path, services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 1)
    path = tmp_path / "kafkaconsole.toml"
    api = {"enabled": True, "host": "127.0.0.1", "port": 0, "token": TOKEN}
    write_config(path, services, unique, [{"consumer_id": cid, "kafka_topic": unique}], api=api)
    cfg = load_config(path).with_read_only()
    async with running_engine(cfg) as engine:
        server = await start_api(engine, cfg)
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    server.url + "/reload", headers={"Authorization": f"Bearer {TOKEN}"}
                ) as resp,
            ):
                assert resp.status == 403
                assert "read-only" in (await resp.json())["error"]
        finally:
            await server()
