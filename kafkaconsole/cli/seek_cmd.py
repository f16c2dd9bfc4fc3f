"""``kafkaconsole seek``: move a consumer's position fleet-wide (replay or skip events).

The plan (per partition: the stored offset, the target, the events read again or skipped, and
the open window) is shown first and applied once confirmed (``--yes`` for scripts,
``--dry-run`` shows it only). See :mod:`kafkaconsole.engine.seek` for what exact counting
means across a seek.
"""

from __future__ import annotations

from typing import Annotated

import typer

from kafkaconsole.cli.control_cmd import (
    ConfigOpt,
    IdArg,
    JsonOpt,
    ReadOnlyOpt,
    _with_fleet,
    _writable,
    fleet_config,
    refuse,
)
from kafkaconsole.cli.output import Output, fail, warn
from kafkaconsole.engine.errors import ControlError
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.seek import (
    TARGET_HELP,
    SeekPlan,
    SeekResult,
    parse_target,
    parse_window,
    plan_seek,
)


def plan_text(plan: SeekPlan) -> str:
    """The plan as a table with its totals (what the confirmation shows)."""
    rows = [("TOPIC", "PARTITION", "NOW", "TO", "READ AGAIN", "SKIPPED")]
    for m in plan.partitions:
        rows.append(
            (
                m.topic,
                str(m.partition),
                "-" if m.current is None else str(m.current),
                str(m.target),
                str(m.reread),
                str(m.skipped),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"seek {plan.consumer_id} to {plan.resolved} ({len(plan.partitions)} partition(s)):"]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.append(f"total: {plan.reread} event(s) read again, {plan.skipped} skipped")
    if plan.window_count:
        fate = (
            "closed now (reason seek), its pipeline runs"
            if plan.window == "close"
            else "discarded (no trigger)"
        )
        lines.append(f"open window {plan.window_id} ({plan.window_count} events): {fate}")
    else:
        lines.append(f"open window {plan.window_id} is empty")
    return "\n".join(lines)


def result_text(res: SeekResult) -> str:
    if res.closed_window_id is not None:
        window = f"window {res.closed_window_id} closed (reason seek)"
    elif res.discarded:
        window = f"{res.discarded} event(s) of the open window discarded"
    else:
        window = "the open window was empty"
    return (
        f"seek {res.plan.consumer_id}: {res.reread} event(s) to read again, {res.skipped} "
        f"skipped; {window}; every instance follows within a second (epoch {res.epoch})"
    )


def seek(
    consumer_id: IdArg,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="TARGET",
            help=f"Where counting goes on from: {TARGET_HELP}.",
            show_default=False,
        ),
    ],
    window: Annotated[
        str,
        typer.Option(
            "--window",
            metavar="close|discard",
            help="The open window: close it (reason seek, its pipeline runs) or discard it "
            "(as reset does).",
        ),
    ] = "close",
    partition: Annotated[
        list[int] | None,
        typer.Option(
            "--partition",
            "-p",
            min=0,
            metavar="N",
            help="Only this partition (repeat for several; default: every partition).",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Apply without asking (scripts).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan only; change nothing.")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Move a consumer's position on every partition, fleet-wide: replay or skip events.

    Shows per partition where counting stands, where it will go on from and how many events
    are read again (counted again, into new windows recorded as replays) or skipped (never
    counted, added up in the consumer's stats); then asks. The open window is closed (its
    pipeline runs) or, with --window discard, discarded. Every running instance follows
    within a second; a consumer that is not running starts from there. Audited; read-only
    mode refuses it.

    Exit codes: 0 done (or --dry-run), 1 refused, failed or not confirmed, 2 a bad target.

    Example:

        kafkaconsole seek orders --to -2h

        kafkaconsole seek orders --to earliest --window discard --yes

        kafkaconsole seek orders --to 2026-11-30T08:00:00Z --dry-run --json
    """
    cfg = fleet_config(config)
    try:
        target = parse_target(to)
        how = parse_window(window)
    except ControlError as exc:
        refuse(exc)
    if not dry_run:
        _writable(cfg, "seek", read_only)

    async def make_plan(fleet: Fleet) -> SeekPlan:
        return await plan_seek(
            fleet.config, fleet.redis, consumer_id, target, window=how, partitions=partition or None
        )

    plan = _with_fleet(cfg, make_plan, consumer_id=consumer_id)
    for line in plan.warnings:
        warn(line)
    out = Output(as_json)
    if dry_run:
        out.emit(SeekResult.dry_run(plan).to_json(), lambda _: plan_text(plan))
        return
    if not yes:
        typer.echo(plan_text(plan), err=as_json)
        if not typer.confirm("Apply this seek?", default=False, err=as_json):
            fail("not confirmed: nothing changed")

    async def apply(fleet: Fleet) -> SeekResult:
        return await fleet.seek(
            consumer_id, to, window=how, partitions=partition or None, via="cli"
        )

    res = _with_fleet(cfg, apply, consumer_id=consumer_id)
    out.emit(res.to_json(), lambda _: result_text(res))


def register(app: typer.Typer) -> None:
    app.command("seek")(seek)


__all__ = ["plan_text", "register", "result_text", "seek"]
