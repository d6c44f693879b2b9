"""Automatic dense baselines: submitting a pruned config also queues the dense run it is compared
with, unless one exists (`jobs.queue.queue_dense_baseline`). The leaderboard's delta and % retained need it (`db.leaderboard`).

The baseline of a config keeps its model, paradigm, model_args, tasks, evaluation, seed and resources, with
pruning `dense` and no calibration or recovery; it is submitted by "system". It is not queued when
a job with the same hash exists in any state (a failed baseline is retried by hand, not on every
submission), nor when queued, running or succeeded dense jobs of the same model, paradigm,
model_args and seed already evaluate every task with the same task settings (limit, few-shot,
generation, window). Scores are matched to baselines later by comparability key, which covers
what a config cannot know up front (data and lm-eval versions, dtype).
"""
from __future__ import annotations

import json
import logging

from sqlalchemy import select

from backend.config import ConfigError, JobConfig, canonical_dict, config_hash, validate_config
from backend.pruning import get_method, list_methods
from db.schema import Job
from db.session import read_session
from db.states import LIVE_STATES

__all__ = ["SYSTEM_SUBMITTER", "dense_baseline_config", "baseline_needed"]

logger = logging.getLogger(__name__)

SYSTEM_SUBMITTER = "system"
_KEPT_FIELDS = ("model", "paradigm", "model_args", "tasks", "evaluation", "seed", "resources")


def dense_baseline_config(config: JobConfig) -> JobConfig | None:
    """The dense run that `config` is compared with; None when `config` is itself dense."""
    if get_method(config.pruning.method).family == "dense":
        return None
    data = canonical_dict(config)
    return validate_config({name: data[name] for name in _KEPT_FIELDS if name in data})


def baseline_needed(config: JobConfig) -> JobConfig | None:
    """The dense baseline that submitting `config` would queue (None: none, or one exists already)."""
    try:
        baseline = dense_baseline_config(config)
    except ConfigError as exc:  # never block the submission it accompanies
        logger.warning("no dense baseline for %s: %s", config.model, exc)
        return None
    return None if baseline is None or _exists(baseline) else baseline


def _exists(baseline: JobConfig) -> bool:
    dense_methods = [m.name for m in list_methods() if m.family == "dense"]
    wanted = canonical_dict(baseline)
    with read_session() as session:
        if session.scalar(select(Job.id).where(Job.config_hash == config_hash(baseline)).limit(1)) is not None:
            return True
        configs = session.scalars(
            select(Job.config_json).where(Job.model == baseline.model, Job.paradigm == baseline.paradigm,
                                          Job.method.in_(dense_methods), Job.state.in_(LIVE_STATES))
        ).all()
    return any(_covers(json.loads(text), wanted) for text in configs)


def _covers(existing: dict, wanted: dict) -> bool:
    """Whether an existing dense config evaluates every task of `wanted` the same way."""
    for name, default in (("model_args", {}), ("seed", 0)):
        if existing.get(name, default) != wanted.get(name, default):
            return False
    tasks = {task["name"]: task for task in existing.get("tasks", [])}
    return all(tasks.get(task["name"]) == task for task in wanted["tasks"])
