"""Kafka and Redis client settings built from the config, in one place."""

from __future__ import annotations

import ssl
from typing import Any

from redis.asyncio import Redis

from kafkaconsole.config.models import KafkaConfig, RedisConfig


def kafka_ssl_context(cfg: KafkaConfig) -> ssl.SSLContext | None:
    if cfg.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=cfg.ssl_cafile)
    ctx.check_hostname = cfg.ssl_check_hostname
    if cfg.ssl_certfile:
        ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    return ctx


def kafka_kwargs(cfg: KafkaConfig) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client the engine creates."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
    }
    ctx = kafka_ssl_context(cfg)
    if ctx is not None:
        kwargs["ssl_context"] = ctx
    if cfg.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = cfg.sasl_mechanism
        kwargs["sasl_plain_username"] = cfg.sasl_username
        kwargs["sasl_plain_password"] = cfg.sasl_password
    return kwargs


def redis_client(cfg: RedisConfig, **extra: Any) -> Redis:
    """An asyncio Redis client for the configured server."""
    kwargs: dict[str, Any] = {"health_check_interval": 10, "socket_connect_timeout": 5}
    if cfg.username:
        kwargs["username"] = cfg.username
    if cfg.password:
        kwargs["password"] = cfg.password
    url = cfg.url
    if cfg.tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://") :]
    if url.startswith("rediss://") and cfg.ssl_ca_certs:
        kwargs["ssl_ca_certs"] = cfg.ssl_ca_certs
    kwargs.update(extra)
    return Redis.from_url(url, **kwargs)
