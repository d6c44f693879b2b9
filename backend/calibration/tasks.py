"""The tasks whose rows can be calibration prompts (`task-aligned` and `self-generated` sources):
where their splits live and how a row renders. The config checks a calibration task's name against
them, and `backend.calibration.build` builds the data from them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["CALIBRATION_TASKS", "CalibrationTask"]


@dataclass(frozen=True)
class CalibrationTask:
    """A task whose rows can be calibration prompts: where its splits live and how a row renders."""

    name: str
    splits: dict[str, str]
    """split -> file under PRUNEBOARD_DATA_DIR (JSONL)."""
    prompt: Callable[[dict[str, Any]], str]
    """The user turn, as the task's evaluation prompt asks it."""
    answer: Callable[[dict[str, Any]], tuple[str, str]]
    """(reasoning, final answer) of the reference solution."""


def _gsm8k_prompt(row: dict[str, Any]) -> str:
    from backend.tasks.gsm8k import PROMPT

    return PROMPT.replace("{{question}}", row["question"])


def _gsm8k_answer(row: dict[str, Any]) -> tuple[str, str]:
    text = re.sub(r"<<[^<>]*>>", "", row["answer"])  # GSM8K's calculator annotations
    reasoning, _, final = text.rpartition("####")
    return reasoning.strip(), f"The answer is {final.strip()}."


CALIBRATION_TASKS: dict[str, CalibrationTask] = {
    "gsm8k": CalibrationTask(
        name="gsm8k",
        splits={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
        prompt=_gsm8k_prompt,
        answer=_gsm8k_answer,
    ),
}
"""Prompt sources of `task-aligned` and `self-generated` calibration."""
