"""PIQA (physical commonsense, 2 choices) scored by log-likelihood, exactly as lm-eval's `piqa` task.

Data: `piqa/dev.jsonl` (goal, sol1, sol2) and `piqa/dev-labels.lst` (one 0/1 label a line) under
PRUNEBOARD_DATA_DIR. `build` joins them into one JSONL in the work directory. The prompt, choices,
target and metrics are those of `lm_eval/tasks/piqa/piqa.yaml` (version 1.0): context
`Question: {{goal}}\\nAnswer:`, continuations " sol1" / " sol2", metrics `acc` and `acc_norm`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.tasks._common import (
    json_dataset,
    multiple_choice_config,
    multiple_choice_task,
    read_jsonl,
    require_files,
    write_jsonl,
)
from backend.tasks.base import register_task

DATA_FILES = ("piqa/dev.jsonl", "piqa/dev-labels.lst")


def load_rows(data_dir: Path) -> list[dict[str, Any]]:
    """The dev rows with their integer labels joined in."""
    require_files("piqa", data_dir, DATA_FILES)
    rows = read_jsonl(data_dir / DATA_FILES[0])
    labels = (data_dir / DATA_FILES[1]).read_text(encoding="utf-8").split()
    if len(labels) != len(rows):
        raise ValueError(
            f"piqa: {len(rows)} rows in {DATA_FILES[0]} but {len(labels)} labels in {DATA_FILES[1]}"
        )
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(label)}
            for r, label in zip(rows, labels)]


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    path = write_jsonl(workdir / "piqa" / "validation.jsonl", load_rows(data_dir))
    return multiple_choice_config("piqa", {**json_dataset({"validation": path}), "validation_split": "validation"},
                                  doc_to_text="Question: {{goal}}\nAnswer:", doc_to_target="label",
                                  doc_to_choice="{{[sol1, sol2]}}")


register_task(multiple_choice_task(
    "piqa",
    "PIQA dev (1838 two-choice physical commonsense questions), lm-eval's prompt; "
    "log-likelihood accuracy (acc, acc_norm), chance 0.5.",
    build,
    data_files=DATA_FILES,
    lm_eval_task="piqa",
))
