"""The control actions' refusals: one family, each mapped once to what every face shows
(the HTTP API's status, the CLI's exit code; the console shows the message as a toast)."""

from __future__ import annotations


class ControlError(Exception):
    """A control action (pause, resume, reset, trigger) or a lookup refused."""

    http_status = 400
    exit_code = 1


class ReadOnlyError(ControlError, RuntimeError):
    """A control action refused because the configuration is read-only."""

    http_status = 403

    def __init__(self, action: str) -> None:
        super().__init__(
            f"refusing to {action}: read-only mode ([ui] read_only = true or --read-only)"
        )
        self.action = action


class UnknownConsumerError(ControlError, LookupError):
    """No consumer with that id in the configuration."""

    http_status = 404

    def __init__(self, consumer_id: str, known: list[str]) -> None:
        super().__init__(f"unknown consumer {consumer_id!r} (known: {', '.join(known) or 'none'})")
        self.consumer_id = consumer_id
