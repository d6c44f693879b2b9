"""Self-contained tasks generated from templates and a fixed seed: no download, no data directory.

* `synthetic-mc`: two-choice sentence completion scored by log-likelihood (lm-eval
  `multiple_choice`, metric `acc`): world knowledge ("The capital of France is" Paris / Tokyo),
  antonyms, "is a kind of" categories and two-digit addition. A small instruct model such as
  SmolLM2-135M scores well above the 0.5 of chance.
* `synthetic-arith`: short-answer arithmetic through the chat template ("What is 17 + 25? Answer
  with the number only."), scored by exact match on the last number of the reply
  (`backend.evaluation.scoring.flexible_filter`, our own filter in place of lm-eval's regex).

`build` writes the rows as JSONL into the work directory; the same code and seed always give the
same bytes (tests check it), and the file's sha256 goes into the task manifest.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from backend.evaluation.scoring import exact_match, flexible_filter
from backend.tasks._common import CHAT_STOP_SEQUENCES, json_dataset, write_jsonl
from backend.tasks.base import TaskSpec, register_task

SEED = 20240601
"""Generator seed. Changing it (or any list below) changes the data and therefore the data hash."""
VERSION = 1.0

_CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "the United Kingdom": "London",
    "Greece": "Athens", "Portugal": "Lisbon", "Austria": "Vienna", "Ireland": "Dublin",
    "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Canada": "Ottawa",
    "Thailand": "Bangkok", "South Korea": "Seoul", "Turkey": "Ankara", "Kenya": "Nairobi",
    "Peru": "Lima", "Cuba": "Havana", "Hungary": "Budapest", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Belgium": "Brussels", "the Netherlands": "Amsterdam",
}
_OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow", "happy": "sad",
    "open": "closed", "tall": "short", "wet": "dry", "hard": "soft", "full": "empty",
    "early": "late", "rich": "poor", "left": "right", "strong": "weak", "loud": "quiet",
    "thick": "thin", "black": "white", "win": "lose", "push": "pull", "first": "last",
    "true": "false", "buy": "sell", "love": "hate", "inside": "outside", "north": "south",
}
_CATEGORIES = {
    "fruit": ["apple", "banana", "orange", "grape", "cherry", "mango", "pear", "peach"],
    "animal": ["dog", "cat", "horse", "cow", "lion", "tiger", "rabbit", "elephant"],
    "vehicle": ["car", "bus", "truck", "bicycle", "train", "motorcycle"],
    "musical instrument": ["piano", "guitar", "violin", "drum", "flute", "trumpet"],
    "vegetable": ["carrot", "potato", "onion", "cabbage", "lettuce"],
    "tool": ["hammer", "saw", "wrench", "screwdriver", "shovel"],
}
MC_ADDITIONS = 30
ARITH_ROWS = 100
ARITH_MAX_NEW_TOKENS = 32
"""Room for a short reply such as "17 + 25 = 42."."""


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


def _pair(rng: random.Random, right: str, wrong: str) -> tuple[list[str], int]:
    label = rng.randrange(2)
    return ([right, wrong] if label == 0 else [wrong, right]), label


def generate_mc_rows(seed: int = SEED) -> list[dict[str, Any]]:
    """All synthetic-mc rows: question, two choices, the index of the right one, and its kind."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []

    def add(kind: str, question: str, right: str, wrong: str) -> None:
        choices, label = _pair(rng, right, wrong)
        rows.append({"kind": kind, "question": question, "choices": choices, "label": label})

    capitals = list(_CAPITALS.values())
    for country, capital in _CAPITALS.items():
        add("capital", f"The capital of {country} is", capital,
            rng.choice([c for c in capitals if c != capital]))
    antonyms = list(_OPPOSITES.values())
    for word, antonym in _OPPOSITES.items():
        add("opposite", f"The opposite of {word} is", antonym,
            rng.choice([a for a in antonyms if a != antonym and a != word]))
    for category, items in _CATEGORIES.items():
        others = [c for c in _CATEGORIES if c != category]
        for item in items:
            add("category", f"{_article(item)} {item} is a kind of", category, rng.choice(others))
    for _ in range(MC_ADDITIONS):
        a, b = rng.randint(10, 44), rng.randint(10, 44)
        wrong = a + b + rng.choice([-1, 1]) * rng.randint(10, 30)
        if wrong < 10 or wrong > 99:
            wrong = a + b - 11 if a + b > 30 else a + b + 11
        add("addition", f"{a} + {b} =", str(a + b), str(wrong))
    rng.shuffle(rows)  # so that `limit` takes a mix of kinds
    return rows


def generate_arith_rows(seed: int = SEED, count: int = ARITH_ROWS) -> list[dict[str, Any]]:
    """Arithmetic questions with their integer answers (as text), cycling through + - x."""
    rng = random.Random(seed + 1)
    rows = []
    for i in range(count):
        op = "+-×"[i % 3]
        if op == "+":
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            answer = a + b
        elif op == "-":
            a = rng.randint(10, 99)
            b = rng.randint(1, a)
            answer = a - b
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            answer = a * b
        rows.append({
            "question": f"What is {a} {op} {b}? Answer with the number only.",
            "answer": str(answer),
        })
    return rows


def build_mc(data_dir: Path, workdir: Path) -> dict[str, Any]:
    path = write_jsonl(workdir / "synthetic-mc" / "test.jsonl", generate_mc_rows())
    return {
        "task": "synthetic-mc",
        **json_dataset({"test": path}),
        "test_split": "test",
        "fewshot_split": "test",  # lm-eval leaves the evaluated row out of its own few-shot examples
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": VERSION},
    }


def arith_process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    """lm-eval `process_results`: `results[0]` is the number our filter extracted (or None)."""
    return {"exact_match": exact_match(results[0], doc["answer"])}


def arith_rescore(sample) -> tuple[str | None, dict[str, float]]:
    """`TaskSpec.rescore`: the filter of `build_arith` again on the stored answer text, no model."""
    text = sample.answer if sample.answer is not None else sample.output
    extracted = flexible_filter([[text]], [{}])[0][0]
    return extracted, {"exact_match": exact_match(extracted, sample.gold)}


def build_arith(data_dir: Path, workdir: Path) -> dict[str, Any]:
    path = write_jsonl(workdir / "synthetic-arith" / "test.jsonl", generate_arith_rows())
    return {
        "task": "synthetic-arith",
        **json_dataset({"test": path}),
        "test_split": "test",
        "fewshot_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{question}}",
        "doc_to_target": "answer",
        "generation_kwargs": {
            "until": list(CHAT_STOP_SEQUENCES),
            "do_sample": False,
            "max_gen_toks": ARITH_MAX_NEW_TOKENS,
        },
        # Our own filter (not lm-eval's regex): the last number in the reply, normalised.
        "filter_list": [
            {"name": "flexible-extract",
             "filter": [{"function": "custom", "filter_fn": flexible_filter}, {"function": "take_first"}]},
        ],
        "process_results": arith_process_results,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": VERSION},
    }


register_task(TaskSpec(
    name="synthetic-mc",
    category="classification",
    output_type="loglikelihood",
    primary_metric="acc",
    higher_is_better=True,
    description="Two-choice completions (capitals, antonyms, categories, additions) from a fixed seed; "
                "log-likelihood accuracy, chance 0.5.",
    build=build_mc,
    metrics=("acc",),
))

register_task(TaskSpec(
    name="synthetic-arith",
    category="reasoning",
    output_type="generate",
    primary_metric="exact_match",
    higher_is_better=True,
    description="Short arithmetic questions (+, -, ×) from a fixed seed, answered through the chat "
                "template; exact match on the last number of the reply.",
    build=build_arith,
    metrics=("exact_match",),
    default_max_new_tokens=ARITH_MAX_NEW_TOKENS,
    rescore=arith_rescore,
))
