"""`flap`: FLuctuation-based Adaptive Structured Pruning (An et al. 2024, https://arxiv.org/abs/2312.11983),
retraining-free width pruning.

Metric (WIFV): for an input channel j of o_proj (attention) or down_proj (MLP), the fluctuation
F_j = Var_t(x_j) x ||W[:, j]||^2, with x_j the channel's input over all calibration tokens (one pass of
the dense model). Units are head groups (one KV head with its query heads: whole KV groups keep GQA
consistent, see `backend.pruning.width`) and MLP channels.

Adaptive structure, `standardize`:

* `per-layer` (default; the official code, CASIA-IVA-Lab/FLAP `lib/prune.py`, `--structure AL-AM
  --metrics WIFV`): the attention metric is squared (F_j^2), then each layer's o_proj columns are
  standardised over that layer's columns, z = (s - mean) / std, and a head group scores the mean of
  its columns' z; each layer's MLP channels are standardised over that layer's channels. All units
  of all layers are then ranked together (attention and MLP alike).
* `per-module-type` (PruneBoard's earlier rule): a head group scores the sum of its columns' F_j;
  all head groups of all layers are standardised together, and all MLP channels together.

Units are removed lowest first, each costing its real parameter count, until `sparsity` x
decoder-block parameters are gone (a unit that would overshoot by more than half its size is
skipped; every layer keeps at least one head group and one MLP channel). So layers and module types
get different widths.

Bias compensation (`bias_compensation: true`, default): the removed channels' mean contribution is
folded into a bias, b += W[:, pruned] @ mean(x[pruned]); Llama/Qwen linears have no bias, so o_proj /
down_proj get one (recorded in `pruneboard_layer_widths`, reload with `load_pruned`). On the
calibration inputs, the pruned module's output mean then equals the dense one's. No retraining.

Remaining deviations from the official code: Var is the exact population variance over the
calibration tokens (the official running update skips the first sample's share); the removal walk
stops at the parameter target, counting real unit sizes and the new bias vectors (the official
picks the global threshold whose retained weight is nearest 1 - ratio, weighting a head 512/3 MLP
channels, LLaMA-7B's ratio); every layer keeps one head group and one channel (the official may
empty a layer's attention); heads are whole GQA groups (the official supports no GQA).

Example config:
    pruning: {method: flap, sparsity: 0.25}
    calibration: {source: text, path: wikitext2/valid.txt, num_samples: 32, seq_len: 512}
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

from pydantic import BaseModel, ConfigDict

from backend.pruning.base import register_method
from backend.pruning.width import WidthChoice, WidthPruningMethod

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ChannelMoments", "Flap", "FlapParams", "input_moments", "unit_scores"]

BATCH_SIZE = 4
"""Calibration sequences per forward (bounds memory; does not change the statistics)."""


class FlapParams(BaseModel):
    """`bias_compensation`: fold the pruned channels' mean input into a bias (the paper's default).
    `standardize`: `per-layer` (the official code) or `per-module-type`; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bias_compensation: bool = True
    standardize: Literal["per-layer", "per-module-type"] = "per-layer"


class ChannelMoments:
    """Running sum and sum of squares per input channel (float64): mean and (population) variance."""

    def __init__(self, features: int, device):
        import torch

        self.sum = torch.zeros(features, dtype=torch.float64, device=device)
        self.sq = torch.zeros(features, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: "torch.Tensor") -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.sum += x.sum(0)
        self.sq += x.pow(2).sum(0)
        self.count += x.shape[0]

    def mean(self) -> "torch.Tensor":
        return self.sum / self.count

    def var(self) -> "torch.Tensor":
        return (self.sq / self.count - self.mean().pow(2)).clamp_min(0)


def input_moments(
    model: "nn.Module", calibration: "torch.Tensor",
    progress: Callable[[float, str], None] = lambda f, t: None,
) -> tuple[list[ChannelMoments], list[ChannelMoments]]:
    """Input moments of every layer's o_proj and down_proj over the calibration tokens (dense model)."""
    import torch

    from backend.pruning.layers import get_decoder_layers

    layers = get_decoder_layers(model)
    attn = [ChannelMoments(layer.self_attn.o_proj.in_features, "cpu") for layer in layers]
    mlp = [ChannelMoments(layer.mlp.down_proj.in_features, "cpu") for layer in layers]
    handles = []
    for layer, a, m in zip(layers, attn, mlp):
        handles.append(layer.self_attn.o_proj.register_forward_hook(lambda mod, args, out, acc=a: acc.add(args[0].cpu())))
        handles.append(layer.mlp.down_proj.register_forward_hook(lambda mod, args, out, acc=m: acc.add(args[0].cpu())))
    device = next(model.parameters()).device
    batches = calibration.split(BATCH_SIZE)
    try:
        with torch.no_grad():
            for b, batch in enumerate(batches):
                model(input_ids=batch.to(device), use_cache=False)
                progress((b + 1) / len(batches), f"flap: statistics, batch {b + 1}/{len(batches)}")
    finally:
        for handle in handles:
            handle.remove()
    return attn, mlp


def _standardise(scores: list["torch.Tensor"]) -> list["torch.Tensor"]:
    """z-scores of all entries of `scores` together (unbiased std, as torch.std; 1 when it is 0)."""
    import torch

    flat = torch.cat(scores)
    std = flat.std() if flat.numel() > 1 else torch.tensor(1.0, dtype=flat.dtype)
    std = std if std > 0 else torch.tensor(1.0, dtype=flat.dtype)
    return [(s - flat.mean()) / std for s in scores]


def unit_scores(layers, geos, attn_stats, mlp_stats, standardize: str) -> tuple[list, list]:
    """Per layer: head-group scores (groups,) and MLP-channel scores (channels,), standardised as
    `standardize` says (module docstring)."""
    attn_cols, mlp_cols = [], []
    for layer, a, m in zip(layers, attn_stats, mlp_stats):
        attn_cols.append(a.var() * layer.self_attn.o_proj.weight.detach().double().cpu().pow(2).sum(0))
        mlp_cols.append(m.var() * layer.mlp.down_proj.weight.detach().double().cpu().pow(2).sum(0))
    if standardize == "per-layer":
        attn = [_standardise([cols.pow(2)])[0].reshape(geo.groups, -1).mean(1) for cols, geo in zip(attn_cols, geos)]
        return attn, [_standardise([cols])[0] for cols in mlp_cols]
    attn = [cols.reshape(geo.groups, -1).sum(1) for cols, geo in zip(attn_cols, geos)]
    return _standardise(attn), _standardise(mlp_cols)


@register_method
class Flap(WidthPruningMethod):
    """Remove head groups and MLP channels with the lowest standardised fluctuation; compensate with a bias."""

    name = "flap"
    description = "retraining-free width pruning by input fluctuation, adaptive across layers, bias compensation (An et al. 2024)"
    Params = FlapParams

    def choose_units(self, model, calibration, geos, sparsity, target, params, progress) -> WidthChoice:
        import torch

        from backend.pruning.layers import get_decoder_layers
        from backend.pruning.width import add_bias, select_budget

        most = sum((g.groups - 1) * g.group_cost + (g.channels - 1) * g.channel_cost for g in geos)
        if target > most:
            raise ValueError(f"flap: sparsity {sparsity} removes {target} parameters, more than keeping one head "
                             f"group and one MLP channel per layer allows ({most})")

        layers = get_decoder_layers(model)
        attn_stats, mlp_stats = input_moments(model, calibration, lambda f, t: progress(0.8 * f, t))
        with torch.no_grad():
            z_attn, z_mlp = unit_scores(layers, geos, attn_stats, mlp_stats, params.standardize)

        units: list[tuple[str, int, int]] = []
        costs: list[int] = []
        zs: list[float] = []
        for i, geo in enumerate(geos):
            for g in range(geo.groups):
                units.append(("attn", i, g)); costs.append(geo.group_cost); zs.append(float(z_attn[i][g]))
            for c in range(geo.channels):
                units.append(("mlp", i, c)); costs.append(geo.channel_cost); zs.append(float(z_mlp[i][c]))
        order = sorted(range(len(units)), key=lambda u: (zs[u], u))
        left: dict[tuple[str, int], int] = {}

        def allowed(u: int) -> bool:
            kind, i, _ = units[u]
            if left[(kind, i)] <= 1:
                return False
            left[(kind, i)] -= 1
            return True

        # New bias parameters count against the budget: re-select until the selection is stable.
        added = 0
        for _ in range(5):
            left = {("attn", i): g.groups for i, g in enumerate(geos)}
            left.update({("mlp", i): g.channels for i, g in enumerate(geos)})
            taken = select_budget(costs, order, target + added, allowed)
            drop_groups: dict[int, list[int]] = {}
            drop_channels: dict[int, list[int]] = {}
            for u in taken:
                kind, i, idx = units[u]
                (drop_groups if kind == "attn" else drop_channels).setdefault(i, []).append(idx)
            needed = 0
            if params.bias_compensation:
                needed = sum(geos[i].hidden for i in drop_groups if layers[i].self_attn.o_proj.bias is None)
                needed += sum(geos[i].hidden for i in drop_channels if layers[i].mlp.down_proj.bias is None)
            if needed == added:
                break
            added = needed

        if params.bias_compensation:
            with torch.no_grad():
                for i, layer in enumerate(layers):
                    geo = geos[i]
                    if drop_groups.get(i):
                        cols = torch.cat([torch.arange(g * geo.rep * geo.head_dim, (g + 1) * geo.rep * geo.head_dim)
                                          for g in sorted(drop_groups[i])])
                        _compensate(layer.self_attn.o_proj, cols, attn_stats[i].mean(), add_bias)
                    if drop_channels.get(i):
                        cols = torch.tensor(sorted(drop_channels[i]), dtype=torch.long)
                        _compensate(layer.mlp.down_proj, cols, mlp_stats[i].mean(), add_bias)
        metric = {"per-layer": "Var(x_j) x ||W[:, j]||^2 (squared for attention), standardised per layer, "
                               "head = mean of its columns, ranked globally",
                  "per-module-type": "Var(x_j) x ||W[:, j]||^2, head = sum of its columns, standardised per "
                                     "module type, ranked globally"}[params.standardize]
        return WidthChoice(drop_groups, drop_channels, {
            "metric": metric,
            "standardize": params.standardize,
            "bias_compensation": params.bias_compensation,
            "bias_params_added": added,
        })


def _compensate(linear: "nn.Linear", cols: "torch.Tensor", mean: "torch.Tensor", add_bias) -> None:
    """b += W[:, cols] @ mean[cols] (computed in float64)."""
    weight = linear.weight.detach().double().cpu()
    add_bias(linear, weight[:, cols] @ mean[cols])
