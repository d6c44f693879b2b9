"""The worker API in process (FastAPI's TestClient): tokens, claims, fuzzed bad requests that must
write nothing, idempotent completion and checkpoints (the worker loop over the API, retries and
status: tests/test_api_worker.py)."""
# ruff: noqa: F811  (test parameters named after the imported fixtures)

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.schema import Score, WorkerToken, utcnow
from db.session import read_session
from jobs import queue, tokens, wire
from jobs.api import API_PREFIX
from db.states import JobState
from tests.api_support import (  # noqa: F401  (pytest fixtures used by name)
    LIMIT,
    ROUTES,
    _close_engines,
    bearer,
    bodies,
    claim,
    client,
    counts,
    job_row,
    noop_job,
    result,
    run_cli,
    sample,
    snapshot,
)

# --- tokens and the CLI -----------------------------------------------------------------------


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
                   {**valid["sample"], "sample": {"task": "piqa"}},
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
    assert no_token.status_code == 401  # the token is checked first: an anonymous body is never read
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
    assert late.status_code == 409 and "another worker" in late.json()["detail"]
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
    assert scores == {"acc": 0.5, "acc_norm": None}  # NaN travelled as null and is stored as NULL
    assert row.efficiency_json == {"tokens_per_s": None}


def test_unstorable_result_gets_422_and_writes_nothing(client, monkeypatch):
    job_id = noop_job()
    token = tokens.create("w")
    claim(client, token)
    body = bodies(job_id, 1)["complete"]
    body["result"]["samples"] = [wire.encode_sample(sample(0))] * 2  # the same sample twice
    response = client.post(f"{API_PREFIX}/complete", json=body, headers=bearer(token))
    assert response.status_code == 422 and "reported twice" in response.json()["detail"]

    def refuse(*args):  # a store error that repeating cannot cure
        raise IntegrityError("INSERT", {}, Exception("constraint failed"))

    monkeypatch.setattr(queue, "complete", refuse)
    response = client.post(f"{API_PREFIX}/complete", json=bodies(job_id, 1)["complete"], headers=bearer(token))
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
