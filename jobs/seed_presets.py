"""The seed studies' experiments as presets: their grids of job configs (no validation, no torch).

* `seed000-grid`: the LLM-vs-LRM pruning study (seed 000). Its nine structured and dynamic methods
  (SLEB, ShortGPT, Shortened-PPL, Shortened-Taylor, LLM-Pruner, SliceGPT, MoD, D-LLM, SkipGPT) at
  sparsity 0.2 / 0.4 / 0.6 on all 17 study tasks, for an instruct SFT model and a reasoning model
  by hub id (`models`: by default the study's instruct model; the reasoning model, a
  Llama-3.1-8B trained on OpenThoughts, must be named). Decoding as the study: sampling at
  T = 0.7 (top-p 0.95), AIME and GPQA averaged over three samples (their pass@1 is the mean of
  three runs). Variants at 0.4: calibration on the model's own generated reasoning instead of
  generic text, and LoRA recovery after pruning.
* `seed001-tts`: pruning and test-time scaling (seed 001). Magnitude and Wanda with uniform, OWL
  and reconstruction-sensitivity allocation (the stand-in for layer influence: LayerIF itself is not
  implemented), and ShortGPT at the same sparsities (0.3, 0.5), on MATH-500,
  AIME24, AMC23 and GPQA-Diamond: parallel scaling (k = 8 samples at T = 0.6: pass@1, pass@k,
  maj@k) and a thinking-budget sweep (budget forcing at 1024, 4096 and 16384 reasoning tokens).
* `seed000-cpu`, `seed001-cpu`: the same methods on SmolLM2-135M-Instruct, instruct, one sparsity,
  four locally available tasks, sized so the whole preset's work estimate stays under three hours
  on a 2-core CPU (`backend.work.cpu_seconds`, shown by `submit-preset --dry-run`).
"""
from __future__ import annotations

from typing import Any

from common.vocabulary import PARADIGMS

__all__ = [
    "SEED000_METHODS", "SEED001_ALLOCATIONS", "STUDY_TASKS", "THINK_MODEL_PLACEHOLDER", "TULU_SFT",
    "seed000_cpu", "seed000_grid", "seed001_cpu", "seed001_tts",
]

SMOLLM2 = "builtin:smollm2-135m-instruct"
TULU_SFT = "allenai/Llama-3.1-Tulu-3-8B-SFT"
"""The study's instruct model: Llama-3.1-8B after Tulu 3 supervised fine-tuning."""
THINK_MODEL_PLACEHOLDER = "name-me/Llama-3.1-8B-OpenThoughts"
"""Stands for the study's reasoning model (a Llama-3.1-8B trained on OpenThoughts), which is not
published under a fixed id: a submit refuses it until `--model think=OWNER/NAME` names one."""
R1_DISTILL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"

SEED000_METHODS = ("sleb", "shortgpt", "shortened-ppl", "shortened-taylor", "llm-pruner", "slicegpt",
                   "mod-style", "dllm-style", "skipgpt-style")
SEED000_SPARSITIES = (0.2, 0.4, 0.6)
STUDY_TASKS = (
    # classification (log-likelihood)
    "arc-challenge", "arc-easy", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande", "truthfulqa-mc2",
    # generation
    "humaneval", "humaneval-plus", "ifeval", "popqa",
    # reasoning
    "aime24", "gpqa-diamond", "jeebench", "livecodebench", "math500",
)
"""The 17 tasks of the LLM-vs-LRM pruning study."""
THREE_RUN_TASKS = ("aime24", "gpqa-diamond")
"""Averaged over three sampled runs in the study: here three samples per question (pass@1 = their mean)."""
GENERATION_TASKS = ("humaneval", "humaneval-plus", "ifeval", "popqa", "aime24", "gpqa-diamond", "jeebench",
                    "livecodebench", "math500")

SEED001_METHODS = ("magnitude", "wanda")
SEED001_ALLOCATIONS = ("uniform", "owl", "reconstruction-sensitivity")
"""The seed's layer-influence allocation is run as reconstruction-sensitivity (`backend.pruning.allocation`)."""
SEED001_SPARSITIES = (0.3, 0.5)
SEED001_TASKS = ("math500", "aime24", "amc23", "gpqa-diamond")
SEED001_BUDGETS = (1024, 4096, 16384)
TTS_SAMPLES = 8

GENERIC_TEXT = "wikitext2/valid.txt"
GPU_CALIBRATION = {"source": "text", "path": GENERIC_TEXT, "num_samples": 128, "seq_len": 2048, "seed": 0}
SELF_GENERATED = {"source": "self-generated", "task": "gsm8k", "num_samples": 128, "seq_len": 2048,
                  "max_new_tokens": 2048, "seed": 0}
"""The model's own reasoning as calibration: its answers to GSM8K training prompts."""
GPU_RECOVERY = {"data": "text", "path": GENERIC_TEXT, "num_samples": 2048, "seq_len": 1024, "batch_size": 8,
                "steps": 500, "learning_rate": 1e-4, "rank": 8, "alpha": 16}
GPU_RESOURCES = {"device": "cuda", "min_accelerator_memory_gb": 40}
ROUTER_GPU_TRAINING = {"steps": 300, "batch_size": 8}


def _gpu_tasks() -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for name in STUDY_TASKS:
        task: dict[str, Any] = {"name": name}
        if name in GENERATION_TASKS:  # the study samples at T = 0.7; budgets: the tasks' GPU defaults
            task["generation"] = {"temperature": 0.7, "top_p": 0.95,
                                  "num_samples": 3 if name in THREE_RUN_TASKS else 1}
        tasks.append(task)
    return tasks


def _pruning(method: str, sparsity: float, **params: Any) -> dict[str, Any]:
    if method.endswith("-style"):
        params = {**ROUTER_GPU_TRAINING, **params}
    return {"method": method, "sparsity": sparsity, "params": params}


def seed000_grid(models: dict[str, str]) -> list[dict[str, Any]]:
    """Per paradigm: dense; 9 methods x 3 sparsities (generic calibration); at 0.4, each method with
    self-generated calibration and each with LoRA recovery."""
    documents: list[dict[str, Any]] = []
    for paradigm in PARADIGMS:
        base = {"model": models[paradigm], "paradigm": paradigm, "tasks": _gpu_tasks(),
                "evaluation": {"batch_size": "auto"}, "resources": dict(GPU_RESOURCES), "seed": 0}
        documents.append(dict(base))
        for method in SEED000_METHODS:
            for sparsity in SEED000_SPARSITIES:
                documents.append({**base, "pruning": _pruning(method, sparsity), "calibration": dict(GPU_CALIBRATION)})
        for method in SEED000_METHODS:
            documents.append({**base, "pruning": _pruning(method, 0.4), "calibration": dict(SELF_GENERATED)})
        for method in SEED000_METHODS:
            documents.append({**base, "pruning": _pruning(method, 0.4), "calibration": dict(GPU_CALIBRATION),
                              "recovery": dict(GPU_RECOVERY)})
    return documents


def _tts_tasks(k: int, budget: int | None, temperature: float = 0.6, limit: int | None = None,
               names: tuple[str, ...] = SEED001_TASKS, max_new_tokens: int | None = None) -> list[dict[str, Any]]:
    generation: dict[str, Any] = {"temperature": temperature, "top_p": 0.95, "num_samples": k}
    if budget is not None:
        generation["thinking_budget"] = budget
    if max_new_tokens is not None:
        generation["max_new_tokens"] = max_new_tokens
    return [{"name": name, **({"limit": limit} if limit else {}), "generation": dict(generation)} for name in names]


def _seed001_prunings(sparsities: tuple[float, ...]) -> list[dict[str, Any]]:
    prunings = [_pruning(method, s, allocation=allocation) for s in sparsities for method in SEED001_METHODS
                for allocation in SEED001_ALLOCATIONS]
    return prunings + [_pruning("shortgpt", s) for s in sparsities]  # depth at the same nominal sparsity


def _calibrated(pruning: dict[str, Any]) -> bool:
    """Uniform magnitude pruning reads no activations; every other pruning here does."""
    return not (pruning["method"] == "magnitude" and pruning["params"].get("allocation") == "uniform")


def seed001_tts(models: dict[str, str]) -> list[dict[str, Any]]:
    """A reasoning model: dense and every pruning, with k = 8 parallel samples, then each again under
    budget forcing at every budget of the sweep (one sample per question)."""
    base = {"model": models["think"], "paradigm": "think", "evaluation": {"batch_size": "auto"},
            "resources": dict(GPU_RESOURCES), "seed": 0}
    prunings = [None, *_seed001_prunings(SEED001_SPARSITIES)]
    documents = []
    for tasks in [_tts_tasks(TTS_SAMPLES, None), *[_tts_tasks(1, b) for b in SEED001_BUDGETS]]:
        for pruning in prunings:
            document = {**base, "tasks": tasks}
            if pruning is not None:
                document["pruning"] = pruning
                if _calibrated(pruning):
                    document["calibration"] = dict(GPU_CALIBRATION)
            documents.append(document)
    return documents


# --- CPU versions on SmolLM2 ----------------------------------------------------------------------

CPU_SPARSITY = 0.25
CPU_BATCH = 50
"""A generation task's prompts decode in one batch (CPU time goes per decoding step)."""
CPU_CALIBRATION = {"source": "text", "path": GENERIC_TEXT, "num_samples": 16, "seq_len": 256, "seed": 0}
BLOCK_SEARCH_CALIBRATION = {"source": "text", "path": GENERIC_TEXT, "num_samples": 8, "seq_len": 256, "seed": 0}
"""SLEB and Shortened-PPL run the model once per candidate block: a smaller set keeps them in minutes."""
BLOCK_SEARCH = ("sleb", "shortened-ppl")


def _cpu_base(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": SMOLLM2, "paradigm": "instruct", "tasks": tasks, "evaluation": {"batch_size": CPU_BATCH},
            "seed": 0}


def seed000_cpu() -> list[dict[str, Any]]:
    """Dense and the nine methods at 0.25 on PIQA and WinoGrande (200 rows) and GSM8K and MATH-500
    (50 rows, greedy, 256 new tokens)."""
    generation = {"max_new_tokens": 256}
    base = _cpu_base([{"name": "piqa", "limit": 200}, {"name": "winogrande", "limit": 200},
                      {"name": "gsm8k", "limit": 50, "generation": dict(generation)},
                      {"name": "math500", "limit": 50, "generation": dict(generation)}])
    documents = [dict(base)]
    for method in SEED000_METHODS:
        calibration = BLOCK_SEARCH_CALIBRATION if method in BLOCK_SEARCH else CPU_CALIBRATION
        documents.append({**base, "pruning": {"method": method, "sparsity": CPU_SPARSITY},
                          "calibration": dict(calibration)})
    return documents


def seed001_cpu() -> list[dict[str, Any]]:
    """Dense, magnitude and Wanda x uniform / OWL / reconstruction-sensitivity, and ShortGPT, at 0.25, on
    MATH-500, AIME24, AMC23 and GSM8K (GPQA-Diamond is gated; GSM8K stands in), 20 questions each,
    k = 4 samples at T = 0.6 and 256 new tokens."""
    tasks = _tts_tasks(4, None, limit=20, names=("math500", "aime24", "amc23", "gsm8k"), max_new_tokens=256)
    tasks[-1] = {"name": "gsm8k", "limit": 20, "generation": {"max_new_tokens": 256}}  # no k samples on GSM8K
    base = _cpu_base(tasks)
    documents = [dict(base)]
    for method in SEED001_METHODS:
        for allocation in SEED001_ALLOCATIONS:
            document = {**base, "pruning": {"method": method, "sparsity": CPU_SPARSITY,
                                            "params": {"allocation": allocation}}}
            if method != "magnitude" or allocation != "uniform":  # uniform magnitude needs no activations
                document["calibration"] = dict(CPU_CALIBRATION)
            documents.append(document)
    documents.append({**base, "pruning": {"method": "shortgpt", "sparsity": CPU_SPARSITY},
                      "calibration": dict(CPU_CALIBRATION)})
    return documents
