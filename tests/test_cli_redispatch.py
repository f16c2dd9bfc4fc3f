"""``kafkaconsole history ID --redispatch WINDOW_ID`` against the real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.counting import WindowCounter
from kafkaconsole.engine.keys import ConsumerKeys
from kafkaconsole.engine.records import TriggerReason
from tests.test_cli_control import cli as invoke_async


def write(path: Path, services: EmbeddedServices, prefix: str) -> Path:
    path.write_text(f"""
[redis]
url = "{services.redis_url}"
key_prefix = "{prefix}"

[pipelines.p]
kind = "kafka"
topic = "out"

[[consumers]]
consumer_id = "c1"
kafka_topic = "in"
pipeline_name = "p"
connection_id = "x"
max_event = 10
max_time = 60
""")
    return path


async def test_redispatch_requeues_a_past_window(
    services: EmbeddedServices, redis_client: aredis.Redis, unique: str, tmp_path: Path
) -> None:
    cfg = str(write(tmp_path / "kc.toml", services, unique))
    keys = ConsumerKeys(unique, "c1")
    counter = WindowCounter(redis_client, keys, max_event=10)
    closed = await counter.close(TriggerReason.MANUAL)
    assert closed.window_id == 1
    # as if dispatched and failed: the dispatch queue is empty, the run failed
    await redis_client.delete(keys.dispatch)
    await redis_client.hset(keys.runs, "1", json.dumps({"status": "failed"}))

    res = await invoke_async("history", "c1", "--redispatch", "1", "--config", cfg)
    assert res.exit_code == 0, res.output
    assert "window 1 of c1 queued" in res.stdout
    entries = await redis_client.xrange(keys.dispatch)
    assert [int(f[b"window_id"]) for _, f in entries] == [1]
    run = json.loads(await redis_client.hget(keys.runs, "1"))
    assert run["status"] == "queued"

    again = await invoke_async("history", "c1", "--redispatch", "1", "--config", cfg)
    assert again.exit_code == 1 and again.stderr.startswith("error: ")
    unknown = await invoke_async("history", "c1", "--redispatch", "99", "--config", cfg)
    assert unknown.exit_code == 1 and "99" in unknown.stderr
    listed = await invoke_async("history", "c1", "--json", "--config", cfg)
    assert json.loads(listed.stdout)[0]["status"] == "queued"
