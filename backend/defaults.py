"""The history of defaults that change what a run computes, so that a stored config keeps its meaning.

Configs are stored without the fields left at their default (`backend.config.canonical_dict`), so
changing a default would silently change what an old config means. Each such change is recorded
here with the `DEFAULTS_VERSION` that introduced it and the value it replaced; configs written
under an older version get the old value written out (`pin_changed_defaults`): the database
migration that comes with a change does this to stored configs (and recomputes their hashes), and
results bundles carry the version they were written under, so their configs are pinned on import.

A migration never imports this module (the database package stays free of `backend`): it carries a
frozen copy of its version's changes (version 2: `db/migrations/versions/0009_faithful_defaults.py`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["DEFAULTS_VERSION", "DefaultChange", "CHANGES", "pin_changed_defaults"]


@dataclass(frozen=True)
class DefaultChange:
    version: int
    """The DEFAULTS_VERSION that introduced the new default."""
    description: str
    pin: Callable[[dict[str, Any]], dict[str, Any]]
    """Writes the old value into a config document that relied on the old default (a copy)."""


Pin = Callable[[dict[str, Any]], dict[str, Any]]


def _pin_param(methods: tuple[str, ...], param: str, old: Any,
               when: Callable[[dict[str, Any]], bool] = lambda params: True) -> Pin:
    """Pins `param` at `old` in configs of `methods` that leave it out, where `when(params)` holds."""
    def pin(document: dict[str, Any]) -> dict[str, Any]:
        pruning = document.get("pruning") or {}
        params = pruning.get("params") or {}
        if pruning.get("method") not in methods or param in params or not when(params):
            return document
        pinned = copy.deepcopy(document)
        pinned["pruning"].setdefault("params", {})[param] = old
        return pinned
    return pin


def _rename_value(methods: tuple[str, ...], param: str, old: str, new: str) -> Pin:
    """Rewrites `param: old` as `param: new` in configs of `methods` (a value that was renamed)."""
    def rename(document: dict[str, Any]) -> dict[str, Any]:
        pruning = document.get("pruning") or {}
        if pruning.get("method") not in methods or (pruning.get("params") or {}).get(param) != old:
            return document
        renamed = copy.deepcopy(document)
        renamed["pruning"]["params"][param] = new
        return renamed
    return rename


MASK_METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATED_AT_VERSION_1 = ("wanda", "sparsegpt", "shortgpt", "sleb", "shortened-ppl", "shortened-taylor", "slicegpt",
                           "llm-pruner", "flap", "skipgpt-style", "dllm-style", "mod-style")
"""Methods that always used calibration data under defaults version 1 (magnitude did with a non-uniform allocation)."""


def _non_uniform(params: dict[str, Any]) -> bool:
    return params.get("allocation", "uniform") != "uniform"


def _pin_synthetic_calibration(document: dict[str, Any]) -> dict[str, Any]:
    """A calibrated run without a `calibration` section used synthetic 8 x 128 random tokens (seed 0),
    which an empty section still means; without a section the study's WikiText-2 text is used now."""
    pruning = document.get("pruning") or {}
    method = pruning.get("method", "dense")
    params = pruning.get("params") or {}
    calibrated = method in CALIBRATED_AT_VERSION_1 or (method == "magnitude" and _non_uniform(params))
    if not calibrated or "calibration" in document:
        return document
    return {**copy.deepcopy(document), "calibration": {}}


CHANGES: tuple[DefaultChange, ...] = (
    DefaultChange(2, "allocation `layer-influence` renamed `reconstruction-sensitivity` (it is not LayerIF)",
                  _rename_value(MASK_METHODS, "allocation", "layer-influence", "reconstruction-sensitivity")),
    DefaultChange(2, "OWL-style allocations: scores min-max scaled to 2 x deviation (OWL's code), was `peak`",
                  _pin_param(MASK_METHODS, "allocation_scaling", "peak", _non_uniform)),
    DefaultChange(2, "flap: fluctuation standardised per layer (FLAP's code), was `per-module-type`",
                  _pin_param(("flap",), "standardize", "per-module-type")),
    DefaultChange(2, "shortgpt: the last block compared after the final norm (the paper's script), was `raw`",
                  _pin_param(("shortgpt",), "last_block_output", "raw")),
    DefaultChange(2, "sleb: every prediction scored (loss_stride 1), was 4",
                  _pin_param(("sleb",), "loss_stride", 4)),
    DefaultChange(2, "shortened-taylor: sum |w * dL/dw| per block (the official code), was `block`",
                  _pin_param(("shortened-taylor",), "aggregate", "block")),
    DefaultChange(2, "shortened-taylor: Taylor+ keeps the first 4 blocks, was 0",
                  _pin_param(("shortened-taylor",), "keep_first_layers", 0)),
    DefaultChange(2, "shortened-taylor: Taylor+ keeps the last 2 blocks, was 0",
                  _pin_param(("shortened-taylor",), "keep_last_layers", 0)),
    DefaultChange(2, "llm-pruner: element-wise first-order importance (the official default), was `whole-group`",
                  _pin_param(("llm-pruner",), "importance", "whole-group")),
    DefaultChange(2, "llm-pruner: the first 4 layers left unpruned (the LLaMA recipe), was 0",
                  _pin_param(("llm-pruner",), "keep_first_layers", 0)),
    DefaultChange(2, "llm-pruner: the last 2 layers left unpruned (the LLaMA recipe), was 0",
                  _pin_param(("llm-pruner",), "keep_last_layers", 0)),
    DefaultChange(2, "dllm-style: skipped tokens' K/V evicted (D-LLM), was `keep`",
                  _pin_param(("dllm-style",), "skipped_kv", "keep")),
    DefaultChange(2, "mod-style: the seed study's MoD variant, was `causal-threshold`",
                  _pin_param(("mod-style",), "variant", "causal-threshold")),
    DefaultChange(2, "calibrated runs without a calibration section: the study's WikiText-2 text, was synthetic",
                  _pin_synthetic_calibration),
)
"""Every change, oldest first."""

DEFAULTS_VERSION = max((c.version for c in CHANGES), default=1)
"""The version of the defaults this code applies (1: the defaults before any recorded change)."""


def pin_changed_defaults(document: dict[str, Any], since_version: int) -> dict[str, Any]:
    """`document` (a canonical config written under defaults `since_version`) with the old value of
    every default changed after that version written out."""
    for change in CHANGES:
        if change.version > since_version:
            document = change.pin(document)
    return document
