"""The runs the findings compare (`db.findings`) and their paired documents.

* `load_runs`: the latest succeeded, visible job per config hash (optionally of one model /
  paradigm) with its samples, efficiency probe and prune report, oldest first.
* A run's family, calibration source and task categories are the columns stored when it was
  submitted and scored (`jobs.facts`): the findings read no registry.
* `setting_key`: the config minus named fields, so runs that differ only there group together.
* `paired_units`: a comparison is a tuple of arms, an arm a tuple of runs evaluated under the same
  task settings (e.g. a pruned run and its dense run). Its documents are those every run scored;
  across arms documents match by (task, doc_id) alone, since arms may differ in generation settings
  by design (instruct vs think budgets, two models). Each document gives one `db.bootstrap.Unit`
  with one value per run, in order, in the cell (comparison index, task).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.bootstrap import Unit
from db.schema import Job, Sample, Score
from db.states import JobState

__all__ = [
    "Run", "load_runs", "setting_key", "correctness", "tts_gain",
    "paired_units",
]

SampleRow = tuple["bool | None", dict[str, Any]]
"""(correct, metrics) of one stored sample."""


@dataclass
class Run:
    job_id: int
    model: str
    paradigm: str
    method: str
    sparsity: float
    family: str | None
    calibration_source: str | None
    """The calibration source the run's method used (None: it used none)."""
    config: dict[str, Any]
    efficiency: dict[str, Any]
    prune_report: dict[str, Any]
    task_settings: dict[str, str]
    """task name -> its config without `limit` (JSON): samples match only under equal settings."""
    num_samples: dict[str, int]
    """task name -> k, the samples generated per prompt (test-time scaling when k > 1)."""
    samples: dict[tuple[str, int], SampleRow] = field(default_factory=dict)
    categories: dict[str, str | None] = field(default_factory=dict)
    """task name -> its category (`scores.category`)."""


# --- loading -------------------------------------------------------------------------------------


def load_runs(session: Session, model: str | None, paradigm: str | None) -> list[Run]:
    query = select(Job).where(Job.state == JobState.SUCCEEDED, Job.hidden.is_(False)).order_by(Job.id)
    if model is not None:
        query = query.where(Job.model == model)
    if paradigm is not None:
        query = query.where(Job.paradigm == paradigm)
    latest: dict[str, Job] = {}
    for job in session.scalars(query):
        latest[job.config_hash] = job  # ordered by id: the latest wins
    runs: dict[int, Run] = {}
    for job in latest.values():
        config = json.loads(job.config_json)
        tasks = config.get("tasks", [])
        settings = {t["name"]: _canonical({k: v for k, v in t.items() if k != "limit"}) for t in tasks}
        k = {t["name"]: int((t.get("generation") or {}).get("num_samples", 1)) for t in tasks}
        runs[job.id] = Run(job.id, job.model, job.paradigm, job.method, float(job.sparsity), job.family,
                           job.calibration_source, config, job.efficiency_json or {}, job.prune_report_json or {},
                           settings, k)
    if not runs:
        return []
    rows = session.execute(
        select(Sample.job_id, Sample.task, Sample.doc_id, Sample.correct, Sample.metrics_json)
        .where(Sample.job_id.in_(list(runs)))
    )
    for job_id, task, doc_id, correct, metrics in rows:
        runs[job_id].samples[(task, doc_id)] = (correct, metrics or {})
    for job_id, task, category in session.execute(
            select(Score.job_id, Score.task, Score.category).where(Score.job_id.in_(list(runs))).distinct()):
        runs[job_id].categories[task] = category
    return sorted(runs.values(), key=lambda run: run.job_id)


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def setting_key(run: Run, *paths: str) -> str:
    """The run's config minus the named fields ("pruning", "pruning.params.allocation", ...). A section
    left empty is dropped too: stored configs leave out fields at their default, so `params: {}` and
    no `params` are the same setting."""
    data = json.loads(json.dumps(run.config))
    for path in paths:
        _remove(data, path.split("."))
    return _canonical(data)


def _remove(node: dict[str, Any], path: list[str]) -> None:
    head, *rest = path
    if not rest:
        node.pop(head, None)
        return
    child = node.get(head)
    if isinstance(child, dict):
        _remove(child, rest)
        if not child:
            del node[head]


# --- per-document values ---------------------------------------------------------------------------


Value = Callable[[Run, str, SampleRow], "float | None"]


def correctness(_run: Run, _task: str, sample: SampleRow) -> float | None:
    correct = sample[0]
    return None if correct is None else float(correct)


def tts_gain(run: Run, task: str, sample: SampleRow) -> float | None:
    """maj@k - pass@1 of the document: what sampling k answers and voting adds."""
    k = run.num_samples.get(task, 1)
    metrics = sample[1]
    vote, single = metrics.get(f"maj@{k}"), metrics.get("pass@1")
    if vote is None or single is None or not (math.isfinite(vote) and math.isfinite(single)):
        return None
    return float(vote) - float(single)


# --- paired documents ------------------------------------------------------------------------------


Arm = tuple[Run, ...]
Comparison = tuple[Arm, ...]


def paired_units(comparisons: Sequence[Comparison], task_ok: Callable[[Run, str], bool],
                 value: Value) -> tuple[list[Unit], set[int]]:
    """(units of every comparison, indices of the comparisons that gave at least one)."""
    units: list[Unit] = []
    used: set[int] = set()
    arms: dict[tuple[int, ...], dict[tuple[str, int], tuple[float, ...]]] = {}  # an arm recurs across comparisons
    for index, comparison in enumerate(comparisons):
        per_arm = []
        for arm in comparison:
            key = tuple(run.job_id for run in arm)
            if key not in arms:
                arms[key] = _arm_values(arm, task_ok, value)
            per_arm.append(arms[key])
        shared = set(per_arm[0]).intersection(*per_arm[1:])
        for task, doc_id in sorted(shared):
            values = tuple(v for arm in per_arm for v in arm[(task, doc_id)])
            units.append(Unit(task, doc_id, (index, task), values))
            used.add(index)
    return units, used


def _arm_values(arm: Arm, task_ok: Callable[[Run, str], bool],
                value: Value) -> dict[tuple[str, int], tuple[float, ...]]:
    """(task, doc_id) -> one value per run of the arm, for documents all its runs scored under equal settings."""
    first = arm[0]
    tasks = {t for t in first.task_settings
             if task_ok(first, t) and all(r.task_settings.get(t) == first.task_settings[t] for r in arm[1:])}
    values: dict[tuple[str, int], tuple[float, ...]] = {}
    for (task, doc_id), sample in first.samples.items():
        if task not in tasks:
            continue
        row = [value(first, task, sample)]
        for run in arm[1:]:
            other = run.samples.get((task, doc_id))
            row.append(None if other is None else value(run, task, other))
        if all(v is not None for v in row):
            values[(task, doc_id)] = tuple(row)
    return values
