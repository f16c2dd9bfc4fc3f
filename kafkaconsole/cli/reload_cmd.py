"""``kafkaconsole reload``: every live instance reads its own configuration file again.

The request goes through Redis (the control channel) like the other steering commands; each
instance applies its file live (:meth:`Engine.reload <kafkaconsole.engine.engine.Engine.reload>`)
and stores its result, which this command prints per instance. ``--check`` validates the file
only. Exit codes: 0 every instance applied it, 2 a file is invalid (every problem printed, one
per line, ``FILE: dotted.key: message``), 1 an instance failed, refused or did not answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer

from kafkaconsole.cli.control_cmd import (
    ConfigOpt,
    JsonOpt,
    ReadOnlyOpt,
    _with_fleet,
    _writable,
    fleet_config,
)
from kafkaconsole.cli.output import ExitCode, Output
from kafkaconsole.engine.control import actor
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.reload import ReloadResult, ReloadStatus, reload_results, request_reload

DEFAULT_TIMEOUT_S = 30.0


async def _reload_fleet(fleet: Fleet, timeout: float) -> dict[str, Any]:
    """Ask every live instance to reload; wait for each one's result (at most ``timeout``)."""
    expected = sorted(i["instance_id"] for i in await fleet.instances())
    if not expected:
        return {"request_id": None, "instances": []}
    request_id = await request_reload(
        fleet.redis, fleet.prefix, via="cli", user=actor(), tagged=fleet.tagged
    )
    return await wait_answers(fleet, request_id, expected, timeout)


async def wait_answers(
    fleet: Fleet, request_id: str, expected: list[str], timeout: float
) -> dict[str, Any]:
    """Wait (at most ``timeout``) for every expected instance's answer to a fleet-wide request
    (a reload, or applying the consumers defined at runtime); one row per instance."""
    deadline = time.monotonic() + timeout
    while True:
        results = await reload_results(fleet.redis, fleet.prefix, request_id, fleet.tagged)
        if set(expected) <= set(results) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    rows: list[dict[str, Any]] = []
    for instance in sorted(set(expected) | set(results)):
        result = results.get(instance)
        if result is None:
            rows.append({"instance_id": instance, "status": "no answer", "answered": False})
        else:
            rows.append({**result.to_json_dict(), "instance_id": instance, "answered": True})
    return {"request_id": request_id, "instances": rows}


def _text(data: dict[str, Any], timeout: float) -> str:
    if not data["instances"]:
        return "no live instance: nothing to reload (each instance reads its file when it starts)"
    lines = []
    for row in data["instances"]:
        if not row["answered"]:
            lines.append(f"{row['instance_id']}: no answer within {timeout:g}s")
            continue
        result = ReloadResult.from_json_dict(row)
        lines.append(f"{row['instance_id']}: {result.status}: {result.summary()}")
        lines += [f"  {detail}" for detail in result.details]
    return "\n".join(lines)


def exit_code(rows: list[dict[str, Any]]) -> ExitCode:
    """2 when a file is invalid, else 1 when an instance failed or did not answer, else 0."""
    statuses = [row["status"] for row in rows]
    if ReloadStatus.INVALID in statuses:
        return ExitCode.CONFIG_ERROR
    ok = (ReloadStatus.APPLIED, ReloadStatus.UNCHANGED)
    if any(status not in ok for status in statuses):
        return ExitCode.FAILURE
    return ExitCode.OK


def reload(
    config: ConfigOpt = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only validate the configuration file (exit 0 or 2).")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds to wait for every live instance's answer."),
    ] = DEFAULT_TIMEOUT_S,
    as_json: JsonOpt = False,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Apply a changed configuration file on every live instance, without a restart.

    Each instance reads its own file again (the path it was started with) and applies it:
    consumers added start, removed ones stop gracefully (offsets committed, open window kept),
    changed thresholds apply to the open window, changed pipelines to the next dispatch, other
    consumer changes restart that consumer. Changes to [kafka], [redis], [api], [ui] and
    [monitoring] are reported as needing a restart, not applied. A bad file changes nothing.

    Exit codes: 0 applied everywhere, 2 a file is invalid (every problem printed), 1 an instance
    failed, refused (read-only) or did not answer.

    Example:

        kafkaconsole reload --check --config prod.toml

        kafkaconsole reload --config prod.toml
    """
    cfg = fleet_config(config)  # an invalid file: every problem on stderr, exit 2
    if check:
        Output(as_json).emit(
            {"file": cfg.source_file, "valid": True, "consumers": len(cfg.consumers)},
            lambda d: f"{d['file']}: ok ({d['consumers']} consumer(s))",
        )
        return
    _writable(cfg, "reload", read_only)
    data = _with_fleet(cfg, lambda fleet: _reload_fleet(fleet, timeout), runtime=False)
    Output(as_json).emit(data, lambda d: _text(d, timeout))
    for row in data["instances"]:
        for problem in row.get("problems") or ():
            typer.echo(problem, err=True)
    code = exit_code(data["instances"])
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def register(app: typer.Typer) -> None:
    app.command("reload")(reload)


__all__ = ["exit_code", "register", "reload", "wait_answers"]
