"""The fast subset of the fault-injection suite (the full one: ``python -m tests.faults``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import FAST, SCENARIOS


@pytest.mark.parametrize("name", FAST)
async def test_fast_fault_scenario(name: str, tmp_path: Path) -> None:
    _fault, scenario = SCENARIOS[name]
    verdict = await scenario(tmp_path, True)
    assert verdict.ok, verdict.failures()
