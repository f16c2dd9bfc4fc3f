"""``kafkaconsole audit``: the fleet's control actions, newest first, from every face.

Reads the capped stream ``<key_prefix>:_fleet:audit`` (see :mod:`kafkaconsole.engine.audit`):
who (user and instance), through which face (cli, api, tui), what (action and consumer), when
(Redis server time) and the result. Secrets are masked. Exit codes: 0 ok, 1 Redis unreachable
or refusing, 2 usage or configuration error.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kafkaconsole.cli.control_cmd import ConfigOpt, JsonOpt, _with_fleet, fleet_config
from kafkaconsole.cli.output import Output, table
from kafkaconsole.engine.fleet import Fleet

LimitOpt = Annotated[
    int, typer.Option("--limit", "-n", min=1, max=10_000, help="How many entries (newest first).")
]


def _audit_text(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no control action recorded yet"
    rows = [
        [
            e["at"],
            e["via"],
            e["user"],
            e["instance"],
            e["action"],
            e["consumer_id"],
            e["result"],
            e["detail"] or None,
        ]
        for e in entries
    ]
    return table(
        ["TIME", "VIA", "USER", "INSTANCE", "ACTION", "CONSUMER", "RESULT", "DETAIL"], rows
    )


def audit(limit: LimitOpt = 50, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the fleet's control actions (pause, resume, reset, trigger), newest first.

    Every face records them: the CLI, the HTTP API and the terminal console, with who (user
    and instance), when (Redis time), what and the result. --json prints a list of entries
    with id, at, via, user, instance, action, consumer_id, result and detail.

    Example:

        kafkaconsole audit --limit 20

        kafkaconsole audit --json | jq '.[] | select(.via == "api")'
    """
    cfg = fleet_config(config)

    async def action(fleet: Fleet) -> list[dict[str, Any]]:
        return await fleet.audit.entries(limit)

    Output(as_json).emit(_with_fleet(cfg, action, runtime=False), _audit_text)


__all__ = ["audit"]
