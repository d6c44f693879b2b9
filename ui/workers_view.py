"""The Queue tab's Workers panel, without Gradio: every worker the queue has heard from lately, with
what it can run (device, accelerator memory, models, tasks), its job and its last heartbeat.

Capabilities come from the worker registry (`jobs.registry.list_workers`, as each worker last
reported them). Every string is escaped: worker ids carry host names and model ids chosen by
whoever started the worker.
"""
from __future__ import annotations

import html
from collections import Counter
from typing import Any

from backend.tasks import list_tasks
from db.session import read_session
from jobs.registry import ONLINE_STATUSES, STALE_LEASES, list_workers
from ui.services import format_seconds, state_badge

__all__ = ["workers_html", "render_workers"]

SHOWN_STATUSES = (*ONLINE_STATUSES, "stale")
"""Stopped workers exited cleanly; they are counted, not listed."""
_HEADERS = ("worker", "status", "device", "models", "tasks", "job", "last heartbeat")


def workers_html() -> str:
    """The Workers panel for the workers in the database."""
    with read_session() as session:
        workers = list_workers(session)
    return render_workers(workers, [task.name for task in list_tasks()])


def render_workers(workers: list[dict[str, Any]], all_tasks: list[str]) -> str:
    """HTML of `list_workers` rows: a one-line summary, then a table of the online and stale ones."""
    if not workers:
        return ('<div class="pb-empty" id="pb-workers-empty">No worker has been seen yet, so queued jobs wait. '
                "Start one beside the database with <code>python -m jobs worker</code>, or a GPU machine with "
                "<code>python -m jobs worker --server URL</code> (README: <em>Remote GPU workers</em>).</div>")
    counts = Counter(worker["status"] for worker in workers)
    online = sum(counts[status] for status in ONLINE_STATUSES)
    summary = f"{online} online ({counts['running']} running, {counts['idle']} idle)"
    if counts["stale"]:
        summary += f"; {counts['stale']} stale (silent for {STALE_LEASES} leases: died or lost the server)"
    if counts["stopped"]:
        summary += f"; {counts['stopped']} stopped, not listed"
    shown = [worker for worker in workers if worker["status"] in SHOWN_STATUSES]
    rows = "".join(_row(worker, all_tasks) for worker in shown)
    table = (f'<table class="pb-mini pb-workers-table"><tr>{"".join(f"<th>{h}</th>" for h in _HEADERS)}</tr>'
             f"{rows}</table>") if shown else ""
    return f'<div class="pb-workers"><p class="pb-note" id="pb-workers-summary">{summary}.</p>{table}</div>'


def _row(worker: dict[str, Any], all_tasks: list[str]) -> str:
    esc = html.escape
    caps = worker.get("capabilities")
    job = worker.get("current_job")
    cells = [
        f"<code>{esc(str(worker['id']))}</code>",
        state_badge(worker["status"]),
        esc(_device(caps)),
        _models(caps),
        _tasks(caps, all_tasks),
        "" if job is None else f"job {int(job)}",
        f"{esc(format_seconds(worker['seconds_since_heartbeat']))} ago",
    ]
    return f'<tr class="pb-worker pb-worker-{esc(worker["status"])}">{"".join(f"<td>{c}</td>" for c in cells)}</tr>'


def _device(caps: dict[str, Any] | None) -> str:
    if caps is None:
        return "not reported"
    memory = caps.get("accelerator_memory_gb")
    if caps.get("device") == "cuda":
        return "CUDA" + (f", {memory:.0f} GB" if memory is not None else ", memory unknown")
    return "CPU"


def _models(caps: dict[str, Any] | None) -> str:
    if caps is None:
        return "not reported"
    kinds = ["builtin"]
    if caps.get("hub"):
        kinds.append("hub")
    if caps.get("local_dirs"):
        kinds.append("local directories")
    listed = [html.escape(str(model)) for model in caps.get("models") or ()]
    return html.escape(", ".join(kinds)) + (f"; listed: {', '.join(listed)}" if listed else "")


def _tasks(caps: dict[str, Any] | None, all_tasks: list[str]) -> str:
    tasks = None if caps is None else caps.get("tasks")
    if tasks is None:
        return "not reported"
    has = set(tasks)
    missing = [task for task in all_tasks if task not in has]
    if not missing:
        return f"all {len(all_tasks)}"
    count = f"{len(all_tasks) - len(missing)} of {len(all_tasks)}"
    return f"<details><summary>{count}</summary>missing data: {html.escape(', '.join(missing))}</details>"
