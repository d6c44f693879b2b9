"""The layer-by-layer calibration driver shared by calibrated pruning methods and allocations.

`replay_layers` captures what the model hands its first decoder block for each calibration batch
(`capture_layer_inputs`), then walks the blocks in order. For block i it:

1. moves that one block to the target device (`on_move(i, "to:<device>")`),
2. hooks its linears so each accumulates statistics from its inputs (running means, never the
   activations themselves) while the cached batches run through the block,
3. calls `on_layer(ctx)`, where the method prunes (or only measures) the block,
4. re-runs the block when `on_layer` changed it, so the next block sees the pruned block's outputs
   (as Wanda and SparseGPT do); otherwise the outputs of step 2 are reused,
5. moves the block back (`on_move(i, "from:<device>")`).

The rest of the model stays where it is, so at most one block is on the target device at a time;
the cached hidden states (num_samples x seq_len x hidden) live on the target device.

Statistics accumulators for the two built-in methods are here too: `InputNormStats` (Wanda: mean
of x_j^2 per input column) and `HessianStats` (SparseGPT: H = 2/n X X^T).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["BATCH_SIZE", "HessianStats", "InputNormStats", "LayerContext", "replay_layers"]

logger = logging.getLogger(__name__)

BATCH_SIZE = 8
"""Calibration sequences per block forward: bounds activation memory; does not change statistics."""


class InputNormStats:
    """Running mean over tokens of x_j^2 for each input column j (float32).

    sqrt of it is ||X_j||_2 / sqrt(tokens): the same ranking as Wanda's ||X_j||_2 within a matrix.
    """

    def __init__(self, in_features: int, device: "torch.device | str"):
        import torch

        self.sq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.count = 0

    def add(self, x: "torch.Tensor") -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        self.sq.mul_(self.count / (self.count + n)).add_(x.pow(2).sum(0), alpha=1.0 / (self.count + n))
        self.count += n

    def norms(self) -> "torch.Tensor":
        return self.sq.sqrt()


class HessianStats:
    """Running mean of the layer-wise Hessian H = 2/n sum_t x_t x_t^T over calibration tokens (float32)."""

    def __init__(self, in_features: int, device: "torch.device | str"):
        import torch

        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.count = 0

    def add(self, x: "torch.Tensor") -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        self.hessian.mul_(self.count / (self.count + n))
        self.hessian.addmm_(x.t(), x, alpha=2.0 / (self.count + n))
        self.count += n


@dataclass
class LayerContext:
    """What `on_layer` gets for one decoder block (already on the target device)."""

    index: int
    layer: "nn.Module"
    linears: dict[str, "nn.Linear"]
    stats: dict[str, Any]
    inputs: list["torch.Tensor"]
    """Cached inputs of this block, one tensor per calibration batch."""
    kwargs: list[dict[str, Any]]
    outputs: list["torch.Tensor"] = field(default_factory=list)
    """This block's outputs on `inputs` before `on_layer` ran (dense, or as pruned so far)."""

    def run(self) -> list["torch.Tensor"]:
        """The block's current outputs on the cached inputs."""
        import torch

        from backend.pruning.layers import run_layer

        with torch.no_grad():
            return [run_layer(self.layer, h, kw) for h, kw in zip(self.inputs, self.kwargs)]


def _to(obj: Any, device: "torch.device") -> Any:
    """Tensors inside tuples, lists and dicts moved to `device`; anything else unchanged."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def default_device(model: "nn.Module") -> "torch.device":
    """CUDA when the worker computes on it (`settings.use_cuda`: one block at a time goes there), else
    where the model is."""
    import torch

    from common import settings

    if settings.use_cuda():
        return torch.device("cuda")
    return next(model.parameters()).device


def replay_layers(
    model: "nn.Module",
    calibration: "torch.Tensor",
    make_stats: Callable[["nn.Linear"], Any] | None,
    on_layer: Callable[[LayerContext], bool],
    *,
    device: "torch.device | str | None" = None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[float, str], None] | None = None,
    on_move: Callable[[int, str], None] | None = None,
) -> None:
    """Walk the decoder blocks in order on calibration data (see the module docstring).

    `make_stats(linear)` returns an accumulator with `add(x)` (None: no hooks); `on_layer(ctx)` returns
    True when it changed the block. `on_move(index, "to:<device>" | "from:<device>")` is called
    around each block's stay on the target device, for tests and logs.
    """
    import torch

    from backend.pruning.layers import (
        capture_layer_inputs,
        get_decoder_layers,
        prunable_linears,
        run_layer,
    )

    layers = get_decoder_layers(model)
    target = torch.device(device) if device is not None else default_device(model)
    embed_device = model.get_input_embeddings().weight.device
    inputs: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = []
    for batch in calibration.split(batch_size):
        captured = capture_layer_inputs(model, batch.to(embed_device))
        inputs.append(captured.hidden.to(target))
        kwargs.append(_to(captured.kwargs, target))

    for index, layer in enumerate(layers):
        home = next(layer.parameters()).device
        if on_move is not None:
            on_move(index, f"to:{target}")
        layer.to(target)
        try:
            linears = prunable_linears(layer)
            stats: dict[str, Any] = {}
            handles = []
            if make_stats is not None:
                for name, linear in linears.items():
                    stats[name] = make_stats(linear)
                    handles.append(linear.register_forward_hook(
                        lambda mod, args, out, acc=stats[name]: acc.add(args[0])))
            try:
                with torch.no_grad():
                    outputs = [run_layer(layer, h, kw) for h, kw in zip(inputs, kwargs)]
            finally:
                for handle in handles:
                    handle.remove()
            ctx = LayerContext(index, layer, linears, stats, inputs, kwargs, outputs)
            changed = on_layer(ctx)
            del stats, ctx
            if changed and index + 1 < len(layers):
                with torch.no_grad():
                    outputs = [run_layer(layer, h, kw) for h, kw in zip(inputs, kwargs)]
            inputs = outputs
        finally:
            layer.to(home)
            if on_move is not None:
                on_move(index, f"from:{target}")
        if progress is not None:
            progress((index + 1) / len(layers), f"layer {index + 1}/{len(layers)}")
