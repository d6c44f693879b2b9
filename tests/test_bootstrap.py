"""The findings' statistics on hand-made data (db.bootstrap): the cluster bootstrap over documents
against the per-appearance one, stratification by task, ratio statistics, and the decision rules."""
from __future__ import annotations

import math

import numpy as np
import pytest

from db.bootstrap import AboveThreshold, DiffersFromZero, Unit, cluster_bootstrap, pooled_difference, ratio


def units_of(diffs: list[float], copies: int, separate_documents: bool, task: str = "piqa") -> list[Unit]:
    """Each difference as (favoured, other) = (diff, 0), entered `copies` times (e.g. at three
    sparsities); with `separate_documents` every copy pretends to be its own document."""
    return [Unit(task, doc * copies + copy if separate_documents else doc, ("pooled",), (d, 0.0))
            for doc, d in enumerate(diffs) for copy in range(copies)]


def width(estimate) -> float:
    return estimate.high - estimate.low


def test_clustered_documents_give_a_wider_interval_than_one_unit_per_appearance():
    # 40 documents, each seen in 3 pairs with the same outcome: the 120 values carry the information of 40
    diffs = [1.0] * 15 + [0.0] * 20 + [-1.0] * 5
    clustered = cluster_bootstrap(units_of(diffs, 3, separate_documents=False), pooled_difference)
    naive = cluster_bootstrap(units_of(diffs, 3, separate_documents=True), pooled_difference)
    assert clustered.value == naive.value == pytest.approx(10 / 40)
    assert (clustered.n_documents, clustered.n_units) == (40, 120)
    assert (naive.n_documents, naive.n_units) == (120, 120)
    # sd of the differences 0.66: standard error 0.66 / sqrt(40) = 0.104 by document, / sqrt(120) = 0.060
    sd = float(np.std(diffs))
    assert width(clustered) == pytest.approx(2 * 1.96 * sd / math.sqrt(40), rel=0.15)
    assert width(naive) == pytest.approx(2 * 1.96 * sd / math.sqrt(120), rel=0.15)
    assert width(clustered) > 1.5 * width(naive)


def test_one_appearance_per_document_is_the_plain_paired_bootstrap():
    diffs = [1.0] * 30 + [0.0] * 10
    estimate = cluster_bootstrap(units_of(diffs, 1, separate_documents=False), pooled_difference)
    assert estimate.value == 0.75 and estimate.low < 0.75 < estimate.high
    assert width(estimate) == pytest.approx(2 * 1.96 * math.sqrt(0.75 * 0.25 / 40), rel=0.15)


def test_deterministic_and_constant_data_give_a_point_interval():
    units = units_of([1.0, 0.0] * 20, 1, separate_documents=False)
    assert cluster_bootstrap(units, pooled_difference) == cluster_bootstrap(units, pooled_difference)
    constant = cluster_bootstrap(units_of([1.0] * 40, 2, separate_documents=False), pooled_difference)
    assert (constant.value, constant.low, constant.high) == (1.0, 1.0, 1.0)


def test_no_units_is_undefined():
    estimate = cluster_bootstrap([], pooled_difference)
    assert all(math.isnan(v) for v in (estimate.value, estimate.low, estimate.high))
    assert (estimate.n_documents, estimate.n_units) == (0, 0)


def test_tasks_are_strata_resampled_with_their_own_documents():
    # a mean per task: every resample keeps both tasks, so the per-task mean of "always 1" stays 1
    units = [Unit("piqa", d, ("piqa",), (1.0, 0.0)) for d in range(30)]
    units += [Unit("gsm8k", d, ("gsm8k",), (float(d % 2), 0.0)) for d in range(30)]

    def piqa_mean(sums):
        return ratio(sums[("piqa",)][:, 0], sums[("piqa",)][:, -1])

    estimate = cluster_bootstrap(units, piqa_mean)
    assert (estimate.value, estimate.low, estimate.high) == (1.0, 1.0, 1.0)
    assert estimate.n_documents == 60  # doc 3 of piqa and doc 3 of gsm8k are different documents


def test_ratio_statistic_from_resampled_sums_and_undefined_replicates_left_out():
    # % retained = pruned / dense over the same documents: 9 / 10
    units = [Unit("piqa", d, ("cell",), (float(d < 9), float(d < 10))) for d in range(40)]
    estimate = cluster_bootstrap(units, lambda sums: ratio(sums[("cell",)][:, 0], sums[("cell",)][:, 1]))
    assert estimate.value == pytest.approx(0.9) and estimate.low < 0.9 < estimate.high <= 1.0
    assert np.isnan(ratio(np.array([1.0]), np.array([0.0]))[0])
    # dense right on one document only: resamples that miss it are undefined and left out
    sparse = [Unit("piqa", d, ("cell",), (float(d == 0), float(d == 0))) for d in range(40)]
    estimate = cluster_bootstrap(sparse, lambda sums: ratio(sums[("cell",)][:, 0], sums[("cell",)][:, 1]))
    assert (estimate.value, estimate.low, estimate.high) == (1.0, 1.0, 1.0)


def test_above_threshold_rule_boundaries():
    rule = AboveThreshold(0.0)
    assert rule.decide(0.0, 0.2)[0] == "inconclusive"  # touching the threshold is not "above"
    assert rule.decide(0.01, 0.2) == ("supported", "the 95 % CI [0.010, 0.200] lies above 0")
    assert rule.decide(-0.2, -0.01)[0] == "contradicted"
    margin = AboveThreshold(-0.02)
    assert margin.decide(-0.01, 0.05)[0] == "supported" and margin.decide(-0.05, -0.03)[0] == "contradicted"
    assert margin.decide(-0.03, 0.01)[0] == "inconclusive" and "-0.02" in margin.words()


def test_differs_from_zero_rule():
    rule = DiffersFromZero(0.05)
    assert rule.decide(0.01, 0.2)[0] == "supported" and rule.decide(-0.3, -0.1)[0] == "supported"
    assert rule.decide(-0.04, 0.05)[0] == "contradicted"
    assert rule.decide(-0.04, 0.06)[0] == "inconclusive"
    assert "excludes 0" in rule.words() and "+-0.05" in rule.words()
