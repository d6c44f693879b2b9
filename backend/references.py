"""Published reference results, and how a run compares with the one it should reproduce.

The table is `references.yaml` beside this module (paper, table, model, method, sparsity, params,
calibration, task, metric, value, tolerance, source). `compare_run(config, scores)` finds the rows
whose setting a run has (model, paradigm, method, sparsity, the row's params, task) and says for
each whether the run reproduced the number (within the row's tolerance) or is off by how much, and
which of the row's evaluation settings the run did not use. No torch.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Reference", "Comparison", "references", "compare_run"]

TABLE = Path(__file__).with_name("references.yaml")
FALLBACK_METRICS = ("exact_match",)
"""A single greedy answer's exact match is its pass@1: accepted where a row gives pass@1."""


@dataclass(frozen=True)
class Reference:
    source: str
    paper: str
    table: str
    model: str
    paradigm: str | None
    method: str
    sparsity: float
    params: dict[str, Any]
    calibration: str | None
    task: str
    metric: str
    value: float
    tolerance: dict[str, float]
    settings: dict[str, Any]
    note: str

    def within(self, value: float) -> bool:
        allowed = self.tolerance.get("absolute", 0.0) + self.tolerance.get("relative", 0.0) * abs(self.value)
        return abs(value - self.value) <= allowed + 1e-12

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Comparison:
    reference: Reference
    value: float
    reproduced: bool
    relative_difference: float
    """(run - published) / published."""
    differing_settings: dict[str, tuple[Any, Any]]
    """setting -> (the run's, the published run's), where they differ."""

    @property
    def verdict(self) -> str:
        """"reproduced" or "off by +12.3 %" (the run's value relative to the published one)."""
        if self.reproduced:
            return "reproduced"
        return f"off by {self.relative_difference * 100:+.1f} %"

    def summary(self) -> str:
        text = (f"{self.reference.task} {self.reference.metric}: {self.verdict} "
                f"({_number(self.value)} vs {_number(self.reference.value)}, {self.reference.source})")
        if self.differing_settings:
            differing = ", ".join(f"{k} {_show(a)} vs {_show(b)}" for k, (a, b) in self.differing_settings.items())
            text += f"; settings differ: {differing}"
        return text


def _number(value: float) -> str:
    return f"{value:.4g}"


def _show(value: Any) -> str:
    return "default" if value is None else str(value)


@functools.lru_cache(maxsize=1)
def references() -> tuple[Reference, ...]:
    """Every row of the table, with its source's paper, table, calibration and settings."""
    data = yaml.safe_load(TABLE.read_text(encoding="utf-8"))
    sources = data["sources"]
    rows = []
    for row in data["rows"]:
        source = sources[row["source"]]
        rows.append(Reference(
            source=row["source"], paper=source["paper"], table=source["table"], model=row["model"],
            paradigm=row.get("paradigm"), method=row["method"], sparsity=float(row["sparsity"]),
            params=dict(row.get("params") or {}), calibration=source.get("calibration"), task=row["task"],
            metric=row["metric"], value=float(row["value"]), tolerance=dict(row["tolerance"]),
            settings=dict(source.get("settings") or {}), note=source.get("note") or "",
        ))
    return tuple(rows)


def _method_params(config: dict[str, Any]) -> dict[str, Any]:
    """The run's method params with every default filled in (stored configs omit defaults)."""
    from backend.pruning import get_method

    pruning = config.get("pruning") or {}
    try:
        return get_method(pruning.get("method", "dense")).Params(**(pruning.get("params") or {})).model_dump()
    except Exception:  # a method unknown here, or params it no longer takes: only the stored ones
        return dict(pruning.get("params") or {})


def _task_settings(config: dict[str, Any], task: str) -> dict[str, Any]:
    for entry in config.get("tasks", []):
        if isinstance(entry, dict) and entry.get("name") == task:
            return {"window": entry.get("window"), **(entry.get("generation") or {})}
    return {}


def compare_run(config: dict[str, Any], scores: dict[tuple[str, str], float]) -> list[Comparison]:
    """The published rows a run should reproduce, compared with its scores ({(task, metric): value})."""
    pruning = config.get("pruning") or {}
    method, sparsity = pruning.get("method", "dense"), float(pruning.get("sparsity", 0.0))
    paradigm = config.get("paradigm", "instruct")
    params = _method_params(config)
    out = []
    for ref in references():
        if (ref.model != config.get("model") or ref.method != method or not math.isclose(ref.sparsity, sparsity)
                or (ref.paradigm is not None and ref.paradigm != paradigm)
                or any(params.get(k) != v for k, v in ref.params.items())):
            continue
        value = next((scores[(ref.task, m)] for m in (ref.metric, *FALLBACK_METRICS)
                      if scores.get((ref.task, m)) is not None), None)
        if value is None or not math.isfinite(value):
            continue
        run_settings = _task_settings(config, ref.task)
        differing = {k: (run_settings.get(k), v) for k, v in ref.settings.items() if run_settings.get(k) != v}
        out.append(Comparison(ref, value, ref.within(value), (value - ref.value) / ref.value, differing))
    return out
