"""How a global sparsity target is spread over decoder layers, separate from how weights are scored.

* `uniform`: every layer, and every linear in it, at the target.
* `owl`: Outlier-Weighted Layerwise sparsity (Yin et al. 2023, https://arxiv.org/abs/2310.05175).
  Per layer, the outlier ratio is the share of Wanda scores |W_ij| x ||X_j|| above `owl_m` x the
  layer's mean score (all its linears together), measured on the dense model's calibration
  activations. Layers with more outliers are pruned less.
* `layer-influence`: per-layer sensitivity measured on calibration data: the share of the block's
  own contribution (out - in) that is lost when that block alone is pruned at the target sparsity
  (Wanda masks, per output row): ||B(x) - B~(x)||^2 / ||B(x) - x||^2 summed over calibration tokens.
  More sensitive layers are pruned less. (A local stand-in for "calibration loss increase": one
  pass instead of one full forward per layer.)

Scores map to sparsities with `spread`: s_i = target - lambda x c_i / max|c|, c the centred scores,
so no layer deviates more than lambda (`deviation`) from the target. Deviation from the OWL paper,
which min-max scales ratios to [0, 2 lambda] before centring: here the bound is exactly lambda.
The parameter-weighted mean is then made exact: zero budgets per linear are integers summing to
round(target x prunable weights) (largest remainder), so the achieved global sparsity equals the
target up to one weight.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from backend.pruning.sparsity import SparsityParams

__all__ = ["allocate", "matrix_budgets", "outlier_ratio", "spread"]


def spread(scores: list[float], target: float, deviation: float, weights: list[float] | None = None) -> list[float]:
    """Per-layer sparsities: higher score -> lower sparsity, |s_i - target| <= deviation (before the
    weighted-mean correction, which only matters when layers differ in size)."""
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
    params: "SparsityParams",
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
    measure = _owl_scores if params.allocation == "owl" else _influence_scores
    scores = measure(model, calibration, target, params, progress, device, on_move)
    weights = [float(sum(lin.weight.numel() for lin in group.values())) for group in linears]
    sparsity = spread(scores, target, params.deviation, weights)
    key = "outlier_ratio" if params.allocation == "owl" else "layer_influence"
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


def _influence_scores(model, calibration, target, params, progress, device, on_move) -> list[float]:
    import torch

    from backend.pruning.masks import row_mask, wanda_score
    from backend.pruning.sequential import InputNormStats, replay_layers
    from backend.pruning.sparsity import row_budgets

    influence: list[float] = []

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
        influence.append(lost / own if own > 0 else 0.0)
        return False

    replay_layers(model, calibration, lambda lin: InputNormStats(lin.in_features, lin.weight.device), measure,
                  device=device, on_move=on_move, progress=lambda f, t: progress(f, f"layer-influence: {t}"))
    return influence
