"""`llm-pruner`: structural width pruning with first-order Taylor importance (Ma et al. 2023,
https://arxiv.org/abs/2305.11627), without the LoRA recovery stage.

Dependency-aware groups (see `backend.pruning.width`): an attention head group is one KV head with
its query heads (q/k/v rows + o_proj columns; whole KV groups keep GQA consistent), an MLP channel
is one gate/up row + down_proj column. Importance of a group g is the first-order Taylor estimate of
the loss change when all its weights are removed, I_g = |sum over the group's weights of w * dL/dw|
(the "vector-wise" estimate: one sum over every weight of every matrix slice the group owns), with
dL/dw the gradient of the mean next-token loss over the calibration set (accumulated over batches).

`sparsity` = fraction of decoder-block parameters removed. Budget: a common ratio r of the
removable parameters (everything but norms) is applied to heads and channels; head groups are
removed first (round(r x groups)), then MLP channels make up the rest so the parameter count lands
within half an MLP channel of the target.

`scope`: `per-layer` (every layer loses the same number of head groups and channels, the lowest
within each layer) or `global` (the lowest head groups across all layers, then the lowest channels
across all layers; every layer keeps at least one head group and one channel).

Example config:
    pruning: {method: llm-pruner, sparsity: 0.25, params: {scope: per-layer}}
    calibration: {source: text, path: wikitext2/valid.txt, num_samples: 32, seq_len: 512}
Lifecycle: plan counts (errors before any work) -> gradients on calibration -> group importance ->
choose -> remove for real -> record per-layer widths in the config (reload: `load_pruned`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

from pydantic import BaseModel, ConfigDict

from backend.pruning.base import register_method
from backend.pruning.width import WidthChoice, WidthPruningMethod

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["LLMPruner", "LLMPrunerParams", "plan_counts", "taylor_importance"]

BATCH_SIZE = 2
"""Calibration sequences per forward/backward (bounds memory; gradients are summed exactly)."""


class LLMPrunerParams(BaseModel):
    """`scope`: `per-layer` (same counts in every layer) or `global` (ranked across layers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Literal["per-layer", "global"] = "per-layer"


def plan_counts(geos: list, target: int, scope: str) -> tuple[list[int], list[int] | int]:
    """How many head groups (per layer) and MLP channels (per layer, or a global total) to remove.

    Raises ValueError when the target cannot be met with at least one head group and one channel
    left in every layer.
    """
    removable = sum(g.groups * g.group_cost + g.channels * g.channel_cost for g in geos)
    ratio = target / removable
    if ratio >= 1:
        raise ValueError(f"llm-pruner: removing {target} parameters needs more than every head and channel")
    if scope == "per-layer":
        heads = []
        for i, g in enumerate(geos):
            n = round(ratio * g.groups)
            if n >= g.groups:
                raise ValueError(
                    f"llm-pruner: sparsity removes {n} of {g.groups} attention head groups (KV groups of "
                    f"{g.rep} query heads) in layer {i}, leaving it no heads; use a lower sparsity or scope: global")
            heads.append(n)
    else:
        total_groups = sum(g.groups for g in geos)
        n = round(ratio * total_groups)
        if n > total_groups - len(geos):
            raise ValueError(f"llm-pruner: sparsity removes {n} of {total_groups} head groups, more than "
                             f"keeping one per layer allows ({total_groups - len(geos)})")
        heads = [n]  # a global count, spread by importance
    head_params = (sum(n * g.group_cost for n, g in zip(heads, geos)) if scope == "per-layer"
                   else heads[0] * geos[0].group_cost)
    channel_cost = geos[0].channel_cost
    channels_total = max(0, round((target - head_params) / channel_cost))
    if scope == "per-layer":
        base, extra = divmod(channels_total, len(geos))
        per_layer = [base + (1 if i < extra else 0) for i in range(len(geos))]
        for i, (n, g) in enumerate(zip(per_layer, geos)):
            if n >= g.channels:
                raise ValueError(f"llm-pruner: sparsity removes {n} of {g.channels} MLP channels in layer {i}")
        return heads, per_layer
    if channels_total > sum(g.channels - 1 for g in geos):
        raise ValueError("llm-pruner: sparsity removes more MLP channels than keeping one per layer allows")
    return heads, channels_total


def _check_uniform_costs(geos: list) -> None:
    if len({(g.group_cost, g.channel_cost) for g in geos}) != 1:
        raise ValueError("llm-pruner: layers with different head or channel shapes are not supported")


def taylor_importance(
    model: "nn.Module", calibration: "torch.Tensor",
    progress: Callable[[float, str], None] = lambda f, t: None,
) -> tuple[list["torch.Tensor"], list["torch.Tensor"]]:
    """Per layer: head-group importances (groups,) and MLP-channel importances (channels,) (float64)."""
    import torch

    from backend.pruning.layers import get_decoder_layers
    from backend.pruning.width import geometry

    layers = get_decoder_layers(model)
    linears = [(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj) for layer in layers]
    weights = [lin.weight for group in linears for lin in group]
    flags = {id(p): p.requires_grad for p in model.parameters()}
    grads = {id(w): torch.zeros_like(w, dtype=torch.float32) for w in weights}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        batches = calibration.split(BATCH_SIZE)
        total = calibration.shape[0]
        for b, batch in enumerate(batches):
            batch = batch.to(device)
            with torch.enable_grad():
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                (loss * (batch.shape[0] / total)).backward()
            for w in weights:
                grads[id(w)].add_(w.grad.float())
                w.grad = None
            progress((b + 1) / len(batches), f"llm-pruner: gradients, batch {b + 1}/{len(batches)}")
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
        model.train(was_training)

    heads, channels = [], []
    with torch.no_grad():
        for layer, (q, k, v, o, gate, up, down) in zip(layers, linears):
            geo = geometry(layer)

            def wg(lin):
                return (lin.weight.double() * grads[id(lin.weight)].double())

            g = geo.groups
            head = (wg(q).reshape(g, -1).sum(1) + wg(k).reshape(g, -1).sum(1) + wg(v).reshape(g, -1).sum(1)
                    + wg(o).reshape(o.out_features, g, -1).sum((0, 2)))
            heads.append(head.abs().cpu())
            chan = wg(gate).sum(1) + wg(up).sum(1) + wg(down).sum(0)
            channels.append(chan.abs().cpu())
    return heads, channels


def _lowest(scores: "torch.Tensor", count: int) -> list[int]:
    """Indices of the `count` lowest scores, ties to the lower index."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])


def _global_lowest(scores: list["torch.Tensor"], count: int) -> dict[int, list[int]]:
    """The `count` lowest units across layers, every layer keeping at least one."""
    units = sorted(((float(s), layer, i) for layer, layer_scores in enumerate(scores)
                    for i, s in enumerate(layer_scores)), key=lambda t: (t[0], t[1], t[2]))
    left = [len(s) for s in scores]
    chosen: dict[int, list[int]] = {}
    for _, layer, i in units:
        if count == 0:
            break
        if left[layer] > 1:
            chosen.setdefault(layer, []).append(i)
            left[layer] -= 1
            count -= 1
    return chosen


@register_method
class LLMPruner(WidthPruningMethod):
    """Remove attention head groups and MLP channels with the lowest first-order Taylor importance."""

    name = "llm-pruner"
    description = "width pruning of head groups and MLP channels by first-order Taylor importance (Ma et al. 2023)"
    Params = LLMPrunerParams

    def choose_units(self, model, calibration, geos, sparsity, target, params, progress) -> WidthChoice:
        _check_uniform_costs(geos)
        heads, channels = plan_counts(geos, target, params.scope)

        head_scores, channel_scores = taylor_importance(model, calibration, lambda f, t: progress(0.9 * f, t))
        if params.scope == "per-layer":
            drop_groups = {i: _lowest(head_scores[i], n) for i, n in enumerate(heads)}
            drop_channels = {i: _lowest(channel_scores[i], n) for i, n in enumerate(channels)}
        else:
            drop_groups = _global_lowest(head_scores, heads[0])
            drop_channels = _global_lowest(channel_scores, channels)
        return WidthChoice(drop_groups, drop_channels, {
            "scope": params.scope,
            "importance": "first-order Taylor |sum w * dL/dw| per group",
            "head_importance": [[round(float(x), 8) for x in s] for s in head_scores],
        })
