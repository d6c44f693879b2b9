"""Answer extraction and exact-match scoring for generation tasks (no torch, no lm-eval).

Generation tasks score the model's text in two steps, both defined here so they are versioned
together by `SCORER_VERSION` (part of every comparability key):

1. extraction: `extract_strict` finds an explicitly marked final answer (`#### N`, `\\boxed{N}`,
   "The answer is N"; the last such marker wins), `extract_flexible` takes the last number anywhere
   in the text. In the "think" paradigm `strip_reasoning` first drops the `<think>...</think>` block.
2. comparison: `exact_match` compares `normalize_number` of the prediction and of the gold answer,
   so `$1,234.00`, `1234.` and `1234` are equal.

Reasoning tasks (AIME, AMC, MATH-500, GPQA, JEEBench) add, in the same versioned module:

* `extract_boxed` / `extract_math_answer`: the last `\\boxed{...}` (nested braces kept), else the
  text after "the answer is", else the last number; `math_equal` compares with `math-verify`
  (`verify(parse(gold), parse(pred))`, so `\\frac{1}{2}` == `0.5`, LaTeX and sets too), falling back
  to `normalize_number` equality. Off the main thread math-verify's signal-based timeouts cannot
  work, so there both calls get `parsing_timeout=None, timeout_seconds=None`.
* `extract_choice_letter` / `extract_choice_letters`: a multiple-choice letter ("The answer is (C)",
  "**C**", `\\boxed{C}`, "Answer: C", else the last standalone capital letter among the options).
* `jee_score`: JEEBench per type (MCQ letter, MCQ(multiple) exact set + partial credit, Integer exact,
  Numeric within 0.01 absolute).
* `split_thinking` / `think_answer`, `cut_at_stop`, `repetition_rate`, `majority_vote`,
  `pass_at_k`: the think/answer split, stop strings applied after the reasoning, the degeneration
  indicator and test-time-scaling metrics (see the README).

Version 2: think-paradigm outputs are cut at the first stop string after the end-of-thinking marker
(stop strings are no longer applied inside the reasoning).

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
    # reasoning tasks and test-time scaling
    "THINK_MARKERS",
    "cut_at_stop",
    "extract_boxed",
    "extract_choice_letter",
    "extract_choice_letters",
    "extract_jee_answer",
    "extract_math_answer",
    "jee_score",
    "letter_filter",
    "majority_vote",
    "math_equal",
    "math_filter",
    "pass_at_k",
    "repetition_rate",
    "split_thinking",
    "think_answer",
    "think_markers",
]

SCORER_VERSION = "2"
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


# --- reasoning tasks --------------------------------------------------------------------------------

DEFAULT_THINK_MARKERS: tuple[str, str] = (THINK_OPEN, THINK_CLOSE)
THINK_MARKERS: dict[str, tuple[str, str]] = {
    # model family (transformers `config.model_type`) -> (start, end) of its reasoning block
    "qwen3": ("<think>", "</think>"),
    "qwen3_moe": ("<think>", "</think>"),
    "deepseek_v3": ("<think>", "</think>"),
    "seed_oss": ("<seed:think>", "</seed:think>"),
    "mistral": ("[THINK]", "[/THINK]"),
}
"""End-of-thinking markers per model family; anything else uses `<think>` / `</think>`."""


def think_markers(model_type: str | None) -> tuple[str, str]:
    return THINK_MARKERS.get((model_type or "").lower(), DEFAULT_THINK_MARKERS)


def split_thinking(text: str, markers: tuple[str, str] = DEFAULT_THINK_MARKERS) -> tuple[str | None, str, bool]:
    """(reasoning, answer, truncated) of a think model's output.

    The reasoning is the text before the first end marker (its start marker dropped when present;
    chat templates often put `<think>` in the prompt); the answer is what follows. No end marker:
    the whole text is reasoning, the answer is "" and `truncated` is True.
    """
    start, end = markers
    if end in text:
        reasoning, answer = text.split(end, 1)
        if start in reasoning:
            reasoning = reasoning.split(start, 1)[1]
        return reasoning.strip("\n"), answer.strip(), False
    reasoning = text.split(start, 1)[1] if start in text else text
    return reasoning.strip("\n"), "", True


def think_answer(text: str, markers: tuple[str, str] = DEFAULT_THINK_MARKERS) -> str:
    """The answer part of a think model's output, as evaluation scores it (`split_thinking`).

    "" when the end marker is missing (a truncated trace has no answer). Evaluation's answer filter
    and `jobs.rescore` both call this, so a rescored run reads the same answers it was scored on.
    """
    return split_thinking(text, tuple(markers))[1]


def cut_at_stop(text: str, stops: Sequence[str], end_marker: str | None = None) -> str:
    """`text` up to the first stop string; with `end_marker`, only stops after the marker count."""
    offset = 0
    if end_marker is not None:
        if end_marker not in text:
            return text
        offset = text.index(end_marker) + len(end_marker)
    cut = len(text)
    for stop in stops:
        if stop:
            pos = text.find(stop, offset)
            if pos != -1:
                cut = min(cut, pos)
    return text[:cut]


def repetition_rate(text: str | None, n: int = 4) -> float:
    """Share of repeated word n-grams: 1 - distinct / total over the whitespace-split words (0 if < n words)."""
    words = (text or "").split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def _balanced(text: str, open_at: int) -> str | None:
    """Content of the brace group opening at text[open_at] == '{', or None when unbalanced."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
    return None


def extract_boxed(text: str | None) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces kept; None when absent."""
    if not text:
        return None
    for match in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        content = _balanced(text, match.end() - 1)
        if content is not None:
            return content.strip()
    return None


_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def extract_math_answer(text: str | None) -> str | None:
    """A maths answer: last `\\boxed{}`, else what follows the last "answer is"/"answer:", else the last number."""
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed:
        return boxed
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        tail = matches[-1].group(1).strip().strip("*").strip()
        tail = re.split(r"(?<!\d)\.(?!\d)|\n", tail)[0].strip().strip("$").strip()
        if tail:
            return tail
    return extract_flexible(text)


def _mv_call(gold: str, pred: str) -> bool:
    import threading

    from math_verify import parse, verify

    if threading.current_thread() is threading.main_thread():
        gold_p, pred_p = parse(gold), parse(pred)
        return bool(verify(gold_p, pred_p))
    gold_p = parse(gold, parsing_timeout=None)
    pred_p = parse(pred, parsing_timeout=None)
    return bool(verify(gold_p, pred_p, timeout_seconds=None))


def _latex(text: str) -> str:
    text = text.strip()
    return text if (text.startswith("$") or "\\boxed" in text) else f"${text}$"


def math_equal(predicted: str | None, gold: str) -> bool:
    """Mathematical equivalence of an extracted answer and the gold answer (math-verify, then numbers)."""
    if predicted is None or not str(predicted).strip():
        return False
    pred, gold = str(predicted), str(gold)
    if pred.strip() == gold.strip():
        return True
    a, b = normalize_number(pred), normalize_number(gold)
    if a is not None and a == b:
        return True
    try:
        return _mv_call(_latex(gold), _latex(pred))
    except Exception:  # noqa: BLE001 - a parse/verify failure means "not shown equal"
        return False


def math_filter(resps: Iterable[Sequence[str]], docs: Sequence[dict]) -> list[list[str | None]]:
    return _map(extract_math_answer, resps)


_LETTER_PATTERNS = (
    r"\\boxed\{\s*\(?([A-Z])\)?\s*\}",
    r"answer\s*(?:is|:)?\s*:?\s*(?:option\s*)?[\*\(\[]*\s*([A-Z])\b(?![a-z'])",
    r"\*\*\s*\(?([A-Z])\)?\s*\*\*",
    r"^\s*\(?([A-Z])\)?\s*[\.\):]?\s*$",
)


def extract_choice_letter(text: str | None, letters: str = "ABCD") -> str | None:
    """The chosen option letter: the last explicit marker ("The answer is (C)", "**C**", `\\boxed{C}`,
    "Answer: C", a line holding only the letter), else the last standalone letter among `letters`."""
    if not text:
        return None
    best: tuple[int, str] | None = None
    for pattern in _LETTER_PATTERNS:
        for match in re.finditer(pattern, text, re.IGNORECASE | re.MULTILINE if "^" in pattern else re.IGNORECASE):
            letter = match.group(1).upper()
            if letter in letters and (best is None or match.start(1) > best[0]):
                best = (match.start(1), letter)
    if best:
        return best[1]
    found = re.findall(r"(?<![A-Za-z])\(?([" + letters + r"])\)?(?![A-Za-z])", text)
    return found[-1] if found else None


def extract_choice_letters(text: str | None, letters: str = "ABCD") -> str | None:
    """All chosen letters of a multiple-answer question, sorted ("A, C" / "(A) and (C)" / `\\boxed{AC}`)."""
    if not text:
        return None
    spans = []
    boxed = extract_boxed(text)
    if boxed:
        spans.append(boxed)
    else:
        matches = list(re.finditer(r"answer\s*(?:is|are|:)\s*:?\s*(.+)", text, re.IGNORECASE))
        if matches:
            spans.append(matches[-1].group(1).split("\n")[0])
    for span in spans:
        cleaned = re.sub(r"\\text\{|\\mathrm\{|[{}$*]|\band\b|option[s]?", " ", span, flags=re.IGNORECASE)
        compact = re.sub(r"[\s,;()\[\].]", "", cleaned)
        if re.fullmatch("[" + letters + "]+", compact):
            return "".join(sorted(set(compact)))
        found = re.findall(r"(?<![A-Za-z])\(?([" + letters + r"])\)?(?![A-Za-z])", cleaned)
        if found:
            return "".join(sorted(set(found)))
    single = extract_choice_letter(text, letters)
    return single


def letter_filter(resps: Iterable[Sequence[str]], docs: Sequence[dict]) -> list[list[str | None]]:
    return _map(extract_choice_letter, resps)


def _to_float(text: str | None) -> float | None:
    if text is None:
        return None
    cleaned = str(text).strip().strip("$").strip()
    cleaned = re.sub(r"\\(?:text|mathrm)\{[^}]*\}", "", cleaned).strip()
    frac = re.fullmatch(r"-?\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", cleaned)
    try:
        if frac:
            sign = -1.0 if cleaned.startswith("-") else 1.0
            return sign * float(frac.group(1)) / float(frac.group(2))
        number = normalize_number(cleaned)
        if number is not None:
            return float(number)
        match = NUMBER_RE.search(cleaned)
        return float(normalize_number(match.group(0))) if match and normalize_number(match.group(0)) else None
    except (ValueError, ZeroDivisionError):
        return None


JEE_NUMERIC_TOLERANCE = 0.01
"""Numeric answers are given to two decimal places: |pred - gold| <= 0.01 counts as correct."""


def extract_jee_answer(text: str | None, qtype: str) -> str | None:
    """The answer of a JEEBench reply in the form its type needs (letters, integer or number text)."""
    if qtype == "MCQ":
        return extract_choice_letter(text)
    if qtype == "MCQ(multiple)":
        return extract_choice_letters(text)
    answer = extract_math_answer(text)
    value = _to_float(answer)
    if value is None:
        return None
    return normalize_number(repr(value)) if qtype == "Integer" else format(value, "g")


def jee_score(predicted: str | None, gold: str, qtype: str) -> dict[str, float]:
    """JEEBench scores of one extracted answer.

    * `exact_match`: MCQ same letter; MCQ(multiple) exactly the gold set; Integer same integer;
      Numeric within `JEE_NUMERIC_TOLERANCE`.
    * `partial_credit`: as exact_match, except MCQ(multiple) earns the share of gold options chosen
      when no wrong option is chosen (any wrong option: 0), as in JEE Advanced's partial marking.
    """
    if predicted is None:
        return {"exact_match": 0.0, "partial_credit": 0.0}
    if qtype == "MCQ(multiple)":
        chosen, wanted = set(predicted), set(gold)
        exact = float(chosen == wanted)
        partial = 0.0 if (chosen - wanted or not chosen) else len(chosen) / len(wanted)
        return {"exact_match": exact, "partial_credit": partial}
    if qtype == "MCQ":
        ok = float(predicted == gold)
    elif qtype == "Integer":
        p, g = _to_float(predicted), _to_float(gold)
        ok = float(p is not None and g is not None and p == g)
    else:
        p, g = _to_float(predicted), _to_float(gold)
        ok = float(p is not None and g is not None and abs(p - g) <= JEE_NUMERIC_TOLERANCE + 1e-9)
    return {"exact_match": ok, "partial_credit": ok}


# --- test-time scaling -----------------------------------------------------------------------------


def majority_vote(answers: Sequence[str | None], same=None) -> str | None:
    """The most frequent non-None answer (ties: the one seen first); `same(a, b)` groups equivalents."""
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if (same(group[0], answer) if same else group[0] == answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal lengths


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    from math import comb

    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
