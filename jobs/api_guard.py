"""The API's outer layer (`jobs.api` mounts it as middleware): for the worker API's routes, the user
API's (`jobs.user_api`) and /healthz it checks the bearer token from the headers before a byte of the
body is read (a worker token on worker routes, a user's API token on user routes; 401 missing or
unknown, 403 revoked), refuses a body over its route's limit (413: `max_body` for `complete`,
`SMALL_BODY_BYTES` for the others) and a body past the in-flight budget (503, which workers retry),
reads the body once the request is allowed, and logs each request as an event. Transient database
errors met on the way answer 503 as well. `parse_body` validates a body read this way.
"""
from __future__ import annotations

import logging
import time

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from jobs import tokens, user_tokens, wire
from jobs.logs import event

__all__ = ["ApiGuard", "authenticate", "parse_body", "transient", "TRANSIENT_DB_ERRORS", "TRANSIENT_RETRY_AFTER_S",
           "SMALL_BODY_BYTES"]

logger = logging.getLogger("pruneboard.api")

API_PREFIX = wire.API_PREFIX
USER_API_PREFIX = wire.USER_API_PREFIX
SMALL_BODY_BYTES = 1024 * 1024
"""The largest body of every route but `complete` (a sample, a heartbeat, a failure's log tail)."""
TRANSIENT_RETRY_AFTER_S = 5
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError, PoolTimeout, DisconnectionError)
"""Database errors a repeated call may not meet again (locked, disk full, connection lost): 503."""
_COMPLETE = f"{API_PREFIX}/complete"


def authenticate(header: str | None, lookup=tokens.authenticate) -> str:
    """Who holds the token the Authorization header carries (`lookup`: the worker's name by default,
    `user_tokens.authenticate` for a user's name); 401 or 403 otherwise."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
    try:
        return lookup(value.strip())
    except tokens.TokenInvalid:
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"}) from None
    except tokens.TokenRevoked as exc:
        raise HTTPException(403, str(exc)) from None


def parse_body(model: type[BaseModel], raw: bytes) -> BaseModel:
    """A request body validated by `model`; 422 naming the first problems otherwise."""
    if not raw.strip():
        raise HTTPException(422, "empty request body: a JSON object is expected")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False)[:5]:
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{loc}: {err['msg']}" if loc else err["msg"])
        raise HTTPException(422, "invalid request body: " + "; ".join(problems)) from None


def transient(exc: BaseException) -> bool:
    """A database error that may pass if the call is repeated: locked or busy, disk full, connection
    lost, no pooled connection free."""
    return isinstance(exc, TRANSIENT_DB_ERRORS) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


class ApiGuard:
    """Pure ASGI (the UI's streaming routes pass untouched): for the API and /healthz, checks the
    token from the headers before reading any body (401/403), refuses bodies over the route's limit
    (413) and bodies past the in-flight budget (503) before the app parses them, and logs each
    request as an event."""

    def __init__(self, app, max_body: int, small_body: int, max_in_flight: int):
        self.app = app
        self.max_body = max_body
        self.small_body = small_body
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        """Bytes reserved by requests being received or handled (one event loop: no lock needed)."""

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith((API_PREFIX, USER_API_PREFIX)) or path == "/healthz"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 0}

        async def send_logged(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_logged, path)
        finally:
            state = scope.get("state", {})
            user = {"api_user": state["api_user"]} if "api_user" in state else {}
            event(logger, "api_request", method=scope.get("method"), path=path, status=status["code"],
                  ms=round((time.perf_counter() - started) * 1000, 1), worker_token=state.get("worker_token"), **user)

    async def _guarded(self, scope, receive, send, path: str) -> None:
        try:
            if path.startswith(API_PREFIX):
                token = await run_in_threadpool(authenticate, _header(scope, b"authorization"))
                scope.setdefault("state", {})["worker_token"] = token
            elif path.startswith(USER_API_PREFIX):
                user = await run_in_threadpool(authenticate, _header(scope, b"authorization"), user_tokens.authenticate)
                scope.setdefault("state", {})["api_user"] = user
            limit = self.max_body if path == _COMPLETE else self.small_body
            reserved = self._declared_length(scope, limit)
            if scope.get("method") in ("GET", "HEAD") and _header(scope, b"content-length") is None:
                reserved = 0  # /healthz: nothing to hold
        except HTTPException as exc:
            await _refuse(scope, send, exc.status_code, exc.detail, exc.headers)
            return
        except TRANSIENT_DB_ERRORS as exc:
            await _refuse(scope, send, 503, f"database temporarily unavailable ({type(exc).__name__}); retry",
                          {"Retry-After": str(TRANSIENT_RETRY_AFTER_S)})
            return
        if self.in_flight + reserved > self.max_in_flight:
            await _refuse(scope, send, 503, "too many request bodies in flight; retry",
                          {"Retry-After": str(TRANSIENT_RETRY_AFTER_S)})
            return
        self.in_flight += reserved
        try:
            try:
                body = await self._read_body(receive, limit)
            except HTTPException as exc:
                await _refuse(scope, send, exc.status_code, exc.detail)
                return
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.in_flight -= reserved

    @staticmethod
    def _declared_length(scope, limit: int) -> int:
        """Bytes to reserve: the declared Content-Length (refused over `limit`), else `limit`."""
        value = _header(scope, b"content-length")
        if value is None:
            return limit
        if not value.isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(value) > limit:
            raise HTTPException(413, f"request body too large (limit {limit} bytes)")
        return int(value)

    @staticmethod
    async def _read_body(receive, limit: int) -> bytes:
        """The whole body; raises 413 as soon as it is known to exceed `limit`."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"request body too large (limit {limit} bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _refuse(scope, send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """Answer without reading the body, and close the connection (the client may still be sending)."""
    response = JSONResponse({"detail": detail}, status_code=status, headers={**(headers or {}), "Connection": "close"})

    async def no_body():
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)
