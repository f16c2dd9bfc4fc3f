"""``kafkaconsole consumer add|remove|list``: consumers defined at runtime, fleet-wide; and
``kafkaconsole consumer accept-reset``: the operator's go-ahead for a re-created topic.

A definition is one consumer table (the keys of a ``[[consumers]]`` table) in a TOML or JSON
file, validated with the model and messages of the configuration file, stored in Redis and run
by every instance beside its file's consumers (:mod:`kafkaconsole.engine.runtime_consumers`).
Exit codes: 0 stored and applied by every live instance, 2 the definition is invalid (every
problem printed, nothing stored), 1 refused (a file consumer of that id, read-only mode, an
unknown id) or an instance failed or did not answer.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import orjson
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
from kafkaconsole.cli.output import ExitCode, Output, fail, table
from kafkaconsole.cli.reload_cmd import exit_code, wait_answers
from kafkaconsole.config import AppConfig, ConfigError, validate_consumer
from kafkaconsole.engine.alerts import rules_for
from kafkaconsole.engine.audit import AuditLog, cli_instance
from kafkaconsole.engine.control import actor
from kafkaconsole.engine.errors import ConsumerClashError
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.reload import ReloadResult
from kafkaconsole.engine.runtime_consumers import (
    RuntimeConsumers,
    clash_note,
    define_consumer,
    undefine_consumer,
)

DEFAULT_TIMEOUT_S = 10.0

consumer_app = typer.Typer(
    help="Consumers defined at runtime (stored in Redis, run by every instance); accept-reset "
    "of a re-created topic.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

TimeoutOpt = Annotated[
    float, typer.Option(min=0.1, help="Seconds to wait for every live instance's answer.")
]


def read_definition(path: str) -> Any:
    """The consumer table in ``path``: JSON when it ends in ``.json``, else TOML. An unreadable
    file: one line naming it, exit 2."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{path}: (file): cannot read: {exc.__class__.__name__}", ExitCode.CONFIG_ERROR)
    try:
        if file.suffix.lower() == ".json":
            return orjson.loads(text)
        return tomllib.loads(text)
    except (orjson.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "json" if file.suffix.lower() == ".json" else "toml"
        fail(f"{path}: ({kind}): {exc}", ExitCode.CONFIG_ERROR)


async def _apply_rows(fleet: Fleet, request_id: str, expected: list[str], timeout: float) -> Any:
    if not expected:
        return []
    return (await wait_answers(fleet, request_id, expected, timeout))["instances"]


def _rows_text(rows: list[dict[str, Any]], timeout: float) -> list[str]:
    if not rows:
        return ["no live instance: every instance runs it when it starts"]
    lines = []
    for row in rows:
        if not row["answered"]:
            lines.append(f"{row['instance_id']}: no answer within {timeout:g}s")
            continue
        result = ReloadResult.from_json_dict(row)
        lines.append(f"{row['instance_id']}: {result.status}: {result.summary()}")
        lines += [f"  {detail}" for detail in result.details]
    return lines


def _finish(data: dict[str, Any], as_json: bool, head: str, timeout: float) -> None:
    Output(as_json).emit(data, lambda d: "\n".join([head, *_rows_text(d["instances"], timeout)]))
    code = exit_code(data["instances"])
    if code != ExitCode.OK:
        raise typer.Exit(int(ExitCode.FAILURE))


@consumer_app.command("add")
def add(
    file: Annotated[
        str,
        typer.Option(
            "--file",
            "-f",
            help="The consumer's table: a TOML file of [[consumers]] keys (JSON if it ends "
            "in .json).",
        ),
    ],
    config: ConfigOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    as_json: JsonOpt = False,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Define a consumer fleet-wide without a file edit (or replace one defined so).

    The file holds the keys of one [[consumers]] table (consumer_id, kafka_topic,
    pipeline_name, connection_id, max_event, max_time...), validated as in the configuration
    file; pipeline_name must name a [pipelines.NAME] of the configuration. Every live instance
    starts it at once, an instance starting later reads it from Redis. A consumer of the same
    id in the configuration file is refused (the file's consumer wins).

    Exit codes: 0 stored and running everywhere, 2 invalid (every problem printed, nothing
    stored), 1 refused or an instance failed or did not answer.

    Example:

        kafkaconsole consumer add --file orders-eu.toml --config prod.toml
    """
    cfg = fleet_config(config)
    _writable(cfg, "define a consumer", read_only)
    raw = read_definition(file)
    try:  # before Redis: an invalid definition prints every problem and stores nothing
        consumer = validate_consumer(raw, cfg, source=file)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(int(ExitCode.CONFIG_ERROR)) from None
    if any(c.consumer_id == consumer.consumer_id for c in cfg.consumers):
        refuse(ConsumerClashError(consumer.consumer_id))

    async def action(fleet: Fleet) -> dict[str, Any]:
        expected = sorted(i["instance_id"] for i in await fleet.instances())
        defined = await define_consumer(
            fleet.redis,
            cfg,
            raw,
            source=file,
            via="cli",
            user=actor(),
            instance=cli_instance(),
            audit=AuditLog(fleet.redis, fleet.prefix, tagged=fleet.tagged),
        )
        rows = await _apply_rows(fleet, defined.request_id, expected, timeout)
        return {
            "consumer_id": defined.consumer.consumer_id,
            "status": "created" if defined.created else "replaced",
            "instances": rows,
        }

    data = _with_fleet(cfg, action, runtime=False)
    head = f"{data['consumer_id']}: {data['status']} (stored in Redis)"
    _finish(data, as_json, head, timeout)


@consumer_app.command("remove")
def remove(
    consumer_id: Annotated[str, typer.Argument(metavar="ID", help="A runtime-defined consumer.")],
    config: ConfigOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    as_json: JsonOpt = False,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Remove a consumer defined at runtime: every instance stops it gracefully (the batch in
    hand finished, offsets committed, its open window kept in Redis).

    A consumer of the configuration file is refused (remove it from the file and reload).

    Example:

        kafkaconsole consumer remove orders-eu
    """
    cfg = fleet_config(config)
    _writable(cfg, "remove a consumer", read_only)

    async def action(fleet: Fleet) -> dict[str, Any]:
        expected = sorted(i["instance_id"] for i in await fleet.instances())
        request_id = await undefine_consumer(
            fleet.redis,
            cfg,
            consumer_id,
            via="cli",
            user=actor(),
            instance=cli_instance(),
            audit=AuditLog(fleet.redis, fleet.prefix, tagged=fleet.tagged),
        )
        rows = await _apply_rows(fleet, request_id, expected, timeout)
        return {"consumer_id": consumer_id, "status": "removed", "instances": rows}

    data = _with_fleet(cfg, action, runtime=False)
    _finish(data, as_json, f"{consumer_id}: removed", timeout)


def undefined_alert_names(cfg: AppConfig, definitions: dict[str, Any]) -> list[str]:
    """One line per id an alert rule's runtime_consumers names that neither Redis nor the file
    defines (not yet added, or a typo: the rule waits for it)."""
    known = set(definitions) | {c.consumer_id for c in cfg.consumers}
    return [
        f"alert {rule.rule_id!r} watches runtime consumer {cid!r}, which is not defined "
        "(it applies once kafkaconsole consumer add defines it)"
        for rule in cfg.monitoring.alerts
        for cid in rule.runtime_consumers
        if cid not in known
    ]


def _list_text(data: dict[str, Any]) -> str:
    if not data["consumers"]:
        return "\n".join(["no consumer defined at runtime", *data["alert_notes"]])
    rows = [
        [
            c["consumer_id"],
            c.get("kafka_topic") or ",".join(c.get("kafka_topics") or ()) or c.get("topic_pattern"),
            c.get("pipeline_name"),
            c.get("max_event"),
            c.get("max_time"),
            "the file's consumer wins" if c["clash"] else "",
        ]
        for c in data["consumers"]
    ]
    lines = [table(["ID", "TOPIC", "PIPELINE", "MAX_EVENT", "MAX_TIME", "NOTE"], rows)]
    lines += [clash_note(c["consumer_id"]) for c in data["consumers"] if c["clash"]]
    return "\n".join([*lines, *data["alert_notes"]])


def runtime_definitions(cfg: AppConfig) -> dict[str, Any]:
    """The stored definitions (read from the fleet's Redis; failures exit 1)."""
    return _with_fleet(
        cfg,
        lambda fleet: RuntimeConsumers(fleet.redis, fleet.prefix, fleet.tagged).definitions(),
        runtime=False,
    )


@consumer_app.command("list")
def list_(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the consumers defined at runtime (as stored in Redis).

    NOTE says when the configuration file defines a consumer of the same id (the file's
    consumer wins; the definition is not run). --json gives each one's alert rules
    ("alerts"); an id that a rule's runtime_consumers names but nothing defines is reported
    ("alert_notes").

    Example:

        kafkaconsole consumer list --json
    """
    cfg = fleet_config(config)
    file_ids = {c.consumer_id for c in cfg.consumers}
    definitions = runtime_definitions(cfg)
    consumers = [
        {
            **(table_ if isinstance(table_, dict) else {"invalid": str(table_)}),
            "consumer_id": cid,
            "clash": cid in file_ids,
            "alerts": [r.rule_id for r in rules_for(cfg.monitoring.alerts, cid)],
        }
        for cid, table_ in sorted(definitions.items())
    ]
    data = {"consumers": consumers, "alert_notes": undefined_alert_names(cfg, definitions)}
    Output(as_json).emit(data, _list_text)


def _accept_text(d: dict[str, Any]) -> str:
    cid = d["consumer_id"]
    if not d["accepted"] and not d["dropped"]:
        return f"{cid}: no reset waiting (no partition's topic ends below what was counted)"
    lines = [
        f"{cid}: {r['topic']} partition {r['partition']}: counting again from offset "
        f"{r['log_start']} (was at {r['stored']}, the re-created topic ended at {r['end']})"
        for r in d["accepted"]
    ]
    lines += [
        f"{cid}: {r['topic']} partition {r['partition']}: its stored offset moved since it was "
        "flagged: left as it is"
        for r in d["dropped"]
    ]
    if d["closed_window_id"] is not None:
        lines.append(
            f"{cid}: window {d['closed_window_id']} (events of the topic before) closed first, "
            "reason manual"
        )
    return "\n".join(lines)


@consumer_app.command("accept-reset")
def accept_reset(
    consumer_id: IdArg,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Count a re-created topic from its start: the partitions flagged topic-recreated (the
    topic ends below what was counted) count again from their log start offset.

    One atomic Redis step per consumer: the stored offsets move to the log start and, when the
    open window holds events of those partitions (from the topic before), it closes first
    (reason manual). The instances resume those partitions within a second. Nothing waiting:
    exit 0 and says so.

    Example:

        kafkaconsole consumer accept-reset orders
    """
    cfg = fleet_config(config)
    _writable(cfg, "accept a topic reset", read_only)

    async def action(fleet: Fleet) -> dict[str, Any]:
        res = await fleet.accept_reset(consumer_id)
        return {
            "consumer_id": consumer_id,
            "accepted": [_reset_json(r) for r in res.accepted],
            "dropped": [_reset_json(r) for r in res.dropped],
            "closed_window_id": res.closed_window_id,
        }

    Output(as_json).emit(_with_fleet(cfg, action, consumer_id=consumer_id), _accept_text)


def _reset_json(reset: Any) -> dict[str, Any]:
    return {
        "topic": reset.topic,
        "partition": reset.partition,
        "stored": reset.stored,
        "log_start": reset.log_start,
        "end": reset.end,
    }


def register(app: typer.Typer) -> None:
    app.add_typer(consumer_app, name="consumer")


__all__ = [
    "accept_reset",
    "add",
    "list_",
    "read_definition",
    "register",
    "remove",
    "runtime_definitions",
]
