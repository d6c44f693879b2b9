"""Named sets of job configs that reproduce the seed studies' experiments at small scale.

A study preset crosses, for each paradigm (instruct, think), a dense baseline with one method per
pruning family (depth: ShortGPT, width: FLAP, dynamic: SkipGPT-style routers, unstructured: Wanda
with OWL layer allocation) at sparsities 0.2 / 0.4 / 0.6 and three calibration sources (generic
WikiText-2 text, task-aligned GSM8K, self-generated GSM8K answers of the dense model). The tasks
let every finding of `db.findings` be evaluated: classification (PIQA, WinoGrande), reasoning
(GSM8K, MATH-500) and test-time scaling (MATH-500 with k sampled answers per prompt).

* `study-cpu`: SmolLM2-135M-Instruct in both paradigms, CPU-sized samples and budgets. SmolLM2
  has no thinking mode, so the think paradigm uses prompted thinking (`model_args.think_prompt`,
  auto: a system instruction to reason inside `<think>`/`</think>`, the reply prefilled with
  `<think>`; a reply that ends its turn inside the block has it closed there and then answers) and
  budget forcing (`thinking_budget`) appends the end marker after that many reasoning tokens.
* `study-gpu`: Qwen2.5-1.5B-Instruct and the DeepSeek-R1-Distill-Qwen-1.5B reasoning model by hub
  id, GPU-sized samples and budgets, SkipGPT routers trained longer and with LoRA restoration.
* `study-smoke`: six instruct jobs (dense, each family at 0.2 with generic calibration, Wanda-OWL
  with aligned calibration), 10 samples per task, 128 new tokens: what CI runs end to end.

Submitting validates every config and checks every model is available before queueing any, so a
preset is never half-submitted; identical configs are deduplicated by the queue (config hash).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.config import ConfigError, JobConfig, validate_config
from backend.registry import UnknownName
from jobs import seed_presets

if TYPE_CHECKING:
    from db.schema import Job

__all__ = [
    "PRESETS", "UnknownPreset", "checked_configs", "list_presets", "missing", "preset_configs", "preset_documents",
    "submit_preset", "model_unavailable_reason",
]

SPARSITIES = (0.2, 0.4, 0.6)
FAMILY_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "depth": ("shortgpt", {}),
    "width": ("flap", {}),
    "dynamic": ("skipgpt-style", {}),
    "unstructured": ("wanda", {"allocation": "owl"}),
}
"""One method per family: the family is what the findings compare."""
GENERIC_TEXT = "wikitext2/valid.txt"
"""Generic calibration; the validation split, so WikiText-2 test perplexity stays leak-free."""
ALIGNED_TASK = "gsm8k"
"""Prompt source of aligned and self-generated calibration (its train split)."""
SMOLLM2 = "builtin:smollm2-135m-instruct"
GPU_INSTRUCT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
GPU_THINK_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
"""Distilled from Qwen2.5-Math-1.5B: a real reasoning model of the instruct model's size and family."""


class UnknownPreset(UnknownName):
    """A preset name that does not exist; the message suggests the closest one."""


@dataclass(frozen=True)
class Budget:
    """How large a study's runs are."""

    classification_limit: int
    gsm8k_limit: int
    math_limit: int
    tts_samples: int
    """k sampled answers per MATH-500 prompt (test-time scaling: pass@1, pass@k, maj@k)."""
    instruct_tokens: int
    think_tokens: int
    thinking_budget: int | None
    """Think paradigm: reasoning tokens before the end marker is forced (None: the model ends it)."""
    calibration_samples: int
    calibration_seq_len: int
    self_generated_tokens: int
    batch_size: int | str = 8
    dynamic_params: dict[str, Any] = field(default_factory=dict)
    """Router training of the dynamic method (its defaults are CPU-sized)."""


def _calibrations(budget: Budget) -> dict[str, dict[str, Any]]:
    size = {"num_samples": budget.calibration_samples, "seq_len": budget.calibration_seq_len, "seed": 0}
    return {
        "generic": {"source": "text", "path": GENERIC_TEXT, **size},
        "aligned": {"source": "task-aligned", "task": ALIGNED_TASK, **size},
        "self-generated": {"source": "self-generated", "task": ALIGNED_TASK,
                           "max_new_tokens": budget.self_generated_tokens, **size},
    }


def _generation(budget: Budget, paradigm: str, **extra: Any) -> dict[str, Any]:
    if paradigm == "think":
        gen = {"max_new_tokens": budget.think_tokens, **extra}
        if budget.thinking_budget is not None:
            gen["thinking_budget"] = budget.thinking_budget
        return gen
    return {"max_new_tokens": budget.instruct_tokens, **extra}


def _tasks(budget: Budget, paradigm: str, full: bool = True) -> list[dict[str, Any]]:
    """Classification, reasoning and a test-time-scaling task (MATH-500, k samples at T=0.6); the
    full set adds a second of each kind (WinoGrande, GSM8K)."""
    tasks: list[dict[str, Any]] = [
        {"name": "piqa", "limit": budget.classification_limit},
        {"name": "math500", "limit": budget.math_limit,
         "generation": _generation(budget, paradigm, num_samples=budget.tts_samples, temperature=0.6,
                                   top_p=0.95)},
    ]
    if full:
        tasks += [
            {"name": "winogrande", "limit": budget.classification_limit},
            {"name": "gsm8k", "limit": budget.gsm8k_limit, "generation": _generation(budget, paradigm)},
        ]
    return tasks


def _base(model: str, paradigm: str, budget: Budget, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": model, "paradigm": paradigm, "tasks": tasks,
            "evaluation": {"batch_size": budget.batch_size}, "seed": 0}


def _pruned(base: dict[str, Any], budget: Budget, family: str, sparsity: float,
            calibration: dict[str, Any]) -> dict[str, Any]:
    method, params = FAMILY_METHODS[family]
    params = {**params, **(budget.dynamic_params if family == "dynamic" else {})}
    return {**base, "pruning": {"method": method, "sparsity": sparsity, "params": params},
            "calibration": dict(calibration)}


def _study(models: dict[str, str], budget: Budget) -> list[dict[str, Any]]:
    """Per paradigm: dense, then every family x sparsity x calibration source."""
    documents: list[dict[str, Any]] = []
    for paradigm, model in models.items():
        base = _base(model, paradigm, budget, _tasks(budget, paradigm))
        documents.append(base)
        for family in FAMILY_METHODS:
            for sparsity in SPARSITIES:
                for calibration in _calibrations(budget).values():
                    documents.append(_pruned(base, budget, family, sparsity, calibration))
    return documents


CPU_BUDGET = Budget(classification_limit=200, gsm8k_limit=40, math_limit=30, tts_samples=4,
                    instruct_tokens=256, think_tokens=512, thinking_budget=384,
                    calibration_samples=32, calibration_seq_len=256, self_generated_tokens=256)
GPU_BUDGET = Budget(classification_limit=1000, gsm8k_limit=250, math_limit=100, tts_samples=8,
                    instruct_tokens=2048, think_tokens=8192, thinking_budget=None,
                    calibration_samples=128, calibration_seq_len=512, self_generated_tokens=2048,
                    batch_size=16, dynamic_params={"steps": 300, "batch_size": 8, "lora_steps": 200})
SMOKE_BUDGET = Budget(classification_limit=10, gsm8k_limit=10, math_limit=10, tts_samples=2,
                      instruct_tokens=128, think_tokens=128, thinking_budget=None,
                      calibration_samples=8, calibration_seq_len=128, self_generated_tokens=128,
                      batch_size=20, dynamic_params={"steps": 10})
"""batch_size 20: the 10 MATH-500 prompts x 2 samples decode in one batch (CPU time is per step)."""
SMOKE_MAX_JOBS = 6


def _study_cpu() -> list[dict[str, Any]]:
    return _study({"instruct": SMOLLM2, "think": SMOLLM2}, CPU_BUDGET)


def _study_gpu() -> list[dict[str, Any]]:
    return _study({"instruct": GPU_INSTRUCT_MODEL, "think": GPU_THINK_MODEL}, GPU_BUDGET)


def _study_smoke() -> list[dict[str, Any]]:
    """Enough for every finding to get a verdict (inconclusive at this size): dense; depth, width,
    dynamic and unstructured at 0.2 with generic text; unstructured at 0.2 with aligned text."""
    budget = SMOKE_BUDGET
    base = _base(SMOLLM2, "instruct", budget, _tasks(budget, "instruct", full=False))
    calibrations = _calibrations(budget)
    documents = [base]
    documents += [_pruned(base, budget, family, 0.2, calibrations["generic"]) for family in FAMILY_METHODS]
    documents.append(_pruned(base, budget, "unstructured", 0.2, calibrations["aligned"]))
    return documents


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build: Callable[..., list[dict[str, Any]]]
    models: dict[str, str] = field(default_factory=dict)
    """Paradigm -> model id the preset runs by default; `--model PARADIGM=ID` replaces one (empty:
    the preset's models are fixed)."""

    def documents(self, models: dict[str, str] | None = None) -> list[dict[str, Any]]:
        if not self.models:
            if models:
                raise ConfigError(f"preset {self.name!r} takes no models (its runs use fixed ones)")
            return self.build()
        unknown = sorted(set(models or {}) - set(self.models))
        if unknown:
            raise ConfigError(f"preset {self.name!r} names models for {', '.join(sorted(self.models))}, "
                              f"not {', '.join(unknown)}")
        return self.build({**self.models, **(models or {})})


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("study-cpu", "Seed-study grid on SmolLM2-135M-Instruct (instruct and think paradigm): dense + "
           "depth/width/dynamic/unstructured-OWL x sparsity 0.2/0.4/0.6 x generic/aligned/self-generated "
           "calibration; PIQA, WinoGrande, GSM8K, MATH-500 (k=4); CPU-sized", _study_cpu),
    Preset("study-gpu", f"The same grid on {GPU_INSTRUCT_MODEL} (instruct) and {GPU_THINK_MODEL} (think), "
           "by hub id, with GPU-sized samples and budgets (MATH-500 k=8)", _study_gpu),
    Preset("study-smoke", f"{SMOKE_MAX_JOBS} instruct jobs on SmolLM2 (dense; each family at 0.2; aligned vs "
           "generic calibration), 10 samples per task, 128 new tokens: the CI end-to-end run", _study_smoke),
    Preset("seed000-grid", "The LLM-vs-LRM pruning study: SLEB, ShortGPT, Shortened-PPL, Shortened-Taylor, "
           "LLM-Pruner, SliceGPT, MoD, D-LLM and SkipGPT x sparsity 0.2/0.4/0.6 x its 17 tasks x instruct and "
           "think (sampling at T=0.7, AIME and GPQA over 3 samples), plus self-generated calibration and LoRA "
           "recovery at 0.4; GPU models by hub id (name the reasoning model: --model think=OWNER/NAME)",
           seed_presets.seed000_grid, {"instruct": seed_presets.TULU_SFT,
                                       "think": seed_presets.THINK_MODEL_PLACEHOLDER}),
    Preset("seed001-tts", "Pruning and test-time scaling: magnitude and Wanda x uniform/OWL/reconstruction-sensitivity "
           "allocation, and ShortGPT, at 0.3/0.5, on MATH-500, AIME24, AMC23, GPQA-Diamond: k=8 samples and a "
           "thinking-budget sweep (1024/4096/16384); a reasoning model by hub id",
           seed_presets.seed001_tts, {"think": seed_presets.R1_DISTILL}),
    Preset("seed000-cpu", "seed000's nine methods at 0.25 on SmolLM2-135M-Instruct (instruct): PIQA, WinoGrande "
           "(200 rows), GSM8K, MATH-500 (50 rows, 256 tokens); under 3 hours on a 2-core CPU",
           seed_presets.seed000_cpu),
    Preset("seed001-cpu", "seed001 on SmolLM2-135M-Instruct (instruct): magnitude and Wanda x uniform/OWL/"
           "reconstruction-sensitivity, and ShortGPT, at 0.25; MATH-500, AIME24, AMC23 (k=4) and GSM8K, 20 questions each; "
           "under 3 hours on a 2-core CPU", seed_presets.seed001_cpu),
)}


def _preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownPreset(f"unknown preset {name!r}{hint}; known: {', '.join(sorted(PRESETS))}") from None


def list_presets() -> list[dict[str, Any]]:
    """name, description, n_jobs and default models of every preset (no validation: cheap, for menus)."""
    return [{"name": p.name, "description": p.description, "n_jobs": len(p.documents()), "models": dict(p.models)}
            for p in PRESETS.values()]


def preset_documents(name: str, models: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The raw config documents of a preset (what the submit editor would hold)."""
    return _preset(name).documents(models)


def model_unavailable_reason(model: str) -> str | None:
    """Why no worker can load `model`, or None when it can: builtin models always load; a local
    directory when it exists here; a hub id only where hub reads are enabled (PRUNEBOARD_USE_HUB=1
    and no HF offline variable, the switch task data uses too): workers do not report hub access,
    so without it this host cannot know that any worker will reach the hub."""
    from backend.tasks.base import hub_enabled

    if model.startswith("builtin:") or Path(model).is_dir():
        return None
    if hub_enabled():
        return None
    return ("it is neither a builtin model nor a local directory, and hub reads are disabled "
            "(set PRUNEBOARD_USE_HUB=1 on a host with hub access, or download it to a local directory)")


def preset_configs(name: str, models: dict[str, str] | None = None) -> list[JobConfig]:
    """Every config of a preset, validated (nothing checked for availability: see `missing`).

    Raises UnknownPreset (a KeyError) for an unknown name and ConfigError naming the preset and the
    job for an invalid config.
    """
    configs: list[JobConfig] = []
    for index, document in enumerate(_preset(name).documents(models)):
        try:
            configs.append(validate_config(document))
        except ConfigError as exc:
            raise ConfigError(f"preset {name!r}, job {index + 1} ({_label(document)}): {exc}") from None
    return configs


def missing(configs: list[JobConfig]) -> list[str]:
    """What this host lacks to run the configs, one line per model or task (empty: nothing): models
    no worker can load, the placeholder of a model the user must name, task data that is absent."""
    from common import settings
    from backend.models.ids import NOOP_MODEL
    from backend.taskdata.availability import missing_task_data, submit_checks_data

    lines = []
    for model in dict.fromkeys(c.model for c in configs):
        if model == seed_presets.THINK_MODEL_PLACEHOLDER:
            lines.append(f"model {model!r} is a placeholder: name the reasoning model with --model think=OWNER/NAME")
        elif reason := model_unavailable_reason(model):
            lines.append(f"model {model!r} is not available: {reason}")
    data_dir = settings.data_dir()
    absent = missing_task_data([t.name for c in configs if c.model != NOOP_MODEL for t in c.tasks], data_dir)
    if absent and submit_checks_data():  # remote workers bring their own data (backend.taskdata.availability)
        lines.append(f"task data missing under PRUNEBOARD_DATA_DIR={data_dir} for {', '.join(absent)}: run "
                     f"\"python -m jobs data fetch {' '.join(absent)}\"")
    return lines


def submit_preset(name: str, submitter: str | None = None,
                  models: dict[str, str] | None = None) -> list[tuple[Job, bool]]:
    """Validate the whole preset and check that it can run here, then queue each config:
    [(job, existing)] in preset order. Nothing is queued when a config is invalid or anything is missing."""
    configs = checked_configs(name, models)
    from jobs import queue

    return [queue.submit(config, submitter=submitter) for config in configs]


def checked_configs(name: str, models: dict[str, str] | None = None) -> list[JobConfig]:
    """`preset_configs`, raising ConfigError with everything `missing` says when the host lacks anything."""
    configs = preset_configs(name, models)
    lacking = missing(configs)
    if lacking:
        raise ConfigError(f"preset {name!r} cannot run here: " + "; ".join(lacking))
    return configs


def _label(document: dict[str, Any]) -> str:
    pruning = document.get("pruning") or {}
    calibration = (document.get("calibration") or {}).get("source", "-")
    return (f"{document.get('model')} {document.get('paradigm', 'instruct')} {pruning.get('method', 'dense')} "
            f"{pruning.get('sparsity', 0.0)} calibration {calibration}")
