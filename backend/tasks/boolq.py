"""BoolQ (yes/no questions about a Wikipedia passage) scored like lm-eval's `boolq` task (SuperGLUE,
version 2.0).

Data: `boolq/dev.jsonl` under PRUNEBOARD_DATA_DIR (the 3270 validation questions),
one a line with `passage`, `question` and the answer as either `label` (0 = no, 1 = yes; the
Hugging Face `super_glue/boolq` field) or `answer` (true/false; the original release's
`dev.jsonl`). `build` writes passage, question and integer label into the work directory;
`python -m jobs data fetch boolq` downloads the file from `aps/super_glue` (`boolq`).

lm-eval's prompt: context `{{passage}}\\nQuestion: {{question}}?\\nAnswer:`, continuations " no" /
" yes", target `label`, metric `acc` (chance about 0.38 for "no", 0.62 majority "yes").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.tasks._common import json_dataset, read_rows, require_fields, require_files, write_jsonl
from backend.tasks.base import TaskSpec, register_task

NAME = "boolq"
DATA_FILES = ("boolq/dev.jsonl",)
SCHEMA = "JSON lines: passage, question, and label (0 no / 1 yes) or answer (true/false)"
PROMPT = "{{passage}}\nQuestion: {{question}}?\nAnswer:"
CHOICES = ["no", "yes"]


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    if "label" in row:
        label = int(row["label"])
    else:
        answer = row["answer"]
        label = int(answer if isinstance(answer, bool) else str(answer).strip().lower() in ("true", "yes", "1"))
    return {"passage": row["passage"], "question": row["question"], "label": label}


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files(NAME, data_dir, DATA_FILES, SCHEMA)
    rows = read_rows(data_dir / DATA_FILES[0])
    require_fields(NAME, data_dir / DATA_FILES[0], rows, ("passage", "question"))
    path = write_jsonl(workdir / NAME / "validation.jsonl", [normalise(r) for r in rows])
    return {
        "task": NAME,
        **json_dataset({"validation": path}),
        "validation_split": "validation",
        "fewshot_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": PROMPT,
        "doc_to_target": "label",
        "doc_to_choice": list(CHOICES),
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 2.0},
    }


register_task(TaskSpec(
    name=NAME,
    category="classification",
    output_type="loglikelihood",
    primary_metric="acc",
    higher_is_better=True,
    description="BoolQ validation (3270 yes/no questions on a passage), lm-eval's prompt; "
                "log-likelihood accuracy.",
    build=build,
    data_files=DATA_FILES,
    metrics=("acc",),
    lm_eval_task="boolq",
    data_schema=SCHEMA,
))
