"""Automatic dense baselines: the baseline config, queueing on submit, dedup, and the switch."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.config import validate_config
from db.leaderboard import board
from db.schema import Job
from db.session import dispose_engines, read_session
from jobs import queue
from jobs.baselines import dense_baseline_config
from db.states import JobState

TASKS = [{"name": "synthetic-mc", "limit": 20}, "synthetic-arith"]


@pytest.fixture(autouse=True)
def _auto_baselines(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_AUTO_BASELINES", "1")
    yield
    dispose_engines()


def pruned(sparsity: float = 0.5, tasks=TASKS, **extra):
    return validate_config({"model": "builtin:tiny-llama", "paradigm": "think", "tasks": tasks, "seed": 3,
                            "evaluation": {"batch_size": 4},
                            "pruning": {"method": "wanda", "sparsity": sparsity}, **extra})


def jobs() -> list[Job]:
    with read_session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def test_baseline_config_keeps_the_evaluation_and_drops_pruning():
    config = pruned(calibration={"source": "synthetic", "num_samples": 4}, recovery={"data": "synthetic"},
                    keep_model=True)
    baseline = dense_baseline_config(config)
    assert baseline.pruning.method == "dense" and baseline.pruning.sparsity == 0.0
    assert baseline.recovery is None and not baseline.keep_model
    assert baseline.calibration is None  # a dense run names no calibration
    for name in ("model", "paradigm", "model_args", "tasks", "evaluation", "seed"):
        assert getattr(baseline, name) == getattr(config, name)
    assert dense_baseline_config(baseline) is None


def test_submitting_a_pruned_config_queues_its_baseline_first():
    job, existing = queue.submit(pruned(), submitter="web")
    assert not existing
    baseline, run = jobs()
    assert run.id == job.id and baseline.id < run.id  # a worker takes the baseline first
    assert (baseline.method, baseline.submitter, baseline.paradigm, baseline.state) == (
        "dense", "system", "think", JobState.QUEUED)
    assert baseline.config_hash == queue.config_hash(dense_baseline_config(pruned()))


def test_baselines_are_deduplicated():
    queue.submit(pruned(0.5))
    queue.submit(pruned(0.7))  # same evaluation: the same baseline
    queue.submit(pruned(0.5))  # a duplicate submission
    assert [j.method for j in jobs()] == ["dense", "wanda", "wanda"]
    queue.submit(pruned(0.5, tasks=["synthetic-mc"]))  # other tasks: another baseline
    assert [j.method for j in jobs()] == ["dense", "wanda", "wanda", "dense", "wanda"]


def test_dense_configs_and_covered_settings_queue_nothing(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_LOCAL_WORKERS", "0")  # boolq's data is the (remote) workers' business
    dense = validate_config({"model": "builtin:tiny-llama", "paradigm": "think", "seed": 3,
                             "tasks": [*TASKS, "boolq"], "evaluation": {"batch_size": 16}})
    queue.submit(dense)  # a dense run evaluating the same tasks the same way (and one more)
    assert len(jobs()) == 1
    queue.submit(pruned())
    assert [j.method for j in jobs()] == ["dense", "wanda"]
    queue.submit(pruned(tasks=[{"name": "synthetic-mc", "limit": 10}]))  # another limit: not covered
    assert [j.method for j in jobs()] == ["dense", "wanda", "dense", "wanda"]


def test_a_failed_baseline_is_not_requeued_automatically():
    queue.submit(pruned(0.5))
    claimed = queue.claim_next("w")
    assert claimed.method == "dense"
    queue.fail(claimed.id, claimed.attempts, "RuntimeError", "boom")
    queue.submit(pruned(0.7))
    states = [(j.method, j.state) for j in jobs()]
    assert states == [("dense", JobState.FAILED), ("wanda", JobState.QUEUED), ("wanda", JobState.QUEUED)]


def test_switched_off(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_AUTO_BASELINES", "0")
    queue.submit(pruned())
    assert [j.method for j in jobs()] == ["wanda"]


def test_board_flag_names_the_queued_baseline():
    from backend.result import RunResult, ScoreRecord

    job, _ = queue.submit(pruned())
    baseline = jobs()[0]
    queue.cancel(baseline.id)  # let the pruned run go first, then queue the baseline again
    claimed = queue.claim_next("w")
    assert claimed.id == job.id
    queue.complete(job.id, claimed.attempts, RunResult(
        scores=[ScoreRecord("synthetic-mc", "acc", 0.5, None, True, True, "k")], samples=[], efficiency={},
        prune_report={}, manifest={}))
    queue.retry(baseline.id)
    with read_session() as session:
        flag = board(session).frame.iloc[0]["flag"]
    assert flag == f"no dense baseline for this model and paradigm yet (job {baseline.id} is queued)"
