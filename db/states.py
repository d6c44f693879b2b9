"""The states a job can be in, stored in the `jobs.state` column (`db.schema`).

The lifecycle and its transitions are the queue's (`jobs.queue`, drawn in `jobs.states`); the
values live here, with the schema, so that storage needs nothing from the layers above it.
"""
from __future__ import annotations

from enum import Enum

__all__ = ["ACTIVE_STATES", "FINISHED_STATES", "LIVE_STATES", "JobState"]


class JobState(str, Enum):
    """Where a job is in its lifecycle."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})
LIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED})
"""A job in one of these answers for its config: submitting the config again gives this job."""
FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
