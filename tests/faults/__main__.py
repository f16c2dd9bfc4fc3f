"""Run the fault-injection scenarios and write RELIABILITY.md.

python -m tests.faults                 # every scenario, 3 runs each
python -m tests.faults --quick --runs 1 zombie kill-9
python -m tests.faults --update poison  # re-run one scenario, replace its row
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.faults.harness import REPO, Verdict
from tests.faults.scenarios import SCENARIOS

#: No scenario takes longer than this (the longest, full mode, takes about 2 minutes)
SCENARIO_LIMIT_S = 900


def _fmt(values: list[Any]) -> str:
    nums = [v for v in values if isinstance(v, int | float)]
    if not nums:
        return ", ".join(str(v) for v in values)
    if len(nums) == 1:
        return f"{nums[0]}"
    return f"median {statistics.median(nums):g}, worst {max(nums):g}"


async def run(names: list[str], runs: int, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        fault, scenario = SCENARIOS[name]
        verdicts: list[Verdict] = []
        durations = []
        for i in range(runs):
            with tempfile.TemporaryDirectory(prefix=f"kc-fault-{name}-") as tmp:
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(SCENARIO_LIMIT_S):  # a hang is a failed run
                        v = await scenario(Path(tmp), quick)
                except TimeoutError:
                    v = Verdict()
                    v.add("scenario ended", False, f"still running after {SCENARIO_LIMIT_S} s")
                except Exception as exc:  # a crash of the harness is a failed run
                    v = Verdict()
                    v.add("scenario ran", False, f"{type(exc).__name__}: {exc}")
                durations.append(time.monotonic() - t0)
            status = "held" if v.ok else "FAILED: " + "; ".join(v.failures())
            print(f"{name} run {i + 1}/{runs}: {status} {v.figures}", flush=True)
            verdicts.append(v)
        figures: dict[str, list[Any]] = {}
        for v in verdicts:
            for k, val in v.figures.items():
                figures.setdefault(k, []).append(val)
        rows.append(
            {
                "name": name,
                "fault": fault,
                "runs": runs,
                "held": sum(v.ok for v in verdicts),
                "checks": sorted({c.name for v in verdicts for c in v.checks}),
                "failures": sorted({f for v in verdicts for f in v.failures()}),
                "figures": {k: _fmt(vals) for k, vals in figures.items()},
                "seconds": _fmt([round(d, 1) for d in durations]),
            }
        )
    return rows


def write_report(rows: list[dict[str, Any]], out: Path, command: str) -> None:
    lines = [
        "# Reliability",
        "",
        "What the fault-injection suite (`tests/faults/`) showed on a real run. Each scenario",
        "starts its own Kafka-protocol broker and Redis, headless kafkaconsole processes in one",
        "consumer group, and an HTTP pipeline target that logs every idempotency key; a producer",
        "numbers every event (and the bad ones it injects) so the oracle knows what must be",
        "counted: closed-window counts + open count == valid events produced, count windows ==",
        "floor(valid / max_event), every window accepted by the target, every bad event in the",
        "DLQ with its headers, lag 0 at the end, instances healthy.",
        "",
        f"Run: `{command}` on {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, "
        f"Python {platform.python_version()}.",
        "",
        "| scenario | fault | runs held | what held | figures | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_row(r) for r in rows]
    lines += _failures(rows, "## Failures")
    lines += ["", *(Path(__file__).parent / "notes.md").read_text().splitlines()]
    out.write_text("\n".join(lines) + "\n")


def update_report(rows: list[dict[str, Any]], out: Path, command: str) -> None:
    """Replace the rows of the scenarios just run in an existing report, and say so."""
    lines = out.read_text().splitlines()
    for r in rows:
        at = [i for i, line in enumerate(lines) if line.startswith(f"| {r['name']} |")]
        if at:
            lines[at[0]] = _row(r)
        else:  # after the last row of the scenario table (the first table)
            last = next(i for i, line in enumerate(lines) if line.startswith("| scenario |")) + 2
            while last < len(lines) and lines[last].startswith("| "):
                last += 1
            lines.insert(last, _row(r))
    run_at = next(i for i, line in enumerate(lines) if line.startswith("Run: "))
    names = ", ".join(r["name"] for r in rows)
    lines.insert(run_at + 1, f"Rows {names} re-run: `{command}` on {datetime.now(UTC):%Y-%m-%d}.")
    lines += _failures(rows, "## Failures of the re-run")
    out.write_text("\n".join(lines) + "\n")


def _row(r: dict[str, Any]) -> str:
    figures = "; ".join(f"{k}: {v}" for k, v in r["figures"].items()) or "-"
    held = f"{r['held']}/{r['runs']}"
    checks = ", ".join(r["checks"])
    return f"| {r['name']} | {r['fault']} | {held} | {checks} | {figures} | {r['seconds']} |"


def _failures(rows: list[dict[str, Any]], title: str) -> list[str]:
    failures = [f"- {r['name']}: {f}" for r in rows for f in r["failures"]]
    return ["", title, "", *failures] if failures else []


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    parser.add_argument("scenarios", nargs="*", help=f"any of: {', '.join(SCENARIOS)}")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller volumes and outages")
    parser.add_argument("--out", type=Path, default=REPO / "RELIABILITY.md")
    parser.add_argument(
        "--update", action="store_true", help="replace only these scenarios' rows in --out"
    )
    args = parser.parse_args()
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    rows = asyncio.run(run(names, args.runs, args.quick))
    command = "python -m tests.faults " + " ".join(sys.argv[1:])
    if args.update and args.out.exists():
        update_report(rows, args.out, command.strip())
    else:
        write_report(rows, args.out, command.strip())
    print(f"wrote {args.out}")
    return 0 if all(r["held"] == r["runs"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
