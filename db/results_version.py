"""A counter of changes to the stored results, kept in the database so every process sees it.

Everything that changes what the leaderboard, plots, findings or compare views show calls `bump`
inside its own write transaction: a job completing (`jobs.queue.complete`), a bundle import
(`jobs.bundle`), hiding, unhiding or deleting a run (`jobs.access`) and a rescore
(`jobs.rescore`). The counter commits or rolls back with the change, so a reader that sees the new
version also sees the new results. The app's view cache (`ui.view_cache`) reads `current` once per
request and recomputes a view only when it moved.
"""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.schema import ResultsVersion, utcnow

__all__ = ["ROW_ID", "bump", "current"]

ROW_ID = 1
"""The counter's only row (made by migration 0008)."""


def bump(session: Session) -> None:
    """Count one change to the results, in the caller's transaction."""
    session.execute(
        update(ResultsVersion).where(ResultsVersion.id == ROW_ID)
        .values(version=ResultsVersion.version + 1, changed_at=utcnow()),
        execution_options={"synchronize_session": False},
    )


def current(session: Session) -> int:
    """The counter's value (0 before any change)."""
    return session.scalar(select(ResultsVersion.version).where(ResultsVersion.id == ROW_ID)) or 0
