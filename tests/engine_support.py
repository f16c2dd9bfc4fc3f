"""Builders for engine tests: a config pointing at the session's broker and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.engine import Engine


def make_config(
    services: EmbeddedServices,
    prefix: str,
    consumers: list[dict[str, Any]],
    pipelines: dict[str, dict[str, Any]] | None = None,
    **sections: Any,
) -> AppConfig:
    pipelines = pipelines or {
        "record": {
            "kind": "python",
            "target": "tests.pipeline_targets:record",
            "retry_policy": {"max_attempts": 3, "initial_backoff": 0.01},
        },
    }
    base: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": services.bootstrap_servers,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
            **sections.pop("kafka", {}),
        },
        "redis": {"url": services.redis_url, "key_prefix": prefix, **sections.pop("redis", {})},
        "api": {"enabled": False},
        "pipelines": pipelines,
        "consumers": [
            {
                "pipeline_name": next(iter(pipelines)),
                "connection_id": "conn-1",
                "max_time": 3600,
                "poll_timeout": 0.2,
                **c,
            }
            for c in consumers
        ],
        **sections,
    }
    return AppConfig.model_validate(base)


def fleet_config(n: int) -> AppConfig:
    """A config of ``n`` consumers of one topic (nothing started from it)."""
    consumers = [
        {
            "consumer_id": f"c{i}",
            "kafka_topic": "t",
            "pipeline_name": "p",
            "connection_id": "x",
            "max_event": 10,
            "max_time": 60,
        }
        for i in range(n)
    ]
    return AppConfig.model_validate(
        {
            "kafka": {},
            "pipelines": {"p": {"kind": "python", "target": "tests.pipeline_targets:record"}},
            "consumers": consumers,
            "monitoring": {"sample_interval": 0.3},
        }
    )


async def start_engine(cfg: AppConfig, snapshot_interval: float = 0.2) -> Engine:
    """An engine of ``cfg``, started, with a short dispatch lease and frequent snapshots."""
    engine = Engine(cfg, lease_ms=1500, snapshot_interval=snapshot_interval)
    await engine.start()
    return engine


@asynccontextmanager
async def running_engine(cfg: AppConfig, snapshot_interval: float = 0.2) -> AsyncIterator[Engine]:
    """:func:`start_engine`, stopped again on the way out (whatever the test raised)."""
    engine = await start_engine(cfg, snapshot_interval)
    try:
        yield engine
    finally:
        await engine.stop()
