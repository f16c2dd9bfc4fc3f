"""Log records go to the console while it runs, never to the terminal it draws on.

:class:`LogCapture` swaps the root and ``kafkaconsole`` loggers' handlers for a
:class:`ConsoleLogHandler` (secrets masked) that puts lines in the app's
:class:`~kafkaconsole.tui.viewmodel.LogBook`; the UI timer drains the book into the log panel,
so no record ever makes a UI call of its own. :meth:`LogCapture.restore` puts everything back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from kafkaconsole.config.secrets import redact
from kafkaconsole.logs import RepeatFilter
from kafkaconsole.tui.viewmodel import LogBook, LogLine


class ConsoleLogHandler(logging.Handler):
    """Puts log records in the console's :class:`LogBook` (drained by the UI timer).

    The whole line (message and exception text) goes through ``mask`` (the config's
    :func:`~kafkaconsole.config.secrets.masker`), else through a mask of ``secrets``.
    """

    def __init__(
        self,
        book: LogBook,
        secrets: Iterable[str] = (),
        *,
        mask: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(logging.INFO)
        self.addFilter(RepeatFilter())  # a client library's retry chatter: one line a minute
        self.book = book
        if mask is None:
            values = frozenset(s for s in secrets if s)

            def mask(text: str) -> str:
                return redact(text, values)

        self.mask = mask

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f" ({type(exc).__name__}: {exc})"
            message = self.mask(message)
            self.book.add(LogLine(record.created, record.levelno, record.name, message))
        except Exception:  # never let logging reach the terminal
            pass

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class LogCapture:
    """Routes the root and ``kafkaconsole`` loggers to the console while it runs."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        self._saved: list[tuple[logging.Logger, list[logging.Handler], int, bool]] = []

    def install(self) -> None:
        if self._saved:
            return
        for name in ("", "kafkaconsole"):
            lg = logging.getLogger(name)
            self._saved.append((lg, list(lg.handlers), lg.level, lg.propagate))
            for h in list(lg.handlers):
                lg.removeHandler(h)
        root = logging.getLogger()
        root.addHandler(self.handler)
        root.setLevel(logging.WARNING)
        kc = logging.getLogger("kafkaconsole")
        kc.setLevel(logging.INFO)
        kc.propagate = True

    def restore(self) -> None:
        for lg, handlers, level, propagate in reversed(self._saved):
            for h in list(lg.handlers):
                lg.removeHandler(h)
            for h in handlers:
                lg.addHandler(h)
            lg.setLevel(level)
            lg.propagate = propagate
        self._saved = []


__all__ = ["ConsoleLogHandler", "LogCapture"]
