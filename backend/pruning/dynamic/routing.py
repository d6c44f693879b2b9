"""Per-token routers inside the decoder blocks, with real compute skipping.

`routed_block.install_routing(model, granularity, router_hidden, policy=..., exempt=...)` gives every decoder
block but the `exempt` ones a `routing` module (`LayerRouting`) and replaces the block's `forward`
with `backend.pruning.dynamic.routed_block.routed_forward`:

* granularity "module" (skipgpt-style, mod-style `seed`): one `Gate` before the attention and one
  before the MLP;
* granularity "block" (dllm-style, mod-style `causal-threshold`): one `Gate` before the block
  decides both modules.

A gate scores each token from its residual-stream state (RMS-normalised, then a linear or a small
MLP). The `RoutingPolicy` says what the score decides:

* selection `threshold`: a token runs the module when its score exceeds the gate's `threshold`; the
  decision looks at the token alone, so it is causal: a prompt processed at once and the same tokens
  decoded one by one get the same decisions;
* selection `top-k` (Mixture-of-Depths): in a pass over a prompt (nothing cached yet), the
  round(capacity x n) highest-scoring of each sequence's n tokens run (padding excluded, ties to the
  earlier token); in later passes (cached decoding) every token runs: only the prompt is routed;
* `scale_by_router`: a token that runs gets the module's output times sigmoid(score) (MoD's
  router-weighted output; the sigmoid keeps the pretrained block's scale within (0, 1));
* `evict_skipped_kv`: what a token that skips an attention leaves in the KV cache (below).

Evaluation skips for real: the routed tokens are gathered, the module runs on them only and its
output is scattered back onto the residual stream; skipped tokens keep their residual. In prefill
and in cached decoding alike.

KV cache of a skipped attention, `evict_skipped_kv` False (keep): the skipped token still computes
its K and V (input norm, k_proj, v_proj, rotary) and writes them to the cache, so later tokens attend
to it exactly as in the dense model; it pays no q_proj, no attention over the context and no o_proj.
With grouped-query attention k_proj + v_proj are a small share of the attention weights (SmolLM2:
2 x 576x192 against 2 x 576x576). So "skip attention for token t" means exactly "t receives no
attention output", while the context seen by other tokens is untouched.

`evict_skipped_kv` True (evict, D-LLM's and MoD's rule): the skipped token computes no K and V; its
cache slot holds zeros and is masked out (`LayerRouting.kv_kept` remembers, per cached position,
whether it holds a routed token's K/V), so later tokens of that layer do not attend to it. The
slots stay so the cache stays aligned with positions (the model's masks and `generate` work
unchanged); the memory is not reclaimed.

Router training uses `LayerRouting.train_gate`: every token runs every module and the gate
multiplies the module's output (masking is for training only; see `routed_block`); with eviction
the skipped tokens' keys are masked out of the attention there too.

Counters: every gate counts the decisions it takes (`seen`, `ran`) outside training (top-k: the
prompt's real tokens only); `reset_counters` / `skip_ratios` read them, e.g. around an evaluation.

Supported blocks: Llama-style pre-norm blocks (`input_layernorm`, `self_attn` with q/k/v/o_proj and
optional q_norm/k_norm, `post_attention_layernorm`, `mlp`) with full rotary embeddings and the sdpa or
eager attention implementation (Llama, Mistral, Qwen2, Qwen3, SmolLM2). Anything else: ValueError
from `check_structure`, before any work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from backend.pruning.layers import get_decoder_layers

__all__ = ["Gate", "LayerRouting", "RoutingPolicy", "check_structure", "decode_flops", "force_routing",
           "reset_counters", "routing_layers", "skip_ratios", "top_k_tokens"]

GRANULARITIES = ("module", "block")
SELECTIONS = ("threshold", "top-k")
_ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")
_UNSUPPORTED_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
"""Gemma-2/3-style sandwich norms: the residual structure differs from the one routed here."""


@dataclass(frozen=True)
class RoutingPolicy:
    """What a gate's score decides (see the module docstring)."""

    selection: str = "threshold"
    capacity: float = 1.0
    """top-k: the share of each prompt's tokens that run."""
    scale_by_router: bool = False
    evict_skipped_kv: bool = False

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, not {self.selection!r}")
        if not 0.0 <= self.capacity <= 1.0:
            raise ValueError(f"capacity must be in [0, 1], not {self.capacity}")


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
    """One routing point: per token, run the next module(s) or not (`LayerRouting.policy` says how).

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

    def decide(self, x: torch.Tensor, policy: RoutingPolicy = RoutingPolicy(), first_pass: bool = True,
               valid: torch.Tensor | None = None) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """((batch, seq) bool: which tokens run the module, how many do, the (batch, seq) output scale
        or None). `first_pass`: nothing is cached yet; `valid`: (batch, seq) bool, False at padding."""
        score = None
        counted = True
        if self.force is None:
            score = self.score(x)
            if policy.selection == "top-k":
                if first_pass:
                    run = top_k_tokens(score, policy.capacity, valid)
                else:  # cached decoding: only the prompt is routed
                    run = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                    counted = False
            else:
                margin = score - self.threshold
                if self.scores_seen is not None:
                    self.scores_seen.append(margin.detach().flatten())
                run = margin > 0
        elif isinstance(self.force, bool):
            run = torch.full(x.shape[:2], self.force, dtype=torch.bool, device=x.device)
        else:
            run = self.force.to(x.device)
        count = int(run.sum())  # one host sync per decision; the routed modules branch on it
        if counted:
            if policy.selection == "top-k" and valid is not None:  # padding is no decision
                self.seen += int(valid.sum())
            else:
                self.seen += run.numel()
            self.ran += count
            if self.recorded is not None:
                self.recorded.append(run.detach().clone())
        weight = None
        if policy.scale_by_router:
            weight = torch.sigmoid(self.score(x) if score is None else score)
        return run, count, weight


def top_k_tokens(score: torch.Tensor, capacity: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, seq) bool: per row, the round(capacity x n) highest scores among its n valid tokens
    (ties to the earlier token)."""
    valid = torch.ones_like(score, dtype=torch.bool) if valid is None else valid.to(score.device)
    ranked = score.masked_fill(~valid, float("-inf"))
    order = torch.argsort(-ranked, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(score.shape[1], device=score.device)
                                            .expand_as(order).contiguous())
    k = (capacity * valid.sum(1, keepdim=True)).round()
    return (rank < k) & valid


class LayerRouting(nn.Module):
    """The gates of one decoder block and their policy; `train_gate` is set (a callable) only while
    routers train."""

    def __init__(self, hidden_size: int, granularity: str, router_hidden: int = 0,
                 policy: RoutingPolicy = RoutingPolicy()):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
        self.granularity = granularity
        self.policy = policy
        if granularity == "module":
            self.attn = Gate(hidden_size, router_hidden)
            self.mlp = Gate(hidden_size, router_hidden)
        else:
            self.block = Gate(hidden_size, router_hidden)
        self.train_gate = None
        """During router training: f(gate, x) -> (batch, seq) float multiplier (see `routed_block`)."""
        self.kv_kept: torch.Tensor | None = None
        """Eviction, cached passes: (batch, cached length) bool, True where the slot holds a routed token's K/V."""

    def gates(self) -> dict[str, Gate]:
        return {"attn": self.attn, "mlp": self.mlp} if self.granularity == "module" else {"block": self.block}

    def kept_keys(self, run: torch.Tensor, past: int, cached: bool) -> torch.Tensor:
        """(batch, keys) bool: which keys an evicting attention may attend to in this pass, recording
        this pass's tokens when the pass writes to a cache."""
        if not cached:
            return run
        if past == 0:
            self.kv_kept = run.clone()
        elif self.kv_kept is None or tuple(self.kv_kept.shape) != (run.shape[0], past):
            raise RuntimeError(f"routing: the KV cache holds {past} positions but the eviction record "
                               f"{None if self.kv_kept is None else tuple(self.kv_kept.shape)}; caches must be "
                               "filled by this model from position 0")
        else:
            self.kv_kept = torch.cat([self.kv_kept, run], dim=1)
        return self.kv_kept


def routing_layers(model: nn.Module) -> list[LayerRouting]:
    """The routers of the routed decoder layers, in order (exempt layers have none)."""
    routings = [layer.routing for layer in get_decoder_layers(model)
                if isinstance(getattr(layer, "routing", None), LayerRouting)]
    if not routings:
        raise ValueError("the model has no routers")
    return routings


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
    """Skip ratio per layer and gate since the last reset ({} for an exempt layer), and overall
    (decisions, unweighted)."""
    routing_layers(model)  # a model without routers is an error
    per_layer, seen, skipped = [], 0, 0
    for layer in get_decoder_layers(model):
        row = {}
        routing = getattr(layer, "routing", None)
        for name, gate in (routing.gates().items() if routing is not None else ()):
            row[name] = round(1 - gate.ran / gate.seen, 6) if gate.seen else None
            seen += gate.seen
            skipped += gate.seen - gate.ran
        per_layer.append(row)
    return {"overall": round(skipped / seen, 6) if seen else None, "decisions": seen, "per_layer": per_layer}


def decode_flops(model: nn.Module, ratios: dict[str, Any] | None = None) -> dict[str, float]:
    """FLOPs per decoded token (2 x matmul weights, as `backend.structured_speed`), dense and routed.

    `routed`: this implementation at the given skip ratios (default: the counters): routers always;
    k_proj + v_proj always when skipped tokens keep their K/V, only with the attention when they are
    evicted; q_proj + o_proj and the MLP only when run; top-k routing decodes every token (only the
    prompt is routed). `routed_no_kv`: the same if skipped tokens never computed K/V. Exempt layers
    run densely. lm_head is counted in all.
    """
    ratios = skip_ratios(model) if ratios is None else ratios
    head = model.get_output_embeddings()
    dense = routed = routed_no_kv = float(head.weight.numel()) if head is not None else 0.0
    for layer, skip in zip(get_decoder_layers(model), ratios["per_layer"]):
        attn = layer.self_attn
        kv = attn.k_proj.weight.numel() + attn.v_proj.weight.numel()
        qo = attn.q_proj.weight.numel() + attn.o_proj.weight.numel()
        mlp = sum(m.weight.numel() for m in layer.mlp.modules() if isinstance(m, nn.Linear))
        dense += kv + qo + mlp
        routing = getattr(layer, "routing", None)
        if routing is None:
            routed += kv + qo + mlp
            routed_no_kv += kv + qo + mlp
            continue
        routers = sum(m.weight.numel() for m in routing.modules() if isinstance(m, nn.Linear))
        run_attn = 1 - (skip.get("attn", skip.get("block")) or 0.0)
        run_mlp = 1 - (skip.get("mlp", skip.get("block")) or 0.0)
        if routing.policy.selection == "top-k":
            run_attn = run_mlp = 1.0
        kv_cost = kv * run_attn if routing.policy.evict_skipped_kv else kv
        routed += routers + kv_cost + qo * run_attn + mlp * run_mlp
        routed_no_kv += routers + (kv + qo) * run_attn + mlp * run_mlp
    return {"dense": 2 * dense, "routed": 2 * routed, "routed_no_kv": 2 * routed_no_kv}
