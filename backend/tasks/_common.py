"""Helpers shared by the task modules (no torch, no lm-eval; not a task module itself)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from backend.tasks.base import TaskDataMissing, TaskSpec, fetch_command

CHAT_STOP_SEQUENCES: tuple[str, ...] = (
    "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>",
)
"""End-of-turn markers of common chat templates. The tokenizer's own EOS is added by lm-eval;
these catch models whose EOS differs from their end-of-turn token."""

LOGLIKELIHOOD_METRICS: list[dict[str, Any]] = [
    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
]

ACC_AND_NORM: tuple[str, ...] = ("acc", "acc_norm")
"""lm-eval's accuracy and its length-normalised variant: the metrics of most multiple-choice tasks."""


def require_files(task: str, data_dir: Path, files: Iterable[str], schema: str = "") -> None:
    """Raise TaskDataMissing naming every absent file, where it belongs and the command that fetches it."""
    missing = [f for f in files if not (data_dir / f).is_file()]
    if missing:
        layout = f"{schema}; see the README's task table" if schema else "see the README's task table"
        raise TaskDataMissing(
            f"{task} needs {' and '.join(missing)} under PRUNEBOARD_DATA_DIR={data_dir} ({layout}): "
            f'run "{fetch_command(task)}"'
        )


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as UTF-8 JSON lines (keys sorted, so equal rows give equal bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file or of a JSON list (`.json`)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of rows")
        return rows
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def require_fields(task: str, path: Path, rows: list[dict[str, Any]], fields: Iterable[str]) -> None:
    """A clear error naming the first row that lacks a required field."""
    fields = list(fields)
    for i, row in enumerate(rows):
        absent = [f for f in fields if f not in row]
        if absent:
            raise ValueError(f"{task}: row {i + 1} of {path} has no field(s) {', '.join(absent)}")


def json_dataset(splits: dict[str, Path]) -> dict[str, Any]:
    """lm-eval config keys that load local JSONL files through the `datasets` json builder."""
    return {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(path) for split, path in splits.items()}},
    }


def multiple_choice_config(task: str, source: dict[str, Any], *, doc_to_text: str, doc_to_target: str,
                           doc_to_choice: Any) -> dict[str, Any]:
    """lm-eval config (version 1.0) of a multiple-choice task scored by `acc` and `acc_norm`.
    `source`: its dataset and split keys (and any `process_docs`)."""
    return {
        "task": task,
        **source,
        "output_type": "multiple_choice",
        "doc_to_text": doc_to_text,
        "doc_to_target": doc_to_target,
        "doc_to_choice": doc_to_choice,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ACC_AND_NORM],
        "metadata": {"version": 1.0},
    }


def multiple_choice_task(name: str, description: str, build: Callable[[Path, Path], dict[str, Any]], *,
                         data_files: Iterable[str], lm_eval_task: str, data_schema: str = "") -> TaskSpec:
    """The TaskSpec of a log-likelihood classification task scored by `acc` (primary) and `acc_norm`."""
    return TaskSpec(name=name, category="classification", output_type="loglikelihood", primary_metric="acc",
                    higher_is_better=True, description=description, build=build, data_files=tuple(data_files),
                    metrics=ACC_AND_NORM, lm_eval_task=lm_eval_task, data_schema=data_schema)
