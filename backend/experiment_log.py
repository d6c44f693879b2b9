"""Optional experiment logging of finished runs through lm-eval's own loggers.

* Weights & Biases (`lm_eval.loggers.WandbLogger`): the `wandb` package is installed and
  WANDB_API_KEY is set (wandb reads WANDB_PROJECT, WANDB_ENTITY, ... itself; the project defaults to
  "pruneboard" here).
* Trackio (`lm_eval.loggers.TrackioLogger`): the `trackio` package is installed and
  PRUNEBOARD_TRACKIO_PROJECT is set (PRUNEBOARD_TRACKIO_SPACE_ID: the Space it syncs to).

Otherwise nothing is imported and nothing happens. Each logger is driven as lm-eval's CLI drives it
(`post_init(results)`, `log_eval_result()`, `log_eval_samples(samples)`, then finish), one logger
run per PruneBoard run, named after it; a logger that fails is reported in the log and never fails
the run.

    enabled_loggers() -> ["wandb", "trackio"] (those configured here)
    log_run(lm_run) -> names of the loggers that logged it
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import os
from typing import Any

from common import settings
from backend.evaluation.lm_eval_format import LmEvalRun

__all__ = ["enabled_loggers", "log_run"]

logger = logging.getLogger(__name__)

DEFAULT_WANDB_PROJECT = "pruneboard"


def enabled_loggers() -> list[str]:
    """The experiment loggers whose package is importable and whose settings are present."""
    enabled = []
    if settings.wandb_credentials() and _installed("wandb"):
        enabled.append("wandb")
    if settings.trackio_project() and _installed("trackio"):
        enabled.append("trackio")
    return enabled


def log_run(lm_run: LmEvalRun) -> list[str]:
    """Log one run's results and samples to every enabled logger; return those that succeeded."""
    logged = []
    for name in enabled_loggers():
        try:
            _LOGGERS[name](lm_run)
        except Exception:  # an outside service must never fail a finished run
            logger.warning("could not log %s to %s", lm_run.model_name, name, exc_info=True)
            continue
        logged.append(name)
    return logged


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _drive(lm_logger: Any, lm_run: LmEvalRun) -> None:
    """What lm-eval's CLI does with a logger once `simple_evaluate` returned."""
    lm_logger.post_init(copy.deepcopy(lm_run.results))
    lm_logger.log_eval_result()
    lm_logger.log_eval_samples(copy.deepcopy(lm_run.samples))


def _wandb(lm_run: LmEvalRun) -> None:
    from lm_eval.loggers import WandbLogger

    init = {"project": os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT, "name": lm_run.model_name,
            "job_type": "eval", "config": lm_run.results["pruneboard"]}
    lm_logger = WandbLogger(init_args=init)
    try:
        _drive(lm_logger, lm_run)
    finally:
        lm_logger.run.finish()


def _trackio(lm_run: LmEvalRun) -> None:
    from lm_eval.loggers import TrackioLogger

    init = {"project": settings.trackio_project(), "name": lm_run.model_name,
            "config": lm_run.results["pruneboard"]}
    if settings.trackio_space_id():
        init["space_id"] = settings.trackio_space_id()
    lm_logger = TrackioLogger(init_args=init)
    try:
        _drive(lm_logger, lm_run)
    finally:
        lm_logger.finish()


_LOGGERS = {"wandb": _wandb, "trackio": _trackio}
