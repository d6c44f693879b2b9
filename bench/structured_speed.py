"""Ideal vs measured decode speed-up of SmolLM2-135M-Instruct at 25 % depth (shortgpt) and 25 % width.

Usage: `.venv/bin/python bench/structured_speed.py [--threads 1] [--width-method llm-pruner]`

Width uses `llm-pruner` (or `flap`) when that module exists under backend/pruning/, else width is
printed as null. Calibration: WikiText-2 valid from PRUNEBOARD_DATA_DIR (default ../shared/data),
8 x 128 tokens, seed 0. Decode: batch 1, the 64-token probe prompt, 128 greedy new tokens with the KV
cache, one warm-up then 5 rounds with dense, depth and width alternating in the same process; median
tokens/s per model (`backend.structured_speed`). torch threads default to 1: steadier on a shared CPU.
Prints one JSON line per model and, last, `{"depth_speedup", "depth_ideal", "width_speedup", "width_ideal"}`.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width-method", default=None, help="llm-pruner or flap (default: the first present)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from backend.calibration.build import build_calibration
    from backend.config import CalibrationConfig
    from backend.models.loading import load_model
    from backend.pruning import get_method
    from backend.structured_speed import measure_decode, speed_comparison

    data_dir = Path(os.environ.get("PRUNEBOARD_DATA_DIR", ROOT.parent / "shared" / "data"))
    loaded = load_model("builtin:smollm2-135m-instruct")
    calib = build_calibration(CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=8,
                                                seq_len=128, seed=0), loaded.tokenizer, data_dir).tensor
    models = {"dense": loaded.model}
    prune_s = {}
    start = time.perf_counter()
    depth = copy.deepcopy(loaded.model)
    report = get_method("shortgpt")().prune(depth, 0.25, None, calib, lambda f, t: None)
    prune_s["depth"] = round(time.perf_counter() - start, 1)
    models["depth"] = depth
    print(json.dumps({"model": "depth", "method": "shortgpt", "removed_layers": report.details["removed_layers"]}))

    width_method = args.width_method
    if width_method is None:
        width_method = next((m for m in ("llm-pruner", "flap")
                             if importlib.util.find_spec(f"backend.pruning.{m.replace('-', '_')}")), None)
    if width_method is not None:
        cls = get_method(width_method)
        width = copy.deepcopy(loaded.model)
        start = time.perf_counter()
        wreport = cls().prune(width, 0.25, cls.Params(), calib, lambda f, t: None)
        prune_s["width"] = round(time.perf_counter() - start, 1)
        models["width"] = width
        print(json.dumps({"model": "width", "method": width_method,
                          "achieved_sparsity": round(wreport.achieved_sparsity, 4)}))
    else:
        print(json.dumps({"model": "width", "method": None, "note": "no llm-pruner or flap module present"}))

    measured = measure_decode(models, loaded.tokenizer, loaded.device, args.new_tokens, args.repeats)
    summary = {}
    for kind in ("depth", "width"):
        if kind not in models:
            summary[f"{kind}_speedup"] = summary[f"{kind}_ideal"] = None
            continue
        figures = speed_comparison(loaded.model, models[kind], loaded.tokenizer, loaded.device,
                                   measured={"dense": measured["dense"], "pruned": measured[kind]})
        print(json.dumps({"model": kind, "prune_s": prune_s[kind], **figures}))
        summary[f"{kind}_speedup"] = figures["measured_speedup"]
        summary[f"{kind}_ideal"] = figures["ideal_speedup"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
