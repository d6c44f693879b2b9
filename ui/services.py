"""What the Submit, Queue and Findings tabs' callbacks do, without Gradio: validate and submit configs,
detect duplicates, read the queue, render job panels and findings. Every string that came from a user
or a model is escaped: `escape` before Markdown, `html.escape` before HTML."""
from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select

from backend.config import ConfigError, JobConfig, config_hash, parse_config_text
from backend.models.ids import model_label
from db import queries
from db.schema import Job
from db.session import read_session
from jobs import access
from jobs.access import ANONYMOUS, AccessError, User
from db.states import LIVE_STATES, JobState
from jobs.states import InvalidTransition, JobNotFound
from jobs.waiting import add_waiting_reasons, waiting_reasons
from ui.markdown import escape

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
DEFAULT_EXAMPLE = "tiny-dense.yaml"
ALL = "(all)"
QUEUE_COLUMNS = ["id", "state", "progress", "stage", "elapsed", "worker", "attempts", "model", "method",
                 "sparsity", "submitter", "error"]
QUEUE_DATATYPES = ["number", "html", "html", "str", "str", "str", "number", "str", "str", "number", "str", "str"]
"""`state` and `progress` cells are HTML built here from the state enum and a number only; every
other cell is plain text (Gradio shows `str` cells as text, never as markup)."""


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES_DIR.glob("*.yaml"))


def example_text(name: str) -> str:
    if name not in example_names():
        return ""
    return (EXAMPLES_DIR / name).read_text(encoding="utf-8")


def submit_text(text: str, force: bool, user: User = ANONYMOUS) -> str:
    """Validate a YAML/JSON config and queue it as `user` (login and quotas: `jobs.access`); a
    Markdown message either way."""
    stripped = (text or "").lstrip()
    fmt = "json" if stripped.startswith("{") else "yaml"
    try:
        config = parse_config_text(text or "", fmt)
        job, existing = access.submit_as(user, config, force=bool(force))
    except (ConfigError, AccessError) as exc:
        return f"**Not submitted.** {escape(exc)}"
    if existing:
        return (f"This configuration already exists as **job {job.id}** ({job.state.value}). "
                "Tick *Force* to run it again.")
    return f"Queued as **job {job.id}**. Follow it in the **Queue** tab."


def state_badge(state: str) -> str:
    """HTML badge for a job state or a verdict (a known word: the class is built from it, escaped anyway)."""
    word = html.escape(str(state))
    return f'<span class="pb-badge pb-badge-{word}">{word}</span>'


def progress_bar(fraction: float | None, state: str = "") -> str:
    percent = max(0.0, min(100.0, 100 * float(fraction or 0.0)))
    return (f'<div class="pb-progress pb-progress-{html.escape(state)}" role="progressbar" '
            f'aria-valuenow="{percent:.0f}" aria-valuemin="0" aria-valuemax="100">'
            f'<span style="width:{percent:.0f}%"></span></div><span class="pb-progress-text">{percent:.0f}%</span>')


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.removesuffix("Z")).replace(tzinfo=UTC)


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def elapsed(job: dict[str, Any], now: datetime | None = None) -> str:
    """Running or finished: time since start (to the end); queued: time waiting."""
    now = now or datetime.now(UTC)
    started, finished = _parse_time(job.get("started_at")), _parse_time(job.get("finished_at"))
    if started is not None:
        return format_seconds(((finished or now) - started).total_seconds())
    created = _parse_time(job.get("created_at"))
    if job.get("state") == JobState.QUEUED.value and created is not None:
        return f"waiting {format_seconds((now - created).total_seconds())}"
    return ""


def queue_row(job: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    error = f"{job['error_type']}: {job['error_message']}" if job.get("error_type") else ""
    stage = job.get("stage_text") or job.get("stage") or ""
    if job.get("imported"):
        stage = "imported (run elsewhere)"
    if job.get("cancel_requested") and job.get("state") == JobState.RUNNING.value:
        stage = f"cancel requested; {stage}"
    if job.get("waiting_reason"):
        stage = f"waiting: {job['waiting_reason']}"
    return {
        "id": job["id"], "state": state_badge(job["state"]), "progress": progress_bar(job.get("progress"), job["state"]),
        "stage": stage, "elapsed": elapsed(job, now), "worker": job.get("worker_id") or "",
        "attempts": job.get("attempts") or 0, "model": model_label(job.get("model") or ""), "method": job.get("method"),
        "sparsity": job.get("sparsity"), "submitter": job.get("submitter") or "", "error": error,
    }


def queue_view(user: User = ANONYMOUS) -> pd.DataFrame:
    """The newest jobs; hidden runs only for admins; a queued job no online worker can run says why."""
    with read_session() as session:
        jobs = add_waiting_reasons(session, queries.list_jobs(session, limit=200, include_hidden=user.is_admin))
    return pd.DataFrame([queue_row(job) for job in jobs], columns=QUEUE_COLUMNS)


def selected_job_id(frame: pd.DataFrame | None, row: int | None) -> int | None:
    """The job id of a clicked table row."""
    if frame is None or row is None or not 0 <= row < len(frame):
        return None
    return int(frame.iloc[row]["id"])


def job_panel(job_id: float | None, user: User = ANONYMOUS) -> str:
    """HTML summary of one job as `user` may see it (`access.visible_job_detail`): state, progress,
    stage, timing; a failure's type, message and (for those who may manage it) log tail. Every text
    from the job is escaped."""
    if not job_id:
        return ('<div class="pb-empty">No job selected. Click a row of the table (or type a job id) to see '
                "its progress, error and log, and to cancel or retry it.</div>")
    detail = access.visible_job_detail(user, job_id)
    if detail is None:
        return f'<div class="pb-empty">There is no job {html.escape(_shown_id(job_id))}.</div>'
    esc = html.escape
    facts = [("model", detail["model"]), ("method", f"{detail['method']} @ {detail['sparsity']:g}"),
             ("paradigm", detail["paradigm"]), ("worker", detail["worker_id"] or "-"),
             ("attempts", detail["attempts"]), ("elapsed", elapsed(detail) or "-"),
             ("submitter", detail["submitter"] or "-"), ("config hash", (detail["config_hash"] or "")[:12])]
    parts = [(f'<div class="pb-job"><div class="pb-job-head"><strong>Job {detail["id"]}</strong> '
              f'{state_badge(detail["state"])}{progress_bar(detail["progress"], detail["state"])}</div>')]
    stage = detail["stage_text"] or detail["stage"]
    if stage:
        parts.append(f'<p class="pb-stage">{esc(str(stage))}</p>')
    if detail["cancel_requested"] and detail["state"] == JobState.RUNNING.value:
        parts.append('<p class="pb-note">Cancel requested: the worker stops it within one heartbeat.</p>')
    with read_session() as session:
        waiting = waiting_reasons(session, [detail["id"]]).get(detail["id"])
    if waiting:
        parts.append(f'<p class="pb-note pb-waiting">Waiting: {esc(waiting)}. See <em>Workers</em> below.</p>')
    parts.append('<dl class="pb-facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in facts)
                 + "</dl>")
    if detail["error_type"]:
        parts.append(f'<div class="pb-error"><p><strong>{esc(detail["error_type"])}</strong>: '
                     f'{esc(detail["error_message"] or "")}</p>')
        if detail["log_tail"]:
            parts.append(f'<details open><summary>Log tail</summary><pre>{esc(detail["log_tail"][-8000:])}</pre>'
                         "</details>")
        parts.append("</div>")
    if detail["scores"]:
        rows = "".join(f"<tr><td>{esc(s['task'])}</td><td>{esc(s['metric'])}</td><td>{_fmt(s['value'])}</td></tr>"
                       for s in detail["scores"] if s["primary"])
        parts.append(f'<table class="pb-mini"><tr><th>task</th><th>metric</th><th>value</th></tr>{rows}</table>')
    parts.append("</div>")
    return "".join(parts)


def _shown_id(job_id: Any) -> str:
    """A job id as typed, for "there is no job ..." (short: it may be any number)."""
    number = access.job_id_from(job_id)
    return str(number) if number is not None else str(job_id)[:24]


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def job_visible(job_id: float | None, user: User = ANONYMOUS) -> bool:
    """Whether `user` can open the job's full record (it exists, and is not hidden from them)."""
    return bool(job_id) and access.visible_job_detail(user, job_id) is not None


def job_actions(job_id: float | None, user: User = ANONYMOUS) -> tuple[bool, bool, str]:
    """(cancel allowed, retry allowed, a sentence saying why a button is off)."""
    if not job_id:
        return False, False, "Select a job to cancel or retry it."
    detail = access.visible_job_detail(user, job_id)
    if detail is None:
        return False, False, f"There is no job {_shown_id(job_id)}."
    job_id = detail["id"]
    state = JobState(detail["state"])
    if not access.can_manage(user, int(job_id)):
        return False, False, f"Only its submitter or an admin can cancel or retry job {int(job_id)}."
    can_cancel = state in (JobState.QUEUED, JobState.RUNNING)
    can_retry = state in (JobState.FAILED, JobState.CANCELLED)
    if can_cancel:
        return True, False, f"Job {int(job_id)} is {state.value}: it can be cancelled."
    if can_retry:
        return False, True, f"Job {int(job_id)} is {state.value}: retry queues it again."
    return False, False, f"Job {int(job_id)} succeeded: submit its config with *Force* to run it again."


def find_duplicate(config: JobConfig) -> dict[str, Any] | None:
    """The newest job with the same config hash that is queued, running or succeeded (what submit
    would return instead of queueing), as {"id", "state"}; None when the config would be queued."""
    with read_session() as session:
        job = session.scalar(select(Job).where(Job.config_hash == config_hash(config), Job.state.in_(LIVE_STATES))
                             .order_by(Job.id.desc()).limit(1))
        return None if job is None else {"id": job.id, "state": job.state.value}


def duplicate_message(duplicate: dict[str, Any] | None) -> str:
    if duplicate is None:
        return ""
    return (f"**Duplicate:** this exact configuration is already {duplicate['state']} as "
            f"[job {duplicate['id']}](?tab=queue&job={duplicate['id']}). Submitting returns that job; "
            "tick *Force* to run it again.")


def job_details(job_id: float | None, user: User = ANONYMOUS) -> str:
    """JSON text of one job as `user` may see it (shown in a code box, so nothing in it is rendered
    as markup)."""
    if not job_id:
        return "Enter a job id from the table above."
    detail = access.visible_job_detail(user, job_id)
    if detail is None:
        return f"No job {_shown_id(job_id)}."
    shown = {key: detail[key] for key in ("id", "state", "error_type", "error_message", "log_tail", "scores",
                                           "prune_report", "efficiency", "stage_seconds", "config", "manifest")}
    return json.dumps(shown, indent=2, default=str)


def cancel_job(job_id: float | None, user: User = ANONYMOUS) -> str:
    if not job_id:
        return "Enter a job id first."
    if access.visible_job_detail(user, job_id) is None:
        return f"There is no job {escape(_shown_id(job_id))}."
    job_id = access.job_id_from(job_id)
    try:
        state = access.cancel_as(user, job_id)
    except (JobNotFound, InvalidTransition, AccessError) as exc:
        return escape(exc)
    if state.value == "running":
        return f"Cancel requested for job {int(job_id)}; its worker stops it within one heartbeat."
    return f"Job {int(job_id)} is {state.value}."


def retry_job(job_id: float | None, user: User = ANONYMOUS) -> str:
    if not job_id:
        return "Enter a job id first."
    if access.visible_job_detail(user, job_id) is None:
        return f"There is no job {escape(_shown_id(job_id))}."
    job_id = access.job_id_from(job_id)
    try:
        job = access.retry_as(user, job_id)
    except (JobNotFound, InvalidTransition, AccessError) as exc:
        return escape(exc)
    return f"Job {job.id} queued again."


_QUEUED_JOB = re.compile(r"\*\*job (\d+)\*\*")


def submitted_job_id(message: str) -> Any:
    """After a submit: the job id its message names (the Queue tab then shows that job), else no change."""
    import gradio as gr

    match = _QUEUED_JOB.search(message or "")
    return int(match.group(1)) if match else gr.update()


# --- presets ------------------------------------------------------------------------------------


def _presets_module():
    try:
        from jobs import presets
    except ImportError:  # built without presets: the examples remain
        return None
    return presets


def preset_choices() -> list[tuple[str, str]]:
    module = _presets_module()
    if module is None:
        return []
    ordered = sorted(module.list_presets(), key=lambda p: p["n_jobs"])  # the quickest first: the default
    return [(f"{p['name']} ({p['n_jobs']} jobs)", p["name"]) for p in ordered]


def preset_overview(name: str | None) -> tuple[str, list[tuple[str, int]]]:
    """(Markdown description with one line per job, choices to open one job in the editor)."""
    module = _presets_module()
    if not name or module is None:
        return "", []
    try:
        documents = module.preset_documents(name)
    except KeyError as exc:
        return f"**Unknown preset:** {escape(exc)}", []
    description = next((p["description"] for p in module.list_presets() if p["name"] == name), "")
    labels = []
    for i, doc in enumerate(documents):
        pruning = doc.get("pruning") or {}
        calibration = (doc.get("calibration") or {}).get("source", "-")
        label = (f"{i + 1}. {doc.get('model')} · {doc.get('paradigm', 'instruct')} · "
                 f"{pruning.get('method', 'dense')} {pruning.get('sparsity', 0.0)} · calibration {calibration}")
        labels.append((label, i))
    text = (f"**{escape(name)}**: {escape(description)}  \n{len(documents)} jobs; *Submit preset* validates them all, "
            "then queues each (configs that already ran are not run again).")
    return text, labels


def preset_job_yaml(name: str | None, index: int | None) -> Any:
    import gradio as gr

    module = _presets_module()
    if module is None or not name or index is None:
        return gr.update()
    from ui.forms import config_to_yaml

    documents = module.preset_documents(name)
    return config_to_yaml(documents[int(index)]) if 0 <= int(index) < len(documents) else gr.update()


def submit_preset(name: str | None, user: User = ANONYMOUS) -> str:
    module = _presets_module()
    if module is None:
        return "Presets are not available in this build."
    if not name:
        return "Choose a preset first."
    try:
        submitted = access.submit_many_as(user, module.checked_configs(name))
    except (ConfigError, KeyError, AccessError) as exc:
        return f"**Preset not submitted.** {escape(exc)}"
    new = [job.id for job, existing in submitted if not existing]
    old = [job.id for job, existing in submitted if existing]
    parts = [f"Preset **{escape(name)}**: {len(new)} job(s) queued"]
    if new:
        parts.append(f" (jobs {_id_ranges(new)})")
    if old:
        parts.append(f"; {len(old)} already existed (jobs {_id_ranges(old)})")
    return "".join(parts) + ". Follow them in the **Queue** tab."


def _id_ranges(ids: list[int]) -> str:
    ids = sorted(ids)
    spans, start, prev = [], ids[0], ids[0]
    for job_id in ids[1:] + [None]:
        if job_id is not None and job_id == prev + 1:
            prev = job_id
            continue
        spans.append(str(start) if start == prev else f"{start}–{prev}")
        if job_id is not None:
            start = prev = job_id
    return ", ".join(spans)


# --- findings -----------------------------------------------------------------------------------


VERDICT_WORDS = {"supported": "supported", "contradicted": "contradicted", "inconclusive": "inconclusive"}


def findings_html(model: str | None = None, paradigm: str | None = None, pairing: str = "auto") -> str:
    """The seed findings with their verdicts, rules and the numbers behind them (escaped HTML).
    `pairing`: how runs of two families pair (`db.findings.PAIRING_CHOICES`)."""
    try:
        from db import findings as findings_db
    except ImportError:
        return '<div class="pb-empty">Findings are not available in this build.</div>'
    model = None if model in (None, "", ALL) else model
    paradigm = None if paradigm in (None, "", ALL) else paradigm
    try:
        with read_session() as session:
            verdicts = findings_db.findings(session, model=model, paradigm=paradigm, pairing=pairing or "auto")
    except ValueError as exc:
        return f'<div class="pb-empty">{html.escape(str(exc))}</div>'
    note = ""
    if not any((v.numbers or {}).get("n") for v in verdicts):
        note = ('<div class="pb-empty">No paired results yet, so every verdict is inconclusive. Submit a study '
                "preset below (study-smoke is the quickest); verdicts update as its runs finish.</div>")
    return note + '<div class="pb-findings">' + "".join(render_verdict(v) for v in verdicts) + "</div>"


def render_verdict(verdict: Any) -> str:
    """One finding's card: verdict and statement, its rule in words, estimate, interval, n, runs, reason."""
    esc = html.escape
    word = VERDICT_WORDS.get(verdict.verdict, "inconclusive")
    numbers = dict(verdict.numbers or {})
    stats = []
    if numbers.get("estimate") is not None:
        stats.append(f"estimate {_fmt(numbers.get('estimate'))}, 95% CI [{_fmt(numbers.get('ci_low'))}, "
                     f"{_fmt(numbers.get('ci_high'))}]")
    stats.append(f"n = {esc(str(numbers.get('n', 0)))} documents ({esc(str(numbers.get('n_paired', 0)))} "
                 "paired values)")
    runs = numbers.get("runs")
    if isinstance(runs, dict) and runs:
        stats.append("; ".join(f"{esc(str(side))}: jobs {esc(', '.join(str(j) for j in ids))}"
                               for side, ids in runs.items()))
    reason = getattr(verdict, "reason", "")
    return (f'<div class="pb-card pb-verdict-{word}" id="pb-finding-{esc(verdict.key)}">'
            f'<div class="pb-card-head">{state_badge(word)} <strong>{esc(verdict.statement)}</strong></div>'
            f'<p class="pb-rule"><em>Rule:</em> {esc(verdict.rule)}</p>'
            f'<p class="pb-numbers">{" · ".join(stats)}</p>'
            + (f'<p class="pb-note">{esc(reason)}</p>' if reason else "") + "</div>")


def findings_models() -> list[str]:
    with read_session() as session:
        models = session.scalars(select(Job.model).where(Job.state == JobState.SUCCEEDED).distinct()).all()
    return [ALL, *sorted(models)]
