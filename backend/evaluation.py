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
  primary filter's answer.
Token counts use the model's tokenizer without added special tokens.

Metric names are lm-eval's `metric,filter` keys, shortened to `metric` for tasks with one filter
(`acc`, `acc_norm`, `exact_match,flexible-extract`).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from backend.config import EvaluationConfig, TaskConfig
from backend.eval_records import aggregate
from backend.eval_records import records as build_records
from backend.manifest import package_version
from backend.result import SampleRecord, ScoreRecord
from backend.scoring import SCORER_VERSION, reasoning_filter
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


@dataclass
class _Prepared:
    spec: TaskSpec
    config: TaskConfig
    lm_config: dict[str, Any]
    task: Any
    n_docs: int
    todo: list[int]
    kept: dict[int, SampleRecord]
    generation: dict[str, Any] | None
    manifest: dict[str, Any]
    weight: float = 0.0
    metric_names: tuple[str, ...] = field(default=())


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
) -> EvalOutput:
    """Evaluate `model` on `tasks`; raise whatever `progress` or `on_sample` raise.

    `seed`, when given, sets lm-eval's python, numpy, torch and few-shot seeds (they matter for
    few-shot sampling and sampled generation); None keeps lm-eval's defaults. `completed` samples
    of other tasks, or beyond a task's limit, are ignored and not returned.
    """
    lm_eval_version = package_version("lm_eval")
    seeds = dict(LM_EVAL_DEFAULT_SEEDS) if seed is None else {k: seed for k in LM_EVAL_DEFAULT_SEEDS}
    done_before: dict[tuple[str, int], SampleRecord] = {s.key: s for s in completed}
    workdir.mkdir(parents=True, exist_ok=True)

    progress(0.0, f"building {len(tasks)} task(s)")
    prepared = [
        _prepare(tc, paradigm=paradigm, dtype=dtype, data_dir=data_dir, workdir=workdir,
                 seeds=seeds, lm_eval_version=lm_eval_version, completed=done_before)
        for tc in tasks
    ]
    # Log-likelihood tasks (no chat template) first, then generation tasks (chat template).
    prepared.sort(key=lambda p: p.spec.uses_chat_template)
    tracker = _Tracker(progress, sum(p.weight for p in prepared))

    new_samples: dict[str, list[SampleRecord]] = {}
    if any(p.todo for p in prepared):
        lm = _make_lm(model, tokenizer, evaluation.batch_size, tracker)
        for p in prepared:
            if not p.todo:
                continue
            logger.info("evaluating %s: %d of %d documents (%d resumed)",
                        p.spec.name, len(p.todo), p.n_docs, len(p.kept))
            tracker.start_task(p.spec.name, p.weight)
            examples = _run_lm_eval(lm, p, seeds)
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


# --- preparation ----------------------------------------------------------------------------------


def _prepare(tc: TaskConfig, *, paradigm: str, dtype: str, data_dir: Path, workdir: Path,
             seeds: dict[str, int], lm_eval_version: str,
             completed: dict[tuple[str, int], SampleRecord]) -> _Prepared:
    spec = get_task(tc.name)
    task_dir = workdir / spec.name
    lm_config = spec.build(data_dir, task_dir)
    lm_config["num_fewshot"] = tc.num_fewshot
    generation = None
    if spec.output_type == "generate":
        generation = _generation_kwargs(spec, lm_config.get("generation_kwargs") or {}, tc, paradigm)
        lm_config["generation_kwargs"] = generation
        if paradigm == "think":
            lm_config["filter_list"] = _with_reasoning_strip(lm_config.get("filter_list"))

    data_sha = _dataset_sha256(lm_config)
    config_sha = _sha256_json(_canonical(lm_config))
    # Datasets are cached inside the work directory, which the caller deletes after the run.
    lm_config["dataset_kwargs"] = {
        **lm_config.get("dataset_kwargs", {}), "cache_dir": str(task_dir / "hf-datasets"),
    }
    task = _build_lm_eval_task(lm_config)
    total = len(task.eval_docs)
    n_docs = min(tc.limit, total) if tc.limit else total

    kept = {doc_id: s for (name, doc_id), s in completed.items() if name == spec.name and doc_id < n_docs}
    todo = [i for i in range(n_docs) if i not in kept]
    used_splits = _used_splits(lm_config, tc.num_fewshot)
    sampled = bool(generation and generation.get("do_sample"))
    key_fields = {
        "task": spec.name,
        "docs": n_docs,
        "num_fewshot": tc.num_fewshot,
        "generation": generation,
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
        "data_files": {f: _sha256_file(data_dir / f) for f in spec.data_files},
        "dataset_files": data_sha,
        "docs": n_docs,
        "docs_available": total,
        "limit": tc.limit,
        "num_fewshot": tc.num_fewshot,
        "generation": generation,
        "chat_template": spec.uses_chat_template,
        "paradigm": paradigm,
        "lm_eval_task_version": task.VERSION,
        "output_type": spec.output_type,
        "primary_metric": spec.primary_metric,
        "metrics": list(spec.metrics),
        "seeds": seeds,
        "scorer_version": SCORER_VERSION,
    }
    weight = _estimate_requests(task, spec, todo) * _request_cost(generation)
    return _Prepared(spec=spec, config=tc, lm_config=lm_config, task=task, n_docs=n_docs, todo=todo,
                     kept=kept, generation=generation, manifest=manifest, weight=weight,
                     metric_names=spec.metrics or (spec.primary_metric,))


def comparability_key(fields: dict[str, Any]) -> str:
    """Short hash of the settings that make two scores of a task comparable.

    Covers the task name, number of documents evaluated (the effective limit), few-shot count,
    generation settings, task config and data hashes, lm-eval and task versions, dtype, scorer
    version, and the seeds where they matter (few-shot or sampling). Batch size is left out: it
    changes nothing but float rounding.
    """
    return _sha256_json(fields)[:KEY_LENGTH]


def _generation_kwargs(spec: TaskSpec, base: dict[str, Any], tc: TaskConfig, paradigm: str) -> dict[str, Any]:
    gen = tc.generation
    factor = THINK_BUDGET_FACTOR if paradigm == "think" else 1
    budget = gen.max_new_tokens or spec.default_max_new_tokens * factor
    kwargs: dict[str, Any] = {"until": list(base.get("until") or []), "max_gen_toks": budget}
    if gen.temperature > 0:
        kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p)
    else:
        kwargs.update(do_sample=False)  # greedy; lm-eval drops temperature, top_p is irrelevant
    return kwargs


def _with_reasoning_strip(filter_list: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Prepend `strip_reasoning` to every filter so answers are read after `</think>`."""
    strip = {"function": "custom", "filter_fn": reasoning_filter}
    if not filter_list:
        return [{"name": "none", "filter": [strip, {"function": "take_first"}]}]
    return [{**f, "filter": [strip, *f["filter"]]} for f in filter_list]


def _used_splits(lm_config: dict[str, Any], num_fewshot: int) -> list[str]:
    splits = [lm_config.get("test_split") or lm_config.get("validation_split")]
    if num_fewshot > 0:
        splits += [lm_config.get(k) for k in ("fewshot_split", "training_split", "validation_split")]
    return sorted({s for s in splits if s})


def _dataset_sha256(lm_config: dict[str, Any]) -> dict[str, str]:
    files = (lm_config.get("dataset_kwargs") or {}).get("data_files") or {}
    return {split: _sha256_file(Path(path)) for split, path in sorted(files.items())}


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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _estimate_requests(task, spec: TaskSpec, todo: list[int]) -> int:
    if spec.output_type == "generate" or not todo:
        return len(todo)
    docs = task.eval_docs
    return sum(len(task.doc_to_choice(docs[i])) for i in todo)


def _request_cost(generation: dict[str, Any] | None) -> float:
    return 1.0 if generation is None else max(1.0, generation["max_gen_toks"] * GENERATE_COST_PER_TOKEN)


# --- lm-eval --------------------------------------------------------------------------------------


def _build_lm_eval_task(lm_config: dict[str, Any]):
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_defaults=False).load([lm_config])
    return loaded["tasks"][lm_config["task"]]


class _Tracker:
    """Turns finished-request counts into overall progress; weights tasks by estimated cost."""

    def __init__(self, progress: Callable[[float, str], None], total_weight: float):
        self.progress = progress
        self.total_weight = total_weight or 1.0
        self.weight_done = 0.0
        self.task = ""
        self.task_weight = 0.0
        self.requests = 0
        self.finished = 0

    def start_task(self, name: str, weight: float) -> None:
        self.task, self.task_weight, self.requests, self.finished = name, weight, 0, 0

    def begin_requests(self, count: int) -> None:
        self.requests, self.finished = count, 0

    def request_finished(self) -> None:
        self.finished += 1

    def before_batch(self) -> None:
        share = min(self.finished / self.requests, 1.0) if self.requests else 0.0
        fraction = (self.weight_done + share * self.task_weight) / self.total_weight
        self.progress(min(fraction, 1.0), f"{self.task}: {self.finished}/{self.requests} requests")

    def end_task(self) -> None:
        self.weight_done += self.task_weight


class _CountingHook:
    """lm-eval's cache hook sees every finished request once; we count them (and cache nothing)."""

    def __init__(self, tracker: _Tracker):
        self.tracker = tracker

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        self.tracker.request_finished()


def _make_lm(model, tokenizer, batch_size: int, tracker: _Tracker):
    from lm_eval.models.huggingface import HFLM

    class TrackedHFLM(HFLM):
        """HFLM that reports progress before every model batch; batching and order are untouched."""

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            tracker.begin_requests(len(requests))
            return super().loglikelihood(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            tracker.begin_requests(len(requests))
            return super().generate_until(requests, disable_tqdm=True)

        def _model_call(self, inps, attn_mask=None, labels=None):
            tracker.before_batch()
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            tracker.before_batch()
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

        def get_model_info(self) -> dict:
            return {}  # the stock one asks the hub for a revision sha

    lm = TrackedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm.set_cache_hook(_CountingHook(tracker))
    return lm


def _run_lm_eval(lm, p: _Prepared, seeds: dict[str, int]) -> list[dict[str, Any]]:
    """One lm-eval pass over the task's remaining documents; returns lm-eval's logged samples."""
    import numpy as np
    from lm_eval import evaluator
    from lm_eval.utils import set_torch_seed

    random.seed(seeds["random"])
    np.random.seed(seeds["numpy"])
    set_torch_seed(seeds["torch"])
    task = p.task
    task.set_fewshot_seed(seed=seeds["fewshot"])
    name = p.spec.name
    results = evaluator.evaluate(
        lm=lm,
        task_dict={"tasks": {name: task}, "groups": {}, "group_map": {}},
        samples={name: p.todo},
        bootstrap_iters=0,
        log_samples=True,
        apply_chat_template=p.spec.uses_chat_template,
        fewshot_as_multiturn=True,
    )
    return results["samples"][name]
