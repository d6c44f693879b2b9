"""Evaluate an in-memory model on PruneBoard tasks through lm-eval, with progress, streaming and resume.

    evaluate(model, tokenizer, tasks, evaluation, paradigm=..., dtype=..., data_dir=..., workdir=...,
             progress=..., on_sample=..., completed=()) -> EvalOutput

How it runs:
* Each task is one lm-eval pass (`lm_eval.evaluator.evaluate` on the task built from its
  `TaskSpec`, `log_samples=True`), so a task's requests are batched and ordered exactly as in a plain
  lm-eval run of that task alone with the same batch size. Log-likelihood tasks run first, with
  lm-eval's standard prompts and no chat template; generation tasks then run through the model's
  chat template (`apply_chat_template=True`, few-shot examples as multi-turn, as `simple_evaluate`
  does by default). We call `evaluator.evaluate` rather than `simple_evaluate` only to skip its
  reporting (environment dump, git and hub look-ups); the steps that matter are replicated: the
  seeds (lm-eval's defaults 0/1234/1234/1234, or `seed` for all four when given), `num_fewshot`
  and the few-shot sampler seed.
* Progress: an `HFLM` subclass calls `progress(fraction, "piqa: 64/400 requests")` before every
  model batch (`_model_call` / `_model_generate`); finished requests are counted through lm-eval's
  cache hook. `progress` may raise `backend.events.Cancelled`; it propagates.
* Samples: lm-eval scores a task only once all its requests have run, so `on_sample` is called for
  every sample of a task right after that task's pass, once per (task, doc_id).
* Resume: samples in `completed` are not evaluated again (lm-eval's `samples={task: remaining ids}`)
  and aggregates are recomputed here from the per-sample metrics of completed + new samples
  (lm-eval's `mean` and `mean_stderr`), so they do not depend on whether the run resumed.

Sample records:
* log-likelihood tasks: `prompt` is the context (contexts, one a line, when they differ per option
  as in WinoGrande); `output` renders every option's log-likelihood, one line each,
  `"* [0] -12.3456 Paris"` with `*` on the chosen (argmax) option; `extracted` and `gold` are option
  indices; output tokens are those of the chosen continuation.
* generation tasks: `prompt` is the chat-templated text, `output` the full reply, `extracted` the
  primary filter's answer (of the first sample when `num_samples` > 1); `reasoning`, `answer`,
  `truncated`, `finish_reason`, `thinking_tokens` and `repetition` as in `eval_records._trace_fields`.
* think paradigm: stop strings apply only after the end-of-thinking marker (`backend.evaluation.thinking`);
  `thinking_budget` / `extend_thinking` generate one sequence at a time. Prompted thinking
  (`think_prompt`; auto: when the chat template does not mention the start marker, e.g. SmolLM2's
  ChatML): generation prompts get a system instruction to reason inside the markers and end with
  the start marker (`backend.evaluation.thinking.ThinkPrompt`), recorded as `generation.think_prompt` in the
  task manifest and comparability key (absent when not used, so other keys are unchanged).
Token counts use the model's tokenizer without added special tokens.

Metric names are lm-eval's `metric,filter` keys, shortened to `metric` for tasks with one filter
(`acc`, `acc_norm`, `exact_match,flexible-extract`).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from backend.config import EvaluationConfig, TaskConfig
from backend.evaluation.backends import fixed_batch_size
from backend.evaluation.records import aggregate
from backend.evaluation.records import records as build_records
from backend.evaluation.lm_eval_adapter import (
    ProgressTracker,
    build_lm_eval_task,
    make_evaluation_lm,
    run_task,
)
from backend.manifest import file_sha256, package_version
from backend.evaluation.prepared import PreparedTask
from backend.result import SampleRecord, ScoreRecord
from backend.evaluation.scoring import (
    SCORER_VERSION,
    reasoning_filter,
    think_answer,
    think_markers,
)
from backend.tasks import get_task
from backend.tasks.base import TaskSpec

__all__ = ["EvalOutput", "evaluate", "comparability_key", "THINK_BUDGET_FACTOR"]

logger = logging.getLogger(__name__)

THINK_BUDGET_FACTOR = 4
"""In the "think" paradigm a task's default generation budget is multiplied by this (reasoning first)."""
GENERATE_COST_PER_TOKEN = 0.25
"""Progress weight of one generation request per allowed new token, relative to one log-likelihood request."""
LM_EVAL_DEFAULT_SEEDS = {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}
"""lm-eval's `simple_evaluate` defaults, used when no seed is passed."""
KEY_LENGTH = 16


@dataclass
class EvalOutput:
    scores: list[ScoreRecord]
    samples: list[SampleRecord]
    """Every sample of the evaluated tasks: the completed ones passed in and the new ones."""
    task_manifest: dict[str, dict[str, Any]]
    lm_eval_version: str


def evaluate(
    model,
    tokenizer,
    tasks: list[TaskConfig],
    evaluation: EvaluationConfig,
    *,
    paradigm: str,
    dtype: str,
    data_dir: Path,
    workdir: Path,
    progress: Callable[[float, str], None],
    on_sample: Callable[[SampleRecord], None],
    completed: Iterable[SampleRecord] = (),
    seed: int | None = None,
    think_markers: tuple[str, str] | None = None,
    think_prompt: bool | None = None,
) -> EvalOutput:
    """Evaluate `model` on `tasks`; raise whatever `progress` or `on_sample` raise.

    `seed`, when given, sets lm-eval's python, numpy, torch and few-shot seeds (they matter for
    few-shot sampling and sampled generation); None keeps lm-eval's defaults. `completed` samples
    of other tasks, or beyond a task's limit, are ignored and not returned. `think_markers`
    overrides the model family's reasoning markers (think paradigm). `think_prompt` (think paradigm):
    True / False forces prompted thinking on / off; None turns it on when the tokenizer's chat
    template does not mention the start marker.
    """
    markers = tuple(think_markers) if think_markers else think_markers_for_model(model)
    prompt = _think_prompt(tokenizer, markers, think_prompt) if paradigm == "think" else None
    generates = any(get_task(tc.name).output_type == "generate" for tc in tasks)
    if prompt is not None and generates and evaluation.backend != "hf":
        from backend.evaluation.backends import BackendUnavailable

        raise BackendUnavailable("prompted thinking (think paradigm on a model whose chat template has no "
                                 "thinking mode) needs evaluation.backend 'hf'; or set model_args.think_prompt false")
    device = _device_type(model)
    if any(get_task(tc.name).runner is not None for tc in tasks):  # e.g. perplexity: no lm-eval
        return _evaluate_with_runners(
            model, tokenizer, tasks, evaluation, paradigm=paradigm, dtype=dtype, data_dir=data_dir,
            workdir=workdir, progress=progress, on_sample=on_sample, completed=completed, seed=seed,
            think_markers=think_markers, think_prompt=think_prompt)
    lm_eval_version = package_version("lm_eval")
    seeds = dict(LM_EVAL_DEFAULT_SEEDS) if seed is None else {k: seed for k in LM_EVAL_DEFAULT_SEEDS}
    done_before: dict[tuple[str, int], SampleRecord] = {s.key: s for s in completed}
    workdir.mkdir(parents=True, exist_ok=True)

    progress(0.0, f"building {len(tasks)} task(s)")
    prepared = [
        _prepare(tc, paradigm=paradigm, dtype=dtype, data_dir=data_dir, workdir=workdir,
                 seeds=seeds, lm_eval_version=lm_eval_version, completed=done_before,
                 device=device, markers=markers, prompt=prompt)
        for tc in tasks
    ]
    # Log-likelihood tasks (no chat template) first, then generation tasks (chat template).
    prepared.sort(key=lambda p: p.spec.uses_chat_template)
    tracker = ProgressTracker(progress, sum(p.weight for p in prepared))

    new_samples: dict[str, list[SampleRecord]] = {}
    if any(p.todo for p in prepared):
        lm = make_evaluation_lm(model, tokenizer, evaluation, tracker, device=device, workdir=workdir,
                                 dtype=dtype)
        for p in prepared:
            if not p.todo:
                continue
            logger.info("evaluating %s: %d of %d documents (%d resumed)",
                        p.spec.name, len(p.todo), p.n_docs, len(p.kept))
            tracker.start_task(p.spec.name, p.weight)
            lm.think_control = p.think
            examples = run_task(lm, p, seeds)
            records = build_records(p, examples, tokenizer)
            for record in records:
                on_sample(record)
            new_samples[p.spec.name] = records
            tracker.end_task()

    scores: list[ScoreRecord] = []
    samples: list[SampleRecord] = []
    manifest: dict[str, dict[str, Any]] = {}
    for p in sorted(prepared, key=lambda p: tasks.index(p.config)):
        merged = dict(p.kept)
        merged.update({s.doc_id: s for s in new_samples.get(p.spec.name, [])})
        task_samples = [merged[i] for i in sorted(merged)]
        if len(task_samples) != p.n_docs:
            raise RuntimeError(f"{p.spec.name}: {len(task_samples)} samples for {p.n_docs} documents")
        samples.extend(task_samples)
        scores.extend(aggregate(p, task_samples))
        manifest[p.spec.name] = {**p.manifest, "evaluated": len(p.todo), "resumed": len(p.kept)}
    progress(1.0, f"evaluated {len(tasks)} task(s), {len(samples)} samples")
    return EvalOutput(scores=scores, samples=samples, task_manifest=manifest, lm_eval_version=lm_eval_version)


def _evaluate_with_runners(model, tokenizer, tasks: list[TaskConfig], evaluation: EvaluationConfig, *,
                           progress: Callable[[float, str], None], completed: Iterable[SampleRecord],
                           on_sample: Callable[[SampleRecord], None], dtype: str, data_dir: Path,
                           **kwargs: Any) -> EvalOutput:
    """lm-eval tasks through `evaluate`, then tasks with their own `runner` (progress split by count)."""
    completed = list(completed)
    direct = [tc for tc in tasks if get_task(tc.name).runner is not None]
    others = [tc for tc in tasks if tc not in direct]
    share = len(others) / len(tasks)
    output = EvalOutput(scores=[], samples=[], task_manifest={}, lm_eval_version=package_version("lm_eval"))
    if others:
        output = evaluate(model, tokenizer, others, evaluation, progress=lambda f, t: progress(f * share, t),
                          completed=completed, on_sample=on_sample, dtype=dtype, data_dir=data_dir, **kwargs)
    for n, tc in enumerate(direct):
        low = share + (1 - share) * n / len(direct)
        width = (1 - share) / len(direct)
        scores, samples, manifest = get_task(tc.name).runner(
            model, tokenizer, tc, data_dir=data_dir, dtype=dtype, batch_size=fixed_batch_size(evaluation.batch_size),
            progress=lambda f, t, low=low, width=width: progress(low + f * width, t),
            on_sample=on_sample, completed=completed)
        output.scores.extend(scores)
        output.samples.extend(samples)
        output.task_manifest[tc.name] = manifest
    progress(1.0, f"evaluated {len(tasks)} task(s), {len(output.samples)} samples")
    return output


# --- preparation ----------------------------------------------------------------------------------


def _prepare(tc: TaskConfig, *, paradigm: str, dtype: str, data_dir: Path, workdir: Path,
             seeds: dict[str, int], lm_eval_version: str,
             completed: dict[tuple[str, int], SampleRecord], device: str = "cpu",
             markers: tuple[str, str] = ("<think>", "</think>"), prompt: Any = None) -> PreparedTask:
    """`prompt`: the `backend.evaluation.thinking.ThinkPrompt` of prompted thinking (think paradigm) or None."""
    spec = get_task(tc.name)
    task_dir = workdir / spec.name
    lm_config = spec.build(data_dir, task_dir)
    lm_config["num_fewshot"] = tc.num_fewshot
    generation = None
    think = None
    scaling: dict[str, Any] = {}
    extra_metrics: tuple[str, ...] = ()
    if spec.output_type == "generate":
        generation = _generation_kwargs(spec, lm_config.get("generation_kwargs") or {}, tc, paradigm, device)
        scaling = _scaling_fields(tc)
        if paradigm == "think":
            from backend.evaluation.thinking import ThinkControl

            # Stop strings apply only after the reasoning: lm-eval stops at EOS, we stop and cut.
            think = ThinkControl(markers=markers, stops=tuple(generation["until"]),
                                 thinking_budget=tc.generation.thinking_budget,
                                 extend_thinking=tc.generation.extend_thinking, prompt=prompt)
            generation = {**generation, "until": []}
            scaling["think_stops"] = list(think.stops)
            scaling["think_markers"] = list(markers)
            if prompt is not None:
                scaling["think_prompt"] = prompt.record()
            lm_config["filter_list"] = _with_reasoning_strip(lm_config.get("filter_list"), markers)
        lm_config["generation_kwargs"] = generation
        k = tc.generation.num_samples
        if k > 1:
            from backend.tasks._reasoning import sampling_metrics

            extra_metrics = sampling_metrics(k)
            lm_config["repeats"] = k
            lm_config["metric_list"] = [
                *lm_config.get("metric_list", []),
                *({"metric": m, "aggregation": "mean", "higher_is_better": True} for m in extra_metrics),
            ]

    data_sha = _dataset_sha256(lm_config)
    canonical_config = _canonical(lm_config)
    config_sha = _sha256_json(canonical_config)
    # Datasets are cached inside the work directory, which the caller deletes after the run.
    lm_config["dataset_kwargs"] = {
        **lm_config.get("dataset_kwargs", {}), "cache_dir": str(task_dir / "hf-datasets"),
    }
    task = build_lm_eval_task(lm_config)
    total = len(task.eval_docs)
    n_docs = min(tc.limit, total) if tc.limit else total

    kept = {doc_id: s for (name, doc_id), s in completed.items() if name == spec.name and doc_id < n_docs}
    todo = [i for i in range(n_docs) if i not in kept]
    used_splits = _used_splits(lm_config, tc.num_fewshot)
    sampled = bool(generation and generation.get("do_sample"))
    generation_key = None if generation is None else {**generation, **scaling}
    key_fields = {
        "task": spec.name,
        "docs": n_docs,
        "num_fewshot": tc.num_fewshot,
        "generation": generation_key,
        "paradigm": paradigm if spec.output_type == "generate" else None,
        "task_config_sha256": config_sha,
        "data_sha256": {s: data_sha[s] for s in used_splits if s in data_sha},
        "lm_eval": lm_eval_version,
        "lm_eval_task_version": str(task.VERSION),
        "dtype": dtype,
        "scorer": SCORER_VERSION,
        "seeds": seeds if (tc.num_fewshot > 0 or sampled) else None,
    }
    manifest = {
        "comparability_key": comparability_key(key_fields),
        "key_fields": key_fields,
        "task_config_sha256": config_sha,
        "lm_eval_config": canonical_config,
        "data_files": {f: file_sha256(data_dir / f) for f in spec.data_files if (data_dir / f).is_file()},
        "dataset_files": data_sha,
        "docs": n_docs,
        "docs_available": total,
        "limit": tc.limit,
        "num_fewshot": tc.num_fewshot,
        "generation": generation_key,
        "chat_template": spec.uses_chat_template,
        "paradigm": paradigm,
        "lm_eval_task_version": task.VERSION,
        "output_type": spec.output_type,
        "primary_metric": spec.primary_metric,
        "metrics": list(spec.metrics) + list(extra_metrics),
        "seeds": seeds,
        "scorer_version": SCORER_VERSION,
    }
    weight = _estimate_requests(task, spec, todo) * _request_cost(generation) * tc.generation.num_samples
    return PreparedTask(spec=spec, config=tc, lm_config=lm_config, task=task, n_docs=n_docs, todo=todo,
                     kept=kept, generation=generation, manifest=manifest, weight=weight,
                     metric_names=(spec.metrics or (spec.primary_metric,)) + extra_metrics, think=think)


def comparability_key(fields: dict[str, Any]) -> str:
    """Short hash of the settings that make two scores of a task comparable.

    Covers the task name, number of documents evaluated (the effective limit), few-shot count,
    generation settings, task config and data hashes, lm-eval and task versions, dtype, scorer
    version, and the seeds where they matter (few-shot or sampling). Batch size is left out: it
    changes nothing but float rounding.
    """
    return _sha256_json(fields)[:KEY_LENGTH]


def default_budget(spec: TaskSpec, paradigm: str, device: str) -> int:
    """A task's default `max_new_tokens` for the paradigm on this device ("cuda" or other).

    CPU: `default_max_new_tokens`, in the think paradigm `think_max_new_tokens` (or the default x
    THINK_BUDGET_FACTOR). GPU: `gpu_max_new_tokens` / `gpu_think_max_new_tokens` where the task
    sets them, else the CPU value.
    """
    cpu = spec.default_max_new_tokens
    if paradigm == "think":
        cpu = spec.think_max_new_tokens or spec.default_max_new_tokens * THINK_BUDGET_FACTOR
    if device == "cuda":
        gpu = spec.gpu_think_max_new_tokens if paradigm == "think" else spec.gpu_max_new_tokens
        return gpu or cpu
    return cpu


def _scaling_fields(tc: TaskConfig) -> dict[str, Any]:
    """Test-time-scaling settings away from their defaults (so existing comparability keys stay)."""
    gen = tc.generation
    fields = {"num_samples": gen.num_samples, "thinking_budget": gen.thinking_budget,
              "extend_thinking": gen.extend_thinking}
    defaults = {"num_samples": 1, "thinking_budget": None, "extend_thinking": 0}
    return {k: v for k, v in fields.items() if v != defaults[k]}


def think_markers_for_model(model) -> tuple[str, str]:
    config = getattr(model, "config", None)
    return think_markers(getattr(config, "model_type", None))


def _think_prompt(tokenizer, markers: tuple[str, str], forced: bool | None):
    """The `ThinkPrompt` of the think paradigm, or None (forced off, or the template thinks natively)."""
    from backend.evaluation.thinking import ThinkPrompt, template_has_thinking

    use = (not template_has_thinking(tokenizer, markers[0])) if forced is None else forced
    return ThinkPrompt.for_markers(markers) if use else None


def _device_type(model) -> str:
    try:
        return next(model.parameters()).device.type
    except (StopIteration, AttributeError):
        return "cpu"


def _generation_kwargs(spec: TaskSpec, base: dict[str, Any], tc: TaskConfig, paradigm: str,
                       device: str = "cpu") -> dict[str, Any]:
    gen = tc.generation
    budget = gen.max_new_tokens or default_budget(spec, paradigm, device)
    kwargs: dict[str, Any] = {"until": list(base.get("until") or []), "max_gen_toks": budget}
    if gen.temperature > 0:
        kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p)
    else:
        kwargs.update(do_sample=False)  # greedy; lm-eval drops temperature, top_p is irrelevant
    return kwargs


def _with_reasoning_strip(filter_list: list[dict[str, Any]] | None,
                          markers: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """Prepend a reasoning strip to every filter so answers are read after the end-of-thinking marker.

    Without `markers`: `strip_reasoning` (`<think>` / `</think>`). With them:
    `think_answer` ("" when the end marker is missing: a truncated trace has no answer).
    """
    strip = {"function": "custom", "filter_fn": reasoning_filter}
    if markers is not None:
        strip = {"function": "custom", "filter_fn": _answer_part_filter(tuple(markers))}
    if not filter_list:
        return [{"name": "none", "filter": [strip, {"function": "take_first"}]}]
    return [{**f, "filter": [strip, *f["filter"]]} for f in filter_list]


def _answer_part_filter(markers: tuple[str, str]):
    def answer_part(resps, docs):
        return [[think_answer(r, markers) for r in rs] for rs in resps]

    return answer_part


def _used_splits(lm_config: dict[str, Any], num_fewshot: int) -> list[str]:
    splits = [lm_config.get("test_split") or lm_config.get("validation_split")]
    if num_fewshot > 0:
        splits += [lm_config.get(k) for k in ("fewshot_split", "training_split", "validation_split")]
    return sorted({s for s in splits if s})


def _dataset_sha256(lm_config: dict[str, Any]) -> dict[str, str]:
    files = (lm_config.get("dataset_kwargs") or {}).get("data_files") or {}
    return {split: file_sha256(Path(path)) for split, path in sorted(files.items())}


def _canonical(value: Any) -> Any:
    """JSON-able form of a task config: functions by name and source hash, file paths by split only."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "data_files" and isinstance(v, dict):
                out[k] = sorted(v)
            else:
                out[str(k)] = _canonical(v)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if callable(value):
        try:
            source = inspect.getsource(value)
        except (OSError, TypeError):
            source = ""
        name = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
        return f"{name}#{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()



def _estimate_requests(task, spec: TaskSpec, todo: list[int]) -> int:
    if spec.output_type == "generate" or not todo:
        return len(todo)
    docs = task.eval_docs
    return sum(len(task.doc_to_choice(docs[i])) for i in todo)


def _request_cost(generation: dict[str, Any] | None) -> float:
    return 1.0 if generation is None else max(1.0, generation["max_gen_toks"] * GENERATE_COST_PER_TOKEN)
