"""The peers' virtualenvs: made and filled by the benchmark on first use, outside the repo.

Each peer gets its own venv (Quix Streams pins an older confluent-kafka than the newest, and
Faust brings its own aiokafka) under ``$KAFKACONSOLE_CACHE_DIR/bench-peers`` (default
``~/.cache/kafkaconsole/bench-peers``), with pinned versions. None of this is a dependency
of kafkaconsole: only ``benchmarks/run.py --peers`` installs it, never the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kafkaconsole.kafka_jars import cache_root

#: venv name -> (pinned requirements, the distributions whose versions the report shows,
#: the module the peer imports)
ENVS: dict[str, tuple[list[str], list[str], str]] = {
    "confluent": (
        ["confluent-kafka==2.16.1", "orjson==3.13.0"],
        ["confluent-kafka"],
        "confluent_kafka",
    ),
    "quix": (["quixstreams==3.28.1"], ["quixstreams", "confluent-kafka"], "quixstreams"),
    "faust": (
        ["faust-streaming==0.15.3", "orjson==3.13.0"],
        ["faust-streaming", "aiokafka"],
        "faust",
    ),
}


class PeerUnavailable(RuntimeError):
    """A peer's venv cannot be made or its package cannot be installed or imported."""


def root() -> Path:
    return cache_root() / "bench-peers"


def python(env: str) -> Path:
    return root() / env / "bin" / "python"


def _run(argv: list[str], what: str, timeout: float = 900) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise PeerUnavailable(f"{what}: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout


def installed(env: str) -> bool:
    """The venv is there with the current pins."""
    marker = python(env).parent.parent / "kafkaconsole-pins.json"
    return (
        python(env).exists() and marker.exists() and json.loads(marker.read_text()) == ENVS[env][0]
    )


def ensure(env: str, log: Callable[[str], None], install: bool = True) -> Path:
    """The venv's python, after making the venv and installing its pins if needed.

    Runs on the interpreter running the benchmark (Python 3.11 here), so every peer is
    measured on the same Python version as the engine. ``install=False``: never install;
    a missing venv is a :class:`PeerUnavailable`.
    """
    reqs, _, module = ENVS[env]
    py = python(env)
    marker = py.parent.parent / "kafkaconsole-pins.json"
    if not installed(env):
        if not install:
            raise PeerUnavailable(
                f"not installed in {py.parent.parent} (`benchmarks/run.py --peers` installs it)"
            )
        log(f"installing the {env} peer into {py.parent.parent} ({', '.join(reqs)})")
        if not py.exists():
            _run([sys.executable, "-m", "venv", str(py.parent.parent)], f"venv for {env}")
        _run([str(py), "-m", "pip", "install", "-q", *reqs], f"pip install {' '.join(reqs)}")
        marker.write_text(json.dumps(reqs))
    _run([str(py), "-W", "ignore", "-c", f"import {module}"], f"import {module}", timeout=120)
    return py


def versions(env: str) -> dict[str, str]:
    """The installed versions of the env's reported distributions (and librdkafka's)."""
    _, dists, _ = ENVS[env]
    code = (
        "import importlib.metadata as m, json, sys\n"
        f"out = {{d: m.version(d) for d in {dists!r}}}\n"
        "try:\n"
        "    import confluent_kafka\n"
        "    out['librdkafka'] = confluent_kafka.libversion()[0]\n"
        "except ImportError:\n"
        "    pass\n"
        "print(json.dumps(out))\n"
    )
    out: dict[str, str] = json.loads(
        _run([str(python(env)), "-W", "ignore", "-c", code], "versions")
    )
    return out
