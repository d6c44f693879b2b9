"""Helpers shared by the task modules (no torch, no lm-eval; not a task module itself)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from backend.tasks.base import TaskDataMissing

CHAT_STOP_SEQUENCES: tuple[str, ...] = (
    "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>",
)
"""End-of-turn markers of common chat templates. The tokenizer's own EOS is added by lm-eval;
these catch models whose EOS differs from their end-of-turn token."""

LOGLIKELIHOOD_METRICS: list[dict[str, Any]] = [
    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
]


def require_files(task: str, data_dir: Path, files: Iterable[str]) -> None:
    """Raise TaskDataMissing naming every absent file and where it belongs."""
    missing = [f for f in files if not (data_dir / f).is_file()]
    if missing:
        raise TaskDataMissing(
            f"{task} needs {' and '.join(missing)} under PRUNEBOARD_DATA_DIR={data_dir} "
            "(see the README's task table and ../shared/data/README.md for the layout)"
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


def json_dataset(splits: dict[str, Path]) -> dict[str, Any]:
    """lm-eval config keys that load local JSONL files through the `datasets` json builder."""
    return {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(path) for split, path in splits.items()}},
    }
