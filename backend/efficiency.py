"""Size and speed of a (pruned) model on a fixed probe, so rows of the leaderboard compare like for like.

The probe is batch 1: a fixed 64-token prompt (prefill), then 24 greedy tokens decoded one at a time
with the KV cache. Decoding is a hand-written loop rather than `generate`, so an early EOS cannot
shorten it and generation bookkeeping does not count as model time. One untimed warm-up run comes
first (kernel selection, allocator growth). Figures are wall-clock on the given device: compare them
only between runs on the same kind of machine.
"""
from __future__ import annotations

import logging
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["PROBE_NEW_TOKENS", "PROBE_PROMPT_TOKENS", "measure_efficiency"]

logger = logging.getLogger(__name__)

PROBE_PROMPT_TOKENS = 64
PROBE_NEW_TOKENS = 24
"""Enough steps for a stable rate, few enough that SmolLM2 on a 2-core CPU probes in under 2 s."""
PROBE_TEXT = (
    "The committee met on Tuesday to review the annual report. After a short discussion of the budget, "
    "the members agreed that the library should extend its opening hours during the examination period, "
    "and that a new reading room would be built on the second floor of the old town hall."
)


def measure_efficiency(model: "torch.nn.Module", tokenizer: Any, device: str) -> dict[str, Any]:
    """Parameter counts, prefill/decode throughput, first-token latency and peak memory."""
    import torch

    from backend.models import count_parameters

    prompt = probe_ids(tokenizer).to(device)
    cuda = str(device).startswith("cuda")
    with torch.inference_mode():
        _probe(model, prompt[:, :8], 2, cuda)  # warm-up, untimed
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        prefill_s, decode_s = _probe(model, prompt, PROBE_NEW_TOKENS, cuda)
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "cuda max_memory_allocated during the probe"
    else:
        peak_mb = _max_rss_mb()
        peak_kind = "process max RSS"
    result = {
        "params": count_parameters(model),
        "nonzero_params": sum(int(torch.count_nonzero(p).item()) for p in model.parameters()),
        "prefill_tokens_per_s": round(prompt.shape[1] / prefill_s, 2),
        "decode_tokens_per_s": round(PROBE_NEW_TOKENS / decode_s, 2),
        "latency_ms_first_token": round(prefill_s * 1000, 3),
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": peak_kind,
        "device": str(device),
        "probe": {"batch": 1, "prompt_tokens": int(prompt.shape[1]), "new_tokens": PROBE_NEW_TOKENS},
    }
    logger.info("efficiency: %s", result)
    return result


def probe_ids(tokenizer: Any) -> "torch.Tensor":
    """The fixed prompt: PROBE_TEXT tokenised, repeated as needed, cut to PROBE_PROMPT_TOKENS."""
    import torch

    ids = tokenizer(PROBE_TEXT, add_special_tokens=False).input_ids
    ids = (ids * (PROBE_PROMPT_TOKENS // max(len(ids), 1) + 1))[:PROBE_PROMPT_TOKENS]
    return torch.tensor([ids], dtype=torch.long)


def _probe(model, prompt, new_tokens: int, cuda: bool) -> tuple[float, float]:
    """(prefill seconds incl. the first token, seconds for `new_tokens` cached decode steps)."""
    start = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    _sync(cuda, token)
    prefill = time.perf_counter() - start
    past = out.past_key_values
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    _sync(cuda, token)
    return prefill, time.perf_counter() - start


def _sync(cuda: bool, tensor) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()
    else:
        tensor.cpu()


def _max_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
