"""`shortgpt`: depth pruning by Block Influence (Men et al. 2024, https://arxiv.org/abs/2403.03853).

For each decoder block i, BI_i = 1 - mean over calibration tokens of cos(h_in, h_out), where h_in and
h_out are the hidden states entering and leaving block i. Blocks that barely change their input
(low BI) are redundant; the n = round(sparsity x L) lowest-BI blocks are removed for real, so the
pruned model is smaller and faster. Ties go to the lower index (removed first).

Unlike the paper's script, which compares `output_hidden_states` (whose last entry has the final norm
applied), h_out here is the block's own output, so the last block is scored like the others.

Example config: `pruning: {method: shortgpt, sparsity: 0.25}` with a `calibration:` section.
Lifecycle: per calibration batch, replay the blocks one by one and accumulate cosines -> rank ->
`remove_layers` -> measure parameters.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel

from backend.pruning.base import register_method
from backend.pruning.depth import BlockChoice, DepthPruningMethod

if TYPE_CHECKING:
    import torch

__all__ = ["ShortGPT", "block_influence", "layers_to_remove"]

BATCH_SIZE = 4
"""Calibration sequences per forward: bounds activation memory; does not change the scores."""


def layers_to_remove(scores: list[float], count: int) -> list[int]:
    """Indices of the `count` lowest scores, ties to the lower index, returned sorted (`depth.lowest`)."""
    from backend.pruning.depth import lowest

    return lowest(scores, count)


def block_influence(
    model: "torch.nn.Module",
    calibration: "torch.Tensor",
    progress: Callable[[float, str], None] = lambda fraction, text: None,
) -> list[float]:
    """BI of every decoder block over the calibration tokens (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from backend.pruning.layers import (
        capture_layer_inputs,
        get_decoder_layers,
        run_layer,
    )

    layers = get_decoder_layers(model)
    device = next(model.parameters()).device
    batches = calibration.split(BATCH_SIZE)
    cos_sums = torch.zeros(len(layers), dtype=torch.float64)
    tokens = 0
    with torch.no_grad():
        for b, batch in enumerate(batches):
            inputs = capture_layer_inputs(model, batch.to(device))
            hidden = inputs.hidden
            for i, layer in enumerate(layers):
                out = run_layer(layer, hidden, inputs.kwargs)
                cos = F.cosine_similarity(hidden.float(), out.float(), dim=-1)
                cos_sums[i] += cos.double().sum().cpu()
                hidden = out
            tokens += batch.numel()
            progress((b + 1) / len(batches), f"shortgpt: block influence, batch {b + 1}/{len(batches)}")
    return (1.0 - cos_sums / tokens).tolist()


@register_method
class ShortGPT(DepthPruningMethod):
    """Remove the decoder blocks with the lowest Block Influence on calibration data."""

    name = "shortgpt"
    description = "remove the decoder layers with the lowest Block Influence (Men et al. 2024)"
    score_name = "block_influence"

    def choose_blocks(self, model: "torch.nn.Module", calibration: "torch.Tensor", count: int,
                      params: BaseModel, progress: Callable[[float, str], None]) -> BlockChoice:
        scores = block_influence(model, calibration, lambda f, text: progress(0.95 * f, text))
        # the details keys every depth method shares (backend.pruning.depth), plus `block_influence`
        return BlockChoice(layers_to_remove(scores, count), scores,
                           {"block_influence": [round(s, 8) for s in scores]})
