"""``status``, ``info``, ``pause``, ``resume``, ``reset``, ``trigger``, ``history``, ``lag``.

These commands never talk to an instance directly: they read the configuration to find Redis
and act through :class:`~kafkaconsole.engine.fleet.Fleet`, so they steer every instance of the
fleet wherever it runs (containers, other terminals, the TUI). They see the fleet as it runs:
the file's consumers and those defined at runtime (``kafkaconsole consumer add``), read from
Redis once per command in :func:`_with_fleet`. stdout is data (an aligned table,
or stable JSON with ``--json``); stderr is diagnostics. Exit codes: 0 ok, 1 failure (unknown
consumer, Redis unreachable, refused), 2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from kafkaconsole.cli.config_cmd import DEBUG_ENV, _load
from kafkaconsole.cli.output import (
    ExitCode,
    Output,
    duration,
    fail,
    progress,
    since,
    table,
    warn,
)
from kafkaconsole.cli.scripting import (
    ReaderGone,
    change_key,
    history_csv,
    reader_gone,
    write_line,
)
from kafkaconsole.config import AppConfig, mask_text
from kafkaconsole.config.loader import CONFIG_ENV, DEFAULT_CONFIG_FILE
from kafkaconsole.engine.audit import cli_instance
from kafkaconsole.engine.clients import redis_client
from kafkaconsole.engine.control import actor
from kafkaconsole.engine.dispatch import RedispatchError, redispatch
from kafkaconsole.engine.errors import ControlError, ReadOnlyError
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.group_offsets import committed_offsets
from kafkaconsole.runtime import running_demo_config

T = TypeVar("T")

APPLY_WAIT_S = 2.5
"""How long ``pause``/``resume`` wait for the live instances' snapshots to show the change."""

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        show_default=False,
        help="Configuration file (default: $KAFKACONSOLE_CONFIG, then ./kafkaconsole.toml, then "
        "the config of a kafkaconsole demo running now).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of text.")]
IdArg = Annotated[
    str,
    typer.Argument(
        metavar="ID", help="The consumer_id of a [[consumers]] or of a consumer defined at runtime."
    ),
]
OptionalIdArg = Annotated[
    str | None,
    typer.Argument(metavar="ID", help="The consumer_id (or --all).", show_default=False),
]
AllOpt = Annotated[
    bool,
    typer.Option("--all", help="Every consumer: the file's and those defined at runtime."),
]
ReadOnlyOpt = Annotated[
    bool,
    typer.Option(
        "--read-only",
        help="Refuse to act (exit 1), as with [ui] read_only = true: a safety switch for "
        "scripts and aliases (KAFKACONSOLE_UI__READ_ONLY=true does it for every command).",
    ),
]


# ---- plumbing -------------------------------------------------------------------------------


def fleet_config(config: str | None) -> AppConfig:
    """The configuration a steering command acts on: ``--config``, ``$KAFKACONSOLE_CONFIG``,
    ``./kafkaconsole.toml``, else the config of a ``kafkaconsole demo`` running now (said on
    stderr)."""
    if config is None and not os.environ.get(CONFIG_ENV) and not Path(DEFAULT_CONFIG_FILE).exists():
        demo = running_demo_config()
        if demo is not None:
            typer.echo(f"kafkaconsole: using the running demo's config {demo}", err=True)
            config = str(demo)
    return _load(None, config)


def _with_fleet(
    cfg: AppConfig,
    action: Callable[[Fleet], Awaitable[T]],
    *,
    consumer_id: str | None = None,
    runtime: bool = True,
) -> T:
    """Run ``action`` against the fleet's Redis; failures become one line and exit 1.

    The one place the CLI builds its :class:`Fleet`: with ``runtime``, the fleet as it runs
    (the file's consumers and those defined at runtime, read once; the file's consumer wins
    on a clash); when they cannot be read, the file's alone and an unknown id says why.
    ``consumer_id``: refused (exit 1) unless that fleet has it, before ``action`` runs.
    """

    async def main() -> T:
        redis = redis_client(
            cfg.redis,
            socket_connect_timeout=3,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
        )
        try:
            fleet = Fleet(redis, cfg)
            if runtime:
                fleet = await fleet.as_running()
            if consumer_id is not None:
                fleet.consumer_cfg(consumer_id)  # UnknownConsumerError: refused below
            return await action(fleet)
        finally:
            with contextlib.suppress(Exception):
                await redis.aclose()

    try:
        return asyncio.run(main())
    except typer.Exit:
        raise
    except ControlError as exc:
        refuse(exc)
    except NoPermissionError as exc:
        fail(
            f"Redis at {mask_text(cfg.redis.url, cfg)} refused a command: "
            f"{mask_text(str(exc), cfg)} (the ACL user needs the commands listed in README "
            "Security)"
        )
    except AuthenticationError as exc:
        fail(
            f"Redis at {mask_text(cfg.redis.url, cfg)} refused the credentials: "
            f"{mask_text(str(exc) or type(exc).__name__, cfg)} (check [redis] username/password)"
        )
    except (RedisError, OSError) as exc:
        fail(
            f"cannot reach Redis at {mask_text(cfg.redis.url, cfg)}: "
            f"{mask_text(str(exc) or type(exc).__name__, cfg)}"
        )
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        fail(
            f"unexpected {type(exc).__name__}: {mask_text(str(exc), cfg)} "
            f"(set {DEBUG_ENV}=1 for a traceback)"
        )


def refuse(exc: ControlError) -> NoReturn:
    """A refusal of the control family: its message on one line, its exit code."""
    fail(str(exc), ExitCode(exc.exit_code))


def _writable(cfg: AppConfig, what: str, read_only: bool = False) -> None:
    """Refuse in read-only mode, before touching Redis."""
    if read_only:
        refuse(ReadOnlyError(what, "flag"))
    if cfg.ui.read_only:
        refuse(ReadOnlyError(what, "config"))


def _check_target(consumer_id: str | None, all_: bool) -> None:
    """Usage check (exit 2) before anything else: exactly one of ID and --all."""
    if all_ and consumer_id:
        raise typer.BadParameter("give a consumer ID or --all, not both", param_hint="ID")
    if not all_ and not consumer_id:
        raise typer.BadParameter("give a consumer ID or --all", param_hint="ID")


def _targets(fleet: Fleet, consumer_id: str | None) -> list[str]:
    """The consumer named (checked by :func:`_with_fleet`), or every consumer (``--all``)."""
    if consumer_id is None:
        return [c.consumer_id for c in fleet.config.consumers]
    return [consumer_id]


def _last_trigger(lt: dict[str, Any] | None) -> str:
    if not lt:
        return "-"
    return (
        f"#{lt['window_id']} {lt['reason']} {lt['count']} {lt['status']} {since(lt['closed_at'])}"
    )


def _instances_running(instances: list[dict[str, Any]], consumer_id: str) -> list[str]:
    return [
        i["instance_id"]
        for i in instances
        if any(c["consumer_id"] == consumer_id for c in i.get("consumers", []))
    ]


# ---- status / info / lag / history ------------------------------------------------------------


PARTITION_COLUMNS = ("PARTITION", "OWNER", "POSITION", "HIGHWATER", "LAG", "TIME LAG")


def _verdict(c: dict[str, Any]) -> str:
    """``stalled``, with ``!N`` when N alerts fire."""
    v = c.get("verdict") or "-"
    return f"{v} !{len(c['alerts'])}" if c.get("alerts") else v


def _backlog(c: dict[str, Any]) -> str:
    """``3 window(s) waiting for the pipeline, the oldest for 2m`` (``none waiting``)."""
    n = c.get("backlog") or 0
    if not n:
        return "no window waiting for the pipeline"
    return (
        f"{n} window(s) waiting for the pipeline, the oldest for "
        f"{duration(c.get('backlog_age_seconds'))}"
    )


def _health_note(c: dict[str, Any]) -> str:
    """The reason of a verdict other than ok, the pipeline backlog and the alerts firing (one
    line each)."""
    lines = []
    if c.get("verdict") not in (None, "ok"):
        lines.append(f"{c['consumer_id']}: {c['verdict']}: {c.get('verdict_reason') or '-'}")
    if c.get("backlog") and c.get("verdict") != "pipeline-backlog":
        lines.append(f"{c['consumer_id']}: {_backlog(c)}")
    for a in c.get("alerts", []):
        lines.append(
            f"{c['consumer_id']}: alert {a['alert']} firing since {since(a.get('since'))}: "
            f"{a.get('message') or '-'}"
        )
    return "\n".join(lines)


def _runtime_notes(instances: list[dict[str, Any]]) -> list[str]:
    """Per instance: the consumers it runs that were defined at runtime, and the runtime
    definitions its file overrides (the file's consumer wins)."""
    notes = []
    for i in instances:
        if i.get("runtime_consumers"):
            ids = ", ".join(i["runtime_consumers"])
            notes.append(f"{i['instance_id']}: defined at runtime: {ids}")
        for cid in i.get("runtime_clashes") or ():
            notes.append(
                f"{i['instance_id']}: {cid}: runtime definition ignored: the configuration "
                "file defines a consumer of that id (the file's consumer wins)"
            )
    return notes


def _runtime_ids(fleet: Fleet) -> list[str]:
    """The fleet's consumers defined at runtime (the file's consumers win a clash)."""
    return list(fleet.runtime.runtime_ids) if fleet.runtime is not None else []


def _status_text(data: dict[str, Any], runtime_ids: list[str] | None = None) -> str:
    rows = [
        [
            c["consumer_id"],
            c["kafka_topic"],
            c["state"],
            _verdict(c),
            ",".join(c["instances"]) or "-",
            c["lag"],
            duration(c.get("time_lag_seconds")),
            progress(c["count"], c["max_event"]),
            duration(c["time_left"]),
            _last_trigger(c["last_trigger"]),
        ]
        for c in data["consumers"]
    ]
    headers = ["CONSUMER", "TOPIC", "STATE", "VERDICT", "INSTANCES", "LAG", "TIME LAG", "WINDOW"]
    out = [table([*headers, "TIME LEFT", "LAST TRIGGER"], rows)]
    notes = [_health_note(c) for c in data["consumers"]]
    if runtime_ids:
        notes.append(f"defined at runtime (kafkaconsole consumer list): {', '.join(runtime_ids)}")
    if any(notes):
        out += ["", *[n for n in notes if n]]
    now_ms = time.time() * 1000
    irows = [
        [
            i["instance_id"],
            i.get("host"),
            i.get("pid"),
            duration((now_ms - i["started_at_ms"]) / 1000) if i.get("started_at_ms") else None,
            ("ok" if i.get("kafka_ok") else "DOWN")
            + (f", {len(i['kafka_missing'])} broker(s) missing" if i.get("kafka_missing") else ""),
            "ok" if i.get("redis_ok") else "DOWN",
            ",".join(i.get("consumers", [])) or "-",
        ]
        for i in data["instances"]
    ]
    out.append("")
    if irows:
        out.append(table(["INSTANCE", "HOST", "PID", "UP", "KAFKA", "REDIS", "CONSUMERS"], irows))
        out += _runtime_notes(data["instances"])
    else:
        out.append("no live instance (start one with: kafkaconsole run --no-ui)")
    return "\n".join(out)


WATCH_INTERVAL_S = 1.0
"""``status --watch``'s default polling interval: instances publish their status every second."""


def _watch(cfg: AppConfig, interval: float) -> None:
    """Print one NDJSON line per consumer whose status changed, every ``interval`` seconds,
    until Ctrl-C or until the reader of stdout goes away (both exit 0). The consumers defined
    at runtime are read again at each interval: one added while it watches appears."""

    async def action(fleet: Fleet) -> None:
        stop = asyncio.Event()
        with ctrl_c_sets(stop):
            await watching(fleet, stop)

    async def watching(fleet: Fleet, stop: asyncio.Event) -> None:
        seen: dict[str, bytes] = {}
        while True:
            consumers = await fleet.consumers()
            fleet = await Fleet(fleet.redis, cfg).as_running()  # for the next interval
            observed_at = datetime.now(UTC).isoformat(timespec="milliseconds")
            try:
                for consumer in consumers:
                    key = change_key(consumer)
                    if seen.get(consumer["consumer_id"]) == key:
                        continue
                    seen[consumer["consumer_id"]] = key
                    write_line({"observed_at": observed_at.replace("+00:00", "Z"), **consumer})
            except ReaderGone:
                return
            if reader_gone():
                return
            await _pause(stop, interval)

    try:
        _with_fleet(cfg, action)
    except KeyboardInterrupt:
        raise typer.Exit(int(ExitCode.OK)) from None


def status(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Keep reading and print NDJSON: one line per consumer whose status changed "
            "(every consumer once at the start), until Ctrl-C (exit 0) or the reader of the "
            "pipe goes away (exit 0); Redis lost: one error line, exit 1.",
        ),
    ] = False,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=0.2,
            max=3600,
            metavar="SECONDS",
            help="With --watch: seconds between two reads of the fleet.",
        ),
    ] = WATCH_INTERVAL_S,
) -> None:
    """Show every consumer across the fleet: state, instances, lag, window, last trigger.

    Lists the configuration file's consumers and those defined at runtime (kafkaconsole
    consumer add; a consumer of the file wins a clash of ids).

    Reads Redis, so it shows every running instance wherever it runs. --json prints
    {"consumers": [...], "instances": [...]}. --watch prints one JSON object per line and per
    change: a consumer's object of --json with "observed_at" (ISO 8601 UTC) first; fields
    that move with the clock alone (time_left, time_to_trigger_seconds, time_lag_seconds,
    reported_at_ms) are not changes.

    Example:

        kafkaconsole status --config kafkaconsole.toml

        kafkaconsole status --json | jq '.consumers[] | {consumer_id, state, lag}'

        kafkaconsole status --watch | jq -c 'select(.state != "running")'
    """
    cfg = fleet_config(config)
    if watch:
        _watch(cfg, interval)
        return

    async def action(fleet: Fleet) -> tuple[dict[str, Any], list[str]]:
        return await fleet.status(), _runtime_ids(fleet)

    data, runtime_ids = _with_fleet(cfg, action)
    Output(as_json).emit(data, lambda d: _status_text(d, runtime_ids))


def _info_text(d: dict[str, Any], runtime: bool = False) -> str:
    w = d["window"]
    e = d["errors"]
    t = d["totals"]
    pipeline = d.get("pipeline") or {}
    lines = [
        f"consumer     {d['consumer_id']}" + (" (defined at runtime)" if runtime else ""),
        f"topic        {d['kafka_topic']}",
        f"pipeline     {d['pipeline_name']} ({pipeline.get('kind', '?')}, {d['job_type']})",
        f"state        {d['state']}"
        + (f" (paused by {d['paused_by']} {since(d['paused_at'])})" if d["paused_by"] else ""),
        f"instances    {', '.join(d['instances']) or '-'}",
        f"window       #{w['id']} {progress(w['count'], w['max_event'])}, "
        f"opened {since(w['opened_at'])}, time left {duration(w['time_left'])} "
        f"(max_time {duration(w['max_time'])})",
        f"health       {d['verdict']}: {d['verdict_reason']}"
        + (f" (since {since(d['verdict_since'])})" if d.get("verdict_since") else ""),
        *[
            f"alert        {a['alert']} firing since {since(a.get('since'))}: {a.get('message')}"
            for a in d.get("alerts", [])
        ],
        f"lag          {'-' if d['lag'] is None else d['lag']} "
        f"(time lag {duration(d.get('time_lag_seconds'))})",
        f"next trigger in {duration(d.get('time_to_trigger_seconds'))}",
        f"backlog      {_backlog(d)}",
        f"rate         {d['rate']:g} events/s",
        f"totals       {t['events']} counted, {t['filtered']} filtered, "
        f"{t['skipped']} skipped, {t['discarded']} discarded, {t['windows']} windows",
        f"errors       {e['count']} (dlq {e['dlq']}), last: {e['last_error'] or '-'}",
        f"last trigger {_last_trigger(d['last_trigger'])}",
    ]
    if d["partitions"]:
        # one topic: the partition number says it all; several: each row names its topic
        many = len(d.get("topics") or ()) != 1
        lines += [
            "",
            table(
                [*(["TOPIC"] if many else []), *PARTITION_COLUMNS],
                [
                    [
                        *([p.get("topic")] if many else []),
                        p["partition"],
                        p.get("owner"),
                        p["position"],
                        p["highwater"],
                        p["lag"],
                        duration(p.get("time_lag_seconds")),
                    ]
                    for p in d["partitions"]
                ],
            ),
        ]
    if d["triggers"]:
        lines += ["", _history_text(d["triggers"])]
    return "\n".join(lines)


def info(consumer_id: IdArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show one consumer: config (secrets masked), state, window, lag, triggers, errors.

    --json prints the same document as the HTTP API's GET /consumer/info/ID.

    Example:

        kafkaconsole info orders --config kafkaconsole.toml

        kafkaconsole info orders --json | jq .window
    """
    cfg = fleet_config(config)

    async def action(fleet: Fleet) -> tuple[dict[str, Any], bool]:
        return await fleet.info(consumer_id), consumer_id in _runtime_ids(fleet)

    data, runtime = _with_fleet(cfg, action, consumer_id=consumer_id)
    Output(as_json).emit(data, lambda d: _info_text(d, runtime))


def _lag_data(consumers: list[dict[str, Any]]) -> dict[str, Any]:
    out = [
        {
            "consumer_id": c["consumer_id"],
            "kafka_topic": c["kafka_topic"],
            "state": c["state"],
            "lag": c["lag"],
            "partitions": c["partitions"],
        }
        for c in consumers
    ]
    lags = [c["lag"] for c in out if c["lag"] is not None]
    return {"consumers": out, "total_lag": sum(lags) if lags else None}


def _lag_text(data: dict[str, Any]) -> str:
    committed = data.get("committed", False)
    rows: list[list[Any]] = []
    for c in data["consumers"]:
        if not c["partitions"]:
            row = [c["consumer_id"], c["kafka_topic"], None, None, None, None, c["lag"]]
            rows.append([*row, None] if committed else row)
        for p in c["partitions"]:
            row = [
                c["consumer_id"],
                p.get("topic") or c["kafka_topic"],
                p["partition"],
                p.get("owner"),
                p["position"],
                p["highwater"],
                p["lag"],
            ]
            rows.append([*row, p.get("committed")] if committed else row)
    headers = ["CONSUMER", "TOPIC", "PARTITION", "OWNER", "POSITION", "HIGHWATER", "LAG"]
    text = table([*headers, "COMMITTED"] if committed else headers, rows)
    total = data["total_lag"]
    notes = [
        f"{c['consumer_id']}: Kafka's committed offsets unknown ({c['committed_error']})"
        for c in data["consumers"]
        if c.get("committed_error")
    ]
    return "\n".join([text, "", f"total lag: {'-' if total is None else total}", *notes])


def lag(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    committed: Annotated[
        bool,
        typer.Option(
            "--committed",
            help="Also read each consumer group's committed offsets from the brokers (the "
            "admin client's OffsetFetch: what kafka-consumer-groups.sh and Burrow see).",
        ),
    ] = False,
) -> None:
    """Show the lag (end offset - position) of every partition, with its owning instance.

    A partition no live instance owns shows the position Redis holds as counted and no owner.

    Example:

        kafkaconsole lag --config kafkaconsole.toml

        kafkaconsole lag --committed --json | jq .total_lag
    """
    cfg = fleet_config(config)

    async def action(fleet: Fleet) -> dict[str, Any]:
        data = _lag_data(await fleet.consumers())
        if committed:
            await _add_committed(fleet.config, data)
        return data

    Output(as_json).emit(_with_fleet(cfg, action), _lag_text)


async def _add_committed(cfg: AppConfig, data: dict[str, Any]) -> None:
    """Put each group's committed offset beside every partition (``committed``; None when
    the group committed nothing there), or the reason it is unknown (``committed_error``)."""
    groups: dict[str, Callable[[str], bool]] = {
        c.effective_group_id: c.reads_topic
        for c in cfg.consumers
        if any(d["consumer_id"] == c.consumer_id for d in data["consumers"])
    }
    found = await committed_offsets(cfg.kafka, groups)
    data["committed"] = True
    for entry in data["consumers"]:
        group = found[cfg.consumer(entry["consumer_id"]).effective_group_id]
        entry["committed_error"] = group.error
        for p in entry["partitions"]:
            key = (p.get("topic") or entry["kafka_topic"], p["partition"])
            p["committed"] = None if group.error else group.offsets.get(key)


def _history_text(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no trigger yet"
    rows = [
        [
            r["window_id"],
            f"{r['reason']} (replay)" if r.get("replay") else r["reason"],
            r["count"],
            r["opened_at"],
            r["closed_at"],
            r["status"],
            None
            if r["run"].get("duration_ms") is None
            else f"{r['run']['duration_ms'] / 1000:.2f}s",
        ]
        for r in records
    ]
    return table(["WINDOW", "REASON", "COUNT", "OPENED", "CLOSED", "STATUS", "DURATION"], rows)


class HistoryFormat(StrEnum):
    """``history --format``."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def history(
    consumer_id: IdArg,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=10_000, help="How many records.")
    ] = 20,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    redispatch_window: Annotated[
        int | None,
        typer.Option(
            "--redispatch",
            metavar="WINDOW_ID",
            min=1,
            help="Queue this past window for its pipeline again (same idempotency key).",
            show_default=False,
        ),
    ] = None,
    read_only: ReadOnlyOpt = False,
    output_format: Annotated[
        HistoryFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="table (the default), json (as --json) or csv (RFC 4180: a header row, CRLF "
            "line ends, the columns in README's order).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show a consumer's trigger records, newest first, each with its pipeline status.

    --json (or --format json) prints a list of trigger records (the pipeline payload plus
    "status" and "run"). --format csv prints one row per record with the columns
    consumer_id, window_id, reason, count, opened_at, closed_at, status, run_id, attempts,
    started_at, finished_at, duration_ms, error, offsets (topic:partition:first-last, ;-joined).
    --redispatch WINDOW_ID puts a past window back in the dispatch queue; a running instance
    runs its pipeline again with the same idempotency key <consumer_id>:<window_id>.

    Example:

        kafkaconsole history orders --limit 5

        kafkaconsole history orders --json | jq '.[] | select(.status == "failed")'

        kafkaconsole history orders --format csv --limit 1000 > orders.csv

        kafkaconsole history orders --redispatch 42
    """
    if as_json and output_format not in (None, HistoryFormat.JSON):
        raise typer.BadParameter(
            f"--json and --format {output_format} disagree; give one", param_hint="--format"
        )
    if redispatch_window is not None and output_format is HistoryFormat.CSV:
        raise typer.BadParameter("--format csv lists records; not with --redispatch")
    as_json = as_json or output_format is HistoryFormat.JSON
    cfg = fleet_config(config)
    if redispatch_window is not None:
        _writable(cfg, "re-dispatch", read_only)
        wid = redispatch_window

        async def requeue(fleet: Fleet) -> dict[str, Any]:
            try:
                async with fleet.audit.action(
                    "redispatch", consumer_id, via="cli", user=actor(), instance=cli_instance()
                ) as outcome:
                    await redispatch(fleet.redis, fleet.config, consumer_id, wid)
                    outcome.detail = f"window {wid} queued for its pipeline again"
            except RedispatchError as exc:
                fail(str(exc))
            return {
                "consumer_id": consumer_id,
                "window_id": wid,
                "status": "queued",
                "idempotency_key": f"{consumer_id}:{wid}",
            }

        result = _with_fleet(cfg, requeue, consumer_id=consumer_id)
        Output(as_json).emit(
            result,
            lambda r: (
                f"window {wid} of {consumer_id} queued for its pipeline again "
                f"(idempotency key {r['idempotency_key']})"
            ),
        )
        return
    data = _with_fleet(
        cfg, lambda fleet: fleet.history(consumer_id, limit=limit), consumer_id=consumer_id
    )
    if output_format is HistoryFormat.CSV:
        typer.echo(history_csv(data), nl=False)
        return
    Output(as_json).emit(data, _history_text)


# ---- steering ---------------------------------------------------------------------------------


async def _wait_applied(
    fleet: Fleet, ids: list[str], paused: bool, wait_s: float
) -> dict[str, tuple[int, int]]:
    """Per consumer (applied, live instances running it), once all applied or after wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        instances = await fleet.instances()
        result: dict[str, tuple[int, int]] = {}
        for cid in ids:
            states = [
                c.get("state")
                for inst in instances
                for c in inst.get("consumers", [])
                if c["consumer_id"] == cid
            ]
            result[cid] = (sum(1 for s in states if (s == "paused") == paused), len(states))
        if all(done == total for done, total in result.values()) or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(0.1)


def _set_paused(cfg: AppConfig, consumer_id: str | None, paused: bool) -> list[dict[str, Any]]:
    """Pause or resume ``consumer_id`` (None: every consumer of the fleet as it runs)."""

    async def action(fleet: Fleet) -> list[dict[str, Any]]:
        ids = _targets(fleet, consumer_id)
        before = await fleet.control.pause_states(ids)
        for cid in ids:
            if paused:
                await fleet.pause(cid, by=f"{actor()} (cli)")
            else:
                await fleet.resume(cid)
        applied = await _wait_applied(fleet, ids, paused, APPLY_WAIT_S)
        return [
            {
                "consumer_id": cid,
                "paused": paused,
                "changed": before[cid].paused != paused,
                "instances": applied[cid][1],
                "applied": applied[cid][0],
            }
            for cid in ids
        ]

    return _with_fleet(cfg, action, consumer_id=consumer_id)


def _pause_text(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        verb = "paused" if r["paused"] else "resumed"
        head = f"{verb} {r['consumer_id']}" + ("" if r["changed"] else f" (already {verb})")
        if r["instances"] == 0:
            lines.append(f"{head}: no live instance runs it; it applies when one starts")
        elif r["applied"] == r["instances"]:
            lines.append(f"{head}: applied by {r['applied']} of {r['instances']} live instance(s)")
        else:
            lines.append(
                f"{head}: applied by {r['applied']} of {r['instances']} live instance(s) so far;"
                " the others apply it at their next poll"
            )
    return "\n".join(lines)


def pause(
    consumer_id: OptionalIdArg = None,
    all_: AllOpt = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Pause counting of a consumer (or --all) on every instance of the fleet.

    Instances keep polling (and so keep their partitions) but count nothing until resume.
    Waits up to a few seconds and says how many live instances applied it.

    Example:

        kafkaconsole pause orders

        kafkaconsole pause --all --config prod.toml
    """
    _check_target(consumer_id, all_)
    cfg = fleet_config(config)
    _writable(cfg, "pause", read_only)
    Output(as_json).emit(_set_paused(cfg, consumer_id, True), _pause_text)


def resume(
    consumer_id: OptionalIdArg = None,
    all_: AllOpt = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Resume counting of a paused consumer (or --all) on every instance of the fleet.

    Example:

        kafkaconsole resume orders

        kafkaconsole resume --all --json
    """
    _check_target(consumer_id, all_)
    cfg = fleet_config(config)
    _writable(cfg, "resume", read_only)
    Output(as_json).emit(_set_paused(cfg, consumer_id, False), _pause_text)


def reset(
    consumer_id: IdArg,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Empty a consumer's open window without triggering its pipeline.

    The discarded events stay consumed (their offsets are not replayed).

    Example:

        kafkaconsole reset orders
    """
    cfg = fleet_config(config)
    _writable(cfg, "reset", read_only)

    async def action(fleet: Fleet) -> dict[str, Any]:
        res = await fleet.reset(consumer_id)
        return {"consumer_id": consumer_id, "window_id": res.window_id, "discarded": res.discarded}

    def text(d: dict[str, Any]) -> str:
        return (
            f"reset {d['consumer_id']}: window {d['window_id']} emptied, "
            f"{d['discarded']} event(s) discarded, no trigger"
        )

    Output(as_json).emit(_with_fleet(cfg, action, consumer_id=consumer_id), text)


WAIT_POLL_S = 0.25
"""How often ``trigger --wait`` reads the run's status from Redis."""
WAIT_TIMEOUT_S = 600.0
"""``trigger --wait``'s default bound (seconds)."""
SUCCESSFUL_RUNS = ("succeeded", "coalesced")
FINAL_RUNS = (*SUCCESSFUL_RUNS, "failed", "cancelled")


@contextlib.contextmanager
def ctrl_c_sets(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C sets ``stop`` for the polling loops of ``status --watch`` and ``trigger --wait``
    (they end on it): cancelling their task alone is not enough, redis-py can complete a
    command whose task was cancelled and the loop then went on. Outside the main thread (no
    signal handling) Ctrl-C keeps its default."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``; Ctrl-C (``stop``) ends the command as KeyboardInterrupt does."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    if stop.is_set():
        raise KeyboardInterrupt


async def _wait_for_run(
    fleet: Fleet, consumer_id: str, window_id: int, timeout: float
) -> tuple[dict[str, Any], bool]:
    """The window's run once its status is final (``True``), or as it stands when
    ``timeout`` seconds have passed (``False``)."""
    deadline = time.monotonic() + timeout
    stop = asyncio.Event()
    with ctrl_c_sets(stop):
        while True:
            run = await fleet.run_status(consumer_id, window_id)
            if run.get("status") in FINAL_RUNS:
                return run, True
            if time.monotonic() >= deadline:
                return run, False
            await _pause(stop, min(WAIT_POLL_S, max(deadline - time.monotonic(), 0.0)))


def trigger(
    consumer_id: IdArg,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    read_only: ReadOnlyOpt = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until the window's pipeline run ends: exit 0 when it succeeded (or was "
            "coalesced into a run that succeeded), 1 when it failed or was cancelled, 3 when "
            "--timeout passed first (the run goes on).",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0.1,
            max=7 * 86_400,
            metavar="SECONDS",
            help="With --wait: how long to wait for the run's end.",
        ),
    ] = WAIT_TIMEOUT_S,
) -> None:
    """Close a consumer's open window now (even when empty) and run its pipeline.

    Prints the closed window's id and count; the instance holding the consumer's dispatch
    lease runs the pipeline (see `kafkaconsole history ID` for its status). With --wait it
    then follows the run (through Redis, wherever it runs) and exits by its result:
    0 succeeded, 1 failed (the run's error on stderr), 3 timed out.

    Example:

        kafkaconsole trigger orders

        kafkaconsole trigger orders --json | jq .window_id

        kafkaconsole trigger orders --wait --timeout 300 && echo synced
    """
    cfg = fleet_config(config)
    _writable(cfg, "trigger", read_only)

    async def action(fleet: Fleet) -> dict[str, Any]:
        res = await fleet.trigger(consumer_id)
        running = _instances_running(await fleet.instances(), consumer_id)
        data: dict[str, Any] = {
            "consumer_id": consumer_id,
            "status": res.status,
            "reason": "manual",
            "window_id": res.window_id,
            "count": res.count,
            "instances": running,
        }
        if wait and res.status == "closed":
            if not running:
                warn(f"no live instance runs {consumer_id}: its pipeline runs when one starts")
            run, ended = await _wait_for_run(fleet, consumer_id, res.window_id, timeout)
            data["run"] = run
            data["timed_out"] = not ended
        return data

    try:
        data = _with_fleet(cfg, action, consumer_id=consumer_id)
    except KeyboardInterrupt:
        fail(
            "stopped waiting: the window's pipeline run goes on (see kafkaconsole history)",
            ExitCode.INTERRUPTED,
        )
    if data["status"] != "closed":
        fail(f"{consumer_id}: window {data['window_id']} was not closed ({data['status']})")
    if not data["instances"] and not wait:
        warn(f"no live instance runs {consumer_id}: its pipeline runs when one starts")

    def text(d: dict[str, Any]) -> str:
        line = (
            f"triggered {d['consumer_id']}: window {d['window_id']} closed with "
            f"{d['count']} event(s) (manual); window {d['window_id'] + 1} is open"
        )
        run = d.get("run")
        if run is None:
            return line
        duration_ms = run.get("duration_ms")
        took = "" if duration_ms is None else f" in {duration_ms / 1000:.2f}s"
        return f"{line}\npipeline run of window {d['window_id']}: {run['status']}{took}"

    Output(as_json).emit(data, text)
    if not wait:
        return
    run = data["run"]
    wid = data["window_id"]
    if data["timed_out"]:
        fail(
            f"{consumer_id}: window {wid}'s pipeline run did not end within {timeout:g}s "
            f"(status {run.get('status')}); it goes on: kafkaconsole history {consumer_id}",
            ExitCode.TIMEOUT,
        )
    if run["status"] not in SUCCESSFUL_RUNS:
        attempts = run.get("attempts")
        fail(
            f"{consumer_id}: window {wid}'s pipeline run {run['status']}"
            + (f" after {attempts} attempt(s)" if attempts else "")
            + f": {run.get('error') or 'no error recorded'}"
        )


def register(app: typer.Typer) -> None:
    """Add the fleet commands to the ``kafkaconsole`` app."""
    app.command("status")(status)
    app.command("info")(info)
    app.command("pause")(pause)
    app.command("resume")(resume)
    app.command("reset")(reset)
    app.command("trigger")(trigger)
    app.command("history")(history)
    app.command("lag")(lag)


__all__ = ["ExitCode", "register"]
