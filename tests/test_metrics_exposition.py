"""/metrics as Prometheus expects it (format negotiation, gzip, standard collectors), and the
shipped alert rules and Grafana dashboard checked against the series the code exports."""

# ruff: noqa: F811  (the tests take the ``env`` fixture imported from tests.test_api)

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from kafkaconsole.engine.health import VerdictName
from tests.test_api import Env, env  # noqa: F401  (the engine + API fixture)

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "kafkaconsole-rules.yaml"
RULES_TEST = REPO / "deploy" / "prometheus" / "kafkaconsole-rules.test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "kafkaconsole-dashboard.json"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
METRIC = re.compile(r"\b((?:kafkaconsole|process|python)_[a-z0-9_]+)\b")


async def _scrape(env: Env, **headers: str) -> tuple[aiohttp.ClientResponse, bytes]:
    headers = {"Accept-Encoding": "identity", **headers}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"{env.api.url}/metrics", headers=headers) as resp,
    ):
        return resp, await resp.read()


async def test_text_format_by_default_with_process_and_python_metrics(env: Env) -> None:
    resp, body = await _scrape(env)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Content-Encoding" not in resp.headers
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"kafkaconsole_events_counted", "kafkaconsole_consumer_verdict"} <= names
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names
    assert {"python_gc_objects_collected"} <= names


async def test_openmetrics_when_asked(env: Env) -> None:
    resp, body = await _scrape(env, Accept=OPENMETRICS)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(text)}
    counted = families["kafkaconsole_events_counted"]
    assert counted.type == "counter"
    assert [s.name for s in counted.samples] == ["kafkaconsole_events_counted_total"]
    assert families["kafkaconsole_pipeline_run_duration_seconds"].type == "histogram"
    assert "process_cpu_seconds" in families


async def test_gzip_when_accepted(env: Env) -> None:
    resp, body = await _scrape(env, **{"Accept-Encoding": "gzip"})
    assert resp.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in resp.headers["Vary"]
    text = gzip.decompress(body).decode()
    assert "kafkaconsole_instance_info" in text
    plain, _ = await _scrape(env, **{"Accept-Encoding": "identity"})
    assert plain.headers.get("Content-Encoding") is None


async def test_name_selection(env: Env) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{env.api.url}/metrics?name[]=kafkaconsole_kafka_up&name[]=kafkaconsole_redis_up"
        async with session.get(url) as resp:
            text = await resp.text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == {"kafkaconsole_kafka_up", "kafkaconsole_redis_up"}


# ---- rules and dashboard against the exported series -----------------------------------


async def exported_series(env: Env) -> set[str]:
    """Every series name the API exports (families without samples included)."""
    _, body = await _scrape(env)
    out = set()
    for family in text_string_to_metric_families(body.decode()):
        if family.type == "counter":
            out |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            out |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        elif family.type == "summary":
            out |= {family.name, f"{family.name}_count", f"{family.name}_sum"}
        else:
            out.add(family.name)
    return out


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    return exprs


async def test_alert_rules_name_exported_series_and_verdicts(env: Env) -> None:
    exported = await exported_series(env)
    rules = _rules()
    assert {r["alert"] for r in rules} >= {
        "KafkaconsoleConsumerStalled",
        "KafkaconsoleTimeLagHigh",
        "KafkaconsoleRedisUnreachable",
    }
    used_verdicts = set()
    for rule in rules:
        names = set(METRIC.findall(rule["expr"]))
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: {names - exported} not exported"
        used_verdicts |= set(re.findall(r'verdict="([^"]+)"', rule["expr"]))
        assert rule["labels"]["severity"] in ("warning", "critical")
    alerting = {str(v) for v in VerdictName} - {"ok", "paused"}
    assert used_verdicts == alerting, "every verdict but ok and paused has a rule"


async def test_dashboard_names_exported_series(env: Env) -> None:
    exported = await exported_series(env)
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for expr in _dashboard_exprs():
        names = set(METRIC.findall(expr))
        assert names and names <= exported, f"{expr}: {names - exported} not exported"
    titles = {p["title"] for p in board["panels"]}
    assert {"Verdict", "Time lag", "Alerts firing"} <= titles


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)


@needs_promtool
def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [PROMTOOL, "test", "rules", RULES_TEST.name],
        capture_output=True,
        text=True,
        cwd=RULES_TEST.parent,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule."""
    assert PROMTOOL is not None
    fill = {"$__rate_interval": "5m", "$__range": "1h", "$job": ".*", "$consumer": ".*"}
    rules = []
    for i, expr in enumerate(e for e in _dashboard_exprs() if not e.startswith("label_values(")):
        for var, value in fill.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
