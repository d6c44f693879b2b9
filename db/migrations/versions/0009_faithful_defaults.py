"""faithful method defaults: stored configs keep their meaning

Defaults version 2 (`backend.defaults.CHANGES`) makes the papers' and official code's behaviour the
default of several methods and gives calibrated runs without a calibration section the study's
WikiText-2 text. Configs are stored without their defaults, so every stored config that relied on an
old default gets the old value written into jobs.config_json (canonical JSON: sorted keys, separators
"," and ":"), a value that now equals the new default is left out (as the canonical form does), the
renamed allocation `layer-influence` becomes `reconstruction-sensitivity`, and jobs.config_hash is
recomputed (sha256 of the canonical JSON without `resources`).

The changes are a frozen copy (the database package never imports `backend`): a later change of
`backend.defaults` never changes what this revision wrote. Downgrade leaves the rows as they are:
the pinned values mean the same under the old defaults, only the hashes differ from what version 1
would compute.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

MASK_METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATED = ("wanda", "sparsegpt", "shortgpt", "sleb", "shortened-ppl", "shortened-taylor", "slicegpt", "llm-pruner",
              "flap", "skipgpt-style", "dllm-style", "mod-style")
"""Methods that always used calibration data under version 1 (magnitude did with a non-uniform allocation)."""

# (methods, param, old default, new default, only when the allocation is non-uniform)
PARAM_CHANGES: tuple[tuple[tuple[str, ...], str, Any, Any, bool], ...] = (
    (MASK_METHODS, "allocation_scaling", "peak", "minmax", True),
    (("flap",), "standardize", "per-module-type", "per-layer", False),
    (("shortgpt",), "last_block_output", "raw", "final-norm", False),
    (("sleb",), "loss_stride", 4, 1, False),
    (("shortened-taylor",), "aggregate", "block", "weight", False),
    (("shortened-taylor",), "keep_first_layers", 0, 4, False),
    (("shortened-taylor",), "keep_last_layers", 0, 2, False),
    (("llm-pruner",), "importance", "whole-group", "element1", False),
    (("llm-pruner",), "keep_first_layers", 0, 4, False),
    (("llm-pruner",), "keep_last_layers", 0, 2, False),
    (("dllm-style",), "skipped_kv", "keep", "evict", False),
    (("mod-style",), "variant", "causal-threshold", "seed", False),
)
RENAMED_ALLOCATIONS = {"layer-influence": "reconstruction-sensitivity"}


def pin_version_1(document: dict[str, Any]) -> dict[str, Any]:
    """A canonical config written under defaults version 1, canonical under version 2 with the same meaning."""
    document = json.loads(json.dumps(document))
    pruning = document.get("pruning") or {}
    method = pruning.get("method", "dense")
    params = dict(pruning.get("params") or {})
    if method in MASK_METHODS and params.get("allocation") in RENAMED_ALLOCATIONS:
        params["allocation"] = RENAMED_ALLOCATIONS[params["allocation"]]
    non_uniform = params.get("allocation", "uniform") != "uniform"
    for methods, param, old, new, needs_non_uniform in PARAM_CHANGES:
        if method not in methods or (needs_non_uniform and not non_uniform):
            continue
        if param not in params:
            params[param] = old
        elif params[param] == new:  # now the default: the canonical form leaves it out
            del params[param]
    if params != (pruning.get("params") or {}):
        pruning = {**pruning, "params": params}
        if not params:
            del pruning["params"]
        document["pruning"] = pruning
    calibrated = method in CALIBRATED or (method == "magnitude" and non_uniform)
    if calibrated and "calibration" not in document:
        document["calibration"] = {}  # CalibrationConfig's own defaults: synthetic 8 x 128, seed 0
    return document


def canonical(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def config_hash(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in document.items() if k != "resources"}).encode()).hexdigest()


def upgrade() -> None:
    jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("config_json", sa.Text),
                    sa.column("config_hash", sa.String(64)))
    bind = op.get_bind()
    rows = bind.execute(sa.select(jobs.c.id, jobs.c.config_json)).all()
    for job_id, config_json in rows:
        try:
            document = json.loads(config_json)
        except (TypeError, ValueError):
            continue  # not a config this revision can read: left as it is
        if not isinstance(document, dict):
            continue
        pinned = pin_version_1(document)
        if pinned != document:
            bind.execute(jobs.update().where(jobs.c.id == job_id)
                         .values(config_json=canonical(pinned), config_hash=config_hash(pinned)))


def downgrade() -> None:
    pass
