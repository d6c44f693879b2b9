"""What the UI's callbacks do, without Gradio: validate and submit configs, read the leaderboard and
the queue. Every string that came from a user or a model is escaped before it reaches Markdown."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from backend.config import ConfigError, parse_config_text
from db import queries
from db.session import read_session
from jobs import queue
from jobs.states import InvalidTransition, JobNotFound

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
DEFAULT_EXAMPLE = "tiny-dense.yaml"
ALL = "(all)"
QUEUE_COLUMNS = ["id", "state", "progress", "stage_text", "model", "method", "sparsity", "attempts",
                 "worker_id", "created_at", "error"]


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def escape(text: Any) -> str:
    """Make untrusted text inert in Markdown: HTML tags become entities, link/emphasis syntax is escaped."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(str(text), quote=False))


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES_DIR.glob("*.yaml"))


def example_text(name: str) -> str:
    if name not in example_names():
        return ""
    return (EXAMPLES_DIR / name).read_text(encoding="utf-8")


def leaderboard_view(model: str | None, paradigm: str | None) -> tuple[pd.DataFrame, str, Any]:
    """(table, note, model choices update) for the chosen filters."""
    import gradio as gr  # only for the dropdown update object

    model_filter = None if model in (None, "", ALL) else model
    paradigm_filter = None if paradigm in (None, "", ALL) else paradigm
    with read_session() as session:
        table = queries.leaderboard(session, model=model_filter, paradigm=paradigm_filter)
        models = sorted(queries.leaderboard(session)["model"].unique().tolist())
    table = table.round(4)
    if table.empty:
        note = ("No finished runs match yet. Submit a configuration in **Submit** "
                "(the pre-filled tiny example finishes in under a minute on CPU).")
    else:
        note = (f"{len(table)} run(s). Task columns hold each task's primary metric; `average` is the mean of "
                "higher-is-better primary metrics. Dense baselines come first.")
    choices = [ALL, *models]
    return table, note, gr.update(choices=choices, value=model if model in choices else ALL)


def submit_text(text: str, force: bool) -> str:
    """Validate a YAML/JSON config and queue it; a Markdown message either way."""
    stripped = (text or "").lstrip()
    fmt = "json" if stripped.startswith("{") else "yaml"
    try:
        config = parse_config_text(text or "", fmt)
        job, existing = queue.submit(config, force=bool(force), submitter="web")
    except ConfigError as exc:
        return f"**Not submitted.** {escape(exc)}"
    if existing:
        return (f"This configuration already exists as **job {job.id}** ({job.state.value}). "
                "Tick *Force* to run it again.")
    return f"Queued as **job {job.id}**. Follow it in the **Queue** tab."


def queue_view() -> pd.DataFrame:
    with read_session() as session:
        jobs = queries.list_jobs(session, limit=200)
    rows = []
    for job in jobs:
        error = f"{job['error_type']}: {job['error_message']}" if job["error_type"] else ""
        rows.append({**job, "progress": f"{100 * (job['progress'] or 0):.0f}%", "error": error})
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def job_details(job_id: float | None) -> str:
    """JSON text of one job (shown in a code box, so nothing in it is rendered as markup)."""
    if not job_id:
        return "Enter a job id from the table above."
    with read_session() as session:
        detail = queries.job_detail(session, int(job_id))
    if detail is None:
        return f"No job {int(job_id)}."
    shown = {key: detail[key] for key in ("id", "state", "error_type", "error_message", "log_tail", "scores",
                                           "prune_report", "efficiency", "stage_seconds", "config", "manifest")}
    return json.dumps(shown, indent=2, default=str)


def cancel_job(job_id: float | None) -> str:
    if not job_id:
        return "Enter a job id first."
    try:
        state = queue.cancel(int(job_id))
    except (JobNotFound, InvalidTransition) as exc:
        return escape(exc)
    if state.value == "running":
        return f"Cancel requested for job {int(job_id)}; its worker stops it within one heartbeat."
    return f"Job {int(job_id)} is {state.value}."


def retry_job(job_id: float | None) -> str:
    if not job_id:
        return "Enter a job id first."
    try:
        job = queue.retry(int(job_id))
    except (JobNotFound, InvalidTransition) as exc:
        return escape(exc)
    return f"Job {job.id} queued again."
