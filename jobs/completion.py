"""What a worker may deliver for a job, checked before anything is stored (the worker API answers
422 otherwise): every score and sample names one of the job's tasks; every score a metric that task
reports (`TaskSpec.metrics`, else its primary metric, plus `pass@1`, `pass@k` and `maj@k` when the
job samples k answers per prompt) with the task's direction and primary flag, each (task, metric)
once; each (task, doc) sample once. A worker can then neither add leaderboard columns nor score
tasks the job never had."""
from __future__ import annotations

from backend.config import JobConfig, TaskConfig
from backend.result import RunResult
from backend.tasks import get_task
from backend.tasks._reasoning import sampling_metrics

__all__ = ["ResultMismatch", "check_result", "allowed_metrics"]


class ResultMismatch(ValueError):
    """A delivered result that does not fit its job; str() names the first problem."""


def allowed_metrics(task: TaskConfig) -> tuple[str, ...]:
    spec = get_task(task.name)
    return (spec.metrics or (spec.primary_metric,)) + sampling_metrics(task.generation.num_samples)


def check_result(config: JobConfig, result: RunResult) -> None:
    """Raise ResultMismatch unless `result` is one `config` could have produced."""
    tasks = {task.name: task for task in config.tasks}
    seen: set[tuple[str, str]] = set()
    for score in result.scores:
        if score.task not in tasks:
            raise ResultMismatch(f"score for task {score.task!r}, which the job does not evaluate "
                                 f"(its tasks: {', '.join(sorted(tasks))})")
        spec = get_task(score.task)
        if score.metric not in allowed_metrics(tasks[score.task]):
            raise ResultMismatch(f"task {score.task!r} reports no metric {score.metric!r}")
        if score.higher_is_better != spec.higher_is_better or score.primary != (score.metric == spec.primary_metric):
            raise ResultMismatch(f"{score.task} {score.metric}: direction or primary flag differs from the task's")
        if (score.task, score.metric) in seen:
            raise ResultMismatch(f"{score.task} {score.metric} is reported twice")
        seen.add((score.task, score.metric))
    docs: set[tuple[str, int]] = set()
    for sample in result.samples:
        if sample.task not in tasks:
            raise ResultMismatch(f"sample of task {sample.task!r}, which the job does not evaluate")
        if sample.key in docs:
            raise ResultMismatch(f"sample {sample.task} #{sample.doc_id} is reported twice")
        docs.add(sample.key)
