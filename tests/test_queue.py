"""The durable queue end to end on a real SQLite file: submit semantics, claims, leases, cancels,
failures, resume, and the one-transaction completion. Worker processes run the real noop pipeline."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from backend.config import canonical_json, config_hash, validate_config
from backend.events import Progress, SampleDone
from backend.result import RunResult, SampleRecord, ScoreRecord
from db.schema import Job, Sample, SampleCheckpoint, Score, utcnow
from db.session import dispose_engines, read_session
from jobs import queue
from db.states import JobState
from jobs.states import InvalidTransition, JobNotFound, LostClaim
from jobs.worker import Worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _close_engines():
    """Each test has its own database file; close its pooled connections afterwards."""
    yield
    dispose_engines()


def jobs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs", *args]


def config(seed: int = 0, sleep_ms: int = 10, **model_args):
    return validate_config(
        {"model": "builtin:noop", "model_args": {"sleep_ms": sleep_ms, **model_args}, "tasks": ["synthetic-mc"], "seed": seed}
    )


def job_row(job_id: int) -> Job:
    with read_session() as session:
        return session.get(Job, job_id)


def count(model) -> int:
    with read_session() as session:
        return session.scalar(select(func.count()).select_from(model))


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def expire_leases() -> dict:
    return queue.requeue_expired(now=utcnow() + timedelta(hours=1))


def sample(task: str, doc_id: int, correct: bool = True) -> SampleRecord:
    return SampleRecord(task=task, doc_id=doc_id, prompt=f"q{doc_id}", output="a", extracted="a",
                        gold="a", correct=correct, prompt_tokens=3, output_tokens=1, metrics={"acc": float(correct)})


def result(samples=(), scores=None) -> RunResult:
    scores = scores if scores is not None else [
        ScoreRecord("synthetic-mc", "acc", 0.75, 0.1, True, True, "synthetic-mc|v1|0shot"),
        ScoreRecord("synthetic-mc", "acc_norm", 0.5, None, True, False, "synthetic-mc|v1|0shot"),
    ]
    return RunResult(scores=list(scores), samples=list(samples), efficiency={"tokens_per_s": 1.0},
                     prune_report={"method": "dense"}, manifest={"seed": 0}, stage_seconds={"evaluate": 0.1})


@pytest.fixture
def short_lease(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_LEASE_SECONDS", "1.5")


# --- submit -----------------------------------------------------------------------------------


def test_submit_dedups_requeues_and_forces():
    job, existing = queue.submit(config(1), submitter="me")
    assert not existing and job.state == JobState.QUEUED and job.attempts == 0 and job.submitter == "me"
    assert (job.model, job.paradigm, job.method, job.sparsity) == ("builtin:noop", "instruct", "dense", 0.0)

    again, existing = queue.submit(config(1))
    assert existing and again.id == job.id
    other, existing = queue.submit(config(2))
    assert not existing and other.id != job.id

    claimed = queue.claim_next("w")
    assert claimed.id == job.id and queue.fail(job.id, 1, "RuntimeError", "boom", "log")
    requeued, existing = queue.submit(config(1))
    assert existing and requeued.id == job.id
    row = job_row(job.id)
    assert row.state == JobState.QUEUED and row.error_type is None and row.error_message is None
    assert row.progress == 0 and not row.cancel_requested and row.attempts == 1

    forced, existing = queue.submit(config(1), force=True)
    assert not existing and forced.id not in (job.id, other.id)
    assert forced.config_hash == job.config_hash
    assert count(Job) == 3


def test_submit_stores_canonical_config_and_filter_columns():
    cfg = validate_config({"model": "builtin:noop", "paradigm": "think", "tasks": ["synthetic-mc"],
                           "pruning": {"method": "magnitude", "sparsity": 0.5}})
    job, _ = queue.submit(cfg)
    assert (job.model, job.paradigm, job.method, job.sparsity) == ("builtin:noop", "think", "magnitude", 0.5)
    assert job.config_json == canonical_json(cfg) and job.config_hash == config_hash(cfg)


def test_submit_returns_succeeded_job_and_requeues_cancelled():
    job, _ = queue.submit(config(1))
    assert queue.cancel(job.id) == JobState.CANCELLED
    again, existing = queue.submit(config(1))
    assert existing and again.id == job.id and again.state == JobState.QUEUED

    claimed = queue.claim_next("w")
    assert queue.complete(claimed.id, claimed.attempts, result())
    same, existing = queue.submit(config(1))
    assert existing and same.id == job.id and same.state == JobState.SUCCEEDED


# --- claims, leases, heartbeats ---------------------------------------------------------------


def test_claim_takes_oldest_and_counts_attempts():
    first, _ = queue.submit(config(1))
    second, _ = queue.submit(config(2))
    a = queue.claim_next("w1")
    b = queue.claim_next("w2")
    assert (a.id, b.id) == (first.id, second.id)
    assert a.state == JobState.RUNNING and a.attempts == 1 and a.worker_id == "w1"
    assert a.lease_expires_at > utcnow() and a.started_at is not None
    assert queue.claim_next("w3") is None


def test_heartbeat_renews_lease_reports_cancel_and_detects_lost_claim():
    job, _ = queue.submit(config(1))
    claimed = queue.claim_next("w")
    before = job_row(job.id).lease_expires_at
    time.sleep(0.01)
    assert queue.heartbeat(job.id, 1, 0.5, "evaluate", "halfway") is False
    row = job_row(job.id)
    assert row.lease_expires_at > before and (row.progress, row.stage, row.stage_text) == (0.5, "evaluate", "halfway")

    assert queue.cancel(job.id) == JobState.RUNNING
    assert queue.heartbeat(job.id, claimed.attempts) is True
    with pytest.raises(LostClaim):
        queue.heartbeat(job.id, claimed.attempts + 1)


def test_expired_lease_requeues_then_fails_after_max_requeues(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_MAX_REQUEUES", "2")
    job, _ = queue.submit(config(1))
    for expiry in (1, 2):
        queue.claim_next("w")
        assert queue.requeue_expired() == {}  # lease still valid
        assert expire_leases() == {job.id: JobState.QUEUED}
        row = job_row(job.id)
        assert row.requeues == expiry and row.worker_id is None and row.lease_expires_at is None
    queue.claim_next("w")
    assert expire_leases() == {job.id: JobState.FAILED}
    row = job_row(job.id)
    assert row.state == JobState.FAILED and row.attempts == 3
    assert row.error_type == "LeaseExpired" and row.error_message == "lease expired 3 times (worker died?)"
    assert queue.claim_next("w") is None


def test_expired_lease_of_a_cancel_requested_job_cancels_it():
    job, _ = queue.submit(config(1))
    queue.claim_next("w")
    queue.cancel(job.id)
    assert expire_leases() == {job.id: JobState.CANCELLED}


# --- complete / fail / cancel / retry ---------------------------------------------------------


def test_complete_with_stale_attempt_writes_nothing():
    job, _ = queue.submit(config(1))
    queue.claim_next("w1")
    expire_leases()  # worker 1 "died"; its attempt 1 is stale
    queue.claim_next("w2")
    assert queue.complete(job.id, 1, result([sample("synthetic-mc", 0)])) is False
    assert count(Score) == 0 and count(Sample) == 0 and job_row(job.id).state == JobState.RUNNING
    assert queue.fail(job.id, 1, "RuntimeError", "late") is False
    with pytest.raises(LostClaim):
        queue.record_sample(job.id, 1, sample("synthetic-mc", 0))

    assert queue.complete(job.id, 2, result([sample("synthetic-mc", 0)])) is True
    assert queue.complete(job.id, 2, result([sample("synthetic-mc", 0)])) is False  # duplicate completion
    assert count(Score) == 2 and count(Sample) == 1
    row = job_row(job.id)
    assert row.state == JobState.SUCCEEDED and row.progress == 1.0 and row.finished_at is not None
    assert row.efficiency_json == {"tokens_per_s": 1.0} and row.stage_seconds_json == {"evaluate": 0.1}


def test_completion_is_one_transaction():
    job, _ = queue.submit(config(1))
    queue.claim_next("w")
    queue.record_sample(job.id, 1, sample("synthetic-mc", 0))
    duplicate = [sample("synthetic-mc", 0), sample("synthetic-mc", 1), sample("synthetic-mc", 1)]
    with pytest.raises(IntegrityError):  # fails after the job row and the scores were written
        queue.complete(job.id, 1, result(duplicate))
    assert count(Score) == 0 and count(Sample) == 0
    row = job_row(job.id)
    assert row.state == JobState.RUNNING and row.manifest_json is None
    assert count(SampleCheckpoint) == 1  # checkpoints survive for the retry


def test_complete_refused_after_cancel_request():
    job, _ = queue.submit(config(1))
    queue.claim_next("w")
    queue.cancel(job.id)
    assert queue.complete(job.id, 1, result()) is False and count(Score) == 0
    assert queue.mark_cancelled(job.id, 1) and job_row(job.id).state == JobState.CANCELLED


def test_cancel_and_retry_transitions():
    job, _ = queue.submit(config(1))
    assert queue.cancel(job.id) == JobState.CANCELLED
    assert queue.cancel(job.id) == JobState.CANCELLED  # idempotent
    assert queue.claim_next("w") is None
    with pytest.raises(InvalidTransition):
        queue.retry(queue.submit(config(2))[0].id)  # queued
    retried = queue.retry(job.id)
    assert retried.state == JobState.QUEUED and retried.finished_at is None

    done, _ = queue.submit(config(3))
    while (claimed := queue.claim_next("w")) is not None:
        queue.complete(claimed.id, claimed.attempts, result(scores=[]))
    with pytest.raises(InvalidTransition, match="already succeeded"):
        queue.cancel(done.id)
    with pytest.raises(InvalidTransition, match="--force"):
        queue.retry(done.id)
    with pytest.raises(JobNotFound):
        queue.cancel(999)
    with pytest.raises(JobNotFound):
        queue.retry(999)


def test_release_hands_the_job_back():
    job, _ = queue.submit(config(1))
    queue.claim_next("w")
    assert queue.release(job.id, 1) and job_row(job.id).state == JobState.QUEUED
    assert queue.release(job.id, 1) is False
    assert queue.claim_next("w").attempts == 2


# --- the worker, in process -------------------------------------------------------------------


def test_worker_runs_noop_job_to_success():
    job, _ = queue.submit(config(1, sleep_ms=20))
    assert Worker("w").run(drain=True) == 1
    row = job_row(job.id)
    assert row.state == JobState.SUCCEEDED and row.attempts == 1 and row.progress == 1.0
    assert row.manifest_json["config_hash"] == job.config_hash
    assert count(Score) == 0  # noop scores nothing


def test_pipeline_exception_fails_job_with_log_tail_and_no_retry():
    job, _ = queue.submit(config(1, sleep_ms=0, fail="boom: out of cheese"))
    assert Worker("w").run(drain=True) == 1
    assert Worker("w").run(drain=True) == 0
    row = job_row(job.id)
    assert row.state == JobState.FAILED and row.attempts == 1
    assert (row.error_type, row.error_message) == ("RuntimeError", "boom: out of cheese")
    assert "Traceback" in row.log_tail and "out of cheese" in row.log_tail
    assert count(Score) == 0


def test_storing_error_fails_the_job_and_leaves_no_scores():
    job, _ = queue.submit(config(1))
    bad = result([sample("synthetic-mc", 0), sample("synthetic-mc", 0)])
    Worker("w", pipeline=lambda cfg, events, completed: bad).run(drain=True)
    row = job_row(job.id)
    assert row.state == JobState.FAILED and row.error_type == "IntegrityError"
    assert count(Score) == 0 and count(Sample) == 0


def test_requeued_job_resumes_from_checkpoints_without_duplicates():
    job, _ = queue.submit(config(1))
    queue.claim_next("dead-worker")
    for doc_id in (0, 1):
        queue.record_sample(job.id, 1, sample("synthetic-mc", doc_id))
    expire_leases()
    seen = {}

    def pipeline(cfg, events, completed):
        seen["completed"] = [s.key for s in completed]
        done = {s.key for s in completed}
        for doc_id in range(4):
            if ("synthetic-mc", doc_id) not in done:
                events(SampleDone(sample("synthetic-mc", doc_id)))
            events(Progress((doc_id + 1) / 4, "evaluate", f"{doc_id + 1}/4"))
        return result([sample("synthetic-mc", d) for d in range(4)])

    Worker("w", pipeline=pipeline).run(drain=True)
    assert seen["completed"] == [("synthetic-mc", 0), ("synthetic-mc", 1)]
    row = job_row(job.id)
    assert row.state == JobState.SUCCEEDED and row.attempts == 2 and row.requeues == 1
    assert count(Sample) == 4 and count(Score) == 2 and count(SampleCheckpoint) == 0


def test_sink_stops_pipeline_once_cancel_requested():
    job, _ = queue.submit(config(1))
    calls = []

    def pipeline(cfg, events, completed):
        events(Progress(0.1, "prune", "start"))
        queue.cancel(job.id)  # as if from the UI while the job runs
        for step in range(100):
            calls.append(step)
            events(Progress(0.2, "evaluate", str(step)))  # a stage change writes at once
        return result()

    Worker("w", pipeline=pipeline).run(drain=True)
    assert calls == [0]
    row = job_row(job.id)
    assert row.state == JobState.CANCELLED and count(Score) == 0


# --- worker processes -------------------------------------------------------------------------


def start_worker(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        jobs_command("worker", *args), cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    _, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


def test_two_worker_processes_run_each_job_exactly_once():
    ids = [queue.submit(config(seed, sleep_ms=50))[0].id for seed in range(20)]
    workers = [start_worker("--drain", "--id", f"w{n}") for n in range(2)]
    for proc in workers:
        finish(proc)
    with read_session() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(ids))).all()
    assert len(jobs) == 20
    assert all(j.state == JobState.SUCCEEDED and j.attempts == 1 and j.requeues == 0 for j in jobs), [
        (j.id, j.state, j.attempts) for j in jobs
    ]
    assert {j.worker_id for j in jobs} <= {"w0", "w1"}


def test_killed_worker_job_is_requeued_after_lease_expiry_and_runs_once_more(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_LEASE_SECONDS", "1")
    job, _ = queue.submit(config(1, sleep_ms=2000))
    victim = start_worker("--id", "victim")
    try:
        wait_for(lambda: job_row(job.id).state == JobState.RUNNING)
        time.sleep(0.3)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
    expires = job_row(job.id).lease_expires_at
    wait_for(lambda: utcnow() > expires, timeout=5)
    stderr = finish(start_worker("--drain", "--id", "rescuer"))
    assert "lease of victim expired" in stderr
    row = job_row(job.id)
    assert row.state == JobState.SUCCEEDED and row.attempts == 2 and row.requeues == 1
    assert row.worker_id == "rescuer" and count(Job) == 1


def test_cancel_of_running_job_is_noticed_within_a_heartbeat(short_lease):
    slow, _ = queue.submit(config(1, sleep_ms=8000))  # progress events every 2 s
    quick, _ = queue.submit(config(2, sleep_ms=10))
    worker = start_worker("--drain")
    wait_for(lambda: job_row(slow.id).state == JobState.RUNNING)
    assert queue.cancel(slow.id) == JobState.RUNNING
    asked = time.monotonic()
    wait_for(lambda: job_row(slow.id).state == JobState.CANCELLED, timeout=10)
    # Noticed at a heartbeat (every lease/3 = 0.5 s), stopped at the pipeline's next event (<= 2 s).
    assert time.monotonic() - asked < 3.5
    finish(worker)
    assert job_row(quick.id).state == JobState.SUCCEEDED  # the worker went on to the next job
    assert count(Score) == 0


def test_sigterm_hands_the_running_job_back(short_lease):
    job, _ = queue.submit(config(1, sleep_ms=4000))
    worker = start_worker()
    wait_for(lambda: job_row(job.id).state == JobState.RUNNING)
    worker.send_signal(signal.SIGTERM)
    stderr = finish(worker, timeout=10)
    assert "handed back" in stderr
    row = job_row(job.id)
    assert row.state == JobState.QUEUED and row.attempts == 1 and row.worker_id is None
