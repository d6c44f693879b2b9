"""The statistics behind the findings: a cluster bootstrap over documents and the decision rules.

Why resample documents: one document (a task's row) is usually scored by many runs and enters a
finding many times: once per matched pair of runs, per sparsity, per paradigm. Those values are not
independent (a hard question is hard for every run), so treating each appearance as its own unit
makes the interval too narrow. `cluster_bootstrap` therefore resamples documents, the cluster being
(task, doc_id): within each task (a stratum: tasks are fixed by the study design, their documents
are the sample) it draws as many documents as the task has, with replacement, and every paired value
of a drawn document comes along, as often as the document was drawn.

A statistic sees, per cell (whatever the finding groups by: one pooled cell, or a (comparison, task)
cell for % retained), the column sums of its units' values over the resampled documents plus the
number of units, so ratio statistics (means, % retained = pruned / dense) are computed from sums of
the resample, never from a mean of ratios per document.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from db.compare import BOOTSTRAP_RESAMPLES

__all__ = [
    "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "CONFIDENCE", "Unit", "Estimate", "Statistic", "cluster_bootstrap",
    "pooled_difference", "ratio", "finite", "AboveThreshold", "DiffersFromZero",
]

BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
_CHUNK_CELLS = 2_000_000
"""Resample weights held at once (replicates x documents of a task): bounded memory on large tasks."""


class Unit(NamedTuple):
    """One paired observation: the document it belongs to (the resampling cluster), the cell it is
    summed into and its values (one per run role, in the finding's order)."""

    task: str
    doc_id: int
    cell: Hashable
    values: tuple[float, ...]


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    """The 2.5th and 97.5th percentiles of the statistic over the resamples (NaN: none defined)."""
    n_documents: int
    n_units: int


Statistic = Callable[[Mapping[Hashable, np.ndarray]], np.ndarray]
"""cell -> array (replicates, values + 1) of column sums, the last column the unit count -> (replicates,)."""


def cluster_bootstrap(units: Sequence[Unit], statistic: Statistic, n_resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> Estimate:
    """The statistic on all units and its percentile interval over `n_resamples` document resamples
    (stratified by task, see the module docstring). Replicates where the statistic is undefined
    (NaN, e.g. a ratio whose resampled denominator is 0) are left out of the percentiles."""
    if not units:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    tables = _DocumentTables(units)
    tasks = sorted(tables.documents)
    observed = float(statistic(tables.sums({t: np.ones((1, len(tables.documents[t]))) for t in tasks}))[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(len(d) for d in tables.documents.values()))
    replicates = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        weights = {t: _resample_counts(rng, len(tables.documents[t]), size) for t in tasks}
        replicates.append(statistic(tables.sums(weights)))
    values = np.concatenate(replicates) if replicates else np.empty(0)
    values = values[np.isfinite(values)]
    if values.size == 0:
        low = high = math.nan
    else:
        tail = (1 - CONFIDENCE) / 2 * 100
        low, high = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
    return Estimate(observed, low, high, sum(len(d) for d in tables.documents.values()), len(units))


class _DocumentTables:
    """Per task, a (documents x cells * (values + 1)) matrix of each document's unit sums and counts,
    so the sums of every cell over a resample are one matrix product per task."""

    def __init__(self, units: Sequence[Unit]):
        self.documents: dict[str, dict[int, int]] = {}
        self.cells: dict[str, dict[Hashable, int]] = {}
        for unit in units:
            documents = self.documents.setdefault(unit.task, {})
            documents.setdefault(unit.doc_id, len(documents))
            cells = self.cells.setdefault(unit.task, {})
            cells.setdefault(unit.cell, len(cells))
        self.width = len(units[0].values) + 1
        rows: dict[str, list[int]] = defaultdict(list)
        columns: dict[str, list[int]] = defaultdict(list)
        values: dict[str, list[tuple[float, ...]]] = defaultdict(list)
        for unit in units:
            rows[unit.task].append(self.documents[unit.task][unit.doc_id])
            columns[unit.task].append(self.cells[unit.task][unit.cell] * self.width)
            values[unit.task].append((*unit.values, 1.0))
        self.tables: dict[str, np.ndarray] = {}
        for task in self.documents:
            table = np.zeros((len(self.documents[task]), len(self.cells[task]) * self.width))
            offsets = np.arange(self.width)
            np.add.at(table, (np.asarray(rows[task])[:, None], np.asarray(columns[task])[:, None] + offsets),
                      np.asarray(values[task], dtype=float))
            self.tables[task] = table

    def sums(self, weights: Mapping[str, np.ndarray]) -> dict[Hashable, np.ndarray]:
        """cell -> (replicates, values + 1) sums, given per task (replicates, documents) draw counts."""
        by_cell: dict[Hashable, np.ndarray] = {}
        for task, table in self.tables.items():
            product = (weights[task] @ table).reshape(len(weights[task]), -1, self.width)
            for cell, index in self.cells[task].items():
                part = product[:, index]
                by_cell[cell] = by_cell[cell] + part if cell in by_cell else part
        return by_cell


def _resample_counts(rng: np.random.Generator, n: int, replicates: int) -> np.ndarray:
    """(replicates, n): how often each of n documents is drawn in n draws with replacement."""
    draws = rng.integers(0, n, size=(replicates, n))
    offsets = (np.arange(replicates) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=replicates * n).reshape(replicates, n).astype(float)


# --- statistics -------------------------------------------------------------------------------------


def pooled_difference(sums: Mapping[Hashable, np.ndarray]) -> np.ndarray:
    """Mean of (first value - second value) over every unit of every cell."""
    total = sum(sums.values())
    return ratio(total[:, 0] - total[:, 1], total[:, -1])


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (an undefined mean or % retained)."""
    out = np.full(np.shape(numerator), math.nan)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) != 0)
    return out


def finite(value: float | None) -> float | None:
    """A number for reports (JSON): None instead of NaN or infinity."""
    return None if value is None or not math.isfinite(value) else float(value)


# --- decision rules ---------------------------------------------------------------------------------


def _interval(low: float, high: float) -> str:
    return f"the 95 % CI [{low:.3f}, {high:.3f}]"


@dataclass(frozen=True)
class AboveThreshold:
    """Supported when the whole interval lies above `threshold`, contradicted when it lies below it,
    inconclusive when it contains it (touching counts as containing)."""

    threshold: float = 0.0

    def decide(self, low: float, high: float) -> tuple[str, str]:
        if low > self.threshold:
            return "supported", f"{_interval(low, high)} lies above {self.threshold:g}"
        if high < self.threshold:
            return "contradicted", f"{_interval(low, high)} lies below {self.threshold:g}"
        return "inconclusive", f"{_interval(low, high)} contains {self.threshold:g}"

    def words(self) -> str:
        return (f"supported when the 95 % interval lies entirely above {self.threshold:g}, contradicted when "
                f"it lies entirely below {self.threshold:g}, otherwise inconclusive")


@dataclass(frozen=True)
class DiffersFromZero:
    """A two-sided claim ("depends on"): supported when the interval excludes 0 (either sign);
    contradicted when it lies within +-`margin` (equivalence: any difference is negligible);
    inconclusive otherwise."""

    margin: float

    def decide(self, low: float, high: float) -> tuple[str, str]:
        if low > 0 or high < 0:
            return "supported", f"{_interval(low, high)} excludes 0"
        if -self.margin <= low and high <= self.margin:
            return "contradicted", f"{_interval(low, high)} lies within +-{self.margin:g}"
        return "inconclusive", f"{_interval(low, high)} contains 0 but reaches beyond +-{self.margin:g}"

    def words(self) -> str:
        return (f"supported when the 95 % interval excludes 0 (either sign), contradicted when it lies within "
                f"+-{self.margin:g} (the difference is negligible), otherwise inconclusive")
