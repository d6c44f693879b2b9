"""A client of the user API (`jobs.user_api`): submit, list and cancel jobs on a PruneBoard server as
the user whose API token it holds. The CLI's `--server` uses it; a notebook may too:

    client = UserClient("https://OWNER-NAME.hf.space", os.environ["PRUNEBOARD_TOKEN"])
    job = client.submit(open("config.yaml").read())       # {"id", "state", "existing"}
    client.status(job["id"])["jobs"][0]["state"]

Every refusal raises `UserApiError` with the server's one-line reason and its HTTP status (None when
the server could not be reached). Nothing is retried: a submission is not repeated behind the user's back.
"""
from __future__ import annotations

from typing import Any

import httpx

from jobs.wire import USER_API_PREFIX

__all__ = ["UserClient", "UserApiError"]


class UserApiError(RuntimeError):
    """The server refused a request (`status`: its HTTP status) or could not be reached (None)."""

    def __init__(self, status: int | None, message: str):
        super().__init__(message)
        self.status = status


class UserClient:
    """The user API of `server`, with a user's API token (`pbu_...`, made in the app)."""

    def __init__(self, server: str, token: str, timeout: float = 60.0, client: httpx.Client | None = None):
        """`client`: an httpx client to send through (tests pass FastAPI's TestClient)."""
        self.server = server.rstrip("/")
        self.client = client or httpx.Client(base_url=self.server, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}", "User-Agent": "pruneboard-cli"}

    def submit(self, config_text: str, fmt: str = "yaml", force: bool = False) -> dict[str, Any]:
        """Queue a config (the file's text); {"id", "state", "existing"} as `jobs submit --json`."""
        return self._call("POST", "/submit", json={"config": config_text, "format": fmt, "force": force})

    def status(self, job_id: int | None = None, limit: int = 50, state: str | None = None) -> dict[str, Any]:
        """{"jobs", "workers"} as `jobs status --json`: one job's detail, or the newest jobs."""
        if job_id is not None:
            return self._call("GET", f"/jobs/{job_id}")
        params = {"limit": limit, **({"state": state} if state else {})}
        return self._call("GET", "/jobs", params=params)

    def cancel(self, job_id: int) -> dict[str, Any]:
        """{"id", "state"} as `jobs cancel --json`."""
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.client.request(method, f"{USER_API_PREFIX}{route}", headers=self.headers, **kwargs)
        except httpx.HTTPError as exc:
            raise UserApiError(None, f"server {self.server} unreachable: {type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:300]}
        if response.is_success and isinstance(body, dict):
            return body
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str) or not detail:
            detail = f"HTTP {response.status_code} {response.reason_phrase}"
        raise UserApiError(response.status_code, " ".join(detail.split()))
