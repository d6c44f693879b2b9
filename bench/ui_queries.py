"""Server-side time of the two heavy UI queries on a scratch database.

Seeds a scratch PRUNEBOARD_HOME with 1,000 succeeded runs (plus superseded and failed jobs) of 20
tasks x 5 metrics = 100,000 score rows over 5 models x 2 paradigms, and 40 runs with 500 gsm8k
samples each (previews of realistic length). Then times, median of --repeat calls, each in a fresh
DB session with no application cache (the method-facts cache of db.leaderboard is cleared):

* pivot: db.leaderboard.board() for one model with a family filter (two filters), delta view:
  SQL, baselines, groups, averages and the DataFrame (target < 150 ms);
* compare: db.compare.compare() of two 500-sample runs: SQL, outcome filter, the first page and
  the paired bootstrap (2000 resamples) + McNemar (target < 200 ms).

Wall-clock medians on the last line: {"pivot_ms": ..., "compare_ms": ...} (CPU
medians on the line before). Usage: python bench/ui_queries.py [--repeat 20]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = [f"hf:org/model-{i}" for i in range(5)]
PARADIGMS = ("instruct", "think")
TASKS = ["arc-challenge", "arc-easy", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande", "synthetic-mc",
         "humaneval", "humaneval-plus", "ifeval", "popqa", "truthfulqa-mc2", "gsm8k", "math500", "aime24",
         "gpqa-diamond", "synthetic-arith", "jeebench", "wikitext2-ppl"]
METRICS_PER_TASK = 5
RUNS_PER_SETTING = 100
METHODS = [("magnitude", False), ("wanda", True), ("sparsegpt", True), ("shortgpt", True), ("sleb", True),
           ("slicegpt", True), ("flap", True), ("llm-pruner", True)]
SAMPLE_RUNS = 40
SAMPLES_PER_RUN = 500


def seed(rng: random.Random) -> tuple[str, list[int]]:
    """Bulk-insert the scratch data; returns (a model with runs, two job ids with samples)."""
    from sqlalchemy import insert

    from db.schema import Job, Sample, Score
    from db.session import write_session
    from db.states import JobState
    from jobs.facts import run_facts, task_facts

    job_rows, score_rows, sample_rows = [], [], []
    job_id = 0

    def add_job(model, paradigm, method, sparsity, config, state=JobState.SUCCEEDED, config_hash=None) -> int:
        nonlocal job_id
        job_id += 1
        job_rows.append(dict(id=job_id, config_hash=config_hash or f"h{job_id}", config_json=json.dumps(config),
                             model=model, paradigm=paradigm, method=method, sparsity=sparsity, state=state,
                             attempts=1, requeues=0, progress=1.0, cancel_requested=False,
                             efficiency_json={"params": 1e8 * (1 - sparsity), "decode_tokens_per_s": 50 + sparsity,
                                              "device_name": "cpu"}, **run_facts(config)))
        return job_id

    def add_scores(job: int, quality: float) -> None:
        for task in TASKS:
            for m in range(METRICS_PER_TASK):
                ppl = task == "wikitext2-ppl"
                value = (20 / quality if ppl else quality * rng.uniform(0.3, 0.9))
                score_rows.append(dict(job_id=job, task=task, metric=f"metric{m}", value=value, stderr=0.01,
                                       higher_is_better=not ppl, is_primary=m == 0,
                                       comparability_key=f"{task}|fewshot0|lm-eval-0.4|bf16",
                                       scorer_version="1", **task_facts(task)))

    succeeded = 0
    for model in MODELS:
        for paradigm in PARADIGMS:
            base = {"model": model, "paradigm": paradigm, "tasks": TASKS}
            add_job(model, paradigm, "dense", 0.0, base, state=JobState.FAILED)
            for i in range(RUNS_PER_SETTING):
                method, calibrated = METHODS[i % len(METHODS)] if i else ("dense", False)
                sparsity = 0.0 if method == "dense" else round(0.1 + 0.05 * (i // len(METHODS) % 12), 2)
                config = {**base, "pruning": {"method": method, "sparsity": sparsity}}
                if calibrated and i % 3 == 0:
                    config["calibration"] = {"source": "text", "path": "c4.txt"}
                if i % 5 == 0:
                    config["recovery"] = {"data": "text", "path": "c4.txt"}
                digest = f"{model}/{paradigm}/{i}"
                if i % 10 == 1:  # a superseded older run of the same config
                    add_job(model, paradigm, method, sparsity, config, config_hash=digest)
                job = add_job(model, paradigm, method, sparsity, config, config_hash=digest)
                add_scores(job, 1.0 - sparsity / 2)
                succeeded += 1
    # The superseded runs' scores are not counted in the 100,000 of the latest runs.
    sample_jobs = [row["id"] for row in job_rows if row["state"] == JobState.SUCCEEDED][:SAMPLE_RUNS]
    for job in sample_jobs:
        for doc in range(SAMPLES_PER_RUN):
            right = rng.random() < 0.6
            answer = str(doc) if right else str(rng.randint(0, 999))
            sample_rows.append(dict(
                job_id=job, task="gsm8k", doc_id=doc,
                prompt=f"Question {doc}: " + "A train leaves the station at noon. " * 40,
                output=("Let me think step by step. " * 60)[:2000], extracted=answer, gold=str(doc), correct=right,
                prompt_tokens=300, output_tokens=rng.randint(50, 2000), metrics_json={"exact_match": float(right)},
                answer=f"The answer is {answer}", finish_reason="stop", thinking_tokens=rng.randint(0, 1500),
                truncated=rng.random() < 0.05, repetition=0.1, output_chars=4000))
    with write_session() as session:
        session.execute(insert(Job), job_rows)
        for start in range(0, len(score_rows), 20_000):
            session.execute(insert(Score), score_rows[start:start + 20_000])
        for start in range(0, len(sample_rows), 5_000):
            session.execute(insert(Sample), sample_rows[start:start + 5_000])
    print(f"seeded {len(job_rows)} jobs ({succeeded} latest succeeded runs), {len(score_rows)} score rows, "
          f"{len(sample_rows)} samples", flush=True)
    return MODELS[2], sample_jobs[:2]


def median_ms(function, repeat: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds (CPU time is steadier on a shared machine)."""
    wall, cpu = [], []
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="pruneboard-bench-")
    os.environ.update(PRUNEBOARD_HOME=home)
    os.environ.pop("DATABASE_URL", None)
    from db import leaderboard
    from db.compare import compare
    from db.leaderboard import BoardFilters, board
    from db.session import read_session

    started = time.perf_counter()
    model, (job_a, job_b) = seed(random.Random(0))
    print(f"seeding took {time.perf_counter() - started:.1f} s", flush=True)
    filters = BoardFilters(model=model, families=("unstructured", "width"))

    def pivot():
        leaderboard._METHOD_FACTS.clear()
        with read_session() as session:
            result = board(session, filters, view="delta")
        assert len(result.frame) > 10, result.frame

    def paired():
        with read_session() as session:
            result = compare(session, [job_a, job_b], "gsm8k")
        assert result.total == SAMPLES_PER_RUN and result.pairs[0]["n_paired"] == SAMPLES_PER_RUN

    pivot(), paired()  # warm the imports and the SQLite page cache
    pivot_ms, pivot_cpu = median_ms(pivot, args.repeat)
    compare_ms, compare_cpu = median_ms(paired, args.repeat)
    print(f"board(model + family filter, delta view): {pivot_ms:.1f} ms, CPU {pivot_cpu:.1f} ms (target < 150); "
          f"compare(2 runs x {SAMPLES_PER_RUN} samples + stats): {compare_ms:.1f} ms, CPU {compare_cpu:.1f} ms "
          f"(target < 200); median of {args.repeat}")
    print(json.dumps({"pivot_ms": round(pivot_ms, 1), "compare_ms": round(compare_ms, 1)}))


if __name__ == "__main__":
    main()
