"""The leaderboard: one row per run (the latest succeeded job of each config hash), task columns
grouped by category, with averages, views relative to the dense baseline and comparability groups.

Definitions (the UI shows them as they are):

* Task columns hold each task's primary metric. Lower-is-better tasks (perplexity) form their own
  column group; the other tasks are grouped by `TaskSpec.category`, each group ending with
  "<category> avg". `average` is the mean over all higher-is-better task columns of the row (not
  the mean of the category averages); averages skip missing cells.
* Views (`VIEWS`): `raw` is the score. `delta` and `retained` compare with the dense baseline and
  are sign-aware, so that in both views larger is better for every task column:
  delta = run - dense for higher-is-better tasks and dense - run for lower-is-better ones;
  retained = 100 x run / dense for higher-is-better tasks and 100 x dense / run for lower-is-better
  ones. Averages in these views average the per-task deltas / retained percentages. Efficiency
  columns stay raw in every view.
* Efficiency (from `Job.efficiency_json`, columns shown where some row knows them): params_M
  (parameters in millions); flops_ratio (FLOPs per token / the baseline's, when both stored
  `flops_per_token`); speedup_ideal (stored `ideal_speedup`, else the inverse FLOPs ratio);
  speedup_measured (stored `measured_speedup`, else decode tokens/s over the baseline's when both
  were measured on the same device name).
* The dense baseline of a cell is the latest dense run of the same model and paradigm whose score
  for that task has the SAME comparability key (evaluation settings, task config hash, lm-eval
  version, dtype). Without one the cell is NaN in the delta / retained views and the row's `flag`
  says why. `baseline_job_id` is the dense run matched for most of the row's tasks.
* `group`: runs are grouped by their (task, comparability key) pairs: a run joins the first group
  (largest first) whose keys agree on every shared task. Per model and paradigm the largest group
  is "main", the others "B", "C", ...; scores of different groups are not comparable.
* `calibration` (the source: text, synthetic, task-aligned, self-generated) and `calibration_data`
  (which data, e.g. `text wikitext2/valid.txt 32x256 seed 0 (default)`) are shown for runs whose
  method used calibration data; a config without a calibration section used
  `backend.config.DEFAULT_CALIBRATION`, marked "(default)". Both are stored when a job is submitted
  (`jobs.facts`), as are the family and the task categories: reading the board parses no config.
* Filters narrow the rows shown; dense baselines outside the filter still serve as baselines.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.vocabulary import ANSWER_CATEGORIES, FAMILIES, ordered_families
from db.schema import Job, Score
from db.states import JobState

__all__ = [
    "FAMILIES", "VIEWS", "CATEGORIES", "META_COLUMNS", "EFFICIENCY_COLUMNS", "BoardFilters", "Board",
    "filter_options", "board", "export_board", "pending_dense",
]

VIEWS = ("raw", "delta", "retained")
CATEGORIES = ANSWER_CATEGORIES
"""Higher-is-better task groups, in column order (tasks of an unknown category go to `other`)."""
META_COLUMNS = ["job_id", "model", "paradigm", "method", "family", "sparsity", "calibration", "calibration_data",
                "recovery", "group", "baseline_job_id", "flag"]
EFFICIENCY_COLUMNS = {"params_M": False, "flops_ratio": False, "speedup_ideal": True, "speedup_measured": True}
"""Efficiency columns and whether higher is better; a column appears when some row knows it."""
MAIN_GROUP = "main"


@dataclass(frozen=True)
class BoardFilters:
    model: str | None = None
    paradigm: str | None = None
    families: tuple[str, ...] = ()
    """Empty: all families."""
    sparsity_min: float | None = None
    sparsity_max: float | None = None
    calibration: str | None = None
    """A `calibration.source` value; runs whose method uses no calibration never match."""
    recovery: bool | None = None
    search: str = ""
    """Case-insensitive substring of the method, the model or the job id."""


@dataclass
class Board:
    frame: pd.DataFrame
    meta_columns: list[str]
    column_groups: dict[str, list[str]]
    higher_is_better: dict[str, bool]
    notes: list[str] = field(default_factory=list)
    total_runs: int = 0
    """Runs of the chosen model and paradigm before the other filters (0: nothing has finished yet)."""


@dataclass
class _Run:
    job_id: int
    model: str
    paradigm: str
    method: str
    family: str
    sparsity: float
    calibration: str | None
    calibration_data: str | None
    recovery: bool
    efficiency: dict[str, Any]
    scores: dict[str, tuple[float | None, bool, str]] = field(default_factory=dict)
    """task -> (value, higher_is_better, comparability_key) of the primary metric."""
    categories: dict[str, str | None] = field(default_factory=dict)
    """task -> its category (`scores.category`)."""


# --- public functions -------------------------------------------------------------------------


def filter_options(session: Session) -> dict[str, Any]:
    """The values the filters can take, from the runs on the board."""
    runs = _latest_runs(session, None, None)
    sparsities = [run.sparsity for run in runs]
    return {
        "models": sorted({run.model for run in runs}),
        "paradigms": sorted({run.paradigm for run in runs}),
        "families": ordered_families({run.family for run in runs}),
        "calibrations": sorted({run.calibration for run in runs if run.calibration}),
        "sparsity": (min(sparsities), max(sparsities)) if sparsities else (0.0, 0.0),
    }


def board(session: Session, filters: BoardFilters = BoardFilters(), view: str = "raw") -> Board:
    """The leaderboard for `filters` in `view` (see the module docstring for every definition)."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    runs = _latest_runs(session, filters.model, filters.paradigm)
    _load_scores(session, runs, filters.model, filters.paradigm)
    categories = _task_categories(runs)
    groups = _comparability_groups(runs)
    baselines = _baselines(runs)
    shown = [run for run in runs if _matches(run, filters)]
    by_id = {run.job_id: run for run in runs}
    with_dense = {(run.model, run.paradigm) for run in runs if run.family == "dense"}
    pending = pending_dense(session, filters.model, filters.paradigm)

    tasks_by_group = _column_layout(categories)
    hib_tasks = [t for name, tasks in tasks_by_group.items() if name != "perplexity" for t in tasks]
    rows = []
    for run in shown:
        matched = baselines[run.job_id]
        row: dict[str, Any] = {
            "job_id": run.job_id, "model": run.model, "paradigm": run.paradigm, "method": run.method,
            "family": run.family, "sparsity": run.sparsity, "calibration": run.calibration,
            "calibration_data": run.calibration_data, "recovery": run.recovery, "group": groups[run.job_id],
            "baseline_job_id": _main_baseline(matched), "flag": _flag(run, matched, with_dense, pending),
        }
        for task in [*hib_tasks, *tasks_by_group.get("perplexity", [])]:
            row[task] = _cell(run, task, matched.get(task), view)
        for name, tasks in tasks_by_group.items():
            if name != "perplexity":
                row[f"{name} avg"] = _mean(row[t] for t in tasks)
        row["average"] = _mean(row[t] for t in hib_tasks)
        row.update(_efficiency(run, by_id.get(row["baseline_job_id"])))
        rows.append(row)

    column_groups, higher = _column_groups(tasks_by_group, rows, view)
    value_columns = [c for columns in column_groups.values() for c in columns]
    group_rank = {run.job_id: _group_rank(groups[run.job_id]) for run in runs}
    rows.sort(key=lambda r: (r["model"], r["paradigm"], group_rank[r["job_id"]], r["family"] != "dense",
                             r["method"], r["sparsity"], r["job_id"]))
    frame = pd.DataFrame(rows, columns=[*META_COLUMNS, *value_columns])
    for column in value_columns:
        frame[column] = frame[column].astype("float64")
    frame["baseline_job_id"] = frame["baseline_job_id"].astype("Int64")
    frame["recovery"] = frame["recovery"].astype(bool)
    return Board(frame=frame, meta_columns=list(META_COLUMNS), column_groups=column_groups,
                 higher_is_better=higher, notes=_notes(shown, groups), total_runs=len(runs))


def _column_groups(tasks_by_group: dict[str, list[str]], rows: list[dict[str, Any]],
                   view: str) -> tuple[dict[str, list[str]], dict[str, bool]]:
    """(group -> value columns in order, column -> higher is better) of the board."""
    groups: dict[str, list[str]] = {}
    for name, tasks in tasks_by_group.items():
        if name != "perplexity":
            groups[name] = [*tasks, f"{name} avg"]
    if groups:
        groups["overall"] = ["average"]
    if tasks_by_group.get("perplexity"):
        groups["perplexity"] = list(tasks_by_group["perplexity"])
    efficiency = [c for c in EFFICIENCY_COLUMNS if any(r.get(c) is not None for r in rows)]
    if efficiency:
        groups["efficiency"] = efficiency
    higher: dict[str, bool] = {}
    for name, columns in groups.items():
        for column in columns:
            if name == "efficiency":
                higher[column] = EFFICIENCY_COLUMNS[column]
            else:  # the delta / retained views are oriented so that larger is better
                higher[column] = name != "perplexity" or view != "raw"
    return groups, higher


def export_board(board: Board, fmt: str) -> str:
    """The board's frame as CSV or JSON (a list of row objects; NaN becomes null)."""
    if fmt == "csv":
        return board.frame.to_csv(index=False)
    if fmt == "json":
        return board.frame.to_json(orient="records", indent=1)
    raise ValueError(f"format must be csv or json, got {fmt!r}")


# --- loading ----------------------------------------------------------------------------------


def _latest_subquery(model: str | None, paradigm: str | None):
    """Ids of the latest succeeded job of each config hash (of one model / paradigm if given) that
    no admin hid (jobs.access)."""
    latest = select(func.max(Job.id)).where(Job.state == JobState.SUCCEEDED, Job.hidden.is_(False))
    if model is not None:
        latest = latest.where(Job.model == model)
    if paradigm is not None:
        latest = latest.where(Job.paradigm == paradigm)
    return latest.group_by(Job.config_hash)


def _latest_runs(session: Session, model: str | None, paradigm: str | None) -> list[_Run]:
    # Core execution (session.connection()): plain rows, without the ORM's per-row loading work.
    rows = session.connection().execute(
        select(Job.id, Job.model, Job.paradigm, Job.method, Job.family, Job.sparsity, Job.calibration_source,
               Job.calibration_data, Job.recovery, Job.efficiency_json)
        .where(Job.id.in_(_latest_subquery(model, paradigm)))
        .order_by(Job.id)
    ).all()
    return [_Run(job_id=job_id, model=m, paradigm=p, method=method, family=family or "other", sparsity=sparsity,
                 calibration=source, calibration_data=data, recovery=bool(recovery), efficiency=efficiency or {})
            for job_id, m, p, method, family, sparsity, source, data, recovery, efficiency in rows]


def _load_scores(session: Session, runs: list[_Run], model: str | None, paradigm: str | None) -> None:
    by_id = {run.job_id: run for run in runs}
    if not by_id:
        return
    rows = session.connection().execute(
        select(Score.job_id, Score.task, Score.value, Score.higher_is_better, Score.comparability_key, Score.category)
        .where(Score.job_id.in_(_latest_subquery(model, paradigm)), Score.is_primary.is_(True))
    )
    for job_id, task, value, hib, key, category in rows:
        by_id[job_id].scores[task] = (value, bool(hib), key)
        by_id[job_id].categories[task] = category


def _task_categories(runs: list[_Run]) -> dict[str, str]:
    """task -> column group: "perplexity" for lower-is-better tasks, else the task's category."""
    categories: dict[str, str] = {}
    for run in runs:
        for task, (_, hib, _) in run.scores.items():
            if task in categories:
                continue
            category = run.categories.get(task)
            categories[task] = "perplexity" if not hib else category if category in CATEGORIES else "other"
    return categories


def _column_layout(categories: dict[str, str]) -> dict[str, list[str]]:
    layout: dict[str, list[str]] = {}
    for name in (*CATEGORIES, "other", "perplexity"):
        tasks = sorted(t for t, c in categories.items() if c == name)
        if tasks:
            layout[name] = tasks
    return layout


# --- comparability ----------------------------------------------------------------------------


def _comparability_groups(runs: list[_Run]) -> dict[int, str]:
    """job id -> group label per model and paradigm (see the module docstring)."""
    labels: dict[int, str] = {}
    by_setting: dict[tuple[str, str], list[_Run]] = {}
    for run in runs:
        by_setting.setdefault((run.model, run.paradigm), []).append(run)
    for setting_runs in by_setting.values():
        signatures = Counter(_signature(run) for run in setting_runs)
        with_dense = {_signature(run) for run in setting_runs if run.family == "dense"}
        groups: list[tuple[dict[str, str], list[tuple]]] = []  # (task -> key, signatures)
        # Largest first; on a tie the runs with a dense baseline lead, so the baseline is in "main".
        for signature, _ in sorted(signatures.items(), key=lambda item: (-item[1], item[0] not in with_dense, item[0])):
            keys = dict(signature)
            for union, members in groups:
                if all(union.get(task, key) == key for task, key in keys.items()):
                    union.update(keys)
                    members.append(signature)
                    break
            else:
                groups.append((keys, [signature]))
        sizes = [sum(signatures[s] for s in members) for _, members in groups]
        order = sorted(range(len(groups)), key=lambda i: (-sizes[i], not set(groups[i][1]) & with_dense, i))
        names = {index: MAIN_GROUP if rank == 0 else _letter(rank) for rank, index in enumerate(order)}
        label_of = {s: names[i] for i, (_, members) in enumerate(groups) for s in members}
        for run in setting_runs:
            labels[run.job_id] = label_of[_signature(run)]
    return labels


def _signature(run: _Run) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((task, key) for task, (_, _, key) in run.scores.items()))


def _letter(rank: int) -> str:
    """1 -> B, 2 -> C, ..., 25 -> Z, then Z26, Z27, ..."""
    return chr(ord("A") + rank) if rank < 26 else f"Z{rank}"


def _group_rank(label: str) -> tuple[int, int, str]:
    return (0, 0, "") if label == MAIN_GROUP else (1, len(label), label)  # main, B..Z, Z26...


def _baselines(runs: list[_Run]) -> dict[int, dict[str, _Run]]:
    """job id -> task -> the dense run whose score for that task shares the comparability key."""
    dense: dict[tuple[str, str], list[_Run]] = {}
    for run in sorted(runs, key=lambda r: -r.job_id):  # latest first
        if run.family == "dense":
            dense.setdefault((run.model, run.paradigm), []).append(run)
    matched: dict[int, dict[str, _Run]] = {}
    for run in runs:
        candidates = [run] if run.family == "dense" else dense.get((run.model, run.paradigm), [])
        per_task: dict[str, _Run] = {}
        for task, (_, _, key) in run.scores.items():
            for candidate in candidates:
                score = candidate.scores.get(task)
                if score is not None and score[2] == key:
                    per_task[task] = candidate
                    break
        matched[run.job_id] = per_task
    return matched


def _main_baseline(matched: dict[str, _Run]) -> int | None:
    if not matched:
        return None
    counts = Counter(run.job_id for run in matched.values())
    return max(counts, key=lambda job_id: (counts[job_id], job_id))


def _flag(run: _Run, matched: dict[str, _Run], with_dense: set[tuple[str, str]],
          pending: dict[tuple[str, str], tuple[int, str]]) -> str:
    if run.family == "dense":
        return ""
    waiting = pending.get((run.model, run.paradigm))
    if (run.model, run.paradigm) not in with_dense:
        if waiting:
            return f"no dense baseline for this model and paradigm yet (job {waiting[0]} is {waiting[1]})"
        return "no dense baseline for this model and paradigm"
    missing = sorted(task for task in run.scores if task not in matched)
    if missing:
        flag = "no dense baseline with the same evaluation settings for " + ", ".join(missing)
        return flag + (f" (dense job {waiting[0]} is {waiting[1]})" if waiting else "")
    return ""


def pending_dense(session: Session, model: str | None = None,
                  paradigm: str | None = None) -> dict[tuple[str, str], tuple[int, str]]:
    """(model, paradigm) -> (id, state) of the oldest queued or running dense job (baselines on their way)."""
    query = select(Job.id, Job.model, Job.paradigm, Job.state).where(
        Job.state.in_((JobState.QUEUED, JobState.RUNNING)), Job.family == "dense",
    ).order_by(Job.id.desc())
    if model is not None:
        query = query.where(Job.model == model)
    if paradigm is not None:
        query = query.where(Job.paradigm == paradigm)
    return {(m, p): (job_id, state.value) for job_id, m, p, state in session.execute(query)}


# --- cells ------------------------------------------------------------------------------------


def _cell(run: _Run, task: str, baseline: _Run | None, view: str) -> float | None:
    score = run.scores.get(task)
    if score is None or score[0] is None:
        return None
    value, hib, _ = score
    if view == "raw":
        return value
    if baseline is None or baseline.scores[task][0] is None:
        return None
    dense = baseline.scores[task][0]
    if view == "delta":
        return value - dense if hib else dense - value
    numerator, denominator = (value, dense) if hib else (dense, value)
    return 100.0 * numerator / denominator if denominator else None


def _mean(values) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if present else None


def _efficiency(run: _Run, baseline: _Run | None) -> dict[str, float | None]:
    """Efficiency figures stored with the run; ratios against its dense baseline where both know them."""
    eff, dense = run.efficiency, (baseline.efficiency if baseline is not None else {})
    flops, dense_flops = _number(eff, "flops_per_token"), _number(dense, "flops_per_token")
    params = _number(eff, "params")
    speed, dense_speed = _number(eff, "decode_tokens_per_s"), _number(dense, "decode_tokens_per_s")
    same_device = eff.get("device_name") is not None and eff.get("device_name") == dense.get("device_name")
    return {
        "params_M": params / 1e6 if params is not None else None,
        "flops_ratio": flops / dense_flops if flops and dense_flops else None,
        "speedup_ideal": _number(eff, "ideal_speedup") or (dense_flops / flops if flops and dense_flops else None),
        "speedup_measured": _number(eff, "measured_speedup")
        or (speed / dense_speed if speed and dense_speed and same_device else None),
    }


def _number(mapping: dict[str, Any], key: str) -> float | None:
    value = mapping.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --- filters and notes ------------------------------------------------------------------------


def _matches(run: _Run, f: BoardFilters) -> bool:
    if f.families and run.family not in f.families:
        return False
    if f.sparsity_min is not None and run.sparsity < f.sparsity_min - 1e-9:
        return False
    if f.sparsity_max is not None and run.sparsity > f.sparsity_max + 1e-9:
        return False
    if f.calibration is not None and run.calibration != f.calibration:
        return False
    if f.recovery is not None and run.recovery != f.recovery:
        return False
    needle = f.search.strip().lower()
    if needle and not any(needle in text.lower() for text in (run.method, run.model, str(run.job_id))):
        return False
    return True


def _notes(shown: list[_Run], groups: dict[int, str]) -> list[str]:
    notes = []
    apart = Counter((run.model, run.paradigm, groups[run.job_id]) for run in shown if groups[run.job_id] != MAIN_GROUP)
    for (model, paradigm, label), count in sorted(apart.items()):
        notes.append(f"{count} run(s) of {model} ({paradigm}) grouped apart as {label}: their evaluation "
                     "settings differ from the main group, so their scores are not ranked with it")
    return notes
