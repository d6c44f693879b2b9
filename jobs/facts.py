"""The facts about a run and a task that are known when they are written, as database columns.

Readers in `db` (leaderboard, findings, plots) never import the pipeline: the queue stores what they
need once, when a job is submitted or imported (`run_facts`) and when its scores are written
(`task_facts`). Rows written before migration 0012 were filled by that migration's frozen copy.
"""
from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import ValidationError

from backend.config import describe_calibration, stored_calibration
from backend.pruning import get_method
from backend.registry import UnknownName
from backend.tasks import get_task

__all__ = ["run_facts", "task_facts"]


def run_facts(document: dict[str, Any]) -> dict[str, Any]:
    """The `jobs` columns family, uses_calibration, calibration_source, calibration_data and recovery
    of a stored config document (`json.loads(canonical_json(config))`). A method unknown here gets
    NULL facts; parameters of an older schema count as the method's default calibration use."""
    pruning = document.get("pruning") or {}
    try:
        method = get_method(pruning.get("method", "dense"))
    except UnknownName:
        method = None
    uses = False
    if method is not None:
        try:
            uses = bool(method.uses_calibration(method.Params(**(pruning.get("params") or {}))))
        except (ValidationError, TypeError):
            uses = bool(method.needs_calibration)
    calibration = stored_calibration(document) if uses else None
    recovery = document.get("recovery")
    return {
        "family": method.family if method is not None else None,
        "uses_calibration": uses if method is not None else None,
        "calibration_source": (calibration.source if calibration is not None
                               else (document.get("calibration") or {}).get("source")) if uses else None,
        "calibration_data": describe_calibration(document) if uses else None,
        "recovery": isinstance(recovery, dict) and recovery.get("enabled", True) is not False,
    }


@cache
def task_facts(task: str) -> dict[str, Any]:
    """The `scores` columns category, test_time_scaling and output_type of a task (NULL for a task unknown here)."""
    try:
        spec = get_task(task)
    except UnknownName:
        return {"category": None, "test_time_scaling": None, "output_type": None}
    return {"category": spec.category, "test_time_scaling": bool(spec.test_time_scaling),
            "output_type": spec.output_type}
