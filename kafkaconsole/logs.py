"""Logging set-up shared by the headless process and the CLI: human or JSON lines on stderr.

Every record passes through a filter that replaces known secret values with ``******``, so a
password that reaches an exception message never reaches the log, and one that collapses a
client library's retry chatter (aiokafka logs every failed reconnect to a dead broker, about
twenty lines a second) into one line, then a count of the repeats once a minute.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO

import orjson

from kafkaconsole.config.secrets import MASK, redact

__all__ = ["FIELDS", "MASK", "JsonFormatter", "RepeatFilter", "SecretMaskFilter", "setup_logging"]

#: Loggers of libraries whose repeated lines are collapsed (our own lines never are: each
#: says something new, and the engine already logs a repeated error once)
CHATTY_LOGGERS = ("aiokafka", "kafka")


class RepeatFilter(logging.Filter):
    """Lets the first of identical lines through, drops the same line repeated within
    ``window`` seconds, and once that window has passed lets it through again saying how
    often it was repeated meanwhile. Applies to the loggers of ``CHATTY_LOGGERS`` only."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in CHATTY_LOGGERS:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        first, repeats = self._seen.get(key, (now - self.window - 1, 0))
        if now - first <= self.window:
            self._seen[key] = (first, repeats + 1)
            return False
        self._seen[key] = (now, 0)
        if len(self._seen) > 1000:  # forget lines not repeated for a window
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] <= self.window}
        if repeats:
            record.msg = f"{record.getMessage()} (repeated {repeats} times in {self.window:.0f} s)"
            record.args = None
        return True


class SecretMaskFilter(logging.Filter):
    """Masks every known secret value in a record's rendered message, exception and stack,
    and any URL password or token-like query parameter (even of values it was not told)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)
        self._values = frozenset(self.secrets)

    def mask(self, text: str) -> str:
        return redact(text, self._values)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        masked = self.mask(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


#: Structured fields a record may carry (``extra=`` where it is logged, or the headless
#: process's filter for ``instance_id``); JSON lines include those that are set.
FIELDS = ("event", "instance_id", "consumer_id", "window_id", "pipeline")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the :data:`FIELDS` that are set
    (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "":
                body[name] = value
        if record.exc_info or record.exc_text:
            body["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return orjson.dumps(body).decode()


def setup_logging(
    fmt: str = "text",
    level: int = logging.INFO,
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Route the ``kafkaconsole`` loggers to stderr (or ``stream``)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"
            )
        )
    handler.addFilter(SecretMaskFilter(secrets))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("kafkaconsole").setLevel(level)
    return handler
