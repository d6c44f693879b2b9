"""`wanda`: Pruning by Weights and activations (Sun et al. 2023, https://arxiv.org/abs/2306.11695).

Score S_ij = |W_ij| x ||X_j||_2, X_j the j-th input feature over all calibration tokens, collected
layer by layer on the outputs of the already pruned blocks (`backend.pruning.sequential`).
Comparison group: per output row (each row of each linear loses the same number of weights, the
paper's choice); with an N:M pattern, each group of M consecutive inputs of a row loses its N
lowest scores. No weight update.

Deviations from the paper's code: when a matrix's zero budget is not a multiple of its row count
(non-uniform allocation), the first rows lose one weight more, so the count per linear is exact;
ties are broken by column index.

Example config:
    pruning: {method: wanda, sparsity: 0.5, params: {pattern: unstructured, allocation: uniform}}
    calibration: {source: text, path: wikitext2/valid.txt, num_samples: 32, seq_len: 512}
Lifecycle: per block -> hooks accumulate mean x_j^2 -> score -> mask per row -> replay the block.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from backend.pruning.base import register_method
from backend.pruning.sparsity import MaskPruningMethod, SparsityParams

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Wanda", "WandaParams", "wanda_mask"]


class WandaParams(SparsityParams):
    """`pattern`, `allocation`, `owl_m`, `deviation`, `allocation_scaling` (see `SparsityParams`)."""


def wanda_mask(weight: "torch.Tensor", input_norm: "torch.Tensor", zeros: int,
               nm: tuple[int, int] | None = None) -> "torch.Tensor":
    """Bool mask (True = zero): per row the lowest |W| x ||X|| (`zeros` spread evenly over rows), or N:M."""
    from backend.pruning.masks import nm_mask, row_budgets, row_mask, wanda_score

    score = wanda_score(weight, input_norm)
    if nm is not None:
        return nm_mask(score, *nm)
    return row_mask(score, row_budgets(zeros, weight.shape[0]))


@register_method
class Wanda(MaskPruningMethod):
    """Wanda: zero the lowest |W| x ||X||_2 in each output row (comparison group: per output row)."""

    name = "wanda"
    description = "unstructured or N:M pruning by |W| x ||X||, per output row (Sun et al. 2023)"
    sparsity_meaning = "fraction of decoder-linear weights set to zero (N:M: must equal N/M)"
    Params = WandaParams
    comparison_group = "per_output_row"

    def make_stats(self, linear: "nn.Linear") -> Any:
        from backend.pruning.sequential import InputNormStats

        return InputNormStats(linear.in_features, linear.weight.device)

    def prune_linear(self, weight, stats, zeros, nm, params: BaseModel, where: str):
        return weight.masked_fill(wanda_mask(weight, stats.norms(), zeros, nm), 0)
