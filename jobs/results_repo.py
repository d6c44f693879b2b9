"""Results that survive a Space restart: a results bundle kept in a Hub dataset repo.

A Space without the paid `/data` volume loses its disk (database and backups alike) at every
restart. With `PRUNEBOARD_RESULTS_REPO` (a dataset repo id) and a write token (`HF_TOKEN`), the app
pushes every finished run, hidden ones included and marked so, as one bundle
(`RESULTS_FILE`, `jobs.bundle`) to that repo: after a job finishes (debounced) and at least every
`PRUNEBOARD_RESULTS_PUSH_SECONDS`. On start, an empty database is restored from it first; the
shipped snapshot is imported only when there is nothing to restore.

The Hub is reached with `huggingface_hub` (its HF_ENDPOINT decides where, which the tests point at
a loopback server).
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import func, select

from common import settings
from db.schema import Job
from jobs.bundle import export_bundle, seed_empty_database
from db.states import JobState

__all__ = ["RESULTS_FILE", "ResultsPusher", "configured", "ephemeral_storage_warning", "push_results",
           "restore_results", "results_state"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "pruneboard-results.jsonl.gz"
"""The bundle's path inside the results repo."""


def configured() -> bool:
    """A results repo and a token to write it are both set."""
    return bool(settings.results_repo() and settings.hub_token())


def _api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=settings.hub_endpoint(), token=settings.hub_token())


def results_state() -> tuple[int, int, int]:
    """What a push would contain, cheaply: (succeeded runs, newest succeeded id, hidden runs)."""
    from db.session import read_session

    with read_session() as session:
        done = Job.state == JobState.SUCCEEDED
        count, newest = session.execute(select(func.count(Job.id), func.max(Job.id)).where(done)).one()
        hidden = session.scalar(select(func.count(Job.id)).where(done, Job.hidden.is_(True)))
    return int(count or 0), int(newest or 0), int(hidden or 0)


def push_results() -> dict[str, int]:
    """Export every succeeded run (hidden ones marked) and commit the bundle to the results repo."""
    repo = settings.results_repo()
    api = _api()
    api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pruneboard-push-") as workdir:
        path = Path(workdir) / RESULTS_FILE
        counts = export_bundle(path, include_hidden=True)
        api.upload_file(path_or_fileobj=str(path), path_in_repo=RESULTS_FILE, repo_id=repo, repo_type="dataset",
                        commit_message=f"PruneBoard results: {counts['runs']} run(s)")
    logger.info("pushed %d run(s) to the results repo %s", counts["runs"], repo)
    return counts


def restore_results() -> dict[str, int] | None:
    """Import the results repo's bundle into an empty, never-seeded database (one transaction).
    None when there is nothing to restore (no repo, no bundle in it, or the database is not empty)."""
    if not configured():
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    repo = settings.results_repo()
    with tempfile.TemporaryDirectory(prefix="pruneboard-restore-") as workdir:
        try:
            path = hf_hub_download(repo, RESULTS_FILE, repo_type="dataset", token=settings.hub_token(),
                                   local_dir=workdir, endpoint=settings.hub_endpoint())
        except (EntryNotFoundError, RepositoryNotFoundError):
            logger.info("the results repo %s holds no results yet", repo)
            return None
        counts = seed_empty_database(path, source_name=f"{repo}/{RESULTS_FILE}")
    if counts is not None:
        logger.info("restored %d run(s) from the results repo %s", counts["imported"], repo)
    return counts


class ResultsPusher(threading.Thread):
    """Pushes the results when they changed: `debounce` seconds after the last change (so a burst of
    finishing jobs makes one push), and at the latest `interval` seconds after the first change not
    yet pushed. A failed push is logged and tried again at the next check."""

    def __init__(self, interval: float, debounce: float, check_every: float = 5.0):
        super().__init__(name="pruneboard-results-push", daemon=True)
        self.interval, self.debounce, self.check_every = interval, debounce, check_every
        self._stop_event = threading.Event()
        self.pushed_state = results_state()
        self.pushes = 0

    def run(self) -> None:
        last, changed_at, pending_since = self.pushed_state, 0.0, None
        while not self._stop_event.wait(self.check_every):
            try:
                state, now = results_state(), time.monotonic()
                if state == self.pushed_state:
                    last, pending_since = state, None
                    continue
                if state != last:
                    last, changed_at = state, now
                pending_since = pending_since if pending_since is not None else now
                if now - changed_at >= self.debounce or now - pending_since >= self.interval:
                    self._push(state)
                    pending_since = None
            except Exception:  # the Hub or the database failing must not end the thread
                logger.exception("pushing the results failed; trying again in %.0f s", self.check_every)

    def _push(self, state: tuple[int, int, int]) -> None:
        push_results()
        self.pushed_state = state
        self.pushes += 1

    def stop(self, final_push: bool = True) -> None:
        """Stop; push once more if anything changed since the last push."""
        self._stop_event.set()
        self.join(timeout=30)
        if final_push:
            try:
                state = results_state()
                if state != self.pushed_state:
                    self._push(state)
            except Exception:
                logger.exception("the final push of the results failed")


def ephemeral_storage_warning() -> str | None:
    """Space mode without /data and without a results repo: results are lost at the next restart."""
    if not settings.space_mode() or configured():
        return None
    if settings.home().resolve() == settings.DATA_VOLUME.resolve():
        return None
    return ("This Space has no persistent storage (/data) and no results repo (PRUNEBOARD_RESULTS_REPO with an "
            "HF_TOKEN that can write it): the database and its backups are lost at the next restart. Add "
            "persistent storage or set a results repo.")
