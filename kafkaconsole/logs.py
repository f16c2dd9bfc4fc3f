"""Logging set-up shared by the headless process and the CLI: human or JSON lines on stderr.

Every record passes through a filter that replaces known secret values with ``******``, so a
password that reaches an exception message never reaches the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO

import orjson

from kafkaconsole.config.secrets import MASK, redact

__all__ = ["MASK", "JsonFormatter", "SecretMaskFilter", "setup_logging"]


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if event:
            body["event"] = event
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
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("kafkaconsole").setLevel(level)
    return handler
