"""Full-size fidelity checks: each method at its faithful defaults on SmolLM2-135M-Instruct against the
re-derived references of the tests, on the default calibration.

The tests run the same checks at CI size (`pytest -m slow tests/test_structured_reference.py
tests/test_allocation_reference.py tests/test_pruning_dynamic_faithful.py`, 2-4 short calibration
sequences); this script uses `backend.config.DEFAULT_CALIBRATION` (WikiText-2 valid from
PRUNEBOARD_DATA_DIR, default ../shared/data, 32 x 256 tokens, seed 0), what a calibrated run without
a calibration section gets. The references are tests/reference_structured.py,
tests/reference_allocation.py and tests/reference_dynamic.py; the checks are the tests' own.

Usage: `nice -n 19 .venv/bin/python bench/fidelity_smollm2.py [--only shortgpt flap ...] [--threads 1]`
Checks: shortgpt, shortened-ppl, sleb (10 %), shortened-taylor, flap, llm-pruner, owl, dllm-style,
mod-style (routers trained for `--steps`, default 4: the check is the routed forward). SLEB's naive
reference re-runs the whole model per candidate and round: the slowest check by far.
Prints one JSON line per check, `{"check", "ok", "seconds", "error"}`, and last `{"passed", "failed"}`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("PRUNEBOARD_DATA_DIR", str(ROOT.parent / "shared" / "data"))

CHECKS = ("shortgpt", "shortened-ppl", "sleb", "shortened-taylor", "flap", "llm-pruner", "owl", "dllm-style",
          "mod-style")


def run_check(name: str, loaded, calib, steps: int) -> None:
    from backend.pruning import get_method

    model = copy.deepcopy(loaded.model)
    dense = loaded.model
    if name in ("shortgpt", "shortened-ppl", "sleb", "shortened-taylor"):
        import test_structured_reference as checks

        sparsity = 0.1 if name == "sleb" else 0.25
        report = get_method(name)().prune(model, sparsity, None, calib, lambda f, t: None)
        checks.check_depth(name, dense, model, calib, round(sparsity * 30), report.details, {})
    elif name == "flap":
        import test_structured_reference as checks

        get_method("flap")().prune(model, 0.25, None, calib, lambda f, t: None)
        checks.check_flap(dense, model, calib, 0.25)
    elif name == "llm-pruner":
        import test_structured_reference as checks

        get_method("llm-pruner")().prune(model, 0.25, None, calib, lambda f, t: None)
        checks.check_llm_pruner(dense, model, calib, 0.25, {})
    elif name == "owl":
        import test_allocation_reference as checks

        cls = get_method("wanda")
        report = cls().prune(model, 0.5, cls.Params(allocation="owl"), calib, lambda f, t: None)
        checks.check_owl(dense, report, calib, 0.5, 5.0, 0.08)
    else:
        import torch

        import reference_dynamic as ref
        import test_pruning_dynamic_faithful as checks

        _, routed, _ = checks._routed(name, params={"steps": steps}, model=model, calibration=calib)
        plan = checks._dllm_plan(routed) if name == "dllm-style" else checks._mod_seed_plan(routed, 0.75)
        ids = calib[:2, :64]
        with torch.no_grad():
            got = routed(ids, use_cache=False).logits.double()
        torch.testing.assert_close(got, ref.routed_logits(dense, ids, plan).double(), atol=2e-3, rtol=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=CHECKS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from common import settings
    from backend.calibration.build import build_calibration
    from backend.config import DEFAULT_CALIBRATION
    from backend.models.loading import load_model

    loaded = load_model("builtin:smollm2-135m-instruct")
    calib = build_calibration(DEFAULT_CALIBRATION, loaded.tokenizer, settings.data_dir()).tensor
    passed, failed = [], []
    for name in args.only or CHECKS:
        start = time.perf_counter()
        error = None
        try:
            run_check(name, loaded, calib, args.steps)
        except Exception as exc:  # report every check, then the summary
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]
        (failed if error else passed).append(name)
        print(json.dumps({"check": name, "ok": error is None, "seconds": round(time.perf_counter() - start, 1),
                          "error": error}), flush=True)
    print(json.dumps({"passed": passed, "failed": failed}))


if __name__ == "__main__":
    main()
