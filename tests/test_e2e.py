"""End to end through the real CLI: submit -> worker process -> pipeline -> SQLite -> leaderboard."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from db import queries
from db.schema import Sample, Score
from db.session import read_session

ROOT = Path(__file__).resolve().parent.parent
TINY_EXAMPLES = ["tiny-dense.yaml", "tiny-magnitude.yaml", "tiny-shortgpt.yaml"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"jobs {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def submit(path: Path, *extra: str) -> dict:
    return json.loads(cli("submit", str(path), "--json", *extra).stdout)


def test_three_tiny_methods_end_to_end():
    submitted = [submit(ROOT / "examples" / name) for name in TINY_EXAMPLES]
    assert [s["existing"] for s in submitted] == [False, False, False]
    assert len({s["id"] for s in submitted}) == 3

    cli("worker", "--drain")

    status = json.loads(cli("status", "--json").stdout)["jobs"]
    assert {job["id"]: job["state"] for job in status} == {s["id"]: "succeeded" for s in submitted}

    with read_session() as session:
        for s in submitted:
            assert session.query(Score).filter_by(job_id=s["id"]).count() >= 2
            tasks = {row.task: 0 for row in session.query(Sample).filter_by(job_id=s["id"])}
            assert set(tasks) == {"synthetic-mc", "synthetic-arith"}
            samples = session.query(Sample).filter_by(job_id=s["id"], task="synthetic-arith").all()
            assert len(samples) == 8 and all(sample.output is not None and sample.prompt for sample in samples)
        board = queries.leaderboard(session)
        details = {s["id"]: queries.job_detail(session, s["id"]) for s in submitted}

    assert len(board) == 3
    assert {"synthetic-mc", "synthetic-arith"} <= set(board.columns)
    assert board[["synthetic-mc", "synthetic-arith"]].notna().all().all()
    assert board.iloc[0]["method"] == "dense"

    shortgpt = details[submitted[2]["id"]]
    assert len(shortgpt["prune_report"]["removed_layers"]) == 2
    magnitude = details[submitted[1]["id"]]
    assert magnitude["prune_report"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    manifest = magnitude["manifest"]
    for key in ("project_commit", "torch", "transformers", "lm_eval", "device", "dtype", "tasks", "config_hash"):
        assert manifest.get(key), key

    again = submit(ROOT / "examples" / "tiny-dense.yaml")
    assert again == {"id": submitted[0]["id"], "state": "succeeded", "existing": True}
    forced = submit(ROOT / "examples" / "tiny-dense.yaml", "--force")
    assert forced["id"] not in {s["id"] for s in submitted} and forced["existing"] is False


@pytest.mark.slow
def test_smollm2_job_reports_progress_through_the_queue(tmp_path, shared_data, smollm2):
    """A real SmolLM2 job, watched from outside: several distinct fractions and stage texts."""
    config = tmp_path / "smollm2.yaml"
    config.write_text(
        "model: builtin:smollm2-135m-instruct\n"
        "pruning: {method: magnitude, sparsity: 0.5}\n"
        "tasks:\n  - {name: synthetic-mc, limit: 40}\n  - {name: piqa, limit: 16}\n"
        "evaluation: {batch_size: 4}\nseed: 0\n"
    )
    job_id = submit(config)["id"]
    worker = subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--drain"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[tuple[float, str]] = []
    deadline = time.monotonic() + 600
    while worker.poll() is None and time.monotonic() < deadline:
        with read_session() as session:
            job = queries.job_detail(session, job_id)
        point = (job["progress"], job["stage_text"])
        if job["state"] == "running" and (not seen or seen[-1] != point):
            seen.append(point)
        time.sleep(0.05)
    worker.wait(timeout=30)
    with read_session() as session:
        job = queries.job_detail(session, job_id)
    assert job["state"] == "succeeded", job["error_message"]
    fractions = {f for f, _ in seen if 0 < f < 1}
    texts = {t for _, t in seen if t}
    assert len(fractions) >= 3, seen
    assert len(texts) >= 3, seen
    assert [f for f, _ in seen] == sorted(f for f, _ in seen), "progress went backwards"
