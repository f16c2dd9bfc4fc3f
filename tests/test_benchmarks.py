"""The benchmark harness cannot rot: its ``--quick`` smoke mode runs every case end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kafkaconsole.embedded import BrokerKind

REPO = Path(__file__).resolve().parent.parent

ROWS = [
    "| raw |",
    "| raw-orjson |",
    "| seed-style |",
    "| engine-raw |",
    "| engine-json |",
    "| engine-tui |",
    "| 1 |",
    "| 10 |",
    "| 50 |",
    "| time-trigger lateness, idle |",
    "| time-trigger lateness, under load |",
    "| count-trigger latency, low rate |",
    "| control latency (pause) |",
]


@pytest.mark.slow
def test_quick_benchmark_runs_every_case(tmp_path: Path, broker_kind: BrokerKind) -> None:
    out = tmp_path / "BENCH.md"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # on Apache Kafka sessions, the throughput cases run on it too (as in a full run)
    brokers = "tansu,apache" if broker_kind == "apache" else "tansu"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
            "--brokers",
            brokers,
            "--out",
            str(out),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    text = out.read_text()
    for row in ROWS:
        assert any(line.startswith(row) for line in text.splitlines()), (row, text)
    assert "## Targets" in text and "## Machine and versions" in text
    # the table also goes to stdout
    assert "| engine-json |" in done.stdout
    if broker_kind == "apache":
        section = text.split("### The same cases on Apache Kafka", 1)
        assert len(section) == 2, text
        assert "| engine-json |" in section[1] and "| raw |" in section[1]
