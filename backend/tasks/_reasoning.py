"""Shared pieces of the reasoning tasks (AIME, AMC, MATH-500, GPQA, JEEBench); not a task module.

Every reasoning task is an lm-eval `generate_until` task through the chat template with:

* one filter, `answer`, running our extractor (`backend.evaluation.scoring`) on every response, WITHOUT
  lm-eval's `take_first`, so `process_results` sees all `k` responses of a document when
  `generation.num_samples` = k > 1 (lm-eval `repeats`);
* `process_results` from `scored_results(score)`: the task's metrics on the first response
  (`exact_match`, primary, ...), a per-sample `no_answer` flag (1.0 when nothing could be
  extracted: the sample is stored as incorrect with `extracted` None and this reason), and with
  k > 1 `pass@1` (mean over the k), `pass@k` (unbiased estimator) and `maj@k` (majority vote,
  equivalent answers grouped by the task's comparison);
* CPU-conservative default budgets, larger ones on GPU workers (see `budgets`).

lm-eval's own `aime`, `gpqa` and `minerva_math` tasks extract answers with regexes; ours read
`\\boxed{}` / letters with `backend.evaluation.scoring` and compare with math-verify. The filter and the
comparison are set explicitly in each task's config (tests check it).
"""
from __future__ import annotations

from typing import Any, Callable

from backend.evaluation.scoring import majority_vote, pass_at_k
from backend.tasks._common import CHAT_STOP_SEQUENCES

CPU_MAX_NEW_TOKENS = 1024
"""Instruct default on CPU: room for a chain of thought without hour-long jobs."""
CPU_THINK_MAX_NEW_TOKENS = 4096
"""Think default on CPU (reasoning first, then the answer)."""
GPU_MAX_NEW_TOKENS = 4096
GPU_THINK_MAX_NEW_TOKENS = 32768
"""Think default on GPU workers: long reasoning traces, as the model cards recommend."""

NO_ANSWER = "no_answer"
"""Per-sample flag in `SampleRecord.metrics`: 1.0 when no answer could be extracted (not aggregated)."""

MATH_INSTRUCTION = "Reason step by step, then write your final answer inside \\boxed{}."


def budgets() -> dict[str, int]:
    """TaskSpec keyword arguments of the default generation budgets."""
    return {
        "default_max_new_tokens": CPU_MAX_NEW_TOKENS,
        "think_max_new_tokens": CPU_THINK_MAX_NEW_TOKENS,
        "gpu_max_new_tokens": GPU_MAX_NEW_TOKENS,
        "gpu_think_max_new_tokens": GPU_THINK_MAX_NEW_TOKENS,
    }


def answer_filter(extract_filter: Callable) -> list[dict[str, Any]]:
    """The single `answer` filter: our extractor on every response, all k responses kept."""
    return [{"name": "answer", "filter": [{"function": "custom", "filter_fn": extract_filter}]}]


def metric_list(names: tuple[str, ...]) -> list[dict[str, Any]]:
    entries = [{"metric": n, "aggregation": "mean", "higher_is_better": True} for n in names]
    return entries + [{"metric": NO_ANSWER, "aggregation": "mean", "higher_is_better": False}]


def generation_kwargs(max_new_tokens: int = CPU_MAX_NEW_TOKENS) -> dict[str, Any]:
    return {"until": list(CHAT_STOP_SEQUENCES), "do_sample": False, "max_gen_toks": max_new_tokens}


def scored_results(
    score: Callable[[dict[str, Any], str | None], dict[str, float]],
    primary: str = "exact_match",
    same: Callable[[str, str], bool] | None = None,
) -> Callable[[dict[str, Any], list[Any]], dict[str, float]]:
    """lm-eval `process_results` for a task whose `score(doc, extracted)` returns its metrics."""

    def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
        answers = results[0]
        if not isinstance(answers, (list, tuple)):
            answers = [answers]
        first = score(doc, answers[0])
        metrics = {**first, NO_ANSWER: float(answers[0] is None)}
        k = len(answers)
        if k > 1:
            correct = [score(doc, a)[primary] >= 1.0 for a in answers]
            metrics["pass@1"] = sum(correct) / k
            metrics[f"pass@{k}"] = pass_at_k(k, sum(correct), k)
            voted = majority_vote(answers, same)
            metrics[f"maj@{k}"] = score(doc, voted)[primary] if voted is not None else 0.0
        return metrics

    return process_results


def sampling_metrics(k: int) -> tuple[str, ...]:
    """Metric names added when `num_samples` = k > 1."""
    return ("pass@1", f"pass@{k}", f"maj@{k}") if k > 1 else ()
