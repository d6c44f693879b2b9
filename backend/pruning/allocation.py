"""How a global sparsity target is spread over decoder layers, separate from how weights are scored.

* `uniform`: every layer, and every linear in it, at the target.
* `owl`: Outlier-Weighted Layerwise sparsity (Yin et al. 2023, https://arxiv.org/abs/2310.05175).
  Per layer, the outlier ratio is the share of Wanda scores |W_ij| x ||X_j|| above `owl_m` x the
  layer's mean score (all its linears together), measured on the dense model's calibration
  activations. Layers with more outliers are pruned less.
* `reconstruction-sensitivity`: per-layer sensitivity measured on calibration data: the share of
  the block's own contribution (out - in) that is lost when that block alone is pruned at the
  target sparsity (Wanda masks, per output row): ||B(x) - B~(x)||^2 / ||B(x) - x||^2 summed over
  calibration tokens. More sensitive layers are pruned less. PruneBoard's own cheap measure (one
  pass), not LayerIF's influence-function scores; it was called `layer-influence` before.

Scores map to sparsities by `allocation_scaling` (`spread`), lambda = `deviation`:

* `minmax` (default; OWL's code, luuyin/OWL `lib/prune_all.py`): the scores are min-max scaled to
  [0, 2 lambda], centred on their mean, and subtracted from the target, s_i = target - (c_i - mean c).
  Layers are 2 lambda apart at most; one layer can lie up to 2 lambda (less 2 lambda / L) from the target.
* `peak`: s_i = target - lambda x c_i / max|c|, c the centred scores, so no layer deviates more
  than lambda from the target (PruneBoard's earlier rule).

The parameter-weighted mean is then made exact (a shift, which is zero when all layers have the
same size, as in OWL's Llama setting): zero budgets per linear are integers summing to
round(target x prunable weights) (largest remainder), so the achieved global sparsity equals the
target up to one weight. Remaining deviations from OWL's code: a layer sparsity is clamped to [0, 1]
(OWL raises a sparsity <= 0 to 0.01), the budgets are exact integers (OWL rounds per row), and
equal outlier ratios in every layer give the uniform allocation (OWL divides by zero).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["AllocationSettings", "allocate", "matrix_budgets", "outlier_ratio", "spread"]


class AllocationSettings(Protocol):
    """What an allocation reads of a mask method's parameters (`sparsity.SparsityParams` has them)."""

    allocation: str
    deviation: float
    allocation_scaling: str
    owl_m: float


def spread(scores: list[float], target: float, deviation: float, weights: list[float] | None = None,
           scaling: str = "minmax") -> list[float]:
    """Per-layer sparsities: higher score -> lower sparsity (see the module docstring for `scaling`);
    `weights` (layer sizes) make the weighted mean exactly the target."""
    if scaling not in ("minmax", "peak"):
        raise ValueError(f"allocation scaling must be 'minmax' or 'peak', got {scaling!r}")
    low, high = min(scores), max(scores)
    if scaling == "minmax":
        scaled = [(s - low) / (high - low) * 2 * deviation if high > low else 0.0 for s in scores]
        mean = sum(scaled) / len(scaled)
        sparsities = [target - (s - mean) for s in scaled]
    else:
        mean = sum(scores) / len(scores)
        centred = [s - mean for s in scores]
        peak = max(abs(c) for c in centred)
        sparsities = [target - (deviation * c / peak if peak > 0 else 0.0) for c in centred]
    if weights is not None:
        total = sum(weights)
        shift = sum(w * s for w, s in zip(weights, sparsities)) / total - target
        sparsities = [s - shift for s in sparsities]
    return [min(max(s, 0.0), 1.0) for s in sparsities]


def outlier_ratio(scores: list["torch.Tensor"], m: float) -> float:
    """Share of all entries of `scores` (one layer's linears) above m x their common mean."""
    import torch

    total = sum(s.numel() for s in scores)
    mean = sum(float(s.double().sum()) for s in scores) / total
    above = sum(int(torch.count_nonzero(s > m * mean)) for s in scores)
    return above / total


def matrix_budgets(linears: list[dict[str, "nn.Linear"]], layer_sparsity: list[float], target: float,
                   exact_global: bool) -> list[dict[str, int]]:
    """Zeros per linear. Uniform: round(s x numel) each. Otherwise integers following the layer
    sparsities whose sum is exactly round(target x all prunable weights)."""
    flat = [(i, name, lin.weight.numel()) for i, group in enumerate(linears) for name, lin in group.items()]
    if exact_global:
        from backend.pruning.masks import largest_remainder

        total = sum(n for _, _, n in flat)
        counts = largest_remainder([layer_sparsity[i] * n for i, _, n in flat], round(target * total),
                                   caps=[n for _, _, n in flat])
    else:
        counts = [round(layer_sparsity[i] * n) for i, _, n in flat]
    budgets: list[dict[str, int]] = [{} for _ in linears]
    for (i, name, _), count in zip(flat, counts):
        budgets[i][name] = count
    return budgets


def allocate(
    model: "nn.Module",
    linears: list[dict[str, "nn.Linear"]],
    target: float,
    params: AllocationSettings,
    calibration: "torch.Tensor | None",
    progress: Callable[[float, str], None],
    *,
    device: Any = None,
    nm: tuple[int, int] | None = None,
    on_move: Callable[[int, str], None] | None = None,
) -> tuple[list[dict[str, int]], list[float], dict[str, Any]]:
    """(zeros per linear per layer, planned sparsity per layer, report details)."""
    count = len(linears)
    if params.allocation == "uniform" or nm is not None:
        sparsity = [target] * count
        return matrix_budgets(linears, sparsity, target, exact_global=False), sparsity, {}
    if calibration is None:
        raise ValueError(f"allocation {params.allocation!r} needs calibration data")
    measure = _owl_scores if params.allocation == "owl" else _reconstruction_sensitivity
    scores = measure(model, calibration, target, params, progress, device, on_move)
    weights = [float(sum(lin.weight.numel() for lin in group.values())) for group in linears]
    sparsity = spread(scores, target, params.deviation, weights, params.allocation_scaling)
    key = "outlier_ratio" if params.allocation == "owl" else "reconstruction_sensitivity"
    details = {key: [round(s, 8) for s in scores], "deviation": params.deviation}
    if params.allocation == "owl":
        details["owl_m"] = params.owl_m
    return matrix_budgets(linears, sparsity, target, exact_global=True), sparsity, details


def _owl_scores(model, calibration, target, params, progress, device, on_move) -> list[float]:
    from backend.pruning.masks import wanda_score
    from backend.pruning.sequential import InputNormStats, replay_layers

    ratios: list[float] = []

    def measure(ctx) -> bool:
        scores = [wanda_score(lin.weight, ctx.stats[name].norms()) for name, lin in ctx.linears.items()]
        ratios.append(outlier_ratio(scores, params.owl_m))
        return False

    replay_layers(model, calibration, lambda lin: InputNormStats(lin.in_features, lin.weight.device), measure,
                  device=device, on_move=on_move, progress=lambda f, t: progress(f, f"owl: outlier ratios, {t}"))
    return ratios


def _reconstruction_sensitivity(model, calibration, target, params, progress, device, on_move) -> list[float]:
    import torch

    from backend.pruning.masks import row_budgets, row_mask, wanda_score
    from backend.pruning.sequential import InputNormStats, replay_layers

    sensitivity: list[float] = []

    def measure(ctx) -> bool:
        saved = {name: lin.weight.detach().clone() for name, lin in ctx.linears.items()}
        with torch.no_grad():
            for name, lin in ctx.linears.items():
                score = wanda_score(lin.weight, ctx.stats[name].norms())
                counts = row_budgets(round(target * lin.weight.numel()), lin.out_features)
                lin.weight.masked_fill_(row_mask(score, counts), 0)
            pruned = ctx.run()
            for name, lin in ctx.linears.items():
                lin.weight.copy_(saved[name])
        lost = sum(float((p.float() - d.float()).pow(2).sum()) for p, d in zip(pruned, ctx.outputs))
        own = sum(float((d.float() - x.float()).pow(2).sum()) for d, x in zip(ctx.outputs, ctx.inputs))
        sensitivity.append(lost / own if own > 0 else 0.0)
        return False

    replay_layers(model, calibration, lambda lin: InputNormStats(lin.in_features, lin.weight.device), measure,
                  device=device, on_move=on_move, progress=lambda f, t: progress(f, f"reconstruction-sensitivity: {t}"))
    return sensitivity
