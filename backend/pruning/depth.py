"""What the depth methods (shortgpt, sleb, shortened-ppl, shortened-taylor) share.

* `depth_count(method, sparsity, total)`: n = round(sparsity x L), with clear errors for n = 0 and
  n = L (raised before any calibration work);
* `cache_block_inputs(...)`: replays the decoder one block at a time and keeps the hidden states
  entering every listed block, per calibration batch (what SLEB and Shortened-PPL restart from);
* `lm_nll(model, hidden, ids, loss_stride)`: summed next-token NLL of the calibration ids from the
  last block's output hidden states (final norm + lm_head), so "perplexity with block i removed" only
  re-runs the blocks after i. With `loss_stride` k only every k-th next-token prediction of each
  sequence is scored (predictions k, 2k, 3k, ... counted from the first): the blocks still run on every
  token (each scored prediction sees its whole prefix), only the lm_head and the softmax shrink k-fold.
  The lm_head is the single most expensive layer of a small model (SmolLM2-135M: 576 x 49152, as
  much compute per token as 8 of its 30 blocks), so k = 4 makes SLEB, which runs it once per
  candidate per round, much faster; the default is k = 1 (every prediction, as the papers score);
* `replay(model, cache, b, start, skip)`: the hidden states of batch b entering every cached block
  from `start` on (one left out), then the final output: what SLEB's next round starts from;
* `depth_report(...)`: the report every depth method writes, with the same `details` keys:
  `removed_layers` (sorted original indices), `scores` (one per original layer), `score_name`,
  `score_rule` (which scores are removed), `layers_before`, `layers_after`, `tie_break`.
* `DepthPruningMethod.prune`: the lifecycle every depth method shares (default params, calibration
  required, n from `depth_count` before any work, remove the chosen blocks, `depth_report`); a method
  only implements `choose_blocks`, returning a `BlockChoice`.

Torch is imported inside functions only.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, Field

from backend.pruning.base import PruneReport, PruningMethod

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["BATCH_SIZE", "BlockCache", "BlockChoice", "DepthPruningMethod", "PerplexityParams", "cache_block_inputs",
           "depth_count", "depth_report", "lm_nll", "lowest", "nll_from", "replay"]

BATCH_SIZE = 4
"""Calibration sequences per forward: bounds activation (and logits) memory; does not change scores."""


class PerplexityParams(BaseModel):
    """Knobs of the perplexity-scored depth methods (`shortened-ppl`, `sleb`).

    `loss_stride`: score every k-th next-token prediction of each calibration sequence (1 = all,
    the papers' setting; larger is a faster approximation).
    Exact on the positions it keeps: every block still sees every token; only the lm_head/softmax
    work shrinks k-fold.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss_stride: int = Field(1, ge=1)


def depth_count(method: str, sparsity: float, total: int) -> int:
    """n = round(sparsity x L) blocks to remove; ValueError when that is 0 or every block."""
    count = round(sparsity * total)
    if count < 1:
        raise ValueError(f"{method}: sparsity {sparsity} removes round({sparsity} x {total}) = 0 of "
                         f"{total} layers; use at least {1 / total:.4f} (one layer)")
    if count >= total:
        raise ValueError(f"{method}: sparsity {sparsity} would remove all {total} layers")
    return count


def lowest(scores: Sequence[float], count: int) -> list[int]:
    """Indices of the `count` lowest scores, ties to the lower index, returned sorted."""
    ranked = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(ranked[:count])


@dataclass
class BlockCache:
    """Per calibration batch: its token ids, the block kwargs (mask, rotary embeddings) and the
    hidden states entering each cached block (`inputs[b][k]` enters `blocks[k]`)."""

    blocks: list[int]
    ids: list["torch.Tensor"]
    kwargs: list[dict[str, Any]]
    inputs: list[list["torch.Tensor"]]
    final: list["torch.Tensor"]
    """Output of the last listed block, per batch."""


def cache_block_inputs(model: "nn.Module", calibration: "torch.Tensor", blocks: Sequence[int] | None = None,
                       batch_size: int = BATCH_SIZE) -> BlockCache:
    """Run the calibration through `blocks` (original indices, in order; default all) and cache the
    input of every one of them. Skipped blocks are simply not run (as if removed)."""
    import torch

    from backend.pruning.layers import (
        capture_layer_inputs,
        get_decoder_layers,
        run_layer,
    )

    layers = get_decoder_layers(model)
    blocks = list(range(len(layers))) if blocks is None else list(blocks)
    device = model.get_input_embeddings().weight.device
    cache = BlockCache(blocks, [], [], [], [])
    with torch.no_grad():
        for batch in calibration.split(batch_size):
            batch = batch.to(device)
            captured = capture_layer_inputs(model, batch)
            hidden, per_block = captured.hidden, []
            for index in blocks:
                per_block.append(hidden)
                hidden = run_layer(layers[index], hidden, captured.kwargs)
            cache.ids.append(batch)
            cache.kwargs.append(captured.kwargs)
            cache.inputs.append(per_block)
            cache.final.append(hidden)
    return cache


def lm_nll(model: "nn.Module", hidden: "torch.Tensor", ids: "torch.Tensor", loss_stride: int = 1) -> tuple[float, int]:
    """(summed next-token NLL, predictions scored) of `ids` given the last block's output `hidden`;
    only every `loss_stride`-th prediction is scored (module docstring)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        normed = model.model.norm(hidden[:, :-1][:, loss_stride - 1::loss_stride])
        logits = model.get_output_embeddings()(normed).float()
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        targets = ids[:, 1:][:, loss_stride - 1::loss_stride].to(logits.device)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return float(nll.double().item()), int(targets.numel())


def replay(model: "nn.Module", cache: BlockCache, b: int, start: int, skip: int | None = None) -> list["torch.Tensor"]:
    """Batch b from the cached input of `cache.blocks[start]` through `cache.blocks[start:]` with position
    `skip` left out: the hidden states entering each block that runs, then the final output."""
    import torch

    from backend.pruning.layers import get_decoder_layers, run_layer

    layers = get_decoder_layers(model)
    hidden = cache.inputs[b][start]
    states = []
    with torch.no_grad():
        for pos in range(start, len(cache.blocks)):
            if pos != skip:
                states.append(hidden)
                hidden = run_layer(layers[cache.blocks[pos]], hidden, cache.kwargs[b])
    states.append(hidden)
    return states


def nll_from(model: "nn.Module", cache: BlockCache, start: int, skip: int | None = None, loss_stride: int = 1) -> float:
    """Mean NLL per scored prediction when the cached input of `cache.blocks[start]` runs through
    `cache.blocks[start:]` with position `skip` left out (None: none left out)."""
    total, count = 0.0, 0
    for b, ids in enumerate(cache.ids):
        nll, n = lm_nll(model, replay(model, cache, b, start, skip)[-1], ids, loss_stride)
        total += nll
        count += n
    return total / count


def depth_report(method: str, model: "nn.Module", sparsity: float, params_before: int, total: int,
                 removed: list[int], scores: Sequence[float], score_name: str, score_rule: str,
                 **extra: Any) -> PruneReport:
    """The common depth report, measured on the pruned model."""
    from backend.models.loading import count_parameters

    return PruneReport(
        method=method,
        requested_sparsity=sparsity,
        achieved_sparsity=len(removed) / total,
        params_before=params_before,
        params_after=count_parameters(model),
        details={
            "removed_layers": sorted(removed),
            "scores": [round(float(s), 8) for s in scores],
            "score_name": score_name,
            "score_rule": score_rule,
            "layers_before": total,
            "layers_after": total - len(removed),
            "tie_break": "lower index removed first",
            **extra,
        },
    )


@dataclass
class BlockChoice:
    """What a depth method chose: the blocks to remove (original indices, any order), one score per
    original block, its own `details` keys and a suffix for the final progress text."""

    remove: list[int]
    scores: Sequence[float]
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""


ProgressFn = Callable[[float, str], None]


class DepthPruningMethod(PruningMethod):
    """Base of the methods that remove whole decoder blocks; subclasses choose which (`choose_blocks`)."""

    family = "depth"
    needs_calibration = True
    sparsity_meaning = "fraction of decoder layers removed: n = round(sparsity x L)"
    score_name: ClassVar[str]
    score_rule: ClassVar[str] = "lowest removed"

    @classmethod
    def check_sparsity(cls, sparsity: float) -> None:
        # Submit-time check: L is unknown then; n = 0 and n = L are rejected in `prune`.
        if sparsity <= 0:
            raise ValueError(f"{cls.name} needs a sparsity > 0 (the fraction of decoder layers to remove)")

    @abc.abstractmethod
    def choose_blocks(self, model: "nn.Module", calibration: "torch.Tensor", count: int, params: BaseModel,
                      progress: ProgressFn) -> BlockChoice:
        """Score the blocks of the unchanged model and choose `count` to remove; progress up to < 1."""

    def prune(self, model: "nn.Module", sparsity: float, params: BaseModel | None,
              calibration: "torch.Tensor | None", progress: ProgressFn) -> PruneReport:
        from backend.models.loading import count_parameters
        from backend.pruning.layers import get_decoder_layers, remove_layers

        params = params if params is not None else self.Params()
        if calibration is None:
            raise ValueError(f"{self.name} needs calibration data")
        total = len(get_decoder_layers(model))
        count = depth_count(self.name, sparsity, total)
        params_before = count_parameters(model)
        choice = self.choose_blocks(model, calibration, count, params, progress)
        removed = remove_layers(model, choice.remove)
        progress(1.0, f"{self.name}: removed layers {removed}{choice.note}")
        return depth_report(self.name, model, sparsity, params_before, total, removed, choice.scores,
                            self.score_name, self.score_rule, **choice.details)
