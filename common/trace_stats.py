"""Statistics of a run's generations, per task (pure: no torch, no database). The pipeline computes
them for its result and the storage for runs stored before they were recorded, so they live here.

    trace_stats(samples) -> {task: {...}}

Per task, over its samples:
* `samples`: how many.
* `mean_output_tokens`: mean `output_tokens`.
* `mean_thinking_tokens`: mean `thinking_tokens` over the samples that report it (None if none do).
* `truncation_rate`: share of samples with `truncated` (think paradigm: no end-of-thinking marker).
* `length_stop_rate`: share of samples with `finish_reason == "length"` among those that report a
  finish reason (None if none do).
* `mean_repetition`: mean `repetition` over the samples that report it (None if none do).
* `repetition_rate`: share of those samples whose `repetition` is at least `REPETITION_THRESHOLD`.
* `accuracy`: share of `correct` among the samples that have a verdict (`correct` not None).
* `accuracy_by_length`: one entry per bucket of `output_tokens` in `LENGTH_BUCKETS` order,
  `{"bucket": "64-255", "min_tokens": 64, "max_tokens": 255, "samples": n, "accuracy": a}`
  (`max_tokens` None for the open last bucket; `accuracy` None for an empty bucket or one without
  verdicts). Every bucket is listed, empty ones included, so runs line up.

Rates are None when their denominator is 0. Values are plain floats, so the dict is JSON as it is.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol

__all__ = ["trace_stats", "LENGTH_BUCKETS", "REPETITION_THRESHOLD", "length_bucket"]

class GeneratedSample(Protocol):
    """What the statistics read of a sample (`backend.result.GeneratedSample` has it, so do stored rows)."""

    task: str
    correct: bool | None
    output_tokens: int
    thinking_tokens: int | None
    finish_reason: str | None
    truncated: bool
    repetition: float | None


LENGTH_BUCKETS: tuple[tuple[int, int | None], ...] = (
    (0, 63), (64, 255), (256, 1023), (1024, 4095), (4096, None),
)
"""Inclusive `output_tokens` ranges of the accuracy-by-length buckets (the last one is open)."""
REPETITION_THRESHOLD = 0.5
"""A sample counts as repetitive when at least this share of its n-grams is repeated."""


def length_bucket(output_tokens: int) -> str:
    """The label of the bucket holding `output_tokens` ("0-63", ..., "4096+")."""
    for low, high in LENGTH_BUCKETS:
        if output_tokens >= low and (high is None or output_tokens <= high):
            return _label(low, high)
    return _label(*LENGTH_BUCKETS[0])  # negative counts do not occur; keep them in the first bucket


def trace_stats(samples: Iterable[GeneratedSample]) -> dict[str, dict[str, Any]]:
    """Per-task generation statistics (see the module docstring), tasks in sorted order."""
    by_task: dict[str, list[GeneratedSample]] = {}
    for sample in samples:
        by_task.setdefault(sample.task, []).append(sample)
    return {task: _task_stats(by_task[task]) for task in sorted(by_task)}


def _task_stats(samples: list[GeneratedSample]) -> dict[str, Any]:
    thinking = [s.thinking_tokens for s in samples if s.thinking_tokens is not None]
    finished = [s.finish_reason for s in samples if s.finish_reason is not None]
    repetition = [s.repetition for s in samples if s.repetition is not None]
    buckets = {_label(low, high): [] for low, high in LENGTH_BUCKETS}
    for s in samples:
        buckets[length_bucket(s.output_tokens)].append(s)
    return {
        "samples": len(samples),
        "mean_output_tokens": _mean([s.output_tokens for s in samples]),
        "mean_thinking_tokens": _mean(thinking),
        "truncation_rate": _share([bool(s.truncated) for s in samples]),
        "length_stop_rate": _share([reason == "length" for reason in finished]),
        "mean_repetition": _mean(repetition),
        "repetition_rate": _share([value >= REPETITION_THRESHOLD for value in repetition]),
        "accuracy": _accuracy(samples),
        "accuracy_by_length": [
            {
                "bucket": _label(low, high),
                "min_tokens": low,
                "max_tokens": high,
                "samples": len(buckets[_label(low, high)]),
                "accuracy": _accuracy(buckets[_label(low, high)]),
            }
            for low, high in LENGTH_BUCKETS
        ],
    }


def _label(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else f"{low}-{high}"


def _mean(values: list[float]) -> float | None:
    return float(sum(values)) / len(values) if values else None


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _accuracy(samples: list[GeneratedSample]) -> float | None:
    return _share([bool(s.correct) for s in samples if s.correct is not None])
