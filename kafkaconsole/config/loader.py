"""Load the TOML configuration: file, ``${VAR}`` secrets, env overrides, validation.

The steps, in order:

1. read the file with :mod:`tomllib` (``(file)`` / ``(toml)`` problems stop here);
2. resolve ``${VAR}`` in every string from the environment (``$${`` is a literal ``${``);
3. apply ``KAFKACONSOLE_<SECTION>__<KEY>`` overrides (values parsed as TOML when they can be);
4. validate with the pydantic model, turning every error into ``FILE: dotted.key: message``;
5. cross-check what one model cannot see (duplicate consumer ids, unknown pipeline names).

Every problem from steps 2-5 is collected and raised together as one :class:`ConfigError`.
Messages are built without input values, and are redacted against every known secret anyway.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from kafkaconsole.config.errors import ConfigError, ConfigProblem, dotted_key
from kafkaconsole.config.models import (
    CONSUMER_ID_PATTERN,
    TARGET_PATTERN,
    AppConfig,
    ConsumerConfig,
    PipelineConfig,
)
from kafkaconsole.config.secrets import mask_data, redact

ENV_PREFIX = "KAFKACONSOLE_"
"""Prefix of override variables: ``KAFKACONSOLE_<SECTION>__<KEY>``."""
CONFIG_ENV = "KAFKACONSOLE_CONFIG"
"""Environment variable naming the configuration file."""
DEFAULT_CONFIG_FILE = "kafkaconsole.toml"
"""Used when neither a path nor ``KAFKACONSOLE_CONFIG`` is given."""

_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}|\$\{")

_PATTERN_MESSAGES: dict[str, str] = {
    TARGET_PATTERN: 'must look like "package.module:function"',
    CONSUMER_ID_PATTERN: (
        "must start with a letter or digit and contain only letters, digits, '.', '_' or '-' "
        "(at most 128 characters)"
    ),
    r"^https?://": "must start with http:// or https://",
    r"^[A-Za-z0-9._-]+$": "may contain only letters, digits, '.', '_' and '-'",
    r"^[A-Za-z0-9_.-]+$": "may contain only letters, digits, '.', '_' and '-'",
}

_TYPE_MESSAGES: dict[str, str] = {
    "missing": "required key is missing",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_parsing_size": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "must be a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "string_unicode": "expected a string",
    "list_type": "expected an array",
    "tuple_type": "expected an array",
    "set_type": "expected an array",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "none_required": "must not be set",
}

# Hints are suggested only when this close (difflib ratio).
_HINT_CUTOFF = 0.6
# The loader's own messages never contain values; redaction of shorter strings would only
# mangle them ("consumers[1]"), so it starts at this length.
_REDACT_MIN_LENGTH = 4


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _handed_out(path: Sequence[str | int]) -> bool:
    """Whether ``path`` is in (or is) a table of values handed to the outside as they are:
    a pipeline's ``env`` or ``headers``, an alert rule's ``headers``."""
    return any(part in ("env", "headers") for part in path[2:]) and path[0] in (
        "pipelines",
        "monitoring",
    )


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``| None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return [member for member in get_args(annotation) if _is_model(member)]
    return []


def _kind_of(model: type[BaseModel]) -> tuple[Any, ...]:
    field = model.model_fields.get("kind")
    return get_args(field.annotation) if field is not None else ()


PIPELINE_KINDS: tuple[str, ...] = tuple(
    sorted(str(kind) for member in _union_members(PipelineConfig) for kind in _kind_of(member))
)
"""Every pipeline ``kind``, sorted."""


def _concrete(annotation: Any, node: Any) -> Any:
    """Pick the member of a discriminated union that ``node`` (raw data) selects by ``kind``."""
    members = _union_members(annotation)
    if not members:
        return _unwrap(annotation)
    kind = node.get("kind") if isinstance(node, Mapping) else None
    for member in members:
        if kind in _kind_of(member):
            return member
    return None


def _child(node: Any, part: str | int) -> Any:
    if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
        return node[part]
    if isinstance(part, str) and isinstance(node, Mapping):
        return node.get(part)
    return None


def _locate(path: Sequence[str | int], data: Any) -> tuple[Any, Any]:
    """The annotation of the value at ``path`` and its raw data (None when unknown)."""
    annotation: Any = AppConfig
    node = data
    for part in path:
        current = _concrete(annotation, node)
        if _is_model(current):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None, None
            annotation = field.annotation
        elif get_origin(current) is dict:
            annotation = get_args(current)[1]
        elif get_origin(current) is list:
            annotation = get_args(current)[0]
        else:
            return None, None
        node = _child(node, part)
    return annotation, node


def _model_at(path: Sequence[str | int], data: Any) -> type[BaseModel] | None:
    annotation, node = _locate(path, data)
    if annotation is None:
        return None
    model = _concrete(annotation, node)
    return model if _is_model(model) else None


def _wants_text(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    if annotation is str:
        return True
    if get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in get_args(annotation))
    return False


def _close_match(word: str, choices: Sequence[str]) -> str | None:
    lowered = {choice.lower(): choice for choice in choices}
    matches = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=_HINT_CUTOFF)
    return lowered[matches[0]] if matches else None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    match = _close_match(word, choices)
    return f" (did you mean '{match}'?)" if match else ""


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def resolve_config_path(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> Path:
    """The configuration file: ``path`` if given, else ``$KAFKACONSOLE_CONFIG``, else
    ``./kafkaconsole.toml``."""
    environ = os.environ if env is None else env
    if path:
        return Path(path).expanduser()
    from_env = environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return Path(DEFAULT_CONFIG_FILE)


def read_toml(path: Path, file: str | None = None) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is a :class:`ConfigError`."""
    name = str(path) if file is None else file

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError([ConfigProblem(name, key, message)])

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail("(file)", "not found") from None
    except IsADirectoryError:
        raise fail("(file)", "is a directory, not a file") from None
    except PermissionError:
        raise fail("(file)", "cannot be read (permission denied)") from None
    except OSError as exc:
        raise fail("(file)", f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail("(toml)", f"not valid UTF-8 text (at byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail("(toml)", str(exc)) from None


def load_config(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> AppConfig:
    """Load, resolve, override and validate the configuration.

    ``path`` defaults as in :func:`resolve_config_path`; ``env`` (default ``os.environ``)
    provides ``${VAR}`` values and ``KAFKACONSOLE_<SECTION>__<KEY>`` overrides.
    Raises :class:`ConfigError` listing every problem found.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    file_path = resolve_config_path(path, env=environ)
    file = str(file_path)
    raw = read_toml(file_path, file)
    config = _Loader(file, environ).load(raw)
    config._source_file = str(file_path.absolute())
    return config


class _Loader:
    """One load: collects problems and remembers where secrets came from."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.problems: list[tuple[str, str]] = []
        self.secret_keys: set[str] = set()
        self.resolved: set[str] = set()
        self.unresolved: set[str] = set()
        self.origins: dict[str, str] = {}

    def problem(self, key: str, message: str) -> None:
        self.problems.append((key, message))

    def is_unresolved(self, key: str) -> bool:
        """True when ``key`` (or a key inside it) holds a ``${VAR}`` that failed to resolve."""
        return any(key == bad or key.startswith((bad + ".", bad + "[")) for bad in self.unresolved)

    # -- the steps ------------------------------------------------------------------------

    def load(self, raw: dict[str, Any]) -> AppConfig:
        data = self.resolve(raw, ())
        self.apply_overrides(data)
        self.reject_booleans_as_numbers(data)
        config: AppConfig | None = None
        try:
            config = AppConfig.model_validate(data)
        except ValidationError as exc:
            self.convert(exc, data)
        self.cross_check(data)
        if self.problems or config is None:
            raise self.error(data)
        config._secret_keys = frozenset(self.secret_keys)
        config._resolved_secrets = frozenset(value for value in self.resolved if value)
        return config

    def error(self, data: dict[str, Any]) -> ConfigError:
        _, found = mask_data(data, self.secret_keys)
        secrets = {value for value in found | self.resolved if len(value) >= _REDACT_MIN_LENGTH}
        problems: list[ConfigProblem] = []
        for key, message in self.problems:
            problem = ConfigProblem(self.file, key, redact(message, secrets))
            if problem not in problems:
                problems.append(problem)
        return ConfigError(problems)

    # -- ${VAR} -----------------------------------------------------------------------------

    def resolve(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if isinstance(value, dict):
            return {key: self.resolve(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.resolve(item, (*path, index)) for index, item in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self.substitute(value, dotted_key(path))
        return value

    def substitute(self, text: str, key: str) -> str:
        used = False

        def replace(match: re.Match[str]) -> str:
            nonlocal used
            token = match.group(0)
            if token == "$${":
                return "${"
            name = match.group("name")
            if name is None:
                self.problem(
                    key, "malformed ${...} reference: write ${NAME}, or $${ for a literal ${"
                )
                self.unresolved.add(key)
                return token
            if name not in self.env:
                self.problem(key, f"environment variable {name} is not set")
                self.unresolved.add(key)
                return token
            used = True
            self.resolved.add(self.env[name])
            return self.env[name]

        result = _REFERENCE.sub(replace, text)
        if used:
            self.secret_keys.add(key)
        return result

    # -- KAFKACONSOLE_<SECTION>__<KEY> ------------------------------------------------------

    def apply_overrides(self, data: dict[str, Any]) -> None:
        for name in sorted(self.env):
            if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
                continue
            self.apply_override(name, self.env[name], data)

    def apply_override(self, name: str, raw: str, data: dict[str, Any]) -> None:
        parts = name[len(ENV_PREFIX) :].split("__")
        setby = f"set by environment variable {name}"
        if not all(parts):
            self.problem(
                "(env)",
                f"{name}: malformed override; expected {ENV_PREFIX}<SECTION>__<KEY>",
            )
            return
        section = parts[0].lower()
        path: list[str | int] = []
        node: Any = data
        rest = parts
        if section in ("consumers", "pipelines"):
            if len(parts) < 3:
                what = "ID" if section == "consumers" else "NAME"
                self.problem(
                    section,
                    f"override must name an entry and a key "
                    f"({ENV_PREFIX}{section.upper()}__<{what}>__<KEY>); {setby}",
                )
                return
            entry = self.override_entry(section, parts[1], data, setby)
            if entry is None:
                return
            path = [section, entry]
            node = _child(data, section)
            node = _child(node, entry)
            rest = parts[2:]
        for index, part in enumerate(rest):
            if not isinstance(node, dict):
                self.problem(dotted_key(path), f"is not a table, so it has no keys; {setby}")
                return
            key = next((existing for existing in node if existing == part), None)
            if key is None:
                key = next(
                    (existing for existing in node if existing.lower() == part.lower()),
                    part.lower(),
                )
            path.append(key)
            if index == len(rest) - 1:
                node[key] = self.parse_override(raw, path, data)
                self.origins[dotted_key(path)] = name
                if _handed_out(path):
                    # a pipeline's env or headers set from the environment: as secret as ${VAR}
                    self.secret_keys.add(dotted_key(path))
                else:
                    self.secret_keys.discard(dotted_key(path))
            else:
                node = node.setdefault(key, {})

    def override_entry(
        self, section: str, selector: str, data: dict[str, Any], setby: str
    ) -> str | int | None:
        entries = data.get(section)
        if section == "pipelines":
            names = list(entries) if isinstance(entries, dict) else []
            for candidate in names:
                if candidate == selector or candidate.lower() == selector.lower():
                    return candidate
            self.problem(
                dotted_key(["pipelines", selector.lower()]),
                f"no pipeline named '{selector.lower()}' in the file"
                f"{_did_you_mean(selector, names)}; {setby}",
            )
            return None
        consumers = entries if isinstance(entries, list) else []
        if selector.isdigit() and int(selector) < len(consumers):
            return int(selector)
        ids = [
            entry.get("consumer_id")
            for entry in consumers
            if isinstance(entry, dict) and isinstance(entry.get("consumer_id"), str)
        ]
        for index, entry in enumerate(consumers):
            consumer_id = entry.get("consumer_id") if isinstance(entry, dict) else None
            if isinstance(consumer_id, str) and consumer_id.lower() == selector.lower():
                return index
        self.problem(
            "consumers",
            f"no consumer '{selector.lower()}' (by consumer_id or index) in the file"
            f"{_did_you_mean(selector, [i for i in ids if i])}; {setby}",
        )
        return None

    def parse_override(self, raw: str, path: Sequence[str | int], data: dict[str, Any]) -> Any:
        """A TOML value when the text is one (``8001`` -> int, ``true`` -> bool), else the
        text; string-typed keys keep the text unless it is a quoted TOML string."""
        if "\n" in raw or "\r" in raw:
            return raw
        try:
            parsed = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            return raw
        if isinstance(parsed, datetime | date | time):
            return raw
        annotation, _ = _locate(path, data)
        if _wants_text(annotation):
            return parsed if isinstance(parsed, str) else raw
        return parsed

    # -- booleans -------------------------------------------------------------------------

    def reject_booleans_as_numbers(self, data: dict[str, Any]) -> None:
        """Numbers are strict: an integer key takes a TOML integer (not ``"100"``, ``100.0``
        or ``true``: pydantic's lax mode would read those as 100 and 1), a number key takes
        an integer or a float, finite (not ``inf``, ``nan``, a string or a boolean). Text from
        ``${VAR}`` is parsed (the environment holds only text). Messages never quote values."""

        def visit(value: Any, path: tuple[str | int, ...]) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    visit(item, (*path, key))
                return
            if isinstance(value, list):
                for index, item in enumerate(value):
                    visit(item, (*path, index))
                return
            annotation = _unwrap(_locate(path, data)[0])
            if annotation not in (int, float):
                return
            key = dotted_key(path)
            if isinstance(value, str) and (key in self.secret_keys or self.is_unresolved(key)):
                return  # text from ${VAR}: the environment only holds text (pydantic parses it)
            if annotation is int and type(value) is not int:
                self.problem(key, self.with_origin(key, "expected an integer"))
            elif annotation is float and type(value) not in (int, float):
                self.problem(key, self.with_origin(key, "expected a number"))
            elif annotation is float and not math.isfinite(value):
                self.problem(key, self.with_origin(key, "expected a finite number"))

        visit(data, ())

    # -- pydantic errors --------------------------------------------------------------------

    def convert(self, exc: ValidationError, data: dict[str, Any]) -> None:
        for error in exc.errors(include_url=False, include_input=False):
            loc: list[str | int] = list(error["loc"])
            self.drop_tag(loc, data)
            kind = error["type"]
            ctx: dict[str, Any] = dict(error.get("ctx") or {})
            if kind in ("union_tag_invalid", "union_tag_not_found"):
                loc.append("kind")
                message = f"kind must be one of: {', '.join(PIPELINE_KINDS)}"
            elif kind in ("value_error", "assertion_error"):
                message = str(ctx.get("error") or error["msg"])
                message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
                model = _model_at(loc, data)
                first = message.split(" ", 1)[0]
                if model is not None and first in model.model_fields:
                    loc.append(first)
            else:
                message = self.message(kind, ctx, error["msg"], loc, data)
            key = dotted_key(loc)
            if self.is_unresolved(key) or any(k == key for k, _ in self.problems):
                continue  # a ${VAR} that failed, or a type already reported for this key
            self.problem(key, self.with_origin(key, message))

    @staticmethod
    def drop_tag(loc: list[str | int], data: dict[str, Any]) -> None:
        """``("pipelines", "x", "http", "url")`` -> ``("pipelines", "x", "url")``."""
        if len(loc) >= 3 and loc[0] == "pipelines":
            entry = _child(_child(data, "pipelines"), loc[1])
            if isinstance(entry, Mapping) and loc[2] == entry.get("kind"):
                del loc[2]

    def message(
        self,
        kind: str,
        ctx: dict[str, Any],
        fallback: str,
        loc: Sequence[str | int],
        data: dict[str, Any],
    ) -> str:
        if kind in _TYPE_MESSAGES:
            return _TYPE_MESSAGES[kind]
        if kind == "extra_forbidden":
            return self.unknown_key(loc, data)
        if kind == "greater_than":
            return f"must be greater than {_number(ctx.get('gt'))}"
        if kind == "greater_than_equal":
            return f"must be at least {_number(ctx.get('ge'))}"
        if kind == "less_than":
            return f"must be less than {_number(ctx.get('lt'))}"
        if kind == "less_than_equal":
            return f"must be at most {_number(ctx.get('le'))}"
        if kind == "string_too_short":
            size = ctx.get("min_length", 1)
            return "must not be empty" if size == 1 else f"must be at least {size} characters"
        if kind == "string_too_long":
            return f"must be at most {ctx.get('max_length')} characters"
        if kind == "too_short":
            size = ctx.get("min_length", 1)
            return f"must have at least {size} item{'s' if size != 1 else ''}"
        if kind == "too_long":
            size = ctx.get("max_length", 0)
            return f"must have at most {size} item{'s' if size != 1 else ''}"
        if kind == "string_pattern_mismatch":
            pattern = str(ctx.get("pattern", ""))
            return _PATTERN_MESSAGES.get(pattern, f"must match the pattern {pattern}")
        if kind == "literal_error":
            annotation, _ = _locate(loc, data)
            annotation = _unwrap(annotation)
            if get_origin(annotation) is Literal:
                choices = [str(arg) for arg in get_args(annotation)]
            else:
                choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
            return f"must be one of: {', '.join(choices)}"
        text = fallback.split(", unable to", 1)[0]
        return text[:1].lower() + text[1:]

    @staticmethod
    def unknown_key(loc: Sequence[str | int], data: dict[str, Any]) -> str:
        name = loc[-1] if loc else ""
        if not isinstance(name, str):
            return "unknown key"
        model = _model_at(loc[:-1], data)
        fields = list(model.model_fields) if model is not None else []
        hint = _did_you_mean(name, fields)
        if hint:
            return f"unknown key{hint}"
        if model is not None and "kind" in model.model_fields:
            owners = [
                kind
                for member in _union_members(PipelineConfig)
                if name in member.model_fields
                for kind in _kind_of(member)
            ]
            if owners:
                return f"unknown key (it is a key of kind {', '.join(sorted(owners))})"
        return "unknown key"

    def with_origin(self, key: str, message: str) -> str:
        for target, name in self.origins.items():
            related = (
                key == target
                or key.startswith((target + ".", target + "["))
                or target.startswith((key + ".", key + "["))
            )
            if related:
                return f"{message}; set by environment variable {name}"
        return message

    # -- checks across sections -------------------------------------------------------------

    def cross_check(self, data: dict[str, Any]) -> None:
        redis = data.get("redis")
        url = redis.get("url") if isinstance(redis, dict) else None
        if (
            isinstance(url, str)
            and not self.is_unresolved("redis.url")
            and not re.match(r"^(redis|rediss|unix)://", url)
        ):
            self.problem(
                "redis.url",
                self.with_origin("redis.url", "must start with redis://, rediss:// or unix://"),
            )
        consumers = data.get("consumers")
        if not isinstance(consumers, list):
            return
        pipelines = data.get("pipelines", {})
        names = list(pipelines) if isinstance(pipelines, dict) else None
        seen: dict[str, int] = {}
        for index, consumer in enumerate(consumers):
            if not isinstance(consumer, dict):
                continue
            consumer_id = consumer.get("consumer_id")
            if isinstance(consumer_id, str) and not self.is_unresolved(
                f"consumers[{index}].consumer_id"
            ):
                if consumer_id in seen:
                    self.problem(
                        f"consumers[{index}].consumer_id",
                        f"duplicate consumer_id '{consumer_id}' "
                        f"(also consumers[{seen[consumer_id]}])",
                    )
                else:
                    seen[consumer_id] = index
            pipeline_name = consumer.get("pipeline_name")
            if (
                isinstance(pipeline_name, str)
                and names is not None
                and pipeline_name not in names
                and not self.is_unresolved(f"consumers[{index}].pipeline_name")
            ):
                hint = _did_you_mean(pipeline_name, names)
                if not hint:
                    hint = (
                        f" (defined: {', '.join(names)})"
                        if names
                        else " (no [pipelines.NAME] table is defined)"
                    )
                self.problem(
                    f"consumers[{index}].pipeline_name",
                    f"no pipeline named '{pipeline_name}'{hint}",
                )


def validate_consumer(raw: Any, config: AppConfig, *, source: str) -> ConsumerConfig:
    """Validate one consumer table defined outside the file (``kafkaconsole consumer add``,
    ``POST /consumers``) with the model and messages of a ``[[consumers]]`` table; its
    ``pipeline_name`` must name a pipeline of ``config``. ``${VAR}`` is not substituted (the
    definition is stored as given) and ``processor`` is refused (no code from outside the
    file). Raises :class:`ConfigError` listing every problem as
    ``SOURCE: key: message``."""
    if not isinstance(raw, dict):
        problem = ConfigProblem(source, "(consumer)", "must be a table of consumer keys")
        raise ConfigError([problem])
    loader = _Loader(source, {})
    if raw.get("processor") is not None:
        loader.problem(
            "consumers[0].processor",
            "not allowed in a consumer defined at runtime (code runs only from the "
            "configuration file)",
        )
    data: dict[str, Any] = {"consumers": [raw]}
    loader.reject_booleans_as_numbers(data)
    validated: AppConfig | None = None
    try:
        validated = AppConfig.model_validate(data)
    except ValidationError as exc:
        loader.convert(exc, data)
    pipelines: dict[str, Any] = {name: {} for name in config.pipelines}
    loader.cross_check({"pipelines": pipelines, "consumers": [raw]})
    if loader.problems or validated is None:
        problems: list[ConfigProblem] = []
        for key, message in loader.problems:
            short = key.removeprefix("consumers[0]").removeprefix(".") or "(consumer)"
            problem = ConfigProblem(source, short, message)
            if problem not in problems:
                problems.append(problem)
        raise ConfigError(problems)
    return validated.consumers[0]
