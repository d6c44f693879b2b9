"""The fixed word lists every layer shares, each defined once: paradigms, method families and task
categories. The Literal types are the source; the tuples are read from them."""
from __future__ import annotations

from typing import Literal, get_args

__all__ = ["ANSWER_CATEGORIES", "FAMILIES", "ordered_families", "PARADIGMS", "TASK_CATEGORIES", "Family", "Paradigm", "TaskCategory"]

Paradigm = Literal["instruct", "think"]
"""instruct: answer directly; think: reason in a trace before the answer."""
Family = Literal["dense", "unstructured", "depth", "width", "dynamic"]
"""A pruning method's family (`PruningMethod.family`), in the leaderboard's order."""
TaskCategory = Literal["classification", "generation", "reasoning", "perplexity"]
"""A task's category (`TaskSpec.category`)."""

PARADIGMS: tuple[str, ...] = get_args(Paradigm)
FAMILIES: tuple[str, ...] = get_args(Family)
TASK_CATEGORIES: tuple[str, ...] = get_args(TaskCategory)
ANSWER_CATEGORIES: tuple[str, ...] = TASK_CATEGORIES[:3]
"""Categories scored by whether answers are correct (perplexity is not)."""


def ordered_families(present: set[str]) -> list[str]:
    """The families in `present`: `FAMILIES` order first, then any new family a method brought."""
    return [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))
