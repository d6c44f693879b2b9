"""The seed studies' findings, each checked against the stored results by a rule stated in words.

Every verdict is computed, never written by hand:

1. Runs: the latest succeeded job per config hash, optionally of one model / paradigm
   (`db.findings_data.load_runs`).
2. Pairing: each finding pairs runs so that only what it is about differs. Runs of two method
   families (depth vs width, static vs dynamic, unstructured vs depth) pair at matched measured cost
   (`db.equal_cost`: parameters kept, FLOPs or measured latency; the finding's default, or the
   `pairing` asked for), falling back to equal nominal sparsity only where a run lacks the figure;
   the verdict counts the pairs of each kind. The other findings pair runs whose configs are the
   same except for the thing compared (calibration, allocation, paradigm, model), or a pruned run
   with the dense run of its model, paradigm, seed and evaluation settings.
3. Measure: per document, correctness (0/1), or for test-time scaling maj@k - pass@1. Findings that
   set effects on different baselines side by side (categories, paradigms, models, a share of the
   dense score) use % retained = pruned / dense, summed over the same documents per comparison and
   task, because accuracy near a floor (0, chance) or ceiling caps absolute drops and would hide the
   effect; cells whose dense sum is 0 are left out. Findings that compare two pruned runs of one
   model on the same documents use the absolute paired difference: they share the baseline, and
   retained would only rescale each task.
4. Interval: the 95 % percentile interval of a cluster bootstrap over documents (`db.bootstrap`).
5. Verdict: by the finding's decision rule (`db.bootstrap.AboveThreshold` / `DiffersFromZero`),
   and inconclusive whenever fewer than `MIN_PAIRED` documents (per category where two categories
   are contrasted) were compared.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from db.bootstrap import (
    BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, AboveThreshold, DiffersFromZero, Statistic, Unit, cluster_bootstrap,
    pooled_difference, ratio,
)
from db.equal_cost import MEASURES, NOMINAL, PAIRINGS, TOLERANCE, matched_by, relative_cost
from db.findings_data import (
    Comparison, Run, correctness, load_runs, paired_units, setting_key, task_category, tts_gain,
)

__all__ = ["Verdict", "Finding", "FINDINGS", "MIN_PAIRED", "AUTO", "PAIRING_CHOICES", "findings"]

MIN_PAIRED = 30
"""Fewer documents than this: inconclusive whatever the interval."""
AUTO = "auto"
PAIRING_CHOICES = (AUTO, *PAIRINGS)
"""`findings(pairing=...)`: each finding's own cost measure, one measure for all, or nominal sparsity."""
ALIGNED_SOURCES = ("task-aligned", "self-generated")
GENERIC_SOURCES = ("text",)
STATIC_FAMILIES = ("depth", "width", "unstructured")
LOW_SPARSITY = 0.3
"""Wanda runs at most this sparse count as low-sparsity."""
NON_INFERIORITY_MARGIN = 0.02
"""Wanda "matches" dense when it loses less than this much accuracy (absolute)."""
HOLDS_UP_RETAINED = 0.90
"""Dynamic pruning "holds up" when it keeps more than this share of the dense score."""
PARADIGM_MARGIN = 0.05
"""Differences in % retained between paradigms within +-this are negligible."""
ALLOCATIONS = ("owl", "layer-influence")
_ALLOCATION_FIELDS = ("pruning.params.allocation", "pruning.params.owl_m", "pruning.params.deviation")
_ANSWER_CATEGORIES = ("classification", "generation", "reasoning")


@dataclass
class Verdict:
    key: str
    statement: str
    verdict: str
    """"supported" | "contradicted" | "inconclusive"."""
    rule: str
    numbers: dict[str, Any]
    """estimate, ci_low, ci_high, n (documents), n_paired (paired values: document x comparison),
    runs ({role: [job ids]}), job_ids (all compared), pairing and pairs ({how: count}, cost-matched
    findings), and the finding's own figures (e.g. retained_reasoning)."""
    reason: str = ""
    """Why the verdict is what it is, in one sentence (e.g. too few documents), with the pairing used."""

    def as_dict(self) -> dict[str, Any]:
        """The CLI's JSON object: id, statement, verdict, n (documents), interval ([low, high] or null),
        estimate, rule, reason, pairing (the cost pairing used; null for findings that compare runs of
        one pruning config or a run with its dense run) and every number."""
        low, high = self.numbers.get("ci_low"), self.numbers.get("ci_high")
        return {"id": self.key, "statement": self.statement, "verdict": self.verdict, "n": self.numbers["n"],
                "interval": None if low is None or high is None else [low, high],
                "estimate": self.numbers.get("estimate"), "rule": self.rule, "reason": self.reason,
                "pairing": self.numbers.get("pairing"), "numbers": self.numbers}


@dataclass(frozen=True)
class Finding:
    key: str
    statement: str
    compares: str
    """Which runs, paired how ("{pairing}" stands for the cost pairing in use)."""
    measures: str
    """Which tasks, which per-document measure, which statistic."""
    decision: AboveThreshold | DiffersFromZero
    needs: str
    """What data the finding needs (said when nothing could be paired)."""
    cost_measure: str | None = None
    """Default measured cost for pairing two families (None: the paired runs have equal configs)."""

    def rule(self, measure: str | None) -> str:
        compares = self.compares.format(pairing=_pairing_words(measure) if measure else "")
        return (f"{compares}. {self.measures}. Decision: {self.decision.words()}; inconclusive with fewer than "
                f"{MIN_PAIRED} documents. {_RESAMPLING}")


_RESAMPLING = (f"Interval: 95 % percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) "
               "resampling documents (task, doc) within each task, all paired values of a drawn document "
               "moving together.")


def _pairing_words(measure: str) -> str:
    if measure == NOMINAL:
        return "paired by equal nominal sparsity (measured cost not used)"
    return (f"paired at matched measured cost: {MEASURES[measure]} within {TOLERANCE[measure]:g} of each other, "
            "by equal nominal sparsity only where a run lacks that figure")


FINDINGS: tuple[Finding, ...] = (
    Finding("depth-beats-width-classification", "Depth pruning beats width pruning on classification",
            "Depth-family vs width-family runs of the same model, paradigm, seed, calibration, recovery and "
            "evaluation settings, {pairing}",
            "Classification tasks; per document correctness; statistic: mean paired difference depth - width over "
            "the documents of every matched pair", AboveThreshold(0.0),
            "depth and width runs of one setting at matched cost", cost_measure="params"),
    Finding("width-beats-depth-reasoning", "Width pruning beats depth pruning on generation and reasoning",
            "Width-family vs depth-family runs of the same model, paradigm, seed, calibration, recovery and "
            "evaluation settings, {pairing}",
            "Generation and reasoning tasks; per document correctness; statistic: mean paired difference "
            "width - depth over the documents of every matched pair", AboveThreshold(0.0),
            "width and depth runs of one setting at matched cost", cost_measure="params"),
    Finding("dynamic-degrades-long-chains", "Dynamic pruning degrades long reasoning chains more than classification",
            "Dynamic-family runs, each paired with the dense run of the same model, paradigm, seed and evaluation "
            "settings (any sparsity and calibration)",
            "Classification and reasoning tasks; % retained = dynamic / dense correctness summed over the same "
            "documents, per run and task (retained, not absolute drops: reasoning sits near its floor of 0, "
            "classification near chance); statistic: mean retained on classification - mean retained on reasoning; "
            "each of the two categories needs the minimum of documents",
            AboveThreshold(0.0), "a dense and a dynamic run of one model scored on classification and reasoning"),
    Finding("aligned-calibration-helps", "Aligned calibration data helps",
            "Runs calibrated on task-aligned or self-generated data vs generic text, otherwise the same config "
            "(method, parameters, sparsity, model, paradigm, recovery, seed); every aligned run paired with every "
            "generic one",
            "Classification, generation and reasoning tasks; per document correctness; statistic: mean paired "
            "difference aligned - generic", AboveThreshold(0.0),
            "an aligned and a generic (text) calibrated run of one config"),
    Finding("unstructured-preserves-tts", "Unstructured pruning preserves test-time scaling better than layer removal",
            "Unstructured-family vs depth-family runs of the same model, paradigm, seed, calibration, recovery and "
            "evaluation settings, {pairing}",
            "Tasks evaluated with k > 1 samples per prompt; per document the test-time-scaling gain maj@k - pass@1; "
            "statistic: mean paired difference unstructured - depth", AboveThreshold(0.0),
            "unstructured and depth runs at matched cost on a task with k > 1 samples", cost_measure="params"),
    Finding("static-beats-dynamic-reasoning", "Static pruning beats dynamic pruning on reasoning",
            "Static runs (depth, width and unstructured families) vs dynamic-family runs of the same model, "
            "paradigm, seed, calibration, recovery and evaluation settings, {pairing} (latency by default: a "
            "dynamic method keeps every parameter and saves compute at run time)",
            "Reasoning tasks; per document correctness; statistic: mean paired difference static - dynamic",
            AboveThreshold(0.0), "static and dynamic runs of one setting at matched cost scored on reasoning",
            cost_measure="latency"),
    Finding("dynamic-holds-up-instruct", "Dynamic pruning holds up on classification and generation for instruct models",
            "Dynamic-family runs of the instruct paradigm, each paired with the dense run of the same model, "
            "paradigm, seed and evaluation settings",
            "Classification and generation tasks; % retained = dynamic / dense correctness summed over the same "
            "documents, per run and task; statistic: mean retained over those (run, task) cells; "
            f"holding up means keeping more than {HOLDS_UP_RETAINED:.0%} of the dense score",
            AboveThreshold(HOLDS_UP_RETAINED),
            "an instruct dense and dynamic run of one model scored on classification or generation"),
    Finding("pruning-effect-depends-on-paradigm", "The effect of pruning depends on the paradigm (instruct vs think)",
            "Runs of one configuration (model, method, parameters, sparsity, calibration, recovery, seed) in both "
            "paradigms, each paired with the dense run of its paradigm; documents matched by task and doc id "
            "across the paradigms",
            "Classification, generation and reasoning tasks; % retained = pruned / dense per paradigm, run pair and "
            "task (retained: the paradigms' dense scores differ); statistic: mean over (run pair, task) of "
            f"retained in think - retained in instruct; differences within +-{PARADIGM_MARGIN:g} are negligible",
            DiffersFromZero(PARADIGM_MARGIN), "one config run in both paradigms, with a dense run in each"),
    Finding("low-sparsity-wanda-matches-dense", "Low-sparsity Wanda can match or beat dense on reasoning",
            f"Wanda runs with sparsity <= {LOW_SPARSITY:g}, each paired with the dense run of the same model, "
            "paradigm, seed and evaluation settings",
            "Reasoning tasks; per document correctness; statistic: mean paired difference wanda - dense (absolute: "
            f"both share the dense baseline); non-inferiority margin {NON_INFERIORITY_MARGIN:g}",
            AboveThreshold(-NON_INFERIORITY_MARGIN),
            f"a Wanda run at sparsity <= {LOW_SPARSITY:g} and its dense run scored on reasoning"),
    Finding("allocation-helps-weaker-model",
            "Per-layer allocation (OWL, layer-influence) helps the weaker model more than the stronger",
            "Unstructured runs with a per-layer allocation (OWL or layer-influence) vs the same config with uniform "
            "allocation, on two models of one paradigm (same method, sparsity, allocation settings, calibration, "
            "recovery, seed), each with its model's dense run; the weaker model is the one whose dense run has "
            "the lower mean of per-task accuracies on the compared documents",
            "Classification, generation and reasoning tasks; gain = % retained with allocation - % retained "
            "uniform (pruned / dense per model, run pair and task); statistic: mean over (model pair, run pair, "
            "task) of the weaker model's gain - the stronger model's gain", AboveThreshold(0.0),
            "allocated and uniform runs of one config on two models of one paradigm, each with a dense run"),
)


# --- the computation ---------------------------------------------------------------------------------


def findings(session: Session, model: str | None = None, paradigm: str | None = None,
             pairing: str = AUTO) -> list[Verdict]:
    """One verdict per finding (`FINDINGS`, in order) from the stored results. `pairing`: AUTO (each
    finding's cost measure), a `db.equal_cost` measure for every cross-family finding, or "sparsity"."""
    if pairing not in PAIRING_CHOICES:
        raise ValueError(f"pairing must be one of {', '.join(PAIRING_CHOICES)}, got {pairing!r}")
    runs = _Runs(load_runs(session, model, paradigm))
    verdicts = []
    for finding in FINDINGS:
        measure = finding.cost_measure
        if measure is not None and pairing != AUTO:
            measure = pairing
        verdicts.append(_verdict(finding, _COMPUTE[finding.key](runs, measure), measure))
    return verdicts


class _Runs:
    """The loaded runs with the lookups every finding needs."""

    def __init__(self, runs: list[Run]):
        self.all = runs
        self.dense: dict[str, list[Run]] = defaultdict(list)
        self._costs: dict[tuple[int, str], float | None] = {}
        for run in runs:
            if run.family == "dense":
                self.dense[_base_key(run)].append(run)

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
            groups[setting_key(run, "pruning", "tasks")][0].append(run)
        for run in other:
            groups[setting_key(run, "pruning", "tasks")][1].append(run)
        pairs = []
        for key in sorted(groups):
            for f in groups[key][0]:
                for o in groups[key][1]:
                    how = matched_by(measure, self.cost(f, measure), self.cost(o, measure), f.sparsity, o.sparsity)
                    if how is not None:
                        pairs.append((f, o, how))
        return pairs


def _base_key(run: Run) -> str:
    """Runs of one model, paradigm, seed and evaluation settings (any pruning, calibration, recovery)."""
    return setting_key(run, "pruning", "calibration", "recovery", "tasks")


@dataclass
class _Outcome:
    """What a finding compared: its units and statistic, and what to report with them."""

    units: list[Unit]
    statistic: Statistic
    runs: dict[str, set[int]]
    pairs: Counter = field(default_factory=Counter)
    """How many compared pairs were matched by each pairing (cost-matched findings only)."""
    rule_documents: dict[str, int] | None = None
    """Document counts the minimum applies to, by name (default: all documents)."""
    extra: dict[str, Any] = field(default_factory=dict)


def _verdict(finding: Finding, outcome: _Outcome, measure: str | None) -> Verdict:
    estimate = cluster_bootstrap(outcome.units, outcome.statistic)
    counts = outcome.rule_documents or {"": estimate.n_documents}
    short = {name: n for name, n in counts.items() if n < MIN_PAIRED}
    if not outcome.units:
        verdict, reason = "inconclusive", f"no paired documents: needs {finding.needs}"
    elif short:
        verdict, reason = "inconclusive", "only " + ", ".join(
            f"{n} {name + ' ' if name else ''}documents" for name, n in short.items()) + f" (fewer than {MIN_PAIRED})"
    elif not (math.isfinite(estimate.low) and math.isfinite(estimate.high)):
        verdict, reason = "inconclusive", "the statistic is undefined on every resample"
    else:
        verdict, reason = finding.decision.decide(estimate.low, estimate.high)
    pairing = _pairing_summary(measure, outcome.pairs)
    if pairing is not None:
        reason = f"{reason}; {pairing}"
    runs = {label: sorted(ids) for label, ids in outcome.runs.items()}
    numbers = {
        "estimate": _finite(estimate.value), "ci_low": _finite(estimate.low), "ci_high": _finite(estimate.high),
        "n": estimate.n_documents, "n_paired": estimate.n_units, "runs": runs,
        "job_ids": sorted({i for ids in runs.values() for i in ids}), "pairing": pairing, **outcome.extra,
    }
    if measure is not None:
        numbers["pairs"] = dict(outcome.pairs)
    return Verdict(finding.key, finding.statement, verdict, finding.rule(measure), numbers, reason)


def _pairing_summary(measure: str | None, pairs: Counter) -> str | None:
    """Which pairing was used, for findings that pair two families by cost (None for the others)."""
    if measure is None:
        return None
    if measure == NOMINAL:
        return f"{pairs[NOMINAL]} pair(s) by nominal sparsity"
    return (f"{pairs[measure]} pair(s) at matched {measure}, {pairs[NOMINAL]} by nominal sparsity "
            f"(the {measure} figure missing)")


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _categories(*names: str) -> Callable[[Run, str], bool]:
    return lambda _run, task: task_category(task) in names


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


def _cost_matched(runs: _Runs, measure: str, favoured: list[Run], other: list[Run], labels: tuple[str, str],
                  task_ok: Callable[[Run, str], bool], value=correctness) -> _Outcome:
    pairs = runs.cost_pairs(favoured, other, measure)
    comparisons = [((f, o),) for f, o, _ in pairs]
    units, used = paired_units(comparisons, task_ok, value)
    return _Outcome(units, pooled_difference, _labelled(comparisons, used, labels),
                    pairs=Counter(pairs[i][2] for i in used))


def _depth_beats_width(runs: _Runs, measure: str) -> _Outcome:
    return _cost_matched(runs, measure, runs.of("depth"), runs.of("width"), ("depth", "width"),
                         _categories("classification"))


def _width_beats_depth(runs: _Runs, measure: str) -> _Outcome:
    return _cost_matched(runs, measure, runs.of("width"), runs.of("depth"), ("width", "depth"),
                         _categories("generation", "reasoning"))


def _unstructured_tts(runs: _Runs, measure: str) -> _Outcome:
    return _cost_matched(runs, measure, runs.of("unstructured"), runs.of("depth"), ("unstructured", "depth"),
                         lambda run, task: run.num_samples.get(task, 1) > 1, tts_gain)


def _static_beats_dynamic(runs: _Runs, measure: str) -> _Outcome:
    return _cost_matched(runs, measure, runs.of(*STATIC_FAMILIES), runs.of("dynamic"), ("static", "dynamic"),
                         _categories("reasoning"))


def _aligned_calibration(runs: _Runs, _measure: None) -> _Outcome:
    groups: dict[str, tuple[list[Run], list[Run]]] = defaultdict(lambda: ([], []))
    for run in runs.pruned():
        source = (run.config.get("calibration") or {}).get("source")
        if source in ALIGNED_SOURCES or source in GENERIC_SOURCES:
            groups[setting_key(run, "calibration", "tasks")][source in GENERIC_SOURCES].append(run)
    comparisons = [((a, g),) for key in sorted(groups) for a in groups[key][0] for g in groups[key][1]]
    units, used = paired_units(comparisons, _categories(*_ANSWER_CATEGORIES), correctness)
    return _Outcome(units, pooled_difference, _labelled(comparisons, used, ("aligned", "generic")))


def _low_sparsity_wanda(runs: _Runs, _measure: None) -> _Outcome:
    wanda = [r for r in runs.all if r.method == "wanda" and r.sparsity <= LOW_SPARSITY + 1e-9]
    comparisons = runs.with_dense(wanda)
    units, used = paired_units(comparisons, _categories("reasoning"), correctness)
    return _Outcome(units, pooled_difference, _labelled(comparisons, used, ("wanda", "dense")))


def _dynamic_degrades(runs: _Runs, _measure: None) -> _Outcome:
    comparisons = runs.with_dense(runs.of("dynamic"))
    units, used = paired_units(comparisons, _categories("classification", "reasoning"), correctness)
    units = _defined(units, dense_columns=(1,))
    used = {u.cell[0] for u in units}

    def in_category(sums: Mapping[Hashable, np.ndarray], category: str) -> np.ndarray:
        return _mean_of([_retained(s) for cell, s in sums.items() if task_category(cell[1]) == category])

    def statistic(sums):
        return in_category(sums, "classification") - in_category(sums, "reasoning")

    counts = {c: _documents(units, lambda u, c=c: task_category(u.task) == c) for c in ("reasoning", "classification")}
    outcome = _Outcome(units if all(counts.values()) else [], statistic,
                       _labelled(comparisons, used, ("dynamic", "dense")), rule_documents=counts)
    outcome.extra = {f"n_{c}": n for c, n in counts.items()}
    if outcome.units:
        for category in ("reasoning", "classification"):
            outcome.extra[f"retained_{category}"] = _finite(cluster_bootstrap(
                units, lambda sums, c=category: in_category(sums, c), n_resamples=0).value)
    return outcome


def _dynamic_holds_up(runs: _Runs, _measure: None) -> _Outcome:
    comparisons = runs.with_dense([r for r in runs.of("dynamic") if r.paradigm == "instruct"])
    units, used = paired_units(comparisons, _categories("classification", "generation"), correctness)
    units = _defined(units, dense_columns=(1,))
    used = {u.cell[0] for u in units}
    return _Outcome(units, lambda sums: _mean_of([_retained(s) for s in sums.values()]),
                    _labelled(comparisons, used, ("dynamic", "dense")))


def _paradigm_dependence(runs: _Runs, _measure: None) -> _Outcome:
    groups: dict[str, dict[str, list[Run]]] = defaultdict(lambda: {"instruct": [], "think": []})
    for run in runs.pruned():
        if run.paradigm in ("instruct", "think"):
            groups[setting_key(run, "paradigm", "model_args", "tasks")][run.paradigm].append(run)
    comparisons = [((i, di), (t, dt)) for key in sorted(groups) for i in groups[key]["instruct"]
                   for t in groups[key]["think"] for di in runs.dense_for(i) for dt in runs.dense_for(t)]
    units, used = paired_units(comparisons, _categories(*_ANSWER_CATEGORIES), correctness)
    units = _defined(units, dense_columns=(1, 3))
    used = {u.cell[0] for u in units}

    def retained_in(sums, paradigm: str) -> np.ndarray:
        pruned = 0 if paradigm == "instruct" else 2
        return _mean_of([_retained(s, pruned, pruned + 1) for s in sums.values()])

    outcome = _Outcome(units, lambda sums: retained_in(sums, "think") - retained_in(sums, "instruct"),
                       _labelled(comparisons, used, ("instruct", "dense", "think", "dense")))
    if units:
        for paradigm in ("instruct", "think"):
            outcome.extra[f"retained_{paradigm}"] = _finite(cluster_bootstrap(
                units, lambda sums, p=paradigm: retained_in(sums, p), n_resamples=0).value)
    return outcome


def _allocation_weaker(runs: _Runs, _measure: None) -> _Outcome:
    comparisons = _allocation_comparisons(runs)
    units, _ = paired_units(comparisons, _categories(*_ANSWER_CATEGORIES), correctness)
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
    outcome = _Outcome(units, lambda sums: gains(sums, True) - gains(sums, False), dict(runs_by_label))
    outcome.extra["models"] = [{"weaker": w, "stronger": s} for w, s in sorted(pairs)]
    if units:
        for side in ("weaker", "stronger"):
            outcome.extra[f"gain_{side}"] = _finite(cluster_bootstrap(
                units, lambda sums, w=side == "weaker": gains(sums, w), n_resamples=0).value)
    return outcome


def _allocation_comparisons(runs: _Runs) -> list[Comparison]:
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


_COMPUTE: dict[str, Callable[[_Runs, Any], _Outcome]] = {
    "depth-beats-width-classification": _depth_beats_width,
    "width-beats-depth-reasoning": _width_beats_depth,
    "dynamic-degrades-long-chains": _dynamic_degrades,
    "aligned-calibration-helps": _aligned_calibration,
    "unstructured-preserves-tts": _unstructured_tts,
    "static-beats-dynamic-reasoning": _static_beats_dynamic,
    "dynamic-holds-up-instruct": _dynamic_holds_up,
    "pruning-effect-depends-on-paradigm": _paradigm_dependence,
    "low-sparsity-wanda-matches-dense": _low_sparsity_wanda,
    "allocation-helps-weaker-model": _allocation_weaker,
}
