"""A synthetic board the size and shape of the shipped snapshot, for the UI benchmarks.

The configs are the snapshot study's own (`results/build_snapshot.py`: 40 runs of SmolLM2-135M,
instruct and think, dense plus 14 methods at two sparsities), so every method, family, calibration
source and comparability group the real board has is here too. Results are synthetic and seeded:
per run, PIQA and WinoGrande (200 log-likelihood samples each) and GSM8K and MATH-500 (50
generated samples each, with reasoning text in the think paradigm), scores that fall with
sparsity, and an efficiency record. Each run is written through the queue's own completion path
(`jobs.queue.complete`), so scores, samples, traces and trace statistics are stored as a worker
stores them. Nothing here loads a model.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = {"piqa": 200, "winogrande": 200, "gsm8k": 50, "math500": 50}
"""Samples per task, as in the snapshot (the `limit` of each task)."""
METRICS = {"piqa": ("acc", "acc_norm"), "winogrande": ("acc",), "gsm8k": ("exact_match",),
           "math500": ("exact_match",)}
"""Metrics stored per task; the first is the primary one."""
DENSE_ACCURACY = {"piqa": 0.66, "winogrande": 0.53, "gsm8k": 0.12, "math500": 0.06}
GENERATED = ("gsm8k", "math500")


def seed_snapshot_board(seed: int = 0) -> list[int]:
    """Write the synthetic board into the database `PRUNEBOARD_HOME`/`DATABASE_URL` names (it must
    hold no other queued job); returns the job ids in the study's order."""
    from backend.config import validate_config
    from jobs import queue
    from results.build_snapshot import study

    rng = random.Random(seed)
    ids = []
    for name, document in study():
        job, _ = queue.submit(validate_config(document))
        claimed = queue.claim_next("bench-seed")
        if claimed is None or claimed.id != job.id:
            raise RuntimeError("seeding expects an otherwise empty queue")
        if not queue.complete(job.id, claimed.attempts, synthetic_result(document, rng)):
            raise RuntimeError(f"could not complete seeded job {job.id} ({name})")
        ids.append(job.id)
    return ids


def synthetic_result(document: dict, rng: random.Random):
    """Scores, samples and efficiency of one run whose quality falls with its sparsity."""
    from backend.result import RunResult, SampleRecord, ScoreRecord

    pruning = document.get("pruning") or {"method": "dense", "sparsity": 0.0}
    sparsity, paradigm = float(pruning["sparsity"]), document["paradigm"]
    samples, scores = [], []
    for task, count in SAMPLES.items():
        accuracy = max(0.0, DENSE_ACCURACY[task] * (1.0 - 1.2 * sparsity) + rng.uniform(-0.02, 0.02))
        correct = [rng.random() < accuracy for _ in range(count)]
        for doc_id, ok in enumerate(correct):
            samples.append(_sample(task, doc_id, ok, paradigm, rng, SampleRecord))
        value = sum(correct) / count
        key = f"bench-{task}-{paradigm}"
        for index, metric in enumerate(METRICS[task]):
            scores.append(ScoreRecord(task, metric, value, (value * (1 - value) / count) ** 0.5, True, index == 0, key))
    params = 134_515_008 * (1.0 - 0.8 * sparsity)
    efficiency = {"params": int(params), "nonzero_params": int(params), "device": "cpu",
                  "device_name": "bench CPU", "decode_tokens_per_s": round(40.0 / (1.0 - 0.7 * sparsity), 2),
                  "prefill_tokens_per_s": round(900.0 / (1.0 - 0.7 * sparsity), 2), "dtype": "float32"}
    return RunResult(scores=scores, samples=samples, efficiency=efficiency,
                     prune_report={"method": pruning["method"]}, manifest={"seeded_by": "bench/seed_board.py"})


def _sample(task: str, doc_id: int, correct: bool, paradigm: str, rng: random.Random, record):
    gold = str(rng.randint(1, 500))
    extracted = gold if correct else str(rng.randint(1, 500))
    if task not in GENERATED:
        return record(task=task, doc_id=doc_id, prompt=f"Question {doc_id}: which option fits best?",
                      output=f"[0] {-rng.uniform(5, 40):.4f}\n[1] {-rng.uniform(5, 40):.4f}", extracted=extracted,
                      gold=gold, correct=correct, prompt_tokens=40, output_tokens=0,
                      metrics={"acc": float(correct)})
    words = " ".join(rng.choice(("so", "then", "we", "add", "the", "total", "is", "carry", "seven", "apples"))
                     for _ in range(60 if paradigm == "instruct" else 300))
    reasoning = words if paradigm == "think" else None
    answer = f"The answer is \\boxed{{{extracted}}}."
    output = f"<think>{reasoning}</think>{answer}" if reasoning else f"{words} {answer}"
    return record(task=task, doc_id=doc_id, prompt=f"Problem {doc_id}: how many apples are left?",
                  output=output, extracted=extracted, gold=gold, correct=correct, prompt_tokens=60,
                  output_tokens=len(output.split()), metrics={"exact_match": float(correct)},
                  reasoning=reasoning, answer=answer, finish_reason="stop",
                  thinking_tokens=len(reasoning.split()) if reasoning else None, repetition=0.1)
