"""Where a catalog task's rows come from: local files under PRUNEBOARD_DATA_DIR, else the hub.

A task with local files runs from them (offline, hashed into the manifest). When they are absent
and the task names a hub dataset, it reads that dataset by its lm-eval id, but only when the hub is
enabled (`backend.tasks.base.hub_enabled`: PRUNEBOARD_USE_HUB=1 and no HF offline variable). Otherwise `TaskDataMissing` says where to put the
files and which fields each row needs. No torch, no lm-eval.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backend.tasks._common import json_dataset
from backend.tasks.base import TaskDataMissing, hub_enabled


def local_or_hub(task: str, data_dir: Path, files: Iterable[str], *, schema: str,
                 hub_dataset: str | None) -> bool:
    """True when every file is present locally, False when the hub is to be used; else raise."""
    missing = [f for f in files if not (data_dir / f).is_file()]
    if not missing:
        return True
    if hub_dataset is not None and hub_enabled():
        return False
    hub = (f"; with hub access (HF_HUB_OFFLINE unset) it reads {hub_dataset} instead"
           if hub_dataset else "")
    raise TaskDataMissing(
        f"{task} needs {' and '.join(missing)} under PRUNEBOARD_DATA_DIR={data_dir} "
        f"({schema}; see the README's task table){hub}"
    )


def dataset_keys(local: bool, split: str, path: Path | None, hub_path: str | None,
                 hub_name: str | None) -> dict[str, Any]:
    """lm-eval dataset keys: the local JSONL file as `split`, or the hub dataset."""
    if local:
        assert path is not None
        return json_dataset({split: path})
    return {"dataset_path": hub_path, "dataset_name": hub_name}


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
