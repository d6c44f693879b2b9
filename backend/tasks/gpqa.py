"""GPQA Diamond (198 graduate-level science questions, four options).

GPQA's licence asks that the questions not be redistributed in plain text, so PruneBoard ships no
copy: `python -m jobs data fetch gpqa-diamond` writes it from the gated Hub dataset `Idavidrein/gpqa`
(HF_TOKEN of an account that accepted its conditions), or put a JSONL file at
`gpqa/gpqa_diamond.jsonl` under PRUNEBOARD_DATA_DIR yourself, one object a line:

    {"question": "...", "correct_answer": "...", "incorrect_answers": ["...", "...", "..."]}

(the columns of the official `gpqa_diamond.csv` also work: `Question`, `Correct Answer`,
`Incorrect Answer 1`..`3`; an optional `id` / `Record ID` is kept). Surrounding whitespace is
stripped.

The four options are shuffled per row with a fixed seed (`SEED` and the row's index, so the same
file always gives the same order and the same gold letter); the prompt lists them as (A)-(D) and
asks for "The answer is (X)". Scoring: `backend.evaluation.scoring.extract_choice_letter` ("The answer is
(C)", "**C**", `\\boxed{C}`, "Answer: C", else the last standalone A-D), `exact_match` against
the gold letter (primary); `num_samples` k > 1 adds `pass@1`, `pass@k`, `maj@k`.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from backend.evaluation.scoring import extract_choice_letter, letter_filter
from backend.tasks._common import json_dataset, read_jsonl, require_files, write_jsonl
from backend.tasks._reasoning import (
    answer_filter,
    budgets,
    generation_kwargs,
    metric_list,
    scored_results,
)
from backend.tasks.base import TaskSpec, register_task

DATA_FILE = "gpqa/gpqa_diamond.jsonl"
SEED = 20231120
"""Option-shuffle seed (changing it changes the prepared data and its hash)."""
LETTERS = "ABCD"
VERSION = 1.0
INSTRUCTION = (
    'Think step by step, then finish with "The answer is (X)" where X is the letter of the correct option.'
)


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """Our schema from either the documented JSONL keys or the official CSV column names."""
    if "question" in row:
        question, correct, wrong = row["question"], row["correct_answer"], list(row["incorrect_answers"])
    else:
        question, correct = row["Question"], row["Correct Answer"]
        wrong = [row[f"Incorrect Answer {i}"] for i in (1, 2, 3)]
    if len(wrong) != 3:
        raise ValueError(f"GPQA row needs 3 incorrect answers, got {len(wrong)}: {question[:60]!r}")
    return {
        "id": str(row.get("id", row.get("Record ID", ""))),
        "question": str(question).strip(),
        "correct_answer": str(correct).strip(),
        "incorrect_answers": [str(w).strip() for w in wrong],
    }


def shuffle_choices(row: dict[str, Any], index: int, seed: int = SEED) -> dict[str, Any]:
    """Row with `choices` (four options in a per-row deterministic order) and `answer` (gold letter)."""
    options = [row["correct_answer"], *row["incorrect_answers"]]
    order = list(range(4))
    random.Random(f"{seed}:{index}").shuffle(order)
    choices = [options[i] for i in order]
    return {**row, "choices": choices, "answer": LETTERS[order.index(0)]}


def prepare_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [shuffle_choices(normalize_row(r), i) for i, r in enumerate(rows)]


def doc_to_text(doc: dict[str, Any]) -> str:
    options = "\n".join(f"({letter}) {choice}" for letter, choice in zip(LETTERS, doc["choices"]))
    return f"{doc['question']}\n\n{options}\n\n{INSTRUCTION}"


def _score(doc: dict[str, Any], extracted: str | None) -> dict[str, float]:
    return {"exact_match": float(extracted is not None and extracted == doc["answer"])}


def _rescore(sample) -> tuple[str | None, dict[str, float]]:
    text = sample.answer if sample.answer is not None else sample.output
    extracted = extract_choice_letter(text)
    return extracted, {"exact_match": float(extracted is not None and extracted == sample.gold)}


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files("gpqa-diamond", data_dir, (DATA_FILE,))
    path = write_jsonl(workdir / "gpqa-diamond" / "test.jsonl", prepare_rows(read_jsonl(data_dir / DATA_FILE)))
    return {
        "task": "gpqa-diamond",
        **json_dataset({"test": path}),
        "test_split": "test",
        "fewshot_split": "test",
        "output_type": "generate_until",
        "doc_to_text": doc_to_text,
        "doc_to_target": "answer",
        "generation_kwargs": generation_kwargs(),
        "filter_list": answer_filter(letter_filter),
        "process_results": scored_results(_score),
        "metric_list": metric_list(("exact_match",)),
        "metadata": {"version": VERSION},
    }


register_task(TaskSpec(
    name="gpqa-diamond",
    category="reasoning",
    output_type="generate",
    primary_metric="exact_match",
    higher_is_better=True,
    description="GPQA Diamond: four-option science questions, "
                "options shuffled per row with a fixed seed; chain of thought, letter exact match.",
    build=build,
    data_files=(DATA_FILE,),
    metrics=("exact_match",),
    rescore=_rescore,
    test_time_scaling=True,
    **budgets(),
))
