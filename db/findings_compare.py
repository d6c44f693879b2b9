"""How each finding of `db.findings` compares runs: which runs, paired how, which documents, which
statistic. Each public function takes the loaded runs (`RunSet`) and the cost measure to pair two
method families by (None where the finding compares runs of one pruning config, or a pruned run
with its dense run) and returns an `Outcome`: the paired units, the statistic over them and what to
report with them. The wording of each rule is in `db.findings.FINDINGS`.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.vocabulary import ANSWER_CATEGORIES, PARADIGMS
from db.bootstrap import Statistic, Unit, cluster_bootstrap, finite, pooled_difference, ratio
from db.equal_cost import NOMINAL, matched_by, relative_cost
from db.findings_data import (
    Comparison, Run, correctness, paired_units, setting_key, tts_gain,
)

__all__ = [
    "RunSet", "Outcome", "ALIGNED_SOURCES", "GENERIC_SOURCES", "STATIC_FAMILIES", "LOW_SPARSITY", "ALLOCATIONS",
    "depth_beats_width", "width_beats_depth", "dynamic_degrades", "aligned_calibration", "unstructured_tts",
    "static_beats_dynamic", "dynamic_holds_up", "paradigm_dependence", "low_sparsity_wanda", "allocation_weaker",
]

ALIGNED_SOURCES = ("task-aligned", "self-generated")
GENERIC_SOURCES = ("text",)
STATIC_FAMILIES = ("depth", "width", "unstructured")
LOW_SPARSITY = 0.3
"""Wanda runs at most this sparse count as low-sparsity."""
ALLOCATIONS = ("owl", "reconstruction-sensitivity")
_ALLOCATION_FIELDS = ("pruning.params.allocation", "pruning.params.owl_m", "pruning.params.deviation")


class RunSet:
    """The loaded runs with the lookups every finding needs."""

    def __init__(self, runs: list[Run]):
        self.all = runs
        self.dense: dict[str, list[Run]] = defaultdict(list)
        self._costs: dict[tuple[int, str], float | None] = {}
        self.categories: dict[str, str | None] = {}
        """task -> category, as the runs' scores recorded it."""
        for run in runs:
            if run.family == "dense":
                self.dense[_base_key(run)].append(run)
            for task, category in run.categories.items():
                self.categories.setdefault(task, category)

    def of(self, *families: str) -> list[Run]:
        return [run for run in self.all if run.family in families]

    def pruned(self) -> list[Run]:
        return [run for run in self.all if run.family not in (None, "dense")]

    def dense_for(self, run: Run) -> list[Run]:
        """Dense runs of the run's model, paradigm, seed and evaluation settings (oldest first)."""
        return self.dense.get(_base_key(run), [])

    def with_dense(self, pruned: Sequence[Run]) -> list[Comparison]:
        return [((run, dense),) for run in pruned for dense in self.dense_for(run)]

    def cost(self, run: Run, measure: str) -> float | None:
        if measure == NOMINAL:
            return None
        if (run.job_id, measure) not in self._costs:
            dense = self.dense_for(run)  # the latest dense run is the reference of relative figures
            self._costs[(run.job_id, measure)] = relative_cost(measure, run.efficiency, run.prune_report,
                                                               dense[-1].efficiency if dense else None)
        return self._costs[(run.job_id, measure)]

    def cost_pairs(self, favoured: Sequence[Run], other: Sequence[Run], measure: str) -> list[tuple[Run, Run, str]]:
        """(favoured, other, how paired) for runs of one setting (all but the pruning) at matched cost."""
        groups: dict[str, tuple[list[Run], list[Run]]] = defaultdict(lambda: ([], []))
        for run in favoured:
            groups[setting_key(run, *METHOD_SETTINGS)][0].append(run)
        for run in other:
            groups[setting_key(run, *METHOD_SETTINGS)][1].append(run)
        pairs = []
        for key in sorted(groups):
            for f in groups[key][0]:
                for o in groups[key][1]:
                    how = matched_by(measure, self.cost(f, measure), self.cost(o, measure), f.sparsity, o.sparsity)
                    if how is not None:
                        pairs.append((f, o, how))
        return pairs


METHOD_SETTINGS = ("pruning", "tasks", "calibration.num_samples", "calibration.seq_len")
"""What may differ between two methods compared at matched cost: the pruning itself and how much
calibration text each method reads (block searches read less, they run the model per candidate);
the calibration's source, the model, paradigm, seed, recovery and evaluation settings must agree."""


def _base_key(run: Run) -> str:
    """Runs of one model, paradigm, seed and evaluation settings (any pruning, calibration, recovery)."""
    return setting_key(run, "pruning", "calibration", "recovery", "tasks")


@dataclass
class Outcome:
    """What a finding compared: its units and statistic, and what to report with them."""

    units: list[Unit]
    statistic: Statistic
    runs: dict[str, set[int]]
    pairs: Counter = field(default_factory=Counter)
    """How many compared pairs were matched by each pairing (cost-matched findings only)."""
    rule_documents: dict[str, int] | None = None
    """Document counts the minimum applies to, by name (default: all documents)."""
    extra: dict[str, Any] = field(default_factory=dict)


def _categories(*names: str) -> Callable[[Run, str], bool]:
    return lambda run, task: run.categories.get(task) in names


def _labelled(comparisons: Sequence[Comparison], used: set[int], labels: Sequence[str]) -> dict[str, set[int]]:
    """{label: job ids} of the used comparisons, labels given per run in flattened comparison order."""
    runs: dict[str, set[int]] = defaultdict(set)
    for index in sorted(used):
        for label, run in zip(labels, [r for arm in comparisons[index] for r in arm]):
            runs[label].add(run.job_id)
    return dict(runs)


def _documents(units: Sequence[Unit], keep: Callable[[Unit], bool] = lambda _u: True) -> int:
    return len({(u.task, u.doc_id) for u in units if keep(u)})


def _defined(units: list[Unit], dense_columns: Sequence[int]) -> list[Unit]:
    """Units of the cells whose dense sums are all above 0 (% retained is defined there)."""
    totals: dict[Hashable, np.ndarray] = {}
    for unit in units:
        totals[unit.cell] = totals.get(unit.cell, 0) + np.asarray(unit.values)
    return [u for u in units if all(totals[u.cell][c] > 0 for c in dense_columns)]


def _mean_of(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over cells of per-replicate values, ignoring undefined (NaN) cells."""
    stacked = np.vstack(columns)
    finite = np.isfinite(stacked)
    return ratio(np.where(finite, stacked, 0.0).sum(axis=0), finite.sum(axis=0))


def _retained(sums: np.ndarray, pruned: int = 0, dense: int = 1) -> np.ndarray:
    return ratio(sums[:, pruned], sums[:, dense])


# --- one function per finding ------------------------------------------------------------------------


def _cost_matched(runs: RunSet, measure: str, favoured: list[Run], other: list[Run], labels: tuple[str, str],
                  task_ok: Callable[[Run, str], bool], value=correctness) -> Outcome:
    pairs = runs.cost_pairs(favoured, other, measure)
    comparisons = [((f, o),) for f, o, _ in pairs]
    units, used = paired_units(comparisons, task_ok, value)
    return Outcome(units, pooled_difference, _labelled(comparisons, used, labels),
                    pairs=Counter(pairs[i][2] for i in used))


def depth_beats_width(runs: RunSet, measure: str) -> Outcome:
    return _cost_matched(runs, measure, runs.of("depth"), runs.of("width"), ("depth", "width"),
                         _categories("classification"))


def width_beats_depth(runs: RunSet, measure: str) -> Outcome:
    return _cost_matched(runs, measure, runs.of("width"), runs.of("depth"), ("width", "depth"),
                         _categories("generation", "reasoning"))


def unstructured_tts(runs: RunSet, measure: str) -> Outcome:
    return _cost_matched(runs, measure, runs.of("unstructured"), runs.of("depth"), ("unstructured", "depth"),
                         lambda run, task: run.num_samples.get(task, 1) > 1, tts_gain)


def static_beats_dynamic(runs: RunSet, measure: str) -> Outcome:
    return _cost_matched(runs, measure, runs.of(*STATIC_FAMILIES), runs.of("dynamic"), ("static", "dynamic"),
                         _categories("reasoning"))


def aligned_calibration(runs: RunSet, _measure: None) -> Outcome:
    groups: dict[str, tuple[list[Run], list[Run]]] = defaultdict(lambda: ([], []))
    for run in runs.pruned():
        source = run.calibration_source
        if source in ALIGNED_SOURCES or source in GENERIC_SOURCES:
            groups[setting_key(run, "calibration", "tasks")][source in GENERIC_SOURCES].append(run)
    comparisons = [((a, g),) for key in sorted(groups) for a in groups[key][0] for g in groups[key][1]]
    units, used = paired_units(comparisons, _categories(*ANSWER_CATEGORIES), correctness)
    return Outcome(units, pooled_difference, _labelled(comparisons, used, ("aligned", "generic")))


def low_sparsity_wanda(runs: RunSet, _measure: None) -> Outcome:
    wanda = [r for r in runs.all if r.method == "wanda" and r.sparsity <= LOW_SPARSITY + 1e-9]
    comparisons = runs.with_dense(wanda)
    units, used = paired_units(comparisons, _categories("reasoning"), correctness)
    return Outcome(units, pooled_difference, _labelled(comparisons, used, ("wanda", "dense")))


def dynamic_degrades(runs: RunSet, _measure: None) -> Outcome:
    comparisons = runs.with_dense(runs.of("dynamic"))
    units, used = paired_units(comparisons, _categories("classification", "reasoning"), correctness)
    units = _defined(units, dense_columns=(1,))
    used = {u.cell[0] for u in units}

    def in_category(sums: Mapping[Hashable, np.ndarray], category: str) -> np.ndarray:
        return _mean_of([_retained(s) for cell, s in sums.items() if runs.categories.get(cell[1]) == category])

    def statistic(sums):
        return in_category(sums, "classification") - in_category(sums, "reasoning")

    counts = {c: _documents(units, lambda u, c=c: runs.categories.get(u.task) == c) for c in ("reasoning", "classification")}
    outcome = Outcome(units if all(counts.values()) else [], statistic,
                       _labelled(comparisons, used, ("dynamic", "dense")), rule_documents=counts)
    outcome.extra = {f"n_{c}": n for c, n in counts.items()}
    if outcome.units:
        for category in ("reasoning", "classification"):
            outcome.extra[f"retained_{category}"] = finite(cluster_bootstrap(
                units, lambda sums, c=category: in_category(sums, c), n_resamples=0).value)
    return outcome


def dynamic_holds_up(runs: RunSet, _measure: None) -> Outcome:
    comparisons = runs.with_dense([r for r in runs.of("dynamic") if r.paradigm == "instruct"])
    units, used = paired_units(comparisons, _categories("classification", "generation"), correctness)
    units = _defined(units, dense_columns=(1,))
    used = {u.cell[0] for u in units}
    return Outcome(units, lambda sums: _mean_of([_retained(s) for s in sums.values()]),
                    _labelled(comparisons, used, ("dynamic", "dense")))


def paradigm_dependence(runs: RunSet, _measure: None) -> Outcome:
    groups: dict[str, dict[str, list[Run]]] = defaultdict(lambda: {"instruct": [], "think": []})
    for run in runs.pruned():
        if run.paradigm in PARADIGMS:
            groups[setting_key(run, "paradigm", "model_args", "tasks")][run.paradigm].append(run)
    comparisons = [((i, di), (t, dt)) for key in sorted(groups) for i in groups[key]["instruct"]
                   for t in groups[key]["think"] for di in runs.dense_for(i) for dt in runs.dense_for(t)]
    units, used = paired_units(comparisons, _categories(*ANSWER_CATEGORIES), correctness)
    units = _defined(units, dense_columns=(1, 3))
    used = {u.cell[0] for u in units}

    def retained_in(sums, paradigm: str) -> np.ndarray:
        pruned = 0 if paradigm == "instruct" else 2
        return _mean_of([_retained(s, pruned, pruned + 1) for s in sums.values()])

    outcome = Outcome(units, lambda sums: retained_in(sums, "think") - retained_in(sums, "instruct"),
                       _labelled(comparisons, used, ("instruct", "dense", "think", "dense")))
    if units:
        for paradigm in PARADIGMS:
            outcome.extra[f"retained_{paradigm}"] = finite(cluster_bootstrap(
                units, lambda sums, p=paradigm: retained_in(sums, p), n_resamples=0).value)
    return outcome


def allocation_weaker(runs: RunSet, _measure: None) -> Outcome:
    comparisons = _allocation_comparisons(runs)
    units, _ = paired_units(comparisons, _categories(*ANSWER_CATEGORIES), correctness)
    units = _defined(units, dense_columns=(2, 5))
    weaker = _weaker_arm(units)
    units = [u for u in units if u.cell[0] in weaker]

    def gains(sums, of_weaker: bool) -> np.ndarray:
        columns = []
        for cell, s in sums.items():
            arm = weaker[cell[0]] if of_weaker else 1 - weaker[cell[0]]
            columns.append(ratio(s[:, 3 * arm] - s[:, 3 * arm + 1], s[:, 3 * arm + 2]))
        return _mean_of(columns)

    runs_by_label: dict[str, set[int]] = defaultdict(set)
    pairs = set()
    for index, arm in weaker.items():
        for side, runs_of_arm in (("weaker", comparisons[index][arm]), ("stronger", comparisons[index][1 - arm])):
            for role, run in zip(("allocated", "uniform", "dense"), runs_of_arm):
                runs_by_label[f"{side} model: {role}"].add(run.job_id)
        pairs.add((comparisons[index][arm][0].model, comparisons[index][1 - arm][0].model))
    outcome = Outcome(units, lambda sums: gains(sums, True) - gains(sums, False), dict(runs_by_label))
    outcome.extra["models"] = [{"weaker": w, "stronger": s} for w, s in sorted(pairs)]
    if units:
        for side in ("weaker", "stronger"):
            outcome.extra[f"gain_{side}"] = finite(cluster_bootstrap(
                units, lambda sums, w=side == "weaker": gains(sums, w), n_resamples=0).value)
    return outcome


def _allocation_comparisons(runs: RunSet) -> list[Comparison]:
    """((allocated, uniform, dense) of one model, the same of another) for every pair of models."""
    groups: dict[str, tuple[list[Run], list[Run]]] = defaultdict(lambda: ([], []))
    for run in runs.of("unstructured"):
        allocation = ((run.config.get("pruning") or {}).get("params") or {}).get("allocation", "uniform")
        if allocation in ALLOCATIONS or allocation == "uniform":
            groups[setting_key(run, "tasks", *_ALLOCATION_FIELDS)][allocation == "uniform"].append(run)
    by_model: dict[str, dict[str, list[tuple[Run, Run, Run]]]] = defaultdict(lambda: defaultdict(list))
    for key in sorted(groups):
        allocated, uniform = groups[key]
        for a in allocated:
            across_models = setting_key(a, "tasks", "model", "model_args")
            by_model[across_models][a.model] += [(a, u, d) for u in uniform for d in runs.dense_for(a)]
    comparisons: list[Comparison] = []
    for key in sorted(by_model):
        models = sorted(by_model[key])
        for i, first in enumerate(models):
            for second in models[i + 1:]:
                comparisons += [(x, y) for x in by_model[key][first] for y in by_model[key][second]]
    return comparisons


def _weaker_arm(units: Sequence[Unit]) -> dict[int, int]:
    """comparison index -> 0 or 1, its arm whose dense run has the lower mean of per-task accuracies on
    the compared documents (comparisons with a tie are left out: neither model is weaker)."""
    sums: dict[tuple[int, str], np.ndarray] = {}
    for unit in units:
        values = np.asarray(unit.values)
        sums[unit.cell] = sums.get(unit.cell, 0) + np.array([values[2], values[5], 1.0])
    accuracy: dict[int, list[np.ndarray]] = defaultdict(list)
    for (index, _task), s in sums.items():
        accuracy[index].append(s[:2] / s[2])
    weaker = {}
    for index, per_task in accuracy.items():
        first, second = np.mean(per_task, axis=0)
        if first != second:
            weaker[index] = 0 if first < second else 1
    return weaker
