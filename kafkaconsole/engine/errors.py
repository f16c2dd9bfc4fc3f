"""The control actions' refusals: one family, each mapped once to what every face shows.

A refusal is raised wherever it is found (the CLI before it touches Redis, the console before
it calls the engine, the fleet's control path itself) and shown through its class: the HTTP
API answers :attr:`ControlError.http_status`, the CLI exits with :attr:`ControlError.exit_code`
and prints the message, the console shows :meth:`ControlError.toast`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Where read-only mode is switched on, as every refusal names it.
READ_ONLY_HINT = "[ui] read_only = true or --read-only"

ReadOnlySource = Literal["mode", "flag", "config"]
_READ_ONLY_WHY: dict[str, str] = {
    "mode": READ_ONLY_HINT,
    "flag": "--read-only",
    "config": "the configuration sets [ui] read_only = true",
}


@dataclass(frozen=True, slots=True)
class Toast:
    """A refusal as the console shows it (a notification)."""

    message: str
    title: str
    severity: Literal["information", "warning", "error"]


class ControlError(Exception):
    """A control action (pause, resume, reset, trigger) or a lookup refused."""

    http_status = 400
    exit_code = 1

    def toast(self, what: str, consumer_id: str | None = None) -> Toast:
        """``what`` (the console's name of the command, "Pause") refused for ``consumer_id``."""
        who = f"{consumer_id}: " if consumer_id else ""
        return Toast(f"{who}{self}", f"{what} failed", "error")


class ReadOnlyError(ControlError, RuntimeError):
    """A control action refused because the configuration is read-only.

    ``source`` says what switched read-only mode on (as the CLI's message names it);
    ``local`` marks a refusal by the face itself, before the engine was asked.
    """

    http_status = 403

    def __init__(self, action: str, source: ReadOnlySource = "mode", *, local: bool = False):
        super().__init__(f"refusing to {action}: read-only mode ({_READ_ONLY_WHY[source]})")
        self.action = action
        self.source = source
        self.local = local

    def toast(self, what: str, consumer_id: str | None = None) -> Toast:
        if self.local:
            text = f"{what} refused: this console is read-only ({READ_ONLY_HINT})."
        else:
            who = f"{consumer_id}: " if consumer_id else ""
            text = f"{who}{what} refused by the engine: read-only mode ({READ_ONLY_HINT})."
        return Toast(text, "Read-only", "warning")


class UnknownConsumerError(ControlError, LookupError):
    """No consumer with that id in the configuration."""

    http_status = 404

    def __init__(
        self, consumer_id: str, known: list[str], what: str = "consumer", note: str | None = None
    ) -> None:
        """``note`` adds why the id may still exist (the runtime definitions were not read)."""
        text = f"unknown {what} {consumer_id!r} (known: {', '.join(known) or 'none'})"
        super().__init__(f"{text}; {note}" if note else text)
        self.consumer_id = consumer_id


class ConsumerClashError(ControlError):
    """A runtime definition refused: the configuration file defines a consumer of that id
    (the file's consumer wins)."""

    http_status = 409

    def __init__(self, consumer_id: str, action: str = "define") -> None:
        super().__init__(
            f"cannot {action} consumer {consumer_id!r} at runtime: the configuration file "
            "defines a consumer of that id (the file's consumer wins)"
        )
        self.consumer_id = consumer_id
