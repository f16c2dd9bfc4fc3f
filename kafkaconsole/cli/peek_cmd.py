"""``kafkaconsole peek``: look at the events behind a window, the topic's latest, the DLQ.

Reads Kafka with a throwaway consumer without a group (see
:mod:`kafkaconsole.engine.peek`), so the consumer group is never disturbed; the window's
offset ranges come from its trigger record in Redis. stdout is the events (text, or NDJSON
with ``--json``); warnings (a partly expired window, more records than ``--limit``) go to
stderr.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kafkaconsole.cli.control_cmd import ConfigOpt, IdArg, _with_fleet, fleet_config
from kafkaconsole.cli.output import json_safe, warn
from kafkaconsole.cli.scripting import ReaderGone, write_line
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.peek import DEFAULT_LIMIT, MAX_LIMIT, EventPeek, PeekBody, PeekEvent

#: Header values longer than this are cut in the text output (a DLQ stack trace); --json
#: prints them whole.
HEADER_TEXT_CHARS = 200


def _value_text(event: PeekEvent) -> str:
    if event.value_format == "json":
        return json.dumps(json_safe(event.value), indent=2, ensure_ascii=False)
    if event.value_format == "null":
        return "(null value)"
    if event.value_format == "base64":
        return f"(base64) {event.value}"
    return str(event.value)


def _event_text(event: PeekEvent) -> str:
    key = (
        "-"
        if event.key is None
        else event.key + (" (base64)" if event.key_format == "base64" else "")
    )
    lines = [
        f"{event.topic}[{event.partition}]@{event.offset}  {event.timestamp or '-'}  key {key}"
    ]
    if event.error:
        e = event.error
        source = f"{e.get('topic', '?')}[{e.get('partition', '?')}]@{e.get('offset', '?')}"
        lines.append(
            f"  error: {e.get('stage', '?')}: {e.get('exception.class.name', '?')}: "
            f"{e.get('exception.message', '')} (from {source})"
        )
    lines += ["  " + line for line in _value_text(event).splitlines() or [""]]
    shown = [h for h in event.headers if not h.name.startswith("__connect.errors.")]
    for header in shown:
        value = header.value
        if len(value) > HEADER_TEXT_CHARS:
            value = value[:HEADER_TEXT_CHARS] + "..."
        lines.append(f"  header {header.name}: {value}")
    return "\n".join(lines)


def _describe(body: PeekBody) -> str:
    if body.source == "window":
        return f"window {body.window_id} of {body.consumer_id}"
    if body.source == "dlq":
        return f"the DLQ {body.topic} of {body.consumer_id}"
    return f"the topic {body.topic} of {body.consumer_id}"


def peek(
    consumer_id: IdArg,
    window: Annotated[
        int | None,
        typer.Option(
            "--window",
            metavar="WINDOW_ID",
            min=1,
            help="A closed window: its events, read again from Kafka by its offset ranges.",
            show_default=False,
        ),
    ] = None,
    tail: Annotated[
        bool, typer.Option("--tail", help="The newest events of the consumer's topic.")
    ] = False,
    dlq: Annotated[
        bool,
        typer.Option("--dlq", help="The newest records of the consumer's DLQ, with their errors."),
    ] = False,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", min=1, max=MAX_LIMIT, help="At most this many events (oldest first)."
        ),
    ] = DEFAULT_LIMIT,
    config: ConfigOpt = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="NDJSON: one event per line (topic, partition, offset, timestamp, key, value "
            "decoded per the consumer's format, headers; DLQ records add error).",
        ),
    ] = False,
) -> None:
    """Show the events of a closed window (--window N), the topic's newest (--tail) or the
    DLQ's newest records with their error headers (--dlq).

    Reads with a throwaway consumer that joins no group and commits nothing: the consumer
    group never notices. Payloads are pretty-printed per the consumer's format, secrets
    masked. Exit 1 with one line: unknown consumer, window not closed or expired from the
    history, events deleted by retention, topic missing, brokers unreachable.

    Example:

        kafkaconsole peek orders --window 42

        kafkaconsole peek orders --dlq --limit 5

        kafkaconsole peek orders --tail --json | jq .value
    """
    modes = sum([window is not None, tail, dlq])
    if modes != 1:
        raise typer.BadParameter("give exactly one of --window N, --tail and --dlq")
    cfg = fleet_config(config)

    async def action(fleet: Fleet) -> PeekBody:
        reader = EventPeek(fleet.config, fleet.redis)
        if window is not None:
            return await reader.window(consumer_id, window, limit)
        if dlq:
            return await reader.dlq(consumer_id, limit)
        return await reader.tail(consumer_id, limit)

    body = _with_fleet(cfg, action, consumer_id=consumer_id)
    for line in body.warnings:
        warn(line)
    if body.truncated:
        warn(f"showing {len(body.events)} event(s) of {_describe(body)}: more are there (--limit)")
    if as_json:
        try:
            for event in body.events:
                write_line(event.to_json())
        except ReaderGone:
            return
        return
    if not body.events:
        typer.echo(f"no event in {_describe(body)}", err=True)
        return
    typer.echo("\n\n".join(_event_text(event) for event in body.events))


def register(app: typer.Typer) -> None:
    app.command("peek")(peek)


__all__ = ["peek", "register"]
