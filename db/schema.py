"""The database schema (SQLAlchemy 2 typed declarative). Alembic migrations in `db/migrations`
create it; change both together (`alembic revision` with a new file in `db/migrations/versions`).

A job is a run: one id space, and retries are attempts of the same job. Results (scores, samples)
are written once, in the transaction that marks the job succeeded. `sample_checkpoints` holds the
samples streamed while a job runs, so a requeued attempt resumes; it is emptied on success.

Long texts: `samples.prompt`, `samples.output` and `samples.answer` hold previews (the first
`SAMPLE_PREVIEW_CHARS` characters; `samples.output_chars` is the full length). The full prompt,
output, reasoning and answer of each sample are in `traces`, zlib-compressed, within a per-run size
cap (`db.traces`). Rows written before migration 0002 have no trace and keep full texts in
`samples`. Checkpoints keep full texts (they are rebuilt into records when a job resumes).
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
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false

from db.states import JobState

__all__ = [
    "Base", "Job", "Score", "Sample", "SampleCheckpoint", "Trace", "utcnow", "JOB_STATE_TYPE",
    "SAMPLE_PREVIEW_CHARS", "Deployment", "WorkerToken", "WorkerRecord", "AuditEntry", "ResultsVersion",
    "UserToken",
]

SAMPLE_PREVIEW_CHARS = 2000
"""Characters of prompt, output and answer kept in `samples` for listings (full texts: `traces`)."""


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
    trace_stats_json: Mapped[dict[str, Any] | None]
    """common.trace_stats.trace_stats of the stored samples (set on completion and on rescore)."""
    hidden: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """An admin hid the run (jobs.access.hide_run): off the leaderboard, compare and others' queue."""
    required_device: Mapped[str | None] = mapped_column(String(8))
    """resources.device when not "any" (cpu | cuda): claims filter on it (jobs.resources)."""
    min_accelerator_memory_gb: Mapped[float | None] = mapped_column(Float)
    model_source: Mapped[str | None] = mapped_column(String(8))
    """builtin | local | hub: which workers can load the model (NULL: rows before migration 0006)."""
    origin_id: Mapped[str | None] = mapped_column(String(120), index=True)
    """Imported runs: "<deployment id>/<job id>" where the run was produced (NULL: produced here,
    where its origin id is this deployment's id and the job's own id)."""
    imported_at: Mapped[datetime | None] = mapped_column(DateTime)
    """When the run was imported from a results bundle (NULL: produced here)."""
    provenance_json: Mapped[dict[str, Any] | None]
    """Imported runs: the commit and deployment that produced them and the bundle they came from."""
    # Facts known at submission (jobs.facts.run_facts), stored so that readers never rebuild a
    # method's parameters or parse the config (NULL family: a method this deployment does not know).
    family: Mapped[str | None] = mapped_column(String(32))
    """The method's family (common.vocabulary.Family)."""
    uses_calibration: Mapped[bool | None] = mapped_column(Boolean)
    calibration_source: Mapped[str | None] = mapped_column(String(32))
    """text | synthetic | task-aligned | self-generated, when the method used calibration data."""
    calibration_data: Mapped[str | None] = mapped_column(String(400))
    """Which calibration data, e.g. `text wikitext2/valid.txt 32x256 seed 0 (default)` (calibrated runs)."""
    recovery: Mapped[bool | None] = mapped_column(Boolean)
    """Whether recovery fine-tuning ran after pruning."""

    __table_args__ = (
        Index("ix_jobs_state_id", "state", "id"),  # claim_next, requeue_expired, leaderboard
        Index("ix_jobs_model_paradigm", "model", "paradigm"),
        # db.leaderboard: latest succeeded job per config of a model and paradigm, from the index alone
        Index("ix_jobs_board", "state", "model", "paradigm", "config_hash", "id"),
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
    scorer_version: Mapped[str | None] = mapped_column(String(32))
    """backend.evaluation.scoring.SCORER_VERSION that produced the value (None: stored before migration 0002)."""
    category: Mapped[str | None] = mapped_column(String(32))
    """The task's category (common.vocabulary.TaskCategory; NULL: a task this deployment does not know)."""
    test_time_scaling: Mapped[bool | None] = mapped_column(Boolean)
    """Whether the task takes part in test-time scaling (TaskSpec.test_time_scaling)."""
    output_type: Mapped[str | None] = mapped_column(String(16))
    """The task's output type: generate | loglikelihood | perplexity (TaskSpec.output_type)."""

    __table_args__ = (
        UniqueConstraint("job_id", "task", "metric", name="uq_scores_job_task_metric"),
        Index("ix_scores_primary_task", "is_primary", "task", "job_id"),
        Index("ix_scores_job_primary", "job_id", "is_primary"),  # db.leaderboard: primary scores of given runs
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
    answer: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    thinking_tokens: Mapped[int | None] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Think paradigm: the model produced no end-of-thinking marker."""
    repetition: Mapped[float | None] = mapped_column(Float)


class Sample(_SampleColumns, Base):
    __tablename__ = "samples"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    output_chars: Mapped[int | None] = mapped_column(Integer)
    """Length of the full output (`output` is a preview of at most SAMPLE_PREVIEW_CHARS)."""

    __table_args__ = (UniqueConstraint("job_id", "task", "doc_id", name="uq_samples_job_task_doc"),)


class SampleCheckpoint(_SampleColumns, Base):
    __tablename__ = "sample_checkpoints"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    """The attempt that produced the sample (a later attempt resumes from it)."""
    reasoning: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("job_id", "task", "doc_id", name="uq_sample_checkpoints_job_task_doc"),)


class Trace(Base):
    """The full texts of one sample, zlib-compressed UTF-8 (see `db.traces`).

    `reasoning` and `answer` are usually parts of the output: then only their position is stored
    (`*_start`, `*_chars`, no blob). `truncated_for_storage`: the run's trace cap was reached, so
    the texts keep only their head and tail. `stored_bytes`: the blobs' total size, counted against
    the cap.
    """

    __tablename__ = "traces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(200))
    doc_id: Mapped[int] = mapped_column(Integer)
    codec: Mapped[str] = mapped_column(String(16))
    prompt_z: Mapped[bytes] = mapped_column(LargeBinary)
    prompt_chars: Mapped[int] = mapped_column(Integer)
    output_z: Mapped[bytes] = mapped_column(LargeBinary)
    output_chars: Mapped[int] = mapped_column(Integer)
    reasoning_z: Mapped[bytes | None] = mapped_column(LargeBinary)
    reasoning_start: Mapped[int | None] = mapped_column(Integer)
    reasoning_chars: Mapped[int | None] = mapped_column(Integer)
    answer_z: Mapped[bytes | None] = mapped_column(LargeBinary)
    answer_start: Mapped[int | None] = mapped_column(Integer)
    answer_chars: Mapped[int | None] = mapped_column(Integer)
    stored_bytes: Mapped[int] = mapped_column(Integer)
    truncated_for_storage: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (UniqueConstraint("job_id", "task", "doc_id", name="uq_traces_job_task_doc"),)


class Deployment(Base):
    """One row: this database's random id, made with it; it names the origin of every run made here."""

    __tablename__ = "deployment"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    seeded_at: Mapped[datetime | None] = mapped_column(DateTime)
    """When the shipped results snapshot was imported (it is imported once, into an empty database)."""


class WorkerToken(Base):
    """A remote worker's bearer token: only its SHA-256 is stored (the plaintext is shown once)."""

    __tablename__ = "worker_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    source: Mapped[str | None] = mapped_column(String(8))
    """"cli" (`jobs token create`) or "env" (PRUNEBOARD_WORKER_TOKENS, revoked when its name leaves
    the variable); NULL: made before migration 0008."""

    __table_args__ = (
        UniqueConstraint("name", name="uq_worker_tokens_name"),
        UniqueConstraint("token_hash", name="uq_worker_tokens_hash"),
    )


class WorkerRecord(Base):
    """A worker process seen by the queue (local, or remote through the API under a token)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The worker id jobs record in `jobs.worker_id` (remote: "<token name>/<instance>")."""
    token_name: Mapped[str | None] = mapped_column(String(100))
    """None for local workers; a remote worker's claims belong to this token."""
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    device_json: Mapped[dict[str, Any] | None]
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime)
    """Set when the worker exited cleanly (a worker that died just stops beating: stale)."""


class AuditEntry(Base):
    """One moderation or submission action (jobs.access): who did what to which job, and why.

    `job_id` is no foreign key: the entry outlives a deleted run, and `detail` keeps what it was.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any] | None]

    __table_args__ = (Index("ix_audit_log_actor_action_at", "actor", "action", "at"),)  # daily quota counts


class ResultsVersion(Base):
    """One row (id 1): a counter bumped with every change to the stored results (`db.results_version`)."""

    __tablename__ = "results_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer)
    changed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class UserToken(Base):
    """A signed-in user's personal API token (`jobs.user_tokens`): the CLI's `--server` acts as that
    user. Only its SHA-256 is stored (the plaintext is shown once)."""

    __tablename__ = "user_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(200))
    """The Hugging Face username the token acts as (admin rights are looked up on every request)."""
    label: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("token_hash", name="uq_user_tokens_hash"),
        Index("ix_user_tokens_user_name", "user_name"),
    )
