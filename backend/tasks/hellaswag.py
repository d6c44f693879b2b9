"""HellaSwag (commonsense sentence completion, 4 endings) scored like lm-eval's `hellaswag` task
(version 1.0).

Data: `hellaswag/hellaswag_val.jsonl` under PRUNEBOARD_DATA_DIR (the 10042
validation contexts; the original release's file name), one a line with `activity_label`, `ctx_a`,
`ctx_b`, `endings` (4 strings) and `label` (index of the right ending, int or digit string), as in
both the original release and Hugging Face `Rowan/hellaswag`. `build` writes those fields into the
work directory; `python -m jobs data fetch hellaswag` downloads the file from `Rowan/hellaswag`.

lm-eval's preprocessing, re-implemented in `process_doc`/`preprocess`: the query is
`activity_label: ctx_a Ctx_b` (ctx_b capitalised), each ending is a choice, and all of them are
cleaned of WikiHow artefacts (` [title]` becomes `. `, other `[...]` tags are dropped, double
spaces collapsed). Metrics `acc` and `acc_norm` (the usual headline number is `acc_norm`; `acc` is
primary here as for the other log-likelihood tasks).
"""
from __future__ import annotations

import re
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

NAME = "hellaswag"
DATA_FILES = ("hellaswag/hellaswag_val.jsonl",)
FIELDS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
SCHEMA = "JSON lines: activity_label, ctx_a, ctx_b, endings (4 strings), label (0-3)"
_TAG = re.compile(r"\[.*?\]")


def preprocess(text: str) -> str:
    """lm-eval's clean-up of a HellaSwag string."""
    text = text.strip().replace(" [title]", ". ")
    text = _TAG.sub("", text)
    return text.replace("  ", " ")


def process_doc(doc: dict[str, Any]) -> dict[str, Any]:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": preprocess(doc["activity_label"] + ": " + context),
        "choices": [preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def process_docs(dataset):
    """lm-eval `process_docs`: adds query, choices and gold to every row of a `datasets.Dataset`."""
    return dataset.map(process_doc)


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files(NAME, data_dir, DATA_FILES, SCHEMA)
    rows = read_rows(data_dir / DATA_FILES[0])
    require_fields(NAME, data_dir / DATA_FILES[0], rows, FIELDS)
    path = write_jsonl(workdir / NAME / "validation.jsonl", [
        {**{k: r[k] for k in FIELDS}, "label": str(int(r["label"]))} for r in rows
    ])
    splits = {"validation_split": "validation", "fewshot_split": "validation"}
    source = {**json_dataset({"validation": path}), **splits, "process_docs": process_docs}
    return multiple_choice_config(NAME, source, doc_to_text="{{query}}", doc_to_target="{{label}}",
                                  doc_to_choice="choices")


register_task(multiple_choice_task(
    NAME,
    "HellaSwag validation (10042 four-ending completions), lm-eval's preprocessing and "
    "prompt; log-likelihood accuracy (acc, acc_norm), chance 0.25.",
    build,
    data_files=DATA_FILES,
    lm_eval_task="hellaswag",
    data_schema=SCHEMA,
))
