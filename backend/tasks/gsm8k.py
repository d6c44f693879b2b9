"""GSM8K (grade-school maths word problems) generated through the model's chat template.

Data: `gsm8k/test.jsonl` (question, answer ending in `#### N`) under PRUNEBOARD_DATA_DIR, read in
place; `gsm8k/train.jsonl`, when present, is the few-shot pool (its worked answers, `#### N`
included, are the assistant turns).

Scoring uses our own filters from `backend.evaluation.scoring` instead of lm-eval's regexes, with the same
names as lm-eval's gsm8k task:
* `exact_match,strict-match`: an explicitly marked answer (`#### N`, `\\boxed{N}`, "The answer is N").
* `exact_match,flexible-extract` (primary): the last number in the reply. Chat models rarely write
  `#### N` zero-shot, so the strict score mostly measures format-following; the flexible one is the
  better measure of whether the maths came out right.
Both compare normalised numbers (`$1,234.00` == `1234`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.evaluation.scoring import (
    exact_match,
    extract_gsm8k_gold,
    flexible_filter,
    strict_filter,
)
from backend.tasks._common import CHAT_STOP_SEQUENCES, json_dataset, require_files
from backend.tasks.base import TaskSpec, register_task

DATA_FILES = ("gsm8k/test.jsonl",)
FEWSHOT_FILE = "gsm8k/train.jsonl"
MAX_NEW_TOKENS = 256
"""Room for a short chain of thought on CPU; raise `generation.max_new_tokens` for long reasoners."""
PROMPT = (
    "Question: {{question}}\n"
    'Solve the problem step by step, then finish with "The answer is" followed by the final number.'
)
STOP_SEQUENCES = ("Question:", *CHAT_STOP_SEQUENCES)


def doc_to_target(doc: dict[str, Any]) -> str:
    """The gold number, normalised (`#### 1,234` -> `1234`)."""
    return extract_gsm8k_gold(doc["answer"])


def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    """lm-eval `process_results`, called once per filter with that filter's extracted number."""
    return {"exact_match": exact_match(results[0], doc_to_target(doc))}


def rescore(sample) -> tuple[str | None, dict[str, float]]:
    """`TaskSpec.rescore`: both filters of `build` again on the stored answer text, no model."""
    text = sample.answer if sample.answer is not None else sample.output
    strict = strict_filter([[text]], [{}])[0][0]
    flexible = flexible_filter([[text]], [{}])[0][0]
    return flexible, {
        "exact_match,strict-match": exact_match(strict, sample.gold),
        "exact_match,flexible-extract": exact_match(flexible, sample.gold),
    }


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files("gsm8k", data_dir, DATA_FILES)
    splits = {"test": data_dir / DATA_FILES[0]}
    # Few-shot examples come from train.jsonl when present, else from the other test rows.
    fewshot: dict[str, Any] = {"fewshot_split": "test"}
    if (data_dir / FEWSHOT_FILE).is_file():
        splits["train"] = data_dir / FEWSHOT_FILE
        fewshot = {"training_split": "train", "fewshot_split": "train"}
    return {
        "task": "gsm8k",
        **json_dataset(splits),
        "test_split": "test",
        **fewshot,
        "output_type": "generate_until",
        "doc_to_text": PROMPT,
        "doc_to_target": doc_to_target,
        "fewshot_config": {"doc_to_target": "{{answer}}"},
        "generation_kwargs": {
            "until": list(STOP_SEQUENCES), "do_sample": False, "max_gen_toks": MAX_NEW_TOKENS,
        },
        "filter_list": [
            {"name": "strict-match",
             "filter": [{"function": "custom", "filter_fn": strict_filter}, {"function": "take_first"}]},
            {"name": "flexible-extract",
             "filter": [{"function": "custom", "filter_fn": flexible_filter}, {"function": "take_first"}]},
        ],
        "process_results": process_results,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


register_task(TaskSpec(
    name="gsm8k",
    category="reasoning",
    output_type="generate",
    primary_metric="exact_match,flexible-extract",
    higher_is_better=True,
    description="GSM8K test (1319 word problems), zero-shot chain of thought through the chat template; "
                "exact match on the last number (flexible) and on a marked answer (strict).",
    build=build,
    data_files=DATA_FILES,
    metrics=("exact_match,strict-match", "exact_match,flexible-extract"),
    default_max_new_tokens=MAX_NEW_TOKENS,
    rescore=rescore,
    lm_eval_task="gsm8k",
))
