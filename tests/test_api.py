"""The worker API in process (FastAPI's TestClient): tokens, claims, fuzzed bad requests that must
write nothing, idempotent completion, the remote backend of the worker loop, retries, status."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend.config import validate_config
from backend.events import Progress, SampleDone
from backend.result import RunResult, SampleRecord, ScoreRecord
from db.schema import Job, Sample, SampleCheckpoint, Score, Trace, WorkerRecord, WorkerToken, utcnow
from db.session import dispose_engines, read_session, write_session
from jobs import queue, tokens, wire
from jobs.api import API_PREFIX, create_api
from jobs.cli import main
from jobs.logs import JsonFormatter
from jobs.remote import HttpQueue, ServerUnreachable, TokenRejected
from jobs.states import JobState
from jobs.worker import Worker

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


def noop_job(seed: int = 0) -> int:
    config = validate_config({"model": "builtin:noop", "tasks": ["synthetic-mc"], "seed": seed})
    return queue.submit(config)[0].id


def sample(doc_id: int, correct: bool = True) -> SampleRecord:
    return SampleRecord(task="synthetic-mc", doc_id=doc_id, prompt=f"q{doc_id}", output="a", extracted="a", gold="a",
                        correct=correct, prompt_tokens=3, output_tokens=1,
                        metrics={"acc": float(correct), "f1": math.nan})


def result(n_samples: int = 2) -> RunResult:
    return RunResult(
        scores=[ScoreRecord("synthetic-mc", "acc", 0.5, 0.1, True, True, "k"),
                ScoreRecord("synthetic-mc", "f1", math.nan, None, True, False, "k")],
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


# --- tokens and the CLI -----------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_cli_creates_prints_once_lists_and_revokes(capsys):
    code, out, _ = run_cli(capsys, "token", "create", "gpu-a")
    token = out.split()[-1]
    assert code == 0 and token.startswith("pbw_") and len(token) > 40
    with read_session() as session:
        row = session.scalar(select(WorkerToken))
    assert row.name == "gpu-a" and row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert tokens.authenticate(token) == "gpu-a"

    code, out, _ = run_cli(capsys, "token", "list")
    assert code == 0 and "gpu-a" in out and "active" in out and token not in out
    code, out, _ = run_cli(capsys, "token", "list", "--json")
    assert json.loads(out)["tokens"][0]["name"] == "gpu-a" and token not in out

    code, _, err = run_cli(capsys, "token", "create", "gpu-a")
    assert code == 1 and "exists" in err
    code, _, err = run_cli(capsys, "token", "create", "bad name!")
    assert code == 2 and "invalid token name" in err

    code, out, _ = run_cli(capsys, "token", "revoke", "gpu-a")
    assert code == 0 and "revoked" in out
    with pytest.raises(tokens.TokenRevoked):
        tokens.authenticate(token)
    assert "already revoked" in run_cli(capsys, "token", "revoke", "gpu-a")[1]
    code, _, err = run_cli(capsys, "token", "revoke", "nobody")
    assert code == 2 and "no token named" in err

    code, out, _ = run_cli(capsys, "token", "create", "gpu-a")  # a revoked name gets a new token
    assert code == 0 and out.split()[-1] != token and tokens.authenticate(out.split()[-1]) == "gpu-a"
    with pytest.raises(tokens.TokenInvalid):
        tokens.authenticate(token)


# --- auth, validation and size fuzz: 4xx with a message, nothing written ----------------------


def test_healthz_needs_no_token(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["ok"] is True and response.json()["db"] == "ok"


def test_missing_invalid_and_revoked_tokens_are_refused_and_write_nothing(client):
    job_id = noop_job()
    good = tokens.create("good")
    revoked = tokens.create("gone")
    tokens.revoke("gone")
    assert claim(client, good)["job"]["id"] == job_id
    before = snapshot(job_id)
    headers_and_codes = [
        ({}, 401), ({"Authorization": "Basic Zm9vOmJhcg=="}, 401), ({"Authorization": "Bearer"}, 401),
        (bearer("pbw_not-a-token"), 401), (bearer(good + "x"), 401), (bearer(revoked), 403),
    ]
    for route, body in bodies(job_id, 1).items():
        for headers, code in headers_and_codes:
            response = client.post(f"{API_PREFIX}/{route}", json=body, headers=headers)
            assert response.status_code == code, (route, headers, response.text)
            assert response.json()["detail"], response.text
    assert snapshot(job_id) == before


MALFORMED = [
    b"", b"   ", b"{", b"[]", b"null", b'"text"', b"\xff\xfe", b'{"job_id": "one", "attempt": 1}',
    b'{"job_id": 1}', b'{"job_id": 1, "attempt": 0}', b'{"job_id": -5, "attempt": 1}',
    b'{"job_id": 1, "attempt": 1, "unknown": true}', b'{"job_id": 1e400, "attempt": 1}',
    b'{"job_id": 99999999999999999999999, "attempt": 1}',
]


def test_malformed_bodies_get_422_with_a_message_and_write_nothing(client):
    job_id = noop_job()
    token = tokens.create("good")
    claim(client, token)
    before = snapshot(job_id)
    valid = bodies(job_id, 1)
    specific = {
        "claim": [{"worker": ""}, {"worker": "a/b"}, {"worker": "x" * 500}, {"worker": "w", "device": []}],
        "heartbeat": [{**valid["heartbeat"], "stage": "s" * 500}, {**valid["heartbeat"], "progress": "fast"}],
        "sample": [{**valid["sample"], "sample": {**valid["sample"]["sample"], "doc_id": -1}},
                   {**valid["sample"], "sample": {"task": "synthetic-mc"}},
                   {**valid["sample"], "sample": {**valid["sample"]["sample"], "task": ""}}],
        "complete": [{**valid["complete"], "result": {"scores": "all", "samples": []}},
                     {**valid["complete"], "result": {**valid["complete"]["result"],
                                                      "scores": [{"task": "t", "metric": "m"}]}},
                     {**valid["complete"], "result": {**valid["complete"]["result"], "extra": 1}}],
        "fail": [{**valid["fail"], "error_type": ""}, {**valid["fail"], "message": None}],
        "stopped": [{"worker_id": ""}, {}],
    }
    for route in ROUTES:
        cases = [*MALFORMED, *(json.dumps(b).encode() for b in specific.get(route, []))]
        for raw in cases:
            response = client.post(f"{API_PREFIX}/{route}", content=raw, headers=bearer(token))
            assert response.status_code == 422, (route, raw, response.text)
            assert response.json()["detail"].startswith(("invalid request body", "empty request body")), response.text
    assert snapshot(job_id) == before


def test_oversized_bodies_get_413_before_parsing_and_write_nothing(client):
    job_id = noop_job()
    token = tokens.create("good")
    claim(client, token)
    before = snapshot(job_id)
    huge = bodies(job_id, 1)["complete"]
    huge["result"]["samples"] = [wire.encode_sample(sample(d)) | {"output": "y" * 1000} for d in range(100)]
    raw = json.dumps(huge).encode()
    assert len(raw) > LIMIT

    declared = client.post(f"{API_PREFIX}/complete", content=raw, headers=bearer(token))
    assert declared.status_code == 413 and "too large" in declared.json()["detail"]

    def chunks():  # no Content-Length: the size is counted as the body streams in
        for start in range(0, len(raw), 8192):
            yield raw[start:start + 8192]

    streamed = client.post(f"{API_PREFIX}/complete", content=chunks(), headers=bearer(token))
    assert streamed.status_code == 413 and "too large" in streamed.json()["detail"]
    lying = client.post(f"{API_PREFIX}/complete", content=b"{}",
                        headers={**bearer(token), "Content-Length": "not-a-number"})
    assert lying.status_code == 400 and "Content-Length" in lying.json()["detail"]
    no_token = client.post(f"{API_PREFIX}/complete", content=raw)
    assert no_token.status_code == 413
    assert snapshot(job_id) == before


def test_claim_calls_from_another_token_get_409_and_write_nothing(client):
    job_id = noop_job()
    owner, other = tokens.create("owner"), tokens.create("other")
    claim(client, owner)
    claim(client, other, worker="box:2")  # a registered worker of the other token, idle
    before = snapshot(job_id)
    for route, body in bodies(job_id, 1).items():
        if route == "claim":
            continue
        if route == "stopped":
            body = {"worker_id": "owner/box:1"}
        response = client.post(f"{API_PREFIX}/{route}", json=body, headers=bearer(other))
        assert response.status_code == 409, (route, response.text)
        assert "another worker" in response.json()["detail"] or "not a worker of this token" in response.json()["detail"]
    assert snapshot(job_id) == before
    missing = client.post(f"{API_PREFIX}/complete", json=bodies(job_id + 100, 1)["complete"], headers=bearer(owner))
    assert missing.status_code == 404


def test_late_completion_after_lease_expiry_gets_409_and_writes_nothing(client):
    job_id = noop_job()
    token = tokens.create("slow")
    claim(client, token)
    queue.requeue_expired(now=utcnow() + timedelta(hours=1))  # the worker missed its heartbeats
    before = snapshot(job_id)
    for route in ("complete", "fail", "heartbeat", "sample", "cancelled", "release"):
        response = client.post(f"{API_PREFIX}/{route}", json=bodies(job_id, 1)[route], headers=bearer(token))
        assert response.status_code == 409 and "claim lost" in response.json()["detail"], (route, response.text)
    assert snapshot(job_id) == before

    # Another worker now holds attempt 2; the first worker's attempt 1 stays refused.
    rescuer = tokens.create("rescuer")
    assert claim(client, rescuer)["job"]["attempt"] == 2
    late = client.post(f"{API_PREFIX}/complete", json=bodies(job_id, 1)["complete"], headers=bearer(token))
    assert late.status_code == 409 and "attempt 2" in late.json()["detail"]
    assert counts()["scores"] == 0 and job_row(job_id).state == JobState.RUNNING


def test_completion_is_idempotent_and_written_once(client):
    job_id = noop_job()
    token = tokens.create("w")
    claim(client, token)
    body = bodies(job_id, 1)["complete"]
    first = client.post(f"{API_PREFIX}/complete", json=body, headers=bearer(token))
    assert first.status_code == 200 and first.json() == {"stored": True, "duplicate": False, "state": "succeeded"}
    written = counts()
    assert (written["scores"], written["samples"], written["traces"]) == (2, 2, 2)
    again = client.post(f"{API_PREFIX}/complete", json=body, headers=bearer(token))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert counts() == written
    # A final call of another kind for the finished claim changes nothing either.
    assert client.post(f"{API_PREFIX}/fail", json=bodies(job_id, 1)["fail"], headers=bearer(token)).status_code == 409
    row = job_row(job_id)
    assert row.state == JobState.SUCCEEDED and row.error_type is None
    with read_session() as session:
        scores = {s.metric: s.value for s in session.scalars(select(Score))}
    assert scores == {"acc": 0.5, "f1": None}  # NaN travelled as null and is stored as NULL
    assert row.efficiency_json == {"tokens_per_s": None}


def test_unstorable_result_gets_422_and_writes_nothing(client):
    job_id = noop_job()
    token = tokens.create("w")
    claim(client, token)
    body = bodies(job_id, 1)["complete"]
    body["result"]["samples"] = [wire.encode_sample(sample(0))] * 2  # the same sample twice
    response = client.post(f"{API_PREFIX}/complete", json=body, headers=bearer(token))
    assert response.status_code == 422 and "storing the result failed" in response.json()["detail"]
    assert counts()["scores"] == 0 and job_row(job_id).state == JobState.RUNNING


def test_heartbeat_reports_cancel_and_samples_are_checkpointed(client):
    job_id = noop_job()
    token = tokens.create("w")
    claim(client, token)
    body = bodies(job_id, 1)
    beat = client.post(f"{API_PREFIX}/heartbeat", json=body["heartbeat"], headers=bearer(token))
    assert beat.json() == {"cancel_requested": False}
    assert (job_row(job_id).progress, job_row(job_id).stage) == (0.5, "evaluate")
    for _ in range(2):  # streaming the same sample twice keeps one checkpoint
        assert client.post(f"{API_PREFIX}/sample", json=body["sample"], headers=bearer(token)).status_code == 200
    assert counts()["sample_checkpoints"] == 1
    queue.cancel(job_id)
    beat = client.post(f"{API_PREFIX}/heartbeat", json=body["heartbeat"], headers=bearer(token))
    assert beat.json() == {"cancel_requested": True}
    refused = client.post(f"{API_PREFIX}/complete", json=body["complete"], headers=bearer(token))
    assert refused.status_code == 409 and "cancel requested" in refused.json()["detail"]
    assert client.post(f"{API_PREFIX}/cancelled", json=body["cancelled"], headers=bearer(token)).status_code == 200
    assert job_row(job_id).state == JobState.CANCELLED and counts()["scores"] == 0


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
            if ("synthetic-mc", doc_id) not in done:
                events(SampleDone(sample(doc_id)))
            events(Progress((doc_id + 1) / 4, "evaluate", f"{doc_id + 1}/4"))
        return result(4)

    assert Worker("box:2", pipeline=pipeline, backend=remote_backend(client, token)).run(drain=True) == 1
    assert seen["completed"] == [("synthetic-mc", 0), ("synthetic-mc", 1)]
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
    assert workers["w/busy:1"]["device"] == {"gpu": "none"}
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
