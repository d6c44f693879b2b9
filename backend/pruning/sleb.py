"""`sleb`: greedy depth pruning by calibration perplexity (Song et al. 2024, https://arxiv.org/abs/2402.09025).

n = round(sparsity x L) rounds. In each round, for each remaining block, the calibration perplexity
with that block left out is measured by restarting from the cached hidden states entering that block
and running only the blocks after it (plus final norm and lm_head). The block whose removal hurts
perplexity least is removed, and the next round re-measures on the model without it, so the choice
adapts to what was already removed. Ties go to the lower index.

Caching, exact: the hidden states entering every block are computed once, in round 1. The run that
measured the removed block's candidate *is* the model without that block, so the hidden states it
produced become the next round's cache for the blocks after it (those before it are unchanged): no
round after the first runs a separate caching pass.

`params.loss_stride` (default 1: every next-token prediction scored, as SLEB's code does,
jiwonsong-dev/SLEB): with k > 1 only every k-th prediction of each calibration sequence is scored
(`backend.pruning.depth.lm_nll`); all tokens still run through the blocks. k = 4 (the default
before) cuts the lm_head work, which for SmolLM2-135M is as large as 8 of its 30 blocks per
candidate, four-fold: a faster approximation. Round-1 scores equal `shortened-ppl`'s at the same stride.

Remaining deviation from SLEB's code: the calibration set is the config's (SLEB: 128 x 2048 tokens of
WikiText-2 train); the perplexity is measured as SLEB measures it, over every prediction of every
calibration sequence.

Cost: about sum over rounds of (L_r^2 / 2) block forwards plus L_r lm_head passes on 1 / loss_stride
of the calibration predictions (L_r remaining blocks in round r). SmolLM2-135M, 8 x 256 tokens, 25 %,
loss_stride 4: about 6 minutes on 2 idle CPU cores (stride 1 adds the lm_head work back).

`details`: `removed_layers` (sorted original indices), `removal_order` (original indices in the
order they were chosen), `scores` (round-1 perplexity without each block, one per original layer),
`rounds` (per round: the perplexity without each remaining block, keyed by original index, the
removed block and the perplexity after removing it), `dense_ppl`, `loss_stride`.

Example config: `pruning: {method: sleb, sparsity: 0.25}` with a `calibration:` section.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from backend.pruning.base import register_method
from backend.pruning.depth import BlockChoice, DepthPruningMethod, PerplexityParams

if TYPE_CHECKING:
    import torch

__all__ = ["SLEB", "sleb_order"]


def sleb_order(
    model: "torch.nn.Module",
    calibration: "torch.Tensor",
    count: int,
    progress: Callable[[float, str], None] = lambda fraction, text: None,
    loss_stride: int = 1,
) -> tuple[list[int], list[dict], float]:
    """Greedy removal order of `count` blocks (original indices), the per-round scores and the dense
    calibration perplexity (every `loss_stride`-th prediction scored). Does not change the model."""
    from backend.pruning.depth import BlockCache, cache_block_inputs, lm_nll, replay
    from backend.pruning.layers import get_decoder_layers

    total = len(get_decoder_layers(model))
    order: list[int] = []
    rounds: list[dict] = []
    work = sum(total - r for r in range(count))
    done = 0
    cache = cache_block_inputs(model, calibration)
    nll = [lm_nll(model, h, ids, loss_stride) for h, ids in zip(cache.final, cache.ids)]
    dense_ppl = math.exp(sum(a for a, _ in nll) / sum(b for _, b in nll))
    for r in range(count):
        kept = cache.blocks
        ppl: dict[int, float] = {}
        best_pos, best_states = -1, None
        for pos, index in enumerate(kept):
            states = [replay(model, cache, b, pos, skip=pos) for b in range(len(cache.ids))]
            nll = [lm_nll(model, s[-1], ids, loss_stride) for s, ids in zip(states, cache.ids)]
            ppl[index] = math.exp(sum(a for a, _ in nll) / sum(b for _, b in nll))
            if best_states is None or ppl[index] < ppl[kept[best_pos]]:  # strict: ties keep the lower index
                best_pos, best_states = pos, states
            del states
            done += 1
            progress(done / work, f"sleb: round {r + 1}/{count}, block {index} ({pos + 1}/{len(kept)})")
        best = kept[best_pos]
        order.append(best)
        rounds.append({"removed": best, "ppl_after": round(ppl[best], 6),
                       "ppl_without": {str(i): round(p, 6) for i, p in ppl.items()}})
        # the best candidate's run is the model without `best`: the next round's cache from there on
        cache = BlockCache(
            blocks=kept[:best_pos] + kept[best_pos + 1:],
            ids=cache.ids,
            kwargs=cache.kwargs,
            inputs=[cache.inputs[b][:best_pos] + s[:-1] for b, s in enumerate(best_states)],
            final=[s[-1] for s in best_states],
        )
        del best_states
    return order, rounds, dense_ppl


@register_method
class SLEB(DepthPruningMethod):
    """Remove decoder blocks one at a time, each time the one whose removal hurts perplexity least."""

    name = "sleb"
    description = "greedy block removal by calibration perplexity, re-measured after each removal (Song et al. 2024)"
    Params = PerplexityParams
    score_name = "ppl_without_block"
    score_rule = "greedy: lowest, re-measured per round"

    def choose_blocks(self, model: "torch.nn.Module", calibration: "torch.Tensor", count: int,
                      params: PerplexityParams, progress: Callable[[float, str], None]) -> BlockChoice:
        order, rounds, dense_ppl = sleb_order(model, calibration, count, lambda f, t: progress(0.98 * f, t),
                                              params.loss_stride)
        first = rounds[0]["ppl_without"]  # round 1 measured every block: the one score per original layer
        return BlockChoice(
            order, [first[str(i)] for i in range(len(first))],
            {"removal_order": order, "rounds": rounds, "dense_ppl": round(dense_ppl, 6),
             "loss_stride": params.loss_stride},
            note=f" (order {order})",
        )
