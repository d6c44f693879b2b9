"""Reliability targets of the queue, sized for CI (the full-size figures come from bench/):
kill -9 of a worker mid-job (local and remote, 5 trials each), 4 workers and the UI writing on one
SQLite file at once, and 200 noop jobs through 4 worker processes with none lost or run twice.

The trials and the contention run are the benchmark scripts' own code (bench/kill_trials.py,
bench/sqlite_contention.py) at a smaller size."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pg_support import server_url
from sqlalchemy import select

from backend.config import validate_config
from bench.kill_trials import Trials, run_kind
from bench.sqlite_contention import contend
from db.schema import Job, Score
from db.session import dispose_engines, read_session
from jobs import queue, result_rows
from db.states import JobState

ROOT = Path(__file__).resolve().parent.parent
KILL_TRIALS = 5


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


@pytest.fixture
def short_lease(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_LEASE_SECONDS", "1.5")
    monkeypatch.delenv("PRUNEBOARD_LOG_FORMAT", raising=False)  # the checks read text-format events


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_killed_workers_leave_every_job_succeeded_exactly_once(kind, short_lease, tmp_path):
    """Kill points cycle over 1..5 of 6 streamed samples; a remote victim talks to a live app."""
    assert run_kind(kind, KILL_TRIALS, tmp_path / kind) == KILL_TRIALS
    with read_session() as session:
        jobs = session.scalars(select(Job)).all()
        scores = session.execute(select(Score.job_id, Score.task, Score.metric)).all()
    assert len(jobs) == KILL_TRIALS and all(job.state == JobState.SUCCEEDED for job in jobs)
    assert all(job.attempts == 2 and job.requeues == 1 for job in jobs)  # each victim died holding its job
    assert len(scores) == len(set(scores)) == 2 * KILL_TRIALS


def test_trial_checks_catch_a_second_completion_an_extra_score_and_a_left_checkpoint(short_lease, tmp_path):
    """The trial checks are not vacuous: a second accepted completion, a score row beyond the result's,
    or a leftover checkpoint fails them."""
    from backend.result import SampleRecord
    from db.schema import SampleCheckpoint
    from db.session import write_session

    trials = Trials("local", tmp_path)
    assert not trials.trial(0, seed=7)  # a clean trial first
    job_id = _last_job_id()
    log = tmp_path / "extra.log"
    log.write_text(f"INFO jobs.queue: job {job_id} succeeded (2 scores, 6 samples)\n")
    assert any("accepted completions" in p for p in trials.check(job_id, [log, *tmp_path.glob("local-*.log")]))
    record = SampleRecord(task="synthetic-mc", doc_id=0, prompt="q", output="a", extracted="a", gold="a",
                          correct=True, prompt_tokens=1, output_tokens=1, metrics={"acc": 1.0})
    with write_session() as session:
        session.add(Score(job_id=job_id, task="synthetic-mc", metric="f1", value=0.5, stderr=None,
                          higher_is_better=True, is_primary=False, comparability_key="k"))
        session.add(SampleCheckpoint(**result_rows.checkpoint_row(job_id, 9, record)))
    problems = " ".join(trials.check(job_id, list(tmp_path.glob("local-*.log"))))
    assert "score rows" in problems and "checkpoint(s) left" in problems


def _last_job_id() -> int:
    with read_session() as session:
        return session.scalar(select(Job.id).order_by(Job.id.desc()).limit(1))


@pytest.mark.skipif(server_url() is not None, reason="SQLite locking; Postgres runs the queue tests")
def test_workers_and_ui_share_sqlite_without_lock_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEBOARD_LEASE_SECONDS", "3")  # a heartbeat every second per running job
    figures = contend(tmp_path / "contention", seconds=15, n_workers=4, ui_threads=3)
    assert figures["locked_errors"] == 0, figures
    assert figures["other_errors"] == 0, figures["error_samples"]
    assert figures["jobs_done"] > 0 and figures["ui_actions"] > 0, figures
    assert figures["worker_exit_codes"] == [0, 0, 0, 0]
    assert "running" not in figures["jobs_by_state"]  # stopped workers handed their jobs back


def test_200_noop_jobs_through_4_workers_none_lost_none_twice(tmp_path):
    n_jobs, n_workers = 200, 4
    ids = {queue.submit(validate_config({"model": "builtin:noop", "tasks": ["synthetic-mc"], "seed": s}))[0].id
           for s in range(n_jobs)}
    env = {k: v for k, v in os.environ.items() if k != "PRUNEBOARD_LOG_FORMAT"}
    logs = [tmp_path / f"w{n}.log" for n in range(n_workers)]
    workers = []
    for n, log in enumerate(logs):
        with log.open("w") as out:
            workers.append(subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--drain", "--id", f"w{n}"],
                                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    for proc in workers:
        assert proc.wait(timeout=600) == 0
    with read_session() as session:
        jobs = session.scalars(select(Job)).all()
    assert {job.id for job in jobs} == ids
    assert all(job.state == JobState.SUCCEEDED and job.attempts == 1 and job.requeues == 0 for job in jobs)
    assert {job.worker_id for job in jobs} <= {f"w{n}" for n in range(n_workers)}
    succeeded = Counter(int(m) for log in logs
                        for m in re.findall(r"job_succeeded job_id=(\d+) ", log.read_text()))
    assert set(succeeded) == ids and set(succeeded.values()) == {1}  # each ran to completion exactly once
    assert all("Traceback" not in log.read_text() for log in logs)
