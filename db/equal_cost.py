"""Compare methods at equal measured cost, not at equal nominal sparsity.

"25 %" means layers for depth methods, block parameters for width methods, hidden size for
SliceGPT, zeroed weights for mask methods and the skip ratio for routers, so runs at the same
nominal sparsity can cost very different amounts. A run's cost is measured instead, as a fraction
of the dense model's (`MEASURES`):

* `params`: non-zero parameters kept / parameters before pruning (the efficiency probe's
  `nonzero_params / params_before`, else the prune report's `(params_after - zero_weights) /
  params_before`). Zeroed weights count as removed; a router's own parameters count as added.
* `flops`: decode FLOPs per token / the dense model's: 1 / a stored ideal speed-up (efficiency
  `ideal_speedup`, else `flops_per_token` over the dense run's, else a dynamic method's
  `evaluation_skip.ideal_speedup` or `calibration_ideal_speedup` from its prune report).
* `latency`: measured decode time per token / the dense run's: 1 / a stored `measured_speedup`,
  else the dense run's decode tokens/s over the run's, both measured on the same device name.

Two runs are at matched cost when both figures are known and differ by at most `TOLERANCE[measure]`
(latency is wall-clock and noisier, so its tolerance is wider). Where a figure is missing, the
fallback is the nominal sparsity (`NOMINAL`): the runs match only when their configured sparsity is
equal, and every caller says which pairing was used.

`equal_cost_view` groups one model's runs (one paradigm) into bands of matched cost with their
leaderboard scores: the Equal cost tab and `db.findings` use the same measures and tolerance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.schema import Job

__all__ = [
    "MEASURES", "NOMINAL", "PAIRINGS", "TOLERANCE", "relative_cost", "matched_by", "EqualCostView",
    "equal_cost_view",
]

MEASURES = {
    "params": "non-zero parameters kept (fraction of the unpruned model's)",
    "flops": "decode FLOPs per token (fraction of the dense model's)",
    "latency": "measured decode latency per token (fraction of the dense run's, same device)",
}
NOMINAL = "sparsity"
"""The fallback pairing: equal configured sparsity, whatever it means for the method."""
PAIRINGS = (*MEASURES, NOMINAL)
TOLERANCE = {"params": 0.05, "flops": 0.05, "latency": 0.10}
"""Largest difference of two relative costs that still counts as the same cost."""
_LEAD_COLUMNS = ["band", "cost", "job_id", "method", "family", "sparsity", "calibration", "recovery", "group"]


def _number(mapping: dict[str, Any] | None, key: str) -> float | None:
    value = (mapping or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def relative_cost(measure: str, efficiency: dict[str, Any] | None, prune_report: dict[str, Any] | None,
                  dense_efficiency: dict[str, Any] | None = None) -> float | None:
    """The run's cost as a fraction of the dense model's by `measure` (see the module docstring);
    None when the figures are missing. `dense_efficiency`: the dense run's, for the relative figures."""
    eff, report = efficiency or {}, prune_report or {}
    if measure == "params":
        kept, before = _number(eff, "nonzero_params"), _number(eff, "params_before")
        if kept is not None and before:
            return kept / before
        after, before = _number(report, "params_after"), _number(report, "params_before")
        if after is not None and before:
            return (after - (_number(report, "zero_weights") or 0.0)) / before
        return None
    if measure == "flops":
        speedup = _number(eff, "ideal_speedup")
        if speedup:
            return 1.0 / speedup
        flops, dense_flops = _number(eff, "flops_per_token"), _number(dense_efficiency, "flops_per_token")
        if flops and dense_flops:
            return flops / dense_flops
        skip = report.get("evaluation_skip")
        speedup = (_number(skip if isinstance(skip, dict) else None, "ideal_speedup")
                   or _number(report, "calibration_ideal_speedup"))
        return 1.0 / speedup if speedup else None
    if measure == "latency":
        speedup = _number(eff, "measured_speedup")
        if speedup:
            return 1.0 / speedup
        speed, dense_speed = _number(eff, "decode_tokens_per_s"), _number(dense_efficiency, "decode_tokens_per_s")
        device = eff.get("device_name")
        same_device = device is not None and device == (dense_efficiency or {}).get("device_name")
        return dense_speed / speed if speed and dense_speed and same_device else None
    raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")


def matched_by(measure: str, cost_a: float | None, cost_b: float | None, sparsity_a: float,
               sparsity_b: float) -> str | None:
    """How two runs pair: `measure` when both costs are known and within its tolerance; `NOMINAL`
    when a cost is missing (or `measure` is `NOMINAL`) and the nominal sparsities are equal; None
    when they do not pair."""
    if measure != NOMINAL and cost_a is not None and cost_b is not None:
        return measure if abs(cost_a - cost_b) <= TOLERANCE[measure] + 1e-12 else None
    return NOMINAL if math.isclose(sparsity_a, sparsity_b, abs_tol=1e-9) else None


# --- the view ---------------------------------------------------------------------------------------


@dataclass
class EqualCostView:
    frame: pd.DataFrame
    """One row per run: band (label), cost (fraction of dense; NaN when not measured), the run's
    leaderboard columns; bands by falling cost, then runs without the figure by nominal sparsity."""
    measure: str
    value_columns: list[str]
    higher_is_better: dict[str, bool]
    notes: list[str] = field(default_factory=list)


def equal_cost_view(session: Session, model: str, paradigm: str, measure: str = "params",
                    view: str = "raw") -> EqualCostView:
    """The runs of `model` in `paradigm` in bands of matched `measure`: runs whose costs lie within
    `TOLERANCE[measure]` of the band's most expensive run share a band (so any two runs in a band
    match); scores are the leaderboard's (`db.leaderboard.board`, in `view`)."""
    from db.leaderboard import BoardFilters, board

    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    shown = board(session, BoardFilters(model=model, paradigm=paradigm), view=view)
    frame = shown.frame
    value_columns = [c for columns in shown.column_groups.values() for c in columns]
    if frame.empty:
        empty = pd.DataFrame(columns=[*_LEAD_COLUMNS, *value_columns])
        return EqualCostView(empty, measure, value_columns, shown.higher_is_better, list(shown.notes))
    ids = {int(i) for i in frame["job_id"]} | {int(i) for i in frame["baseline_job_id"].dropna()}
    figures = {job_id: (eff, report) for job_id, eff, report in session.execute(
        select(Job.id, Job.efficiency_json, Job.prune_report_json).where(Job.id.in_(ids)))}
    costs = []
    for row in frame.itertuples(index=False):
        if row.family == "dense":  # the reference: cost 1 by definition
            costs.append(1.0)
            continue
        efficiency, report = figures.get(int(row.job_id), (None, None))
        dense = row.baseline_job_id
        dense_efficiency = None if pd.isna(dense) else figures.get(int(dense), (None, None))[0]
        costs.append(relative_cost(measure, efficiency, report, dense_efficiency))
    frame = frame.assign(cost=[math.nan if c is None else c for c in costs])
    frame["band"], order = _bands(list(frame["cost"]), [float(s) for s in frame["sparsity"]], measure)
    frame = frame.assign(_order=order).sort_values(
        ["_order", "average" if "average" in frame else "job_id"], ascending=[True, False], kind="stable",
        na_position="last")
    frame = frame[[*_LEAD_COLUMNS, *value_columns]].reset_index(drop=True)
    notes = list(shown.notes)
    unmeasured = int(frame["cost"].isna().sum())
    if unmeasured:
        notes.append(f"{unmeasured} run(s) lack the figures for {MEASURES[measure]}: listed by nominal sparsity, "
                     "which is not comparable across methods")
    return EqualCostView(frame, measure, value_columns, shown.higher_is_better, notes)


def _bands(costs: list[float], sparsities: list[float], measure: str) -> tuple[list[str], list[int]]:
    """(band label, band rank) per run: greedy bands over falling cost (a band holds the runs within
    the tolerance of its most expensive one), then one band per nominal sparsity for the unmeasured."""
    bands: list[list[int]] = []
    for i in sorted((i for i, c in enumerate(costs) if not math.isnan(c)), key=lambda i: -costs[i]):
        if bands and costs[bands[-1][0]] - costs[i] <= TOLERANCE[measure] + 1e-12:
            bands[-1].append(i)
        else:
            bands.append([i])
    labels, ranks = [""] * len(costs), [0] * len(costs)
    for rank, members in enumerate(bands):
        low, high = round(100 * costs[members[-1]]), round(100 * costs[members[0]])
        label = f"{measure} {high} %" if low == high else f"{measure} {low}–{high} %"
        for i in members:
            labels[i], ranks[i] = label, rank
    nominal = sorted({sparsities[i] for i, c in enumerate(costs) if math.isnan(c)})
    for i, cost in enumerate(costs):
        if math.isnan(cost):
            labels[i] = f"not measured: nominal sparsity {sparsities[i]:g}"
            ranks[i] = len(bands) + nominal.index(sparsities[i])
    return labels, ranks
