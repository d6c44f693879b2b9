"""The seed studies' findings, each checked against the stored results by a rule stated in words.

Every verdict is computed, never written by hand:

1. Runs: the latest succeeded job per config hash, optionally of one model / paradigm
   (`db.findings_data.load_runs`).
2. Pairing (`db.findings_compare`): each finding pairs runs so that only what it is about differs.
   Runs of two method families (depth vs width, static vs dynamic, unstructured vs depth) pair at
   matched measured cost
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from db import findings_compare as compare
from db.bootstrap import (
    BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, AboveThreshold, DiffersFromZero, cluster_bootstrap, finite,
)
from db.equal_cost import MEASURES, NOMINAL, PAIRINGS, TOLERANCE
from db.findings_compare import LOW_SPARSITY, Outcome, RunSet
from db.findings_data import load_runs

__all__ = ["Verdict", "Finding", "FINDINGS", "MIN_PAIRED", "AUTO", "PAIRING_CHOICES", "findings"]

MIN_PAIRED = 30
"""Fewer documents than this: inconclusive whatever the interval."""
AUTO = "auto"
PAIRING_CHOICES = (AUTO, *PAIRINGS)
"""`findings(pairing=...)`: each finding's own cost measure, one measure for all, or nominal sparsity."""
NON_INFERIORITY_MARGIN = 0.02
"""Wanda "matches" dense when it loses less than this much accuracy (absolute)."""
HOLDS_UP_RETAINED = 0.90
"""Dynamic pruning "holds up" when it keeps more than this share of the dense score."""
PARADIGM_MARGIN = 0.05
"""Differences in % retained between paradigms within +-this are negligible."""


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
    compare: Callable[[RunSet, str | None], Outcome]
    """`db.findings_compare`'s function that pairs the runs and defines the statistic."""
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
            "Depth-family vs width-family runs of the same model, paradigm, seed, calibration source, recovery and "
            "evaluation settings, {pairing}",
            "Classification tasks; per document correctness; statistic: mean paired difference depth - width over "
            "the documents of every matched pair", AboveThreshold(0.0),
            "depth and width runs of one setting at matched cost",
            compare=compare.depth_beats_width, cost_measure="params"),
    Finding("width-beats-depth-reasoning", "Width pruning beats depth pruning on generation and reasoning",
            "Width-family vs depth-family runs of the same model, paradigm, seed, calibration source, recovery and "
            "evaluation settings, {pairing}",
            "Generation and reasoning tasks; per document correctness; statistic: mean paired difference "
            "width - depth over the documents of every matched pair", AboveThreshold(0.0),
            "width and depth runs of one setting at matched cost",
            compare=compare.width_beats_depth, cost_measure="params"),
    Finding("dynamic-degrades-long-chains", "Dynamic pruning degrades long reasoning chains more than classification",
            "Dynamic-family runs, each paired with the dense run of the same model, paradigm, seed and evaluation "
            "settings (any sparsity and calibration)",
            "Classification and reasoning tasks; % retained = dynamic / dense correctness summed over the same "
            "documents, per run and task (retained, not absolute drops: reasoning sits near its floor of 0, "
            "classification near chance); statistic: mean retained on classification - mean retained on reasoning; "
            "each of the two categories needs the minimum of documents",
            AboveThreshold(0.0), "a dense and a dynamic run of one model scored on classification and reasoning",
            compare=compare.dynamic_degrades),
    Finding("aligned-calibration-helps", "Aligned calibration data helps",
            "Runs calibrated on task-aligned or self-generated data vs generic text, otherwise the same config "
            "(method, parameters, sparsity, model, paradigm, recovery, seed); every aligned run paired with every "
            "generic one",
            "Classification, generation and reasoning tasks; per document correctness; statistic: mean paired "
            "difference aligned - generic", AboveThreshold(0.0),
            "an aligned and a generic (text) calibrated run of one config", compare=compare.aligned_calibration),
    Finding("unstructured-preserves-tts", "Unstructured pruning preserves test-time scaling better than layer removal",
            "Unstructured-family vs depth-family runs of the same model, paradigm, seed, calibration source, recovery and "
            "evaluation settings, {pairing}",
            "Tasks evaluated with k > 1 samples per prompt; per document the test-time-scaling gain maj@k - pass@1; "
            "statistic: mean paired difference unstructured - depth", AboveThreshold(0.0),
            "unstructured and depth runs at matched cost on a task with k > 1 samples",
            compare=compare.unstructured_tts, cost_measure="params"),
    Finding("static-beats-dynamic-reasoning", "Static pruning beats dynamic pruning on reasoning",
            "Static runs (depth, width and unstructured families) vs dynamic-family runs of the same model, "
            "paradigm, seed, calibration source, recovery and evaluation settings, {pairing} (latency by default: a "
            "dynamic method keeps every parameter and saves compute at run time)",
            "Reasoning tasks; per document correctness; statistic: mean paired difference static - dynamic",
            AboveThreshold(0.0), "static and dynamic runs of one setting at matched cost scored on reasoning",
            compare=compare.static_beats_dynamic, cost_measure="latency"),
    Finding("dynamic-holds-up-instruct",
            "Dynamic pruning holds up on classification and generation for instruct models",
            "Dynamic-family runs of the instruct paradigm, each paired with the dense run of the same model, "
            "paradigm, seed and evaluation settings",
            "Classification and generation tasks; % retained = dynamic / dense correctness summed over the same "
            "documents, per run and task; statistic: mean retained over those (run, task) cells; "
            f"holding up means keeping more than {HOLDS_UP_RETAINED:.0%} of the dense score",
            AboveThreshold(HOLDS_UP_RETAINED),
            "an instruct dense and dynamic run of one model scored on classification or generation",
            compare=compare.dynamic_holds_up),
    Finding("pruning-effect-depends-on-paradigm", "The effect of pruning depends on the paradigm (instruct vs think)",
            "Runs of one configuration (model, method, parameters, sparsity, calibration, recovery, seed) in both "
            "paradigms, each paired with the dense run of its paradigm; documents matched by task and doc id "
            "across the paradigms",
            "Classification, generation and reasoning tasks; % retained = pruned / dense per paradigm, run pair and "
            "task (retained: the paradigms' dense scores differ); statistic: mean over (run pair, task) of "
            f"retained in think - retained in instruct; differences within +-{PARADIGM_MARGIN:g} are negligible",
            DiffersFromZero(PARADIGM_MARGIN), "one config run in both paradigms, with a dense run in each",
            compare=compare.paradigm_dependence),
    Finding("low-sparsity-wanda-matches-dense", "Low-sparsity Wanda can match or beat dense on reasoning",
            f"Wanda runs with sparsity <= {LOW_SPARSITY:g}, each paired with the dense run of the same model, "
            "paradigm, seed and evaluation settings",
            "Reasoning tasks; per document correctness; statistic: mean paired difference wanda - dense (absolute: "
            f"both share the dense baseline); non-inferiority margin {NON_INFERIORITY_MARGIN:g}",
            AboveThreshold(-NON_INFERIORITY_MARGIN),
            f"a Wanda run at sparsity <= {LOW_SPARSITY:g} and its dense run scored on reasoning",
            compare=compare.low_sparsity_wanda),
    Finding("allocation-helps-weaker-model",
            "Per-layer allocation (OWL, reconstruction-sensitivity) helps the weaker model more than the stronger",
            "Unstructured runs with a per-layer allocation (OWL or reconstruction-sensitivity) vs the same config with uniform "
            "allocation, on two models of one paradigm (same method, sparsity, allocation settings, calibration, "
            "recovery, seed), each with its model's dense run; the weaker model is the one whose dense run has "
            "the lower mean of per-task accuracies on the compared documents",
            "Classification, generation and reasoning tasks; gain = % retained with allocation - % retained "
            "uniform (pruned / dense per model, run pair and task); statistic: mean over (model pair, run pair, "
            "task) of the weaker model's gain - the stronger model's gain", AboveThreshold(0.0),
            "allocated and uniform runs of one config on two models of one paradigm, each with a dense run",
            compare=compare.allocation_weaker),
)


# --- the computation ---------------------------------------------------------------------------------


def findings(session: Session, model: str | None = None, paradigm: str | None = None,
             pairing: str = AUTO) -> list[Verdict]:
    """One verdict per finding (`FINDINGS`, in order) from the stored results. `pairing`: AUTO (each
    finding's cost measure), a `db.equal_cost` measure for every cross-family finding, or "sparsity"."""
    if pairing not in PAIRING_CHOICES:
        raise ValueError(f"pairing must be one of {', '.join(PAIRING_CHOICES)}, got {pairing!r}")
    runs = RunSet(load_runs(session, model, paradigm))
    verdicts = []
    for finding in FINDINGS:
        measure = finding.cost_measure
        if measure is not None and pairing != AUTO:
            measure = pairing
        verdicts.append(_verdict(finding, finding.compare(runs, measure), measure))
    return verdicts


def _verdict(finding: Finding, outcome: Outcome, measure: str | None) -> Verdict:
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
    if pairing is not None and outcome.units:
        reason = f"{reason}; {pairing}"
    runs = {label: sorted(ids) for label, ids in outcome.runs.items()}
    numbers = {
        "estimate": finite(estimate.value), "ci_low": finite(estimate.low), "ci_high": finite(estimate.high),
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
    return (f"{pairs[measure]} pair(s) at matched {measure}, {pairs[NOMINAL]} by nominal sparsity where the "
            f"{measure} figure was missing")
