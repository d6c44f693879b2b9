"""Width pruning helpers shared by `llm-pruner` and `flap`: physically shrink heads and MLP channels.

Structures ("groups") that can be removed from a decoder block:

* attention head group: one key/value head together with the `num_key_value_groups` query heads
  that read it (for a model without GQA, one head). Removing a group removes its rows of q_proj,
  k_proj and v_proj and its input columns of o_proj. **GQA is handled by removing whole KV groups**,
  so every kept query head still has its own KV head and `num_key_value_groups` (the repeat factor
  eager and SDPA attention read from the module) never changes; only the number of heads does.
  The attention forward of transformers 5 reshapes with `-1` heads, so nothing else is needed.
* MLP channel: one row of gate_proj and up_proj and the matching input column of down_proj.

Layers may end up with different widths. `record_layer_widths` stores them in the config as
`pruneboard_layer_widths` (one dict per layer: `heads`, `kv_heads`, `intermediate`, `o_bias`,
`down_bias`), which `save_pretrained` writes into config.json. Plain `from_pretrained` cannot build
such a model (it would make every layer full width), so reload with `backend.models.loading.load_pruned(dir)`,
which hands it to `load_width_pruned` (this class's saved format): it builds the model from the config,
shrinks each layer to its recorded shape, then loads the saved tensors (strictly: a missing or extra
tensor is an error).

`WidthPruningMethod.prune` is the lifecycle the width methods share (default params, sparsity and
calibration checks, the parameter target round(sparsity x decoder-block parameters), removal for
real, recorded widths, the report with `width_details`); a method only implements `choose_units`,
returning a `WidthChoice`.

Torch is imported inside functions only.
"""
from __future__ import annotations

import abc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

from backend.pruning.base import PruneReport, PruningMethod

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "WIDTHS_KEY",
    "Geometry",
    "WidthChoice",
    "WidthPruningMethod",
    "apply_layer_widths",
    "block_params",
    "geometry",
    "head_group_rows",
    "is_width_pruned_dir",
    "layer_widths",
    "load_width_pruned",
    "prune_attention_groups",
    "prune_mlp_channels",
    "record_layer_widths",
    "select_budget",
]

logger = logging.getLogger(__name__)

WIDTHS_KEY = "pruneboard_layer_widths"


@dataclass(frozen=True)
class Geometry:
    """Shapes of one decoder block's removable structures."""

    hidden: int
    head_dim: int
    groups: int
    """Number of KV groups (= KV heads) in the block now."""
    rep: int
    """Query heads per KV head (num_key_value_groups)."""
    channels: int
    """MLP intermediate size now."""
    group_cost: int
    """Parameters removed with one head group (q/k/v rows, o columns, their biases)."""
    channel_cost: int
    """Parameters removed with one MLP channel (gate/up rows, down column, their biases)."""


def _attn(layer: "nn.Module") -> "nn.Module":
    attn = getattr(layer, "self_attn", None)
    if attn is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        raise ValueError(f"width pruning needs q/k/v/o projections at layer.self_attn ({type(layer).__name__})")
    return attn


def _mlp(layer: "nn.Module") -> "nn.Module":
    mlp = getattr(layer, "mlp", None)
    if mlp is None or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        raise ValueError(f"width pruning needs a gated MLP (gate/up/down_proj) at layer.mlp ({type(layer).__name__})")
    return mlp


def geometry(layer: "nn.Module") -> Geometry:
    """The current shapes of `layer`; ValueError for layouts width pruning cannot handle."""
    attn, mlp = _attn(layer), _mlp(layer)
    head_dim = int(attn.head_dim)
    q_out, kv_out = attn.q_proj.out_features, attn.k_proj.out_features
    if q_out % head_dim or kv_out % head_dim:
        raise ValueError(f"q/k projections ({q_out}, {kv_out}) are not multiples of head_dim {head_dim}")
    heads, kv_heads = q_out // head_dim, kv_out // head_dim
    if kv_heads == 0 or heads % kv_heads or heads // kv_heads != attn.num_key_value_groups:
        raise ValueError(f"inconsistent GQA layout: {heads} query heads, {kv_heads} KV heads, "
                         f"num_key_value_groups {attn.num_key_value_groups}")
    hidden = attn.q_proj.in_features
    rep = heads // kv_heads

    def bias(linear) -> int:
        return 1 if linear.bias is not None else 0

    group_cost = head_dim * (rep * (hidden + bias(attn.q_proj)) + (hidden + bias(attn.k_proj))
                             + (hidden + bias(attn.v_proj)) + rep * hidden)
    channel_cost = hidden * 3 + bias(mlp.gate_proj) + bias(mlp.up_proj)
    return Geometry(hidden, head_dim, kv_heads, rep, mlp.gate_proj.out_features, group_cost, channel_cost)


def block_params(model: "nn.Module") -> int:
    """Parameters inside the decoder blocks (what width `sparsity` is a fraction of)."""
    from backend.pruning.layers import get_decoder_layers

    return sum(p.numel() for layer in get_decoder_layers(model) for p in layer.parameters())


def head_group_rows(group: int, rep: int, head_dim: int) -> tuple[slice, slice]:
    """(q rows / o columns, k and v rows) of head group `group`."""
    q = slice(group * rep * head_dim, (group + 1) * rep * head_dim)
    kv = slice(group * head_dim, (group + 1) * head_dim)
    return q, kv


def _new_linear(old: "nn.Linear", in_features: int, out_features: int, bias: bool) -> "nn.Linear":
    from torch import nn

    return nn.Linear(in_features, out_features, bias=bias, device=old.weight.device, dtype=old.weight.dtype)


def _shrink(linear: "nn.Linear", rows: "torch.Tensor | None" = None, cols: "torch.Tensor | None" = None,
            ) -> "nn.Linear":
    """A new Linear with only the given output rows and input columns of `linear` (bias follows rows)."""
    import torch

    weight = linear.weight.data
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    new = _new_linear(linear, weight.shape[1], weight.shape[0], linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            b = linear.bias.data if rows is None else linear.bias.data.index_select(0, rows.to(weight.device))
            new.bias.copy_(b)
    return new


def prune_attention_groups(layer: "nn.Module", keep: list[int]) -> None:
    """Keep only head groups `keep` (KV head + its query heads) of `layer.self_attn`."""
    import torch

    geo = geometry(layer)
    keep = sorted(set(int(g) for g in keep))
    if not keep:
        raise ValueError("cannot remove every attention head group of a layer")
    if keep[-1] >= geo.groups or keep[0] < 0:
        raise ValueError(f"head group out of range 0..{geo.groups - 1}: {keep}")
    attn = _attn(layer)
    q_idx, kv_idx = [], []
    for g in keep:
        q, kv = head_group_rows(g, geo.rep, geo.head_dim)
        q_idx.extend(range(q.start, q.stop))
        kv_idx.extend(range(kv.start, kv.stop))
    q_rows = torch.tensor(q_idx, dtype=torch.long)
    kv_rows = torch.tensor(kv_idx, dtype=torch.long)
    attn.q_proj = _shrink(attn.q_proj, rows=q_rows)
    attn.k_proj = _shrink(attn.k_proj, rows=kv_rows)
    attn.v_proj = _shrink(attn.v_proj, rows=kv_rows)
    attn.o_proj = _shrink(attn.o_proj, cols=q_rows)
    _set_head_counts(attn, len(keep) * geo.rep, len(keep))


def _set_head_counts(attn: "nn.Module", heads: int, kv_heads: int) -> None:
    """Per-module head counts (informative: the forward reshapes with -1; the repeat factor is unchanged)."""
    attn.num_heads = heads
    attn.num_key_value_heads = kv_heads


def prune_mlp_channels(layer: "nn.Module", keep: list[int]) -> None:
    """Keep only intermediate channels `keep` of `layer.mlp` (gate/up rows, down columns)."""
    import torch

    mlp = _mlp(layer)
    keep = sorted(set(int(c) for c in keep))
    if not keep:
        raise ValueError("cannot remove every MLP channel of a layer")
    if keep[-1] >= mlp.gate_proj.out_features or keep[0] < 0:
        raise ValueError(f"MLP channel out of range 0..{mlp.gate_proj.out_features - 1}")
    idx = torch.tensor(keep, dtype=torch.long)
    mlp.gate_proj = _shrink(mlp.gate_proj, rows=idx)
    mlp.up_proj = _shrink(mlp.up_proj, rows=idx)
    mlp.down_proj = _shrink(mlp.down_proj, cols=idx)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(keep)


def add_bias(linear: "nn.Linear", delta: "torch.Tensor") -> None:
    """Add `delta` to the bias of `linear`, creating a zero bias parameter first when it has none."""
    import torch
    from torch import nn

    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, device=linear.weight.device,
                                               dtype=linear.weight.dtype))
    with torch.no_grad():
        linear.bias.add_(delta.to(linear.bias.device, linear.bias.dtype))


def layer_widths(model: "nn.Module") -> list[dict[str, Any]]:
    """Per-layer shapes: heads, kv_heads, intermediate, and whether o_proj / down_proj carry a bias."""
    from backend.pruning.layers import get_decoder_layers

    widths = []
    for layer in get_decoder_layers(model):
        geo = geometry(layer)
        attn, mlp = _attn(layer), _mlp(layer)
        widths.append({
            "heads": geo.groups * geo.rep, "kv_heads": geo.groups, "intermediate": geo.channels,
            "o_bias": attn.o_proj.bias is not None, "down_bias": mlp.down_proj.bias is not None,
        })
    return widths


def record_layer_widths(model: "nn.Module") -> list[dict[str, Any]]:
    """Store `layer_widths(model)` as `config.pruneboard_layer_widths` (saved with the config)."""
    widths = layer_widths(model)
    for owner in (model, getattr(model, "model", None)):
        config = getattr(owner, "config", None)
        if config is not None:
            setattr(config, WIDTHS_KEY, widths)
    return widths


def apply_layer_widths(model: "nn.Module", widths: list[dict[str, Any]]) -> None:
    """Shrink a freshly built full-width model to `widths` (new uninitialised Linears of the right shapes)."""
    from backend.pruning.layers import get_decoder_layers

    layers = get_decoder_layers(model)
    if len(widths) != len(layers):
        raise ValueError(f"{WIDTHS_KEY} has {len(widths)} entries for {len(layers)} layers")
    for layer, w in zip(layers, widths):
        attn, mlp = _attn(layer), _mlp(layer)
        head_dim, hidden = int(attn.head_dim), attn.q_proj.in_features
        heads, kv_heads, inter = int(w["heads"]), int(w["kv_heads"]), int(w["intermediate"])
        if kv_heads < 1 or heads % kv_heads or heads // kv_heads != attn.num_key_value_groups or inter < 1:
            raise ValueError(f"bad layer widths {w} (num_key_value_groups {attn.num_key_value_groups})")
        attn.q_proj = _new_linear(attn.q_proj, hidden, heads * head_dim, attn.q_proj.bias is not None)
        attn.k_proj = _new_linear(attn.k_proj, hidden, kv_heads * head_dim, attn.k_proj.bias is not None)
        attn.v_proj = _new_linear(attn.v_proj, hidden, kv_heads * head_dim, attn.v_proj.bias is not None)
        attn.o_proj = _new_linear(attn.o_proj, heads * head_dim, hidden, bool(w.get("o_bias")))
        _set_head_counts(attn, heads, kv_heads)
        mlp.gate_proj = _new_linear(mlp.gate_proj, hidden, inter, mlp.gate_proj.bias is not None)
        mlp.up_proj = _new_linear(mlp.up_proj, hidden, inter, mlp.up_proj.bias is not None)
        mlp.down_proj = _new_linear(mlp.down_proj, inter, hidden, bool(w.get("down_bias")))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = inter


def _read_state_dict(directory: Path) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, Any] = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    return state


def is_width_pruned_dir(directory: str | Path) -> bool:
    """Whether `directory`'s config.json records per-layer widths (`pruneboard_layer_widths`)."""
    try:
        return bool(json.loads((Path(directory) / "config.json").read_text(encoding="utf-8")).get(WIDTHS_KEY))
    except (OSError, ValueError, AttributeError):
        return False


def load_width_pruned(directory: str | Path, dtype: "torch.dtype | str | None" = None,
                device: str = "cpu") -> "nn.Module":
    """Load a width-pruned model saved by PruneBoard, in eval mode: the model is built from the
    config, each layer is shrunk to its recorded shape (`pruneboard_layer_widths`), and the saved
    tensors are loaded strictly (only a tied lm_head may be absent from the files). Other models:
    `backend.models.loading.load_pruned`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    widths = getattr(config, WIDTHS_KEY, None)
    if not widths:
        raise ValueError(f"{directory}: no {WIDTHS_KEY} in config.json, not a width-pruned model")
    state = _read_state_dict(directory)
    if dtype is None:
        dtype = next(iter(state.values())).dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    apply_layer_widths(model, widths)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    allowed = {"lm_head.weight"} if tied else set()
    bad_missing = [k for k in missing if k not in allowed]
    if bad_missing or unexpected:
        raise ValueError(f"{directory}: saved tensors do not match the recorded widths "
                         f"(missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]})")
    if tied:
        model.tie_weights()
    return model.to(device=device, dtype=dtype).eval()


def select_budget(costs: list[int], order: list[int], target: int, allowed=None) -> list[int]:
    """Walk `order` (lowest importance first) and take units until `target` parameters are removed.

    A unit is skipped when `allowed(unit)` is False or when taking it would overshoot the target by
    more than half its own cost; so the removed total ends within half a unit of the target whenever
    enough small units exist. Returns the taken units in the order taken.
    """
    taken: list[int] = []
    removed = 0
    for unit in order:
        if removed >= target:
            break
        cost = costs[unit]
        if removed + cost > target and (removed + cost - target) * 2 > cost:
            continue
        if allowed is not None and not allowed(unit):
            continue
        taken.append(unit)
        removed += cost
    return taken


@dataclass
class WidthChoice:
    """What a width method chose: head groups and MLP channels to remove (per layer index, original
    numbering) and its own `details` keys."""

    drop_groups: dict[int, list[int]]
    drop_channels: dict[int, list[int]]
    details: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[float, str], None]


class WidthPruningMethod(PruningMethod):
    """Base of the methods that remove attention head groups and MLP channels for real (llm-pruner,
    flap); subclasses choose which (`choose_units`)."""

    family = "width"
    needs_calibration = True
    sparsity_meaning = "fraction of decoder-block parameters removed (heads and MLP channels, for real)"

    @classmethod
    def is_saved_format(cls, directory: Path) -> bool:
        return is_width_pruned_dir(directory)  # per-layer head/channel counts differ

    @classmethod
    def load_saved(cls, directory: Path, dtype: Any = None, device: str = "cpu") -> "nn.Module":
        return load_width_pruned(directory, dtype=dtype, device=device)

    @classmethod
    def check_sparsity(cls, sparsity: float) -> None:
        if sparsity <= 0:
            raise ValueError(f"{cls.name} needs a sparsity > 0 (the fraction of decoder-block parameters to remove)")

    @classmethod
    def vllm_unsupported(cls, params: BaseModel) -> str | None:
        return ("its layers get different head counts and MLP widths, which a vLLM model config (one width for "
                "every layer) cannot describe")

    @abc.abstractmethod
    def choose_units(self, model: "nn.Module", calibration: "torch.Tensor", geos: list[Geometry], sparsity: float,
                     target: int, params: BaseModel, progress: ProgressFn) -> WidthChoice:
        """Reject a `target` (parameters to remove) the method cannot meet before any calibration work,
        then score the unchanged model and choose; may adjust weights that stay (FLAP's bias
        compensation). Progress up to < 1."""

    def prune(self, model: "nn.Module", sparsity: float, params: BaseModel | None,
              calibration: "torch.Tensor | None", progress: ProgressFn) -> PruneReport:
        from backend.models.loading import count_parameters
        from backend.pruning.layers import get_decoder_layers

        params = params if isinstance(params, self.Params) else self.Params()
        self.check_sparsity(sparsity)
        if calibration is None:
            raise ValueError(f"{self.name} needs calibration data")
        geos = [geometry(layer) for layer in get_decoder_layers(model)]
        params_before = count_parameters(model)
        block_before = block_params(model)
        target = round(sparsity * block_before)
        choice = self.choose_units(model, calibration, geos, sparsity, target, params, progress)
        apply_plan(model, choice.drop_groups, choice.drop_channels)
        record_layer_widths(model)
        progress(1.0, f"{self.name}: pruned")
        block_after = block_params(model)
        return PruneReport(
            method=self.name,
            requested_sparsity=sparsity,
            achieved_sparsity=(block_before - block_after) / block_before,
            params_before=params_before,
            params_after=count_parameters(model),
            details=width_details(model, block_before, target, choice.details),
        )


def apply_plan(model: "nn.Module", drop_groups: dict[int, list[int]], drop_channels: dict[int, list[int]]) -> None:
    """Remove the given head groups and MLP channels (per layer index) for real."""
    from backend.pruning.layers import get_decoder_layers

    for i, layer in enumerate(get_decoder_layers(model)):
        geo = geometry(layer)
        groups = set(drop_groups.get(i, []))
        channels = set(drop_channels.get(i, []))
        if groups:
            prune_attention_groups(layer, [g for g in range(geo.groups) if g not in groups])
        if channels:
            prune_mlp_channels(layer, [c for c in range(geo.channels) if c not in channels])


def width_details(model: "nn.Module", block_before: int, target: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Report details shared by width methods (measured on the pruned model)."""
    widths = layer_widths(model)
    block_after = block_params(model)
    return {
        "heads_kept": [w["heads"] for w in widths],
        "kv_heads_kept": [w["kv_heads"] for w in widths],
        "channels_kept": [w["intermediate"] for w in widths],
        "block_params_before": block_before,
        "block_params_after": block_after,
        "target_params_removed": target,
        "params_removed": block_before - block_after,
        "gqa": "whole KV groups (one KV head with its query heads) are removed; num_key_value_groups unchanged",
        **extra,
    }
