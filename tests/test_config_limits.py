"""Every numeric config key has a range and a strict type, and README lists the ranges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel

from kafkaconsole.config import models
from kafkaconsole.config.loader import _unwrap

README = Path(__file__).resolve().parent.parent / "README.md"

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("[kafka]", models.KafkaConfig),
    ("[redis]", models.RedisConfig),
    ("[api]", models.ApiConfig),
    ("[ui]", models.UiConfig),
    ("[monitoring]", models.MonitoringConfig),
    ("[[monitoring.alerts]]", models.AlertRule),
    ("retry_policy", models.RetryPolicy),
    ("[pipelines.NAME]", models.PipelineBase),
    ('[pipelines.NAME] (kind = "airbyte")', models.AirbytePipeline),
    ('[pipelines.NAME] (kind = "airflow")', models.AirflowPipeline),
    ("[[consumers]]", models.ConsumerConfig),
]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}".replace(",", "_") if isinstance(value, int) else f"{value:g}"


def _bounds(field: Any) -> tuple[str, str]:
    low = high = None
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            low = f">= {_number(meta.ge)}"
        elif isinstance(meta, annotated_types.Gt):
            low = f"> {_number(meta.gt)}"
        elif isinstance(meta, annotated_types.Le):
            high = f"<= {_number(meta.le)}"
        elif isinstance(meta, annotated_types.Lt):
            high = f"< {_number(meta.lt)}"
    assert low is not None and high is not None, field
    return low, high


def limit_rows() -> list[str]:
    """The README rows: one per numeric key (inherited pipeline keys listed once)."""
    rows = []
    base = set(models.PipelineBase.model_fields)
    for section, model in SECTIONS:
        for name, field in model.model_fields.items():
            inherited = model is not models.PipelineBase and issubclass(model, models.PipelineBase)
            if inherited and name in base:
                continue
            kind = _unwrap(field.annotation)
            if kind not in (int, float):
                continue
            low, high = _bounds(field)
            shown = field.alias or name
            what = "integer" if kind is int else "number"
            rows.append(f"| {section} `{shown}` | {what} | {low}, {high} |")
    return rows


def test_every_numeric_key_has_a_range_in_the_readme() -> None:
    text = README.read_text()
    rows = limit_rows()
    assert len(rows) >= 35
    missing = [row for row in rows if row not in text]
    assert missing == []


def test_no_numeric_key_is_unbounded() -> None:
    for model in [m for m in vars(models).values() if isinstance(m, type)]:
        if not issubclass(model, models.Section):
            continue
        for field in model.model_fields.values():
            if _unwrap(field.annotation) in (int, float):
                _bounds(field)  # asserts a lower and an upper bound
