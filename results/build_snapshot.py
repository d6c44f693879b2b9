"""Build the results snapshot that PruneBoard ships and imports on first start.

A study of SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct) run by this project on a CPU:

* instruct: dense plus magnitude, Wanda, SparseGPT, Wanda N:M, Wanda with OWL allocation, ShortGPT,
  SLEB, Shortened-PPL, FLAP, LLM-Pruner, SliceGPT, SkipGPT-, D-LLM- and MoD-style routers, each at
  two sparsities (unstructured 0.25 and 0.5, N:M 1:4 and 2:4; depth, width and routers 0.25 and 0.4);
* think (prompted thinking): dense plus Wanda-OWL, SparseGPT, ShortGPT, FLAP and SkipGPT-style at both;
* tasks: PIQA and WinoGrande (200 rows each, log-likelihood), GSM8K and MATH-500 (50 rows each,
  greedy, 256 new tokens instruct / 512 think, batched, no budget forcing).

Every config states every method parameter, so a later change of a default never changes what a
stored run means; the parameters are the papers' / official code's settings (`backend.defaults`
version 2). A part written before a default changed is kept when its config, with the old defaults
written out, still hashes as its grid entry (same computation), and run again when it does not.
Runs go through the real queue and worker in a work home of their own (`--home`, default
var/snapshot-work), one at a time; each finished run is exported to
`results/parts/<name>.jsonl.gz` (a results bundle of one run), so an interrupted build resumes where
it stopped and a part that exists with the same config hash is never run again. `build` joins the
parts into `results/snapshot.jsonl.gz`.

    python results/build_snapshot.py list                 # the grid, with which parts exist
    python results/build_snapshot.py run [--only NAME ...] [--limit N]
    python results/build_snapshot.py build

Task data: PRUNEBOARD_DATA_DIR (or `python -m jobs data fetch piqa winogrande gsm8k math500 wikitext2`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "results"
PARTS = RESULTS / "parts"
SNAPSHOT = RESULTS / "snapshot.jsonl.gz"
MODEL = "builtin:smollm2-135m-instruct"
CLASSIFICATION_ROWS = 200
GENERATION_ROWS = 50
NEW_TOKENS = {"instruct": 256, "think": 512}
BATCH_SIZE = 50
"""Each generation task's 50 prompts decode in one batch (CPU time goes per decoding step)."""

CALIBRATION = {
    # WikiText-2 validation text: generic calibration, and no leak into any evaluated task.
    "large": {"source": "text", "path": "wikitext2/valid.txt", "num_samples": 32, "seq_len": 512, "seed": 0},
    "medium": {"source": "text", "path": "wikitext2/valid.txt", "num_samples": 16, "seq_len": 256, "seed": 0},
    # Block-search methods run the whole model once per candidate block: smaller sets keep them in minutes.
    "small": {"source": "text", "path": "wikitext2/valid.txt", "num_samples": 8, "seq_len": 256, "seed": 0},
}
SPARSITY_PARAMS = {"pattern": "unstructured", "allocation": "uniform", "owl_m": 5.0, "deviation": 0.08,
                   "allocation_scaling": "minmax"}
ROUTER_TRAINING = {"steps": 30, "lr": 0.05, "batch_size": 4, "threshold_rounds": 12}
GUMBEL = {**ROUTER_TRAINING, "temperature": 1.0, "penalty": 10.0}
UNSTRUCTURED = (0.25, 0.5)
STRUCTURED = (0.25, 0.4)

# name -> (method, params, calibration size or None, sparsities); the params are every knob the
# method has, at the value the run uses: the papers' / official code's settings (defaults version 2).
METHODS: dict[str, tuple[str, dict[str, Any], str | None, tuple[float, ...]]] = {
    "magnitude": ("magnitude", dict(SPARSITY_PARAMS), None, UNSTRUCTURED),
    "wanda": ("wanda", dict(SPARSITY_PARAMS), "large", UNSTRUCTURED),
    "sparsegpt": ("sparsegpt", {**SPARSITY_PARAMS, "blocksize": 128, "percdamp": 0.01}, "large", UNSTRUCTURED),
    "wanda-nm": ("wanda", {**SPARSITY_PARAMS, "pattern": "N:M"}, "large", UNSTRUCTURED),
    "wanda-owl": ("wanda", {**SPARSITY_PARAMS, "allocation": "owl"}, "large", UNSTRUCTURED),
    "shortgpt": ("shortgpt", {"last_block_output": "final-norm"}, "medium", STRUCTURED),
    "sleb": ("sleb", {"loss_stride": 1}, "small", STRUCTURED),
    "shortened-ppl": ("shortened-ppl", {"loss_stride": 1}, "small", STRUCTURED),
    "flap": ("flap", {"bias_compensation": True, "standardize": "per-layer"}, "large", STRUCTURED),
    "llm-pruner": ("llm-pruner", {"scope": "per-layer", "importance": "element1", "keep_first_layers": 4,
                                  "keep_last_layers": 2}, "large", STRUCTURED),
    "slicegpt": ("slicegpt", {}, "large", STRUCTURED),
    "skipgpt-style": ("skipgpt-style", {**GUMBEL, "lora_steps": 0, "lora_rank": 8, "lora_lr": 0.0001},
                      "medium", STRUCTURED),
    "dllm-style": ("dllm-style", {**GUMBEL, "router_hidden": 64, "skipped_kv": "evict"}, "medium", STRUCTURED),
    "mod-style": ("mod-style", {**ROUTER_TRAINING, "variant": "seed", "aux_weight": 1.0}, "medium", STRUCTURED),
}
THINK_METHODS = ("wanda-owl", "sparsegpt", "shortgpt", "flap", "skipgpt-style")


def _tasks(paradigm: str) -> list[dict[str, Any]]:
    generation = {"max_new_tokens": NEW_TOKENS[paradigm], "temperature": 0.0, "top_p": 1.0}
    return [
        {"name": "piqa", "limit": CLASSIFICATION_ROWS},
        {"name": "winogrande", "limit": CLASSIFICATION_ROWS},
        {"name": "gsm8k", "limit": GENERATION_ROWS, "generation": generation},
        {"name": "math500", "limit": GENERATION_ROWS, "generation": generation},
    ]


def _config(paradigm: str, key: str | None, sparsity: float) -> dict[str, Any]:
    document: dict[str, Any] = {"model": MODEL, "paradigm": paradigm, "tasks": _tasks(paradigm),
                                "evaluation": {"batch_size": BATCH_SIZE}, "seed": 0}
    if key is None:
        return document
    method, params, calibration, _ = METHODS[key]
    params = dict(params)
    if params.get("pattern") == "N:M":
        params["pattern"] = {0.25: "1:4", 0.5: "2:4"}[sparsity]
    document["pruning"] = {"method": method, "sparsity": sparsity, "params": params}
    if calibration is not None:
        document["calibration"] = dict(CALIBRATION[calibration])
    return document


def study() -> list[tuple[str, dict[str, Any]]]:
    """(part name, config document) in run order: each pruning's think run right after its instruct
    run, so a worker with PRUNEBOARD_PRUNE_CACHE=1 prunes once for both."""
    runs: list[tuple[str, dict[str, Any]]] = [("instruct-dense", _config("instruct", None, 0.0)),
                                              ("think-dense", _config("think", None, 0.0))]
    for key, (_, _, _, sparsities) in METHODS.items():
        for sparsity in sparsities:
            runs.append((f"instruct-{key}-{sparsity:.2f}", _config("instruct", key, sparsity)))
            if key in THINK_METHODS:
                runs.append((f"think-{key}-{sparsity:.2f}", _config("think", key, sparsity)))
    return runs


def _part_path(name: str) -> Path:
    return PARTS / f"{name}.jsonl.gz"


def _part_hash(path: Path) -> str | None:
    """The hash the part's config has under this code's defaults: read_bundle writes out the defaults
    changed since the part was written, so a run whose computation did not change keeps matching its
    grid entry (and is not run again), while one that relied on a changed default no longer does."""
    from backend.config import config_hash, validate_config
    from jobs.bundle import read_bundle

    bundle = read_bundle(path)
    return config_hash(validate_config(bundle.runs[0].record["config"])) if bundle.runs else None


def _setup_env(home: Path) -> None:
    os.environ["PRUNEBOARD_HOME"] = str(home)
    os.environ.setdefault("PRUNEBOARD_PRUNE_CACHE", "1")
    os.environ["PRUNEBOARD_AUTO_BASELINES"] = "0"  # the grid has its own dense runs
    os.environ["PRUNEBOARD_SEED_RESULTS"] = "0"  # the work database starts empty, not from a snapshot
    os.environ.setdefault("PRUNEBOARD_TRACE_CAP_MB", "1024")
    if "PRUNEBOARD_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["PRUNEBOARD_DATA_DIR"] = str(ROOT.parent / "shared" / "data")


def _selected(names: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    runs = study()
    if not names:
        return runs
    unknown = [n for n in names if not any(n == name or name.startswith(n + "-") or f"-{n}-" in name
                                           for name, _ in runs)]
    if unknown:
        raise SystemExit(f"no run matches {', '.join(unknown)}")
    return [(name, doc) for name, doc in runs
            if any(n == name or name.startswith(n + "-") or f"-{n}-" in name for n in names)]


def cmd_list(args: argparse.Namespace) -> int:
    from backend.config import config_hash, validate_config

    for name, document in _selected(args.only):
        digest = config_hash(validate_config(document))
        path = _part_path(name)
        state = "missing"
        if path.is_file():
            state = "done" if _part_hash(path) == digest else "stale (config changed)"
        print(f"{name:34} {digest[:12]}  {state}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    _setup_env(Path(args.home).resolve())
    from backend.config import config_hash, validate_config
    from db.session import init_db
    from jobs import queue
    from db.states import JobState
    from jobs.worker import Worker

    init_db()
    PARTS.mkdir(parents=True, exist_ok=True)
    worker = Worker(worker_id="snapshot")
    ran = 0
    for name, document in _selected(args.only):
        config = validate_config(document)
        digest = config_hash(config)
        path = _part_path(name)
        if path.is_file() and _part_hash(path) == digest:
            continue
        if args.limit is not None and ran >= args.limit:
            break
        job, _ = queue.submit(config, submitter="snapshot")
        started = time.perf_counter()
        while queue.get_job(job.id).state in (JobState.QUEUED, JobState.RUNNING):
            if not worker.run_once():
                time.sleep(0.5)
        finished = queue.get_job(job.id)
        seconds = time.perf_counter() - started
        if finished.state != JobState.SUCCEEDED:
            print(f"{name}: {finished.state.value}: {finished.error_type}: {finished.error_message}", flush=True)
            return 1
        _export_part(path, job.id)
        ran += 1
        print(json.dumps({"run": name, "job": job.id, "seconds": round(seconds, 1),
                          "stage_seconds": finished.stage_seconds_json}), flush=True)
    return 0


def _export_part(path: Path, job_id: int) -> None:
    try:
        from jobs.bundle import export_bundle
    except ImportError:  # bootstrapping: the runs started before the bundle format existed
        print(f"{path.name}: job {job_id} finished; not exported (no jobs.bundle yet)", flush=True)
        return
    export_bundle(path, job_ids=[job_id])


def cmd_export(args: argparse.Namespace) -> int:
    """Export the finished runs of the work home that have no part yet (or a stale one)."""
    _setup_env(Path(args.home).resolve())
    from sqlalchemy import select

    from backend.config import config_hash, validate_config
    from db.schema import Job
    from db.session import init_db, read_session
    from db.states import JobState

    init_db()
    PARTS.mkdir(parents=True, exist_ok=True)
    with read_session() as session:
        done = {job.config_hash: job.id for job in session.scalars(
            select(Job).where(Job.state == JobState.SUCCEEDED).order_by(Job.id))}
    for name, document in _selected(args.only):
        digest = config_hash(validate_config(document))
        path = _part_path(name)
        if digest in done and not (path.is_file() and _part_hash(path) == digest):
            _export_part(path, done[digest])
            print(f"exported {name} (job {done[digest]})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from jobs.bundle import merge_bundles

    names = [name for name, _ in study()]
    present = [_part_path(n) for n in names if _part_path(n).is_file()]
    missing = [n for n in names if not _part_path(n).is_file()]
    stats = merge_bundles(present, SNAPSHOT)
    print(json.dumps({"snapshot": str(SNAPSHOT.relative_to(ROOT)), "runs": stats["runs"],
                      "bytes": SNAPSHOT.stat().st_size, "missing": missing}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the grid and which parts exist")
    p.add_argument("--only", nargs="*")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("run", help="run the missing runs, exporting each to results/parts/")
    p.add_argument("--only", nargs="*", help="part names or method keys (e.g. wanda-owl, instruct-dense)")
    p.add_argument("--limit", type=int, help="stop after this many runs")
    p.add_argument("--home", default=str(ROOT / "var" / "snapshot-work"))
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("export", help="export finished runs of the work home that have no part yet")
    p.add_argument("--only", nargs="*")
    p.add_argument("--home", default=str(ROOT / "var" / "snapshot-work"))
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("build", help="join the parts into results/snapshot.jsonl.gz")
    p.set_defaults(func=cmd_build)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
