"""`shortened-ppl`: one-shot depth pruning by perplexity (Kim et al. 2024, Shortened LLaMA,
https://arxiv.org/abs/2402.02834, PPL criterion).

The importance of block i is the calibration perplexity of the model with block i alone removed.
The hidden states entering every block are cached in one dense pass; block i's score restarts from
the cached input of block i and runs only the blocks after it (plus final norm and lm_head). The
n = round(sparsity x L) blocks with the lowest scores (removal hurts least) are removed at once, for
real. Ties go to the lower index. Cost: about L^2 / 2 block forwards and L lm_head passes
(SmolLM2-135M, 8 x 256 tokens: about 1.5 minutes on 2 idle CPU cores).

`params.loss_stride` (default 1: every next-token prediction scored, as in the paper): score only
every k-th prediction of each sequence (`backend.pruning.depth.lm_nll`; exact on those positions, the
blocks still see every token). At equal stride the scores equal `sleb`'s round-1 scores.

Unlike `sleb`, nothing is re-measured after a removal: the scores are those of single removals.

`details`: `removed_layers`, `scores` (perplexity without each block), `dense_ppl`, `loss_stride`.
Example config: `pruning: {method: shortened-ppl, sparsity: 0.25}` with a `calibration:` section.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from backend.pruning.base import register_method
from backend.pruning.depth import (
    BlockChoice,
    DepthPruningMethod,
    PerplexityParams,
    lowest,
)

if TYPE_CHECKING:
    import torch

__all__ = ["ShortenedPPL", "ppl_without_each_block"]


def ppl_without_each_block(
    model: "torch.nn.Module",
    calibration: "torch.Tensor",
    progress: Callable[[float, str], None] = lambda fraction, text: None,
    loss_stride: int = 1,
) -> tuple[list[float], float]:
    """(calibration perplexity with block i removed, for every i; dense calibration perplexity), scoring
    every `loss_stride`-th next-token prediction."""
    from backend.pruning.depth import cache_block_inputs, lm_nll, nll_from

    cache = cache_block_inputs(model, calibration)
    nll = [lm_nll(model, h, ids, loss_stride) for h, ids in zip(cache.final, cache.ids)]
    dense = math.exp(sum(a for a, _ in nll) / sum(b for _, b in nll))
    total = len(cache.blocks)
    scores = []
    for i in range(total):
        scores.append(math.exp(nll_from(model, cache, i, skip=i, loss_stride=loss_stride)))
        progress((i + 1) / total, f"shortened-ppl: block {i + 1}/{total}")
    return scores, dense


@register_method
class ShortenedPPL(DepthPruningMethod):
    """Remove the decoder blocks whose single removal raises calibration perplexity least."""

    name = "shortened-ppl"
    description = "one-shot block removal by perplexity without each block (Shortened LLaMA, Kim et al. 2024)"
    Params = PerplexityParams
    score_name = "ppl_without_block"

    def choose_blocks(self, model: "torch.nn.Module", calibration: "torch.Tensor", count: int,
                      params: PerplexityParams, progress: Callable[[float, str], None]) -> BlockChoice:
        scores, dense = ppl_without_each_block(model, calibration, lambda f, t: progress(0.98 * f, t),
                                               params.loss_stride)
        return BlockChoice(lowest(scores, count), scores,
                           {"dense_ppl": round(dense, 6), "loss_stride": params.loss_stride})
