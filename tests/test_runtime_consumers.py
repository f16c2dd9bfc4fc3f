"""Consumers defined at runtime on the real broker and Redis: the CLI, the API, two engines.

A definition is validated as a ``[[consumers]]`` table of the file, stored in Redis and run by
every instance beside its file's consumers; removing it stops it gracefully (offsets committed,
open window kept); a file consumer of the same id wins and the clash is reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis import asyncio as aredis

from kafkaconsole.api import start_api
from kafkaconsole.config import load_config
from kafkaconsole.embedded import BrokerKind, EmbeddedServices
from kafkaconsole.engine.alerts import RETIRED
from kafkaconsole.engine.audit import AuditLog
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.runtime_consumers import RUNTIME_MARK, RuntimeConsumers, clash_note
from kafkaconsole.tui.viewmodel import config_lines
from tests.helpers import KafkaHelper, cli, wait_for
from tests.test_api import _response_validator
from tests.test_reload import (
    TOKEN,
    committed_total,
    count_of,
    start_from,
    wait_live,
    write_config,
)


def definition(cid: str, topic: str, **extra: Any) -> dict[str, Any]:
    return {
        "consumer_id": cid,
        "kafka_topic": topic,
        "pipeline_name": "record",
        "connection_id": "conn-rt",
        "max_event": 100,
        "max_time": 3600,
        "poll_timeout": 0.2,
        **extra,
    }


def write_toml(path: Path, table: dict[str, Any]) -> Path:
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    return path


async def stored(redis: aredis.Redis, prefix: str) -> dict[str, Any]:
    return await RuntimeConsumers(redis, prefix).definitions()


async def test_cli_add_runs_on_a_live_engine_and_remove_stops_it_gracefully(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    base, rt = f"{unique}-base", f"{unique}-rt"
    await kafka.create_topic(base, 1)
    await kafka.create_topic(rt, 2)
    path = write_config(
        tmp_path / "kafkaconsole.toml",
        services,
        unique,
        [{"consumer_id": base, "kafka_topic": base}],
    )
    engine = await start_from(path)
    try:
        await wait_live(redis_client, unique, engine)
        spec = write_toml(tmp_path / "rt.toml", definition(rt, rt))
        added = await cli("consumer", "add", "--file", str(spec), "--config", str(path), "--json")
        assert added.exit_code == 0, (added.stdout, added.stderr)
        data = json.loads(added.stdout)
        assert data["consumer_id"] == rt and data["status"] == "created"
        [row] = data["instances"]
        assert row["instance_id"] == engine.instance_id and row["status"] == "applied"
        assert row["added"] == [rt]
        assert sorted(engine.consumer_ids()) == sorted([base, rt])
        assert engine.runtime_consumer_ids == {rt}
        await kafka.produce(rt, [{"n": i} for i in range(5)], partitions=2)

        async def counted() -> bool:
            return await count_of(redis_client, unique, rt) == 5

        await wait_for(counted, what="the runtime-defined consumer counting")

        # listed, marked in config show and in the console's config tab; audited
        listed = await cli("consumer", "list", "--config", str(path), "--json")
        assert listed.exit_code == 0, listed.stderr
        [entry] = json.loads(listed.stdout)["consumers"]
        assert entry["consumer_id"] == rt and entry["kafka_topic"] == rt and not entry["clash"]
        shown = await cli("config", "show", "--config", str(path), "--runtime")
        assert shown.exit_code == 0, shown.stderr
        assert f'{RUNTIME_MARK}\n[[consumers]]\nconsumer_id = "{rt}"' in shown.stdout
        assert shown.stdout.count(RUNTIME_MARK) == 1
        plain = await cli("config", "show", "--config", str(path))
        assert RUNTIME_MARK not in plain.stdout and rt not in plain.stdout
        from kafkaconsole.config import mask_config

        masked = mask_config(engine.config)
        assert config_lines(masked, rt, runtime=True)[0] == RUNTIME_MARK
        assert config_lines(masked, base)[0] == "[[consumers]]"
        entries = await AuditLog(redis_client, unique).entries(5)
        assert entries[0]["action"] == "consumer-add" and entries[0]["consumer_id"] == rt
        assert entries[0]["via"] == "cli" and "defined" in entries[0]["detail"]

        # removed: stopped gracefully, its open window kept, its offsets committed
        removed = await cli("consumer", "remove", rt, "--config", str(path))
        assert removed.exit_code == 0, (removed.stdout, removed.stderr)
        assert f"removed {rt}" in removed.stdout
        assert engine.consumer_ids() == [base] and not engine.runtime_consumer_ids
        assert await count_of(redis_client, unique, rt) == 5
        group = f"kafkaconsole-{rt}"
        assert await committed_total(services.bootstrap_servers, group, rt, 2) == 5
        assert await stored(redis_client, unique) == {}
        again = await cli("consumer", "remove", rt, "--config", str(path))
        assert again.exit_code == 1 and "unknown runtime-defined consumer" in again.stderr
        # the file's consumer cannot be removed so
        own = await cli("consumer", "remove", base, "--config", str(path))
        assert own.exit_code == 1 and "the file's consumer wins" in own.stderr
    finally:
        await engine.stop()


async def test_invalid_definition_is_refused_with_every_problem(
    tmp_path: Path, services: EmbeddedServices, redis_client: aredis.Redis, unique: str
) -> None:
    path = write_config(tmp_path / "kafkaconsole.toml", services, unique, [])
    bad = {
        **definition(f"{unique}-rt", unique, max_event=0, pipeline_name="recrod"),
        "max_evnt": 3,
        "processor": "os:system",
    }
    spec = write_toml(tmp_path / "rt.toml", bad)
    result = await cli("consumer", "add", "--file", str(spec), "--config", str(path))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert f"{spec}: max_event: must be greater than 0" in lines
    assert f"{spec}: max_evnt: unknown key (did you mean 'max_event'?)" in lines
    assert any(
        line.startswith(f"{spec}: pipeline_name: no pipeline named 'recrod'") for line in lines
    )
    assert any(line.startswith(f"{spec}: processor: not allowed") for line in lines)
    assert await stored(redis_client, unique) == {}
    # JSON works the same; a file that does not parse is one line, exit 2
    as_json = tmp_path / "rt.json"
    as_json.write_text(json.dumps({**definition(f"{unique}-rt", unique), "max_time": -1}))
    result = await cli("consumer", "add", "--file", str(as_json), "--config", str(path))
    assert result.exit_code == 2
    assert f"{as_json}: max_time: must be greater than 0" in result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("consumer_id = \n")
    result = await cli("consumer", "add", "--file", str(broken), "--config", str(path))
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {broken}: (toml): ")
    assert await stored(redis_client, unique) == {}


async def test_file_consumer_wins_and_the_clash_is_reported(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    base, rt = f"{unique}-base", f"{unique}-rt"
    for topic in (base, rt):
        await kafka.create_topic(topic, 1)
    path = write_config(
        tmp_path / "kafkaconsole.toml",
        services,
        unique,
        [{"consumer_id": base, "kafka_topic": base}],
    )
    # refused before anything is stored
    spec = write_toml(tmp_path / "clash.toml", definition(base, rt))
    refused = await cli("consumer", "add", "--file", str(spec), "--config", str(path))
    assert refused.exit_code == 1 and "the file's consumer wins" in refused.stderr
    assert await stored(redis_client, unique) == {}
    # stored meanwhile (by an instance whose file lacked it): the instance starting runs the
    # runtime one and keeps its own file consumer of the clashing id
    store = RuntimeConsumers(redis_client, unique)
    cfg = load_config(path)
    await store.put(cfg.consumers[0].model_copy(update={"kafka_topic": rt}))
    await redis_client.hset(
        f"{unique}:_fleet:consumers", rt, orjson.dumps(definition(rt, rt, max_event=7))
    )
    engine = await start_from(path)
    try:
        assert sorted(engine.consumer_ids()) == sorted([base, rt])
        assert engine.config.consumer(base).kafka_topic == base  # the file's
        assert engine.config.consumer(rt).max_event == 7
        assert engine.runtime_clashes == (base,) and engine.runtime_consumer_ids == {rt}
        # status shows it per instance
        await wait_live(redis_client, unique, engine)
        status = await cli("status", "--config", str(path), "--json")
        assert status.exit_code == 0, status.stderr
        [instance] = json.loads(status.stdout)["instances"]
        assert instance["runtime_consumers"] == [rt] and instance["runtime_clashes"] == [base]
        status = await cli("status", "--config", str(path))
        assert f"{engine.instance_id}: defined at runtime: {rt}" in status.stdout
        assert f"{engine.instance_id}: {clash_note(base)}" in status.stdout
        # a reload reports the clash in its answer too
        result = await engine.reload(via="test")
        assert result.ok and clash_note(base) in result.details, result
        listed = await cli("consumer", "list", "--config", str(path))
        assert listed.exit_code == 0 and clash_note(base) in listed.stdout
        shown = await cli("config", "show", "--config", str(path), "--runtime", "--json")
        data = json.loads(shown.stdout)
        assert data["runtime_consumers"] == [rt]
        assert data["runtime_notes"] == [clash_note(base)]
        # the file takes the runtime one's id too: the file's wins at the next reload
        write_config(
            path,
            services,
            unique,
            [{"consumer_id": base, "kafka_topic": base}, {"consumer_id": rt, "kafka_topic": rt}],
        )
        result = await engine.reload(via="test")
        assert result.ok and clash_note(rt) in result.details, result
        assert engine.config.consumer(rt).max_event == 100 and not engine.runtime_consumer_ids
    finally:
        await engine.stop()


async def test_read_only_refuses_definitions(
    tmp_path: Path, services: EmbeddedServices, redis_client: aredis.Redis, unique: str
) -> None:
    path = write_config(tmp_path / "kafkaconsole.toml", services, unique, [])
    spec = write_toml(tmp_path / "rt.toml", definition(f"{unique}-rt", unique))
    for args in (
        ("consumer", "add", "--file", str(spec), "--read-only"),
        ("consumer", "remove", f"{unique}-rt", "--read-only"),
    ):
        result = await cli(*args, "--config", str(path))
        assert result.exit_code == 1 and "read-only mode" in result.stderr, result.stderr
    path.write_text(path.read_text() + "[ui]\nread_only = true\n")
    result = await cli("consumer", "add", "--file", str(spec), "--config", str(path))
    assert result.exit_code == 1 and "refusing to define a consumer" in result.stderr
    assert await stored(redis_client, unique) == {}


async def test_api_defines_a_consumer_that_a_second_engine_runs(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    base, rt = f"{unique}-base", f"{unique}-rt"
    await kafka.create_topic(base, 1)
    await kafka.create_topic(rt, 2)
    api = {"enabled": True, "host": "127.0.0.1", "port": 0, "token": TOKEN}
    path = write_config(
        tmp_path / "kafkaconsole.toml",
        services,
        unique,
        [{"consumer_id": base, "kafka_topic": base}],
        api=api,
    )
    first = Engine(load_config(path), instance_id=f"{unique}-a", lease_ms=1500)
    second = Engine(load_config(path), instance_id=f"{unique}-b", lease_ms=1500)
    await first.start()
    await second.start()
    server = await start_api(first, first.config)
    session = aiohttp.ClientSession()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def call(method: str, url: str, body: Any = None, token: bool = True) -> Any:
        headers = auth if token else {}
        data = orjson.dumps(body) if body is not None else None
        async with session.request(method, server.url + url, data=data, headers=headers) as r:
            return r.status, await r.json()

    try:
        async with session.get(server.url + "/openapi.json") as resp:
            doc = await resp.json()
        status, body = await call("POST", "/consumers", definition(rt, rt), token=False)
        assert status == 401, body
        status, body = await call("POST", "/consumers", {**definition(rt, rt), "max_event": 0})
        assert status == 422 and body["problems"] == [
            "request: max_event: must be greater than 0"
        ], body
        _response_validator(doc, "/consumers", "post", 422).validate(body)
        status, body = await call("POST", "/consumers", {**definition(rt, rt), "processor": "os:x"})
        assert status == 422 and "request: processor: not allowed" in body["problems"][0], body
        status, body = await call("POST", "/consumers", definition(base, rt))
        assert status == 409 and "the file's consumer wins" in body["error"], body
        assert await stored(redis_client, unique) == {}

        status, body = await call("POST", "/consumers", definition(rt, rt))
        assert status == 201 and body["status"] == "created", body
        _response_validator(doc, "/consumers", "post", 201).validate(body)

        async def both_run() -> bool:
            return all(rt in e.consumer_ids() for e in (first, second))

        await wait_for(both_run, what="both engines running the consumer defined by the API")
        assert all(e.runtime_consumer_ids == {rt} for e in (first, second))
        await kafka.produce(rt, [{"n": i} for i in range(6)], partitions=2)

        async def counted() -> bool:
            return await count_of(redis_client, unique, rt) == 6

        await wait_for(counted, what="the runtime consumer counting across two engines")
        # replaced: 200, applied live on both
        status, body = await call("POST", "/consumers", definition(rt, rt, max_event=50))
        assert status == 200 and body["status"] == "replaced", body
        _response_validator(doc, "/consumers", "post", 200).validate(body)

        async def replaced() -> bool:
            return all(e.config.consumer(rt).max_event == 50 for e in (first, second))

        await wait_for(replaced, what="both engines applying the replaced definition")

        status, body = await call("DELETE", f"/consumers/{base}")
        assert status == 409, body
        status, body = await call("DELETE", f"/consumers/{rt}")
        assert status == 200 and body["status"] == "removed", body
        _response_validator(doc, "/consumers/{consumer_id}", "delete", 200).validate(body)

        async def both_stopped() -> bool:
            return all(e.consumer_ids() == [base] for e in (first, second))

        await wait_for(both_stopped, what="both engines stopping the removed consumer")
        assert await count_of(redis_client, unique, rt) == 6  # the open window kept
        group = f"kafkaconsole-{rt}"
        assert await committed_total(services.bootstrap_servers, group, rt, 2) == 6
        status, body = await call("DELETE", f"/consumers/{rt}")
        assert status == 404, body
        _response_validator(doc, "/consumers/{consumer_id}", "delete", 404).validate(body)
        entries = await AuditLog(redis_client, unique).entries(10)
        actions = [(e["action"], e["via"]) for e in entries if e["consumer_id"] == rt]
        assert actions[:3] == [
            ("consumer-remove", "api"),
            ("consumer-add", "api"),
            ("consumer-add", "api"),
        ]
    finally:
        await session.close()
        await server()
        await first.stop()
        await second.stop()


async def test_api_refuses_definitions_in_read_only_mode(
    tmp_path: Path, services: EmbeddedServices, redis_client: aredis.Redis, unique: str
) -> None:
    api = {"enabled": True, "host": "127.0.0.1", "port": 0, "token": TOKEN}
    path = write_config(tmp_path / "kafkaconsole.toml", services, unique, [], api=api)
    cfg = load_config(path).with_read_only()
    engine = Engine(cfg, lease_ms=1500)
    await engine.start()
    server = await start_api(engine, cfg)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            body = orjson.dumps(definition(f"{unique}-rt", unique))
            async with session.post(server.url + "/consumers", data=body) as resp:
                assert resp.status == 403 and "read-only" in (await resp.json())["error"]
            async with session.delete(f"{server.url}/consumers/{unique}-rt") as resp:
                assert resp.status == 403
        assert await stored(redis_client, unique) == {}
    finally:
        await server()
        await engine.stop()


def test_every_consumer_command_help_has_an_example() -> None:
    from tests.helpers import invoke_cli

    for command in ("add", "remove", "list"):
        result = invoke_cli("consumer", command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.stdout and f"kafkaconsole consumer {command}" in result.stdout


async def test_a_definition_announced_to_no_one_is_applied_once_subscribed(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    """A definition stored while an instance was not subscribed (starting, or Redis away) is
    applied when its control listener subscribes again: it compares what Redis holds."""
    rt = f"{unique}-rt"
    await kafka.create_topic(rt, 1)
    path = write_config(tmp_path / "kafkaconsole.toml", services, unique, [])
    engine = await start_from(path)
    try:
        await wait_live(redis_client, unique, engine)
        # stored without the announcement (as if published before the subscription)
        await redis_client.hset(f"{unique}:_fleet:consumers", rt, orjson.dumps(definition(rt, rt)))
        assert engine.consumer_ids() == []
        # the subscription drops (Redis restarted, a network cut): the listener subscribes again
        await redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

        async def applied() -> bool:
            return engine.consumer_ids() == [rt]

        await wait_for(applied, what="the definition applied after the resubscription")
        assert engine.runtime_consumer_ids == {rt}
    finally:
        await engine.stop()


# ---- the CLI and the API see the fleet as it runs -------------------------------------------


async def cli_json(*args: str) -> Any:
    result = await cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


async def test_every_cli_command_acts_on_a_runtime_consumer(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    broker_kind: BrokerKind,
) -> None:
    base, rt = f"{unique}-base", f"{unique}-rt"
    await kafka.create_topic(base, 1)
    await kafka.create_topic(rt, 2)
    path = write_config(
        tmp_path / "kafkaconsole.toml",
        services,
        unique,
        [{"consumer_id": base, "kafka_topic": base}],
    )
    c = ("--config", str(path))
    engine = await start_from(path)
    try:
        await wait_live(redis_client, unique, engine)
        spec = write_toml(tmp_path / "rt.toml", definition(rt, rt))
        added = await cli("consumer", "add", "--file", str(spec), *c)
        assert added.exit_code == 0, (added.stdout, added.stderr)
        await kafka.produce(rt, [{"n": i} for i in range(5)], partitions=2)

        async def counted(n: int) -> bool:
            return await count_of(redis_client, unique, rt) == n

        await wait_for(lambda: counted(5), what="the runtime consumer counting")

        # status lists it (and says it was defined at runtime), info shows it
        async def listed_running() -> bool:
            status = await cli_json("status", *c)
            found = [x for x in status["consumers"] if x["consumer_id"] == rt]
            return bool(found) and found[0]["state"] == "running" and found[0]["count"] == 5

        await wait_for(listed_running, what="status listing the runtime consumer")
        status = await cli_json("status", *c)
        assert [x["consumer_id"] for x in status["consumers"]] == [base, rt]
        human = await cli("status", *c)
        assert f"defined at runtime (kafkaconsole consumer list): {rt}" in human.stdout
        info = await cli_json("info", rt, *c)
        assert info["consumer_id"] == rt and info["config"]["kafka_topic"] == rt
        assert info["window"]["count"] == 5 and info["pipeline"]["kind"] == "python"
        assert info["instances"] == [engine.instance_id]
        human = await cli("info", rt, *c)
        assert human.exit_code == 0 and f"consumer     {rt} (defined at runtime)" in human.stdout

        # pause and resume, one and --all
        paused = await cli("pause", rt, *c)
        assert paused.exit_code == 0, paused.stderr
        assert f"paused {rt}: applied by 1 of 1 live instance(s)" in paused.stdout
        assert engine.snapshot().consumer(rt).state == "paused"
        resumed = await cli_json("resume", rt, *c)
        assert resumed == [
            {"consumer_id": rt, "paused": False, "changed": True, "instances": 1, "applied": 1}
        ]
        every = await cli_json("pause", "--all", *c)
        assert [r["consumer_id"] for r in every] == [base, rt]
        assert all(r["applied"] == 1 for r in every)
        every = await cli_json("resume", "--all", *c)
        assert [(r["consumer_id"], r["paused"]) for r in every] == [(base, False), (rt, False)]

        # reset empties its window; trigger --wait follows its pipeline run
        reset = await cli("reset", rt, *c)
        assert reset.exit_code == 0 and "5 event(s) discarded" in reset.stdout, reset.stdout
        assert await count_of(redis_client, unique, rt) == 0
        await kafka.produce(rt, [{"m": i} for i in range(4)], partitions=2)
        await wait_for(lambda: counted(4), what="4 more counted")
        trig = await cli_json("trigger", rt, "--wait", "--timeout", "60", *c)
        assert trig["count"] == 4 and trig["run"]["status"] == "succeeded", trig
        wid = trig["window_id"]

        # history (json, csv), peek (window, tail), lag
        [record] = await cli_json("history", rt, *c)
        assert (record["window_id"], record["status"], record["count"]) == (wid, "succeeded", 4)
        csv_out = await cli("history", rt, "--format", "csv", *c)
        assert csv_out.exit_code == 0 and csv_out.stdout.count(f"{rt},{wid},manual,4,") == 1
        window = await cli("peek", rt, "--window", str(wid), "--json", *c)
        assert window.exit_code == 0, window.stderr
        events = [json.loads(line) for line in window.stdout.splitlines()]
        assert sorted(e["value"]["m"] for e in events) == [0, 1, 2, 3]
        tail = await cli("peek", rt, "--tail", "--json", *c)
        assert tail.exit_code == 0, tail.stderr
        tailed = [json.loads(line) for line in tail.stdout.splitlines()]
        assert tailed and {e["topic"] for e in tailed} == {rt}
        if broker_kind != "tansu":  # Tansu answers ListOffsets latest wrongly (--tail uses it)
            assert len(tailed) == 9
        lag = await cli_json("lag", *c)
        [entry] = [x for x in lag["consumers"] if x["consumer_id"] == rt]
        assert len(entry["partitions"]) == 2
        committed = await cli("lag", "--committed", *c)
        assert committed.exit_code == 0 and "COMMITTED" in committed.stdout, committed.stderr
        again = await cli("history", rt, "--redispatch", str(wid), *c)
        assert again.exit_code == 0, again.stderr
        assert f"window {wid} of {rt} queued for its pipeline again" in again.stdout

        # removed: unknown again
        removed = await cli("consumer", "remove", rt, *c)
        assert removed.exit_code == 0, removed.stderr
        gone = await cli("info", rt, *c)
        assert gone.exit_code == 1 and f"unknown consumer '{rt}' (known: {base})" in gone.stderr
    finally:
        await engine.stop()


async def test_cli_shows_the_files_consumer_on_a_clash_and_says_why_an_id_is_unknown(
    tmp_path: Path, services: EmbeddedServices, redis_client: aredis.Redis, unique: str
) -> None:
    base, rt, unfit = f"{unique}-base", f"{unique}-rt", f"{unique}-unfit"
    path = write_config(
        tmp_path / "kafkaconsole.toml",
        services,
        unique,
        [{"consumer_id": base, "kafka_topic": base}],
    )
    c = ("--config", str(path))
    key = f"{unique}:_fleet:consumers"
    await redis_client.hset(key, base, orjson.dumps(definition(base, rt, max_event=7)))
    await redis_client.hset(key, rt, orjson.dumps(definition(rt, rt, max_event=9)))
    await redis_client.hset(key, unfit, orjson.dumps(definition(unfit, rt, pipeline_name="gone")))

    info = await cli_json("info", base, *c)
    assert info["kafka_topic"] == base and info["window"]["max_event"] == 100  # the file's
    info = await cli_json("info", rt, *c)
    assert info["window"]["max_event"] == 9 and info["state"] == "stopped"
    status = await cli_json("status", *c)
    assert [x["consumer_id"] for x in status["consumers"]] == [base, rt]
    assert status["consumers"][0]["kafka_topic"] == base
    human = await cli("status", *c)
    assert f"defined at runtime (kafkaconsole consumer list): {rt}\n" in human.stdout
    history = await cli_json("history", base, *c)
    assert history == []

    unknown = await cli("info", unfit, *c)
    assert unknown.exit_code == 1 and unknown.stdout == ""
    [line] = unknown.stderr.splitlines()
    assert line.startswith(f"error: unknown consumer '{unfit}' (known: {base}, {rt}); ")
    assert "its runtime definition does not fit this configuration: " in line
    assert f"runtime consumer '{unfit}': pipeline_name: no pipeline named 'gone'" in line
    for args in (("pause", unfit), ("trigger", unfit), ("peek", unfit, "--tail")):
        refused = await cli(*args, *c)
        assert refused.exit_code == 1 and "does not fit this configuration" in refused.stderr


async def test_status_watch_shows_a_consumer_defined_while_it_watches(
    tmp_path: Path, services: EmbeddedServices, redis_client: aredis.Redis, unique: str
) -> None:
    from tests.test_cli_scripting import read_line, watch

    base, rt = f"{unique}-base", f"{unique}-rt"
    path = write_config(
        tmp_path / "kafkaconsole.toml",
        services,
        unique,
        [{"consumer_id": base, "kafka_topic": base}],
    )
    proc = watch(path, "--interval", "0.2")
    try:
        assert (await read_line(proc))["consumer_id"] == base
        await redis_client.hset(f"{unique}:_fleet:consumers", rt, orjson.dumps(definition(rt, rt)))
        line = await read_line(proc)
        assert (line["consumer_id"], line["kafka_topic"], line["state"]) == (rt, rt, "stopped")
    finally:
        proc.kill()
        proc.wait(10)


async def test_api_reads_and_peeks_a_runtime_consumer(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    """The API follows the engine's consumers, the runtime ones included, even when it was
    started before the engine (as the headless process starts it)."""
    base, rt = f"{unique}-base", f"{unique}-rt"
    await kafka.create_topic(base, 1)
    await kafka.create_topic(rt, 1)
    await kafka.produce(rt, [{"n": i} for i in range(3)], partitions=1)
    await redis_client.hset(f"{unique}:_fleet:consumers", rt, orjson.dumps(definition(rt, rt)))
    api = {"enabled": True, "host": "127.0.0.1", "port": 0, "token": TOKEN}
    path = write_config(
        tmp_path / "kafkaconsole.toml",
        services,
        unique,
        [{"consumer_id": base, "kafka_topic": base}],
        api=api,
    )
    engine = Engine(load_config(path), lease_ms=1500, snapshot_interval=0.2)
    server = await start_api(engine, engine.config)
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        await engine.start()
        assert engine.runtime_consumer_ids == {rt}

        async def counted() -> bool:
            return await count_of(redis_client, unique, rt) == 3

        await wait_for(counted, what="the runtime consumer counting")
        async with session.get(server.url + "/openapi.json") as resp:
            doc = await resp.json()
        async with session.get(f"{server.url}/consumer/info/{rt}") as resp:
            assert resp.status == 200, await resp.text()
            info = await resp.json()
        _response_validator(doc, "/consumer/info/{consumer_id}", "get", 200).validate(info)
        assert info["consumer_id"] == rt and info["window"]["count"] == 3
        assert info["config"]["kafka_topic"] == rt
        async with session.get(server.url + "/consumers") as resp:
            ids = [x["consumer_id"] for x in (await resp.json())["consumers"]]
        assert ids == [base, rt]
        async with session.post(f"{server.url}/consumer/{rt}/trigger") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["window_id"] == 1
        async with session.get(f"{server.url}/consumers/{rt}/events?window=1") as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert sorted(e["value"]["n"] for e in body["events"]) == [0, 1, 2]
        async with session.post(f"{server.url}/consumer/{rt}/pause") as resp:
            assert resp.status == 200, await resp.text()
        assert (await cli_json("info", rt, "--config", str(path)))["state"] == "paused"
    finally:
        await session.close()
        await server()
        await engine.stop()


# ---- alert rules naming a runtime consumer ----------------------------------------------------


def alert_rules(url: str, base: str, rt: str, later: str) -> str:
    return f"""
[monitoring]
sample_interval = 0.2
lagging_intervals = 3
stall_after = 2.0
stuck_after = 2.0
storm_period = 3.0

[[monitoring.alerts]]
name = "rt-paused"
verdict = "paused"
for = 0.3
channel = "webhook"
url = "{url}"
runtime_consumers = ["{rt}", "{later}"]

[[monitoring.alerts]]
name = "base-paused"
verdict = "paused"
for = 0.3
channel = "webhook"
url = "{url}"
consumers = ["{base}"]
"""


async def test_an_alert_rule_naming_a_runtime_consumer_fires_for_it_once_it_runs(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    from tests.helpers import Receiver

    base, rt, later = f"{unique}-base", f"{unique}-rt", f"{unique}-later"
    await kafka.create_topic(base, 1)
    await kafka.create_topic(rt, 1)
    async with Receiver().serving("/alerts") as receiver:
        path = write_config(
            tmp_path / "kafkaconsole.toml",
            services,
            unique,
            [{"consumer_id": base, "kafka_topic": base}],
            extra=alert_rules(receiver.url, base, rt, later),
        )
        c = ("--config", str(path))
        # the rule is in the file before the consumer exists anywhere
        engine = await start_from(path)
        try:
            await wait_live(redis_client, unique, engine)
            spec = write_toml(tmp_path / "rt.toml", definition(rt, rt))
            added = await cli("consumer", "add", "--file", str(spec), *c)
            assert added.exit_code == 0, (added.stdout, added.stderr)
            listed = await cli_json("consumer", "list", *c)
            assert [(x["consumer_id"], x["alerts"]) for x in listed["consumers"]] == [
                (rt, ["rt-paused"])
            ]
            assert listed["alert_notes"] == [
                f"alert 'rt-paused' watches runtime consumer '{later}', which is not defined "
                "(it applies once kafkaconsole consumer add defines it)"
            ]

            paused = await cli("pause", rt, *c)
            assert paused.exit_code == 0, paused.stderr
            body = await receiver.wait("firing", "rt-paused")
            assert body["consumer_id"] == rt and body["verdict"] == "paused"

            async def shown() -> bool:
                local = engine.snapshot().consumer(rt)
                info = await cli_json("info", rt, *c)
                return (
                    local is not None
                    and [a.alert for a in local.alerts] == ["rt-paused"]
                    and [a["alert"] for a in info["alerts"]] == ["rt-paused"]
                )

            await wait_for(shown, what="the alert in the engine's snapshot and in info")
            human = await cli("status", *c)
            assert f"{rt}: alert rt-paused firing since" in human.stdout

            resumed = await cli("resume", rt, *c)
            assert resumed.exit_code == 0, resumed.stderr
            await receiver.wait("resolved", "rt-paused")

            # the rule watches the consumers it names only: pausing the file's consumer fires
            # the file's rule for it, never rt-paused
            assert (await cli("pause", base, *c)).exit_code == 0
            body = await receiver.wait("firing", "base-paused")
            assert body["consumer_id"] == base
            assert await redis_client.exists(f"{unique}:{base}:alert:base-paused") == 1
            assert await redis_client.exists(f"{unique}:{base}:alert:rt-paused") == 0
            assert {b["consumer_id"] for b in receiver.got("firing", "rt-paused")} == {rt}

            # removed while its alert fires: the alert resolves (once), its key goes
            assert (await cli("pause", rt, *c)).exit_code == 0

            async def fired_again() -> bool:
                return len(receiver.got("firing", "rt-paused")) == 2

            await wait_for(fired_again, what="rt-paused firing again")
            removed = await cli("consumer", "remove", rt, *c)
            assert removed.exit_code == 0, (removed.stdout, removed.stderr)

            async def resolved_again() -> bool:
                return len(receiver.got("resolved", "rt-paused")) == 2

            await wait_for(resolved_again, what="rt-paused resolved by the removal")
            last = receiver.got("resolved", "rt-paused")[-1]
            assert last["consumer_id"] == rt and last["message"] == RETIRED
            assert await redis_client.exists(f"{unique}:{rt}:alert:rt-paused") == 0
        finally:
            await engine.stop()
