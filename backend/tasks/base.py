"""The task contract and registry (no torch, no lm-eval at import)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from backend.registry import Registry

Category = Literal["classification", "generation", "reasoning"]
OutputType = Literal["loglikelihood", "generate"]


class TaskDataMissing(RuntimeError):
    """The task's local data is absent; the message says where to put it."""


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task.

    `build(data_dir, workdir)` returns an lm-eval task config dict (reading JSONL files it finds in
    `data_dir` or writes into `workdir`) and raises `TaskDataMissing` when data is absent.
    `data_files` are relative to `data_dir` (empty for self-contained tasks).
    """

    name: str
    category: Category
    output_type: OutputType
    primary_metric: str
    higher_is_better: bool
    description: str
    build: Callable[[Path, Path], dict[str, Any]]
    data_files: tuple[str, ...] = ()
    metrics: tuple[str, ...] = field(default=())
    default_max_new_tokens: int = 256

    @property
    def uses_chat_template(self) -> bool:
        """Generation tasks go through the model's chat template; log-likelihood ones do not."""
        return self.output_type == "generate"

    def data_present(self, data_dir: Path) -> bool:
        return all((data_dir / f).exists() for f in self.data_files)


_TASKS: Registry[TaskSpec] = Registry("task", "backend.tasks")


def register_task(spec: TaskSpec) -> TaskSpec:
    return _TASKS.register(spec.name, spec)


def get_task(name: str) -> TaskSpec:
    return _TASKS.get(name)


def list_tasks() -> list[TaskSpec]:
    return _TASKS.items()
