"""WinoGrande (pronoun resolution, 2 options) scored like lm-eval's `winogrande` task.

Data: `winogrande/dev.jsonl` (sentence with `_`, option1, option2, answer "1"/"2") under
PRUNEBOARD_DATA_DIR; read in place. Partial evaluation as in
`lm_eval/tasks/winogrande/preprocess_winogrande.py` (version 1.0): each option fills the blank to
form one context (`sentence[:blank] + option`), the shared continuation is the rest of the
sentence, and the prediction is the context under which that continuation is most likely. The three
functions below are verbatim re-implementations of lm-eval's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.tasks._common import json_dataset, require_files
from backend.tasks.base import TaskSpec, register_task

DATA_FILES = ("winogrande/dev.jsonl",)


def doc_to_text(doc: dict[str, Any]) -> int:
    """The index of the right context (an int tells lm-eval the task has multiple inputs)."""
    answer_to_num = {"1": 0, "2": 1}
    return answer_to_num[doc["answer"]]


def doc_to_target(doc: dict[str, Any]) -> str:
    """The continuation scored under every context: the sentence after the blank."""
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """One context per option: the sentence up to the blank, filled with that option."""
    idx = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    return [doc["sentence"][:idx] + opt for opt in options]


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files("winogrande", data_dir, DATA_FILES)
    return {
        "task": "winogrande",
        **json_dataset({"validation": data_dir / DATA_FILES[0]}),
        "validation_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": doc_to_text,
        "doc_to_target": doc_to_target,
        "doc_to_choice": doc_to_choice,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


register_task(TaskSpec(
    name="winogrande",
    category="classification",
    output_type="loglikelihood",
    primary_metric="acc",
    higher_is_better=True,
    description="WinoGrande 1.1 dev (1267 fill-in-the-blank sentences), lm-eval's partial scoring; "
                "log-likelihood accuracy, chance 0.5.",
    build=build,
    data_files=DATA_FILES,
    metrics=("acc",),
    lm_eval_task="winogrande",
))
