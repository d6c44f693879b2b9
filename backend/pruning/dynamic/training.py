"""Router training on calibration tokens, threshold calibration, and the optional LoRA restoration.

* `train_routers`: the model's weights are frozen; only the routers learn, from the next-token loss
  on the calibration batches plus a method term: the squared gap between the soft skip ratio and the
  target (`gumbel_gate`: skipgpt-style, dllm-style), the MoD auxiliary loss that teaches the causal
  score to predict top-k membership (`topk_gate`: mod-style causal-threshold), or none (MoD's
  router-weighted top-k, `weighted_topk_gate`: mod-style seed).
* `calibrate_thresholds`: after training (threshold routers only), shift the thresholds so the
  hard, causal decisions skip the target share of the calibration tokens: one shift for all gates
  (the routers keep their learnt allocation across layers) or one per gate (mod-style
  causal-threshold: every layer at capacity). Later layers see the effect of earlier shifts, so
  this repeats a few rounds.
* `lora_restore`: LoRA adapters on the routed modules' linears, trained with the real routing, then
  merged into the weights (no adapter left at inference).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from backend.pruning.dynamic.routing import Gate, reset_counters, routing_layers, skip_ratios, top_k_tokens
from backend.pruning.layers import get_decoder_layers

__all__ = ["calibrate_thresholds", "gumbel_gate", "lm_loss", "lora_restore", "measure_skip", "topk_gate",
           "train_routers", "weighted_topk_gate"]

Progress = Callable[[float, str], None]


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def gumbel_gate(stats: dict[str, list], temperature: float):
    """Gumbel-sigmoid with a straight-through estimator: 0/1 forward, soft gradient."""

    def gate(g: Gate, x: torch.Tensor) -> torch.Tensor:
        score = g.score(x) - g.threshold
        u = torch.rand_like(score).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((score + torch.log(u) - torch.log1p(-u)) / temperature)
        hard = (soft > 0.5).to(soft.dtype)
        stats["skip"].append(1 - soft.mean())
        return hard + soft - soft.detach()

    return gate


def topk_gate(stats: dict[str, list], capacity: float):
    """Mixture-of-Depths: the top `capacity` share of each sequence's tokens run (non-causal, training
    only); the output is scaled by 1 + s - stop_grad(s), which is 1 forward but puts the router on the
    gradient path, and a BCE term teaches the score's sign to predict top-k membership causally."""

    def gate(g: Gate, x: torch.Tensor) -> torch.Tensor:
        score = g.score(x) - g.threshold
        k = min(score.shape[1], max(0, round(capacity * score.shape[1])))
        chosen = torch.zeros_like(score)
        if k:
            chosen.scatter_(1, score.topk(k, dim=1).indices, 1.0)
        stats["aux"].append(F.binary_cross_entropy_with_logits(score, chosen))
        return chosen * (1 + score - score.detach())

    return gate


def weighted_topk_gate(stats: dict[str, list], capacity: float):
    """Mixture-of-Depths as the seed study runs it: the top `capacity` share of each sequence's tokens
    run, their output scaled by sigmoid(score), which puts the router on the gradient path (the same
    selection and weight as at evaluation, `routing.RoutingPolicy` top-k)."""

    def gate(g: Gate, x: torch.Tensor) -> torch.Tensor:
        score = g.score(x)
        chosen = top_k_tokens(score.detach(), capacity)
        return chosen.to(score.dtype) * torch.sigmoid(score)

    return gate


def train_routers(model: nn.Module, calibration: torch.Tensor, gate_factory, extra_loss, steps: int, lr: float,
                  batch_size: int, progress: Progress) -> list[float]:
    """Train the routers only; returns the loss per step. `gate_factory(stats)` builds the training
    gate; `extra_loss(stats)` turns what the gates recorded into the method's loss term."""
    routings = routing_layers(model)
    params = [p for routing in routings for p in routing.parameters()]
    trainable = {p: p.requires_grad for p in model.parameters()}
    device = next(model.parameters()).device
    stats: dict[str, list] = {"skip": [], "aux": []}
    batches = calibration.split(batch_size)
    losses: list[float] = []
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    gate = gate_factory(stats)
    try:
        for routing in routings:
            routing.train_gate = gate
        with torch.enable_grad():
            for step in range(steps):
                ids = batches[step % len(batches)].to(device)
                stats["skip"].clear()
                stats["aux"].clear()
                loss = lm_loss(model, ids) + extra_loss(stats)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(round(float(loss.item()), 6))
                progress((step + 1) / steps, f"training routers, step {step + 1}/{steps}, loss {losses[-1]:.4f}")
    finally:
        for routing in routings:
            routing.train_gate = None
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    return losses


def _cut(margins: torch.Tensor, target: float) -> float:
    """The shift s such that `margin > s` runs all but round(target x n) of the margins."""
    ordered = margins.sort().values
    n = ordered.numel()
    k = round(target * n)
    if k <= 0:
        return float(ordered[0]) - 1.0
    if k >= n:
        return float(ordered[-1]) + 1.0
    return float(ordered[k - 1] + ordered[k]) / 2


def _run(model: nn.Module, calibration: torch.Tensor, batch_size: int) -> None:
    device = next(model.parameters()).device
    with torch.no_grad():
        for ids in calibration.split(batch_size):
            model(input_ids=ids.to(device), use_cache=False)


def measure_skip(model: nn.Module, calibration: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """`skip_ratios` of one pass over the calibration tokens (counters reset before and after)."""
    reset_counters(model)
    _run(model, calibration, batch_size)
    ratios = skip_ratios(model)
    reset_counters(model)
    return ratios


def calibrate_thresholds(model: nn.Module, calibration: torch.Tensor, target: float, per_gate: bool,
                         batch_size: int, rounds: int, progress: Progress, tolerance: float = 0.005) -> dict[str, Any]:
    """Set the gate thresholds so the calibration skip ratio is `target`; returns `skip_ratios`.

    per_gate (block routers only): layer by layer over cached block inputs, each block's threshold at
    its own quantile (exact, one pass). Otherwise one shift for all gates, found by bisection over
    full passes (at most `rounds`): later gates see the effect of earlier ones, so no single
    quantile of the first pass is right.
    """
    if per_gate:
        _per_gate_thresholds(model, calibration, target, batch_size, progress)
    else:
        _global_shift(model, calibration, target, batch_size, rounds, progress, tolerance)
    return measure_skip(model, calibration, batch_size)


def _per_gate_thresholds(model, calibration, target, batch_size, progress) -> None:
    from backend.pruning.layers import capture_layer_inputs, run_layer

    layers = get_decoder_layers(model)
    device = next(model.parameters()).device
    captured = [capture_layer_inputs(model, ids.to(device)) for ids in calibration.split(batch_size)]
    hidden = [c.hidden for c in captured]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            gate = layer.routing.block
            margins = torch.cat([(gate.score(h) - gate.threshold).flatten() for h in hidden])
            gate.threshold += _cut(margins, target)
            hidden = [run_layer(layer, h, c.kwargs) for h, c in zip(hidden, captured)]
            progress((i + 1) / len(layers), f"calibrating router thresholds, layer {i + 1}/{len(layers)}")


def _global_shift(model, calibration, target, batch_size, rounds, progress, tolerance) -> None:
    gates = [g for routing in routing_layers(model) for g in routing.gates().values()]
    base = [g.threshold.clone() for g in gates]

    def ratio_at(shift: float, collect: bool = False) -> float:
        for g, b in zip(gates, base):
            g.threshold.copy_(b + shift)
            g.scores_seen = [] if collect else None
        reset_counters(model)
        _run(model, calibration, batch_size)
        return skip_ratios(model)["overall"]

    try:
        ratio = ratio_at(0.0, collect=True)
        tried = [(abs(ratio - target), 0.0)]
        low, high = (0.0, None) if ratio < target else (None, 0.0)
        shift = _cut(torch.cat([s for g in gates for s in g.scores_seen]), target)
        for r in range(1, rounds):
            ratio = ratio_at(shift)
            tried.append((abs(ratio - target), shift))
            progress(r / rounds, f"calibrating router thresholds, pass {r + 1}: "
                                 f"skip ratio {ratio:.4f} (target {target})")
            if abs(ratio - target) <= tolerance:
                break
            if ratio < target:  # a higher threshold skips more
                low = shift
            else:
                high = shift
            if low is not None and high is not None:
                shift = (low + high) / 2
            else:
                step = max(abs(shift), 1.0)
                shift = shift + step if high is None else shift - step
        best = min(tried)[1]
    finally:
        for g in gates:
            g.scores_seen = None
    for g, b in zip(gates, base):
        g.threshold.copy_(b + best)


class LoRALinear(nn.Module):
    """base(x) + (x A^T B^T) x alpha/rank; B starts at zero, so training starts from the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.a = nn.Parameter(torch.randn(rank, base.in_features, device=base.weight.device) / base.in_features**0.5)
        self.b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x.to(self.a.dtype) @ self.a.T @ self.b.T * self.scale).to(x.dtype)

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.b @ self.a * self.scale).to(self.base.weight.dtype)
        return self.base


def _linear_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every linear in the routed modules (attention and MLP)."""
    slots = []
    for layer in get_decoder_layers(model):
        for parent in (layer.self_attn, layer.mlp):
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    slots.append((parent, name))
    return slots


def lora_restore(model: nn.Module, calibration: torch.Tensor, steps: int, rank: int, lr: float, batch_size: int,
                 progress: Progress) -> list[float]:
    """Train LoRA adapters on the routed model (real routing, fixed thresholds), then merge them."""
    slots = _linear_slots(model)
    trainable = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    for parent, name in slots:
        adapter = LoRALinear(getattr(parent, name), rank, alpha=2.0 * rank)
        adapter.a.data = adapter.a.data.float()
        adapter.b.data = adapter.b.data.float()
        setattr(parent, name, adapter)
        adapters.append(adapter)
    optimizer = torch.optim.Adam([p for a in adapters for p in (a.a, a.b)], lr=lr)
    device = next(model.parameters()).device
    batches = calibration.split(batch_size)
    losses: list[float] = []
    try:
        with torch.enable_grad():
            for step in range(steps):
                ids = batches[step % len(batches)].to(device)
                loss = lm_loss(model, ids)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(round(float(loss.item()), 6))
                progress((step + 1) / steps, f"LoRA restoration, step {step + 1}/{steps}, loss {losses[-1]:.4f}")
    finally:
        for (parent, name), adapter in zip(slots, adapters):
            setattr(parent, name, adapter.merged())
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    reset_counters(model)
    return losses
