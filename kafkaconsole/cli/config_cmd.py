"""``kafkaconsole config validate|show|init``: check a configuration file, print the effective
one, write the sample one.

stdout is data (``ok``, or the configuration), stderr is diagnostics (one problem per line as
``FILE: dotted.key: message``). Exit codes: 0 ok, 1 unexpected failure, 2 configuration or
usage error. Secrets never reach either stream: ``show`` masks them and problems never
contain them.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from importlib.resources import files
from typing import Annotated, Any

import typer

from kafkaconsole.cli.output import ExitCode
from kafkaconsole.config import (
    AppConfig,
    ConfigError,
    load_config,
    mask_config,
    resolve_config_path,
)
from kafkaconsole.engine.runtime_consumers import RUNTIME_MARK

DEBUG_ENV = "KAFKACONSOLE_DEBUG"
"""Set to 1 to let unexpected errors raise with a traceback."""

config_app = typer.Typer(
    name="config",
    help="Check the configuration file, show the effective configuration, write a sample one.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

FileArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="FILE",
        help="Configuration file (default: --config, $KAFKACONSOLE_CONFIG, ./kafkaconsole.toml).",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Configuration file (same as the FILE argument).",
        show_default=False,
    ),
]


def _chosen_file(file: str | None, config: str | None) -> str | None:
    if file and config and file != config:
        typer.echo(
            f"error: two configuration files given ({file} and --config {config}); give one",
            err=True,
        )
        raise typer.Exit(ExitCode.CONFIG_ERROR)
    return file or config


def _load(file: str | None, config: str | None) -> AppConfig:
    """Load the configuration or exit: problems to stderr with exit 2, never a traceback."""
    chosen = _chosen_file(file, config)
    try:
        return load_config(chosen)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(ExitCode.CONFIG_ERROR) from None
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        # The exception text could quote a secret, so only its type is shown.
        typer.echo(
            f"{resolve_config_path(chosen)}: (internal): unexpected {type(exc).__name__} while "
            f"loading the configuration (set {DEBUG_ENV}=1 for a traceback)",
            err=True,
        )
        raise typer.Exit(ExitCode.FAILURE) from None


@config_app.command("validate")
def validate(file: FileArgument = None, config: ConfigOption = None) -> None:
    """Check a configuration file: print "ok", or every problem (exit 2).

    Problems go to stderr, one per line, as FILE: dotted.key: message. ${VAR} references
    and KAFKACONSOLE_<SECTION>__<KEY> overrides are applied first, as at run time.

    Example:

        kafkaconsole config validate kafkaconsole.toml

        KAFKACONSOLE_API__PORT=8001 kafkaconsole config validate --config prod.toml
    """
    _load(file, config)
    typer.echo("ok")


@config_app.command("show")
def show(
    file: FileArgument = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML.")] = False,
    runtime: Annotated[
        bool,
        typer.Option(
            "--runtime",
            help="Add the consumers defined at runtime (read from Redis), each marked.",
        ),
    ] = False,
) -> None:
    """Print the effective configuration (file + env overrides), secrets masked.

    Every key is shown with its value, defaults included; every secret is printed as ******.
    With --runtime, the consumers defined at runtime (kafkaconsole consumer add) follow the
    file's, each under a "# defined at runtime" comment; a definition that clashes with a
    file consumer (the file's wins) is reported as a comment (JSON: runtime_consumers,
    runtime_notes).

    Example:

        kafkaconsole config show kafkaconsole.toml

        kafkaconsole config show --config prod.toml --json | jq .consumers
    """
    cfg = _load(file, config)
    runtime_ids: frozenset[str] = frozenset()
    notes: list[str] = []
    if runtime:
        from kafkaconsole.cli.consumer_cmd import runtime_definitions
        from kafkaconsole.engine.runtime_consumers import merge_runtime

        merge = merge_runtime(cfg, runtime_definitions(cfg))
        cfg, runtime_ids, notes = merge.config, frozenset(merge.runtime_ids), merge.notes()
    masked = mask_config(cfg)
    if as_json:
        if runtime:
            masked = {**masked, "runtime_consumers": sorted(runtime_ids), "runtime_notes": notes}
        typer.echo(json.dumps(_json_safe(masked), indent=2, ensure_ascii=False))
    else:
        chosen = resolve_config_path(_chosen_file(file, config))
        typer.echo(f"# effective configuration of {chosen} (secrets masked)\n")
        typer.echo(to_toml(masked, runtime_ids), nl=False)
        for note in notes:
            typer.echo(f"# {note}")


def sample_config_text() -> str:
    """The sample configuration shipped in the package (every key with a comment)."""
    return files("kafkaconsole").joinpath("sample_config.toml").read_text(encoding="utf-8")


@config_app.command("init")
def init(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="Where to write it (- for stdout).",
        ),
    ] = "kafkaconsole.toml",
) -> None:
    """Write the sample configuration (every key, with a comment) to FILE, never over a file.

    An existing FILE is left as it is (exit 1). Edit the result, then check it with
    kafkaconsole config validate.

    Example:

        kafkaconsole config init

        kafkaconsole config init prod.toml && kafkaconsole config validate prod.toml
    """
    text = sample_config_text()
    if file == "-":
        sys.stdout.write(text)
        return
    try:
        with open(file, "x", encoding="utf-8") as out:
            out.write(text)
    except FileExistsError:
        typer.echo(
            f"{file}: already exists; not overwritten (remove it or name another file)", err=True
        )
        raise typer.Exit(ExitCode.FAILURE) from None
    except OSError as exc:
        typer.echo(f"{file}: cannot be written ({exc.strerror or type(exc).__name__})", err=True)
        raise typer.Exit(ExitCode.FAILURE) from None
    typer.echo(f"wrote {file}", err=True)


# -- output ----------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # "${" would be read back as a reference: write the escape the loader understands.
        return json.dumps(value.replace("${", "$${"), ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value if item is not None) + "]"
    if isinstance(value, dict):
        items = [
            f"{_toml_key(str(key))} = {_toml_value(item)}"
            for key, item in value.items()
            if item is not None
        ]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    return json.dumps(str(value))


def _table_body(table: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in table.items():
        if value is None:
            lines.append(f"# {_toml_key(key)} is not set")
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return lines


def to_toml(data: dict[str, Any], runtime_ids: frozenset[str] = frozenset()) -> str:
    """Render a configuration dict as TOML: one table per section, pipeline and consumer;
    tables nested deeper are inline; unset keys are comments; the consumers of
    ``runtime_ids`` are marked as defined at runtime."""
    lines: list[str] = []
    for section, value in data.items():
        if section == "consumers" and isinstance(value, list):
            for consumer in value:
                mark = [RUNTIME_MARK] if consumer.get("consumer_id") in runtime_ids else []
                lines += ["", *mark, "[[consumers]]", *_table_body(consumer)]
        elif section == "pipelines" and isinstance(value, dict):
            if not value:
                lines += ["", "[pipelines]"]
            for name, pipeline in value.items():
                ordered = {"kind": pipeline.get("kind"), **pipeline}
                lines += ["", f"[pipelines.{_toml_key(name)}]", *_table_body(ordered)]
        elif isinstance(value, dict):
            lines += ["", f"[{_toml_key(section)}]", *_table_body(value)]
        else:
            lines.insert(0, f"{_toml_key(section)} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"
