"""`magnitude`: unstructured pruning by weight magnitude, each matrix at its own threshold.

The baseline of Han et al. 2015 (https://arxiv.org/abs/1506.02626) as used in the Wanda paper
(https://arxiv.org/abs/2306.11695): in every nn.Linear of every decoder block the round(s x numel)
weights of smallest |W| are set to zero. Embeddings and lm_head are never pruned.

Example config: `pruning: {method: magnitude, sparsity: 0.5}`.
Lifecycle: for each block -> for each linear -> `magnitude_mask` -> zero the masked weights;
then measure the zeros actually present.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel

from backend.pruning.base import PruneReport, PruningMethod, register_method

if TYPE_CHECKING:
    import torch

__all__ = ["Magnitude", "magnitude_mask"]


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
    description = "unstructured magnitude pruning, per-matrix threshold (Han et al. 2015)"

    def prune(
        self,
        model: "torch.nn.Module",
        sparsity: float,
        params: BaseModel,
        calibration: "torch.Tensor | None",
        progress: Callable[[float, str], None],
    ) -> PruneReport:
        import torch

        from backend.models import count_parameters
        from backend.pruning.layers import count_linear_zeros, get_decoder_layers, prunable_linears

        layers = get_decoder_layers(model)
        params_before = count_parameters(model)
        matrices = 0
        with torch.no_grad():
            for index, layer in enumerate(layers):
                for linear in prunable_linears(layer).values():
                    linear.weight.masked_fill_(magnitude_mask(linear.weight, sparsity), 0)
                    matrices += 1
                progress((index + 1) / len(layers), f"magnitude: layer {index + 1}/{len(layers)}")
        zeros, total = count_linear_zeros(model)
        return PruneReport(
            method=self.name,
            requested_sparsity=sparsity,
            achieved_sparsity=zeros / total,
            params_before=params_before,
            params_after=count_parameters(model),
            details={"comparison_group": "per_matrix", "pruned_matrices": matrices,
                     "zero_weights": zeros, "prunable_weights": total},
        )
