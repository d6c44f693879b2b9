"""Publish a finished run's pruned model to the Hub: the run detail's "Publish" action.

    publish_run(user, job_id, repo_id, private=False) -> Pushed

The run must have succeeded and kept its model (`keep_model: true`: saved under
`backend.publish.export.kept_model_dir`, on the machine that ran it). Who may publish: `jobs.access.
require_publish` (admins; on a Space the run's submitter; hidden runs only admins). The push uses the
deployment's token (HF_TOKEN) and a model card from the run's manifest, scores, measured speed-up and
a link back to the run (`settings.public_url()`). Every refusal is a `PublishError` whose message
says what is needed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import settings
from backend.publish.hub import Pushed, check_repo_id, push_model
from backend.publish.model_card import RunSummary, model_card
from db.schema import Job, Score
from jobs import access
from db.states import JobState

__all__ = ["PublishError", "publish_run", "run_summary"]


class PublishError(Exception):
    """A publication refused or failed; str() is a sentence for the user."""


def publish_run(user: access.User, job_id: int, repo_id: str, private: bool = False) -> Pushed:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        check_repo_id((repo_id or "").strip())
    except ValueError as exc:
        raise PublishError(f"Give the Hub repo as owner/name: {exc}.") from None
    repo_id = repo_id.strip()
    job, directory, manifest = _kept_model(user, int(job_id))
    token = settings.hub_token()
    if not token:
        raise PublishError("Publishing needs a Hugging Face token with write access: set HF_TOKEN "
                           "(on a Space: a secret).")
    card = model_card(manifest, directory, repo_id, run_summary(job.id))
    pruning = manifest["config"].get("pruning") or {"method": "dense", "sparsity": 0.0}
    message = f"PruneBoard run {job.id}: {job.model} pruned with {pruning['method']} at {pruning['sparsity']:g}"
    try:
        pushed = push_model(directory, repo_id, token, card, private=private, message=message)
    except HfHubHTTPError as exc:
        raise PublishError(f"The Hub refused the push to {repo_id}: {' '.join(str(exc).split())[:300]}") from None
    access.record_publish(user, job.id, repo_id)
    return pushed


def run_summary(job_id: int) -> RunSummary:
    """The run's primary scores with their comparability keys, its measured speed-up over its dense
    baseline on the leaderboard (same device) and the link to it."""
    from sqlalchemy import select

    from db import leaderboard
    from db.session import read_session

    with read_session() as session:
        scores = [{"task": s.task, "metric": s.metric, "value": s.value, "stderr": s.stderr,
                   "comparability_key": s.comparability_key}
                  for s in session.scalars(select(Score).where(Score.job_id == job_id, Score.is_primary.is_(True))
                                           .order_by(Score.task))]
        frame = leaderboard.board(session).frame
        job = session.get(Job, job_id)
        device = (job.efficiency_json or {}).get("device_name") if job is not None else None
    row = frame[frame["job_id"] == job_id] if not frame.empty else frame
    speedup = baseline = None
    if len(row):
        speedup = _finite(row.iloc[0].get("speedup_measured"))
        baseline = row.iloc[0].get("baseline_job_id")
        baseline = int(baseline) if _finite(baseline) is not None else None
    base_url = settings.public_url()
    url = f"{base_url}/?tab=queue&job={job_id}" if base_url else None
    return RunSummary(job_id=job_id, url=url, scores=scores, speedup=speedup, baseline_job_id=baseline, device=device)


def _kept_model(user: access.User, job_id: int) -> tuple[Job, Path, dict[str, Any]]:
    """(job, directory of its kept model, manifest for the card), after every check."""
    from db.session import read_session

    with read_session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise PublishError(f"No job {job_id}.")
        try:
            access.require_publish(user, job)
        except access.AccessError as exc:
            raise PublishError(str(exc)) from None
        if job.state != JobState.SUCCEEDED:
            raise PublishError(f"Job {job_id} is {job.state.value}: only a succeeded run can be published.")
        config = json.loads(job.config_json)
        manifest = {"config": config, **(job.manifest_json or {}), "prune_report": job.prune_report_json or {}}
    if not config.get("keep_model"):
        raise PublishError(f"Job {job_id} did not keep its pruned model. Fork it with `keep_model: true` (Rerun / "
                           "fork, tick Force) and publish that run, or prune its config with `python -m jobs prune "
                           "CONFIG --out DIR --push-to-hub OWNER/NAME`.")
    saved = manifest.get("saved_model")
    directory = Path(saved) if saved else None
    if directory is None or not (directory / "config.json").is_file():
        raise PublishError(f"Job {job_id}'s pruned model is not on this server (it was kept at {saved or 'no path'} "
                           "on the worker that ran it). Publish it from that machine with `python -m jobs prune "
                           "CONFIG --out DIR --push-to-hub OWNER/NAME`.")
    return job, directory, manifest


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None
