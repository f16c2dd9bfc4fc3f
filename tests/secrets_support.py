"""Secret sentinels for the "no secret leaks" tests, shared by the CLI/API/headless test and
the TUI capture test (which the TUI owner adds).

Each secret kafkaconsole may hold gets a unique, greppable value. A test puts them in the
environment (``sentinel_env()``), writes a config that takes them as ``${VAR}`` (see
``SENTINEL_VARS``), drives a face, and passes everything the face printed, logged or answered
to :func:`assert_no_sentinel`.

Also a processor "canary": a target that records it was called, to prove that no target named
in event data is ever imported or called.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_RUN = secrets.token_hex(4)

SENTINELS: dict[str, str] = {
    "KAFKA_SASL_PASSWORD": f"kafkaSaslSentinel{_RUN}Q1",
    "REDIS_ACL_PASSWORD": f"redisAclSentinel{_RUN}Q2",
    "API_TOKEN": f"apiTokenSentinel{_RUN}Q3xxxxxxxx",
    "PIPE_TOKEN": f"pipeTokenSentinel{_RUN}Q4",
}
"""Environment variable -> unique secret value (alphanumeric: safe in URLs and TOML)."""

SENTINEL_VARS = tuple(SENTINELS)

CANARY_ENV = "KAFKACONSOLE_TEST_CANARY_FILE"
"""File the canary processor appends to when (wrongly) called."""


def sentinel_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) plus every sentinel variable."""
    return {**(os.environ if base is None else base), **SENTINELS}


def sentinel_hits(text: str, values: Iterable[str] | None = None) -> list[str]:
    """The sentinels (or any fragment of 12+ characters of one) found in ``text``."""
    found = []
    for value in values if values is not None else SENTINELS.values():
        fragments = {value} | {value[i : i + 12] for i in range(0, len(value) - 11, 4)}
        if any(fragment in text for fragment in fragments):
            found.append(value)
    return found


def assert_no_sentinel(text: str, where: str = "output") -> None:
    """Fail, naming the place and quoting the line, if any sentinel appears in ``text``."""
    hits = sentinel_hits(text)
    if hits:
        lines = [line for line in text.splitlines() if any(h[:12] in line for h in hits)]
        raise AssertionError(f"secret sentinel leaked in {where}: {lines[:5]}")


def assert_no_sentinel_in(items: Mapping[str, str | bytes | Path]) -> None:
    """:func:`assert_no_sentinel` over several named outputs (strings, bytes or files)."""
    for where, item in items.items():
        if isinstance(item, Path):
            text = item.read_text(errors="replace") if item.exists() else ""
        elif isinstance(item, bytes):
            text = item.decode(errors="replace")
        else:
            text = item
        assert_no_sentinel(text, where)


def masked_count(text: str) -> int:
    """How many ``******`` masks a text holds (to check that masking did happen)."""
    return len(re.findall(r"\*{6}", text))


# -- a config that holds every sentinel ---------------------------------------------------------


async def make_acl_user(admin: Any, prefix: str, password: str) -> str:
    """A Redis ACL user with exactly the documented permissions on ``prefix`` (README
    Security); ``admin`` is a redis.asyncio client with ACL rights. Returns its name."""
    from kafkaconsole.engine.clients import redis_acl_line

    user = f"kc{secrets.token_hex(4)}"
    line = redis_acl_line(prefix, user).replace(">PASSWORD", f">{password}")
    await admin.execute_command(*line.split())
    return user


def sentinel_config(
    path: Path,
    *,
    bootstrap: str,
    redis_host_port: str,
    redis_user: str,
    prefix: str,
    topic: str,
    consumer_id: str,
    hook_url: str,
    api_port: int,
    kafka: str = "",
) -> Path:
    """A config taking every sentinel as ``${VAR}``: the Redis ACL password (in the URL),
    the API token, and a pipeline's ``Authorization = "Bearer ${PIPE_TOKEN}"`` header.
    ``kafka`` adds lines to [kafka] (e.g. SASL with ``${KAFKA_SASL_PASSWORD}``)."""
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "{bootstrap}"
session_timeout_ms = 6000
heartbeat_interval_ms = 500
{kafka}

[redis]
url = "redis://{redis_user}:${{REDIS_ACL_PASSWORD}}@{redis_host_port}/0"
key_prefix = "{prefix}"

[api]
enabled = true
port = {api_port}
token = "${{API_TOKEN}}"

[pipelines.hook]
kind = "http"
url = "{hook_url}"
headers = {{ Authorization = "Bearer ${{PIPE_TOKEN}}" }}
retry_policy = {{ max_attempts = 2, initial_backoff = 0.05 }}

[[consumers]]
consumer_id = "{consumer_id}"
kafka_topic = "{topic}"
pipeline_name = "hook"
connection_id = "conn-1"
max_event = 3
max_time = 3600
poll_timeout = 0.2
"""
    )
    return path


# -- processor canary --------------------------------------------------------------------------


def canary(event: Any) -> Any:
    """A processor that must never run unless the operator configured it: records the call."""
    path = os.environ.get(CANARY_ENV)
    if path:
        with open(path, "a") as f:
            f.write("called\n")
    return event


def passthrough(event: Any) -> Any:
    """A configured processor that keeps every event as it is."""
    return event
