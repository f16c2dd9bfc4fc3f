"""What every CLI command shares about output: exit codes, human vs ``--json``, failures.

stdout is data (aligned plain-text tables, or stable JSON with ``--json``); stderr is
diagnostics. A command builds its result once and hands it to :class:`Output`, which prints
either the JSON document or the human rendering, never both. :func:`fail` is the one way to
stop with a message: one line on stderr and the exit code, never a traceback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NoReturn

import typer


class ExitCode(IntEnum):
    """Process exit codes of every ``kafkaconsole`` command."""

    OK = 0
    FAILURE = 1
    CONFIG_ERROR = 2
    TIMEOUT = 3
    """``trigger --wait`` gave up waiting (``--timeout``); the run goes on."""
    INTERRUPTED = 130
    """Ctrl-C while ``trigger --wait`` waited (the shell's 128 + SIGINT)."""


def fail(message: str, code: ExitCode = ExitCode.FAILURE) -> NoReturn:
    """Print ``error: message`` on stderr (one line) and exit with ``code``."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(int(code))


def warn(message: str) -> None:
    """A diagnostic line on stderr that does not change the exit code."""
    typer.echo(f"warning: {message}", err=True)


def json_safe(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def dumps(data: Any) -> str:
    """The stable JSON form printed by ``--json``: indented, keys in model order."""
    return json.dumps(json_safe(data), indent=2, ensure_ascii=False)


class Output:
    """Prints a command's result as JSON (``--json``) or as human text, on stdout."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json

    def emit(self, data: Any, human: Callable[[Any], str | None]) -> None:
        """Print ``data`` as JSON, or ``human(data)`` as text."""
        if self.as_json:
            typer.echo(dumps(data))
            return
        text = human(data)
        if text:
            typer.echo(text.rstrip("\n"))


# ---- human formatting -----------------------------------------------------------------------


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """Plain aligned columns; numbers right-aligned, text left-aligned."""
    texts = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in texts)])


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h10m`` (or ``-``)."""
    if seconds is None:
        return "-"
    if not math.isfinite(seconds):
        return "never"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def since(iso: str | None, now: datetime | None = None) -> str:
    """``12s ago`` for an ISO 8601 time (or ``-``)."""
    if not iso:
        return "-"
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    now = now or datetime.now(UTC)
    return f"{duration(max((now - then).total_seconds(), 0.0))} ago"


def progress(count: int, max_event: int) -> str:
    """``120/1000 (12%)``."""
    pct = 100 * count / max_event if max_event else 0
    return f"{count}/{max_event} ({pct:.0f}%)"
