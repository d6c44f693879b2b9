"""Pruning time and peak memory per method on SmolLM2-135M-Instruct.

Methods: magnitude, wanda, sparsegpt, and wanda 2:4, each at sparsity 0.5 with the examples'
calibration (32 x 512 tokens of wikitext2/valid.txt, seed 0). For scale, also the time of one plain
forward pass over the same calibration set (batches of 8, no grad). Each method runs in its own
process, so its peak resident memory (ru_maxrss, model included) is its own; on CUDA the peak of
torch.cuda.max_memory_allocated is reported instead. Needs PRUNEBOARD_DATA_DIR with
wikitext2/valid.txt (defaults to ../shared/data).
Last line: {"prune_seconds": {method: s}, "peak_mb": {method: mb}, "forward_seconds": s, ...}.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PRUNEBOARD_DATA_DIR", str(ROOT.parent / "shared" / "data"))

MODEL = "builtin:smollm2-135m-instruct"
RUNS = {
    "magnitude": ("magnitude", {}),
    "wanda": ("wanda", {}),
    "sparsegpt": ("sparsegpt", {}),
    "wanda-2:4": ("wanda", {"pattern": "2:4"}),
}


def _setup():
    from common import settings
    from backend.calibration.build import build_calibration
    from backend.config import CalibrationConfig
    from backend.models.loading import load_model

    loaded = load_model(MODEL)
    cfg = CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=32, seq_len=512, seed=0)
    calib = build_calibration(cfg, loaded.tokenizer, settings.data_dir())
    return loaded, calib.tensor


def _peak_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(label: str) -> dict:
    """One method in this process: {"seconds", "peak_mb", "achieved", ...}."""
    import torch

    from backend.pruning import get_method

    loaded, calib = _setup()
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if label == "forward":
        start = time.perf_counter()
        with torch.no_grad():
            for batch in calib.split(8):
                loaded.model(batch.to(loaded.device), use_cache=False)
        return {"seconds": time.perf_counter() - start, "peak_mb": _peak_mb(loaded.device),
                "loaded_mb": rss_loaded}
    name, params = RUNS[label]
    cls = get_method(name)
    if loaded.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    report = cls().prune(loaded.model, 0.5, cls.Params(**params), calib if cls.uses_calibration(cls.Params(**params))
                         else None, lambda f, t: None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": _peak_mb(loaded.device), "loaded_mb": rss_loaded,
            "achieved": report.achieved_sparsity, "device": loaded.device}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(run_one(sys.argv[2])))
        return
    results = {}
    for label in ["forward", *RUNS]:
        proc = subprocess.run([sys.executable, __file__, "--one", label], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[label]
        print(f"{label:<12} {r['seconds']:8.2f} s  peak {r['peak_mb']:8.0f} MB  (after load {r['loaded_mb']:.0f} MB)"
              + (f"  achieved {r['achieved']:.4f}" if "achieved" in r else ""), flush=True)
    print(json.dumps({
        "prune_seconds": {k: round(v["seconds"], 2) for k, v in results.items() if k != "forward"},
        "peak_mb": {k: round(v["peak_mb"]) for k, v in results.items() if k != "forward"},
        "forward_seconds": round(results["forward"]["seconds"], 2),
        "forward_peak_mb": round(results["forward"]["peak_mb"]),
    }))


if __name__ == "__main__":
    main()
