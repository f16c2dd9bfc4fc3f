"""Theme files (TOML) turned into Textual :class:`~textual.theme.Theme` objects.

The shipped themes live in ``kafkaconsole/tui/themes/`` (package data; ``themes/`` at the repo
root holds the same files for people browsing the repository). User themes are read from
``$KAFKACONSOLE_THEME_DIR`` or ``~/.config/kafkaconsole/themes/``, and ``[ui] theme`` /
``--theme`` may also name a theme file directly. A file with a bad colour is skipped with a
message naming the file, the key and the value, and the console falls back to the default.

Besides Textual's base colours a theme sets the console's own variables (``$lag-warn``,
``$threshold-bar``, ...). Themes that leave some out (Textual's built-in ones, for example)
get values derived from their base colours, so every stylesheet variable always resolves.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import Theme

DEFAULT_THEME = "kafkaconsole-dark"
PACKAGE_THEME_DIR = Path(__file__).parent / "themes"

BASE_COLOURS = (
    "primary",
    "secondary",
    "accent",
    "warning",
    "error",
    "success",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)

#: The console's own theme variables and, for themes that omit one, the base colour it copies.
CUSTOM_VARIABLES: dict[str, str] = {
    "threshold-bar": "primary",
    "time-bar": "secondary",
    "bar-empty": "panel",
    "bar-text": "foreground",
    "lag-warn": "warning",
    "lag-ok": "success",
    "state-running": "success",
    "state-paused": "warning",
    "state-rebalancing": "accent",
    "state-error": "error",
    "state-stopped": "foreground-darken-2",
    "pipeline-ok": "success",
    "pipeline-failed": "error",
    "pipeline-pending": "accent",
    "spark-rate": "primary",
    "spark-lag": "warning",
}


class ThemeFileError(ValueError):
    """A theme file that cannot be used; the message names the file, key and problem."""

    def __init__(self, path: str, problem: str, key: str | None = None) -> None:
        where = f"{path}: {key}" if key else path
        super().__init__(f"theme file {where}: {problem}")
        self.path = path
        self.key = key


def _colour(path: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ThemeFileError(path, f"must be a colour string, not {type(value).__name__}", key)
    try:
        Color.parse(value)
    except ColorParseError:
        raise ThemeFileError(path, f"{value!r} is not a colour", key) from None
    return value


def theme_from_mapping(data: Mapping[str, Any], path: str = "<theme>") -> Theme:
    """Validate a parsed theme file and build the Theme."""
    known = {"name", "dark", "variables", *BASE_COLOURS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ThemeFileError(path, f"unknown key(s) {', '.join(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ThemeFileError(path, "a non-empty `name` is required", "name")
    if "primary" not in data:
        raise ThemeFileError(path, "`primary` is required", "primary")
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise ThemeFileError(path, "must be true or false", "dark")
    colours: dict[str, Any] = {k: _colour(path, k, data[k]) for k in BASE_COLOURS if k in data}
    variables_raw = data.get("variables", {})
    if not isinstance(variables_raw, Mapping):
        raise ThemeFileError(path, "must be a table", "variables")
    variables = {str(k): _colour(path, f"variables.{k}", v) for k, v in variables_raw.items()}
    return Theme(name=name.strip(), dark=dark, variables=variables, **colours)


def load_theme_file(path: Path) -> Theme:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ThemeFileError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ThemeFileError(str(path), f"not valid TOML: {exc}") from None
    return theme_from_mapping(data, str(path))


def user_theme_dir() -> Path:
    override = os.environ.get("KAFKACONSOLE_THEME_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kafkaconsole" / "themes"


def default_theme_dirs() -> list[Path]:
    return [PACKAGE_THEME_DIR, user_theme_dir()]


@dataclass
class ThemeCatalog:
    """The themes found, in load order, and the problems met on the way."""

    themes: dict[str, Theme] = field(default_factory=dict)
    problems: list[ThemeFileError] = field(default_factory=list)

    def add_file(self, path: Path) -> Theme | None:
        try:
            theme = load_theme_file(path)
        except ThemeFileError as exc:
            self.problems.append(exc)
            return None
        self.themes[theme.name] = theme
        return theme


def load_themes(dirs: Iterable[Path] | None = None) -> ThemeCatalog:
    """Every ``*.toml`` theme of ``dirs`` (later directories override earlier names)."""
    catalog = ThemeCatalog()
    for d in default_theme_dirs() if dirs is None else dirs:
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.toml")):
            catalog.add_file(path)
    return catalog


def looks_like_path(requested: str) -> bool:
    return requested.endswith(".toml") or os.sep in requested or "/" in requested


def choose_theme(
    requested: str | None, catalog: ThemeCatalog, available: Iterable[str]
) -> tuple[str, str | None]:
    """The theme to use for ``requested`` (a name or a file), and a notice if it fell back.

    ``available`` holds every registered name (the catalog's and Textual's built-ins).
    A requested file is loaded into the catalog (the caller registers it).
    """
    names = set(available) | set(catalog.themes)
    fallback = DEFAULT_THEME if DEFAULT_THEME in names else "textual-dark"
    if not requested:
        return fallback, None
    if looks_like_path(requested):
        theme = catalog.add_file(Path(requested).expanduser())
        if theme is None:
            return fallback, f"{catalog.problems[-1]}; using {fallback}"
        return theme.name, None
    if requested in names:
        return requested, None
    broken = [p for p in catalog.problems if Path(p.path).stem == requested]
    if broken:
        return fallback, f"{broken[0]}; using {fallback}"
    return fallback, (
        f"unknown theme {requested!r} (known: {', '.join(sorted(names))}); using {fallback}"
    )


def variable_defaults(theme: Theme) -> dict[str, str]:
    """Values of the console's variables that ``theme`` does not set, from its base colours."""
    generated = theme.to_color_system().generate()
    out = {}
    for name, base in CUSTOM_VARIABLES.items():
        value = generated.get(base) or generated.get("foreground") or "white"
        out[name] = value
    return out


__all__ = [
    "CUSTOM_VARIABLES",
    "DEFAULT_THEME",
    "PACKAGE_THEME_DIR",
    "ThemeCatalog",
    "ThemeFileError",
    "choose_theme",
    "load_theme_file",
    "load_themes",
    "theme_from_mapping",
    "variable_defaults",
]
