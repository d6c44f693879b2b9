"""Remote workers against a live app (`python app.py` in a subprocess): `python -m jobs worker
--server URL` (token in PRUNEBOARD_WORKER_TOKEN) runs jobs over the worker API with no database of its own, a rejected
token ends it at once, and a worker killed with SIGKILL mid-job is resumed by the next one from the
samples it streamed, with every result written exactly once."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from backend.config import validate_config
from bench.kill_trials import SCORES, Trials, serve_app, wait_for
from db.schema import Job, Sample, SampleCheckpoint, Score, WorkerRecord, utcnow
from db.session import dispose_engines, read_session
from jobs import queue, tokens
from db.states import JobState

ROOT = Path(__file__).resolve().parent.parent
LEASE_SECONDS = "1.5"


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


@pytest.fixture
def server(isolated_home, monkeypatch):
    """The app on a free port, sharing this test's database; short leases so dead workers expire fast."""
    monkeypatch.setenv("PRUNEBOARD_LEASE_SECONDS", LEASE_SECONDS)
    with serve_app(isolated_home / "app.log", timeout=120) as url:
        yield url


@pytest.fixture
def worker_env(tmp_path) -> dict[str, str]:
    """A remote machine: its own empty home, so any database access would show up as a file."""
    home = tmp_path / "remote-home"
    home.mkdir()
    env = {**os.environ, "PRUNEBOARD_HOME": str(home)}
    env.pop("PRUNEBOARD_LEASE_SECONDS", None)  # the server's lease rules; the worker learns it on claim
    return env


def remote_worker(url: str, token: str, env: dict[str, str], *extra: str) -> subprocess.Popen:
    """The token travels in the environment, never on the command line (where `ps` shows it)."""
    return subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--server", url, *extra],
                            cwd=ROOT, env={**env, "PRUNEBOARD_WORKER_TOKEN": token}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def noop(seed: int, sleep_ms: int = 50):
    """A noop job of the scripted worker's task (bench/kill_trials.py: the API checks samples' tasks)."""
    return validate_config({"model": "builtin:noop", "model_args": {"sleep_ms": sleep_ms},
                            "tasks": [SCORES[0][0]], "seed": seed})


def job_row(job_id: int) -> Job:
    with read_session() as session:
        return session.get(Job, job_id)


def count(model, *where) -> int:
    with read_session() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def test_remote_worker_runs_noop_jobs_end_to_end(server, worker_env):
    created = subprocess.run([sys.executable, "-m", "jobs", "token", "create", "gpu-box"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    token = created.stdout.split()[-1]
    ids = [queue.submit(noop(seed))[0].id for seed in range(3)]

    proc = remote_worker(server, token, worker_env, "--drain", "--id", "rig-1")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "job_succeeded" in stderr
    for job_id in ids:
        row = job_row(job_id)
        assert row.state == JobState.SUCCEEDED and row.attempts == 1 and row.worker_id == "gpu-box/rig-1"
        assert row.manifest_json["config_hash"] == row.config_hash
    assert list(Path(worker_env["PRUNEBOARD_HOME"]).iterdir()) == []  # it never opened a database

    status = subprocess.run([sys.executable, "-m", "jobs", "status", "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    workers = {w["id"]: w for w in json.loads(status.stdout)["workers"]}
    assert workers["gpu-box/rig-1"]["token"] == "gpu-box" and workers["gpu-box/rig-1"]["status"] == "stopped"
    assert workers["gpu-box/rig-1"]["device"]["hostname"] == socket.gethostname()
    health = httpx.get(f"{server}/healthz").json()
    assert health["ok"] is True and health["db"] == "ok" and health["dialect"] in ("sqlite", "postgresql")


def test_rejected_token_ends_the_remote_worker_at_once(server, worker_env):
    job_id = queue.submit(noop(1))[0].id
    revoked = tokens.create("w")
    tokens.revoke("w")
    for token, status in (("pbw_" + "x" * 43, "401"), (revoked, "403")):
        proc = remote_worker(server, token, worker_env)  # no --drain: only the refusal can end it
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 3
        assert stderr.strip().splitlines()[-1].startswith("error: the server rejected the worker token")
        assert status in stderr
    assert job_row(job_id).state == JobState.QUEUED and job_row(job_id).attempts == 0


TRIALS = 3
N_SAMPLES = 8


def test_killed_remote_worker_is_resumed_from_streamed_samples(server, tmp_path):
    token = tokens.create("gpu")
    # bench/kill_trials.py's scripted worker: the real worker loop, HTTP backend and server, with a
    # pipeline that streams one sample every 0.2 s, so the kill lands at a known point
    trials = Trials("remote", tmp_path, server, token, n_samples=N_SAMPLES, sample_seconds=0.2)
    for trial in range(TRIALS):
        job_id = queue.submit(noop(100 + trial))[0].id
        victim, _, _ = trials.start(f"victim-{trial}", drain=False)
        try:
            # Kill after 2 + trial streamed samples: different points in the job each trial.
            wait_for(lambda j=job_id, n=2 + trial: count(SampleCheckpoint, SampleCheckpoint.job_id == j) >= n, 60,
                     f"{2 + trial} checkpointed samples")
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=10)
        assert job_row(job_id).state == JobState.RUNNING
        expires = job_row(job_id).lease_expires_at
        wait_for(lambda at=expires: utcnow() > at, 10, "the victim's lease to expire")
        with read_session() as session:
            checkpointed = set(session.scalars(select(SampleCheckpoint.doc_id).where(SampleCheckpoint.job_id == job_id)))

        rescuer, rescuer_log, rescuer_err = trials.start(f"rescuer-{trial}", drain=True)
        assert rescuer.wait(timeout=120) == 0, rescuer_err.read_text()[-3000:]

        # resumed from exactly what was streamed, nothing evaluated twice
        assert trials.check_resume(rescuer_log, checkpointed) == []
        row = job_row(job_id)
        assert row.state == JobState.SUCCEEDED and row.attempts == 2 and row.requeues == 1
        assert row.worker_id == f"gpu/rescuer-{trial}"
        with read_session() as session:
            doc_ids = session.scalars(select(Sample.doc_id).where(Sample.job_id == job_id)).all()
        assert sorted(doc_ids) == list(range(N_SAMPLES))
        assert count(Score, Score.job_id == job_id) == len(SCORES)
        assert count(SampleCheckpoint, SampleCheckpoint.job_id == job_id) == 0
    assert count(Job) == TRIALS and count(Score) == TRIALS * len(SCORES)
    assert list((tmp_path / "remote-home").iterdir()) == []  # the workers never opened a database
    with read_session() as session:
        stale = session.scalar(select(WorkerRecord).where(WorkerRecord.id == "gpu/victim-0"))
    assert stale.stopped_at is None  # killed: it never said goodbye (status marks it stale later)


@pytest.mark.slow
def test_remote_worker_runs_a_real_smollm2_job(server, worker_env, shared_data):
    config = validate_config({
        "model": "builtin:smollm2-135m-instruct", "tasks": [{"name": "synthetic-mc", "limit": 10}],
        "pruning": {"method": "dense"}, "seed": 0,
    })
    job_id = queue.submit(config)[0].id
    token = tokens.create("gpu-real")
    proc = remote_worker(server, token, worker_env, "--drain", "--id", "real")
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    row = job_row(job_id)
    assert row.state == JobState.SUCCEEDED, (row.error_type, row.error_message)
    assert row.worker_id == "gpu-real/real" and row.manifest_json["config_hash"] == row.config_hash
    with read_session() as session:
        scores = session.scalars(select(Score).where(Score.job_id == job_id, Score.is_primary.is_(True))).all()
    assert [s.task for s in scores] == ["synthetic-mc"] and 0.0 <= scores[0].value <= 1.0
    assert count(Sample, Sample.job_id == job_id) == 10
    assert list(Path(worker_env["PRUNEBOARD_HOME"]).iterdir()) in ([], [Path(worker_env["PRUNEBOARD_HOME"]) / "cache"])


@pytest.mark.slow
def test_killed_remote_worker_running_smollm2_is_resumed_by_the_next(server, worker_env, shared_data):
    """The real pipeline: streamed samples of the first task survive a SIGKILL during the second,
    and the next worker evaluates only what is missing."""
    config = validate_config({
        "model": "builtin:smollm2-135m-instruct", "pruning": {"method": "dense"}, "seed": 0,
        "tasks": [{"name": "synthetic-mc", "limit": 10},
                  {"name": "synthetic-arith", "limit": 8, "generation": {"max_new_tokens": 32}}],
    })
    job_id = queue.submit(config)[0].id
    token = tokens.create("gpu-real")
    victim = remote_worker(server, token, worker_env, "--id", "victim")
    try:
        wait_for(lambda: count(SampleCheckpoint, SampleCheckpoint.task == "synthetic-mc") == 10, 600,
                 "10 checkpointed samples")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
    assert job_row(job_id).state == JobState.RUNNING  # killed while generating the second task
    with read_session() as session:
        streamed = {c.doc_id: c.output for c in session.scalars(select(SampleCheckpoint))}
    assert set(streamed) >= set(range(10))
    expires = job_row(job_id).lease_expires_at
    wait_for(lambda: utcnow() > expires, 10, "the victim's lease to expire")

    rescuer = remote_worker(server, token, worker_env, "--drain", "--id", "rescuer")
    _, stderr = rescuer.communicate(timeout=900)
    assert rescuer.returncode == 0, stderr[-3000:]
    assert "resuming with" in stderr
    row = job_row(job_id)
    assert row.state == JobState.SUCCEEDED and row.attempts == 2, (row.error_type, row.error_message)
    with read_session() as session:
        final = {(s.task, s.doc_id): s.output for s in session.scalars(select(Sample))}
        metrics = [(s.task, s.metric) for s in session.scalars(select(Score))]
    assert len(final) == 10 + 8 and len(metrics) == len(set(metrics))
    assert all(final[("synthetic-mc", d)] == streamed[d] for d in range(10))  # kept, not evaluated again
    assert count(SampleCheckpoint) == 0
