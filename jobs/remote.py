"""A worker on another machine: the worker loop of `jobs.worker` over the HTTP worker API.

`HttpQueue` is a `QueueBackend` that calls a PruneBoard server (`jobs.api`) with a bearer token and
never opens a database. Network errors and unavailable-server answers (502/503/504, and 500, all
safe to repeat: the server's operations are idempotent per claim; 503 also when the server's
database failed for a moment) are retried with exponential backoff for up to `retry_seconds`, and a
finished run's result for up to `complete_retry_seconds` (the worker holds it, and its heartbeats
keep the claim, meanwhile); 401/403 (token missing, unknown or revoked) raise
`TokenRejected`, which stops the worker at once; 409 means the claim is lost.
"""
from __future__ import annotations

import logging
import os
import platform
import random
import socket
import sys
import time
from typing import Any

import httpx

from backend.result import RunResult, SampleRecord
from jobs import wire
from jobs.logs import event
from jobs.resources import detect_capabilities
from jobs.states import LostClaim
from jobs.worker import Claim, FatalWorkerError

__all__ = ["HttpQueue", "REMOTE_POLL_INTERVAL", "TokenRejected", "ApiError", "ServerUnreachable", "device_info"]

logger = logging.getLogger(__name__)

API_PREFIX = wire.API_PREFIX
REMOTE_POLL_INTERVAL = 2.0
"""Seconds an idle remote worker waits between claims (each is a request to the server)."""
RETRY_STATUS = frozenset({500, 502, 503, 504})
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
COMPLETE_RETRY_SECONDS = 900.0
"""How long a worker keeps offering a finished run's result to a server that cannot store it yet."""


class TokenRejected(FatalWorkerError):
    """The server refused the token (401 missing/unknown, 403 revoked)."""


class ApiError(RuntimeError):
    """The server refused a request for good (e.g. 413 too large, 422 invalid); not retried."""

    def __init__(self, status: int, message: str):
        super().__init__(f"server answered {status}: {message}")
        self.status = status


class ServerUnreachable(ConnectionError):
    """Retries ran out: the server stayed unreachable or unavailable."""


def device_info() -> dict[str, Any]:
    """What this machine is (shown by `jobs status`); torch is asked only if already imported."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


class HttpQueue:
    """The queue operations of a worker, as requests to `server`'s worker API."""

    def __init__(
        self,
        server: str,
        token: str,
        retry_seconds: float = 120.0,
        timeout: float = 60.0,
        client: httpx.Client | None = None,
        complete_retry_seconds: float = COMPLETE_RETRY_SECONDS,
    ):
        """`client`: an httpx client to send through (tests pass FastAPI's TestClient)."""
        self.retry_seconds = retry_seconds
        self.complete_retry_seconds = max(complete_retry_seconds, retry_seconds)
        self.worker_id: str | None = None
        self.capabilities: dict[str, Any] | None = None
        self.client = client or httpx.Client(base_url=server.rstrip("/"), timeout=timeout)
        self.client.headers.update({"Authorization": f"Bearer {token}", "User-Agent": "pruneboard-worker"})

    # -- the QueueBackend operations --

    def claim(self, worker_id: str) -> Claim | None:
        if self.capabilities is None:
            self.capabilities = detect_capabilities(local_dirs=False).model_dump(mode="json")
        body = self._post("claim", {"worker": worker_id, "device": device_info(), "capabilities": self.capabilities})
        self.worker_id = body.get("worker_id")
        job = body.get("job")
        if job is None:
            return None
        return Claim(
            job_id=job["id"], attempt=job["attempt"], config=job["config"],
            completed=[wire.decode_sample(s) for s in job["completed"]],
            lease_seconds=float(job["lease_seconds"]), worker_id=body.get("worker_id"),
        )

    def heartbeat(self, job_id: int, attempt: int, progress: float | None, stage: str | None, text: str | None) -> bool:
        body = self._post("heartbeat", wire.jsonable(
            {"job_id": job_id, "attempt": attempt, "progress": progress, "stage": stage, "text": text}
        ))
        return bool(body["cancel_requested"])

    def record_sample(self, job_id: int, attempt: int, sample: SampleRecord) -> None:
        self._post("sample", {"job_id": job_id, "attempt": attempt, "sample": wire.encode_sample(sample)})

    def complete(self, job_id: int, attempt: int, result: RunResult) -> bool:
        return self._claim_call("complete", job_id, attempt, retry_seconds=self.complete_retry_seconds,
                                result=wire.encode_result(result))

    def fail(self, job_id: int, attempt: int, error_type: str, message: str, log_tail: str | None) -> bool:
        return self._claim_call("fail", job_id, attempt, error_type=error_type, message=message, log_tail=log_tail)

    def mark_cancelled(self, job_id: int, attempt: int) -> bool:
        return self._claim_call("cancelled", job_id, attempt)

    def release(self, job_id: int, attempt: int) -> bool:
        return self._claim_call("release", job_id, attempt)

    def stopped(self, worker_id: str) -> None:
        if self.worker_id is not None:  # the id the server gave this worker at its first claim
            self._post("stopped", {"worker_id": self.worker_id}, retry_seconds=5.0)

    def close(self) -> None:
        self.client.close()

    # -- requests --

    def _claim_call(self, route: str, job_id: int, attempt: int, retry_seconds: float | None = None,
                    **fields: Any) -> bool:
        """A final operation: False (nothing written) when the claim was lost."""
        try:
            self._post(route, {"job_id": job_id, "attempt": attempt, **fields}, retry_seconds=retry_seconds)
        except LostClaim as exc:
            logger.warning("job %d: %s refused: %s", job_id, route, exc)
            return False
        return True

    def _post(self, route: str, payload: dict[str, Any], retry_seconds: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (self.retry_seconds if retry_seconds is None else retry_seconds)
        delay = BACKOFF_FIRST
        while True:
            try:
                response = self.client.post(f"{API_PREFIX}/{route}", json=payload)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRY_STATUS:
                    return self._answer(route, response)
                problem = f"HTTP {response.status_code}"
            if time.monotonic() + delay > deadline:
                raise ServerUnreachable(f"{route}: {problem} (gave up retrying)")
            event(logger, "api_retry", logging.WARNING, route=route, problem=problem, wait_s=round(delay, 2))
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_MAX)

    @staticmethod
    def _answer(route: str, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:500]}
        if response.is_success:
            return body
        detail = body.get("detail") if isinstance(body, dict) else None
        message = str(detail or response.reason_phrase)
        if response.status_code in (401, 403):
            raise TokenRejected(f"the server rejected the worker token ({response.status_code}: {message})")
        if response.status_code in (404, 409):
            raise LostClaim(message)
        raise ApiError(response.status_code, message)
