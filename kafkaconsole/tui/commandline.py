"""The console's ``:`` command line: ``:pause orders``, ``:sort lag desc``, ``:seek orders -1h``.

:func:`parse` turns a line into a :class:`ConsoleCommand` (what to do and to which consumer)
or raises :class:`CommandLineError` with one line saying what is wrong; the app runs it through
the same actions as its keys (confirm dialogs and the read-only refusal included).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.suggester import SuggestFromList
from textual.widgets import Input

from kafkaconsole.engine.errors import ControlError
from kafkaconsole.engine.seek import SEEK_WINDOWS, parse_target, parse_window
from kafkaconsole.tui.viewmodel import SORT_COLUMNS

#: Command -> (argument it takes, what it does); the help line and the suggestions come from it.
COMMANDS: dict[str, tuple[str, str]] = {
    "pause": ("ID|all", "pause a consumer (or all) on every instance"),
    "resume": ("ID|all", "resume a consumer (or all) on every instance"),
    "reset": ("ID", "empty a consumer's open window (asks first)"),
    "trigger": ("ID", "close a consumer's open window now and run its pipeline (asks first)"),
    "seek": (
        "ID TARGET [close|discard]",
        "move a consumer's position to TARGET (earliest, latest, an offset, an ISO time, -2h): "
        "replay or skip events; the open window is closed (default) or discarded (asks first)",
    ),
    "detail": ("ID", "open a consumer's detail view"),
    "filter": ("[TEXT]", "show consumers whose id or topic contains TEXT (none: all)"),
    "sort": ("[COLUMN [asc|desc]]", "sort the table (none: the config's order)"),
    "theme": ("NAME", "switch to a theme"),
    "reload": ("", "re-read this instance's config file and apply it live"),
    "log": ("", "show or hide the log panel"),
    "help": ("", "list every key binding"),
    "quit": ("", "stop the engine gracefully, then exit"),
}
ALIASES = {"q": "quit", "open": "detail", "unpause": "resume"}
#: Words a sort column answers to (its table key, and its title's words).
SORT_WORDS: dict[str, str] = {
    **{c.key: c.key for c in SORT_COLUMNS},
    "name": "id",
    "consumer": "id",
    "events": "rate",
    "ev/s": "rate",
    "behind": "tlag",
    "time-lag": "tlag",
    "fill": "count",
    "window": "count",
    "errors": "err",
    "dlq": "err",
}


class CommandInput(Input):
    """The command line's field: tab takes the suggestion shown (as right arrow does)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "complete", "Complete", show=False),
    ]

    def action_complete(self) -> None:
        self.action_end()
        self.action_cursor_right()


class CommandLineError(ValueError):
    """A command line that cannot run; the message is one line for a toast."""


@dataclass(frozen=True)
class ConsoleCommand:
    name: str
    """One of :data:`COMMANDS`."""
    target: str | None = None
    """A consumer id, ``all``, a filter text, a sort column key or a theme name."""
    descending: bool | None = None
    """For ``sort``: the direction asked for (None: the column's first direction)."""
    to: str | None = None
    """For ``seek``: the target as typed (already checked by ``parse_target``)."""
    window: str = "close"
    """For ``seek``: what happens to the open window, ``close`` or ``discard``."""


def usage() -> str:
    return "; ".join(f"{name} {arg}".strip() for name, (arg, _) in COMMANDS.items())


def parse(line: str, consumer_ids: Sequence[str]) -> ConsoleCommand:
    """The command on ``line``; :class:`CommandLineError` names what is wrong."""
    try:
        words = shlex.split(line.strip().removeprefix(":"))
    except ValueError as exc:
        raise CommandLineError(f"cannot read {line!r}: {exc}") from None
    if not words:
        raise CommandLineError(f"type a command: {usage()}")
    name, args = ALIASES.get(words[0].lower(), words[0].lower()), words[1:]
    if name not in COMMANDS:
        raise CommandLineError(f"unknown command {words[0]!r}; commands: {usage()}")
    if name in ("pause", "resume", "reset", "trigger", "detail"):
        if len(args) != 1:
            raise CommandLineError(f"{name} takes one consumer id: {name} {COMMANDS[name][0]}")
        target = args[0]
        if target == "all" and name in ("pause", "resume"):
            return ConsoleCommand(name, "all")
        return ConsoleCommand(name, _known(name, target, consumer_ids))
    if name == "seek":
        return _seek(args, consumer_ids)
    if name == "filter":
        return ConsoleCommand(name, " ".join(args))
    if name == "sort":
        if not args or args[0].lower() in ("none", "config", "off"):
            if len(args) > 1:
                raise CommandLineError("sort none takes no direction")
            return ConsoleCommand(name, None)
        column = SORT_WORDS.get(args[0].lower())
        if column is None:
            words_ = ", ".join(sorted(SORT_WORDS))
            raise CommandLineError(f"sort: no column {args[0]!r}; columns: {words_}, none")
        if len(args) > 2 or (len(args) == 2 and args[1].lower() not in ("asc", "desc")):
            raise CommandLineError("sort COLUMN takes asc or desc after it")
        descending = None if len(args) == 1 else args[1].lower() == "desc"
        return ConsoleCommand(name, column, descending)
    if name == "theme":
        if len(args) != 1:
            raise CommandLineError("theme takes one theme name")
        return ConsoleCommand(name, args[0])
    if args:
        raise CommandLineError(f"{name} takes no argument")
    return ConsoleCommand(name)


def _known(name: str, target: str, consumer_ids: Sequence[str]) -> str:
    if target not in consumer_ids:
        known = ", ".join(consumer_ids) or "none"
        raise CommandLineError(f"{name}: no consumer {target!r} in this config; known: {known}")
    return target


def _seek(args: list[str], consumer_ids: Sequence[str]) -> ConsoleCommand:
    """``seek ID TARGET [close|discard]``: the target is checked here, so a bad one is one
    line at once (the plan is read from Kafka and Redis by the dialog)."""
    if len(args) not in (2, 3):
        raise CommandLineError(f"seek takes a consumer id and a target: seek {COMMANDS['seek'][0]}")
    cid = _known("seek", args[0], consumer_ids)
    try:
        parse_target(args[1])
    except ControlError as exc:
        raise CommandLineError(str(exc)) from None  # "seek target 'x' is not one of: ..."
    try:
        window = parse_window(args[2].lower()) if len(args) == 3 else "close"
    except ControlError as exc:
        raise CommandLineError(f"seek: {exc}") from None
    return ConsoleCommand("seek", cid, to=args[1], window=window)


def suggester(consumer_ids: Sequence[str]) -> SuggestFromList:
    """Completions for the command line: every command, with each consumer id where one fits."""
    lines = [f"{name} " if arg else name for name, (arg, _) in COMMANDS.items()]
    for name in ("pause", "resume", "reset", "trigger", "detail"):
        lines += [f"{name} {cid}" for cid in consumer_ids]
    lines += ["pause all", "resume all"]
    for cid in consumer_ids:
        lines += [f"seek {cid} "] + [f"seek {cid} {to}" for to in ("earliest", "latest")]
        lines += [f"seek {cid} {to} {w}" for to in ("earliest", "latest") for w in SEEK_WINDOWS]
    lines += [f"sort {c.key}" for c in SORT_COLUMNS]
    return SuggestFromList(lines, case_sensitive=False)


__all__ = [
    "COMMANDS",
    "CommandInput",
    "CommandLineError",
    "ConsoleCommand",
    "parse",
    "suggester",
    "usage",
]
