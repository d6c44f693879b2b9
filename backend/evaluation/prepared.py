"""One task made ready for its lm-eval pass: what `backend.evaluation.harness` prepares and what the lm-eval
adapter (`lm_eval_adapter`) and the record builder (`eval_records`) read."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.config import TaskConfig
from backend.result import SampleRecord
from backend.tasks.base import TaskSpec

__all__ = ["PreparedTask"]


@dataclass
class PreparedTask:
    spec: TaskSpec
    config: TaskConfig
    lm_config: dict[str, Any]
    """The lm-eval task config dict the task is built from."""
    task: Any
    """The built lm-eval task."""
    n_docs: int
    todo: list[int]
    """Doc ids still to evaluate (resume skips the completed ones)."""
    kept: dict[int, SampleRecord]
    """Completed samples passed in, by doc id."""
    generation: dict[str, Any] | None
    manifest: dict[str, Any]
    weight: float = 0.0
    metric_names: tuple[str, ...] = field(default=())
    think: Any = None
    """Think paradigm, generation tasks: the `backend.evaluation.thinking.ThinkControl` of this task."""
