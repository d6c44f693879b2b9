"""ARC-Easy and ARC-Challenge (grade-school science, 3-5 options) scored like lm-eval's `arc_easy`
and `arc_challenge` tasks (version 1.0).

Data: `arc/ARC-Easy-Test.jsonl` and `arc/ARC-Challenge-Test.jsonl` under
PRUNEBOARD_DATA_DIR, one question a line, in either layout:
* the Hugging Face `allenai/ai2_arc` layout: `question` (text), `choices` {`text`: [...],
  `label`: [...]}, `answerKey`;
* the original AI2 release layout: `question` {`stem`, `choices`: [{`text`, `label`}, ...]},
  `answerKey`.
`build` writes the rows in the first layout into the work directory. `python -m jobs data fetch
arc-easy arc-challenge` downloads them from `allenai/ai2_arc` (`backend.taskdata`).

Prompt, choices, target and metrics are lm-eval's: context `Question: {{question}}\\nAnswer:`,
continuations " " + each choice text, target the index of `answerKey` among the labels, metrics
`acc` and `acc_norm`. The test split is evaluated; few-shot examples (if asked for) come from the
same file, the evaluated question left out.
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

SCHEMA = ("JSON lines: question, choices {text: [...], label: [...]}, answerKey "
          "(allenai/ai2_arc fields), or the original AI2 layout question {stem, choices: [{text, label}]}")
SUBSETS = {
    "arc-easy": ("ARC-Easy", "arc_easy", "arc/ARC-Easy-Test.jsonl", 2376),
    "arc-challenge": ("ARC-Challenge", "arc_challenge", "arc/ARC-Challenge-Test.jsonl", 1172),
}

SPLITS = {"test_split": "test", "fewshot_split": "test"}
"""One local file: evaluated, and the few-shot pool (lm-eval leaves the evaluated row out)."""


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    """A row in the Hugging Face layout, whichever layout it came in."""
    question = row["question"]
    if isinstance(question, dict):  # original AI2 release
        options = question["choices"]
        question = question["stem"]
        choices = {"text": [o["text"] for o in options], "label": [o["label"] for o in options]}
    else:
        choices = {"text": list(row["choices"]["text"]), "label": list(row["choices"]["label"])}
    return {"id": str(row.get("id", "")), "question": question, "choices": choices,
            "answerKey": row["answerKey"]}


def lm_eval_config(name: str, dataset: dict[str, Any]) -> dict[str, Any]:
    return multiple_choice_config(name, {**dataset, **SPLITS},
                                  doc_to_text="Question: {{question}}\nAnswer:",
                                  doc_to_target="{{choices.label.index(answerKey)}}", doc_to_choice="{{choices.text}}")


def _builder(name: str):
    _, _, data_file, _ = SUBSETS[name]

    def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
        require_files(name, data_dir, [data_file], SCHEMA)
        rows = read_rows(data_dir / data_file)
        require_fields(name, data_dir / data_file, rows, ("question", "answerKey"))
        path = write_jsonl(workdir / name / "test.jsonl", [normalise(r) for r in rows])
        return lm_eval_config(name, json_dataset({"test": path}))

    return build


for _name, (_subset, _lm_eval, _file, _rows) in SUBSETS.items():
    register_task(multiple_choice_task(
        _name,
        f"{_subset} test ({_rows} science questions, 3-5 options), lm-eval's prompt; "
        "log-likelihood accuracy (acc, acc_norm).",
        _builder(_name),
        data_files=(_file,),
        lm_eval_task=_lm_eval,
        data_schema=SCHEMA,
    ))
