"""OpenBookQA (elementary science, 4 options) scored like lm-eval's `openbookqa` task (version 1.0).

Data: `openbookqa/test.jsonl` under PRUNEBOARD_DATA_DIR (500 questions of the `main`
configuration), one question a line, in either layout:
* the Hugging Face `allenai/openbookqa` layout: `question_stem`, `choices` {`text`: [...],
  `label`: [...]}, `answerKey`;
* the original release layout (`Main/test.jsonl`): `question` {`stem`, `choices`: [{`text`,
  `label`}, ...]}, `answerKey`.
`build` writes the first layout into the work directory; `python -m jobs data fetch openbookqa`
downloads the file from `allenai/openbookqa` (`main`).

lm-eval's prompt: the context is the bare `question_stem`, continuations " " + each choice text,
target the index of `answerKey` (left-stripped) among the labels, metrics `acc` and `acc_norm`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.tasks._common import (
    json_dataset,
    multiple_choice_config,
    multiple_choice_task,
    read_rows,
    require_fields,
    require_files,
    write_jsonl,
)
from backend.tasks.base import register_task

NAME = "openbookqa"
DATA_FILES = ("openbookqa/test.jsonl",)
SCHEMA = ("JSON lines: question_stem, choices {text: [...], label: [...]}, answerKey "
          "(allenai/openbookqa fields), or the original layout question {stem, choices: [{text, label}]}")

SPLITS = {"test_split": "test", "fewshot_split": "test"}
"""One local file: evaluated, and the few-shot pool (lm-eval leaves the evaluated row out)."""


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    """A row in the Hugging Face layout, whichever layout it came in."""
    if "question_stem" in row:
        stem = row["question_stem"]
        choices = {"text": list(row["choices"]["text"]), "label": list(row["choices"]["label"])}
    else:  # original release
        options = row["question"]["choices"]
        stem = row["question"]["stem"]
        choices = {"text": [o["text"] for o in options], "label": [o["label"] for o in options]}
    return {"id": str(row.get("id", "")), "question_stem": stem, "choices": choices,
            "answerKey": row["answerKey"]}


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files(NAME, data_dir, DATA_FILES, SCHEMA)
    rows = read_rows(data_dir / DATA_FILES[0])
    require_fields(NAME, data_dir / DATA_FILES[0], rows, ("answerKey",))
    path = write_jsonl(workdir / NAME / "test.jsonl", [normalise(r) for r in rows])
    source = {**json_dataset({"test": path}), **SPLITS}
    return multiple_choice_config(NAME, source, doc_to_text="question_stem",
                                  doc_to_target="{{choices.label.index(answerKey.lstrip())}}",
                                  doc_to_choice="{{choices.text}}")


register_task(multiple_choice_task(
    NAME,
    "OpenBookQA test (500 four-option science questions), lm-eval's prompt; "
    "log-likelihood accuracy (acc, acc_norm), chance 0.25.",
    build,
    data_files=DATA_FILES,
    lm_eval_task="openbookqa",
    data_schema=SCHEMA,
))
