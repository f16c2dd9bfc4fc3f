"""The format of the state in Redis: one version for the whole key layout (:mod:`keys`).

``<prefix>:_fleet:format`` holds the layout's version, :data:`STATE_FORMAT`. Every instance
checks it when it connects, in one script (atomic, so instances starting together agree):

- no format key: the state is new, or was written before the layout carried a version (that
  layout is format 1, unchanged): the key is set to :data:`STATE_FORMAT` and counting starts;
- the format this release writes: nothing to do;
- an older format: the :data:`MIGRATIONS` from it up to :data:`STATE_FORMAT` run, each one
  script that rewrites the keys and moves the format on by one, so a migration is applied
  whole or not at all, exactly once however many instances start at the same moment;
- a newer format (a newer release has migrated the state): the instance refuses to start, in
  one line naming both versions, and changes nothing.

The format key also tells the layout (:mod:`.keys`): plain (``<prefix>:_fleet:format``,
``[redis] mode = "single"`` or ``"sentinel"``) or tagged (``<prefix>:{_fleet}:format``,
``mode = "cluster"``). An instance finding the format key of the other layout under its prefix
refuses to start in one line: it would count in keys no instance of the other layout reads.

A change of the key layout is made only this way: :data:`STATE_FORMAT` goes up by one and a
migration from the previous format joins :data:`MIGRATIONS` (README, "Upgrades").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from kafkaconsole.engine.keys import FleetKeys, layout_name

#: How each layout's [redis] mode is named in messages (tagged -> the modes).
_MODES = {True: '"cluster"', False: '"single" or "sentinel"'}

#: The version of the key layout this release reads and writes.
STATE_FORMAT = 1


@dataclass(frozen=True)
class Migration:
    """Rewrites the state from format ``version`` to ``version + 1``: a Lua script that gets
    the format key as ``KEYS[1]`` and the prefix as ``ARGV[1]``; it is run only while the
    format key says ``version`` and must set it to ``version + 1`` itself, in the same script
    (so the rewrite and the new format are one atomic step)."""

    version: int
    lua: str
    summary: str


#: Format ``n`` -> the migration to ``n + 1``. Format 1 is the first versioned layout: state
#: written before the format key existed is format 1 already and only gets the key.
MIGRATIONS: dict[int, Migration] = {}

_CHECK = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1])
  return {0, tonumber(ARGV[1])}
end
return {1, tonumber(current)}
"""

_STEP = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[2]) then
  return 0
end
"""


class StateFormatError(RuntimeError):
    """The state in Redis is of a format this release cannot use."""


@dataclass(frozen=True)
class FormatCheck:
    found: int | None
    """The format the state had (None: no format key, it was just written)."""
    now: int
    migrated: tuple[str, ...] = ()
    """What each migration applied by this instance did."""


async def ensure_state_format(
    redis: Redis,
    prefix: str,
    *,
    current: int = STATE_FORMAT,
    migrations: Mapping[int, Migration] | None = None,
    tagged: bool = False,
) -> FormatCheck:
    """Check (and where needed stamp or migrate) the state's format; raises
    :class:`StateFormatError` for a newer format, a missing migration, or state of the other
    key layout (``tagged``: the cluster layout is this instance's)."""
    steps = MIGRATIONS if migrations is None else migrations
    keys = FleetKeys(prefix, tagged)
    key = keys.format
    if await redis.get(keys.other_layout().format) is not None:
        theirs, ours = layout_name(not tagged), layout_name(tagged)
        raise StateFormatError(
            f"the state in Redis (prefix {prefix!r}) is in the {theirs} key layout, and this "
            f"instance uses the {ours} one ([redis] mode = {_MODES[tagged]}): run it with "
            f"mode = {_MODES[not tagged]} or another key_prefix (README, Redis Cluster). "
            "Nothing was changed"
        )
    # scripts go by EVALSHA (loaded on first use): the documented Redis ACL has no EVAL
    raw: Any = await redis.register_script(_CHECK)(keys=[key], args=[str(current)])
    created, found = int(raw[0]) == 0, int(raw[1])
    if created:
        return FormatCheck(None, current)
    where = f"prefix {prefix!r}"
    if found > current:
        raise StateFormatError(
            f"the state in Redis ({where}) is format {found}, newer than this kafkaconsole "
            f"understands (format {current}): a newer release migrated it; run that release "
            "or newer here (README, Upgrades). Nothing was changed"
        )
    migrated: list[str] = []
    version = found
    while version < current:
        step = steps.get(version)
        if step is None:
            raise StateFormatError(
                f"the state in Redis ({where}) is format {version} and this kafkaconsole has no "
                f"migration from it to format {current} (README, Upgrades). Nothing was changed"
            )
        # the step runs only if the format is still `version` (another instance may have
        # migrated it a moment ago); either way the format read next is what holds
        applied: Any = await redis.register_script(_STEP + step.lua)(
            keys=[key], args=[prefix, str(version)]
        )
        if int(applied or 0):
            migrated.append(step.summary)
        version = int(await redis.get(key) or version)
        if version == step.version:  # the script neither ran nor moved the format
            raise StateFormatError(
                f"the migration of the state in Redis ({where}) from format {version} did not "
                "apply (README, Upgrades). Nothing more was changed"
            )
    return FormatCheck(found, current, tuple(migrated))


__all__ = [
    "MIGRATIONS",
    "STATE_FORMAT",
    "FormatCheck",
    "Migration",
    "StateFormatError",
    "ensure_state_format",
]
