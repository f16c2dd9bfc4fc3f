"""The fast subset of the fault-injection suite (the full one: ``python -m tests.faults``).
The three-broker scenarios need Apache Kafka: they run in sessions on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import CLUSTER_TEST_TIMEOUT_S, FAST, FAST_CLUSTER, SCENARIOS
from tests.helpers import BROKER_KEY


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "name" in metafunc.fixturenames:
        kind, _ = metafunc.config.stash[BROKER_KEY]
        cluster = [
            pytest.param(name, marks=pytest.mark.timeout(CLUSTER_TEST_TIMEOUT_S))
            for name in FAST_CLUSTER
        ]
        metafunc.parametrize("name", FAST + (cluster if kind == "apache" else []))


async def test_fast_fault_scenario(name: str, tmp_path: Path) -> None:
    _fault, scenario = SCENARIOS[name]
    verdict = await scenario(tmp_path, True)
    assert verdict.ok, verdict.failures()
