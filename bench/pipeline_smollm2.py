"""Seconds per pipeline stage (load, calibrate, prune, evaluate, efficiency) on SmolLM2-135M-Instruct.

Runs the examples' dense, magnitude and ShortGPT configs through `backend.pipeline.run` in this
process (no queue). The first load may include the one-time download and conversion; it is run once
before timing so every method sees a warm cache. Needs PRUNEBOARD_DATA_DIR with wikitext2/valid.txt
(defaults to ../shared/data). Last line: {"stage_seconds": {method: {stage: s}}, "scores": ...}.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PRUNEBOARD_DATA_DIR", str(ROOT.parent / "shared" / "data"))

from backend.config import load_config  # noqa: E402
from backend.events import Progress  # noqa: E402
from backend.pipeline import run  # noqa: E402

EXAMPLES = ["smollm2-dense.yaml", "smollm2-magnitude.yaml", "smollm2-shortgpt.yaml"]


def main() -> None:
    from backend.models.loading import load_model

    start = time.perf_counter()
    load_model("builtin:smollm2-135m-instruct")
    print(f"warm-up load (download/convert if first use): {time.perf_counter() - start:.1f} s", flush=True)

    stage_seconds: dict[str, dict[str, float]] = {}
    scores: dict[str, dict[str, float]] = {}
    for name in EXAMPLES:
        config = load_config(ROOT / "examples" / name)
        method = config.pruning.method
        last = [""]

        def show(event, last=last):
            if isinstance(event, Progress) and event.stage != last[0]:
                last[0] = event.stage
                print(f"  [{method}] {event.stage}: {event.text}", flush=True)

        result = run(config, show)
        stage_seconds[method] = result.stage_seconds
        scores[method] = {f"{s.task}/{s.metric}": round(s.value, 4) for s in result.scores if s.primary}
        print(f"{method}: {result.stage_seconds}  scores {scores[method]}  "
              f"achieved sparsity {result.prune_report.get('achieved_sparsity')}", flush=True)
    print(json.dumps({"stage_seconds": stage_seconds, "scores": scores}))


if __name__ == "__main__":
    main()
