"""Competition maths with short final answers: AIME 2024, AIME 2025, AMC 2023 and MATH-500.

Data (under PRUNEBOARD_DATA_DIR, read in place):
* `aime/aime24.jsonl` (problem, expected_answer), `aime/aime25.jsonl` (problem, answer),
  `aime/amc23.jsonl` (question, answer as a number), `math500/test.jsonl` (problem, answer in LaTeX).

Prompt: the problem, then "Reason step by step, then write your final answer inside \\boxed{}."
through the chat template (zero-shot). Scoring (`backend.evaluation.scoring`): `extract_math_answer` (last
`\\boxed{}`, else "the answer is ...", else the last number) compared to the gold answer with
`math_equal` (math-verify equivalence: `\\frac{1}{2}` == `0.5`, `(3, \\pi/2)` ==
`\\left( 3, \\frac{\\pi}{2} \\right)`). Metric `exact_match` (primary); with `num_samples` k > 1
also `pass@1`, `pass@k`, `maj@k`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.evaluation.scoring import extract_math_answer, math_equal, math_filter
from backend.tasks._common import json_dataset, require_files
from backend.tasks._reasoning import (
    MATH_INSTRUCTION,
    answer_filter,
    budgets,
    generation_kwargs,
    metric_list,
    scored_results,
)
from backend.tasks.base import TaskSpec, register_task

VERSION = 1.0


def _rescore(sample) -> tuple[str | None, dict[str, float]]:
    """`TaskSpec.rescore`: the extractor and comparison again on the stored answer text."""
    text = sample.answer if sample.answer is not None else sample.output
    extracted = extract_math_answer(text)
    return extracted, {"exact_match": float(math_equal(extracted, sample.gold))}


def _make(name: str, data_file: str, problem_key: str, answer_key: str, description: str) -> TaskSpec:
    def doc_to_text(doc: dict[str, Any]) -> str:
        return f"{doc[problem_key].strip()}\n\n{MATH_INSTRUCTION}"

    def doc_to_target(doc: dict[str, Any]) -> str:
        return str(doc[answer_key]).strip()

    def score(doc: dict[str, Any], extracted: str | None) -> dict[str, float]:
        return {"exact_match": float(math_equal(extracted, doc_to_target(doc)))}

    def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
        require_files(name, data_dir, (data_file,))
        return {
            "task": name,
            **json_dataset({"test": data_dir / data_file}),
            "test_split": "test",
            "fewshot_split": "test",
            "output_type": "generate_until",
            "doc_to_text": doc_to_text,
            "doc_to_target": doc_to_target,
            "generation_kwargs": generation_kwargs(),
            "filter_list": answer_filter(math_filter),
            "process_results": scored_results(score, same=lambda a, b: math_equal(a, b)),
            "metric_list": metric_list(("exact_match",)),
            "metadata": {"version": VERSION},
        }

    return register_task(TaskSpec(
        name=name,
        category="reasoning",
        output_type="generate",
        primary_metric="exact_match",
        higher_is_better=True,
        description=description,
        build=build,
        data_files=(data_file,),
        metrics=("exact_match",),
        rescore=_rescore,
        test_time_scaling=True,
        **budgets(),
    ))


_make("aime24", "aime/aime24.jsonl", "problem", "expected_answer",
      "AIME 2024 (30 problems, integer answers 0-999), chain of thought through the chat template; "
      "\\boxed{} answer checked with math-verify.")
_make("aime25", "aime/aime25.jsonl", "problem", "answer",
      "AIME 2025 (30 problems, integer answers 0-999), chain of thought through the chat template; "
      "\\boxed{} answer checked with math-verify.")
_make("amc23", "aime/amc23.jsonl", "question", "answer",
      "AMC 2023 (40 problems, numeric answers), chain of thought through the chat template; "
      "\\boxed{} answer checked with math-verify.")
_make("math500", "math500/test.jsonl", "problem", "answer",
      "MATH-500 (500 competition problems, LaTeX answers), chain of thought through the chat template; "
      "\\boxed{} answer checked for mathematical equivalence with math-verify.")
