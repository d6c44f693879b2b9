"""The worker loop over the API (HttpQueue through FastAPI's TestClient), network retries, the wire
format, structured logs and `jobs status`."""
# ruff: noqa: F811  (test parameters named after the imported fixtures)

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest

from backend.events import Progress, SampleDone
from backend.result import RunResult, SampleRecord, ScoreRecord
from db.schema import WorkerRecord, utcnow
from db.session import read_session, write_session
from jobs import queue, tokens, wire
from jobs.api import API_PREFIX
from jobs.logs import JsonFormatter
from jobs.remote import HttpQueue, ServerUnreachable, TokenRejected
from db.states import JobState
from jobs.worker import Worker
from tests.api_support import (  # noqa: F401  (pytest fixtures used by name)
    ROOT,
    TASK,
    _close_engines,
    claim,
    claim_body,
    client,
    counts,
    job_row,
    noop_job,
    result,
    run_cli,
    sample,
)

# --- the worker loop over the API (HttpQueue through the TestClient) --------------------------


def remote_backend(client, token: str) -> HttpQueue:
    return HttpQueue("http://testserver", token, retry_seconds=1.0, client=client)


def test_worker_loop_over_the_api_resumes_from_streamed_samples(client):
    job_id = noop_job()
    token = tokens.create("w")
    first = remote_backend(client, token)
    got = first.claim("dead:1")
    for doc_id in (0, 1):
        first.record_sample(job_id, got.attempt, sample(doc_id))
    queue.requeue_expired(now=utcnow() + timedelta(hours=1))  # that worker died
    seen = {}

    def pipeline(config, events, completed):
        seen["completed"] = sorted(s.key for s in completed)
        done = {s.key for s in completed}
        for doc_id in range(4):
            if (TASK, doc_id) not in done:
                events(SampleDone(sample(doc_id)))
            events(Progress((doc_id + 1) / 4, "evaluate", f"{doc_id + 1}/4"))
        return result(4)

    assert Worker("box:2", pipeline=pipeline, backend=remote_backend(client, token)).run(drain=True) == 1
    assert seen["completed"] == [(TASK, 0), (TASK, 1)]
    row = job_row(job_id)
    assert row.state == JobState.SUCCEEDED and row.attempts == 2 and row.worker_id == "w/box:2"
    assert counts()["samples"] == 4 and counts()["scores"] == 2 and counts()["sample_checkpoints"] == 0
    with read_session() as session:
        stopped = session.get(WorkerRecord, "w/box:2")
    assert stopped.token_name == "w" and stopped.stopped_at is not None and stopped.current_job_id is None


def test_worker_loop_over_the_api_fails_and_cancels_jobs(client):
    token = tokens.create("w")
    failing = noop_job(1)

    def boom(config, events, completed):
        logging.getLogger("test").warning("about to fail")
        raise ValueError("out of cheese")

    Worker("box", pipeline=boom, backend=remote_backend(client, token)).run(drain=True)
    row = job_row(failing)
    assert row.state == JobState.FAILED and (row.error_type, row.error_message) == ("ValueError", "out of cheese")
    assert "about to fail" in row.log_tail and "Traceback" in row.log_tail

    cancelled = noop_job(2)

    def cancel_midway(config, events, completed):
        events(Progress(0.1, "prune", "start"))
        queue.cancel(cancelled)  # as if from the UI
        for step in range(50):
            events(Progress(0.2, f"step-{step}", "next"))  # a stage change writes (and beats) at once
        return result()

    Worker("box", pipeline=cancel_midway, backend=remote_backend(client, token)).run(drain=True)
    assert job_row(cancelled).state == JobState.CANCELLED and counts()["scores"] == 0


def test_stopping_remote_worker_hands_its_job_back_over_the_api(client):
    job_id = noop_job()
    token = tokens.create("w")

    def pipeline(config, events, completed):
        worker.stop()  # as SIGTERM does
        events(Progress(0.5, "evaluate", "half"))
        return result()

    worker = Worker("box", pipeline=pipeline, backend=remote_backend(client, token))
    assert worker.run(drain=True) == 1
    row = job_row(job_id)
    assert row.state == JobState.QUEUED and row.worker_id is None and row.attempts == 1
    assert counts()["scores"] == 0


def test_revoked_token_stops_the_worker_loop_at_once(client):
    job_id = noop_job()
    token = tokens.create("w")
    calls = []

    def pipeline(config, events, completed):
        tokens.revoke("w")
        for doc_id in range(20):
            calls.append(doc_id)
            events(SampleDone(sample(doc_id)))
        return result()

    with pytest.raises(TokenRejected, match="403"):
        Worker("box", pipeline=pipeline, backend=remote_backend(client, token)).run(drain=True)
    assert calls == [0]  # stopped at the first refused call
    row = job_row(job_id)
    assert row.state == JobState.RUNNING and counts()["scores"] == 0  # its lease will expire; requeued
    with pytest.raises(TokenRejected, match="401"):
        Worker("box", backend=remote_backend(client, "pbw_wrong")).run(drain=True)


# --- retries -----------------------------------------------------------------------------------


def test_network_errors_are_retried_with_exponential_backoff(monkeypatch):
    waits = []
    monkeypatch.setattr("jobs.remote.time.sleep", waits.append)
    answers = iter([httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), 503, 502, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        assert request.headers["Authorization"] == "Bearer tok"
        return httpx.Response(answer, json={"worker_id": "t/w", "job": None} if answer == 200 else {"detail": "busy"})

    backend = HttpQueue("http://server", "tok", retry_seconds=600,
                        client=httpx.Client(base_url="http://server", transport=httpx.MockTransport(handler)))
    assert backend.claim("w") is None and backend.worker_id == "t/w"
    assert len(waits) == 4 and all(later > earlier for earlier, later in zip(waits, waits[1:], strict=False))

    backend = HttpQueue("http://127.0.0.1:9", "tok", retry_seconds=3)  # nothing listens there
    with pytest.raises(ServerUnreachable):
        backend.claim("w")


# --- wire format, logs, status -----------------------------------------------------------------


def test_wire_models_mirror_the_records_and_round_trip():
    assert set(wire.SampleModel.model_fields) == wire.field_names(SampleRecord)
    assert set(wire.ScoreModel.model_fields) == wire.field_names(ScoreRecord)
    assert set(wire.ResultModel.model_fields) == wire.field_names(RunResult)
    original = result()
    text = json.dumps(wire.encode_result(original), allow_nan=False)  # strict JSON: NaN -> null
    back = wire.decode_result(json.loads(text))
    assert back.samples[0].key == original.samples[0].key and math.isnan(back.samples[0].metrics["f1"])
    assert back.scores[0] == original.scores[0] and math.isnan(back.scores[1].value)
    assert back.efficiency == {"tokens_per_s": None} and back.stage_seconds == original.stage_seconds


def test_api_requests_are_logged_as_structured_events(client, caplog):
    token = tokens.create("w")
    with caplog.at_level(logging.INFO, logger="pruneboard.api"):
        claim(client, token)
        client.post(f"{API_PREFIX}/claim", json=claim_body())
    requests = [r for r in caplog.records if getattr(r, "pb_fields", {}).get("event") == "api_request"]
    assert [(r.pb_fields["status"], r.pb_fields["worker_token"]) for r in requests] == [(200, "w"), (401, None)]
    line = json.loads(JsonFormatter().format(requests[0]))
    assert line["event"] == "api_request" and line["path"] == f"{API_PREFIX}/claim" and line["level"] == "info"
    assert "api_request method=POST" in requests[0].getMessage()


def test_status_lists_workers_and_marks_stale_ones(capsys, client):
    token = tokens.create("w")
    noop_job()
    claim(client, token, worker="busy:1")
    claim(client, token, worker="idle:1")
    with write_session() as session:
        session.add(WorkerRecord(id="ghost", last_heartbeat_at=utcnow() - timedelta(hours=1), current_job_id=None))
    code, out, _ = run_cli(capsys, "status", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["jobs"]) == 1
    workers = {w["id"]: w for w in data["workers"]}
    assert workers["w/busy:1"]["status"] == "running" and workers["w/busy:1"]["current_job"] == data["jobs"][0]["id"]
    assert workers["w/idle:1"]["status"] == "idle" and workers["w/idle:1"]["token"] == "w"
    assert workers["ghost"]["stale"] is True and workers["ghost"]["status"] == "stale"
    # what the worker sent, and the capabilities its claims were judged by (a CPU worker by default)
    assert workers["w/busy:1"]["device"]["gpu"] == "none"
    assert workers["w/busy:1"]["capabilities"]["device"] == "cpu"
    code, out, _ = run_cli(capsys, "status")
    assert code == 0 and "ghost" in out and "stale" in out and "w/busy:1" in out


def test_local_worker_writes_json_log_lines_and_registers_itself():
    job_id = noop_job()
    env = {**os.environ, "PRUNEBOARD_LOG_FORMAT": "json"}
    proc = subprocess.run([sys.executable, "-m", "jobs", "worker", "--drain", "--id", "local-x"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is one JSON object
    by_event = {line.get("event"): line for line in lines}
    assert {"worker_started", "job_claimed", "job_succeeded", "worker_exiting"} <= set(by_event)
    assert (by_event["job_claimed"]["job_id"], by_event["job_claimed"]["attempt"]) == (job_id, 1)
    assert all({"ts", "level", "logger"} <= set(line) for line in lines)
    with read_session() as session:
        row = session.get(WorkerRecord, "local-x")
    assert row.token_name is None and row.stopped_at is not None and row.current_job_id is None
