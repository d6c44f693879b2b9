"""The worker API: remote workers claim jobs, beat, stream samples and deliver results over HTTP.

Mounted beside the Gradio UI in the app's process (`app.create_app`). Every route under
`API_PREFIX` needs `Authorization: Bearer <token>` (`python -m jobs token create NAME`): a missing
or unknown token gets 401, a revoked one 403, both before a byte of the body is read. A worker acts
on a *claim*, the job id plus the attempt its claim returned; the claim belongs to the token that
made it. A call about a job another token holds gets 409 and learns nothing of its attempt; calls
for a claim that is lost (lease expired, job requeued or finished) get 409; neither writes anything.
A completion or failure repeated for the same claim after it was stored answers 200 with
`"duplicate": true` (never written twice). Bodies: at most `max_body_bytes` for `complete` and
`SMALL_BODY_BYTES` for every other route (413, checked on the declared length and on the bytes
received, before parsing), and at most `max_in_flight_bytes` of bodies being received or handled
at once (503, retried by workers); validated by the Pydantic models below (422 with the first
problems spelled out), and a completion against its job's config and task specs
(`jobs.completion`). A transient database error (locked, disk full, connection lost) answers 503,
so the worker keeps its result and retries. `GET /healthz` needs no token.

Routes (POST, JSON): claim, heartbeat, sample, complete, fail, cancelled, release, stopped. The user
API (`jobs.user_api`, a user's API token) is served by the same app.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, text

from common import settings
from backend.config import validate_config
from db.schema import Job, WorkerRecord
from db.session import read_session
from jobs import queue, registry, wire
from jobs.api_guard import (
    SMALL_BODY_BYTES,
    TRANSIENT_DB_ERRORS,
    TRANSIENT_RETRY_AFTER_S,
    ApiGuard,
    parse_body,
    transient,
)
from jobs.completion import ResultMismatch, check_result
from jobs.logs import event
from jobs.resources import Capabilities
from db.states import JobState
from jobs.states import LostClaim
from jobs.user_api import add_user_routes

__all__ = ["create_api", "API_PREFIX", "max_body_bytes", "max_in_flight_bytes", "SMALL_BODY_BYTES"]

logger = logging.getLogger("pruneboard.api")

API_PREFIX = wire.API_PREFIX
DEFAULT_MAX_BODY_MB = 64.0
DEFAULT_MAX_IN_FLIGHT_MB = 256.0


def max_body_bytes() -> int:
    """PRUNEBOARD_API_MAX_BODY_MB: the largest `complete` body accepted (default 64 MB)."""
    return _megabytes("PRUNEBOARD_API_MAX_BODY_MB", DEFAULT_MAX_BODY_MB)


def max_in_flight_bytes() -> int:
    """PRUNEBOARD_API_MAX_IN_FLIGHT_MB: request bodies held at once, all routes together (default 256 MB;
    never less than one largest body)."""
    return _megabytes("PRUNEBOARD_API_MAX_IN_FLIGHT_MB", DEFAULT_MAX_IN_FLIGHT_MB)


def _megabytes(name: str, default: float) -> int:
    value = os.environ.get(name)
    return int(float(value if value not in (None, "") else default) * 1024 * 1024)


# --- request bodies ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClaimRequest(_Strict):
    worker: str = Field(min_length=1, max_length=90, pattern=r"^[A-Za-z0-9_.:@-]+$")
    """This process's name on its machine (e.g. host:pid); the server puts the token's name in front."""
    device: dict[str, Any] = Field(default_factory=dict)
    capabilities: Capabilities = Field(default_factory=Capabilities)
    """What the worker can run (jobs.resources); the claim takes only such a job."""


_ID_MAX = 2**31 - 1  # INTEGER columns (32-bit on Postgres)


class ClaimRef(_Strict):
    job_id: int = Field(ge=1, le=_ID_MAX)
    attempt: int = Field(ge=1, le=_ID_MAX)


class HeartbeatRequest(ClaimRef):
    progress: float | None = None
    stage: str | None = Field(None, max_length=200)
    text: str | None = Field(None, max_length=queue.MAX_TEXT)


class SampleRequest(ClaimRef):
    sample: wire.SampleModel


class CompleteRequest(ClaimRef):
    result: wire.ResultModel


class FailRequest(ClaimRef):
    error_type: str = Field(min_length=1, max_length=200)
    message: str = Field(max_length=100_000)
    log_tail: str | None = None


class StoppedRequest(_Strict):
    worker_id: str = Field(min_length=1, max_length=200)


# --- the app ----------------------------------------------------------------------------------


def create_api(max_body: int | None = None, small_body: int = SMALL_BODY_BYTES,
               max_in_flight: int | None = None) -> FastAPI:
    """The FastAPI app with the worker API and /healthz (the UI is mounted onto it by app.py)."""
    app = FastAPI(title="PruneBoard worker API", docs_url=None, redoc_url=None, openapi_url=None)
    max_body = max_body_bytes() if max_body is None else max_body
    app.add_middleware(ApiGuard, max_body=max_body, small_body=min(small_body, max_body),
                       max_in_flight=max(max_in_flight_bytes() if max_in_flight is None else max_in_flight, max_body))
    for error in TRANSIENT_DB_ERRORS:
        app.add_exception_handler(error, _unavailable)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with read_session() as session:
                session.execute(text("SELECT 1"))
                dialect = session.get_bind().dialect.name
        except Exception as exc:  # the point of a health check: say so instead of failing
            return JSONResponse({"ok": False, "db": f"error: {type(exc).__name__}"}, status_code=503)
        return JSONResponse({"ok": True, "db": "ok", "dialect": dialect})

    for name, model, action in (
        ("claim", ClaimRequest, _claim),
        ("heartbeat", HeartbeatRequest, _heartbeat),
        ("sample", SampleRequest, _sample),
        ("complete", CompleteRequest, _complete),
        ("fail", FailRequest, _fail),
        ("cancelled", ClaimRef, _cancelled),
        ("release", ClaimRef, _release),
        ("stopped", StoppedRequest, _stopped),
    ):
        app.post(f"{API_PREFIX}/{name}", name=f"worker_{name}")(_endpoint(model, action))
    add_user_routes(app)
    return app


def _endpoint(model: type[BaseModel], action):
    async def endpoint(request: Request) -> Any:
        token = request.state.worker_token  # authenticated by ApiGuard before the body was read
        body = await run_in_threadpool(parse_body, model, await request.body())
        return await run_in_threadpool(action, token, body)

    return endpoint


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("%s %s: database unavailable: %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse({"detail": f"database temporarily unavailable ({type(exc).__name__}); retry"},
                        status_code=503, headers={"Retry-After": str(TRANSIENT_RETRY_AFTER_S)})


# --- claims -----------------------------------------------------------------------------------


def _claim(token: str, body: ClaimRequest) -> dict[str, Any]:
    worker_id = f"{token}/{body.worker}"
    # a remote worker never sees the server's directories, whatever it says
    capabilities = body.capabilities.model_copy(update={"local_dirs": False})
    # recorded before the claim (the record owns it), with the capabilities claims are judged by
    device = {**body.device, "capabilities": capabilities.model_dump(mode="json")}
    registry.seen(worker_id, token_name=token, device=device)
    job = queue.claim_next(worker_id, capabilities)
    _note(worker_id, token, current_job_id=job.id if job else None)
    if job is None:
        return {"worker_id": worker_id, "job": None}
    completed = queue.completed_samples(job.id) if job.attempts > 1 else []
    event(logger, "api_claim", worker=worker_id, job_id=job.id, attempt=job.attempts, resumed_samples=len(completed))
    return {
        "worker_id": worker_id,
        "job": {
            "id": job.id,
            "attempt": job.attempts,
            "config": json.loads(job.config_json),
            "completed": [wire.encode_sample(s) for s in completed],
            "lease_seconds": settings.lease_seconds(),
        },
    }


def _owned(token: str, ref: ClaimRef, finished: JobState | None = None) -> tuple[str, bool]:
    """Check that `ref` is this token's claim. Returns (worker id, already): `already` when the job
    reached `finished` under this very claim (a repeated final call). Raises 404/409 otherwise; a
    job another token holds is refused before anything about its attempt is compared or told."""
    with read_session() as session:
        row = session.execute(
            select(Job.state, Job.attempts, Job.worker_id, WorkerRecord.token_name)
            .outerjoin(WorkerRecord, WorkerRecord.id == Job.worker_id)
            .where(Job.id == ref.job_id)
        ).first()
    if row is None:
        raise HTTPException(404, f"no job with id {ref.job_id}")
    if row.worker_id is not None and row.token_name != token:
        raise HTTPException(409, f"job {ref.job_id} is another worker's claim")
    if row.attempts != ref.attempt:
        raise HTTPException(409, f"claim lost: job {ref.job_id} is at attempt {row.attempts}, not {ref.attempt}")
    if row.worker_id is None:
        raise HTTPException(409, f"claim lost: job {ref.job_id} is {row.state.value} (lease expired or released)")
    if finished is not None and row.state == finished:
        return row.worker_id, True
    if row.state != JobState.RUNNING:
        raise HTTPException(409, f"claim lost: job {ref.job_id} is {row.state.value}")
    return row.worker_id, False


def _job_config(job_id: int):
    with read_session() as session:
        return validate_config(json.loads(session.scalar(select(Job.config_json).where(Job.id == job_id))))


def _note(worker_id: str, token: str, **change: Any) -> None:
    """Update the worker registry after the queue changed. It only informs `jobs status`, so a
    failure here must not turn a committed claim or result into an error the worker would retry."""
    try:
        registry.seen(worker_id, token_name=token, **change)
    except Exception:
        logger.warning("worker %s: registry not updated", worker_id, exc_info=True)


def _lost(exc: LostClaim) -> HTTPException:
    return HTTPException(409, f"claim lost: {exc}")


def _heartbeat(token: str, body: HeartbeatRequest) -> dict[str, Any]:
    worker_id, _ = _owned(token, body)
    try:
        cancel = queue.heartbeat(body.job_id, body.attempt, body.progress, body.stage, body.text)
    except LostClaim as exc:
        raise _lost(exc) from None
    _note(worker_id, token)
    return {"cancel_requested": cancel}


def _sample(token: str, body: SampleRequest) -> dict[str, Any]:
    _owned(token, body)
    if body.sample.task not in {task.name for task in _job_config(body.job_id).tasks}:
        raise HTTPException(422, f"sample of task {body.sample.task!r}, which job {body.job_id} does not evaluate")
    try:
        queue.record_sample(body.job_id, body.attempt, wire.decode_sample(body.sample))
    except LostClaim as exc:
        raise _lost(exc) from None
    return {"ok": True}


def _complete(token: str, body: CompleteRequest) -> dict[str, Any]:
    worker_id, already = _owned(token, body, finished=JobState.SUCCEEDED)
    if already:
        return {"stored": False, "duplicate": True, "state": JobState.SUCCEEDED.value}
    result = wire.decode_result(body.result)
    try:
        check_result(_job_config(body.job_id), result)
    except ResultMismatch as exc:
        raise HTTPException(422, f"result does not fit job {body.job_id}: {exc}"[:2000]) from None
    try:
        stored = queue.complete(body.job_id, body.attempt, result)
    except Exception as exc:
        if transient(exc):
            raise  # 503 (_unavailable): the worker keeps its result and sends it again
        logger.warning("job %d: result of attempt %d not storable: %s", body.job_id, body.attempt, exc)
        raise HTTPException(422, f"storing the result failed: {type(exc).__name__}: {exc}"[:2000]) from None
    if not stored:
        _, already = _owned(token, body, finished=JobState.SUCCEEDED)  # 409 if lost meanwhile
        if not already:  # still running under this claim: a cancel was requested
            raise HTTPException(409, f"job {body.job_id}: cancel requested; the result was not stored")
        return {"stored": False, "duplicate": True, "state": JobState.SUCCEEDED.value}
    _note(worker_id, token, current_job_id=None)
    event(logger, "api_complete", worker=worker_id, job_id=body.job_id, attempt=body.attempt,
          scores=len(result.scores), samples=len(result.samples))
    return {"stored": True, "duplicate": False, "state": JobState.SUCCEEDED.value}


def _finish(token: str, ref: ClaimRef, state: JobState, write) -> dict[str, Any]:
    worker_id, already = _owned(token, ref, finished=state)
    if already:
        return {"stored": False, "duplicate": True, "state": state.value}
    if not write():
        _, already = _owned(token, ref, finished=state)
        if not already:
            raise HTTPException(409, f"claim lost: job {ref.job_id} changed meanwhile")
        return {"stored": False, "duplicate": True, "state": state.value}
    _note(worker_id, token, current_job_id=None)
    event(logger, f"api_{state.value}", worker=worker_id, job_id=ref.job_id, attempt=ref.attempt)
    return {"stored": True, "duplicate": False, "state": state.value}


def _fail(token: str, body: FailRequest) -> dict[str, Any]:
    return _finish(token, body, JobState.FAILED,
                   lambda: queue.fail(body.job_id, body.attempt, body.error_type, body.message, body.log_tail))


def _cancelled(token: str, body: ClaimRef) -> dict[str, Any]:
    return _finish(token, body, JobState.CANCELLED, lambda: queue.mark_cancelled(body.job_id, body.attempt))


def _release(token: str, body: ClaimRef) -> dict[str, Any]:
    worker_id, _ = _owned(token, body)
    if not queue.release(body.job_id, body.attempt):
        raise HTTPException(409, f"claim lost: job {body.job_id} changed meanwhile")
    _note(worker_id, token, current_job_id=None)
    event(logger, "api_release", worker=worker_id, job_id=body.job_id, attempt=body.attempt)
    return {"stored": True}


def _stopped(token: str, body: StoppedRequest) -> dict[str, Any]:
    if registry.token_of(body.worker_id) != token:
        raise HTTPException(409, f"worker {body.worker_id!r} is not a worker of this token")
    registry.stopped(body.worker_id)
    return {"ok": True}
