"""The benchmark harness cannot rot: its ``--quick`` smoke mode runs every case end to end."""

from __future__ import annotations

import json
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
def test_peers_harness_runs_every_peer(tmp_path: Path, broker_kind: BrokerKind) -> None:
    """Every peer runs, is timed and checked, next to the bare loops and the engine; the
    kill -9 runs restart the engine and Quix Streams and check their results."""
    from kafkaconsole.embedded import apache_unavailable

    if broker_kind != "apache":
        # it starts an Apache Kafka broker of its own whatever the session's (librdkafka
        # cannot talk to Tansu): the same run as in the session on Apache Kafka, ~150 s
        pytest.skip("runs in the test session on Apache Kafka (the peers need Apache Kafka)")
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


def _run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.MODULE ARGS`` from the repository, its exit checked."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_workers_benchmark_runs_and_checks_exactness(
    tmp_path: Path, broker_kind: BrokerKind
) -> None:
    """``benchmarks/workers.py --quick``: 1 and 2 workers, each run timed and checked exact."""
    done = _run_module("workers", "--quick", "--broker", broker_kind)
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    runs = {r[0].strip(): [c.strip() for c in r] for r in rows if r[0].strip().isdigit()}
    assert set(runs) == {"1", "2"}, done.stdout
    for row in runs.values():
        assert row[2] == "20,000" and row[5] == "yes", row
        assert int(row[4].replace(",", "")) > 0, row


@pytest.mark.slow
def test_scaling_benchmark_measures_every_part(tmp_path: Path, broker_kind: BrokerKind) -> None:
    """``benchmarks/scaling.py --quick``: every part's CPU per event measured, the Lua calls'
    and the whole engine's counts exact, the model derived and kept in the JSON file."""
    out = tmp_path / "scaling.json"
    args = ["--quick", "--broker", broker_kind, "--batches", "100,2000", "--json", str(out)]
    done = _run_module("scaling", *args)
    res = json.loads(out.read_text())
    assert res["exact"] is True and res["events"] == 20_000, res["rounds"]
    (rnd,) = res["rounds"]
    assert [lua["batch"] for lua in rnd["lua"]] == [100, 2000]
    # 20,000 records cut into calls of 100 and of 2,000, each one EVALSHA, all counted
    assert [lua["calls"] for lua in rnd["lua"]] == [200, 10], rnd["lua"]
    assert [lua["evalsha_calls"] for lua in rnd["lua"]] == [200, 10], rnd["lua"]
    assert rnd["engine"]["counting_calls"] > 0 and rnd["engine"]["evalsha_calls"] > 0
    costs = res["costs_us_per_event"]
    for part in ("fetch_client", "decode", "lua100_client", "lua100_redis", "lua2000_redis"):
        assert 0 < costs[part]["median"] < 1e6, (part, costs[part])
    assert costs["engine_client"]["median"] > costs["decode"]["median"]
    model = res["model"]
    assert model["lua_batch_nearest_engine"] in (100, 2000)
    assert [d["target_eps"] for d in model["deployments"]] == [10**6, 10**7, 10**8]
    assert model["deployments"][2]["workers"] > model["deployments"][0]["workers"]
    # the report on stdout, and again from the file
    assert "| decode + filter (`build_batch`) |" in done.stdout
    assert "Sum of the parts" in done.stdout
