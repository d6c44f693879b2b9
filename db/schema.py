"""The database schema (SQLAlchemy 2 typed declarative). Alembic migrations in `db/migrations`
create it; change both together (`alembic revision` with a new file in `db/migrations/versions`).

A job is a run: one id space, and retries are attempts of the same job. Results (scores, samples)
are written once, in the transaction that marks the job succeeded. `sample_checkpoints` holds the
samples streamed while a job runs, so a requeued attempt resumes; it is emptied on success.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jobs.states import JobState

__all__ = ["Base", "Job", "Score", "Sample", "SampleCheckpoint", "utcnow", "JOB_STATE_TYPE"]


def utcnow() -> datetime:
    """Naive UTC (the columns are timezone-less on every dialect)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


JOB_STATE_TYPE = Enum(
    JobState,
    name="job_state",
    native_enum=False,
    create_constraint=True,
    length=16,
    values_callable=lambda enum: [member.value for member in enum],
    validate_strings=True,
)
"""VARCHAR plus a CHECK constraint on every dialect; stores the enum's values, not its names."""


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    config_json: Mapped[str] = mapped_column(Text)
    """Canonical JSON of the validated JobConfig (backend.config.canonical_json)."""
    model: Mapped[str] = mapped_column(String(300))
    paradigm: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(100))
    sparsity: Mapped[float] = mapped_column(Float)
    state: Mapped[JobState] = mapped_column(JOB_STATE_TYPE, default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Claims so far; the current attempt's number while running."""
    requeues: Mapped[int] = mapped_column(Integer, default=0)
    """Lease expiries since the job was last submitted or retried."""
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(200))
    stage_text: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    manifest_json: Mapped[dict[str, Any] | None]
    efficiency_json: Mapped[dict[str, Any] | None]
    prune_report_json: Mapped[dict[str, Any] | None]
    stage_seconds_json: Mapped[dict[str, Any] | None]
    submitter: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_jobs_state_id", "state", "id"),  # claim_next, requeue_expired, leaderboard
        Index("ix_jobs_model_paradigm", "model", "paradigm"),
    )

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.state.value if self.state else None} attempt={self.attempts}>"


class Score(Base):
    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(200))
    value: Mapped[float | None] = mapped_column(Float)
    """None when the metric is undefined (NaN), e.g. F1 over an empty set."""
    stderr: Mapped[float | None] = mapped_column(Float)
    higher_is_better: Mapped[bool] = mapped_column(Boolean)
    is_primary: Mapped[bool] = mapped_column(Boolean)
    comparability_key: Mapped[str] = mapped_column(String(500))

    __table_args__ = (
        UniqueConstraint("job_id", "task", "metric", name="uq_scores_job_task_metric"),
        Index("ix_scores_primary_task", "is_primary", "task", "job_id"),
    )


class _SampleColumns:
    """Columns shared by final samples and the checkpoints streamed while a job runs."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(200))
    doc_id: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    extracted: Mapped[str | None] = mapped_column(Text)
    gold: Mapped[str] = mapped_column(Text)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    metrics_json: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Sample(_SampleColumns, Base):
    __tablename__ = "samples"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))

    __table_args__ = (UniqueConstraint("job_id", "task", "doc_id", name="uq_samples_job_task_doc"),)


class SampleCheckpoint(_SampleColumns, Base):
    __tablename__ = "sample_checkpoints"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    """The attempt that produced the sample (a later attempt resumes from it)."""

    __table_args__ = (UniqueConstraint("job_id", "task", "doc_id", name="uq_sample_checkpoints_job_task_doc"),)
