"""What the mask methods (magnitude, wanda, sparsegpt) share: validated params and the pruning loop.

A mask method only scores and masks one linear at a time; this module decides how many weights each
linear loses (the allocation), checks the model before any calibration work, runs the shared
layer-by-layer driver (`backend.pruning.sequential`) and writes the report.

Patterns: `unstructured`, or `"N:M"`: exactly N zeros in every group of M consecutive input weights
of each output row (2:4, 4:8). N:M fixes the sparsity at N/M and takes the uniform allocation.

No speed-up is claimed for any of these patterns: the pruned model runs on dense kernels
(`speedup_kernel: none` in the report).

Torch is imported inside functions only (the CLI lists methods without torch).
"""
from __future__ import annotations

import abc
import logging
import re
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.pruning.base import PruneReport, PruningMethod

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["MaskPruningMethod", "SparsityParams", "check_model", "parse_pattern"]

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """None for `unstructured`, else (N, M) of an `"N:M"` pattern; ValueError when malformed."""
    if pattern == "unstructured":
        return None
    match = _PATTERN.match(pattern)
    if not match:
        raise ValueError(f"pattern must be 'unstructured' or 'N:M' such as '2:4', got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise ValueError(f"pattern {pattern!r}: need 1 <= N < M (N zeros in every group of M weights)")
    if m > 1024:
        raise ValueError(f"pattern {pattern!r}: M must be at most 1024")
    return n, m


ALLOCATIONS = ("uniform", "owl", "reconstruction-sensitivity")
RENAMED_ALLOCATIONS = {"layer-influence": "reconstruction-sensitivity"}
"""Allocation names no longer accepted, with what they are called now (the old name suggested LayerIF)."""


class SparsityParams(BaseModel):
    """Knobs shared by every mask method.

    `pattern`: `unstructured` or `"N:M"` (N zeros per M consecutive input weights; sparsity must be N/M).
    `allocation`: how the target is spread over decoder layers: `uniform`, `owl` (outlier-weighted,
    Yin et al. 2023) or `reconstruction-sensitivity` (how much of each block's own contribution its
    pruning loses on calibration data; PruneBoard's own measure, not LayerIF); see
    `backend.pruning.allocation`. `owl_m`: OWL's outlier threshold M (score > M x layer mean).
    `deviation`: OWL's lambda. `allocation_scaling`: how layer scores become sparsities for both
    non-uniform allocations: `minmax` (OWL's code: scores min-max scaled to [0, 2 lambda], centred on
    the target) or `peak` (centred scores scaled so the largest deviation is exactly lambda).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = "unstructured"
    allocation: Literal["uniform", "owl", "reconstruction-sensitivity"] = "uniform"
    owl_m: float = Field(5.0, gt=0.0, le=1000.0)
    deviation: float = Field(0.08, ge=0.0, lt=0.5)
    allocation_scaling: Literal["minmax", "peak"] = "minmax"

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, pattern: str) -> str:
        parse_pattern(pattern)
        return pattern

    @field_validator("allocation", mode="before")
    @classmethod
    def _renamed_allocation(cls, allocation: Any) -> Any:
        if allocation in RENAMED_ALLOCATIONS:
            raise ValueError(f"allocation {allocation!r} is now called {RENAMED_ALLOCATIONS[allocation]!r} "
                             "(a reconstruction-sensitivity measure, not LayerIF's influence scores)")
        return allocation

    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    def largest_deviation(self) -> float:
        """The farthest a layer's sparsity can lie from the target: 2 lambda with min-max scaling
        (one extreme layer against all others), lambda with peak scaling."""
        return 2 * self.deviation if self.allocation_scaling == "minmax" else self.deviation


def check_sparsity_params(sparsity: float, params: SparsityParams) -> None:
    """Contradictions between the target and the params, raised before any work."""
    nm = params.nm()
    if nm is not None:
        n, m = nm
        if abs(sparsity - n / m) > 1e-9:
            raise ValueError(f"pattern {params.pattern} fixes the sparsity at {n / m:g}; set sparsity: {n / m:g}")
        if params.allocation != "uniform":
            raise ValueError(f"pattern {params.pattern} needs allocation 'uniform' (every layer is N/M sparse)")
    if params.allocation != "uniform":
        reach = params.largest_deviation()
        if sparsity - reach < 0 or sparsity + reach >= 1:
            bound = "2 x deviation" if params.allocation_scaling == "minmax" else "deviation"
            raise ValueError(
                f"allocation {params.allocation}: deviation {params.deviation} ({params.allocation_scaling} scaling) "
                f"does not fit sparsity {sparsity} (need sparsity - {bound} >= 0 and sparsity + {bound} < 1)"
            )


def check_model(model: "nn.Module", nm: tuple[int, int] | None) -> list[dict[str, "nn.Linear"]]:
    """Preflight before calibration: decoder layers reachable, linears present, M divides in_features."""
    from backend.pruning.layers import get_decoder_layers, prunable_linears

    layers = get_decoder_layers(model)
    linears = [prunable_linears(layer) for layer in layers]
    for index, group in enumerate(linears):
        if not group:
            raise ValueError(f"unsupported architecture {type(model).__name__}: decoder layer {index} has no nn.Linear")
        if nm is not None:
            for name, linear in group.items():
                if linear.in_features % nm[1]:
                    raise ValueError(f"pattern {nm[0]}:{nm[1]}: layers.{index}.{name} has in_features="
                                     f"{linear.in_features}, not a multiple of {nm[1]}")
    return linears


class MaskPruningMethod(PruningMethod):
    """Shared orchestration of the calibrated mask methods (wanda, sparsegpt).

    Subclasses implement `make_stats(linear)` (what to accumulate from a linear's inputs) and
    `prune_linear(weight, stats, zeros, nm, params)` (a pure tensor function returning the pruned
    weight). Lifecycle: preflight -> allocation (per-matrix zero budgets) -> layer-by-layer driver:
    stats -> prune each linear -> replay -> report.
    """

    family = "unstructured"
    needs_calibration = True
    layerwise = True
    Params = SparsityParams
    comparison_group: str = ""

    @classmethod
    def check_params(cls, sparsity: float, params: BaseModel) -> None:
        check_sparsity_params(sparsity, params)

    @abc.abstractmethod
    def make_stats(self, linear: "nn.Linear") -> Any:
        """A statistics accumulator with `add(x)`, x the linear's input of shape (..., in_features)."""

    @abc.abstractmethod
    def prune_linear(self, weight: "torch.Tensor", stats: Any, zeros: int,
                     nm: tuple[int, int] | None, params: BaseModel, where: str) -> "torch.Tensor":
        """The pruned weight (same shape and dtype) with `zeros` zeros, or the N:M pattern.

        `where` names the linear (`layers.3.mlp.up_proj`); anything worth reporting about it goes
        into `self.notes`.
        """

    def prune(
        self,
        model: "nn.Module",
        sparsity: float,
        params: BaseModel | None,
        calibration: "torch.Tensor | None",
        progress: Callable[[float, str], None],
        *,
        device: "str | torch.device | None" = None,
        on_move: Callable[[int, str], None] | None = None,
    ) -> PruneReport:
        import torch

        from backend.pruning.allocation import allocate
        from backend.pruning.sequential import replay_layers

        params = params if params is not None else self.Params()
        self.check_sparsity(sparsity)
        self.check_params(sparsity, params)
        nm = params.nm()
        linears = check_model(model, nm)
        if calibration is None:
            raise ValueError(f"{self.name} needs calibration data")
        start = PrunedStats.begin(model)
        budgets, layer_sparsity, alloc_details = allocate(
            model, linears, sparsity, params, calibration,
            lambda f, t: progress(0.3 * f, t), device=device, nm=nm, on_move=on_move)
        first = 0.3 if params.allocation != "uniform" else 0.0
        self.notes: dict[str, Any] = {}

        def prune_one(ctx) -> bool:
            for name, linear in ctx.linears.items():
                pruned = self.prune_linear(linear.weight.data, ctx.stats[name], budgets[ctx.index][name],
                                           nm, params, f"layers.{ctx.index}.{name}")
                with torch.no_grad():
                    linear.weight.copy_(pruned)
            return True

        replay_layers(model, calibration, self.make_stats, prune_one, device=device, on_move=on_move,
                      progress=lambda f, t: progress(first + (1 - first) * f, f"{self.name}: {t}"))
        return start.report(self.name, sparsity, params, layer_sparsity, self.comparison_group,
                            {**alloc_details, **self.notes})


class PrunedStats:
    """Parameter count before pruning, and the report measured on the pruned model."""

    def __init__(self, model: "nn.Module", params_before: int):
        self.model = model
        self.params_before = params_before

    @classmethod
    def begin(cls, model: "nn.Module") -> "PrunedStats":
        from backend.models.loading import count_parameters

        return cls(model, count_parameters(model))

    def report(self, method: str, sparsity: float, params: SparsityParams, planned: list[float],
               comparison_group: str, extra: dict[str, Any]) -> PruneReport:
        import torch

        from backend.models.loading import count_parameters
        from backend.pruning.layers import get_decoder_layers, prunable_linears

        per_layer, zeros_all, total_all = [], 0, 0
        with torch.no_grad():
            for layer in get_decoder_layers(self.model):
                zeros = total = 0
                for linear in prunable_linears(layer).values():
                    total += linear.weight.numel()
                    zeros += linear.weight.numel() - int(torch.count_nonzero(linear.weight))
                per_layer.append(round(zeros / total, 6))
                zeros_all += zeros
                total_all += total
        return PruneReport(
            method=method,
            requested_sparsity=sparsity,
            achieved_sparsity=zeros_all / total_all,
            params_before=self.params_before,
            params_after=count_parameters(self.model),
            details={
                "pattern": params.pattern,
                "allocation": params.allocation,
                **({"allocation_scaling": params.allocation_scaling} if params.allocation != "uniform" else {}),
                "comparison_group": comparison_group,
                "layer_sparsity_planned": [round(s, 6) for s in planned],
                "layer_sparsity": per_layer,
                "global_sparsity": round(zeros_all / total_all, 8),
                "zero_weights": zeros_all,
                "prunable_weights": total_all,
                "speedup_kernel": "none",
                **extra,
            },
        )
