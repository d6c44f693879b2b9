"""JEEBench: 450 JEE Advanced 2016-2022 problems (physics, chemistry, maths) in four answer types.

Data: `jeebench/dataset.json` under PRUNEBOARD_DATA_DIR (a JSON list; `question` already lists the
options (A)-(D) for the MCQ types), rewritten as JSONL in the work directory.

Each type gets its own closing instruction and scorer (`backend.evaluation.scoring.jee_score`):

| type | instruction asks for | extracted with | `exact_match` | `partial_credit` |
|---|---|---|---|---|
| MCQ | one letter in `\\boxed{}` | `extract_choice_letter` | same letter | = exact_match |
| MCQ(multiple) | every correct letter in `\\boxed{}` | `extract_choice_letters` (sorted set) | exactly the gold set | share of gold letters chosen if no wrong one, else 0 |
| Integer | a non-negative integer in `\\boxed{}` | `extract_math_answer` -> number | equal integers | = exact_match |
| Numeric | the number to 2 decimals in `\\boxed{}` | `extract_math_answer` -> number | abs error <= 0.01 | = exact_match |

`exact_match` is primary; `partial_credit` follows JEE Advanced's partial marking for
multiple-answer questions without its negative marks. `num_samples` k > 1 adds `pass@1`, `pass@k`,
`maj@k` (on exact_match).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from backend.evaluation.scoring import extract_jee_answer, jee_score
from backend.tasks._common import json_dataset, require_files, write_jsonl
from backend.tasks._reasoning import (
    answer_filter,
    budgets,
    generation_kwargs,
    metric_list,
    scored_results,
)
from backend.tasks.base import TaskSpec, register_task

DATA_FILE = "jeebench/dataset.json"
VERSION = 1.0
TYPES = ("MCQ", "MCQ(multiple)", "Integer", "Numeric")
INSTRUCTIONS = {
    "MCQ": "Exactly one option is correct. Reason step by step, then write the letter of the correct "
           "option inside \\boxed{}, for example \\boxed{B}.",
    "MCQ(multiple)": "One or more options may be correct. Reason step by step, then write the letters "
                     "of all correct options inside \\boxed{}, for example \\boxed{AC}.",
    "Integer": "The answer is a non-negative integer. Reason step by step, then write it inside \\boxed{}.",
    "Numeric": "The answer is a number. Reason step by step, then write it correct to two decimal places "
               "inside \\boxed{}.",
}


def load_rows(path: Path) -> list[dict[str, Any]]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    bad = sorted({r["type"] for r in rows} - set(TYPES))
    if bad:
        raise ValueError(f"jeebench: unknown question types {bad}")
    return [{k: r[k] for k in ("description", "index", "subject", "type", "question", "gold")} for r in rows]


def doc_to_text(doc: dict[str, Any]) -> str:
    return f"{doc['question'].strip()}\n\n{INSTRUCTIONS[doc['type']]}"


def jee_filter(resps: Iterable[Sequence[str]], docs: Sequence[dict]) -> list[list[str | None]]:
    """lm-eval `custom` filter: every response's answer in the form its question type needs."""
    return [[extract_jee_answer(r, doc["type"]) for r in rs] for rs, doc in zip(resps, docs)]


def _score(doc: dict[str, Any], extracted: str | None) -> dict[str, float]:
    return jee_score(extracted, str(doc["gold"]), doc["type"])


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files("jeebench", data_dir, (DATA_FILE,))
    path = write_jsonl(workdir / "jeebench" / "test.jsonl", load_rows(data_dir / DATA_FILE))
    return {
        "task": "jeebench",
        **json_dataset({"test": path}),
        "test_split": "test",
        "fewshot_split": "test",
        "output_type": "generate_until",
        "doc_to_text": doc_to_text,
        "doc_to_target": "gold",
        "generation_kwargs": generation_kwargs(),
        "filter_list": answer_filter(jee_filter),
        "process_results": scored_results(_score),
        "metric_list": metric_list(("exact_match", "partial_credit")),
        "metadata": {"version": VERSION},
    }


register_task(TaskSpec(
    name="jeebench",
    category="reasoning",
    output_type="generate",
    primary_metric="exact_match",
    higher_is_better=True,
    description="JEEBench (450 JEE Advanced physics/chemistry/maths problems: single and multiple choice, "
                "integer, numeric), chain of thought; per-type exact match and partial credit.",
    build=build,
    data_files=(DATA_FILE,),
    metrics=("exact_match", "partial_credit"),
    test_time_scaling=True,
    **budgets(),
))
