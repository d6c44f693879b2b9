"""`sleb`: greedy depth pruning by calibration perplexity (Song et al. 2024, https://arxiv.org/abs/2402.09025).

n = round(sparsity x L) rounds. In each round the hidden states entering every remaining block are
cached once (one pass over the calibration set); then, for each remaining block, the calibration
perplexity with that block left out is measured by restarting from the cached input of that block
and running only the blocks after it (plus final norm and lm_head). The block whose removal hurts
perplexity least is removed, and the next round re-measures on the model without it, so the choice
adapts to what was already removed. Ties go to the lower index.

Cost: about sum over rounds of (L_r^2 / 2) block forwards and L_r lm_head passes on the calibration
tokens (L_r remaining blocks in round r).

`details`: `removed_layers` (sorted original indices), `removal_order` (original indices in the
order they were chosen), `scores` (round-1 perplexity without each block, one per original layer),
`rounds` (per round: the perplexity without each remaining block, keyed by original index, the
removed block and the perplexity after removing it), `dense_ppl`.

Example config: `pruning: {method: sleb, sparsity: 0.25}` with a `calibration:` section.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel

from backend.pruning.base import PruneReport, register_method
from backend.pruning.depth import DepthPruningMethod

if TYPE_CHECKING:
    import torch

__all__ = ["SLEB", "sleb_order"]


def sleb_order(
    model: "torch.nn.Module",
    calibration: "torch.Tensor",
    count: int,
    progress: Callable[[float, str], None] = lambda fraction, text: None,
) -> tuple[list[int], list[dict], float]:
    """Greedy removal order of `count` blocks (original indices), the per-round scores and the dense
    calibration perplexity. Does not change the model."""
    from backend.pruning.depth import cache_block_inputs, lm_nll, nll_from
    from backend.pruning.layers import get_decoder_layers

    total = len(get_decoder_layers(model))
    kept = list(range(total))
    order: list[int] = []
    rounds: list[dict] = []
    work = sum(total - r for r in range(count))
    done = 0
    dense_ppl = float("nan")
    for r in range(count):
        cache = cache_block_inputs(model, calibration, kept)
        if r == 0:
            nll = [lm_nll(model, h, ids) for h, ids in zip(cache.final, cache.ids)]
            dense_ppl = math.exp(sum(a for a, _ in nll) / sum(b for _, b in nll))
        ppl: dict[int, float] = {}
        for pos, index in enumerate(kept):
            ppl[index] = math.exp(nll_from(model, cache, pos, skip=pos))
            done += 1
            progress(done / work, f"sleb: round {r + 1}/{count}, block {index} ({pos + 1}/{len(kept)})")
        best = min(kept, key=lambda i: (ppl[i], i))
        kept.remove(best)
        order.append(best)
        rounds.append({"removed": best, "ppl_after": round(ppl[best], 6),
                       "ppl_without": {str(i): round(p, 6) for i, p in ppl.items()}})
        del cache
    return order, rounds, dense_ppl


@register_method
class SLEB(DepthPruningMethod):
    """Remove decoder blocks one at a time, each time the one whose removal hurts perplexity least."""

    name = "sleb"
    description = "greedy block removal by calibration perplexity, re-measured after each removal (Song et al. 2024)"

    def prune(
        self,
        model: "torch.nn.Module",
        sparsity: float,
        params: BaseModel,
        calibration: "torch.Tensor | None",
        progress: Callable[[float, str], None],
    ) -> PruneReport:
        from backend.models import count_parameters
        from backend.pruning.depth import depth_count, depth_report
        from backend.pruning.layers import get_decoder_layers, remove_layers

        if calibration is None:
            raise ValueError("sleb needs calibration data")
        total = len(get_decoder_layers(model))
        count = depth_count(self.name, sparsity, total)
        params_before = count_parameters(model)
        order, rounds, dense_ppl = sleb_order(model, calibration, count, lambda f, t: progress(0.98 * f, t))
        first = rounds[0]["ppl_without"]
        removed = remove_layers(model, order)
        progress(1.0, f"sleb: removed layers {removed} (order {order})")
        return depth_report(
            self.name, model, sparsity, params_before, total, removed,
            [first[str(i)] for i in range(total)], "ppl_without_block", "greedy: lowest, re-measured per round",
            removal_order=order, rounds=rounds, dense_ppl=round(dense_ppl, 6),
        )
