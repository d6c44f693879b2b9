"""Whether a job's task data can be had, asked at submit and again by the worker before the model loads.

The rule (README, "Task data"):
* a worker (pipeline preflight, `ensure_task_data`) runs a task from its local files; when they are
  absent it fetches them first if hub downloads are on here (PRUNEBOARD_USE_HUB=1, no HF offline
  variable), else the job fails with one line naming the fetch command;
* submit refuses such a job (`check_submission`, exit 2 on the CLI) only where this host runs the
  jobs itself: not in Space mode and with local workers (PRUNEBOARD_LOCAL_WORKERS > 0). A server
  whose workers are elsewhere cannot know what data they have, so it queues the job and the
  worker's preflight reports a missing file.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from common import settings
from backend.config import ConfigError, JobConfig
from backend.models.ids import NOOP_MODEL
from backend.taskdata.sources import get_source
from backend.tasks import get_task
from backend.tasks.base import TaskDataMissing, hub_enabled, missing_data_message

__all__ = ["TaskDataUnavailable", "missing_task_data", "unavailable_data_message", "submit_checks_data", "check_submission",
           "ensure_task_data"]

logger = logging.getLogger(__name__)


class TaskDataUnavailable(ConfigError):
    """Submit refused: a task's data is neither here nor fetchable by this host's workers."""


def _fetchable(task: str) -> bool:
    """Whether a worker of this host would fetch the task's data itself."""
    source = get_source(task)
    if source is None or not hub_enabled():
        return False
    if source.gated is None:
        return True
    return settings.hub_token() is not None


def missing_task_data(task_names: Iterable[str], data_dir: Path) -> list[str]:
    """The tasks (once each, in order) whose data is absent here and that this host's workers would
    not fetch themselves."""
    return [name for name in dict.fromkeys(task_names)
            if not get_task(name).data_present(data_dir) and not _fetchable(name)]


def unavailable_data_message(task_names: Iterable[str], data_dir: Path) -> str | None:
    """The one-line refusal for the first task whose data is absent and not fetchable here, else None."""
    absent = missing_task_data(task_names, data_dir)
    return missing_data_message(absent[0], data_dir) if absent else None


def submit_checks_data() -> bool:
    """Whether this host runs the jobs it queues (so submit can tell whether their data is there)."""
    return not settings.space_mode() and settings.local_workers() > 0


def check_submission(config: JobConfig) -> None:
    """Raise TaskDataUnavailable (a ConfigError: exit 2, "Not submitted" in the UI) when this host
    would run the job and cannot get a task's data."""
    if config.model == NOOP_MODEL or not submit_checks_data():
        return  # builtin:noop reads no data; remote workers bring their own
    message = unavailable_data_message([t.name for t in config.tasks], settings.data_dir())
    if message:
        raise TaskDataUnavailable(message)


def ensure_task_data(task: str, data_dir: Path) -> None:
    """Worker preflight: return when the task's files are present, fetching them first where hub
    downloads are on; else raise TaskDataMissing with the one line naming the fetch command."""
    if get_task(task).data_present(data_dir):
        return
    if get_source(task) is None or not hub_enabled():
        raise TaskDataMissing(missing_data_message(task, data_dir))
    from backend.taskdata.fetch import DataFetchError, fetch_task

    try:
        fetch_task(task, data_dir, log=logger.info)
    except DataFetchError as exc:
        raise TaskDataMissing(
            f"{missing_data_message(task, data_dir)} (fetching it from the Hub failed: {exc})") from None
