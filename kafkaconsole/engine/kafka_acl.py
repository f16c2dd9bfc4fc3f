"""What Kafka's authorizer refused, in one line that names the permission to grant.

A consumer needs READ on its group and READ and DESCRIBE on its topics; its DLQ needs WRITE,
DESCRIBE and CREATE (README, "Kafka ACLs"). A refusal is not an outage: the consumer says which
permission is missing, shows the error state, and tries again every
:data:`ACL_RETRY_S` seconds, so granting the ACL is enough (no restart).
"""

from __future__ import annotations

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)

from kafkaconsole.config.models import KafkaConfig

#: How often a consumer refused by an ACL tries again.
ACL_RETRY_S = 5.0

AUTHORIZATION_ERRORS = (
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


def principal_of(cfg: KafkaConfig) -> str:
    """Who the brokers see: the SASL user, the client certificate, or an anonymous client."""
    if cfg.security_protocol.startswith("SASL") and cfg.sasl_username:
        return f"User:{cfg.sasl_username}"
    if cfg.ssl_certfile:
        return f"the principal of the client certificate {cfg.ssl_certfile}"
    return "User:ANONYMOUS"


def _names(exc: BaseException) -> str:
    raw = exc.args[0] if exc.args else ""
    if isinstance(raw, set | frozenset | list | tuple):
        return ", ".join(sorted(str(t) for t in raw))
    return str(raw)


def authorization_message(
    exc: BaseException, group: str, topics: str, cfg: KafkaConfig
) -> str | None:
    """One line naming the refused permission, or None when ``exc`` is not a refusal."""
    who = principal_of(cfg)
    if isinstance(exc, GroupAuthorizationFailedError):
        return (
            f"Kafka refused READ on group {group!r} to {who}: grant it (README, Kafka ACLs); "
            f"retrying every {ACL_RETRY_S:.0f}s"
        )
    if isinstance(exc, TopicAuthorizationFailedError):
        named = _names(exc) or topics
        return (
            f"Kafka refused READ or DESCRIBE on topic {named} to {who}: grant both (README, "
            f"Kafka ACLs); retrying every {ACL_RETRY_S:.0f}s"
        )
    if isinstance(exc, ClusterAuthorizationFailedError):
        return (
            f"Kafka refused a cluster operation to {who} ({type(exc).__name__}): see README, "
            f"Kafka ACLs; retrying every {ACL_RETRY_S:.0f}s"
        )
    return None


__all__ = ["ACL_RETRY_S", "AUTHORIZATION_ERRORS", "authorization_message", "principal_of"]
