"""Every key binding of the console, with the id that ``[ui.keymap]`` uses to remap it.

One table drives the app's ``BINDINGS``, the help screen and the command palette, so the three
never disagree. Keys use Textual's names (``slash``, ``question_mark``, ``enter``); a keymap
value may list several keys separated by commas, e.g. ``{ pause = "space,p" }``.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    key: str
    action: str
    label: str
    """Short label for the footer."""
    title: str
    """Command palette title."""
    help: str
    """One line for the help screen and the palette."""
    show: bool = True
    """Shown in the footer."""
    palette: bool = True
    """Offered in the command palette."""


APP_COMMANDS: tuple[Command, ...] = (
    Command(
        "pause",
        "p",
        "toggle_pause",
        "Pause",
        "Pause / resume consumer",
        "Pause or resume the selected consumer on every instance",
    ),
    Command(
        "pause_all",
        "P",
        "toggle_pause_all",
        "Pause all",
        "Pause / resume all consumers",
        "Pause every consumer (resume all when all are paused)",
        show=False,
    ),
    Command(
        "reset",
        "r",
        "reset",
        "Reset",
        "Reset counters",
        "Empty the open window without triggering (asks first)",
    ),
    Command(
        "trigger",
        "t",
        "trigger",
        "Trigger",
        "Force-trigger",
        "Close the open window now and run its pipeline (asks first)",
    ),
    Command(
        "detail",
        "enter",
        "detail",
        "Detail",
        "Consumer detail",
        "Partitions, rates, trigger history, errors and config of the selected consumer",
    ),
    Command(
        "back",
        "escape",
        "leave",
        "Back",
        "Back",
        "Leave the detail view, or clear the filter",
        show=False,
    ),
    Command(
        "filter",
        "slash",
        "filter",
        "Filter",
        "Filter consumers",
        "Show only consumers whose id or topic contains the text",
    ),
    Command(
        "log", "l", "toggle_log", "Log", "Toggle log panel", "Show or hide the engine's log lines"
    ),
    Command(
        "reload",
        "R",
        "reload",
        "Reload",
        "Reload the config",
        "Re-read this instance's config file and apply it live (kafkaconsole reload: fleet-wide)",
        show=False,
    ),
    Command(
        "command",
        "colon",
        "command_line",
        "Command",
        "Command line",
        "Type a command: pause ID, resume ID, reset ID, trigger ID, detail ID, filter, sort",
    ),
    Command(
        "theme",
        "T",
        "cycle_theme",
        "Theme",
        "Cycle theme",
        "Switch to the next kafkaconsole theme",
        show=False,
    ),
    Command("help", "question_mark", "help", "Help", "Help", "List every key binding"),
    Command(
        "quit",
        "q",
        "quit",
        "Quit",
        "Quit",
        "Stop the engine gracefully (finish the batch, commit offsets), then exit",
    ),
)

DETAIL_COMMANDS: tuple[Command, ...] = (
    Command(
        "detail.overview",
        "1",
        "show_tab('overview')",
        "Overview",
        "Detail: overview",
        "Detail view: partitions and trigger history",
        palette=False,
    ),
    Command(
        "detail.errors",
        "2",
        "show_tab('errors')",
        "Errors",
        "Detail: errors",
        "Detail view: DLQ and error tail",
        palette=False,
    ),
    Command(
        "detail.config",
        "3",
        "show_tab('config')",
        "Config",
        "Detail: config",
        "Detail view: the consumer's config, secrets masked",
        palette=False,
    ),
    Command(
        "detail.dlq",
        "d",
        "peek('dlq')",
        "DLQ",
        "Detail: browse the DLQ",
        "Detail view: the DLQ's latest records, why each is there, payload pretty-printed",
        palette=False,
    ),
    Command(
        "detail.tail",
        "v",
        "peek('tail')",
        "Latest",
        "Detail: latest events",
        "Detail view: the topic's latest events (enter on a trigger: that window's events)",
        palette=False,
    ),
)

SORT_COMMANDS: tuple[Command, ...] = (
    Command(
        "sort",
        "s",
        "cycle_sort",
        "Sort",
        "Sort: next column",
        "Sort the table by the next column (config order after the last)",
    ),
    Command(
        "sort.name",
        "N",
        "sort_by('id')",
        "Sort by name",
        "Sort by consumer",
        "Sort by consumer id, A to Z (again: reverse)",
        show=False,
    ),
    Command(
        "sort.health",
        "H",
        "sort_by('health')",
        "Sort by health",
        "Sort by health",
        "Sort by health, worst first (again: reverse)",
        show=False,
    ),
    Command(
        "sort.rate",
        "E",
        "sort_by('rate')",
        "Sort by events/s",
        "Sort by events/s",
        "Sort by events/s, busiest first (again: reverse)",
        show=False,
    ),
    Command(
        "sort.lag",
        "L",
        "sort_by('lag')",
        "Sort by lag",
        "Sort by lag",
        "Sort by lag, largest first (again: reverse)",
        show=False,
    ),
    Command(
        "sort.behind",
        "B",
        "sort_by('tlag')",
        "Sort by time lag",
        "Sort by time lag",
        "Sort by time lag (Behind), furthest behind first (again: reverse)",
        show=False,
    ),
    Command(
        "sort.count",
        "C",
        "sort_by('count')",
        "Sort by window fill",
        "Sort by window fill",
        "Sort by how full the open window is, fullest first (again: reverse)",
        show=False,
    ),
    Command(
        "sort.errors",
        "X",
        "sort_by('err')",
        "Sort by errors",
        "Sort by errors",
        "Sort by errors and DLQ sends, most first (again: reverse)",
        show=False,
    ),
    Command(
        "sort.none",
        "O",
        "sort_by('')",
        "Config order",
        "Sort: config order",
        "Back to the config's order",
        show=False,
    ),
)

CONFIRM_COMMANDS: tuple[Command, ...] = (
    Command(
        "confirm.yes",
        "y",
        "confirm",
        "Yes",
        "Confirm",
        "In a confirm dialog: go ahead",
        palette=False,
    ),
    Command(
        "confirm.no",
        "n",
        "cancel",
        "No",
        "Cancel",
        "In a confirm dialog: cancel (escape too)",
        palette=False,
    ),
)

ALL_COMMANDS = APP_COMMANDS + SORT_COMMANDS + DETAIL_COMMANDS + CONFIRM_COMMANDS


def bindings_for(commands: tuple[Command, ...]) -> list[BindingType]:
    return [
        Binding(c.key, c.action, c.label, show=c.show, id=c.id, tooltip=c.help) for c in commands
    ]


def detail_bindings() -> list[BindingType]:
    """The detail view's keys: its tabs, and escape back to the table, all in its footer."""
    back = next(c for c in APP_COMMANDS if c.id == "back")
    return [
        Binding(back.key, "app.leave", back.label, id=back.id, tooltip=back.help),
        *bindings_for(DETAIL_COMMANDS),
    ]


def key_for(command: Command, keymap: dict[str, str]) -> str:
    """The key(s) a command is bound to after the keymap."""
    return keymap.get(command.id, command.key)


def unknown_keymap_ids(keymap: dict[str, str]) -> list[str]:
    known = {c.id for c in ALL_COMMANDS}
    return sorted(k for k in keymap if k not in known)


__all__ = [
    "ALL_COMMANDS",
    "APP_COMMANDS",
    "CONFIRM_COMMANDS",
    "DETAIL_COMMANDS",
    "SORT_COMMANDS",
    "Command",
    "bindings_for",
    "detail_bindings",
    "key_for",
    "unknown_keymap_ids",
]
