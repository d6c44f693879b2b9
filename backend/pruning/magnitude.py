"""`magnitude`: unstructured pruning by weight magnitude, each matrix at its own threshold.

The baseline of Han et al. 2015 (https://arxiv.org/abs/1506.02626) as used in the Wanda paper
(https://arxiv.org/abs/2306.11695): in every nn.Linear of every decoder block the round(s x numel)
weights of smallest |W| are set to zero. Embeddings and lm_head are never pruned.

Comparison group: per matrix (unstructured); with an N:M pattern, each group of M consecutive input
weights of a row loses its N smallest |W|. Non-uniform allocations (`owl`, `reconstruction-sensitivity`, see
`backend.pruning.allocation`) need calibration data to measure the layers; the pruning itself never
does, so the uniform default runs without the layer-by-layer driver.

Example config: `pruning: {method: magnitude, sparsity: 0.5}` or
`pruning: {method: magnitude, sparsity: 0.5, params: {pattern: "2:4"}}`.
Lifecycle: (allocation) -> for each block -> for each linear -> `magnitude_mask` / `nm_mask` ->
zero the masked weights; then measure the zeros actually present.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel

from backend.pruning.base import PruneReport, PruningMethod, register_method
from backend.pruning.sparsity import SparsityParams, check_sparsity_params

if TYPE_CHECKING:
    import torch

__all__ = ["Magnitude", "MagnitudeParams", "magnitude_mask"]


class MagnitudeParams(SparsityParams):
    """`pattern`, `allocation`, `owl_m`, `deviation`, `allocation_scaling` (see `SparsityParams`)."""


def magnitude_mask(weight: "torch.Tensor", sparsity: float) -> "torch.Tensor":
    """Bool mask, True where a weight is to be zeroed: exactly round(sparsity x numel) of them.

    The smallest |W| go first. Equal magnitudes at the threshold are taken in flat (row-major) index
    order, so the mask is the same on every run and device. `round` is Python's (half to even).
    A k-th value search rather than a full sort: several times faster on CPU for the same mask.
    """
    import torch

    count = round(sparsity * weight.numel())
    flat = weight.detach().abs().flatten()
    if count <= 0:
        return torch.zeros_like(weight, dtype=torch.bool)
    threshold = flat.float().kthvalue(count).values.to(flat.dtype)
    mask = flat < threshold
    missing = count - int(mask.sum())
    ties = torch.nonzero(flat == threshold).flatten()[:missing]
    mask[ties] = True
    return mask.view_as(weight)


@register_method
class Magnitude(PruningMethod):
    """Zero the smallest-magnitude weights of each decoder linear (comparison group: per matrix)."""

    name = "magnitude"
    family = "unstructured"
    description = "unstructured or N:M magnitude pruning, per-matrix threshold (Han et al. 2015)"
    Params = MagnitudeParams
    layerwise = True  # masks each matrix where it lies; allocations replay one block at a time

    @classmethod
    def check_params(cls, sparsity: float, params: BaseModel) -> None:
        check_sparsity_params(sparsity, params)

    @classmethod
    def uses_calibration(cls, params: BaseModel) -> bool:
        return getattr(params, "allocation", "uniform") != "uniform"

    def prune(
        self,
        model: "torch.nn.Module",
        sparsity: float,
        params: BaseModel | None,
        calibration: "torch.Tensor | None",
        progress: Callable[[float, str], None],
    ) -> PruneReport:
        import torch

        from backend.pruning.allocation import allocate
        from backend.pruning.masks import nm_mask
        from backend.pruning.sparsity import PrunedStats, check_model

        params = params if params is not None else self.Params()
        self.check_params(sparsity, params)
        nm = params.nm()
        linears = check_model(model, nm)
        start = PrunedStats.begin(model)
        budgets, planned, details = allocate(model, linears, sparsity, params, calibration,
                                             lambda f, t: progress(0.5 * f, t), nm=nm)
        first = 0.0 if params.allocation == "uniform" else 0.5
        matrices = 0
        with torch.no_grad():
            for index, group in enumerate(linears):
                for name, linear in group.items():
                    weight = linear.weight
                    if nm is not None:
                        mask = nm_mask(weight.abs(), *nm)
                    else:
                        mask = magnitude_mask(weight, budgets[index][name] / weight.numel())
                    weight.masked_fill_(mask, 0)
                    matrices += 1
                progress(first + (1 - first) * (index + 1) / len(linears),
                         f"magnitude: layer {index + 1}/{len(linears)}")
        group_name = "per_matrix" if nm is None else "per_group_of_m_inputs"
        return start.report(self.name, sparsity, params, planned, group_name,
                            {**details, "pruned_matrices": matrices})
