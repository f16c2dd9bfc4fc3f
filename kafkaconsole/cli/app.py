"""The ``kafkaconsole`` command: one typer app, subcommands registered from their modules.

stdout is data, stderr is diagnostics; exit codes 0 ok, 1 failure, 2 usage or config error.
"""

from __future__ import annotations

import typer

from kafkaconsole.cli import audit_cmd, control_cmd, run_cmd
from kafkaconsole.cli.config_cmd import config_app

app = typer.Typer(
    name="kafkaconsole",
    help="Run, watch and steer Kafka consumers that count events in Redis and trigger pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_cmd.run)
app.command("demo")(run_cmd.demo)
control_cmd.register(app)
app.command("audit")(audit_cmd.audit)
app.add_typer(config_app, name="config")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
