"""`llm-pruner`: structural width pruning with Taylor importance (Ma et al. 2023,
https://arxiv.org/abs/2305.11627), without the LoRA recovery stage.

Dependency-aware groups (see `backend.pruning.width`): an attention head group is one KV head with
its query heads (q/k/v rows + o_proj columns; whole KV groups keep GQA consistent), an MLP channel
is one gate/up row + down_proj column. A group's weights split into weight vectors: each q/k/v row,
o_proj column, gate/up row and down_proj column it owns. With dL/dw the gradient of the mean
next-token loss over the calibration set and s = w * dL/dw, `importance` is:

* `element1` (default; the official code's default, `hf_prune.py --taylor param_first`): the sum
  over every weight of the group of |s| (the paper's element-wise first order, summed over the group);
* `element2` (`--taylor param_mix`): the sum of |s - 1/2 w^2 F|, F the diagonal Fisher estimate of
  the Hessian: the mean over calibration sequences of each sequence's squared gradient (the official
  accumulates it one example at a time, as here);
* `vector` (`--taylor vectorize`): the sum over the group's weight vectors of |sum of s over the
  vector| (the paper's vector-wise importance, aggregated by summation);
* `whole-group`: |sum of s over every weight of the group| (PruneBoard's earlier rule).

Layer range (`keep_first_layers: 4`, `keep_last_layers: 2`, the official LLaMA recipe's
`--block_attention_layer_start 4 --block_attention_layer_end 30` and the same for the MLP, of 32
layers): only the layers between are pruned; the others keep every head and channel.

`sparsity` = fraction of all decoder-block parameters removed, taken from the pruned layers only (so
they lose a larger share). Budget: a common ratio r of the pruned layers' removable parameters
(everything but norms) is applied to heads and channels; head groups are removed first
(round(r x groups)), then MLP channels make up the rest so the parameter count lands within half an
MLP channel of the target.

`scope`: `per-layer` (every pruned layer loses the same number of head groups and channels, the
lowest within each layer, as the official local pruning) or `global` (the lowest head groups across
the pruned layers, then the lowest channels; every layer keeps at least one head group and one channel).

Remaining deviations from the official code: the ratio is of parameters, not of each layer's groups
(the official `pruning_ratio` 0.25 removes a quarter of the heads and channels of every pruned layer,
about 20 % of the model); the calibration set is the config's (the official: 10 BookCorpus samples
of 64 tokens); channels of the pruned rows are dropped, not merged into the kept ones.

Example config:
    pruning: {method: llm-pruner, sparsity: 0.25, params: {scope: per-layer, importance: element1}}
    calibration: {source: text, path: wikitext2/valid.txt, num_samples: 32, seq_len: 512}
Lifecycle: plan counts (errors before any work) -> gradients on calibration -> group importance ->
choose -> remove for real -> record per-layer widths in the config (reload: `load_pruned`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

from backend.pruning.base import KeepEdgeLayers, register_method
from backend.pruning.width import WidthChoice, WidthPruningMethod

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["IMPORTANCES", "LLMPruner", "LLMPrunerParams", "plan_counts", "taylor_importance"]

BATCH_SIZE = 2
"""Calibration sequences per forward/backward (bounds memory; gradients are summed exactly)."""
IMPORTANCES = ("element1", "element2", "vector", "whole-group")


class LLMPrunerParams(KeepEdgeLayers):
    """`scope`: `per-layer` (same counts in every pruned layer) or `global` (ranked across them).
    `importance`: `element1`, `element2`, `vector` or `whole-group` (module docstring).
    `keep_first_layers`, `keep_last_layers`: layers left unpruned (the LLaMA recipe: 4 and 2)."""

    scope: Literal["per-layer", "global"] = "per-layer"
    importance: Literal["element1", "element2", "vector", "whole-group"] = "element1"


def plan_counts(geos: list, target: int, scope: str,
                layers: list[int] | None = None) -> tuple[list[int], list[int] | int]:
    """How many head groups (per pruned layer) and MLP channels (per pruned layer, or a global total)
    to remove; `geos` are the pruned layers' shapes, `layers` their indices (for messages; default 0..).

    Raises ValueError when the target cannot be met with at least one head group and one channel
    left in every layer.
    """
    layers = list(range(len(geos))) if layers is None else layers
    removable = sum(g.groups * g.group_cost + g.channels * g.channel_cost for g in geos)
    ratio = target / removable
    if ratio >= 1:
        raise ValueError(f"llm-pruner: removing {target} parameters needs more than every head and channel "
                         f"of the {len(geos)} pruned layers")
    if scope == "per-layer":
        heads = []
        for i, g in enumerate(geos):
            n = round(ratio * g.groups)
            if n >= g.groups:
                raise ValueError(
                    f"llm-pruner: sparsity removes {n} of {g.groups} attention head groups (KV groups of "
                    f"{g.rep} query heads) in layer {layers[i]}, leaving it no heads; use a lower sparsity, fewer "
                    "kept layers or scope: global")
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
                raise ValueError(f"llm-pruner: sparsity removes {n} of {g.channels} MLP channels in layer {layers[i]}")
        return heads, per_layer
    if channels_total > sum(g.channels - 1 for g in geos):
        raise ValueError("llm-pruner: sparsity removes more MLP channels than keeping one per layer allows")
    return heads, channels_total


def _check_uniform_costs(geos: list) -> None:
    if len({(g.group_cost, g.channel_cost) for g in geos}) != 1:
        raise ValueError("llm-pruner: layers with different head or channel shapes are not supported")


def _gradients(model: "nn.Module", weights: list["torch.Tensor"], calibration: "torch.Tensor", fisher: bool,
               progress: Callable[[float, str], None]) -> tuple[dict, dict]:
    """(gradient of the mean calibration loss, and with `fisher` the mean over sequences of each
    sequence's squared gradient) per weight, float32, keyed by id(weight)."""
    import torch

    flags = {id(p): p.requires_grad for p in model.parameters()}
    grads = {id(w): torch.zeros_like(w, dtype=torch.float32) for w in weights}
    squares = {id(w): torch.zeros_like(w, dtype=torch.float32) for w in weights} if fisher else {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        # The Fisher term needs each sequence's own gradient: one sequence per backward then.
        batches = calibration.split(1 if fisher else BATCH_SIZE)
        total = calibration.shape[0]
        for b, batch in enumerate(batches):
            batch = batch.to(device)
            with torch.enable_grad():
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                (loss * (batch.shape[0] / total)).backward()
            for w in weights:
                grads[id(w)].add_(w.grad.float())
                if fisher:  # the grad of this sequence alone is total x its weighted grad
                    squares[id(w)].add_((w.grad.float() * total).pow(2), alpha=1.0 / total)
                w.grad = None
            progress((b + 1) / len(batches), f"llm-pruner: gradients, batch {b + 1}/{len(batches)}")
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
        model.train(was_training)
    return grads, squares


def _reduce(salience: "torch.Tensor", importance: str, rows: bool, units: int) -> "torch.Tensor":
    """Per unit (`units` equal slices of the rows, or of the columns when not `rows`) of one matrix's
    salience: the sum of |s| (element-wise), the sum over its vectors of |sum s| (vector), or the plain
    sum (whole-group: the abs is taken over the whole group later)."""
    matrix = salience if rows else salience.t()
    if importance in ("element1", "element2"):
        per_vector = matrix.abs().sum(1)
    elif importance == "vector":
        per_vector = matrix.sum(1).abs()
    else:
        per_vector = matrix.sum(1)
    return per_vector.reshape(units, -1).sum(1)


def taylor_importance(
    model: "nn.Module", calibration: "torch.Tensor", importance: str = "element1",
    progress: Callable[[float, str], None] = lambda f, t: None,
) -> tuple[list["torch.Tensor"], list["torch.Tensor"]]:
    """Per layer: head-group importances (groups,) and MLP-channel importances (channels,) (float64)."""
    import torch

    from backend.pruning.layers import get_decoder_layers
    from backend.pruning.width import geometry

    if importance not in IMPORTANCES:
        raise ValueError(f"llm-pruner: importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    layers = get_decoder_layers(model)
    linears = [(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj) for layer in layers]
    weights = [lin.weight for group in linears for lin in group]
    grads, squares = _gradients(model, weights, calibration, importance == "element2", progress)

    heads, channels = [], []
    with torch.no_grad():
        for layer, (q, k, v, o, gate, up, down) in zip(layers, linears):
            geo = geometry(layer)

            def salience(lin):
                w = lin.weight.double()
                s = w * grads[id(lin.weight)].double()
                if importance == "element2":
                    s = s - 0.5 * w * w * squares[id(lin.weight)].double()
                return s

            g = geo.groups
            head = (_reduce(salience(q), importance, True, g) + _reduce(salience(k), importance, True, g)
                    + _reduce(salience(v), importance, True, g) + _reduce(salience(o), importance, False, g))
            chan = (_reduce(salience(gate), importance, True, geo.channels)
                    + _reduce(salience(up), importance, True, geo.channels)
                    + _reduce(salience(down), importance, False, geo.channels))
            heads.append(head.abs().cpu())
            channels.append(chan.abs().cpu())
    return heads, channels


def _lowest(scores: "torch.Tensor", count: int) -> list[int]:
    """Indices of the `count` lowest scores, ties to the lower index."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])


def _global_lowest(scores: dict[int, "torch.Tensor"], count: int) -> dict[int, list[int]]:
    """The `count` lowest units across the given layers, every layer keeping at least one."""
    units = sorted(((float(s), layer, i) for layer, layer_scores in scores.items()
                    for i, s in enumerate(layer_scores)), key=lambda t: (t[0], t[1], t[2]))
    left = {layer: len(s) for layer, s in scores.items()}
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
    """Remove attention head groups and MLP channels with the lowest Taylor importance."""

    name = "llm-pruner"
    description = ("width pruning of head groups and MLP channels by Taylor importance, first 4 and last 2 "
                   "layers kept (Ma et al. 2023)")
    Params = LLMPrunerParams

    def choose_units(self, model, calibration, geos, sparsity, target, params, progress) -> WidthChoice:
        pruned = params.prunable_layers(len(geos), self.name)
        _check_uniform_costs([geos[i] for i in pruned])
        heads, channels = plan_counts([geos[i] for i in pruned], target, params.scope, pruned)

        head_scores, channel_scores = taylor_importance(model, calibration, params.importance,
                                                        lambda f, t: progress(0.9 * f, t))
        if params.scope == "per-layer":
            drop_groups = {i: _lowest(head_scores[i], n) for i, n in zip(pruned, heads)}
            drop_channels = {i: _lowest(channel_scores[i], n) for i, n in zip(pruned, channels)}
        else:
            drop_groups = _global_lowest({i: head_scores[i] for i in pruned}, heads[0])
            drop_channels = _global_lowest({i: channel_scores[i] for i in pruned}, channels)
        return WidthChoice(drop_groups, drop_channels, {
            "scope": params.scope,
            "importance": params.importance,
            "pruned_layers": pruned,
            "head_importance": [[round(float(x), 8) for x in s] for s in head_scores],
        })
