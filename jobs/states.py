"""The lifecycle of a job: its states and the errors raised by forbidden transitions.

    queued ──claim──▶ running ──complete──▶ succeeded
      ▲  │              │ ├──fail / lease expired too often──▶ failed
      │  └──cancel──┐   │ └──cancel (the worker stops the pipeline)──▶ cancelled
      │             ▼   ▼
      └──retry / submit again── failed | cancelled        (lease expiry: running ──▶ queued)

The state column of the `jobs` table stores these values (`db.states.JobState`); every transition is a
function in `jobs.queue`, never a string written by hand.
"""
from __future__ import annotations

__all__ = ["InvalidTransition", "JobNotFound", "LostClaim"]


class JobNotFound(LookupError):
    """No job has this id."""

    def __init__(self, job_id: int):
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidTransition(ValueError):
    """The job's current state does not allow the requested change (e.g. cancelling a finished job)."""


class LostClaim(RuntimeError):
    """A worker's attempt no longer owns its job (lease expired and requeued, or the job changed state).

    The worker must stop and write nothing: another attempt, or the user, decides the job's fate.
    """
