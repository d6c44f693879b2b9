"""What the run detail's "lm-eval files" and "Publish to the Hub" buttons do, without Gradio: each
returns what to show (a file to download, or Markdown; every user or model string escaped).

* `lm_eval_files(job_id, user)`: a zip of the run's lm-eval files (`jobs.run_files`); hidden runs
  for admins only.
* `publish(job_id, repo_id, user)`: push the run's kept model with its card (`jobs.publish`).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from jobs.access import User
from ui.markdown import escape

__all__ = ["RUN_FILES_DIR", "ZIP_RETENTION_S", "lm_eval_files", "publish"]

logger = logging.getLogger(__name__)

RUN_FILES_DIR = Path(tempfile.gettempdir()) / "pruneboard-run-files"
"""Where the zips are built. Gradio copies a returned file into its own cache (cleaned by the app's
`delete_cache`), so ours are only needed briefly."""
ZIP_RETENTION_S = 600.0


def lm_eval_files(job_id: float | int | None, user: User) -> tuple[str | None, str]:
    """(zip path or None, Markdown message)."""
    from jobs.run_files import RunFilesError, run_files_zip

    if not job_id:
        return None, "Open a run first: click a row of the table or enter its job id."
    _remove_old_zips()
    RUN_FILES_DIR.mkdir(parents=True, exist_ok=True)
    try:
        archive = run_files_zip(int(job_id), include_hidden=user.is_admin, directory=RUN_FILES_DIR)
    except RunFilesError as exc:
        return None, f"**No files.** {escape(exc)}"
    return str(archive), (f"lm-eval files of job {int(job_id)}: `results_<date>.json` and one "
                          "`samples_<task>_<date>.jsonl` per task, as lm-eval's EvaluationTracker writes them.")


def publish(job_id: float | int | None, repo_id: str | None, user: User) -> str:
    """Markdown saying where the model went, or why it did not."""
    from jobs.publish import PublishError, publish_run

    if not job_id:
        return "Open a run first: click a row of the table or enter its job id."
    try:
        pushed = publish_run(user, int(job_id), repo_id or "")
    except PublishError as exc:
        return f"**Not published.** {escape(exc)}"
    except Exception as exc:  # network failures and the like: say so, keep the app running
        logger.warning("publishing job %s failed", job_id, exc_info=True)
        return f"**Not published.** {escape(type(exc).__name__)}: {escape(exc)}"
    return f"Published job {int(job_id)} to [{escape(repo_id)}]({pushed.repo_url}) (commit {escape(pushed.commit_url)})."


def _remove_old_zips() -> None:
    """Delete zips built more than `ZIP_RETENTION_S` ago (a newer one may still be on its way to Gradio)."""
    if not RUN_FILES_DIR.is_dir():
        return
    cutoff = time.time() - ZIP_RETENTION_S
    for folder in RUN_FILES_DIR.glob("pruneboard-run-*"):
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:  # removed by a concurrent request
            continue
