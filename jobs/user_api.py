"""The user API: submit, list and cancel jobs as a signed-in user, with a personal API token
(`jobs.user_tokens`; the CLI's `--server`, `jobs.user_client`). Served beside the worker API by
`jobs.api.create_api`, under `USER_API_PREFIX`.

The token is checked before a byte of the body is read (`jobs.api_guard`: 401 missing or unknown,
403 revoked; bodies up to 1 MB), then every request goes through `jobs.access` as the browser's do:
the user's quotas (429), the work limits of non-admins (422), ownership of the jobs they cancel (403),
hidden runs for admins only (404 to others), log tails for those who may manage the job, and the
audit log. Answers are the JSON of `python -m jobs` (`submit --json`, `status --json`,
`cancel --json`), datetimes as `str()` writes them; errors are `{"detail": "one line"}`.

Routes:
* `POST /submit` `{"config": TEXT, "format": "yaml"|"json", "force": false}` -> `{"id", "state", "existing"}`
  (422 invalid config or past a limit, 429 quota);
* `GET /jobs?limit=50&state=queued` -> `{"jobs": [...], "workers": [...]}` (queued jobs that no
  online worker can run carry a `waiting_reason`; workers without their machine's details);
* `GET /jobs/{id}` -> `{"jobs": [detail], "workers": [...]}` (404: no such job, or hidden);
* `POST /jobs/{id}/cancel` -> `{"id", "state"}` (403 not theirs, 409 already finished).
"""
from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from backend.config import MAX_CONFIG_BYTES, ConfigError, parse_config_text
from db.queries import list_jobs
from db.session import read_session
from jobs import access
from jobs.api_guard import parse_body
from jobs.registry import list_workers
from db.states import JobState
from jobs.states import InvalidTransition, JobNotFound
from jobs.waiting import add_waiting_reasons
from jobs.wire import USER_API_PREFIX

__all__ = ["add_user_routes", "USER_API_PREFIX", "MAX_LIST_LIMIT"]

MAX_LIST_LIMIT = 500


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(min_length=1, max_length=MAX_CONFIG_BYTES)
    """The config file's text, as the CLI read it."""
    format: Literal["yaml", "json"] = "yaml"
    force: bool = False


def add_user_routes(app: FastAPI) -> None:
    """Register the user API's routes on `app` (whose `ApiGuard` authenticates them)."""

    @app.post(f"{USER_API_PREFIX}/submit", name="user_submit")
    async def submit(request: Request) -> Response:
        body = await run_in_threadpool(parse_body, SubmitRequest, await request.body())
        return await run_in_threadpool(_submit, _user(request), body)

    @app.get(f"{USER_API_PREFIX}/jobs", name="user_jobs")
    def jobs(request: Request, limit: int = 50, state: str | None = None) -> Response:
        return _jobs(_user(request), limit, state)

    @app.get(f"{USER_API_PREFIX}/jobs/{{job_id}}", name="user_job")
    def job(request: Request, job_id: str) -> Response:
        return _job(_user(request), job_id)

    @app.post(f"{USER_API_PREFIX}/jobs/{{job_id}}/cancel", name="user_cancel")
    def cancel(request: Request, job_id: str) -> Response:
        return _cancel(_user(request), job_id)


def _user(request: Request) -> access.User:
    return access.User.named(request.state.api_user)  # set by ApiGuard from the token


def _json(data: Any) -> Response:
    """As `python -m jobs ... --json` prints it (`default=str`), so the remote CLI prints the same."""
    return Response(json.dumps(data, default=str), media_type="application/json")


def _submit(user: access.User, body: SubmitRequest) -> Response:
    try:  # as `python -m jobs submit` reads a config file
        config = parse_config_text(body.config, body.format)
    except RecursionError:
        raise HTTPException(422, "config is nested too deeply") from None
    except (ValueError, TypeError) as exc:  # ConfigError, or anything else a document can provoke
        raise HTTPException(422, str(exc) if isinstance(exc, ConfigError) else f"invalid config: {exc}") from None
    try:
        job, existing = access.submit_as(user, config, force=body.force)
    except access.QuotaExceeded as exc:
        raise HTTPException(429, str(exc)) from None
    except access.AccessDenied as exc:
        raise HTTPException(403, str(exc)) from None
    except (ConfigError, access.AccessError) as exc:  # task data unavailable here, past a work limit
        raise HTTPException(422, str(exc)) from None
    return _json({"id": job.id, "state": job.state.value, "existing": existing})


def _jobs(user: access.User, limit: int, state: str | None) -> Response:
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise HTTPException(422, f"limit must be between 1 and {MAX_LIST_LIMIT}")
    if state is not None and state not in {s.value for s in JobState}:
        raise HTTPException(422, f"state must be one of {', '.join(s.value for s in JobState)}")
    with read_session() as session:
        jobs = list_jobs(session, limit=limit, state=state, include_hidden=user.is_admin)
        add_waiting_reasons(session, jobs)
        workers = _public_workers(session)
    return _json({"jobs": jobs, "workers": workers})


def _job(user: access.User, job_id: str) -> Response:
    detail = access.visible_job_detail(user, job_id)  # None for no such job and, to non-admins, a hidden one
    if detail is None:
        raise HTTPException(404, f"no job with id {job_id[:24]}")
    with read_session() as session:
        add_waiting_reasons(session, [detail])
        workers = _public_workers(session)
    return _json({"jobs": [detail], "workers": workers})


def _cancel(user: access.User, job_id: str) -> Response:
    if access.visible_job_detail(user, job_id) is None:
        raise HTTPException(404, f"no job with id {job_id[:24]}")
    number = access.job_id_from(job_id)
    try:
        state = access.cancel_as(user, number)
    except JobNotFound as exc:  # deleted meanwhile
        raise HTTPException(404, str(exc)) from None
    except InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from None
    except access.AccessError as exc:
        raise HTTPException(403, str(exc)) from None
    return _json({"id": number, "state": state.value})


def _public_workers(session) -> list[dict[str, Any]]:
    """The worker registry as the Queue tab shows it: without `device` (host name, platform, Python)."""
    return [{key: value for key, value in worker.items() if key != "device"} for worker in list_workers(session)]
