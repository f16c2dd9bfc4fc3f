"""Configuration problems, reported all at once as ``FILE: dotted.key: message``.

A :class:`ConfigError` carries every problem found in one load, so a user fixes a file in one
pass instead of one error per run. Keys use TOML's own dotted notation with list indices
(``consumers[0].max_event``); messages never contain the value of a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dotted_key(parts: Sequence[str | int]) -> str:
    """Render a location as a dotted key: ``("consumers", 0, "max_event")`` ->
    ``consumers[0].max_event``. Keys that are not TOML bare keys are quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _BARE_KEY.match(part) else '"' + part.replace('"', '\\"') + '"'
        out = f"{out}.{text}" if out else text
    return out


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem: where (file and dotted key) and what."""

    file: str
    """The configuration file (as given by the user)."""
    key: str
    """Dotted key, or ``(file)`` / ``(toml)`` for problems with the file itself."""
    message: str
    """What is wrong; never includes a secret value."""

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class ConfigError(Exception):
    """The configuration could not be loaded; ``problems`` lists every reason."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)
