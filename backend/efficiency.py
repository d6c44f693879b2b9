"""Size and speed of a (pruned) model on a fixed probe, so rows of the leaderboard compare like for like.

The probe is batch 1: a fixed 64-token prompt (prefill), then 24 greedy tokens decoded one at a time
with the KV cache. Decoding is a hand-written loop rather than `generate`, so an early EOS cannot
shorten it and generation bookkeeping does not count as model time. One untimed warm-up run comes
first (kernel selection, allocator growth). Figures are wall-clock on the given device: compare them
only between runs on the same kind of machine; the device, its name (GPU name or CPU model), the
torch thread count and the dtype are recorded with them.

Recorded per run (the pipeline stores the dict as the job's efficiency):
* `params`, `nonzero_params`, `weights_mb` (parameter bytes); `linear_sparsity`: share of exact
  zeros in the decoder blocks' linear weights (what unstructured pruning achieved);
  `achieved_sparsity`: 1 - nonzero_params / params_before (removed and zeroed parameters together,
  against the unpruned count when the caller passes it, else against `params`);
* `prefill_tokens_per_s` (64 prompt tokens / prefill time), `latency_ms_first_token` (the prefill,
  which yields the first token), `decode_tokens_per_s` and `decode_latency_ms_per_token` (24 cached
  decode steps);
* `peak_memory_mb`: CUDA max allocated during the probe, or on CPU the process's max RSS (which
  includes everything the worker did before, so it is an upper bound).
"""
from __future__ import annotations

import logging
import platform
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


def measure_efficiency(model: "torch.nn.Module", tokenizer: Any, device: str,
                       params_before: int | None = None) -> dict[str, Any]:
    """Parameter counts and sparsity, prefill/decode throughput and latency, peak memory, device."""
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
    params = count_parameters(model)
    nonzero = sum(int(torch.count_nonzero(p).item()) for p in model.parameters())
    first = next(model.parameters(), None)
    result = {
        "params": params,
        "nonzero_params": nonzero,
        "params_before": params_before,
        "achieved_sparsity": round(1 - nonzero / (params_before or params), 6) if params else 0.0,
        "linear_sparsity": _linear_sparsity(model),
        "weights_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1),
        "prefill_tokens_per_s": round(prompt.shape[1] / prefill_s, 2),
        "decode_tokens_per_s": round(PROBE_NEW_TOKENS / decode_s, 2),
        "latency_ms_first_token": round(prefill_s * 1000, 3),
        "decode_latency_ms_per_token": round(decode_s * 1000 / PROBE_NEW_TOKENS, 3),
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": peak_kind,
        "device": str(device),
        "device_name": _device_name(cuda),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
        "probe": {"batch": 1, "prompt_tokens": int(prompt.shape[1]), "new_tokens": PROBE_NEW_TOKENS,
                  "warmup_runs": 1, "decoding": "greedy, KV cache, fixed length"},
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


def _linear_sparsity(model) -> float | None:
    """Share of zeros in the decoder blocks' linear weights; None for unsupported architectures."""
    from backend.pruning.layers import count_linear_zeros

    try:
        zeros, total = count_linear_zeros(model)
    except (ValueError, AttributeError, TypeError):
        return None
    return round(zeros / total, 6) if total else None


def _device_name(cuda: bool) -> str:
    if cuda:
        import torch

        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
