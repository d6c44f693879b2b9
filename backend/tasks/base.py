"""The task contract and registry (no torch, no lm-eval at import)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from backend.registry import Registry
from common.vocabulary import TaskCategory

if TYPE_CHECKING:
    from backend.result import SampleRecord

Category = TaskCategory
"""`perplexity` tasks are lower-is-better language-modelling scores, kept apart from accuracy averages."""
OutputType = Literal["loglikelihood", "generate", "perplexity"]
"""`perplexity` tasks run outside lm-eval through `TaskSpec.runner` (direct forward passes)."""


class TaskDataMissing(RuntimeError):
    """The task's local data is absent; the message says where it belongs and how to fetch it."""


def fetch_command(task: str) -> str:
    """The command that downloads a task's data into PRUNEBOARD_DATA_DIR (`backend.taskdata`)."""
    return f"python -m jobs data fetch {task}"


def missing_data_message(task: str, data_dir: Path) -> str:
    """The one line every refusal of a task without data says (submit, worker preflight)."""
    return f'task {task!r} has no data under PRUNEBOARD_DATA_DIR={data_dir}: run "{fetch_command(task)}"'


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
    rescore: Callable[["SampleRecord"], tuple[str | None, dict[str, float]]] | None = None
    """Generation tasks: score a stored sample again with the current `backend.evaluation.scoring` functions,
    without the model. Gets the sample with its full texts, `answer` being the text the task's
    filters read (the output after any reasoning block); returns (extracted answer, metrics), the
    metrics keyed as in `metrics`. None: not rescorable (log-likelihood scores depend only on the
    model). `python -m jobs rescore` uses it."""
    think_max_new_tokens: int | None = None
    """CPU default budget in the "think" paradigm (None: `default_max_new_tokens` x THINK_BUDGET_FACTOR)."""
    gpu_max_new_tokens: int | None = None
    """Default budget when the model runs on a GPU, instruct paradigm (None: the CPU default)."""
    gpu_think_max_new_tokens: int | None = None
    """Default budget on a GPU in the "think" paradigm (None: the CPU think default); up to 32768."""
    test_time_scaling: bool = False
    """Generation tasks whose scoring takes k samples per prompt (`generation.num_samples` > 1:
    `pass@1`, `pass@k`, `maj@k`) and whose metrics survive budget forcing."""
    runner: Callable[..., Any] | None = None
    """Tasks that run outside lm-eval (output_type `perplexity`): called by `backend.evaluation.harness`
    as `runner(model, tokenizer, task_config, *, data_dir, dtype, batch_size, progress, on_sample,
    completed) -> (scores, samples, task_manifest)`; `build` is then unused."""
    lm_eval_task: str | None = None
    """The lm-eval task this one corresponds to (`lm_eval --tasks NAME`), None where lm-eval has none."""
    data_schema: str = ""
    """The fields each local data row must have (shown by `python -m jobs tasks` and in errors)."""
    metric_weights: tuple[tuple[str, str], ...] = ()
    """(metric, per-sample weight metric) pairs aggregated as weighted means instead of plain means
    (IFEval's instruction-level accuracies count each prompt once per instruction)."""
    runs_code: bool = False
    """Scoring runs model-written programs (`backend.sandbox`): a job with such a task fails before
    its model loads where the sandbox's jail cannot be built."""

    @property
    def uses_chat_template(self) -> bool:
        """Generation tasks go through the model's chat template; log-likelihood ones do not."""
        return self.output_type == "generate"

    def data_present(self, data_dir: Path) -> bool:
        return all((data_dir / f).exists() for f in self.data_files)


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_enabled() -> bool:
    """Whether this host may download from the hub (task data a worker lacks, hub model ids): only
    when PRUNEBOARD_USE_HUB=1 (a GPU worker with hub access) and no HF offline variable is set.
    Opt-in, never probed: hosts without network must not try to connect."""
    if os.environ.get("PRUNEBOARD_USE_HUB") != "1":
        return False
    return not any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


_TASKS: Registry[TaskSpec] = Registry("task", "backend.tasks")


def register_task(spec: TaskSpec) -> TaskSpec:
    return _TASKS.register(spec.name, spec)


def get_task(name: str) -> TaskSpec:
    return _TASKS.get(name)


def list_tasks() -> list[TaskSpec]:
    return _TASKS.items()
