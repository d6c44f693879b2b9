"""Read-only queries behind the UI and `python -m jobs status`: plain dicts and pandas DataFrames,
no Gradio. Every function takes an open session (`db.session.read_session()`); pandas is imported
only by the functions that return DataFrames, so the CLI stays fast.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from common.trace_stats import trace_stats
from db.schema import Job, Sample, Score, Trace
from db.states import JobState

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "leaderboard", "list_jobs", "configs_and_scores", "job_detail", "job_samples", "sample_trace", "job_trace_stats", "job_to_dict",
    "LEADERBOARD_COLUMNS", "SAMPLE_COLUMNS",
]

LEADERBOARD_COLUMNS = ["job_id", "model", "paradigm", "method", "sparsity"]
"""Leading columns of `leaderboard()`; one column per task and `average` follow."""
DENSE_METHOD = "dense"
SAMPLE_COLUMNS = [
    "task", "doc_id", "prompt", "output", "answer", "extracted", "gold", "correct", "prompt_tokens",
    "output_tokens", "thinking_tokens", "finish_reason", "truncated", "repetition", "output_chars",
    "truncated_for_storage",
]
"""Columns of `job_samples()`: `prompt`, `output` and `answer` are previews (`sample_trace()` has the
full texts); `output_chars` is the full output's length; `truncated_for_storage` says whether the
stored trace lost text to the run's size cap (None: no trace, texts stored before traces existed)."""


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
        "hidden": bool(job.hidden),
        "imported": job.imported_at is not None,
        "origin_id": job.origin_id,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "heartbeat_at": _iso(job.heartbeat_at),
    }


def list_jobs(session: Session, limit: int = 100, state: JobState | str | None = None,
              include_hidden: bool = True) -> list[dict[str, Any]]:
    """The newest jobs first, optionally of one state; `include_hidden=False` (non-admins) leaves out
    the runs an admin hid."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if not include_hidden:
        query = query.where(Job.hidden.is_(False))
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
        "imported_at": _iso(job.imported_at),
        "provenance": job.provenance_json,
        "scores": [
            {
                "task": s.task,
                "metric": s.metric,
                "value": s.value,
                "stderr": s.stderr,
                "higher_is_better": s.higher_is_better,
                "primary": s.is_primary,
                "comparability_key": s.comparability_key,
                "scorer_version": s.scorer_version,
            }
            for s in scores
        ],
        "samples": {task: {"count": count, "correct": int(correct or 0)} for task, count, correct in counts},
        "trace_stats": job.trace_stats_json if job.trace_stats_json is not None else job_trace_stats(session, job_id),
    }


def configs_and_scores(session: Session, job_ids: list[int]) -> dict[int, tuple[dict[str, Any], dict[tuple[str, str], float | None]]]:
    """{job id: (config, {(task, metric): value})} of the given jobs (two queries)."""
    if not job_ids:
        return {}
    out: dict[int, tuple[dict[str, Any], dict[tuple[str, str], float | None]]] = {
        job_id: (json.loads(config_json), {})
        for job_id, config_json in session.execute(select(Job.id, Job.config_json).where(Job.id.in_(job_ids)))
    }
    rows = session.execute(select(Score.job_id, Score.task, Score.metric, Score.value).where(Score.job_id.in_(job_ids)))
    for job_id, task, metric, value in rows:
        out[job_id][1][(task, metric)] = value
    return out


def job_trace_stats(session: Session, job_id: int) -> dict[str, Any]:
    """common.trace_stats.trace_stats of a job's stored generated samples, computed from the rows.

    As the pipeline's `RunResult.trace_stats`, only generated samples count: those with a finish
    reason, or (rows stored before migration 0002) of a task whose scores say it generates.
    """
    generating = set(session.scalars(
        select(Score.task).where(Score.job_id == job_id, Score.output_type == "generate").distinct()))
    rows = session.execute(
        select(Sample.task, Sample.correct, Sample.output_tokens, Sample.thinking_tokens,
               Sample.finish_reason, Sample.truncated, Sample.repetition).where(Sample.job_id == job_id)
    ).all()
    return trace_stats(r for r in rows if r.finish_reason is not None or r.task in generating)


def sample_trace(session: Session, job_id: int, task: str, doc_id: int) -> dict[str, Any] | None:
    """The full texts of one stored sample: prompt, output, reasoning, answer (decompressed), their
    original lengths, `stored_bytes` and `truncated_for_storage`. Samples stored before traces
    existed return their texts from `samples` (no reasoning). None if there is no such sample."""
    from db.traces import decode_trace

    trace = session.scalar(select(Trace).where(Trace.job_id == job_id, Trace.task == task, Trace.doc_id == doc_id))
    if trace is not None:
        return {"job_id": job_id, "task": task, "doc_id": doc_id, **decode_trace(trace)}
    sample = session.scalar(select(Sample).where(Sample.job_id == job_id, Sample.task == task, Sample.doc_id == doc_id))
    if sample is None:
        return None
    return {
        "job_id": job_id, "task": task, "doc_id": doc_id, "prompt": sample.prompt, "output": sample.output,
        "reasoning": None, "answer": sample.answer, "prompt_chars": len(sample.prompt),
        "output_chars": len(sample.output), "reasoning_chars": None,
        "answer_chars": None if sample.answer is None else len(sample.answer), "stored_bytes": None,
        "truncated_for_storage": False,
    }


def job_samples(session: Session, job_id: int, task: str | None = None, limit: int = 1000) -> "pd.DataFrame":
    """Stored samples of a finished job, in task and doc order (columns: `SAMPLE_COLUMNS`)."""
    import pandas as pd

    query = (
        select(Sample, Trace.truncated_for_storage)
        .outerjoin(Trace, (Trace.job_id == Sample.job_id) & (Trace.task == Sample.task) & (Trace.doc_id == Sample.doc_id))
        .where(Sample.job_id == job_id)
        .order_by(Sample.task, Sample.doc_id)
        .limit(limit)
    )
    if task is not None:
        query = query.where(Sample.task == task)
    rows = []
    for sample, cut in session.execute(query):
        row = {c: getattr(sample, c) for c in SAMPLE_COLUMNS[:-1]}
        if row["output_chars"] is None:
            row["output_chars"] = len(sample.output)
        rows.append({**row, "truncated_for_storage": cut})
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def leaderboard(session: Session, model: str | None = None, paradigm: str | None = None) -> "pd.DataFrame":
    """Primary metric per task of the latest succeeded job of every config, one row per run.

    Columns: job_id, model, paradigm, method, sparsity, one per task (sorted), and `average` (mean
    of the higher-is-better primary metrics of the row). Dense baselines come first, then by model,
    paradigm, method and sparsity.
    """
    import pandas as pd

    latest = (
        select(func.max(Job.id).label("job_id"))
        .where(Job.state == JobState.SUCCEEDED, Job.hidden.is_(False))
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
