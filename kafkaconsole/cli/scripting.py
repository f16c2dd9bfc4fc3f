"""Output for scripts: NDJSON streams that end cleanly, and CSV that spreadsheets read.

``status --watch`` writes one JSON object per line for as long as it runs; a pipe whose
reader went away (``| head -1``) ends it quietly with exit 0, whether the next line is being
written (EPIPE) or none is due (the pipe is polled for its reader between lines).
``history --format csv`` writes RFC 4180 CSV: a header row, CRLF line ends, fields quoted
only when they hold a comma, a quote or a line break, quotes doubled.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import select
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from kafkaconsole.cli.output import json_safe

#: Fields of a consumer's status that move with the clock alone (a countdown, an age): a
#: change in them is not a change of the consumer, so ``status --watch`` ignores them.
CLOCK_FIELDS = frozenset(
    {
        "time_left",
        "time_to_trigger_seconds",
        "time_lag_seconds",
        "reported_at_ms",
        "backlog_age_seconds",
    }
)


class ReaderGone(Exception):
    """stdout is a pipe whose reader has gone (``| head -1`` read its line and exited)."""


def change_key(consumer: dict[str, Any]) -> bytes:
    """What ``status --watch`` compares between two reads of one consumer: its status object
    without :data:`CLOCK_FIELDS` (nor each partition's ``time_lag_seconds``)."""
    kept = {k: v for k, v in consumer.items() if k not in CLOCK_FIELDS}
    kept["partitions"] = [
        {k: v for k, v in p.items() if k not in CLOCK_FIELDS}
        for p in consumer.get("partitions") or []
    ]
    return orjson.dumps(json_safe(kept), option=orjson.OPT_SORT_KEYS)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush finds no broken pipe."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def write_line(document: Any) -> None:
    """One NDJSON line on stdout, flushed at once; :class:`ReaderGone` on a broken pipe."""
    line = orjson.dumps(json_safe(document)).decode() + "\n"
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        raise ReaderGone() from None


def reader_gone() -> bool:
    """True when stdout is a pipe nobody reads any more (Linux reports POLLERR on its write
    end); False for a terminal, a file, or a stream without a descriptor."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    gone = any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    if gone:
        _silence_stdout()
    return gone


# ---- history as CSV ---------------------------------------------------------------------------

#: ``history --format csv``'s columns, in this order (stable: scripts may index them).
HISTORY_CSV_COLUMNS = (
    "consumer_id",
    "window_id",
    "reason",
    "count",
    "opened_at",
    "closed_at",
    "status",
    "run_id",
    "attempts",
    "started_at",
    "finished_at",
    "duration_ms",
    "error",
    "offsets",
    "replay",
)


def _offsets_cell(offsets: Iterable[dict[str, Any]]) -> str:
    """``topic:partition:first-last`` per partition, ``;``-separated (topic names hold
    neither ``:`` nor ``;``)."""
    return ";".join(f"{o['topic']}:{o['partition']}:{o['first']}-{o['last']}" for o in offsets)


def history_rows(records: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per trigger record (:data:`HISTORY_CSV_COLUMNS`); empty cells for nulls."""

    def text(value: Any) -> str:
        return "" if value is None else str(value)

    rows = []
    for record in records:
        run = record.get("run") or {}
        rows.append(
            [
                text(record["consumer_id"]),
                text(record["window_id"]),
                text(record["reason"]),
                text(record["count"]),
                text(record.get("opened_at")),
                text(record.get("closed_at")),
                text(record.get("status")),
                text(run.get("run_id")),
                text(run.get("attempts")),
                text(run.get("started_at")),
                text(run.get("finished_at")),
                text(run.get("duration_ms")),
                text(run.get("error")),
                _offsets_cell(record.get("offsets") or ()),
                "true" if record.get("replay") else "",
            ]
        )
    return rows


def history_csv(records: Sequence[dict[str, Any]]) -> str:
    """The records as RFC 4180 CSV, header row first, every line ending in CRLF."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(HISTORY_CSV_COLUMNS)
    writer.writerows(history_rows(records))
    return buffer.getvalue()
