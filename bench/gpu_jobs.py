"""The configs the CUDA checks run: every registered pruning method on the tiny models, small enough
for minutes on one GPU (`bench/gpu_check.py` runs them as jobs, `tests/test_gpu.py` as tests).

Each config prunes builtin:tiny-llama (8 layers) at sparsity 0.25 (0 for dense: 2 of 8 layers for
depth methods) with 8 x 64 synthetic calibration tokens, and evaluates synthetic-mc (40 rows,
log-likelihood) and synthetic-arith (4 rows, 16 new tokens, generated); routers train 3 steps.
"""
from __future__ import annotations

from typing import Any

__all__ = ["CALIBRATION", "EXTRA_JOBS", "method_config", "check_jobs"]

CALIBRATION = {"source": "synthetic", "num_samples": 8, "seq_len": 64, "seed": 0}
TASKS = [{"name": "synthetic-mc", "limit": 40},
         {"name": "synthetic-arith", "limit": 4, "generation": {"max_new_tokens": 16}}]
SPARSITY = 0.25
ROUTER_PARAMS = {"steps": 3}
"""Dynamic methods train their routers; 3 steps are enough to exercise it."""
EXTRA_JOBS: dict[str, dict[str, Any]] = {
    "wanda-2:4": {"pruning": {"method": "wanda", "sparsity": 0.5, "params": {"pattern": "2:4"}}},
    "wanda-lora": {"pruning": {"method": "wanda", "sparsity": 0.5},
                   "recovery": {"data": "synthetic", "steps": 2, "num_samples": 4, "seq_len": 64}},
    "tiny-qwen3-think": {"model": "builtin:tiny-qwen3", "paradigm": "think",
                         "pruning": {"method": "wanda", "sparsity": 0.5}},
}
"""Jobs beyond one per method: an N:M pattern, LoRA recovery, and the other tiny model thinking."""


def method_config(method: str, **overrides: Any) -> dict[str, Any]:
    """The check's config document for `method` (overrides replace top-level fields)."""
    from backend.pruning import get_method

    cls = get_method(method)
    pruning: dict[str, Any] = {"method": method, "sparsity": 0.0 if cls.family == "dense" else SPARSITY}
    if cls.family == "dynamic":
        pruning["params"] = dict(ROUTER_PARAMS)
    document: dict[str, Any] = {"model": "builtin:tiny-llama", "paradigm": "instruct", "pruning": pruning,
                                "tasks": [dict(t) for t in TASKS], "seed": 0}
    if cls.needs_calibration:
        document["calibration"] = dict(CALIBRATION)
    return {**document, **overrides}


def check_jobs() -> dict[str, dict[str, Any]]:
    """name -> config document: every registered method, then `EXTRA_JOBS`."""
    from backend.pruning import list_methods

    jobs = {cls.name: method_config(cls.name) for cls in sorted(list_methods(), key=lambda c: c.name)}
    for name, overrides in EXTRA_JOBS.items():
        method = overrides["pruning"]["method"]
        jobs[name] = method_config(method, **overrides)
    return jobs
