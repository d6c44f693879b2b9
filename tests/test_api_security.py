"""The security review's findings on the worker API: the token is checked before any body is read,
small limits on every route but `complete` and a cap on bodies in flight (4); a transient database
error answers 503 and the worker keeps its result and retries (5); completions are checked against
the job's config and task specs, and the result records which worker produced it (6); a job another
token holds tells nothing about its attempt (17)."""
# ruff: noqa: F811  (test parameters named after the imported fixtures)
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from backend.result import ScoreRecord
from db.schema import Job, Score
from db.session import read_session
from jobs import queue, tokens, wire
from jobs.api import API_PREFIX, create_api
from jobs.remote import HttpQueue
from db.states import JobState
from jobs.worker import Worker
from tests.api_support import (  # noqa: F401  (pytest fixtures used by name)
    TASK,
    _close_engines,
    bearer,
    bodies,
    claim,
    client,
    counts,
    job_row,
    noop_job,
    result,
    snapshot,
)

# --- 4. the token first; small bodies; a cap on bodies in flight ------------------------------


class Upload:
    """An ASGI request whose body arrives in chunks as the app asks for them (counted), or stalls."""

    def __init__(self, path: str, size: int, token: str | None = None, chunk: int = 64 * 1024,
                 stall: asyncio.Event | None = None):
        self.scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
                      "root_path": "", "scheme": "http", "server": ("testserver", 80), "client": ("1.2.3.4", 5),
                      "http_version": "1.1",
                      "headers": [(b"content-length", str(size).encode()), (b"content-type", b"application/json")]
                      + ([(b"authorization", f"Bearer {token}".encode())] if token else [])}
        self.size, self.chunk, self.stall = size, chunk, stall
        self.received = 0
        self.status: int | None = None
        self.body = b""

    async def receive(self):
        if self.stall is not None:
            await self.stall.wait()
        part = min(self.chunk, self.size - self.received)
        self.received += part
        return {"type": "http.request", "body": b" " * part, "more_body": self.received < self.size}

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def run(self, app):
        await app(self.scope, self.receive, self.send)
        return self


def run_async(coroutine):
    """Run `coroutine` on a loop of its own thread: the browser tests' Playwright (sync API, a session
    fixture) leaves an event loop marked running in the main thread, where asyncio.run refuses."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_an_anonymous_body_is_never_read():
    app = create_api(max_body=64 * 2**20)
    for path in ("complete", "sample", "claim"):
        upload = run_async(Upload(f"{API_PREFIX}/{path}", 60 * 2**20).run(app))
        assert upload.status == 401 and upload.received == 0, (path, upload.received)
    tokens.create("gone")
    revoked = tokens.create("revoked")
    tokens.revoke("revoked")
    upload = run_async(Upload(f"{API_PREFIX}/complete", 60 * 2**20, token=revoked).run(app))
    assert upload.status == 403 and upload.received == 0


def test_every_route_but_complete_takes_small_bodies_only(client):
    job_id = noop_job()
    token = tokens.create("w")
    claim(client, token)
    app = create_api(max_body=8 * 2**20, small_body=64 * 1024)
    for route in ("heartbeat", "sample", "fail", "claim"):
        upload = run_async(Upload(f"{API_PREFIX}/{route}", 2 * 2**20, token=token).run(app))
        assert upload.status == 413 and upload.received == 0, route  # refused on the declared length
    body = bodies(job_id, 1)["complete"]
    body["result"]["samples"] = [wire.encode_sample(s) | {"output": "y" * 2000} for s in result(100).samples]
    raw = json.dumps(body).encode()
    assert 64 * 1024 < len(raw) < 8 * 2**20
    from fastapi.testclient import TestClient

    with TestClient(app) as big_client:
        stored = big_client.post(f"{API_PREFIX}/complete", content=raw, headers=bearer(token))
    assert stored.status_code == 200 and stored.json()["stored"] is True


def test_bodies_in_flight_are_capped():
    token = tokens.create("w")
    app = create_api(max_body=2**20, small_body=2**20, max_in_flight=int(1.5 * 2**20))

    async def scenario():
        stall = asyncio.Event()
        slow = asyncio.create_task(Upload(f"{API_PREFIX}/complete", 2**20, token=token, stall=stall).run(app))
        await asyncio.sleep(0.5)  # the slow upload holds its reservation while its body trickles in
        second = await Upload(f"{API_PREFIX}/complete", 2**20, token=token).run(app)
        small = await Upload(f"{API_PREFIX}/stopped", 100, token=token).run(app)
        stall.set()
        first = await slow
        after = await Upload(f"{API_PREFIX}/complete", 2**20, token=token).run(app)
        return first, second, small, after

    first, second, small, after = run_async(scenario())
    assert second.status == 503 and second.received == 0 and b"in flight" in second.body
    assert small.status == 422  # a small body still fits (and is then found invalid)
    assert first.status == 422 and after.status == 422  # read in full once there was room


# --- 5. a transient database error: 503, and the worker keeps its result ----------------------


def test_a_locked_database_answers_503_and_the_worker_retries_its_result(client, monkeypatch):
    job_id = noop_job()
    token = tokens.create("w")
    real_complete = queue.complete
    failures = []

    def locked_twice(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise OperationalError("INSERT INTO scores", {}, Exception("database is locked"))
        return real_complete(*args, **kwargs)

    monkeypatch.setattr(queue, "complete", locked_twice)
    monkeypatch.setattr("jobs.remote.time.sleep", lambda seconds: None)
    claim(client, token)
    response = client.post(f"{API_PREFIX}/complete", json=bodies(job_id, 1)["complete"], headers=bearer(token))
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert job_row(job_id).state == JobState.RUNNING and counts()["scores"] == 0

    queue.release(job_id, 1)
    backend = HttpQueue("http://testserver", token, retry_seconds=1.0, client=client)
    assert Worker("box", pipeline=lambda config, events, done: result(), backend=backend).run(drain=True) == 1
    assert len(failures) == 2
    row = job_row(job_id)
    assert row.state == JobState.SUCCEEDED and counts()["scores"] == 2  # delivered on the third try


# --- 6. completions fit their job; the producing worker is recorded ---------------------------


def test_a_completion_must_fit_the_jobs_tasks_and_metrics(client):
    job_id = noop_job()
    token = tokens.create("w")
    claim(client, token)
    before = snapshot(job_id)
    forged = [
        ScoreRecord("gsm8k", "exact_match", 1.0, None, True, True, "k"),  # a task the job never had
        ScoreRecord(TASK, "leaderboard_column", 1.0, None, True, False, "k"),  # a metric the task lacks
        ScoreRecord(TASK, "acc", 1.0, None, False, True, "k"),  # the wrong direction
        ScoreRecord(TASK, "acc_norm", 1.0, None, True, True, "k"),  # not the primary metric
    ]
    for score in forged:
        body = bodies(job_id, 1)["complete"]
        body["result"]["scores"] = [wire.jsonable(score.__dict__)]
        response = client.post(f"{API_PREFIX}/complete", json=body, headers=bearer(token))
        assert response.status_code == 422 and "does not fit job" in response.json()["detail"], score
    body = bodies(job_id, 1)["complete"]
    body["result"]["samples"][0]["task"] = "gsm8k"
    assert client.post(f"{API_PREFIX}/complete", json=body, headers=bearer(token)).status_code == 422
    sample = bodies(job_id, 1)["sample"]
    sample["sample"]["task"] = "gsm8k"
    assert client.post(f"{API_PREFIX}/sample", json=sample, headers=bearer(token)).status_code == 422
    assert snapshot(job_id) == before
    with read_session() as session:
        assert session.scalar(select(Score.id)) is None


def test_the_result_records_the_worker_that_produced_it(client):
    job_id = noop_job()
    token = tokens.create("gpu-7")
    claim(client, token, worker="rig:42")
    body = bodies(job_id, 1)["complete"]
    body["result"]["manifest"]["produced_by"] = {"worker_id": "someone-else"}  # what a worker says is not kept
    assert client.post(f"{API_PREFIX}/complete", json=body, headers=bearer(token)).status_code == 200
    with read_session() as session:
        manifest = session.get(Job, job_id).manifest_json
    assert manifest["produced_by"] == {"worker_id": "gpu-7/rig:42", "attempt": 1}


# --- 17. another token's job tells nothing about its attempt ----------------------------------


def test_a_job_held_by_another_token_reveals_no_attempt(client):
    job_id = noop_job()
    owner, other = tokens.create("owner"), tokens.create("other")
    claim(client, owner)
    for attempt in (1, 7):
        ref = {"job_id": job_id, "attempt": attempt}
        response = client.post(f"{API_PREFIX}/heartbeat", json=ref, headers=bearer(other))
        assert response.status_code == 409
        detail = response.json()["detail"]
        assert "another worker" in detail and "attempt" not in detail, detail
    huge = client.post(f"{API_PREFIX}/heartbeat", json={"job_id": 2**70, "attempt": 1}, headers=bearer(other))
    assert huge.status_code == 422
