"""The seed studies' findings, each checked against the stored results by a stated rule.

Every verdict comes from one computation, never from text written by hand:

1. Runs are the latest succeeded job per config hash (optionally of one model / paradigm).
2. Two sides are chosen per finding (e.g. depth runs vs width runs) and grouped so that only runs
   that differ in what the finding is about are compared: same model, paradigm, seed, evaluation
   settings, and (depending on the finding) sparsity, calibration and recovery.
3. Within a group, samples are matched by task, doc_id and the task's generation settings. A side's
   value for a sample is the mean over that side's runs in the group (per-sample correctness, 0/1;
   for test-time scaling the sample's maj@k - pass@1). One matched sample is one paired unit; its
   difference is favoured side - other side.
4. diff = the mean paired difference; its 95 % CI is a percentile bootstrap over the units
   (`db.compare.paired_bootstrap`: `BOOTSTRAP_RESAMPLES` resamples, seed 0).
5. Verdict: "inconclusive" when fewer than `MIN_PAIRED` units exist or the CI contains 0;
   "supported" when the CI lies entirely above 0 (the finding's side); "contradicted" when it lies
   entirely below.

"Dynamic degrades on long chains" is a difference of two such differences (drop from the dense
run on reasoning minus drop on classification); its CI resamples the two sets of units
independently (`bootstrap_mean_difference`, here: not a plain paired comparison), and each set
needs `MIN_PAIRED` units.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.compare import BOOTSTRAP_RESAMPLES, paired_bootstrap
from db.schema import Job, Sample
from jobs.states import JobState

__all__ = [
    "Verdict", "findings", "FINDINGS", "MIN_PAIRED", "bootstrap_mean_difference", "verdict_for",
]

MIN_PAIRED = 30
"""Fewer paired samples than this: inconclusive whatever the interval."""
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ALIGNED_SOURCES = ("task-aligned", "self-generated")
GENERIC_SOURCES = ("text",)


@dataclass
class Verdict:
    key: str
    statement: str
    verdict: str
    """"supported" | "contradicted" | "inconclusive"."""
    rule: str
    numbers: dict[str, Any]
    """diff, ci_low, ci_high, n_paired, runs ({side: [job ids]}), job_ids (all compared)."""
    reason: str = ""
    """Why the verdict is what it is, in one sentence (e.g. too few paired samples)."""


@dataclass(frozen=True)
class Finding:
    key: str
    statement: str
    rule: str


FINDINGS: tuple[Finding, ...] = (
    Finding("depth-beats-width-classification", "Depth pruning beats width pruning on classification",
            "classification tasks; depth-family vs width-family runs with the same model, paradigm, sparsity, "
            "calibration and recovery; paired difference of per-sample correctness, depth - width"),
    Finding("width-beats-depth-reasoning", "Width pruning beats depth pruning on generation and reasoning",
            "generation and reasoning tasks; width-family vs depth-family runs with the same model, paradigm, "
            "sparsity, calibration and recovery; paired difference of per-sample correctness, width - depth"),
    Finding("dynamic-degrades-long-chains",
            "Dynamic pruning degrades long reasoning chains more than classification",
            "dynamic-family runs vs the dense run of the same model and paradigm; per sample the drop "
            "dense - dynamic (correctness, dynamic runs averaged); diff = mean drop on reasoning tasks - mean "
            "drop on classification tasks, CI by resampling each category's samples independently, each "
            f"needing {MIN_PAIRED}"),
    Finding("aligned-calibration-helps", "Aligned calibration data helps",
            "runs with task-aligned or self-generated calibration vs generic text calibration, same method, "
            "parameters, sparsity, model, paradigm and recovery; every task with per-sample correctness; "
            "paired difference aligned - generic"),
    Finding("unstructured-preserves-tts",
            "Unstructured pruning preserves test-time scaling better than layer removal",
            "tasks evaluated with k > 1 samples per prompt; unstructured-family vs depth-family runs with the "
            "same model, paradigm, sparsity, calibration and recovery; per sample the test-time-scaling gain "
            "maj@k - pass@1; paired difference unstructured - depth"),
)

_COMMON_RULE = (f"; 95 % percentile bootstrap CI ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); "
                f"supported when the CI is above 0, contradicted when below 0, inconclusive when it contains 0 "
                f"or fewer than {MIN_PAIRED} paired samples exist.")


# --- runs -------------------------------------------------------------------------------------


@dataclass
class _Run:
    job_id: int
    family: str | None
    config: dict[str, Any]
    task_settings: dict[str, str]
    """task name -> its config without `limit` (JSON): samples match only under equal settings."""
    num_samples: dict[str, int]
    """task name -> k, the samples generated per prompt (test-time scaling when k > 1)."""
    samples: dict[tuple[str, int], tuple[bool | None, dict[str, Any]]] = field(default_factory=dict)


def _family(method: str) -> str | None:
    from backend.pruning import get_method
    from backend.registry import UnknownName

    try:
        return get_method(method).family
    except UnknownName:
        return None


def _category(task: str) -> str | None:
    from backend.registry import UnknownName
    from backend.tasks import get_task

    try:
        return get_task(task).category
    except UnknownName:
        return None


def _load_runs(session: Session, model: str | None, paradigm: str | None) -> list[_Run]:
    query = select(Job).where(Job.state == JobState.SUCCEEDED, Job.hidden.is_(False)).order_by(Job.id)
    if model is not None:
        query = query.where(Job.model == model)
    if paradigm is not None:
        query = query.where(Job.paradigm == paradigm)
    latest: dict[str, Job] = {}
    for job in session.scalars(query):
        latest[job.config_hash] = job  # ordered by id: the latest wins
    runs: dict[int, _Run] = {}
    for job in latest.values():
        config = json.loads(job.config_json)
        tasks = config.get("tasks", [])
        settings = {t["name"]: _canonical({k: v for k, v in t.items() if k != "limit"}) for t in tasks}
        k = {t["name"]: int((t.get("generation") or {}).get("num_samples", 1)) for t in tasks}
        runs[job.id] = _Run(job.id, _family(job.method), config, settings, k)
    if not runs:
        return []
    rows = session.execute(
        select(Sample.job_id, Sample.task, Sample.doc_id, Sample.correct, Sample.metrics_json)
        .where(Sample.job_id.in_(list(runs)))
    )
    for job_id, task, doc_id, correct, metrics in rows:
        runs[job_id].samples[(task, doc_id)] = (correct, metrics or {})
    return list(runs.values())


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _calibration_source(config: dict[str, Any]) -> str | None:
    """The calibration source a run used (a config without a section: the default calibration's)."""
    from backend.config import stored_calibration

    calibration = stored_calibration(config)
    return calibration.source if calibration is not None else None


def _key_without(config: dict[str, Any], *paths: str) -> str:
    """The config minus the named fields ("pruning", "pruning.method", ...): runs equal in the rest."""
    data = json.loads(json.dumps(config))
    for path in paths:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return _canonical(data)


# --- pairing ----------------------------------------------------------------------------------


def _same_setting(run: _Run) -> str:
    """Group key of runs that differ only in their pruning method (same sparsity, calibration, ...)."""
    return _key_without(run.config, "pruning.method", "pruning.params", "tasks")


def _same_but_calibration(run: _Run) -> str:
    """Group key of runs that differ only in their calibration data."""
    return _key_without(run.config, "calibration", "tasks")


def _same_base_model(run: _Run) -> str:
    """Group key of a dense run and the pruned runs of its model (any method, sparsity, calibration)."""
    return _key_without(run.config, "pruning", "calibration", "recovery", "tasks")


_Value = Callable[[_Run, str, tuple[bool | None, dict[str, Any]]], float | None]


def _correctness(_run: _Run, _task: str, sample: tuple[bool | None, dict[str, Any]]) -> float | None:
    correct = sample[0]
    return None if correct is None else float(correct)


def _tts_gain(run: _Run, task: str, sample: tuple[bool | None, dict[str, Any]]) -> float | None:
    k = run.num_samples.get(task, 1)
    metrics = sample[1]
    vote, single = metrics.get(f"maj@{k}"), metrics.get("pass@1")
    if vote is None or single is None or not (math.isfinite(vote) and math.isfinite(single)):
        return None
    return float(vote) - float(single)


@dataclass
class _Paired:
    """Paired units of one comparison: (category, favoured value, other value) and the runs that contributed."""

    units: list[tuple[str, float, float]] = field(default_factory=list)
    runs: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))


def _pair(favoured: list[_Run], other: list[_Run], labels: tuple[str, str], group: Callable[[_Run], str],
          task_ok: Callable[[_Run, str], bool], value: _Value) -> _Paired:
    """Units: samples present on both sides of a group, each side's value its runs' mean."""
    sides: dict[str, tuple[list[_Run], list[_Run]]] = defaultdict(lambda: ([], []))
    for run in favoured:
        sides[group(run)][0].append(run)
    for run in other:
        sides[group(run)][1].append(run)
    paired = _Paired()
    for key in sorted(sides):
        runs_f, runs_o = sides[key]
        if not runs_f or not runs_o:
            continue
        means_f, means_o = _side_means(runs_f, task_ok, value), _side_means(runs_o, task_ok, value)
        shared = sorted(set(means_f) & set(means_o))
        for unit in shared:
            paired.units.append((_category(unit[0]) or "", means_f[unit][0], means_o[unit][0]))
            paired.runs[labels[0]].update(means_f[unit][1])
            paired.runs[labels[1]].update(means_o[unit][1])
    return paired


def _side_means(runs: list[_Run], task_ok: Callable[[_Run, str], bool],
                value: _Value) -> dict[tuple[str, str, int], tuple[float, set[int]]]:
    """(task, settings, doc_id) -> (mean value over the side's runs, their job ids)."""
    values: dict[tuple[str, str, int], list[tuple[float, int]]] = defaultdict(list)
    for run in runs:
        for (task, doc_id), sample in run.samples.items():
            if task not in run.task_settings or not task_ok(run, task):
                continue
            v = value(run, task, sample)
            if v is not None:
                values[(task, run.task_settings[task], doc_id)].append((v, run.job_id))
    return {unit: (sum(v for v, _ in vs) / len(vs), {j for _, j in vs}) for unit, vs in values.items()}


# --- statistics -------------------------------------------------------------------------------


def _resampled_means(values: list[float], n_resamples: int, seed: int):
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // max(len(data), 1))  # bounded memory for large sample sets
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        means[start:stop] = data[rng.integers(0, len(data), size=(stop - start, len(data)))].mean(axis=1)
    return means


def bootstrap_mean_difference(x: list[float], y: list[float], n_resamples: int = BOOTSTRAP_RESAMPLES,
                              seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(mean(x) - mean(y), 2.5th and 97.5th percentile of it), resampling x and y independently."""
    import numpy as np

    if not x or not y:
        return math.nan, math.nan, math.nan
    diff = sum(x) / len(x) - sum(y) / len(y)
    statistics = _resampled_means(x, n_resamples, seed) - _resampled_means(y, n_resamples, seed + 1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(statistics, [tail, 100 - tail])
    return diff, float(low), float(high)


def verdict_for(diff: float, low: float, high: float, n_paired: int) -> tuple[str, str]:
    """(verdict, reason) by the rule in the module docstring."""
    if n_paired < MIN_PAIRED:
        return "inconclusive", f"only {n_paired} paired samples (fewer than {MIN_PAIRED})"
    if low > 0:
        return "supported", f"the 95 % CI [{low:.3f}, {high:.3f}] lies above 0"
    if high < 0:
        return "contradicted", f"the 95 % CI [{low:.3f}, {high:.3f}] lies below 0"
    return "inconclusive", f"the 95 % CI [{low:.3f}, {high:.3f}] contains 0"


# --- the findings -----------------------------------------------------------------------------


def findings(session: Session, model: str | None = None, paradigm: str | None = None) -> list[Verdict]:
    """One verdict per seed finding (`FINDINGS`, in order) from the stored results."""
    runs = _load_runs(session, model, paradigm)
    by_family: dict[str | None, list[_Run]] = defaultdict(list)
    for run in runs:
        by_family[run.family].append(run)
    depth, width = by_family["depth"], by_family["width"]

    def in_categories(*categories: str) -> Callable[[_Run, str], bool]:
        return lambda _run, task: _category(task) in categories

    verdicts: list[Verdict] = []
    spec = {f.key: f for f in FINDINGS}

    paired = _pair(depth, width, ("depth", "width"), _same_setting, in_categories("classification"), _correctness)
    verdicts.append(_paired_verdict(spec["depth-beats-width-classification"], paired))

    paired = _pair(width, depth, ("width", "depth"), _same_setting, in_categories("generation", "reasoning"),
                   _correctness)
    verdicts.append(_paired_verdict(spec["width-beats-depth-reasoning"], paired))

    verdicts.append(_dynamic_verdict(spec["dynamic-degrades-long-chains"], by_family["dense"], by_family["dynamic"]))

    pruned = [r for r in runs if r.family not in (None, "dense")]
    aligned = [r for r in pruned if _calibration_source(r.config) in ALIGNED_SOURCES]
    generic = [r for r in pruned if _calibration_source(r.config) in GENERIC_SOURCES]
    paired = _pair(aligned, generic, ("aligned", "generic"), _same_but_calibration,
                   in_categories("classification", "generation", "reasoning"), _correctness)
    verdicts.append(_paired_verdict(spec["aligned-calibration-helps"], paired))

    paired = _pair(by_family["unstructured"], depth, ("unstructured", "depth"), _same_setting,
                   lambda run, task: run.num_samples.get(task, 1) > 1, _tts_gain)
    verdicts.append(_paired_verdict(spec["unstructured-preserves-tts"], paired))
    return verdicts


def _numbers(diff: float, low: float, high: float, n: int, runs: dict[str, set[int]]) -> dict[str, Any]:
    return {
        "diff": _finite(diff), "ci_low": _finite(low), "ci_high": _finite(high), "n_paired": n,
        "runs": {label: sorted(ids) for label, ids in runs.items()},
        "job_ids": sorted({i for ids in runs.values() for i in ids}),
    }


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _paired_verdict(finding: Finding, paired: _Paired) -> Verdict:
    n = len(paired.units)
    diff, low, high = paired_bootstrap([o for _, _, o in paired.units], [f for _, f, _ in paired.units],
                                       n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
    verdict, reason = verdict_for(diff, low, high, n) if n else (
        "inconclusive", "no paired samples: no two runs of these kinds share a setting and tasks")
    return Verdict(finding.key, finding.statement, verdict, finding.rule + _COMMON_RULE,
                   _numbers(diff, low, high, n, paired.runs), reason)


def _dynamic_verdict(finding: Finding, dense: list[_Run], dynamic: list[_Run]) -> Verdict:
    paired = _pair(dense, dynamic, ("dense", "dynamic"), _same_base_model,
                   lambda _run, task: _category(task) in ("reasoning", "classification"), _correctness)
    reasoning = [full - routed for c, full, routed in paired.units if c == "reasoning"]
    classification = [full - routed for c, full, routed in paired.units if c == "classification"]
    diff, low, high = bootstrap_mean_difference(reasoning, classification)
    n = min(len(reasoning), len(classification))
    if not reasoning or not classification:
        verdict, reason = "inconclusive", ("no paired samples on reasoning and on classification tasks "
                                           "between a dense and a dynamic run")
    else:
        verdict, reason = verdict_for(diff, low, high, n)
    numbers = _numbers(diff, low, high, n, paired.runs)
    numbers.update({
        "n_reasoning": len(reasoning), "n_classification": len(classification),
        "drop_reasoning": _finite(sum(reasoning) / len(reasoning)) if reasoning else None,
        "drop_classification": _finite(sum(classification) / len(classification)) if classification else None,
    })
    return Verdict(finding.key, finding.statement, verdict, finding.rule + _COMMON_RULE, numbers, reason)
