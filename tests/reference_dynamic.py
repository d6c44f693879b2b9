"""A plain re-derivation of routed decoder forwards, never calling `backend.pruning`.

The dense model's own modules (its sdpa attention with an explicit boolean mask, its MLP and norms)
compute every token of an unpadded batch; a routing decision then keeps or drops each module's output
per token, and an evicted token's key is masked out of every later query's attention in that layer.
Router scores come from the trained routers' weights (`gate_weights`): RMS-normalise the residual
state (eps 1e-6), then the linear or linear-SiLU-linear net. Decisions:

* `threshold` (D-LLM-style): a token runs when its score exceeds the gate's threshold;
* `top-k` (the seed study's MoD): among the first `prompt` tokens of each sequence the
  round(capacity x prompt) highest scores run (ties to the earlier token); later tokens (decoded with
  a cache) all run; a module's output is scaled by sigmoid(score).

`plan[i]`: None for a layer without routers, else {"granularity": "module" | "block", "gates":
{"attn" | "mlp" | "block": (weights, threshold)}, "selection", "capacity", "scale", "evict"}.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gate_weights(net: nn.Module) -> list[torch.Tensor]:
    """The router's parameters in order (weight, bias[, weight, bias]), detached copies."""
    return [p.detach().clone() for p in net.parameters()]


def router_score(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    if len(weights) == 2:
        return (x @ weights[0].double().T + weights[1].double()).squeeze(-1)
    hidden = F.silu(x @ weights[0].double().T + weights[1].double())
    return (hidden @ weights[2].double().T + weights[3].double()).squeeze(-1)


def _decide(score: torch.Tensor, threshold: float, selection: str, capacity: float, prompt: int) -> torch.Tensor:
    if selection == "threshold":
        return score > threshold
    run = torch.ones_like(score, dtype=torch.bool)
    for b in range(score.shape[0]):
        order = sorted(range(prompt), key=lambda t: (-float(score[b, t]), t))
        chosen = set(order[:round(capacity * prompt)])
        for t in range(prompt):
            run[b, t] = t in chosen
    return run


def _first_layer_inputs(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    seen: dict = {}

    class Stop(Exception):
        pass

    def grab(module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["kwargs"] = kwargs
        raise Stop

    handle = model.model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except Stop:
        pass
    finally:
        handle.remove()
    return seen["hidden"], seen["kwargs"]


def routed_logits(model: nn.Module, ids: torch.Tensor, plan: list[dict | None], prompt: int | None = None,
                  forced: dict | None = None) -> torch.Tensor:
    """Logits of `model` (dense weights) routed by `plan` over `ids` (no padding); `prompt` (default:
    all) tokens are routed by top-k gates; `forced[(layer, "attn" | "mlp")]` (bool, True = run) replaces
    the routers' decisions where given."""
    prompt = ids.shape[1] if prompt is None else prompt
    x, kwargs = _first_layer_inputs(model, ids)
    position_embeddings = kwargs["position_embeddings"]
    seq = ids.shape[1]
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            rule = plan[i]
            if rule is None:
                decisions = {"attn": None, "mlp": None}
            else:
                decisions = {}
            keys = torch.ones(ids.shape, dtype=torch.bool)

            def decide(name: str, state: torch.Tensor):
                if forced is not None and (i, name) in forced:
                    return forced[(i, name)], None
                gate_name = "block" if rule["granularity"] == "block" else name
                weights, threshold = rule["gates"][gate_name]
                score = router_score(weights, state)
                run = _decide(score, threshold, rule["selection"], rule["capacity"], prompt)
                return run, (torch.sigmoid(score) if rule["scale"] else None)

            if rule is not None:
                decisions["attn"] = decide("attn", x)
                if rule["evict"]:
                    keys = decisions["attn"][0]
            mask = (causal[None, None] & (keys[:, None, None, :] | torch.eye(seq, dtype=torch.bool)[None, None]))
            attn = layer.self_attn(hidden_states=layer.input_layernorm(x), attention_mask=mask,
                                   position_embeddings=position_embeddings, position_ids=kwargs.get("position_ids"))[0]
            x = x + _kept(attn, decisions["attn"])
            if rule is not None:
                decisions["mlp"] = decisions["attn"] if rule["granularity"] == "block" else decide("mlp", x)
            x = x + _kept(layer.mlp(layer.post_attention_layernorm(x)), decisions["mlp"])
        return model.lm_head(model.model.norm(x))


def _kept(out: torch.Tensor, decision) -> torch.Tensor:
    if decision is None:
        return out
    run, weight = decision
    scale = run.to(torch.float64) if weight is None else run.to(torch.float64) * weight
    return out * scale.unsqueeze(-1).to(out.dtype)
