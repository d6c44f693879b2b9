"""Overhead of PruneBoard's evaluation over a plain lm-eval run: PIQA (first 200 rows), SmolLM2-135M.

Two long-lived processes load the same model files (the cached SmolLM2 safetensors directory,
`$PRUNEBOARD_CACHE_DIR/smollm2-135m-instruct`, default the tests' cache var/test-cache if it holds
the model, else $PRUNEBOARD_HOME/cache) in the same dtype (float32 on CPU) once each, untimed:

* app: `backend.evaluation.harness.evaluate` with task `piqa`, `limit`, `batch_size` (this file, `--side app`);
* plain: `bench/plain_lm_eval_piqa.py` under `python -I`, which imports only lm-eval, transformers
  and torch: `lm_eval.simple_evaluate` on an HFLM wrapping the model, with a task dict identical to
  PruneBoard's `piqa` config (dataset_path json + the validation JSONL this bench writes from
  ../shared/data/piqa; both sides read their dataset through a fresh `datasets` cache each run).

After one untimed warm-up run per side (`--warmup-limit` rows: lazy imports, allocator growth), the
sides alternate three times (app, plain, app, plain, ...); each timing covers the evaluation call only (HFLM construction, task building, dataset preparation, the model passes and scoring).
Printed: per-run seconds, the median of the per-pair ratios app / plain (target <= 1.05) and
whether acc, acc_norm, every per-document accuracy and every per-option log-likelihood (to the 4
decimals PruneBoard stores) are equal. Last line:
`{"eval_overhead_ratio": r, "scores_equal": true|false, ...}`.

    python bench/eval_overhead.py [--limit 200] [--batch-size 8] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
PLAIN_SCRIPT = ROOT / "bench" / "plain_lm_eval_piqa.py"


def _model_cache_dir() -> Path:
    if os.environ.get("PRUNEBOARD_CACHE_DIR"):
        return Path(os.environ["PRUNEBOARD_CACHE_DIR"]).resolve()
    tests_cache = ROOT / "var" / "test-cache"
    if (tests_cache / "smollm2-135m-instruct" / "pruneboard.json").is_file():
        return tests_cache
    sys.path.insert(0, str(ROOT))
    from common import settings

    return settings.model_cache_dir()


def app_side(batch_size: int, data_dir: Path, threads: int) -> None:
    """Worker loop of the in-app side (this process imports the project)."""
    sys.path.insert(0, str(ROOT))
    if threads:
        import torch

        torch.set_num_threads(threads)
    from backend.config import EvaluationConfig, TaskConfig
    from backend.evaluation.harness import evaluate
    from backend.models.loading import load_model

    loaded = load_model("builtin:smollm2-135m-instruct")
    print(f"READY {loaded.dtype}", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] != "run":
            break
        limit = int(command[1])
        with tempfile.TemporaryDirectory(prefix="app-piqa-") as work:
            started = time.perf_counter()
            out = evaluate(loaded.model, loaded.tokenizer, [TaskConfig(name="piqa", limit=limit)],
                           EvaluationConfig(batch_size=batch_size), paradigm="instruct", dtype=loaded.dtype,
                           data_dir=data_dir, workdir=Path(work), progress=lambda f, t: None,
                           on_sample=lambda s: None)
            seconds = time.perf_counter() - started
        scores = {s.metric: s.value for s in out.scores}
        lls = {str(s.doc_id): [re.search(r"\] (\S+)", line).group(1) for line in s.output.splitlines()]
               for s in out.samples}
        accs = {str(s.doc_id): s.metrics["acc"] for s in out.samples}
        print("RESULT " + json.dumps({"seconds": seconds, "acc": scores["acc"], "acc_norm": scores["acc_norm"],
                                      "lls": lls, "doc_acc": accs}), flush=True)


class Side:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str]):
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=ROOT if name == "app" else tempfile.gettempdir(), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._read("READY")

    def _read(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"{self.name} side exited with {self.proc.wait()}")

    def run(self, limit: int) -> dict:
        self.proc.stdin.write(f"run {limit}\n")
        self.proc.stdin.flush()
        return json.loads(self._read("RESULT"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def write_piqa(data_dir: Path, out: Path) -> Path:
    """validation.jsonl from piqa/dev.jsonl + dev-labels.lst, as PruneBoard's piqa task writes it."""
    rows = [json.loads(line) for line in (data_dir / "piqa" / "dev.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    labels = (data_dir / "piqa" / "dev-labels.lst").read_text(encoding="utf-8").split()
    with open(out, "w", encoding="utf-8") as handle:
        for row, label in zip(rows, labels, strict=True):
            record = {"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(label)}
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    return out


def compare(app: dict, plain: dict) -> tuple[bool, list[str]]:
    problems = []
    for key in ("acc", "acc_norm"):
        if app[key] != plain[key]:
            problems.append(f"{key}: app {app[key]!r} != plain {plain[key]!r}")
    if set(app["lls"]) != set(plain["lls"]):
        problems.append("different documents")
    for doc, values in plain["lls"].items():
        rendered = [f"{v:.4f}" for v in values]
        if app["lls"].get(doc) != rendered:
            problems.append(f"doc {doc}: log-likelihoods {app['lls'].get(doc)} != {rendered}")
    if app["doc_acc"] != plain["doc_acc"]:
        problems.append("per-document accuracy differs")
    return not problems, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["app"], help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-limit", type=int, default=4,
                        help="rows of one untimed run per side first (lazy imports, allocator); 0: none")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads on both sides (0: torch's default); 1 is steadier on a busy machine")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PRUNEBOARD_DATA_DIR", SHARED_DATA)))
    args = parser.parse_args()
    if args.side == "app":
        app_side(args.batch_size, args.data_dir, args.threads)
        return

    cache = _model_cache_dir()
    model_dir = cache / "smollm2-135m-instruct"
    env = {**os.environ, "PRUNEBOARD_CACHE_DIR": str(cache), "PRUNEBOARD_DATA_DIR": str(args.data_dir.resolve()),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="eval-overhead-") as tmp:
        app = Side("app", [sys.executable, str(Path(__file__).resolve()), "--side", "app",
                           "--batch-size", str(args.batch_size), "--data-dir", str(args.data_dir.resolve()),
                           "--threads", str(args.threads)], env)
        if not (model_dir / "pruneboard.json").is_file():  # the app side converts it on first use
            raise SystemExit(f"no converted SmolLM2 at {model_dir}")
        data_file = write_piqa(args.data_dir, Path(tmp) / "validation.jsonl")
        plain = Side("plain", [sys.executable, "-I", str(PLAIN_SCRIPT), str(model_dir), str(data_file),
                               str(args.batch_size), app.ready, str(args.threads)], env)
        print(f"model {model_dir} ({app.ready}), PIQA first {args.limit} rows, batch {args.batch_size}, "
              f"torch threads {args.threads or 'default'}", flush=True)
        ratios, equal, problems = [], True, []
        try:
            if args.warmup_limit:
                app.run(args.warmup_limit)
                plain.run(args.warmup_limit)
            for i in range(args.repeats):
                a = app.run(args.limit)
                p = plain.run(args.limit)
                ok, why = compare(a, p)
                equal &= ok
                problems += why
                if p["project_modules"]:
                    raise SystemExit(f"plain side imported project modules: {p['project_modules']}")
                ratios.append(a["seconds"] / p["seconds"])
                print(f"round {i + 1}: app {a['seconds']:.2f} s, plain {p['seconds']:.2f} s, "
                      f"ratio {ratios[-1]:.3f}; acc app {a['acc']!r} plain {p['acc']!r}, "
                      f"acc_norm app {a['acc_norm']!r} plain {p['acc_norm']!r}", flush=True)
        finally:
            app.close()
            plain.close()
    for problem in problems[:10]:
        print("MISMATCH", problem)
    ratio = statistics.median(ratios)
    print(f"median ratio app / plain: {ratio:.3f} (target <= 1.05); scores equal: {equal}")
    print(json.dumps({"eval_overhead_ratio": round(ratio, 4), "scores_equal": equal, "limit": args.limit,
                      "batch_size": args.batch_size, "threads": args.threads, "ratios": [round(r, 4) for r in ratios]}))


if __name__ == "__main__":
    main()
