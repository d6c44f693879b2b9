"""Shared by the worker API tests (tests/test_api*.py): an in-process API client fixture and valid
records, bodies and DB counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend.config import validate_config
from backend.result import RunResult, SampleRecord, ScoreRecord
from db.schema import (
    Job,
    Sample,
    SampleCheckpoint,
    Score,
    Trace,
    WorkerRecord,
)
from db.session import dispose_engines, read_session
from jobs import queue, wire
from jobs.api import API_PREFIX, create_api
from jobs.cli import main

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 64 * 1024
ROUTES = ("claim", "heartbeat", "sample", "complete", "fail", "cancelled", "release", "stopped")


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


@pytest.fixture
def client():
    with TestClient(create_api(max_body=LIMIT)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


TASK = "piqa"
"""The noop jobs' task: results must name it and its metrics (acc, acc_norm; jobs.completion)."""


def noop_job(seed: int = 0) -> int:
    config = validate_config({"model": "builtin:noop", "tasks": [TASK], "seed": seed})
    return queue.submit(config)[0].id


def sample(doc_id: int, correct: bool = True) -> SampleRecord:
    return SampleRecord(task=TASK, doc_id=doc_id, prompt=f"q{doc_id}", output="a", extracted="a", gold="a",
                        correct=correct, prompt_tokens=3, output_tokens=1,
                        metrics={"acc": float(correct), "f1": math.nan})


def result(n_samples: int = 2) -> RunResult:
    return RunResult(
        scores=[ScoreRecord(TASK, "acc", 0.5, 0.1, True, True, "k"),
                ScoreRecord(TASK, "acc_norm", math.nan, None, True, False, "k")],
        samples=[sample(d) for d in range(n_samples)],
        efficiency={"tokens_per_s": math.inf}, prune_report={"method": "dense"}, manifest={"seed": 0},
        stage_seconds={"evaluate": 0.1},
    )


def claim_body(worker: str = "box:1") -> dict:
    return {"worker": worker, "device": {"gpu": "none"}}


def claim(client, token: str, worker: str = "box:1") -> dict:
    response = client.post(f"{API_PREFIX}/claim", json=claim_body(worker), headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


def counts() -> dict[str, int]:
    with read_session() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Score, Sample, SampleCheckpoint, Trace, WorkerRecord)}


def job_row(job_id: int) -> Job:
    with read_session() as session:
        return session.get(Job, job_id)


def snapshot(job_id: int) -> tuple:
    row = job_row(job_id)
    return (row.state, row.attempts, row.worker_id, row.progress, row.stage, row.error_type, row.lease_expires_at,
            counts())


def bodies(job_id: int, attempt: int) -> dict[str, dict]:
    """A valid body for each route."""
    ref = {"job_id": job_id, "attempt": attempt}
    return {
        "claim": claim_body(),
        "heartbeat": {**ref, "progress": 0.5, "stage": "evaluate", "text": "half"},
        "sample": {**ref, "sample": wire.encode_sample(sample(7))},
        "complete": {**ref, "result": wire.encode_result(result())},
        "fail": {**ref, "error_type": "RuntimeError", "message": "boom", "log_tail": "x"},
        "cancelled": ref,
        "release": ref,
        "stopped": {"worker_id": "a/box:1"},
    }


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err
