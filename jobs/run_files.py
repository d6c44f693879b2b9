"""A finished run as lm-eval's own files (`backend.evaluation.lm_eval_format`): `python -m jobs results run-files
ID DIR` and the run detail's download in the browser.

    write_run_files(job_id, out_dir, include_hidden=False) -> [paths]
    run_files_zip(job_id, include_hidden=False) -> path of a zip of the same files
    log_finished_run(job_id) -> experiment loggers it went to (`backend.experiment_log`; none: nothing)

Only succeeded runs have files. A hidden run is written only with `include_hidden` (the CLI's
`--include-hidden`; in the browser, admins). Every check runs before anything is written: a refused
request leaves `out_dir` untouched (not even created). The files are written into a temporary
folder inside `out_dir` and moved into place once lm-eval has written them all.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from backend.evaluation.lm_eval_format import LmEvalRun, to_lm_eval, write_lm_eval_files
from db.schema import Job
from db.states import JobState

__all__ = ["RunFilesError", "load_lm_eval_run", "log_finished_run", "write_run_files", "run_files_zip"]

logger = logging.getLogger(__name__)


class RunFilesError(ValueError):
    """A request for run files that cannot be served; the message is one sentence for the user."""


def load_lm_eval_run(job_id: int, include_hidden: bool = False) -> LmEvalRun:
    """The stored run in lm-eval's format; RunFilesError for an unknown, unfinished or hidden run."""
    from db.session import read_session
    from jobs.bundle import load_run

    with read_session() as session:
        job = session.get(Job, int(job_id))
        if job is None:
            raise RunFilesError(f"no job with id {job_id}")
        if job.state != JobState.SUCCEEDED:
            raise RunFilesError(f"job {job_id} is {job.state.value}: only succeeded runs have result files")
        if job.hidden and not include_hidden:
            raise RunFilesError(f"job {job_id} is hidden: only admins can download it (CLI: --include-hidden)")
        run = load_run(session, job)
    return to_lm_eval(run.record, run.samples, job.id)


def write_run_files(job_id: int, out_dir: str | Path, include_hidden: bool = False) -> list[Path]:
    """Write the run's results JSON and per-task samples JSONL under `out_dir` (lm-eval's layout,
    `<model>/results_<date>.json`); return their paths."""
    lm_run = load_lm_eval_run(job_id, include_hidden)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".run-files-"))
    try:
        written = write_lm_eval_files(lm_run, staging)
        placed = []
        for path in written:
            target = out / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
            placed.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return placed


def run_files_zip(job_id: int, include_hidden: bool = False, directory: str | Path | None = None) -> Path:
    """A zip of the run's files (paths inside as in `write_run_files`) in a new temporary folder
    (or `directory`); the caller hands it to the user."""
    lm_run = load_lm_eval_run(job_id, include_hidden)
    folder = Path(tempfile.mkdtemp(prefix=f"pruneboard-run-{int(job_id)}-", dir=directory))
    files = folder / "files"
    archive = folder / f"pruneboard-job-{int(job_id)}-lm-eval.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for path in write_lm_eval_files(lm_run, files):
            bundle.write(path, path.relative_to(files).as_posix())
    shutil.rmtree(files, ignore_errors=True)
    return archive


def log_finished_run(job_id: int) -> list[str]:
    """Send a just-finished run to the configured experiment loggers (W&B, Trackio); returns their
    names. Without any configured it reads nothing. Never raises: the run is stored already."""
    from backend.experiment_log import enabled_loggers, log_run

    if not enabled_loggers():
        return []
    try:
        lm_run = load_lm_eval_run(job_id, include_hidden=True)
    except Exception:
        logger.warning("job %d: could not read the run for experiment logging", job_id, exc_info=True)
        return []
    return log_run(lm_run)
