"""Size and speed of a (pruned) model on a fixed probe, measured as the LLM-Perf leaderboard does.

The probe is batch 1: a fixed prompt of `efficiency_prompt_tokens` tokens (default 256), and
`efficiency_new_tokens` greedy tokens (default 64) decoded one at a time with the KV cache.
Decoding is a hand-written loop rather than `generate`, so an early EOS cannot shorten it and
generation bookkeeping does not count as model time. One untimed warm-up of the full probe comes
first (kernel selection, allocator growth). Then each figure is timed over and over until it has
at least `efficiency_iterations` iterations (default 10) and `efficiency_min_seconds` seconds of
timed work (default 10): prefill (the prompt's forward and the first token) and decode (the cached
steps, each after an untimed prefill that builds its cache). A figure is the median over its
iterations, stored with its spread (quartiles, extremes, iteration count and seconds) under
`spread`. Figures are wall-clock on the given device: compare them only between runs on the same
kind of machine; the device, its name (GPU name or CPU model), the torch thread count and the
dtype are recorded with them.

Recorded per run (the pipeline stores the dict as the job's efficiency), `probe_version` 2:
* `params`, `nonzero_params`, `weights_mb` (parameter bytes); `linear_sparsity`: share of exact
  zeros in the decoder blocks' linear weights (what unstructured pruning achieved);
  `achieved_sparsity`: 1 - nonzero_params / params_before (removed and zeroed parameters together,
  against the unpruned count when the caller passes it, else against `params`);
* `prefill_tokens_per_s`, `latency_ms_first_token` (the prefill, which yields the first token),
  `decode_tokens_per_s`, `decode_latency_ms_per_token`: medians; `spread[<figure>]`: {median, q1,
  q3, min, max, n, seconds};
* `peak_memory_mb`: CUDA max allocated during the timed iterations, or on CPU the process's max RSS
  (which includes everything the worker did before, so it is an upper bound);
* for pruned runs (`with_dense_reference`): `dense_reference` (the dense model's figures, measured in
  the same process right after the pruned one), `measured_speedup` (decode median / the dense
  decode median) with `measured_speedup_range` [pruned q1 / dense q3, pruned q3 / dense q1], and
  the same for prefill (`prefill_speedup`).

Runs stored before this probe carry no `probe_version` (version 1: one timed run of a 64-token
prompt and 24 decode steps): their figures have no spread and are shown without one.
"""
from __future__ import annotations

import logging
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["LEGACY_PROBE_VERSION", "PROBE_VERSION", "ProbeSettings", "measure_efficiency", "measure_speed",
           "probe_ids", "probe_version", "summarize", "with_dense_reference"]

logger = logging.getLogger(__name__)

PROBE_VERSION = 2
LEGACY_PROBE_VERSION = 1
"""Runs without `probe_version`: one timed run of PROBE_PROMPT_TOKENS prompt and 24 decode steps."""
PROBE_PROMPT_TOKENS = 64
"""The prompt length other speed benchmarks use with `probe_ids` (and probe version 1 used)."""
PROBE_TEXT = (
    "The committee met on Tuesday to review the annual report. After a short discussion of the budget, "
    "the members agreed that the library should extend its opening hours during the examination period, "
    "and that a new reading room would be built on the second floor of the old town hall."
)
SPEED_FIGURES = ("prefill_tokens_per_s", "latency_ms_first_token", "decode_tokens_per_s",
                 "decode_latency_ms_per_token")


@dataclass(frozen=True)
class ProbeSettings:
    """How the speed figures are measured (defaults and meaning: `common.settings.efficiency_*`)."""

    prompt_tokens: int
    new_tokens: int
    min_iterations: int
    min_seconds: float

    @classmethod
    def from_settings(cls) -> "ProbeSettings":
        from common import settings

        return cls(settings.efficiency_prompt_tokens(), settings.efficiency_new_tokens(),
                   settings.efficiency_iterations(), settings.efficiency_min_seconds())


def probe_version(efficiency: dict[str, Any] | None) -> int:
    """The probe version a stored efficiency record was measured with (1 when it does not say)."""
    return int((efficiency or {}).get("probe_version") or LEGACY_PROBE_VERSION)


def measure_efficiency(model: "torch.nn.Module", tokenizer: Any, device: str, params_before: int | None = None,
                       probe: ProbeSettings | None = None) -> dict[str, Any]:
    """Parameter counts and sparsity, prefill/decode throughput and latency with their spread, peak
    memory, device (see the module docstring)."""
    import torch

    from backend.models.loading import count_parameters

    speed = measure_speed(model, tokenizer, device, probe)
    params = count_parameters(model)
    nonzero = sum(int(torch.count_nonzero(p).item()) for p in model.parameters())
    first = next(model.parameters(), None)
    result = {
        "probe_version": PROBE_VERSION,
        "params": params,
        "nonzero_params": nonzero,
        "params_before": params_before,
        "achieved_sparsity": round(1 - nonzero / (params_before or params), 6) if params else 0.0,
        "linear_sparsity": _linear_sparsity(model),
        "weights_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1),
        **speed,
        "device": str(device),
        "device_name": _device_name(str(device).startswith("cuda")),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
    }
    logger.info("efficiency: %s", {k: v for k, v in result.items() if k != "spread"})
    return result


def measure_speed(model: "torch.nn.Module", tokenizer: Any, device: str,
                  probe: ProbeSettings | None = None) -> dict[str, Any]:
    """The speed figures (medians), their `spread`, peak memory and the `probe` description."""
    import torch

    probe = probe or ProbeSettings.from_settings()
    prompt = probe_ids(tokenizer, probe.prompt_tokens).to(device)
    cuda = str(device).startswith("cuda")
    with torch.inference_mode():
        _prefill(model, prompt, cuda)  # warm-up of the full probe, untimed
        _decode(model, prompt, probe.new_tokens, cuda)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        prefill = _repeat(lambda: _prefill(model, prompt, cuda), probe)
        decode = _repeat(lambda: _decode(model, prompt, probe.new_tokens, cuda), probe)
    figures = {  # figure -> (the iterations' seconds it comes from, the figure of one iteration)
        "prefill_tokens_per_s": (prefill, lambda s: prompt.shape[1] / s),
        "latency_ms_first_token": (prefill, lambda s: s * 1000),
        "decode_tokens_per_s": (decode, lambda s: probe.new_tokens / s),
        "decode_latency_ms_per_token": (decode, lambda s: s * 1000 / probe.new_tokens),
    }
    spread = {name: {**summarize([figure(s) for s in times]), "seconds": round(sum(times), 3)}
              for name, (times, figure) in figures.items()}
    if cuda:
        peak_mb, peak_kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated while timed"
    else:
        peak_mb, peak_kind = _max_rss_mb(), "process max RSS"
    return {
        **{name: spread[name]["median"] for name in SPEED_FIGURES},
        "spread": spread,
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": peak_kind,
        "probe": {"version": PROBE_VERSION, "batch": 1, "prompt_tokens": int(prompt.shape[1]),
                  "new_tokens": probe.new_tokens, "warmup_runs": 1, "min_iterations": probe.min_iterations,
                  "min_seconds": probe.min_seconds, "iterations": {"prefill": len(prefill), "decode": len(decode)},
                  "statistic": "median over iterations; spread: quartiles and extremes",
                  "decoding": "greedy, KV cache, fixed length"},
    }


def with_dense_reference(efficiency: dict[str, Any], dense_speed: dict[str, Any]) -> dict[str, Any]:
    """`efficiency` of a pruned run plus the dense model's speed (`measure_speed`, same process and
    probe) and the speed-ups with their ranges (see the module docstring)."""
    out = dict(efficiency)
    out["dense_reference"] = {**dense_speed, "measured": "same process and probe, right after the pruned model"}
    for figure, key in (("decode_tokens_per_s", "measured_speedup"), ("prefill_tokens_per_s", "prefill_speedup")):
        pruned, dense = efficiency["spread"][figure], dense_speed["spread"][figure]
        out[key] = round(pruned["median"] / dense["median"], 4)
        out[f"{key}_range"] = [round(pruned["q1"] / dense["q3"], 4), round(pruned["q3"] / dense["q1"], 4)]
    return out


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, quartiles (inclusive method), extremes and count of a figure's iterations."""
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {"median": round(statistics.median(ordered), 4), "q1": round(q1, 4), "q3": round(q3, 4),
            "min": round(ordered[0], 4), "max": round(ordered[-1], 4), "n": len(ordered)}


def probe_ids(tokenizer: Any, tokens: int = PROBE_PROMPT_TOKENS) -> "torch.Tensor":
    """The fixed prompt: PROBE_TEXT tokenised, repeated as needed, cut to `tokens`."""
    import torch

    ids = tokenizer(PROBE_TEXT, add_special_tokens=False).input_ids
    ids = (ids * (tokens // max(len(ids), 1) + 1))[:tokens]
    return torch.tensor([ids], dtype=torch.long)


def _repeat(timed: Callable[[], float], probe: ProbeSettings) -> list[float]:
    """Seconds of each call of `timed` until there are `min_iterations` and `min_seconds` of them."""
    seconds: list[float] = []
    while len(seconds) < probe.min_iterations or sum(seconds) < probe.min_seconds:
        seconds.append(timed())
    return seconds


def _prefill(model, prompt, cuda: bool) -> float:
    """Seconds of the prompt's forward and the first token (the past key values are dropped)."""
    start = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    _sync(cuda, out.logits[:, -1:].argmax(-1))
    return time.perf_counter() - start


def _decode(model, prompt, new_tokens: int, cuda: bool) -> float:
    """Seconds of `new_tokens` cached greedy steps after an untimed prefill."""
    out = model(input_ids=prompt, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    past = out.past_key_values
    _sync(cuda, token)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    _sync(cuda, token)
    return time.perf_counter() - start


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
