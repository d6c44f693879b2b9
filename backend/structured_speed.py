"""Ideal and measured decode speed-up of structurally pruned models (depth and width).

* `decode_flops_per_token(model)`: analytic FLOPs to decode one token at batch 1 = 2 x the weights
  of every matmul a token touches: each nn.Linear inside the decoder blocks plus the lm_head. The
  embedding lookup is not a matmul; norms, activations, rotary embeddings and attention over the
  context (the QK^T and AV products, which grow with the context length) are left out, so the figure
  is the short-context limit.
* `ideal_speedup = dense FLOPs/token / pruned FLOPs/token` (lm_head included, so removing 8 of
  SmolLM2's 30 blocks gives about 1.27x, not 30/22).
* `measure_decode(models, ...)`: decode tokens/s at batch 1: the fixed 64-token probe prompt of
  `backend.efficiency`, then `new_tokens` greedy steps with the KV cache in a hand-written loop (no
  early EOS), timed from the first cached step to the last. One untimed warm-up per model, then
  `repeats` rounds in which every model runs once, in turn (dense and pruned alternate, so a load
  change on a shared machine hits both); the median per model is kept.
* `speed_comparison(dense, pruned, ...)`: both figures for one pair, `measured_speedup` = median
  pruned tokens/s / median dense tokens/s.

Wall-clock figures depend on the device and on `torch.get_num_threads()`, which are recorded.
"""
from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["decode_flops_per_token", "matmul_params", "measure_decode", "speed_comparison"]

NEW_TOKENS = 128
REPEATS = 5


def matmul_params(model: "nn.Module") -> int:
    """Weights of the matmuls one decoded token goes through: decoder-block linears + lm_head."""
    from torch import nn

    from backend.pruning.layers import get_decoder_layers

    total = 0
    for layer in get_decoder_layers(model):
        total += sum(m.weight.numel() for m in layer.modules() if isinstance(m, nn.Linear))
    head = model.get_output_embeddings()
    if head is not None:
        total += head.weight.numel()
    return total


def decode_flops_per_token(model: "nn.Module") -> int:
    """2 x `matmul_params`: one multiply and one add per weight (attention over the context ignored)."""
    return 2 * matmul_params(model)


def _decode_seconds(model: "nn.Module", prompt: "torch.Tensor", new_tokens: int) -> float:
    import torch

    cuda = prompt.device.type == "cuda"
    with torch.inference_mode():
        out = model(input_ids=prompt, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        if cuda:
            torch.cuda.synchronize()
        else:
            token.cpu()
        return time.perf_counter() - start


def measure_decode(models: dict[str, "nn.Module"], tokenizer: Any, device: str,
                   new_tokens: int = NEW_TOKENS, repeats: int = REPEATS) -> dict[str, dict[str, Any]]:
    """Per model name: median decode tokens/s and every run's rate (see the module docstring)."""
    from backend.efficiency import probe_ids

    prompt = probe_ids(tokenizer).to(device)
    for model in models.values():
        _decode_seconds(model, prompt, 8)  # warm-up, untimed
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            rates[name].append(new_tokens / _decode_seconds(model, prompt, new_tokens))
    return {name: {"tokens_per_s": round(statistics.median(r), 3), "runs": [round(x, 3) for x in r]}
            for name, r in rates.items()}


def speed_comparison(dense: "nn.Module", pruned: "nn.Module", tokenizer: Any, device: str,
                     new_tokens: int = NEW_TOKENS, repeats: int = REPEATS,
                     measured: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Parameters, FLOPs/token, ideal and measured decode speed-up of `pruned` against `dense`.

    `measured`: results of `measure_decode` with keys "dense" and "pruned" (measured here when None).
    """
    import torch

    from backend.models.loading import count_parameters

    if measured is None:
        measured = measure_decode({"dense": dense, "pruned": pruned}, tokenizer, device, new_tokens, repeats)
    flops_dense, flops_pruned = decode_flops_per_token(dense), decode_flops_per_token(pruned)
    return {
        "params_dense": count_parameters(dense),
        "params_pruned": count_parameters(pruned),
        "flops_per_token_dense": flops_dense,
        "flops_per_token_pruned": flops_pruned,
        "ideal_speedup": round(flops_dense / flops_pruned, 4),
        "dense_tokens_per_s": measured["dense"]["tokens_per_s"],
        "pruned_tokens_per_s": measured["pruned"]["tokens_per_s"],
        "measured_speedup": round(measured["pruned"]["tokens_per_s"] / measured["dense"]["tokens_per_s"], 4),
        "runs": {"dense": measured["dense"]["runs"], "pruned": measured["pruned"]["runs"]},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "probe": {"batch": 1, "new_tokens": new_tokens, "repeats": repeats, "statistic": "median",
                  "flops": "2 x (decoder-block linear weights + lm_head); attention over the context ignored"},
    }
