"""``kafkaconsole run`` and ``kafkaconsole demo``: start the engine with a face.

``run --no-ui`` is the headless process for containers (no Textual import at all); without
``--no-ui`` the Textual console embeds the engine. ``demo`` starts its own broker, Redis,
webhook receiver and event stream, then runs the same engine on a demo config.

``--read-only`` (both commands) sets ``[ui] read_only = true`` on the loaded config, so the
console, the engine and the HTTP API all refuse pause, resume, reset and trigger.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, cast

import typer

from kafkaconsole.cli.config_cmd import ExitCode, _load
from kafkaconsole.config import AppConfig, load_config, secret_values
from kafkaconsole.logs import setup_logging

log = logging.getLogger("kafkaconsole.cli")

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
    typer.Option("--no-ui", help="Run headless: logs on stderr, no terminal UI (for containers)."),
]
LogFormatOpt = Annotated[
    str, typer.Option("--log-format", help="Headless log lines: text or json.")
]
ThemeOpt = Annotated[
    str | None,
    typer.Option(
        "--theme",
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
        help="Watch only: the console, the engine and the HTTP API refuse pause, resume, reset "
        "and trigger (as with [ui] read_only = true).",
    ),
]
WaitTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--wait-timeout",
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
        help="Name of this instance in the fleet (default: hostname-pid).",
        show_default=False,
    ),
]


def _check_log_format(value: str) -> str:
    if value not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    return value


def run_headless_cli(
    config: AppConfig,
    log_format: str,
    instance_id: str | None,
    wait_timeout: float | None = None,
) -> int:
    from kafkaconsole.headless import run_headless

    setup_logging(log_format, secrets=secret_values(config))
    return run_headless(config, instance_id=instance_id, wait_timeout=wait_timeout)


def run(
    config: ConfigOpt = None,
    no_ui: NoUiOpt = False,
    log_format: LogFormatOpt = "text",
    instance_id: InstanceOpt = None,
    theme: ThemeOpt = None,
    read_only: ReadOnlyOpt = False,
    wait_timeout: WaitTimeoutOpt = None,
) -> None:
    """Run every consumer of the config until interrupted.

    Without --no-ui the terminal console opens, with the engine running inside it
    (q stops the engine gracefully, then exits).

    Example: kafkaconsole run --config kafkaconsole.toml --no-ui --log-format json
    """
    _check_log_format(log_format)
    cfg = _load(None, config)
    if read_only:
        cfg = cfg.with_read_only()
    if no_ui:
        raise typer.Exit(run_headless_cli(cfg, log_format, instance_id, wait_timeout))
    from kafkaconsole.tui.app import run_tui

    raise typer.Exit(run_tui(cfg, instance_id=instance_id, theme=theme, wait_timeout=wait_timeout))


def demo(
    no_ui: NoUiOpt = False,
    log_format: LogFormatOpt = "text",
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
            help="Broker to start: tansu (no set-up) or apache (Apache Kafka; needs Java, "
            "and Maven the first time to fetch its jars)."
        ),
    ] = "tansu",
) -> None:
    """Start a broker, Redis and a demo stream, then run the console on them.

    Example: kafkaconsole demo            (Ctrl-C or q stops everything it started)
    """
    _check_log_format(log_format)
    from kafkaconsole.demo import demo_environment
    from kafkaconsole.embedded import (
        BROKER_KINDS,
        BrokerKind,
        EmbeddedError,
        apache_unavailable,
    )

    if broker not in BROKER_KINDS:
        raise typer.BadParameter(
            f"{broker!r}: choose {' or '.join(BROKER_KINDS)}", param_hint="--broker"
        )
    if broker == "apache" and (reason := apache_unavailable()):
        sys.stderr.write(f"kafkaconsole demo --broker apache: {reason}\n")
        raise typer.Exit(ExitCode.FAILURE)

    async def main() -> int:
        async with demo_environment(workdir, rate=rate, broker=cast(BrokerKind, broker)) as env:
            cfg = load_config(env.config_path)
            if read_only:
                cfg = cfg.with_read_only()
            sys.stderr.write(
                f"kafkaconsole demo: config at {env.config_path}\n"
                f"  try: kafkaconsole status --config {env.config_path}\n"
            )
            if no_ui:
                from kafkaconsole.headless import serve

                setup_logging(log_format)
                return await serve(cfg)
            from kafkaconsole.tui.app import KafkaConsoleApp

            app = KafkaConsoleApp(cfg, theme=theme)
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


__all__ = ["ExitCode", "demo", "run"]
