"""Answer extraction and exact-match scoring for generation tasks (no torch, no lm-eval).

Generation tasks score the model's text in two steps, both defined here so they are versioned
together by `SCORER_VERSION` (part of every comparability key):

1. extraction: `extract_strict` finds an explicitly marked final answer (`#### N`, `\\boxed{N}`,
   "The answer is N"; the last such marker wins), `extract_flexible` takes the last number anywhere
   in the text. In the "think" paradigm `strip_reasoning` first drops the `<think>...</think>` block.
2. comparison: `exact_match` compares `normalize_number` of the prediction and of the gold answer,
   so `$1,234.00`, `1234.` and `1234` are equal.

The `*_filter` functions have the signature of lm-eval's `custom` filter (`filter_fn(resps, docs)`),
so task configs can use them in a `filter_list` in place of lm-eval's regex filters.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Sequence

__all__ = [
    "SCORER_VERSION",
    "exact_match",
    "extract_flexible",
    "extract_gsm8k_gold",
    "extract_strict",
    "flexible_filter",
    "normalize_number",
    "reasoning_filter",
    "strict_filter",
    "strip_reasoning",
]

SCORER_VERSION = "1"
"""Bump whenever extraction or normalisation changes: scores of different versions are not comparable."""

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"
NUMBER_RE = re.compile(_NUMBER)
"""A number as models write it: optional sign and `$`, thousands commas, optional decimals."""

_STRICT_RES = (
    re.compile(r"####\s*(" + _NUMBER + r")"),
    re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}"),
    re.compile(r"answer is\s*:?\s*\**\s*(" + _NUMBER + r")", re.IGNORECASE),
)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def normalize_number(text: str | None) -> str | None:
    """Canonical text of a number, or None when `text` is not one.

    Drops `$`, `%`, thousands commas, spaces and a trailing full stop; integral values lose their
    decimals (`12.0` -> `12`, `-0` -> `0`) and others their trailing zeros (`2.50` -> `2.5`).
    """
    if text is None:
        return None
    cleaned = re.sub(r"[\s,$%]", "", str(text)).rstrip(".")
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_gsm8k_gold(answer: str) -> str:
    """The normalised number after `####` in a GSM8K reference answer."""
    _, sep, tail = answer.rpartition("####")
    value = normalize_number(tail.strip()) if sep else None
    if value is None:
        raise ValueError(f"GSM8K answer has no '#### N' final line: {answer[-80:]!r}")
    return value


def strip_reasoning(text: str) -> str:
    """The part of a "think" model's output after its reasoning block.

    Text after the last `</think>`; "" when a `<think>` block was opened but never closed (the
    budget ran out before an answer); the text unchanged when there is no block.
    """
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        return ""
    return text


def extract_strict(text: str | None) -> str | None:
    """The last explicitly marked answer (`#### N`, `\\boxed{N}`, "the answer is N"), normalised."""
    if not text:
        return None
    best: tuple[int, str] | None = None
    for pattern in _STRICT_RES:
        for match in pattern.finditer(text):
            if best is None or match.start(1) > best[0]:
                best = (match.start(1), match.group(1))
    return normalize_number(best[1]) if best else None


def extract_flexible(text: str | None) -> str | None:
    """The last number anywhere in the text, normalised."""
    if not text:
        return None
    for match in reversed(list(NUMBER_RE.finditer(text))):
        value = normalize_number(match.group(0))
        if value is not None:
            return value
    return None


def exact_match(predicted: str | None, gold: str) -> float:
    """1.0 when both are numbers with the same normalised value, else 0.0."""
    pred = normalize_number(predicted)
    return float(pred is not None and pred == normalize_number(gold))


# lm-eval `custom` filters: `resps` holds one list of (repeated) responses per request.


def _map(fn, resps: Iterable[Sequence[Any]]) -> list[list[Any]]:
    return [[fn(r) for r in rs] for rs in resps]


def strict_filter(resps: Iterable[Sequence[str]], docs: Sequence[dict]) -> list[list[str | None]]:
    return _map(extract_strict, resps)


def flexible_filter(resps: Iterable[Sequence[str]], docs: Sequence[dict]) -> list[list[str | None]]:
    return _map(extract_flexible, resps)


def reasoning_filter(resps: Iterable[Sequence[str]], docs: Sequence[dict]) -> list[list[str]]:
    return _map(strip_reasoning, resps)
