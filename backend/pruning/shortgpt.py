"""`shortgpt`: depth pruning by Block Influence (Men et al. 2024, https://arxiv.org/abs/2403.03853).

For each decoder block i, BI_i = 1 - mean over calibration tokens of cos(h_in, h_out), where h_in and
h_out are the hidden states entering and leaving block i. Blocks that barely change their input
(low BI) are redundant; the n = round(sparsity x L) lowest-BI blocks are removed for real, so the
pruned model is smaller and faster. Ties go to the lower index (removed first).

The last block: the paper publishes no code; the reproduction its readers use (sramshetty/ShortGPT
`short_hf.py`) scores block i on consecutive entries of Hugging Face's `output_hidden_states`,
whose last entry is the final norm's output, so the last block's h_out is norm(block output).
That is the default, `last_block_output: final-norm`; `raw` compares the last block's own output,
like every other block's (PruneBoard's earlier choice). The final RMSNorm rescales each channel by its weight,
so the two can rank the last block differently.

Remaining deviations from the script: calibration comes as fixed windows (`calibration:`), not its
sliding 1024-token windows with stride 256 over padded prompts; cosines are accumulated in float64.

Example config: `pruning: {method: shortgpt, sparsity: 0.25, params: {last_block_output: final-norm}}`
with a `calibration:` section.
Lifecycle: per calibration batch, replay the blocks one by one and accumulate cosines -> rank ->
`remove_layers` -> measure parameters.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

from pydantic import BaseModel, ConfigDict

from backend.pruning.base import register_method
from backend.pruning.depth import BlockChoice, DepthPruningMethod

if TYPE_CHECKING:
    import torch

__all__ = ["ShortGPT", "ShortGPTParams", "block_influence", "layers_to_remove"]

BATCH_SIZE = 4
"""Calibration sequences per forward: bounds activation memory; does not change the scores."""


class ShortGPTParams(BaseModel):
    """`last_block_output`: what the last block's input is compared with: `final-norm` (its output
    after the model's final norm, as the paper's script compares) or `raw` (its own output)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    last_block_output: Literal["final-norm", "raw"] = "final-norm"


def layers_to_remove(scores: list[float], count: int) -> list[int]:
    """Indices of the `count` lowest scores, ties to the lower index, returned sorted (`depth.lowest`)."""
    from backend.pruning.depth import lowest

    return lowest(scores, count)


def block_influence(
    model: "torch.nn.Module",
    calibration: "torch.Tensor",
    progress: Callable[[float, str], None] = lambda fraction, text: None,
    last_block_output: str = "final-norm",
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
                compared = out
                if i == len(layers) - 1 and last_block_output == "final-norm":
                    compared = model.model.norm(out)
                cos = F.cosine_similarity(hidden.float(), compared.float(), dim=-1)
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
    Params = ShortGPTParams

    def choose_blocks(self, model: "torch.nn.Module", calibration: "torch.Tensor", count: int,
                      params: ShortGPTParams, progress: Callable[[float, str], None]) -> BlockChoice:
        scores = block_influence(model, calibration, lambda f, text: progress(0.95 * f, text),
                                 params.last_block_output)
        # the details keys every depth method shares (backend.pruning.depth), plus `block_influence`
        return BlockChoice(layers_to_remove(scores, count), scores,
                           {"block_influence": [round(s, 8) for s in scores],
                            "last_block_output": params.last_block_output})
