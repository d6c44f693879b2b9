"""`dense`: the unpruned baseline every other row of the leaderboard is compared against."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel

from backend.pruning.base import PruneReport, PruningMethod, register_method

if TYPE_CHECKING:
    import torch

__all__ = ["Dense"]


@register_method
class Dense(PruningMethod):
    """No pruning. Reports the parameter count and the zeros the weights already have.

    Example config: `pruning: {method: dense}`.
    """

    name = "dense"
    family = "dense"
    description = "no pruning: the baseline"
    sparsity_meaning = "none (must be 0)"
    layerwise = True  # nothing to do on any device

    @classmethod
    def check_sparsity(cls, sparsity: float) -> None:
        if sparsity != 0:
            raise ValueError(f"dense takes no sparsity (got {sparsity}); use 0 or another method")

    def prune(
        self,
        model: "torch.nn.Module",
        sparsity: float,
        params: BaseModel,
        calibration: "torch.Tensor | None",
        progress: Callable[[float, str], None],
    ) -> PruneReport:
        from backend.models.loading import count_parameters
        from backend.pruning.layers import count_linear_zeros

        self.check_sparsity(sparsity)
        try:
            zeros, total = count_linear_zeros(model)
        except ValueError:  # dense works on any architecture, even one without decoder-layer access
            zeros, total = 0, 0
        params_count = count_parameters(model)
        progress(1.0, "dense: nothing to prune")
        return PruneReport(
            method=self.name,
            requested_sparsity=sparsity,
            achieved_sparsity=zeros / total if total else 0.0,
            params_before=params_count,
            params_after=params_count,
        )
