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


def _run_benchmark(
    tmp_path: Path, args: list[str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], str]:
    """``benchmarks/run.py ARGS`` in a fresh process; its exit checked; its report's text."""
    out = tmp_path / "BENCH.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), *args, "--out", str(out)],
        cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done, out.read_text()


@pytest.mark.slow
def test_quick_benchmark_runs_every_case(tmp_path: Path, broker_kind: BrokerKind) -> None:
    # on Apache Kafka sessions, the throughput cases run on it too (as in a full run)
    brokers = "tansu,apache" if broker_kind == "apache" else "tansu"
    done, text = _run_benchmark(tmp_path, ["--quick", "--brokers", brokers], timeout=240)
    for row in ROWS:
        assert any(line.startswith(row) for line in text.splitlines()), (row, text)
    assert "## Targets" in text and "## Machine and versions" in text
    # the table also goes to stdout
    assert "| engine-json |" in done.stdout
    if broker_kind == "apache":
        section = text.split("### The same cases on Apache Kafka", 1)
        assert len(section) == 2, text
        assert "| engine-json |" in section[1] and "| raw |" in section[1]


PEER_ENVS = ("confluent", "quix", "faust")


def _peers_missing() -> str | None:
    from benchmarks.peers import env

    missing = [e for e in PEER_ENVS if not env.installed(e)]
    if missing:
        return (
            f"peer venvs {', '.join(missing)} not installed under {env.root()} "
            "(`python benchmarks/run.py --peers` installs them; the suite never does)"
        )
    return None


@pytest.mark.slow
def test_peers_harness_runs_every_peer(tmp_path: Path) -> None:
    """Every peer runs, is timed and checked, next to the bare loops and the engine; the
    kill -9 runs restart the engine and Quix Streams and check their results."""
    from kafkaconsole.embedded import apache_unavailable

    why = _peers_missing() or apache_unavailable()
    if why:
        pytest.skip(why)
    cases = "raw,engine-json,peer-confluent,peer-confluent-json,peer-quix-eos,peer-quix-alo,"
    cases += "peer-faust"
    args = ["--quick", "--no-install", "--brokers", "apache", "--events", "3000"]
    # windows close: 2,700 orders, 900 a partition
    args += ["--max-event", "100", "--cases", cases]
    _, text = _run_benchmark(tmp_path, args, timeout=400)
    peers = text.split("## Peers: the same job with other tools", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in peers.splitlines()
        if line.startswith("| ") and not line.startswith("| case")
    }
    for case in cases.split(","):
        row = rows[case]
        assert float(row[3].replace(",", "")) > 0, row  # events/s measured
        assert row[6].endswith("%"), row  # vs the best ceiling
    # the same check of every window, on a clean run and after a kill -9 and a restart
    assert rows["engine-json"][8] == "yes" and rows["engine-json"][9] == "yes", rows
    assert rows["peer-quix-eos"][8] == "yes" and rows["peer-quix-eos"][9].startswith("yes"), rows
    assert rows["peer-quix-alo"][9] != "", rows  # measured; at-least-once may count twice
    assert "quixstreams 3.28.1" in rows["peer-quix-eos"][1]
    assert "Peer versions (Python" in peers


@pytest.mark.slow
def test_workers_benchmark_runs_and_checks_exactness(
    tmp_path: Path, broker_kind: BrokerKind
) -> None:
    """``benchmarks/workers.py --quick``: 1 and 2 workers, each run timed and checked exact."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.workers", "--quick", "--broker", broker_kind],
        cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    runs = {r[0].strip(): [c.strip() for c in r] for r in rows if r[0].strip().isdigit()}
    assert set(runs) == {"1", "2"}, done.stdout
    for row in runs.values():
        assert row[2] == "20,000" and row[5] == "yes", row
        assert int(row[4].replace(",", "")) > 0, row
