"""PopQA (open-domain factual questions about entities of varying popularity) answered through the
chat template. lm-eval 0.4.13 has no PopQA task; prompt and scoring follow the common short-answer
setup (as in OLMES / Tulu 3 evaluations), with our own scorer:

* prompt: `Q: {question} A:` as the user turn (few-shot examples, when asked for, come from the same
  file as earlier turns), greedy, up to 32 new tokens, stopping at a blank line or the end of turn;
* `exact_match` (primary): 1 when any of the row's `possible_answers` occurs in the reply after
  normalisation (lower case, punctuation and the articles a/an/the removed, spaces collapsed),
  the usual "answer recall" of PopQA.

Data: `popqa/test.jsonl` under PRUNEBOARD_DATA_DIR (14267 rows), one question a
line with `question` and `possible_answers` (a list of strings, or the JSON-encoded list of the
Hugging Face `akariasai/PopQA` dataset); other fields are ignored. `python -m jobs data fetch
popqa` writes the file from that dataset's `test.tsv`.
"""
from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from backend.tasks._common import (
    CHAT_STOP_SEQUENCES,
    json_dataset,
    read_rows,
    require_fields,
    require_files,
    write_jsonl,
)
from backend.tasks.base import TaskSpec, register_task

NAME = "popqa"
DATA_FILES = ("popqa/test.jsonl",)
SCHEMA = "JSON lines: question, possible_answers (a list of strings or its JSON text)"
PROMPT = "Q: {{question}} A:"
MAX_NEW_TOKENS = 32
STOP_SEQUENCES = ("\n\n", "Q:", *CHAT_STOP_SEQUENCES)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def answers_of(doc: dict[str, Any]) -> list[str]:
    value = doc["possible_answers"]
    if isinstance(value, str):
        value = json.loads(value)
    return [str(v) for v in value]


def normalise_answer(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_recall(reply: str | None, answers: Iterable[str]) -> float:
    """1.0 when a normalised gold answer occurs, as whole words, in the normalised reply."""
    if not reply:
        return 0.0
    padded = f" {normalise_answer(reply)} "
    return float(any(f" {a} " in padded for a in map(normalise_answer, answers) if a))


def doc_to_target(doc: dict[str, Any]) -> str:
    """The first possible answer (few-shot turns show it)."""
    return answers_of(doc)[0]


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    return {"exact_match": answer_recall(results[0], answers_of(doc))}


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files(NAME, data_dir, DATA_FILES, SCHEMA)
    rows = read_rows(data_dir / DATA_FILES[0])
    require_fields(NAME, data_dir / DATA_FILES[0], rows, ("question", "possible_answers"))
    path = write_jsonl(workdir / NAME / "test.jsonl", [
        {"question": r["question"], "possible_answers": json.dumps(answers_of(r), ensure_ascii=False)}
        for r in rows
    ])
    return {
        "task": NAME,
        **json_dataset({"test": path}),
        "test_split": "test",
        "fewshot_split": "test",
        "output_type": "generate_until",
        "doc_to_text": PROMPT,
        "doc_to_target": doc_to_target,
        "generation_kwargs": {
            "until": list(STOP_SEQUENCES), "do_sample": False, "max_gen_toks": MAX_NEW_TOKENS,
        },
        "process_results": process_results,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


register_task(TaskSpec(
    name=NAME,
    category="generation",
    output_type="generate",
    primary_metric="exact_match",
    higher_is_better=True,
    description="PopQA test (14267 entity questions), `Q: ... A:` through the chat template; "
                "exact match when any accepted answer occurs in the reply.",
    build=build,
    data_files=DATA_FILES,
    metrics=("exact_match",),
    default_max_new_tokens=MAX_NEW_TOKENS,
    data_schema=SCHEMA,
))
