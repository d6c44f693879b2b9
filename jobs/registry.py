"""The workers the queue has seen: last heartbeat, current job, device; stale ones are marked.

Workers report through `seen` when they claim (or find nothing), beat and finish. Idle workers
poll often, so a process writes a worker's row only when its current job changed or a third of a
lease passed since its last write. A worker whose last heartbeat is older than `STALE_LEASES`
leases is stale (it died or lost the server); one that exited cleanly is stopped.
"""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from common import settings
from db.schema import WorkerRecord, utcnow
from db.session import read_session, write_session
from jobs.resources import Capabilities

__all__ = ["seen", "stopped", "list_workers", "token_of", "STALE_LEASES", "ONLINE_STATUSES"]

STALE_LEASES = 3
"""A worker silent for this many leases is marked stale."""
ONLINE_STATUSES = ("running", "idle")
"""`list_workers` statuses of a worker that is heard from (neither stale nor stopped)."""
_UNSET: Any = object()

_lock = threading.Lock()
_last_write: dict[tuple[str, str], tuple[float, int | None]] = {}
"""(database url, worker id) -> (when this process last wrote the row, the job it recorded)."""


def seen(
    worker_id: str,
    current_job_id: int | None = _UNSET,
    token_name: str | None = None,
    device: dict[str, Any] | None = None,
) -> None:
    """Record that `worker_id` is alive (and, when given, which job it runs now)."""
    now = time.monotonic()
    key = (settings.database_url(), worker_id)
    with _lock:
        last = _last_write.get(key)
        job_unchanged = current_job_id is _UNSET or (last is not None and last[1] == current_job_id)
        if last is not None and job_unchanged and now - last[0] < settings.lease_seconds() / 3:
            return
        known_job = last[1] if last is not None else None
        _last_write[key] = (now, known_job if current_job_id is _UNSET else current_job_id)
    stamp = utcnow()
    with write_session() as session:
        row = session.get(WorkerRecord, worker_id)
        if row is None:
            row = WorkerRecord(id=worker_id, token_name=token_name, started_at=stamp)
            session.add(row)
        row.last_heartbeat_at = stamp
        row.stopped_at = None
        if current_job_id is not _UNSET:
            row.current_job_id = current_job_id
        if device is not None:
            row.device_json = device


def stopped(worker_id: str) -> None:
    """The worker exited cleanly."""
    with _lock:
        _last_write.pop((settings.database_url(), worker_id), None)
    with write_session() as session:
        row = session.get(WorkerRecord, worker_id)
        if row is not None:
            row.stopped_at = utcnow()
            row.current_job_id = None


def token_of(worker_id: str | None) -> str | None:
    """The token a worker claims under (None: a local worker, or unknown)."""
    if worker_id is None:
        return None
    with read_session() as session:
        return session.scalar(select(WorkerRecord.token_name).where(WorkerRecord.id == worker_id))


def list_workers(session, limit: int = 50) -> list[dict[str, Any]]:
    """Workers, most recently heard from first, with `status`: running | idle | stale | stopped, and
    `capabilities`: what the worker last said it can run (`jobs.resources.Capabilities` as a dict;
    None for records that hold none)."""
    now = utcnow()
    stale_before = now - timedelta(seconds=STALE_LEASES * settings.lease_seconds())
    rows = session.scalars(select(WorkerRecord).order_by(WorkerRecord.last_heartbeat_at.desc()).limit(limit)).all()
    workers = []
    for row in rows:
        stale = row.stopped_at is None and row.last_heartbeat_at < stale_before
        if row.stopped_at is not None:
            status = "stopped"
        elif stale:
            status = "stale"
        else:
            status = "running" if row.current_job_id is not None else "idle"
        workers.append({
            "id": row.id,
            "token": row.token_name,
            "status": status,
            "stale": stale,
            "current_job": row.current_job_id,
            "last_heartbeat_at": row.last_heartbeat_at,
            "seconds_since_heartbeat": round((now - row.last_heartbeat_at).total_seconds(), 1),
            "started_at": row.started_at,
            "stopped_at": row.stopped_at,
            "device": row.device_json,
            "capabilities": _dumped(Capabilities.recorded(row.device_json)),
        })
    return workers


def _dumped(capabilities) -> dict[str, Any] | None:
    return None if capabilities is None else capabilities.model_dump(mode="json")
