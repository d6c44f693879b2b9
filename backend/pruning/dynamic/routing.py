"""Per-token routers inside the decoder blocks, with real compute skipping.

`install_routing(model, granularity, router_hidden)` gives every decoder block a `routing` module
(`LayerRouting`) and replaces the block's `forward` with `routed_forward`:

* granularity "module" (skipgpt-style): one `Gate` before the attention and one before the MLP;
* granularity "block" (dllm-style, mod-style): one `Gate` before the block decides both modules.

A gate scores each token from its residual-stream state (RMS-normalised, then a linear or a small
MLP) and runs the module when the score exceeds its `threshold`; the decision only looks at the token
itself, so it is causal: a prompt processed at once and the same tokens decoded one by one get the
same decisions.

Evaluation (the default) skips for real: the routed tokens are gathered, the module runs on them only
and its output is scattered back onto the residual stream; skipped tokens keep their residual. In
prefill and in cached decoding alike.

KV cache of a skipped attention: the skipped token still computes its K and V (input norm, k_proj,
v_proj, rotary) and writes them to the cache, so later tokens attend to it exactly as in the dense
model; it pays no q_proj, no attention over the context and no o_proj. With grouped-query attention
k_proj + v_proj are a small share of the attention weights (SmolLM2: 2 x 576x192 against 2 x 576x576),
and the cache stays complete and aligned with positions, so `generate`, the model's masks and
padding work unchanged. So "skip attention for token t" means exactly "t receives no attention
output", while the context seen by other tokens is untouched.

Router training uses `LayerRouting.train_mode`: every token runs every module and the gate
multiplies the module's output (masking is for training only; see `_masked_forward`).

Counters: every gate counts the decisions it takes (`seen`, `ran`) outside training;
`reset_counters` / `skip_ratios` read them, e.g. around an evaluation.

Supported blocks: Llama-style pre-norm blocks (`input_layernorm`, `self_attn` with q/k/v/o_proj and
optional q_norm/k_norm, `post_attention_layernorm`, `mlp`) with full rotary embeddings and the sdpa or
eager attention implementation (Llama, Mistral, Qwen2, Qwen3, SmolLM2). Anything else: ValueError
from `check_structure`, before any work.
"""
from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backend.pruning.layers import get_decoder_layers

__all__ = ["Gate", "LayerRouting", "check_structure", "decode_flops", "force_routing", "install_routing",
           "reset_counters", "routed_forward", "routing_layers", "skip_ratios"]

GRANULARITIES = ("module", "block")
_ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")
_UNSUPPORTED_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
"""Gemma-2/3-style sandwich norms: the residual structure differs from the one routed here."""


def check_structure(model: nn.Module, method: str = "dynamic routing") -> None:
    """ValueError naming the first missing piece when the model's blocks cannot be routed."""
    try:
        layers = get_decoder_layers(model)
    except ValueError as exc:
        raise ValueError(f"{method}: {exc}") from None
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"{method}: attention implementation {impl!r} is not supported (use sdpa or eager)")
    factor = getattr(model.config, "partial_rotary_factor", None)
    if factor not in (None, 1.0):
        raise ValueError(f"{method}: partial rotary embeddings (factor {factor}) are not supported")
    for index, layer in enumerate(layers):
        if hasattr(layer, "routing"):
            raise ValueError(f"{method}: decoder layer {index} already has routers")
        missing = [n for n in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
                   if not isinstance(getattr(layer, n, None), nn.Module)]
        attn = getattr(layer, "self_attn", None)
        if attn is not None:
            missing += [f"self_attn.{n}" for n in _ATTN_PARTS if not isinstance(getattr(attn, n, None), nn.Linear)]
            missing += [f"self_attn.{n}" for n in ("head_dim", "scaling", "layer_idx") if not hasattr(attn, n)]
        if missing:
            raise ValueError(f"{method}: decoder layer {index} ({type(layer).__name__}) lacks {', '.join(missing)}; "
                             "routers need Llama-style blocks (self_attn with q/k/v/o_proj, mlp, two norms)")
        extra = [n for n in _UNSUPPORTED_NORMS if hasattr(layer, n)]
        if extra or getattr(attn, "attn_logit_softcapping", None):
            raise ValueError(f"{method}: decoder layer {index} ({type(layer).__name__}) has "
                             f"{', '.join(extra) or 'attention softcapping'}, which routing does not model")


class Gate(nn.Module):
    """One routing point: per token, run the next module(s) when `score > threshold`.

    `force` overrides the router (tests, diagnostics): None (use the router), True (run every token),
    False (skip every token) or a bool tensor (batch, seq) of the tokens to run.
    """

    def __init__(self, hidden_size: int, router_hidden: int = 0, init_bias: float = 2.0):
        super().__init__()
        if router_hidden:
            self.net = nn.Sequential(nn.Linear(hidden_size, router_hidden), nn.SiLU(), nn.Linear(router_hidden, 1))
        else:
            self.net = nn.Linear(hidden_size, 1)
        last = self.net[-1] if router_hidden else self.net
        nn.init.normal_(last.weight, std=0.02)
        nn.init.constant_(last.bias, init_bias)  # start close to "run everything": training removes work
        self.register_buffer("threshold", torch.zeros(()))
        self.force: bool | torch.Tensor | None = None
        self.seen = 0
        self.ran = 0
        self.recorded: list[torch.Tensor] | None = None
        """Set to a list to record every decision tensor (tests compare prefill and decoding)."""
        self.scores_seen: list[torch.Tensor] | None = None
        """Set to a list to collect `score - threshold` per token (threshold calibration)."""

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq) router logits, in float32 whatever the model's dtype."""
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.net(x).squeeze(-1)

    def decide(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """((batch, seq) bool: which tokens run the module, how many do)."""
        if self.force is None:
            margin = self.score(x) - self.threshold
            if self.scores_seen is not None:
                self.scores_seen.append(margin.detach().flatten())
            run = margin > 0
        elif isinstance(self.force, bool):
            run = torch.full(x.shape[:2], self.force, dtype=torch.bool, device=x.device)
        else:
            run = self.force.to(x.device)
        count = int(run.sum())  # one host sync per decision; the routed modules branch on it
        self.seen += run.numel()
        self.ran += count
        if self.recorded is not None:
            self.recorded.append(run.detach().clone())
        return run, count


class LayerRouting(nn.Module):
    """The gates of one decoder block; `train_gate` is set (a callable) only while routers train."""

    def __init__(self, hidden_size: int, granularity: str, router_hidden: int = 0):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
        self.granularity = granularity
        if granularity == "module":
            self.attn = Gate(hidden_size, router_hidden)
            self.mlp = Gate(hidden_size, router_hidden)
        else:
            self.block = Gate(hidden_size, router_hidden)
        self.train_gate = None
        """During router training: f(gate, x) -> (batch, seq) float multiplier (see `_masked_forward`)."""

    def gates(self) -> dict[str, Gate]:
        return {"attn": self.attn, "mlp": self.mlp} if self.granularity == "module" else {"block": self.block}


def install_routing(model: nn.Module, granularity: str, router_hidden: int = 0,
                    method: str = "dynamic routing") -> None:
    """Add routers to every decoder block and make the blocks route (see the module docstring)."""
    check_structure(model, method)
    first = next(model.parameters())
    for layer in get_decoder_layers(model):
        hidden = layer.input_layernorm.weight.shape[-1]
        layer.routing = LayerRouting(hidden, granularity, router_hidden).to(first.device)
        layer.forward = types.MethodType(routed_forward, layer)


def routing_layers(model: nn.Module) -> list[LayerRouting]:
    layers = get_decoder_layers(model)
    missing = [i for i, layer in enumerate(layers) if not isinstance(getattr(layer, "routing", None), LayerRouting)]
    if missing:
        raise ValueError(f"decoder layers {missing} have no routers")
    return [layer.routing for layer in layers]


def force_routing(model: nn.Module, value: bool | None) -> None:
    """Every gate runs everything (True), skips everything (False) or uses its router (None)."""
    for routing in routing_layers(model):
        for gate in routing.gates().values():
            gate.force = value


def reset_counters(model: nn.Module) -> None:
    for routing in routing_layers(model):
        for gate in routing.gates().values():
            gate.seen = gate.ran = 0


def skip_ratios(model: nn.Module) -> dict[str, Any]:
    """Skip ratio per layer and gate since the last reset, and overall (decisions, unweighted)."""
    per_layer, seen, skipped = [], 0, 0
    for routing in routing_layers(model):
        row = {}
        for name, gate in routing.gates().items():
            row[name] = round(1 - gate.ran / gate.seen, 6) if gate.seen else None
            seen += gate.seen
            skipped += gate.seen - gate.ran
        per_layer.append(row)
    return {"overall": round(skipped / seen, 6) if seen else None, "decisions": seen, "per_layer": per_layer}


def decode_flops(model: nn.Module, ratios: dict[str, Any] | None = None) -> dict[str, float]:
    """FLOPs per decoded token (2 x matmul weights, as `backend.structured_speed`), dense and routed.

    `routed`: this implementation at the given skip ratios (default: the counters): routers always,
    k_proj + v_proj always (the KV cache stays complete), q_proj + o_proj and the MLP only when run;
    `routed_no_kv`: the same if skipped tokens did not compute K/V either. lm_head is counted in all.
    """
    ratios = skip_ratios(model) if ratios is None else ratios
    head = model.get_output_embeddings()
    dense = routed = routed_no_kv = float(head.weight.numel()) if head is not None else 0.0
    for layer, skip in zip(get_decoder_layers(model), ratios["per_layer"]):
        attn = layer.self_attn
        kv = attn.k_proj.weight.numel() + attn.v_proj.weight.numel()
        qo = attn.q_proj.weight.numel() + attn.o_proj.weight.numel()
        mlp = sum(m.weight.numel() for m in layer.mlp.modules() if isinstance(m, nn.Linear))
        routers = sum(m.weight.numel() for m in layer.routing.modules() if isinstance(m, nn.Linear))
        run_attn = 1 - (skip.get("attn", skip.get("block")) or 0.0)
        run_mlp = 1 - (skip.get("mlp", skip.get("block")) or 0.0)
        dense += kv + qo + mlp
        routed += routers + kv + qo * run_attn + mlp * run_mlp
        routed_no_kv += routers + (kv + qo) * run_attn + mlp * run_mlp
    return {"dense": 2 * dense, "routed": 2 * routed, "routed_no_kv": 2 * routed_no_kv}


# --- the routed block ---------------------------------------------------------------------------


def routed_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: Any = None,
                   position_ids: Any = None, past_key_values: Any = None, use_cache: bool | None = False,
                   position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs: Any) -> torch.Tensor:
    """Drop-in `forward` of a routed decoder block (bound to the block by `install_routing`)."""
    routing: LayerRouting = self.routing
    if routing.train_gate is not None:
        return _masked_forward(self, hidden_states, attention_mask, position_ids, position_embeddings, **kwargs)
    x = hidden_states
    block = routing.block.decide(x) if routing.granularity == "block" else None
    attn_run, attn_count = block if block is not None else routing.attn.decide(x)
    x = _routed_attention(self, x, attn_run, attn_count, position_embeddings, attention_mask, past_key_values)
    mlp_run, mlp_count = block if block is not None else routing.mlp.decide(x)
    return _routed_mlp(self, x, mlp_run, mlp_count)


def _masked_forward(layer, x, attention_mask, position_ids, position_embeddings, **kwargs):
    # Masking is for router training only: every token runs both modules and the gate (0/1 forward,
    # straight-through gradient) scales the module's output. Evaluation never comes here: it routes
    # for real in `routed_forward`.
    routing: LayerRouting = layer.routing
    gate = routing.train_gate
    block = gate(routing.block, x) if routing.granularity == "block" else None
    g_attn = block if block is not None else gate(routing.attn, x)
    attn_out = layer.self_attn(hidden_states=layer.input_layernorm(x), attention_mask=attention_mask,
                               position_ids=position_ids, past_key_values=None,
                               position_embeddings=position_embeddings, **kwargs)[0]
    x = x + g_attn.unsqueeze(-1).to(x.dtype) * attn_out
    g_mlp = block if block is not None else gate(routing.mlp, x)
    return x + g_mlp.unsqueeze(-1).to(x.dtype) * layer.mlp(layer.post_attention_layernorm(x))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on (batch, heads, seq, head_dim) with (batch, seq, head_dim) cos/sin (Llama form)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _heads(attn, proj: nn.Linear, norm_name: str, x: torch.Tensor) -> torch.Tensor:
    batch, seq = x.shape[:2]
    states = proj(x).view(batch, seq, -1, attn.head_dim)
    norm = getattr(attn, norm_name, None) if norm_name else None
    if norm is not None:
        states = norm(states)
    return states.transpose(1, 2)


def _routed_attention(layer, x, run, count, position_embeddings, attention_mask, past_key_values):
    """x + attention output for the routed tokens; every token's K/V goes to the cache."""
    attn = layer.self_attn
    batch, seq, hidden = x.shape
    normed = layer.input_layernorm(x)
    cos, sin = position_embeddings
    key = _rotate(_heads(attn, attn.k_proj, "k_norm", normed), cos, sin)
    value = _heads(attn, attn.v_proj, None, normed)
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, attn.layer_idx)
    if count == 0:
        return x
    total = key.shape[2]
    past = total - seq
    if count == run.numel():
        index = valid = None
        q_in, q_cos, q_sin = normed, cos, sin
    else:
        counts = run.sum(1)
        width = int(counts.max())
        # routed positions first, in order; slots past a row's count hold skipped positions (discarded)
        index = torch.argsort((~run).to(torch.int8), dim=1, stable=True)[:, :width]
        valid = torch.arange(width, device=x.device).unsqueeze(0) < counts.unsqueeze(1)
        q_in = normed.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden))
        pick = index.unsqueeze(-1).expand(-1, -1, cos.shape[-1])
        q_cos = cos.expand(batch, -1, -1).gather(1, pick)
        q_sin = sin.expand(batch, -1, -1).gather(1, pick)
    query = _rotate(_heads(attn, attn.q_proj, "q_norm", q_in), q_cos, q_sin)
    mask, causal = _query_mask(attention_mask, index, seq, past, total, x.device)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal,
                                         scale=attn.scaling, enable_gqa=query.shape[1] != key.shape[1])
    out = attn.o_proj(out.transpose(1, 2).reshape(batch, query.shape[2], -1))
    if index is None:
        return x + out
    out = torch.where(valid.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype, device=out.device))
    return x.scatter_add(1, index.unsqueeze(-1).expand(-1, -1, hidden), out)


def _query_mask(attention_mask, index, seq, past, total, device):
    """(mask, is_causal) for the gathered queries; `index` None: all queries, in order."""
    if isinstance(attention_mask, torch.Tensor):
        mask = attention_mask[..., :total]
        if index is not None:
            mask = mask.expand(index.shape[0], -1, -1, -1)
            rows = index[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[-1])
            mask = mask.gather(2, rows)
        return mask, False
    if attention_mask is not None:
        raise ValueError(f"routed attention needs a tensor attention mask, got {type(attention_mask).__name__}")
    # None: the model found plain causal attention enough (no padding)
    if index is None:
        if seq == 1 or past == 0:
            return None, seq > 1
        index = torch.arange(seq, device=device).unsqueeze(0)
    positions = torch.arange(total, device=device)
    return (positions.view(1, 1, 1, -1) <= (past + index).unsqueeze(1).unsqueeze(-1)), False


def _routed_mlp(layer, x, run, count):
    """x + MLP output for the routed tokens only."""
    if count == run.numel():
        return x + layer.mlp(layer.post_attention_layernorm(x))
    if count == 0:
        return x
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    chosen = run.reshape(-1).nonzero().squeeze(1)
    out = layer.mlp(layer.post_attention_layernorm(flat.index_select(0, chosen)))
    return flat.index_add(0, chosen, out.to(flat.dtype)).view(shape)
