"""How long a job takes on a 2-core CPU: an upper-bound estimate for the CPU presets.

Only SmolLM2-135M (the builtin model every CPU preset uses) has measured figures; other models get
None, as no honest number can be given without running them. The figures come from the results
snapshot's runs (results/parts, a 2-core Xeon, float32, batch 50) and a classification-only run
(PIQA + WinoGrande, 400 rows); `tests/test_work_estimate.py` checks the estimate against three of
those measured jobs. Written by hand: no library estimates lm-eval workloads.

Model of a job: load + prune + evaluate + efficiency probe, where
* evaluate = classification rows x CLASSIFICATION_ROW_S
  + per generation task: batches x the sum over its decoding steps of DECODE_CONTEXT_S x context,
  every batch decoding its full `max_new_tokens` (as the measured runs did: some answer in each batch
  runs to the limit) from a context of TYPICAL_PROMPT_TOKENS (a batch is padded to its longest
  prompt). Attention over the growing context dominates a step at this size; the fitted fixed cost
  per step came out negative, so it is left at 0. Measured at batch 50: a smaller batch is counted
  as the same cost per step (an overestimate there);
* prune = the method's measured seconds, scaled by the calibration tokens it reads.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.config import JobConfig

__all__ = ["ESTIMATED_MODELS", "job_seconds", "preset_seconds", "stage_seconds"]

ESTIMATED_MODELS = frozenset({"builtin:smollm2-135m-instruct"})

LOAD_S = 3.0
CLASSIFICATION_ROW_S = 0.05
DECODE_CONTEXT_S = 0.001
TYPICAL_PROMPT_TOKENS = 300
EFFICIENCY_S = 60.0
"""The efficiency probe times the dense and the pruned model over >= 10 iterations each."""

PRUNE_S: dict[str, tuple[float, int]] = {
    # method -> (seconds, calibration tokens it was measured with)
    "magnitude": (4.0, 0),
    "wanda": (35.0, 32 * 512),
    "sparsegpt": (62.0, 32 * 512),
    "shortgpt": (5.0, 16 * 256),
}
"""Pruning SmolLM2 in the snapshot's runs (results/parts)."""
ALLOCATION_S: dict[str, float] = {"uniform": 0.0, "owl": 20.0}
"""Extra seconds of a non-uniform layer allocation (OWL: measured in the snapshot)."""
UNMEASURED_S = 900.0
"""A method or allocation with no measurement yet: assumed slow rather than fast."""


def _decode_seconds(steps: int) -> float:
    # sum over j = 1..steps of DECODE_CONTEXT_S x (prompt + j)
    return DECODE_CONTEXT_S * (steps * TYPICAL_PROMPT_TOKENS + steps * (steps + 1) / 2)


def _prune_seconds(config: JobConfig) -> float:
    method = config.pruning.method
    if method == "dense":
        return 0.0
    seconds, measured_tokens = PRUNE_S.get(method, (UNMEASURED_S, 0))
    if measured_tokens and config.calibration is not None:
        seconds *= config.calibration.num_samples * config.calibration.seq_len / measured_tokens
    allocation = (config.pruning.params or {}).get("allocation", "uniform")
    return seconds + ALLOCATION_S.get(allocation, UNMEASURED_S)


def job_seconds(config: JobConfig) -> float | None:
    """Estimated wall-clock seconds of `config` on a 2-core CPU, or None where there are no figures."""
    stages = stage_seconds(config)
    return None if stages is None else sum(stages.values())


def stage_seconds(config: JobConfig) -> dict[str, float] | None:
    """The estimate per pipeline stage (load, prune, evaluate, efficiency), or None where there are no
    figures: another model, a task without a row limit (its size is not known before its data is
    read) or a perplexity task."""
    from backend.evaluation import default_budget
    from backend.tasks import get_task

    if config.model not in ESTIMATED_MODELS:
        return None
    batch = config.evaluation.batch_size if isinstance(config.evaluation.batch_size, int) else 8
    seconds = 0.0
    for task in config.tasks:
        spec = get_task(task.name)
        rows = task.limit
        if rows is None or spec.output_type == "perplexity":
            return None
        if spec.output_type != "generate":
            seconds += rows * CLASSIFICATION_ROW_S
            continue
        steps = task.generation.max_new_tokens or default_budget(spec, config.paradigm, "cpu")
        batches = math.ceil(rows * task.generation.num_samples / batch)
        seconds += batches * _decode_seconds(steps)
    return {"load": LOAD_S, "prune": _prune_seconds(config), "evaluate": seconds, "efficiency": EFFICIENCY_S}


def preset_seconds(configs: list[JobConfig]) -> float | None:
    """The whole preset's estimate, or None when a config's model has no figures."""
    estimates = [job_seconds(c) for c in configs]
    return None if any(e is None for e in estimates) else float(sum(estimates))
