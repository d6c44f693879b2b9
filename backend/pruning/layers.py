"""Decoder-layer access shared by every pruning method, so no method copies code per architecture.

Supported: causal LMs whose decoder blocks live at `model.model.layers` (Llama, Mistral, Qwen2,
Qwen3, Gemma, Phi-3 and their relatives). Other layouts raise a ValueError naming the class.

Torch is imported inside functions only: method modules import this one at registration time, and
the CLI lists methods without loading torch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "LayerInputs",
    "capture_layer_inputs",
    "count_linear_zeros",
    "get_decoder_layers",
    "prunable_linears",
    "remove_layers",
    "run_layer",
]

logger = logging.getLogger(__name__)


def get_decoder_layers(model: "nn.Module") -> "nn.ModuleList":
    """The decoder blocks of a causal LM, in execution order."""
    from torch import nn

    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"unsupported architecture {type(model).__name__}: expected decoder blocks at model.model.layers "
            "(Llama/Mistral/Qwen/Gemma-style causal LMs)"
        )
    return layers


def prunable_linears(layer: "nn.Module") -> dict[str, "nn.Linear"]:
    """The nn.Linear modules inside one decoder block, by qualified name (attention and MLP projections).

    Embeddings and lm_head sit outside the blocks, so they can never appear here.
    """
    from torch import nn

    return {name: module for name, module in layer.named_modules() if isinstance(module, nn.Linear)}


def count_linear_zeros(model: "nn.Module") -> tuple[int, int]:
    """(zeros, total) over the weights of every prunable linear of every block: the measured sparsity."""
    import torch

    zeros = total = 0
    with torch.no_grad():
        for layer in get_decoder_layers(model):
            for linear in prunable_linears(layer).values():
                numel = linear.weight.numel()
                zeros += numel - int(torch.count_nonzero(linear.weight).item())
                total += numel
    return zeros, total


def remove_layers(model: "nn.Module", indices: Iterable[int]) -> list[int]:
    """Really remove decoder blocks (a new, shorter ModuleList) and keep the model generating.

    Fixes `config.num_hidden_layers`, `config.layer_types` (per-layer attention kinds, when the config
    has them) and each kept block's `layer_idx`: the KV cache is indexed by `layer_idx`, and
    `DynamicCache(config=...)` sizes itself from the config, so stale values break `generate`.
    Returns the sorted indices removed.
    """
    from torch import nn

    layers = get_decoder_layers(model)
    count = len(layers)
    drop = sorted(set(int(i) for i in indices))
    bad = [i for i in drop if not 0 <= i < count]
    if bad:
        raise ValueError(f"layer indices out of range 0..{count - 1}: {bad}")
    if len(drop) >= count:
        raise ValueError(f"cannot remove all {count} decoder layers")
    keep = [i for i in range(count) if i not in set(drop)]
    model.model.layers = nn.ModuleList([layers[i] for i in keep])

    for config in _configs(model):
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and len(layer_types) == count:
            config.layer_types = [layer_types[i] for i in keep]
        config.num_hidden_layers = len(keep)
    for new_idx, layer in enumerate(model.model.layers):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    logger.info("removed decoder layers %s (%d -> %d)", drop, count, len(keep))
    return drop


def _configs(model: "nn.Module") -> list[Any]:
    """The distinct config objects that describe the decoder (outer model and inner model may differ)."""
    seen: list[Any] = []
    for owner in (model, getattr(model, "model", None)):
        config = getattr(owner, "config", None)
        if config is not None and all(config is not c for c in seen):
            seen.append(config)
    return seen


@dataclass
class LayerInputs:
    """What the model's own forward hands to its first decoder block for one batch.

    `hidden` is the embedded input; `kwargs` holds the causal mask, rotary `position_embeddings`,
    `position_ids` and the like. Feeding `hidden` through `run_layer` block after block replays the
    decoder exactly, one block at a time.
    """

    hidden: "torch.Tensor"
    kwargs: dict[str, Any]


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the first block needs to run."""


def capture_layer_inputs(model: "nn.Module", input_ids: "torch.Tensor") -> LayerInputs:
    """Run the model up to its first decoder block and capture that block's inputs.

    Letting the model build its own mask and position embeddings (rather than rebuilding them here)
    keeps this correct across architectures and transformers releases: Gemma scales embeddings,
    some models use sliding-window masks, and `create_causal_mask` may return None for SDPA.
    """
    import torch

    layers = get_decoder_layers(model)
    captured: dict[str, Any] = {}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured["hidden"] = hidden
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "hidden" not in captured:
        raise RuntimeError("the model's forward never reached its first decoder layer")
    kwargs = captured["kwargs"]
    kwargs["past_key_values"] = None
    kwargs["use_cache"] = False
    return LayerInputs(hidden=captured["hidden"], kwargs=kwargs)


def run_layer(layer: "nn.Module", hidden: "torch.Tensor", kwargs: dict[str, Any]) -> "torch.Tensor":
    """One decoder block on `hidden`; returns its output hidden states (blocks may return a tuple)."""
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out
