"""`shortened-taylor`: one-shot depth pruning by first-order Taylor importance (Kim et al. 2024,
Shortened LLaMA, https://arxiv.org/abs/2402.02834, Taylor+ criterion).

The calibration loss L is the mean next-token NLL over the calibration tokens; its gradient is
accumulated over batches. The importance of block i is the first-order estimate of the loss change
when the block's weights are zeroed (which turns a pre-norm residual block into the identity):

* `aggregate: weight` (default; the official code, Nota-NetsPresso/shortened-llm
  `anal_block_sensitivity_taylor.py` with its defaults norm_power 1 and sum reductions):
  I_i = sum over the block's parameters w of |w * dL/dw|;
* `aggregate: block`: I_i = |sum over w of w * dL/dw| (PruneBoard's earlier default).

"The block's parameters" are every parameter inside the decoder block (attention and MLP linears and
the block's norms, as the official code's `weight` tensors; biases too, for models that have them);
embeddings, the final norm and lm_head get no gradient. The n = round(sparsity x L) blocks with the
lowest importance are removed for real; ties go to the lower index.

The "+" rule (`keep_first_layers: 4`, `keep_last_layers: 2`, the official `block_prune.py` unless
`--no_plus_heuristic`): the first four and the last two blocks are never removed, whatever their
score; set both to 0 for plain Taylor. Their scores are still reported.

Gradients are only taken for block parameters, then dropped (`.grad = None`) and the original
`requires_grad` flags restored, so the model comes back as it was except for the removed blocks.

Remaining deviation from the official code: the calibration set is the config's (the official: 10
BookCorpus samples of 128 tokens), and the gradient is that of the mean loss over all calibration
tokens (the official sums the gradients of per-batch mean losses: the same up to a constant factor
when batches are equal).

`details`: `removed_layers`, `scores` (importance per block), `aggregate`, `keep_first_layers`,
`keep_last_layers`, `calibration_loss`.
Example config: `pruning: {method: shortened-taylor, sparsity: 0.25}` with a `calibration:` section.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

from backend.pruning.base import KeepEdgeLayers, register_method
from backend.pruning.depth import BlockChoice, DepthPruningMethod, lowest

if TYPE_CHECKING:
    import torch

__all__ = ["ShortenedTaylor", "TaylorParams", "taylor_importance"]

BATCH_SIZE = 4
"""Calibration sequences per forward/backward: bounds activation memory; does not change the scores."""


class TaylorParams(KeepEdgeLayers):
    """`aggregate`: `weight` = sum |w * dL/dw| per block (the official code's); `block` = |sum w * dL/dw|.
    `keep_first_layers`, `keep_last_layers`: blocks never removed (Taylor+: 4 and 2; 0 and 0: plain Taylor)."""

    aggregate: Literal["block", "weight"] = "weight"


def taylor_importance(
    model: "torch.nn.Module",
    calibration: "torch.Tensor",
    aggregate: str = "weight",
    progress: Callable[[float, str], None] = lambda fraction, text: None,
) -> tuple[list[float], float]:
    """(importance per decoder block, mean calibration loss); see the module docstring."""
    import torch

    from backend.pruning.layers import get_decoder_layers

    layers = get_decoder_layers(model)
    device = model.get_input_embeddings().weight.device
    flags = {p: p.requires_grad for p in model.parameters()}
    block_params = [list(layer.parameters()) for layer in layers]
    wanted = {p for group in block_params for p in group}
    batches = calibration.split(BATCH_SIZE)
    targets = sum(int(b.shape[0]) * (int(b.shape[1]) - 1) for b in batches)
    loss_sum = 0.0
    try:
        for p in model.parameters():
            p.requires_grad_(p in wanted)
            p.grad = None
        with torch.enable_grad():
            for b, batch in enumerate(batches):
                batch = batch.to(device)
                out = model(input_ids=batch, labels=batch, use_cache=False)
                weight = batch.shape[0] * (batch.shape[1] - 1) / targets
                (out.loss * weight).backward()
                loss_sum += float(out.loss.detach()) * weight
                progress(0.95 * (b + 1) / len(batches), f"shortened-taylor: gradients, batch {b + 1}/{len(batches)}")
        scores = []
        with torch.no_grad():
            for group in block_params:
                terms = [(p.detach().double() * p.grad.double()) for p in group if p.grad is not None]
                if aggregate == "block":
                    value = abs(sum(float(t.sum()) for t in terms))
                else:
                    value = sum(float(t.abs().sum()) for t in terms)
                scores.append(value)
    finally:
        for p, flag in flags.items():
            p.grad = None
            p.requires_grad_(flag)
    return scores, loss_sum


@register_method
class ShortenedTaylor(DepthPruningMethod):
    """Remove the decoder blocks with the lowest first-order Taylor importance on calibration data."""

    name = "shortened-taylor"
    description = ("one-shot block removal by first-order Taylor importance sum |w * dL/dw|, first 4 and last 2 "
                   "blocks kept (Shortened LLaMA Taylor+, Kim et al. 2024)")
    Params = TaylorParams
    score_name = "taylor_importance"
    score_rule = "lowest removed, except the kept first and last blocks"

    def choose_blocks(self, model: "torch.nn.Module", calibration: "torch.Tensor", count: int,
                      params: TaylorParams, progress: Callable[[float, str], None]) -> BlockChoice:
        from backend.pruning.layers import get_decoder_layers

        candidates = params.prunable_layers(len(get_decoder_layers(model)), self.name)
        if count > len(candidates):
            raise ValueError(f"{self.name}: removing {count} blocks needs more than the {len(candidates)} that "
                             f"keep_first_layers {params.keep_first_layers} and keep_last_layers "
                             f"{params.keep_last_layers} leave")
        scores, loss = taylor_importance(model, calibration, params.aggregate, progress)
        chosen = lowest([scores[i] for i in candidates], count)
        return BlockChoice([candidates[i] for i in chosen], scores,
                           {"aggregate": params.aggregate, "keep_first_layers": params.keep_first_layers,
                            "keep_last_layers": params.keep_last_layers, "calibration_loss": round(loss, 6)})
