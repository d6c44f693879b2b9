"""Every state transition of a job, each one a short transaction.

A worker owns a running job through its *claim*: the job id plus the attempt number it got from
`claim_next` (attempts count claims). Functions a worker calls while running (`heartbeat`,
`record_sample`, `complete`, `fail`, `mark_cancelled`, `release`) change nothing unless the job is
still running under that attempt, so a worker whose lease expired, or a duplicate completion, writes
nothing. Jobs whose worker stopped renewing its lease go back to the queue (`requeue_expired`).
"""
from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, insert, select, text, update
from sqlalchemy.orm import Session

from common import settings
from backend.config import JobConfig, canonical_json, config_hash
from backend.result import RunResult, SampleRecord
from backend.taskdata.availability import check_submission
from common.trace_stats import trace_stats
from db import results_version
from db.schema import Job, SampleCheckpoint, utcnow
from db.session import read_session, write_session
from jobs.baselines import SYSTEM_SUBMITTER, baseline_needed
from jobs.facts import run_facts
from jobs.result_rows import checkpoint_row, jsonable, sample_record, write_results
from jobs.resources import Capabilities, claim_filter, job_requirements
from db.states import LIVE_STATES, JobState
from jobs.states import InvalidTransition, JobNotFound, LostClaim

__all__ = [
    "submit", "claim_next", "requeue_expired", "heartbeat", "record_sample", "completed_samples",
    "complete", "fail", "mark_cancelled", "release", "cancel", "retry", "get_job", "write_results",
]

logger = logging.getLogger(__name__)

MAX_TEXT = 2000
"""Progress texts longer than this are cut (they are status lines, not logs)."""
MAX_LOG_TAIL = 64 * 1024


# --- submitting -------------------------------------------------------------------------------


def submit(config: JobConfig, force: bool = False, submitter: str | None = None) -> tuple[Job, bool]:
    """Queue a validated config; return (job, existing).

    An identical config (same hash) that is queued, running or succeeded is returned as it is; if
    the latest such job failed or was cancelled it is queued again. `force` always makes a new job.
    A pruned config first queues its dense baseline when `settings.auto_baselines()` (jobs.baselines).
    Raises TaskDataUnavailable (a ConfigError) when this host runs its jobs and a task's data can
    neither be found nor fetched here (`backend.taskdata.availability`).
    """
    check_submission(config)
    if settings.auto_baselines():
        queue_dense_baseline(config)  # queued first, so a worker runs the baseline before the pruned run
    digest = config_hash(config)
    with write_session() as session:
        _lock_key(session, digest)
        if not force:
            same = session.scalars(select(Job).where(Job.config_hash == digest).order_by(Job.id.desc())).all()
            for job in same:
                if job.state in LIVE_STATES:
                    return job, True
            if same:
                _requeue(same[0])
                # resources are not part of the hash: the new submission's apply (e.g. more wall time)
                same[0].config_json = canonical_json(config)
                for name, value in {**job_requirements(config), **run_facts(json.loads(canonical_json(config)))}.items():
                    setattr(same[0], name, value)
                logger.info("job %d queued again (same config as before)", same[0].id)
                return same[0], True
        job = Job(
            config_hash=digest,
            config_json=canonical_json(config),
            model=config.model,
            paradigm=config.paradigm,
            method=config.pruning.method,
            sparsity=config.pruning.sparsity,
            state=JobState.QUEUED,
            attempts=0,
            requeues=0,
            progress=0.0,
            cancel_requested=False,
            submitter=submitter,
            **job_requirements(config),
            **run_facts(json.loads(canonical_json(config))),
        )
        session.add(job)
        session.flush()
        logger.info("job %d queued (%s)", job.id, digest[:12])
        return job, False


def queue_dense_baseline(config: JobConfig) -> Job | None:
    """Queue the dense baseline of `config` unless it exists (`jobs.baselines`); return the new job,
    or None when nothing was queued."""
    baseline = baseline_needed(config)
    if baseline is None:
        return None
    job, existing = submit(baseline, submitter=SYSTEM_SUBMITTER)
    if existing:
        return None
    logger.info("job %d queued as the dense baseline of %s (%s)", job.id, config.model, config.paradigm)
    return job


def retry(job_id: int) -> Job:
    """Queue a failed or cancelled job again (same id, next attempt)."""
    with write_session() as session:
        job = _locked(session, job_id)
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            hint = "; submit with --force to run it again" if job.state == JobState.SUCCEEDED else ""
            raise InvalidTransition(f"job {job_id} is {job.state.value}, only failed or cancelled jobs are retried{hint}")
        _requeue(job)
        return job


def cancel(job_id: int) -> JobState:
    """Cancel a job and return its state: a queued job is cancelled at once; a running one is marked
    `cancel_requested` and its worker stops it within a heartbeat (then it becomes cancelled)."""
    with write_session() as session:
        job = _locked(session, job_id)
        if job.state == JobState.QUEUED:
            job.state = JobState.CANCELLED
            job.finished_at = utcnow()
            job.stage_text = "cancelled before it started"
        elif job.state == JobState.RUNNING:
            job.cancel_requested = True
        elif job.state in (JobState.SUCCEEDED, JobState.FAILED):
            raise InvalidTransition(f"job {job_id} already {job.state.value}")
        return job.state


def get_job(job_id: int) -> Job:
    with read_session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job


# --- claiming and leases ----------------------------------------------------------------------


def claim_next(worker_id: str, capabilities: Capabilities | None = None) -> Job | None:
    """Atomically take the oldest queued job for `worker_id` (after requeueing expired leases) that
    a worker with `capabilities` can run (None: any job; see jobs.resources)."""
    requeue_expired()
    runnable = [Job.state == JobState.QUEUED]
    if capabilities is not None:
        runnable.append(claim_filter(capabilities))
    with read_session() as session:
        if not session.scalar(select(exists().where(*runnable))):
            return None  # the common idle case takes no write lock
    now = utcnow()
    claim = dict(
        state=JobState.RUNNING,
        worker_id=worker_id,
        attempts=Job.attempts + 1,
        lease_expires_at=now + _lease(),
        heartbeat_at=now,
        started_at=now,
        finished_at=None,
        progress=0.0,
        stage="claimed",
        stage_text=f"claimed by {worker_id}",
    )
    with write_session() as session:
        oldest = select(Job.id).where(*runnable).order_by(Job.id).limit(1)
        if session.get_bind().dialect.name == "sqlite":
            # One statement under the write lock; SQLite has no SKIP LOCKED and needs none.
            job_id = session.scalar(
                update(Job).where(Job.id == oldest.scalar_subquery()).values(**claim).returning(Job.id),
                execution_options={"synchronize_session": False},
            )
        else:
            job_id = session.scalar(oldest.with_for_update(skip_locked=True))
            if job_id is not None:
                session.execute(
                    update(Job).where(Job.id == job_id).values(**claim),
                    execution_options={"synchronize_session": False},
                )
        if job_id is None:
            return None
        job = session.get(Job, job_id)
    logger.info("%s claimed job %d (attempt %d)", worker_id, job.id, job.attempts)
    return job


def requeue_expired(now: datetime | None = None) -> dict[int, JobState]:
    """Running jobs whose lease expired go back to the queue, or fail once they expired more than
    `settings.max_requeues()` times (or become cancelled if cancel was requested). Returns the
    new state of each job it changed."""
    now = now or utcnow()
    expired_filter = (Job.state == JobState.RUNNING, Job.lease_expires_at < now)
    with read_session() as session:
        if not session.scalar(select(exists().where(*expired_filter))):
            return {}
    limit = settings.max_requeues()
    changed: dict[int, JobState] = {}
    with write_session() as session:
        for job in session.scalars(select(Job).where(*expired_filter).with_for_update(skip_locked=True)):
            expiries = job.requeues + 1
            previous_worker = job.worker_id
            job.worker_id = None
            job.lease_expires_at = None
            if job.cancel_requested:
                job.state = JobState.CANCELLED
                job.finished_at = now
            elif expiries > limit:
                job.state = JobState.FAILED
                job.finished_at = now
                job.error_type = "LeaseExpired"
                job.error_message = f"lease expired {expiries} time{'s' if expiries != 1 else ''} (worker died?)"
            else:
                job.state = JobState.QUEUED
                job.requeues = expiries
                job.stage_text = f"requeued: lease of {previous_worker} expired"
            changed[job.id] = job.state
            logger.warning("job %d: lease of %s expired -> %s", job.id, previous_worker, job.state.value)
    return changed


def heartbeat(
    job_id: int, attempt: int, progress: float | None = None, stage: str | None = None, text: str | None = None
) -> bool:
    """Renew the lease of a claimed job and store its progress; return whether cancel was requested.

    Raises LostClaim when the job no longer runs under this attempt.
    """
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + _lease(), "heartbeat_at": now}
    if progress is not None and math.isfinite(progress):
        values["progress"] = min(max(float(progress), 0.0), 1.0)
    if stage is not None:
        values["stage"] = stage[:200]
    if text is not None:
        values["stage_text"] = text[:MAX_TEXT]
    with write_session() as session:
        cancel_requested = session.scalar(
            update(Job).where(*_owned(job_id, attempt)).values(**values).returning(Job.cancel_requested),
            execution_options={"synchronize_session": False},
        )
    if cancel_requested is None:
        raise LostClaim(f"job {job_id} no longer runs under attempt {attempt}")
    return bool(cancel_requested)


# --- results ----------------------------------------------------------------------------------


def record_sample(job_id: int, attempt: int, sample: SampleRecord) -> None:
    """Checkpoint one finished sample so a later attempt can resume; raises LostClaim if not owned."""
    with write_session() as session:
        if session.scalar(select(Job.id).where(*_owned(job_id, attempt))) is None:
            raise LostClaim(f"job {job_id} no longer runs under attempt {attempt}")
        session.execute(
            delete(SampleCheckpoint).where(
                SampleCheckpoint.job_id == job_id,
                SampleCheckpoint.task == sample.task,
                SampleCheckpoint.doc_id == sample.doc_id,
            )
        )
        session.execute(insert(SampleCheckpoint), [checkpoint_row(job_id, attempt, sample)])


def completed_samples(job_id: int) -> list[SampleRecord]:
    """Samples checkpointed by earlier attempts of a job (passed to the pipeline to resume)."""
    with read_session() as session:
        rows = session.scalars(
            select(SampleCheckpoint)
            .where(SampleCheckpoint.job_id == job_id)
            .order_by(SampleCheckpoint.task, SampleCheckpoint.doc_id)
        ).all()
        return [sample_record(row) for row in rows]


def complete(job_id: int, attempt: int, result: RunResult) -> bool:
    """Store a finished run in ONE transaction: scores, samples (previews), their compressed
    traces, trace statistics, efficiency, manifest and state=succeeded together. The manifest's
    `produced_by` is what the queue knows, not what the worker says: the worker id that holds the
    claim (a remote one's starts with its token's name) and the attempt. Writes nothing and returns
    False unless the job still runs under this attempt and no cancel was requested. Raises (and
    writes nothing) if storing fails. Once stored, the run goes to any configured experiment
    logger (`jobs.run_files.log_finished_run`)."""
    now = utcnow()
    # The pipeline's statistics; else (other executors) the same function on the generated samples.
    stats = getattr(result, "trace_stats", None) or trace_stats([s for s in result.samples if s.finish_reason is not None])
    with write_session() as session:
        worker_id = session.scalar(select(Job.worker_id).where(*_owned(job_id, attempt)))
        manifest = {**result.manifest, "produced_by": {"worker_id": worker_id, "attempt": attempt}}
        owned = session.execute(
            update(Job)
            .where(*_owned(job_id, attempt), Job.cancel_requested.is_(False))
            .values(
                state=JobState.SUCCEEDED,
                progress=1.0,
                stage="done",
                stage_text=None,
                finished_at=now,
                heartbeat_at=now,
                lease_expires_at=None,
                manifest_json=jsonable(manifest),
                efficiency_json=jsonable(result.efficiency),
                prune_report_json=jsonable(result.prune_report),
                stage_seconds_json=jsonable(result.stage_seconds),
                trace_stats_json=jsonable(stats),
            ),
            execution_options={"synchronize_session": False},
        ).rowcount
        if owned != 1:
            logger.warning("job %d: completion of attempt %d ignored (claim lost or cancelled)", job_id, attempt)
            return False
        write_results(session, job_id, result.scores, result.samples)
        session.execute(delete(SampleCheckpoint).where(SampleCheckpoint.job_id == job_id))
        results_version.bump(session)
    logger.info("job %d succeeded (%d scores, %d samples)", job_id, len(result.scores), len(result.samples))
    from jobs.run_files import log_finished_run  # optional W&B / Trackio logging; nothing when unset

    log_finished_run(job_id)
    return True


def fail(job_id: int, attempt: int, exc_type: str, message: str, log_tail: str | None = None) -> bool:
    """Mark a claimed job failed with the error; False (nothing written) if the claim is lost."""
    return _finish(
        job_id,
        attempt,
        state=JobState.FAILED,
        error_type=exc_type[:200],
        error_message=message,
        log_tail=(log_tail or "")[-MAX_LOG_TAIL:] or None,
    )


def mark_cancelled(job_id: int, attempt: int) -> bool:
    """The worker stopped a job whose cancel was requested; no results are stored."""
    return _finish(job_id, attempt, state=JobState.CANCELLED, stage_text="cancelled while running")


def release(job_id: int, attempt: int) -> bool:
    """A worker shutting down hands its job back to the queue (cancelled if cancel was requested)."""
    with write_session() as session:
        job = session.scalar(select(Job).where(*_owned(job_id, attempt)).with_for_update())
        if job is None:
            return False
        job.worker_id = None
        job.lease_expires_at = None
        if job.cancel_requested:
            job.state = JobState.CANCELLED
            job.finished_at = utcnow()
        else:
            job.state = JobState.QUEUED
            job.stage_text = "released by a worker shutting down"
    return True


# --- helpers ----------------------------------------------------------------------------------


def _owned(job_id: int, attempt: int) -> tuple:
    """The claim: this job, running, under this attempt."""
    return (Job.id == job_id, Job.attempts == attempt, Job.state == JobState.RUNNING)


def _finish(job_id: int, attempt: int, state: JobState, **values: Any) -> bool:
    now = utcnow()
    with write_session() as session:
        changed = session.execute(
            update(Job)
            .where(*_owned(job_id, attempt))
            .values(state=state, finished_at=now, lease_expires_at=None, **values),
            execution_options={"synchronize_session": False},
        ).rowcount
    if changed != 1:
        logger.warning("job %d: attempt %d lost its claim; not marked %s", job_id, attempt, state.value)
    return changed == 1


def _requeue(job: Job) -> None:
    job.state = JobState.QUEUED
    job.requeues = 0
    job.progress = 0.0
    job.stage = None
    job.stage_text = None
    job.cancel_requested = False
    job.error_type = None
    job.error_message = None
    job.log_tail = None
    job.worker_id = None
    job.lease_expires_at = None
    job.started_at = None
    job.finished_at = None


def _locked(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise JobNotFound(job_id)
    return job


def _lock_key(session: Session, digest: str) -> None:
    """Serialise submissions of one config hash (SQLite's write transaction already does)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": digest})


def _lease() -> timedelta:
    return timedelta(seconds=settings.lease_seconds())
