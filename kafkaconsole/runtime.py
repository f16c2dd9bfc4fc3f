"""Where a running ``kafkaconsole demo`` says which config it wrote.

The demo writes ``demo.json`` (``{"config": PATH, "pid": PID}``) into the runtime folder:
``$KAFKACONSOLE_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/kafkaconsole``, else
``<temp dir>/kafkaconsole-<uid>``. The steering commands read it when neither ``--config``,
``$KAFKACONSOLE_CONFIG`` nor ``./kafkaconsole.toml`` names a configuration. A file whose process
is gone, or whose config no longer exists, is ignored; the demo removes it when it stops.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import orjson

RUNTIME_DIR_ENV = "KAFKACONSOLE_RUNTIME_DIR"
DEMO_FILE = "demo.json"


def runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if env is None else env
    if chosen := environ.get(RUNTIME_DIR_ENV):
        return Path(chosen).expanduser()
    if xdg := environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "kafkaconsole"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"kafkaconsole-{uid}"


def demo_file(env: Mapping[str, str] | None = None) -> Path:
    return runtime_dir(env) / DEMO_FILE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def write_demo_file(config_path: Path, pid: int | None = None) -> Path:
    """Record ``config_path`` as the running demo's config (private to this user)."""
    path = demo_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps({"config": str(config_path.resolve()), "pid": pid or os.getpid()}))
    tmp.replace(path)
    return path


def remove_demo_file(config_path: Path) -> None:
    """Remove the record if it still names ``config_path`` (a later demo may have replaced it)."""
    path = demo_file()
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        if orjson.loads(path.read_bytes()).get("config") == str(config_path.resolve()):
            path.unlink()


def running_demo_config(env: Mapping[str, str] | None = None) -> Path | None:
    """The config of a demo that is running now, or None."""
    try:
        data = orjson.loads(demo_file(env).read_bytes())
        config = Path(str(data["config"]))
        pid = int(data["pid"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if not _alive(pid) or not config.is_file():
        return None
    return config


__all__ = [
    "RUNTIME_DIR_ENV",
    "demo_file",
    "remove_demo_file",
    "running_demo_config",
    "runtime_dir",
    "write_demo_file",
]
