"""The ``kafkaconsole`` command: one typer app, subcommands registered from their modules.

stdout is data, stderr is diagnostics; exit codes 0 ok, 1 failure, 2 usage or config error.
Help is plain text (``rich_markup_mode=None``): what the source says is what ``--help`` shows,
square brackets (``[[consumers]]``, ``[ui]``) included.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from kafkaconsole.cli import (
    audit_cmd,
    consumer_cmd,
    control_cmd,
    peek_cmd,
    reload_cmd,
    run_cmd,
    seek_cmd,
)
from kafkaconsole.cli.config_cmd import config_app


def package_version() -> str:
    """The installed distribution's version."""
    try:
        return version("kafkaconsole")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


app = typer.Typer(
    name="kafkaconsole",
    help="Run, watch and steer Kafka consumers that count events in Redis and trigger pipelines.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"kafkaconsole {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version_: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Run, watch and steer Kafka consumers that count events in Redis and trigger pipelines.

    Shell completion: kafkaconsole --install-completion (bash, zsh, fish, PowerShell).
    """


app.command("run")(run_cmd.run)
app.command("demo")(run_cmd.demo)
control_cmd.register(app)
peek_cmd.register(app)
seek_cmd.register(app)
reload_cmd.register(app)
consumer_cmd.register(app)
app.command("audit")(audit_cmd.audit)
app.add_typer(config_app, name="config")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
