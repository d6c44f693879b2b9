"""Why a queued job is not being run: its `waiting_reason`, shown by `jobs status --json` and the Queue.

A queued job waits for a reason when no online worker (one heard from within `STALE_LEASES` leases
and not stopped) can take it, judged by what each worker last reported (`jobs.resources.Capabilities`):

1. device and accelerator memory: "needs a CUDA worker with ≥ 40 GB; none online";
2. where the model comes from: "no worker can load hub models" (or local directories, or this id);
3. task data: "task data missing on every worker: gsm8k" (claims do not filter on data, so such a
   job would be claimed and fail in the worker's preflight; the reason says so before it happens).

The reason is None when some online worker could run it (it may still wait for a busy one), when a
worker's record holds no capabilities (a worker from before they were recorded: anything is assumed
possible), and for jobs that are not queued. The checks mirror the claim's (`claim_filter`).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models.ids import NOOP_MODEL
from backend.tasks.base import fetch_command
from db.schema import Job
from jobs.registry import ONLINE_STATUSES, list_workers
from jobs.resources import Capabilities
from db.states import JobState

__all__ = ["JobNeeds", "waiting_reason", "waiting_reasons", "add_waiting_reasons", "online_capabilities"]


@dataclass(frozen=True)
class JobNeeds:
    """What a queued job asks of a worker: its requirement columns, its model and its tasks."""

    required_device: str | None
    min_accelerator_memory_gb: float | None
    model_source: str | None
    model: str
    tasks: tuple[str, ...]

    @classmethod
    def of(cls, job: Job) -> JobNeeds:
        config = json.loads(job.config_json)
        tasks = tuple(task["name"] if isinstance(task, dict) else str(task) for task in config.get("tasks", ()))
        return cls(job.required_device, job.min_accelerator_memory_gb, job.model_source, job.model,
                   () if job.model == NOOP_MODEL else tasks)  # the noop model reads no task data


def waiting_reason(needs: JobNeeds, online: list[Capabilities | None]) -> str | None:
    """The sentence saying why no worker among `online` (the capabilities of the online workers,
    None for one that reported none) can run the job; None when one can."""
    if any(caps is None for caps in online):
        return None  # a worker of unknown capabilities might take it
    workers: list[Capabilities] = [caps for caps in online if caps is not None]
    fitting = [caps for caps in workers if caps.fits_device(needs.required_device, needs.min_accelerator_memory_gb)]
    if not fitting:
        wanted = _device_wanted(needs)
        return f"needs {wanted}; none online" if wanted else "no worker online"
    loading = [caps for caps in fitting if caps.loads_model(needs.model_source, needs.model)]
    if not loading:
        return _model_reason(needs)
    missing = [set(caps.missing_tasks(list(needs.tasks))) for caps in loading]
    if all(missing):
        lacking = " ".join(task for task in needs.tasks if any(task in m for m in missing))
        return (f"task data missing on every worker: {lacking} (run \"{fetch_command(lacking)}\" on a worker, "
                "or give it PRUNEBOARD_USE_HUB=1)")
    return None


def _device_wanted(needs: JobNeeds) -> str | None:
    memory = needs.min_accelerator_memory_gb
    if needs.required_device == "cpu":
        return "a CPU worker"
    if needs.required_device == "cuda":
        return "a CUDA worker" + (f" with ≥ {memory:g} GB" if memory is not None else "")
    return None if memory is None else f"a worker with ≥ {memory:g} GB of accelerator memory"


def _model_reason(needs: JobNeeds) -> str:
    if needs.model_source == "hub":
        return ("no worker can load hub models (give a worker PRUNEBOARD_USE_HUB=1, or list the model in its "
                "PRUNEBOARD_WORKER_MODELS)")
    if needs.model_source == "local":
        return ("no worker can load local model directories (only workers beside the server can, or ones that "
                "list the model in PRUNEBOARD_WORKER_MODELS)")
    return f"no worker can load {needs.model}"


def online_capabilities(session: Session) -> list[Capabilities | None]:
    """What each online worker can run (None: its record holds no capabilities)."""
    return [None if w["capabilities"] is None else Capabilities.model_validate(w["capabilities"])
            for w in list_workers(session) if w["status"] in ONLINE_STATUSES]


def waiting_reasons(session: Session, job_ids: Iterable[int]) -> dict[int, str]:
    """{job id: reason} for the queued jobs among `job_ids` that no online worker can run."""
    ids = list(job_ids)
    if not ids:
        return {}
    queued = session.scalars(select(Job).where(Job.id.in_(ids), Job.state == JobState.QUEUED)).all()
    if not queued:
        return {}
    online = online_capabilities(session)
    reasons = {job.id: waiting_reason(JobNeeds.of(job), online) for job in queued}
    return {job_id: reason for job_id, reason in reasons.items() if reason is not None}


def add_waiting_reasons(session: Session, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set `waiting_reason` on each job dict (`db.queries.job_to_dict`): a sentence, or None."""
    reasons = waiting_reasons(session, [job["id"] for job in jobs if job.get("state") == JobState.QUEUED.value])
    for job in jobs:
        job["waiting_reason"] = reasons.get(job["id"])
    return jobs
