"""Which configuration values are secrets, and how to mask them.

A value is a secret when it came from ``${VAR}``, when its field is named like a credential
(``password``, ``token``, ...), when it is an Authorization-like HTTP header or command env var,
or when it is the password part of a URL (``redis://user:pw@host``) or a token-like query
parameter. ``config show``, log lines and error messages all mask through this module.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from kafkaconsole.config.errors import dotted_key
from kafkaconsole.config.models import AppConfig

MASK = "******"

SECRET_FIELDS: frozenset[str] = frozenset(
    {"password", "token", "secret", "client_secret", "sasl_password", "sentinel_password"}
)
"""Field names whose value is always a secret, wherever they appear."""

_SECRET_NAME_WORDS = (
    "auth",
    "token",
    "secret",
    "password",
    "passwd",
    "key",
    "signature",
    "cookie",
    "credential",
    "session",
)
"""A header or env var name containing one of these (case-insensitive) holds a secret."""

_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)(?P<secret>[^\s/@]+)(?=@)"
)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:access_token|token|api_key|apikey|key|secret|client_secret|password"
    r"|sig|signature)=)(?P<secret>[^&#\s]+)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """True for header / env var names like ``Authorization``, ``X-Api-Key``, ``DB_PASSWORD``."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_NAME_WORDS)


def _is_secret_location(path: Sequence[str | int]) -> bool:
    if not path or not isinstance(path[-1], str):
        return False
    name = path[-1]
    if name.lower() in SECRET_FIELDS:
        return True
    # pipelines.NAME.headers.<Header> and pipelines.NAME.env.<VAR>
    return (
        len(path) == 4
        and path[0] == "pipelines"
        and path[2] in ("headers", "env")
        and is_secret_name(name)
    )


def _strings_of(value: Any) -> set[str]:
    """Every string form of a secret value (and its percent-decoded form)."""
    if value is None:
        return set()
    if isinstance(value, Mapping):
        return {text for item in value.values() for text in _strings_of(item)}
    if isinstance(value, list | tuple):
        return {text for item in value for text in _strings_of(item)}
    text = value if isinstance(value, str) else str(value)
    return {text, unquote(text)}


def _mask_embedded(text: str, found: set[str]) -> str:
    """Mask URL passwords and token-like query parameters inside a string."""

    def replace(match: re.Match[str]) -> str:
        found.update(_strings_of(match.group("secret")))
        return match.group("head") + MASK

    return _QUERY_SECRET.sub(replace, _URL_PASSWORD.sub(replace, text))


def _walk(
    value: Any, path: tuple[str | int, ...], secret_keys: Collection[str], found: set[str]
) -> Any:
    if (
        path
        and value is not None
        and (_is_secret_location(path) or dotted_key(path) in secret_keys)
    ):
        for text in _strings_of(value):
            found.add(text)
            _mask_embedded(text, found)  # a URL password alone is a secret too
        return MASK
    if isinstance(value, Mapping):
        return {
            key: _walk(item, (*path, str(key)), secret_keys, found) for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_walk(item, (*path, index), secret_keys, found) for index, item in enumerate(value)]
    if isinstance(value, str):
        return _mask_embedded(value, found)
    return value


def mask_data(
    data: Mapping[str, Any], secret_keys: Collection[str] = ()
) -> tuple[dict[str, Any], set[str]]:
    """Mask a raw configuration tree.

    Returns the masked copy and the set of secret strings that were replaced. ``secret_keys``
    are dotted keys whose whole value is a secret (those that came from ``${VAR}``).
    """
    found: set[str] = set()
    masked = _walk(data, (), secret_keys, found)
    found.discard("")
    return masked, found


def mask_config(cfg: AppConfig) -> dict[str, Any]:
    """The configuration as a JSON-able dict with every secret replaced by ``******``."""
    masked, _ = mask_data(cfg.model_dump(mode="json"), cfg._secret_keys)
    return masked


def secret_values(cfg: AppConfig) -> set[str]:
    """Every secret string the configuration holds (never empty strings)."""
    _, found = mask_data(cfg.model_dump(mode="json"), cfg._secret_keys)
    found.update(cfg._resolved_secrets)
    found.discard("")
    return found


@functools.lru_cache(maxsize=32)
def _pattern_for(values: frozenset[str]) -> re.Pattern[str] | None:
    if not values:
        return None
    ordered = sorted(values, key=lambda text: (-len(text), text))
    return re.compile("|".join(re.escape(text) for text in ordered))


def redact(text: str, values: Iterable[str]) -> str:
    """Replace every occurrence of the given secret values (longest first) with ``******``,
    and any URL password / token-like query parameter."""
    pattern = _pattern_for(frozenset(value for value in values if value))
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _mask_embedded(text, set())


def mask_text(text: str, cfg: AppConfig) -> str:
    """Mask every secret of ``cfg`` in a log line or error message."""
    return redact(text, secret_values(cfg))


def masker(cfg: AppConfig) -> Callable[[str], str]:
    """A function masking every secret of ``cfg`` (and any URL password or token-like query
    parameter) in a text; the secret values are computed once."""
    values = frozenset(secret_values(cfg))

    # the same short strings (field names, states, topics) come by hundreds a second in fleet
    # reads: their masked form is kept (a bounded cache; long texts are masked each time)
    @functools.lru_cache(maxsize=4096)
    def cached(text: str) -> str:
        return redact(text, values)

    def mask(text: str) -> str:
        return cached(text) if len(text) <= 256 else redact(text, values)

    return mask


def mask_strings(data: Any, mask: Callable[[str], str]) -> Any:
    """A copy of a JSON-like document with ``mask`` applied to every string (keys included)."""
    if isinstance(data, str):
        return mask(data)
    if isinstance(data, Mapping):
        return {
            (mask(key) if isinstance(key, str) else key): mask_strings(item, mask)
            for key, item in data.items()
        }
    if isinstance(data, list | tuple):
        return [mask_strings(item, mask) for item in data]
    return data
