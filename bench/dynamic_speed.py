"""Measured vs ideal decode speed-up of the dynamic (router) methods on SmolLM2-135M-Instruct.

Usage: `.venv/bin/python bench/dynamic_speed.py [--threads 1] [--sparsity 0.25] [--steps 30]`

Each of skipgpt-style, dllm-style and mod-style trains its routers on WikiText-2 valid (from
PRUNEBOARD_DATA_DIR, default ../shared/data; 8 x 128 tokens, seed 0) at the target skip ratio. Decode
speed is measured as in bench/structured_speed.py (`backend.structured_speed.measure_decode`: batch 1,
the 64-token probe prompt, 128 greedy new tokens with the KV cache, one warm-up, then 5 rounds with
dense and every routed model alternating; median tokens/s). The ideal speed-up uses the skip ratio
the routers achieved while decoding the probe (counted on a separate, untimed decode of the same
length): dense FLOPs/token over routed FLOPs/token, lm_head included in both, routers and the K/V
projections that skipped attentions still compute counted (`routing.decode_flops`); `ideal_no_kv` is
the figure if skipped tokens computed no K/V either. Set PRUNEBOARD_CACHE_DIR to reuse a converted
SmolLM2. Prints one JSON line per method and, last, `{"speedup": {method: x}, "ideal": {method: y}}`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("skipgpt-style", "dllm-style", "mod-style")


def decode_skip(model, prompt, new_tokens: int) -> dict:
    """Skip ratios of the cached decode steps only (the prefill's decisions are not counted)."""
    import torch

    from backend.pruning.dynamic import evaluation_skip_report, reset_skip_counters

    with torch.inference_mode():
        out = model(input_ids=prompt, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        reset_skip_counters(model)
        for _ in range(new_tokens):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    report = evaluation_skip_report(model)
    reset_skip_counters(model)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=30, help="router training steps per method")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from backend.calibration.build import build_calibration
    from backend.config import CalibrationConfig
    from backend.efficiency import probe_ids
    from backend.models.loading import load_model
    from backend.pruning import get_method
    from backend.pruning.dynamic.routing import decode_flops
    from backend.structured_speed import measure_decode

    data_dir = Path(os.environ.get("PRUNEBOARD_DATA_DIR", ROOT.parent / "shared" / "data"))
    loaded = load_model("builtin:smollm2-135m-instruct")
    calib = build_calibration(CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=8,
                                                seq_len=128, seed=0), loaded.tokenizer, data_dir).tensor
    prompt = probe_ids(loaded.tokenizer).to(loaded.device)
    models = {"dense": loaded.model}
    rows = {}
    for name in METHODS:
        cls = get_method(name)
        model = copy.deepcopy(loaded.model)
        start = time.perf_counter()
        report = cls().prune(model, args.sparsity, cls.Params(steps=args.steps), calib, lambda f, t: None)
        skip = decode_skip(model, prompt, args.new_tokens)
        flops = decode_flops(model, skip)
        models[name] = model
        print(f"{name}: routers trained in {time.perf_counter() - start:.0f} s, decode skip {skip['overall']}",
              file=sys.stderr, flush=True)
        rows[name] = {"method": name, "prune_s": round(time.perf_counter() - start, 1),
                      "calibration_skip": report.achieved_sparsity, "decode_skip": skip["overall"],
                      "decode_skip_per_layer": skip["per_layer"],
                      "flops_per_token_dense": flops["dense"], "flops_per_token_routed": flops["routed"],
                      "ideal_speedup": round(flops["dense"] / flops["routed"], 4),
                      "ideal_no_kv": round(flops["dense"] / flops["routed_no_kv"], 4)}

    measured = measure_decode(models, loaded.tokenizer, loaded.device, args.new_tokens, args.repeats)
    summary = {"speedup": {}, "ideal": {}}
    for name, row in rows.items():
        speedup = round(measured[name]["tokens_per_s"] / measured["dense"]["tokens_per_s"], 4)
        print(json.dumps({**row, "dense_tokens_per_s": measured["dense"]["tokens_per_s"],
                          "routed_tokens_per_s": measured[name]["tokens_per_s"], "measured_speedup": speedup,
                          "runs": {"dense": measured["dense"]["runs"], "routed": measured[name]["runs"]},
                          "device": str(loaded.device), "torch_threads": torch.get_num_threads(),
                          "probe": {"batch": 1, "new_tokens": args.new_tokens, "repeats": args.repeats,
                                    "statistic": "median"}}))
        summary["speedup"][name] = speedup
        summary["ideal"][name] = row["ideal_speedup"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
