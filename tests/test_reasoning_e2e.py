"""SmolLM2-135M-Instruct on 20 GSM8K problems through the real queue: submit -> worker process -> SQLite.

Run with `pytest -s -m slow tests/test_reasoning_e2e.py` to see the accuracy line.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.config import validate_config
from db import queries
from db.schema import Sample, Score
from db.session import read_session
from jobs.queue import submit

ROOT = Path(__file__).resolve().parent.parent
GSM8K_DOCS = 20
MAX_NEW_TOKENS = 256
"""Enough for SmolLM2's short chains of thought; keeps the job to a few minutes on a 2-core CPU."""


@pytest.mark.slow
def test_smollm2_gsm8k_20_through_the_queue(shared_data):
    config = validate_config({
        "model": "builtin:smollm2-135m-instruct",
        "tasks": [{"name": "gsm8k", "limit": GSM8K_DOCS, "generation": {"max_new_tokens": MAX_NEW_TOKENS}}],
        "evaluation": {"batch_size": 10},
    })
    job, existing = submit(config)
    assert not existing
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs", "worker", "--drain"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-2000:]

    with read_session() as session:
        detail = queries.job_detail(session, job.id)
        assert detail["state"] == "succeeded", detail["error_message"]
        samples = session.query(Sample).filter_by(job_id=job.id, task="gsm8k").order_by(Sample.doc_id).all()
        scores = {s.metric: s.value for s in session.query(Score).filter_by(job_id=job.id, task="gsm8k")}
        rows = [(s.doc_id, s.prompt, s.output, s.extracted, s.gold, s.correct, s.prompt_tokens,
                 s.output_tokens, s.metrics_json) for s in samples]

    assert [r[0] for r in rows] == list(range(GSM8K_DOCS))
    for doc_id, prompt, output, extracted, gold, correct, prompt_tokens, output_tokens, metrics in rows:
        assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n"), doc_id
        assert output is not None and gold.lstrip("-").isdigit(), doc_id
        assert 0 < prompt_tokens and 0 <= output_tokens <= MAX_NEW_TOKENS + 8, doc_id
        assert (output_tokens > 0) == bool(output), doc_id
        assert set(metrics) == {"exact_match,strict-match", "exact_match,flexible-extract"}, doc_id
        assert correct == bool(metrics["exact_match,flexible-extract"]), doc_id
        if output.strip() and any(ch.isdigit() for ch in output):
            assert extracted is not None, doc_id
    accuracy = scores["exact_match,flexible-extract"]
    assert accuracy == pytest.approx(sum(r[5] for r in rows) / GSM8K_DOCS)
    assert detail["efficiency"] and detail["efficiency"]["decode_tokens_per_s"] > 0
    print(f"\nSmolLM2-135M-Instruct GSM8K first {GSM8K_DOCS}: flexible-extract accuracy={accuracy:.2f} "
          f"strict-match={scores['exact_match,strict-match']:.2f} "
          f"(max_new_tokens={MAX_NEW_TOKENS}, batch 10) in {seconds:.0f}s through the queue; "
          f"mean output tokens={sum(r[7] for r in rows) / GSM8K_DOCS:.0f}")
