"""Read-only queries behind the UI and `python -m jobs status`: plain dicts and pandas DataFrames,
no Gradio. Every function takes an open session (`db.session.read_session()`); pandas is imported
only by the functions that return DataFrames, so the CLI stays fast.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.schema import Job, Sample, Score
from jobs.states import JobState

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["leaderboard", "list_jobs", "job_detail", "job_samples", "job_to_dict", "LEADERBOARD_COLUMNS"]

LEADERBOARD_COLUMNS = ["job_id", "model", "paradigm", "method", "sparsity"]
"""Leading columns of `leaderboard()`; one column per task and `average` follow."""
DENSE_METHOD = "dense"


def job_to_dict(job: Job) -> dict[str, Any]:
    """The summary of a job shown in tables and `status --json` (JSON-serialisable)."""
    return {
        "id": job.id,
        "state": job.state.value,
        "progress": round(job.progress or 0.0, 4),
        "stage": job.stage,
        "stage_text": job.stage_text,
        "model": job.model,
        "paradigm": job.paradigm,
        "method": job.method,
        "sparsity": job.sparsity,
        "attempts": job.attempts,
        "requeues": job.requeues,
        "cancel_requested": job.cancel_requested,
        "error_type": job.error_type,
        "error_message": job.error_message,
        "worker_id": job.worker_id,
        "config_hash": job.config_hash,
        "submitter": job.submitter,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "heartbeat_at": _iso(job.heartbeat_at),
    }


def list_jobs(session: Session, limit: int = 100, state: JobState | str | None = None) -> list[dict[str, Any]]:
    """The newest jobs first, optionally of one state."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == JobState(state))
    return [job_to_dict(job) for job in session.scalars(query)]


def job_detail(session: Session, job_id: int) -> dict[str, Any] | None:
    """Everything about one job: summary, config, log tail, results and per-task sample counts."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    scores = session.scalars(select(Score).where(Score.job_id == job_id).order_by(Score.task, Score.metric))
    counts = session.execute(
        select(Sample.task, func.count(), func.sum(case((Sample.correct.is_(True), 1), else_=0)))
        .where(Sample.job_id == job_id)
        .group_by(Sample.task)
        .order_by(Sample.task)
    )
    return {
        **job_to_dict(job),
        "config": json.loads(job.config_json),
        "log_tail": job.log_tail,
        "manifest": job.manifest_json,
        "efficiency": job.efficiency_json,
        "prune_report": job.prune_report_json,
        "stage_seconds": job.stage_seconds_json,
        "scores": [
            {
                "task": s.task,
                "metric": s.metric,
                "value": s.value,
                "stderr": s.stderr,
                "higher_is_better": s.higher_is_better,
                "primary": s.is_primary,
                "comparability_key": s.comparability_key,
            }
            for s in scores
        ],
        "samples": {task: {"count": count, "correct": int(correct or 0)} for task, count, correct in counts},
    }


def job_samples(session: Session, job_id: int, task: str | None = None, limit: int = 1000) -> "pd.DataFrame":
    """Stored samples of a finished job, in task and doc order."""
    import pandas as pd

    query = select(Sample).where(Sample.job_id == job_id).order_by(Sample.task, Sample.doc_id).limit(limit)
    if task is not None:
        query = query.where(Sample.task == task)
    columns = ["task", "doc_id", "prompt", "output", "extracted", "gold", "correct", "prompt_tokens", "output_tokens"]
    rows = [{c: getattr(s, c) for c in columns} for s in session.scalars(query)]
    return pd.DataFrame(rows, columns=columns)


def leaderboard(session: Session, model: str | None = None, paradigm: str | None = None) -> "pd.DataFrame":
    """Primary metric per task of the latest succeeded job of every config, one row per run.

    Columns: job_id, model, paradigm, method, sparsity, one per task (sorted), and `average` (mean
    of the higher-is-better primary metrics of the row). Dense baselines come first, then by model,
    paradigm, method and sparsity.
    """
    import pandas as pd

    latest = (
        select(func.max(Job.id).label("job_id"))
        .where(Job.state == JobState.SUCCEEDED)
        .group_by(Job.config_hash)
        .subquery()
    )
    jobs_query = select(Job).join(latest, latest.c.job_id == Job.id)
    if model is not None:
        jobs_query = jobs_query.where(Job.model == model)
    if paradigm is not None:
        jobs_query = jobs_query.where(Job.paradigm == paradigm)
    jobs = {job.id: job for job in session.scalars(jobs_query)}
    scores = (
        session.execute(
            select(Score.job_id, Score.task, Score.value, Score.higher_is_better).where(
                Score.is_primary.is_(True), Score.job_id.in_(list(jobs))
            )
        ).all()
        if jobs
        else []
    )
    tasks = sorted({row.task for row in scores})
    rows: dict[int, dict[str, Any]] = {
        job.id: {
            "job_id": job.id,
            "model": job.model,
            "paradigm": job.paradigm,
            "method": job.method,
            "sparsity": job.sparsity,
            **{task: None for task in tasks},
        }
        for job in jobs.values()
    }
    better: dict[int, list[float]] = {job_id: [] for job_id in jobs}
    for row in scores:
        rows[row.job_id][row.task] = row.value
        if row.higher_is_better and row.value is not None:
            better[row.job_id].append(row.value)
    for job_id, values in better.items():
        rows[job_id]["average"] = sum(values) / len(values) if values else None
    ordered = sorted(
        rows.values(),
        key=lambda r: (r["method"] != DENSE_METHOD, r["model"], r["paradigm"], r["method"], r["sparsity"], r["job_id"]),
    )
    columns = [*LEADERBOARD_COLUMNS, *tasks, "average"]
    frame = pd.DataFrame(ordered, columns=columns)
    for column in [*tasks, "average"]:
        frame[column] = frame[column].astype("float64")
    return frame


def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None
