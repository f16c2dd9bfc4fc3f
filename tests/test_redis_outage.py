"""Redis unreachable: the engine waits for it (no busy loop, no crash) and resumes by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices, start_redis
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for


async def test_engine_idles_while_redis_is_down_and_resumes(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str, tmp_path: Path
) -> None:
    aof = ["--appendonly", "yes"]
    own = start_redis(extra_args=aof, workdir=tmp_path)
    url = f"redis://127.0.0.1:{own.port}/0"
    await kafka.create_topic(unique, 2)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}],
        redis={"url": url},
    )
    try:
        async with running_engine(cfg):
            r = aredis.from_url(url)

            async def counted(n: int) -> bool:
                try:
                    return int(await r.get(f"{unique}:{cid}:events") or 0) == n
                except (OSError, aredis.ConnectionError):
                    return False

            try:
                await kafka.produce(unique, ({"i": i} for i in range(50)), partitions=2)
                await wait_for(lambda: counted(50), 30, what="50 counted")
                own.stop()
                await kafka.produce(unique, ({"i": i} for i in range(50, 80)), partitions=2)
                await asyncio.sleep(1.0)  # every loop has met the outage by now
                cpu0, t0 = time.process_time(), time.monotonic()
                await asyncio.sleep(3.0)
                cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
                assert cpu < 0.25, f"{cpu:.0%} of a core while Redis is down"
                own = start_redis(own.port, extra_args=aof, workdir=tmp_path)
                await wait_for(lambda: counted(80), 30, what="counting after Redis came back")
            finally:
                await r.aclose()
    finally:
        own.stop()
