"""The routed decoder block: `install_routing` gives blocks their gates and replaces each routed
block's `forward` by `routed_forward` (see `routing` for what the gates decide).

Evaluation (`routed_forward` without a training gate) skips for real: each gate decides which tokens
run its module(s) (`Gate.decide`, by the layer's `RoutingPolicy`); the attention gathers the routed
tokens' queries, attends over the cache (keys of evicted tokens masked out) and scatters its output
back; the MLP runs on the routed tokens only. Training (`train_gate` set) runs every token through
both modules and multiplies each module's output by the gate's value (`_masked_forward`).
"""
from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backend.pruning.dynamic.routing import LayerRouting, RoutingPolicy, check_structure
from backend.pruning.layers import get_decoder_layers

__all__ = ["install_routing", "routed_forward"]


def routed_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: Any = None,
                   position_ids: Any = None, past_key_values: Any = None, use_cache: bool | None = False,
                   position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs: Any) -> torch.Tensor:
    """Drop-in `forward` of a routed decoder block (bound to the block by `install_routing`)."""
    routing: LayerRouting = self.routing
    if routing.train_gate is not None:
        return _masked_forward(self, hidden_states, attention_mask, position_ids, position_embeddings, **kwargs)
    x = hidden_states
    policy = routing.policy
    past = past_key_values.get_seq_length(self.self_attn.layer_idx) if past_key_values is not None else 0
    valid = _real_tokens(attention_mask, x.shape[1], past) if policy.selection == "top-k" else None

    def decide(gate, state):
        return gate.decide(state, policy, first_pass=past == 0, valid=valid)

    block = decide(routing.block, x) if routing.granularity == "block" else None
    attn_run, attn_count, attn_weight = block if block is not None else decide(routing.attn, x)
    x = _routed_attention(self, x, attn_run, attn_count, attn_weight, position_embeddings, attention_mask,
                          past_key_values)
    mlp_run, mlp_count, mlp_weight = block if block is not None else decide(routing.mlp, x)
    return _routed_mlp(self, x, mlp_run, mlp_count, mlp_weight)


def _real_tokens(attention_mask: Any, seq: int, past: int) -> torch.Tensor | None:
    """(batch, seq) bool, False at padding: a padded query may not attend to its own position
    (None: no mask, no padding)."""
    if not isinstance(attention_mask, torch.Tensor):
        return None
    rows = torch.arange(seq, device=attention_mask.device)
    own = attention_mask[:, 0, rows, past + rows]
    return own if own.dtype == torch.bool else own == 0


def _masked_forward(layer, x, attention_mask, position_ids, position_embeddings, **kwargs):
    # Masking is for router training only: every token runs both modules and the gate (0/1 forward
    # and a straight-through gradient, or MoD's router weight) scales the module's output. With
    # eviction the skipped tokens' keys are masked out of the attention, as at evaluation.
    # Evaluation never comes here: it routes for real in `routed_forward`.
    routing: LayerRouting = layer.routing
    gate = routing.train_gate
    block = gate(routing.block, x) if routing.granularity == "block" else None
    g_attn = block if block is not None else gate(routing.attn, x)
    if routing.policy.evict_skipped_kv:
        attention_mask = _key_mask(attention_mask, g_attn.detach() != 0, layer.self_attn)
    attn_out = layer.self_attn(hidden_states=layer.input_layernorm(x), attention_mask=attention_mask,
                               position_ids=position_ids, past_key_values=None,
                               position_embeddings=position_embeddings, **kwargs)[0]
    x = x + g_attn.unsqueeze(-1).to(x.dtype) * attn_out
    g_mlp = block if block is not None else gate(routing.mlp, x)
    return x + g_mlp.unsqueeze(-1).to(x.dtype) * layer.mlp(layer.post_attention_layernorm(x))


def _key_mask(attention_mask: Any, kept: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """The model's (causal, padding) mask for one uncached pass, keys of tokens not `kept` masked out;
    each query keeps its own key so no row is empty (a skipped query's output is discarded)."""
    batch, seq = kept.shape
    rows = torch.arange(seq, device=kept.device)
    allowed = (kept[:, None, None, :] | (rows[:, None] == rows[None, :])) & (rows[None, :] <= rows[:, None])
    if isinstance(attention_mask, torch.Tensor):
        own = attention_mask[..., :seq]
        if own.dtype == torch.bool:
            return own & allowed
        return own.masked_fill(~allowed, torch.finfo(own.dtype).min)
    if getattr(attn.config, "_attn_implementation", None) == "eager":  # eager adds the mask to the scores
        return torch.zeros(allowed.shape, dtype=torch.float32, device=kept.device).masked_fill(
            ~allowed, torch.finfo(torch.float32).min)
    return allowed


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on (batch, heads, seq, head_dim) with (batch, seq, head_dim) cos/sin (Llama form)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _heads(attn, proj: nn.Linear, norm_name: str | None, x: torch.Tensor) -> torch.Tensor:
    batch, seq = x.shape[:2]
    states = proj(x).view(batch, seq, -1, attn.head_dim)
    norm = getattr(attn, norm_name, None) if norm_name else None
    if norm is not None:
        states = norm(states)
    return states.transpose(1, 2)


def _routed_attention(layer, x, run, count, weight, position_embeddings, attention_mask, past_key_values):
    """x + attention output (times `weight`, when given) for the routed tokens; every token's K/V goes
    to the cache, or only the routed tokens' when the policy evicts."""
    attn = layer.self_attn
    routing: LayerRouting = layer.routing
    evict = routing.policy.evict_skipped_kv
    batch, seq, hidden = x.shape
    normed = layer.input_layernorm(x)
    cos, sin = position_embeddings
    index = valid = routed = None
    if count not in (0, run.numel()):
        counts = run.sum(1)
        width = int(counts.max())
        # routed positions first, in order; slots past a row's count hold skipped positions (discarded)
        index = torch.argsort((~run).to(torch.int8), dim=1, stable=True)[:, :width]
        valid = torch.arange(width, device=x.device).unsqueeze(0) < counts.unsqueeze(1)
        pick = index.unsqueeze(-1).expand(-1, -1, cos.shape[-1])
        routed = (normed.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden)),
                  cos.expand(batch, -1, -1).gather(1, pick), sin.expand(batch, -1, -1).gather(1, pick))
    if evict and count != run.numel():
        key, value = _routed_kv(attn, normed, index, valid, routed)
    else:
        key = _rotate(_heads(attn, attn.k_proj, "k_norm", normed), cos, sin)
        value = _heads(attn, attn.v_proj, None, normed)
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, attn.layer_idx)
    total = key.shape[2]
    past = total - seq
    kept = routing.kept_keys(run, past, past_key_values is not None) if evict else None
    if count == 0:
        return x
    q_in, q_cos, q_sin = (normed, cos, sin) if routed is None else routed
    query = _rotate(_heads(attn, attn.q_proj, "q_norm", q_in), q_cos, q_sin)
    mask, causal = _query_mask(attention_mask, index, seq, past, total, x.device, kept)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal,
                                         scale=attn.scaling, enable_gqa=query.shape[1] != key.shape[1])
    out = attn.o_proj(out.transpose(1, 2).reshape(batch, query.shape[2], -1))
    if weight is not None:
        out = out * (weight if index is None else weight.gather(1, index)).unsqueeze(-1).to(out.dtype)
    if index is None:
        return x + out
    out = torch.where(valid.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype, device=out.device))
    return x.scatter_add(1, index.unsqueeze(-1).expand(-1, -1, hidden), out)


def _routed_kv(attn, normed, index, valid, routed):
    """(key, value) of every position for an evicting attention: the routed tokens' own K/V, zeros in
    the skipped tokens' slots (masked out later); only routed tokens pay for k_proj and v_proj."""
    batch, seq = normed.shape[:2]
    kv_heads = attn.k_proj.out_features // attn.head_dim
    key = normed.new_zeros(batch, kv_heads, seq, attn.head_dim)
    value = normed.new_zeros(batch, kv_heads, seq, attn.head_dim)
    if routed is None:  # nobody runs
        return key, value
    routed_in, routed_cos, routed_sin = routed
    keep = valid[:, None, :, None].to(normed.dtype)
    routed_key = _rotate(_heads(attn, attn.k_proj, "k_norm", routed_in), routed_cos, routed_sin) * keep
    routed_value = _heads(attn, attn.v_proj, None, routed_in) * keep
    slots = index[:, None, :, None].expand(-1, kv_heads, -1, attn.head_dim)
    return key.scatter(2, slots, routed_key), value.scatter(2, slots, routed_value)


def _query_mask(attention_mask, index, seq, past, total, device, kept=None):
    """(mask, is_causal) for the gathered queries; `index` None: all queries, in order; `kept`
    (batch, total) bool: keys the queries may see (eviction; None: all)."""
    if isinstance(attention_mask, torch.Tensor):
        mask = attention_mask[..., :total]
        if index is not None:
            mask = mask.expand(index.shape[0], -1, -1, -1)
            rows = index[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[-1])
            mask = mask.gather(2, rows)
    elif attention_mask is not None:
        raise ValueError(f"routed attention needs a tensor attention mask, got {type(attention_mask).__name__}")
    else:  # None: the model found plain causal attention enough (no padding)
        if index is None and kept is None and (seq == 1 or past == 0):
            return None, seq > 1
        queries = torch.arange(seq, device=device).unsqueeze(0) if index is None else index
        positions = torch.arange(total, device=device)
        mask = positions.view(1, 1, 1, -1) <= (past + queries).unsqueeze(1).unsqueeze(-1)
    if kept is None:
        return mask, False
    keys = kept[:, None, None, :total]
    if mask.dtype == torch.bool:
        return mask & keys, False
    return mask.masked_fill(~keys, torch.finfo(mask.dtype).min), False


def _routed_mlp(layer, x, run, count, weight=None):
    """x + MLP output (times `weight`, when given) for the routed tokens only."""
    if count == 0:
        return x
    if count == run.numel():
        out = layer.mlp(layer.post_attention_layernorm(x))
        return x + (out if weight is None else out * weight.unsqueeze(-1).to(out.dtype))
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    chosen = run.reshape(-1).nonzero().squeeze(1)
    out = layer.mlp(layer.post_attention_layernorm(flat.index_select(0, chosen)))
    if weight is not None:
        out = out * weight.reshape(-1).index_select(0, chosen).unsqueeze(-1).to(out.dtype)
    return flat.index_add(0, chosen, out.to(flat.dtype)).view(shape)


def install_routing(model: nn.Module, granularity: str, router_hidden: int = 0, method: str = "dynamic routing",
                    policy: RoutingPolicy = RoutingPolicy(), exempt: tuple[int, ...] = ()) -> None:
    """Add routers to every decoder block but `exempt` ones and make those blocks route (see the
    module docstring)."""
    check_structure(model, method)
    layers = get_decoder_layers(model)
    if len(set(exempt) & set(range(len(layers)))) == len(layers):
        raise ValueError(f"{method}: every one of the {len(layers)} decoder layers is exempt from routing")
    first = next(model.parameters())
    for index, layer in enumerate(layers):
        if index in exempt:
            continue
        hidden = layer.input_layernorm.weight.shape[-1]
        layer.routing = LayerRouting(hidden, granularity, router_hidden, policy).to(first.device)
        layer.forward = types.MethodType(routed_forward, layer)
