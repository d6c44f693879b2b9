"""Data behind the Plots tab that the leaderboard does not hold: thinking lengths and test-time scaling.

Both read the latest succeeded job of every config hash (the runs the leaderboard shows) and return
DataFrames ready for `ui.plots`:

* `thinking_points`: one row per run and generation task: mean thinking / output tokens and accuracy,
  from `jobs.trace_stats_json` (computed from the stored samples for runs finished before it existed).
* `scaling_points`: scores of test-time-scaling tasks against k (`generation.num_samples`: `pass@1`,
  `pass@k`, `maj@k`) or against `generation.thinking_budget` (the primary metric; `pass@1` when k > 1).
* `speedup_ranges`: the spread of each run's measured speed-up (error bars of the Pareto plot).
"""
from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.queries import job_trace_stats
from db.schema import Job, Score
from db.states import JobState

__all__ = ["latest_runs", "thinking_points", "scaling_points", "speedup_ranges", "THINKING_COLUMNS", "SCALING_COLUMNS",
           "SCALING_AXES", "SPEEDUP_RANGE_COLUMNS"]

THINKING_COLUMNS = ["job_id", "model", "paradigm", "method", "sparsity", "task", "samples",
                    "mean_thinking_tokens", "mean_output_tokens", "accuracy"]
SCALING_COLUMNS = ["job_id", "model", "paradigm", "method", "sparsity", "task", "metric", "k",
                   "thinking_budget", "value", "series"]
SCALING_AXES = ("k", "thinking_budget")
SPEEDUP_RANGE_COLUMNS = ["job_id", "speedup_measured_low", "speedup_measured_high"]
_AT_K = re.compile(r"^(pass|maj)@(\d+)$")


def latest_runs(session: Session, model: str | None = None, paradigm: str | None = None) -> list[Job]:
    """The latest succeeded job of each config hash, by id."""
    latest = (select(func.max(Job.id).label("job_id")).where(Job.state == JobState.SUCCEEDED, Job.hidden.is_(False))
              .group_by(Job.config_hash).subquery())
    query = select(Job).join(latest, latest.c.job_id == Job.id).order_by(Job.id)
    if model is not None:
        query = query.where(Job.model == model)
    if paradigm is not None:
        query = query.where(Job.paradigm == paradigm)
    return list(session.scalars(query))


def thinking_points(session: Session, model: str | None = None, paradigm: str | None = None) -> pd.DataFrame:
    """Per run and generation task: samples, mean thinking/output tokens and accuracy (`THINKING_COLUMNS`)."""
    rows = []
    for job in latest_runs(session, model, paradigm):
        stats = job.trace_stats_json if job.trace_stats_json is not None else job_trace_stats(session, job.id)
        for task, task_stats in sorted(stats.items()):
            if not task_stats.get("samples"):
                continue
            rows.append({**_run_fields(job), "task": task, "samples": task_stats["samples"],
                         "mean_thinking_tokens": task_stats.get("mean_thinking_tokens"),
                         "mean_output_tokens": task_stats.get("mean_output_tokens"),
                         "accuracy": task_stats.get("accuracy")})
    return _frame(rows, THINKING_COLUMNS, ["sparsity", "mean_thinking_tokens", "mean_output_tokens", "accuracy"])


def scaling_points(session: Session, by: str = "k", model: str | None = None,
                   paradigm: str | None = None) -> pd.DataFrame:
    """Test-time-scaling points (`SCALING_COLUMNS`) for plotting score against `by` ("k" or "thinking_budget").

    by="k": per run and task, `pass` and `maj` curves: a k=1 run gives the primary metric at k=1 for both;
    a k>1 run gives `pass@1` at 1 and `pass@k` / `maj@k` at k. A series is model, paradigm, method,
    sparsity, task and thinking budget. by="thinking_budget": the primary metric (`pass@1` when k > 1)
    at the run's budget; runs without a budget are left out; a series also fixes k.
    Points of one series at the same x (several runs) are averaged.
    """
    if by not in SCALING_AXES:
        raise ValueError(f"by must be one of {SCALING_AXES}, got {by!r}")
    jobs = {job.id: job for job in latest_runs(session, model, paradigm)}
    if not jobs:
        return _frame([], SCALING_COLUMNS, ["sparsity", "k", "thinking_budget", "value"])
    scores = session.execute(
        select(Score.job_id, Score.task, Score.metric, Score.value, Score.is_primary)
        .where(Score.job_id.in_(list(jobs)), Score.test_time_scaling.is_(True))
    ).all()
    by_run_task: dict[tuple[int, str], dict[str, Any]] = {}
    for row in scores:
        entry = by_run_task.setdefault((row.job_id, row.task), {"metrics": {}, "primary": None})
        entry["metrics"][row.metric] = row.value
        if row.is_primary:
            entry["primary"] = row.value
    rows = []
    for (job_id, task), entry in sorted(by_run_task.items()):
        job = jobs[job_id]
        generation = _task_generation(job, task)
        k, budget = int(generation.get("num_samples", 1)), generation.get("thinking_budget")
        base = {**_run_fields(job), "task": task, "thinking_budget": budget}
        metrics = entry["metrics"]
        if by == "k":
            series = _series(job, task, f"budget {budget}" if budget is not None else "")
            if k == 1:
                for family in ("pass", "maj"):
                    rows.append({**base, "metric": f"{family}@k", "k": 1, "value": entry["primary"], "series": series})
            else:
                rows.append({**base, "metric": "pass@k", "k": 1, "value": metrics.get("pass@1"), "series": series})
                rows.append({**base, "metric": "maj@k", "k": 1, "value": metrics.get("pass@1"), "series": series})
                for metric, value in metrics.items():
                    match = _AT_K.match(metric)
                    if match and int(match.group(2)) > 1:
                        rows.append({**base, "metric": f"{match.group(1)}@k", "k": int(match.group(2)),
                                     "value": value, "series": series})
        elif budget is not None:
            value = entry["primary"] if k == 1 else metrics.get("pass@1")
            rows.append({**base, "metric": "pass@1" if k > 1 else "primary", "k": k, "value": value,
                         "series": _series(job, task, f"k={k}" if k > 1 else "")})
    frame = _frame(rows, SCALING_COLUMNS, ["sparsity", "k", "thinking_budget", "value"])
    if frame.empty:
        return frame
    keys = ["series", "metric", by]
    first = frame.groupby(keys, sort=True, dropna=False).first().reset_index()
    first["value"] = frame.groupby(keys, sort=True, dropna=False)["value"].mean().values
    return first[SCALING_COLUMNS]


def speedup_ranges(session: Session, job_ids: list[int]) -> pd.DataFrame:
    """Per run of `job_ids` that stored one, the quartile range of its measured decode speed-up
    (`measured_speedup_range`: probe version 2 with the dense model measured side by side;
    `SPEEDUP_RANGE_COLUMNS`). Runs of the older one-run probe have no spread and are left out."""
    rows = []
    if job_ids:
        for job_id, efficiency in session.execute(select(Job.id, Job.efficiency_json).where(Job.id.in_(job_ids))):
            span = (efficiency or {}).get("measured_speedup_range")
            if isinstance(span, list) and len(span) == 2 and all(isinstance(v, (int, float)) for v in span):
                rows.append({"job_id": job_id, "speedup_measured_low": span[0], "speedup_measured_high": span[1]})
    return _frame(rows, SPEEDUP_RANGE_COLUMNS, SPEEDUP_RANGE_COLUMNS[1:])


def _task_generation(job: Job, task: str) -> dict[str, Any]:
    config = json.loads(job.config_json)
    for entry in config.get("tasks", []):
        if isinstance(entry, dict) and entry.get("name") == task:
            return entry.get("generation", {}) or {}
    return {}


def _run_fields(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "model": job.model, "paradigm": job.paradigm, "method": job.method,
            "sparsity": job.sparsity}


def _series(job: Job, task: str, extra: str) -> str:
    parts = [job.model, job.paradigm, f"{job.method} @ {job.sparsity:.0%}", task, extra]
    return " · ".join(p for p in parts if p)


def _frame(rows: list[dict[str, Any]], columns: list[str], floats: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for column in floats:
        frame[column] = frame[column].astype("float64")
    return frame
