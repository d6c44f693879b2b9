"""A stored run in lm-eval's own result format: the dict lm-eval's `simple_evaluate` returns
(`results`, `configs`, `versions`, `n-shot`, `higher_is_better`, `n-samples`, `config`) and its
logged samples, for lm-eval's `EvaluationTracker` (files) and its W&B / Trackio loggers.

    to_lm_eval(run, samples, job_id) -> LmEvalRun
    write_lm_eval_files(lm_run, out_dir) -> [paths]

`run` and `samples` are a run as a results bundle holds it (`jobs.bundle`: the run record, and the
samples with their full texts), so this module needs no database. The files are written by lm-eval's
`EvaluationTracker`, in its layout: `OUT/<model>/results_<date>.json` and one
`OUT/<model>/samples_<task>_<date>.jsonl` per task, `<model>` being `<model id>@pruneboard-job-<id>`
sanitised as lm-eval does. Values PruneBoard could not compute are JSON null (lm-eval's "N/A" for a
missing stderr).

What maps to what:
* `results[task]`: `name`, `alias`, `sample_len`, and each stored score as `metric,filter` with its
  `metric_stderr,filter`. A task with one filter stores its scores as plain `acc`; the filter's name
  comes from its lm-eval config ("none" without a filter list, as in lm-eval).
* `configs[task]`: the lm-eval task config the run evaluated (the task manifest's `lm_eval_config`,
  whose sha256 is the `task_config_sha256` of its comparability key: functions as
  `module.name#source-hash`, data files by split only). Runs stored before it was recorded, and tasks
  PruneBoard runs itself (perplexity), get one rebuilt from the task manifest, marked
  `metadata.pruneboard_reconstructed`.
* `versions`, `n-shot`, `n-samples` (`original`: documents in the split, `effective`: evaluated),
  `higher_is_better` from the task manifests and scores; `config` from the run's config, manifest
  and efficiency (`model_args` names the base model; method and sparsity are under `pruneboard`,
  with the job id, origin, config hash and every task's comparability key).
* Samples, one line per document and filter: `arguments`, `resps`, `filtered_resps`, `target`, the
  per-sample metrics, lm-eval's three hashes. Generation: the full prompt and reply (only the first
  reply when a task samples k), the primary filter's extracted answer. Log-likelihood: one
  (context, continuation) per option and its log-likelihood, as stored (4 decimals). Perplexity:
  each window's text and its summed log-likelihood.
  Not stored by PruneBoard, so null ("None" where lm-eval turns responses into strings): the dataset
  row (`doc` is `{}`), whether an option was the greedy continuation, the answer a non-primary filter
  extracted, and the shared continuation of multiple-input tasks (WinoGrande, whose options are its
  contexts). Texts cut for storage (`PRUNEBOARD_TRACE_CAP_MB`) stay cut.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["LmEvalRun", "to_lm_eval", "write_lm_eval_files", "LM_EVAL_OUTPUT_TYPES"]

LM_EVAL_OUTPUT_TYPES = {"loglikelihood": "multiple_choice", "generate": "generate_until",
                        "perplexity": "loglikelihood_rolling"}
"""PruneBoard's task output types as lm-eval names them."""
NO_FILTER = "none"
"""lm-eval's filter name for a task without a filter list."""
_OPTION_LINE = re.compile(r"^[* ] \[(\d+)\] (\S+) (.*)$")
"""A log-likelihood sample's output line: `* [0] -12.3456 Paris` (`*`: the chosen option)."""


@dataclass
class LmEvalRun:
    results: dict[str, Any]
    """What `simple_evaluate` returns, without `samples`."""
    samples: dict[str, list[dict[str, Any]]]
    """Per task, lm-eval's logged samples (before `EvaluationTracker` turns them into strings)."""
    model_name: str
    evaluation_seconds: float | None


@dataclass
class _Task:
    name: str
    manifest: dict[str, Any]
    lm_config: dict[str, Any] | None
    output_type: str
    filters: list[str]
    primary_filter: str

    def split(self, key: str) -> tuple[str, str]:
        """(metric, filter) of a stored metric key: `acc` -> (acc, primary), `m,f` -> (m, f)."""
        metric, _, filter_name = key.partition(",")
        return metric, filter_name or self.primary_filter


def to_lm_eval(run: dict[str, Any], samples: list[dict[str, Any]], job_id: int) -> LmEvalRun:
    """The run record and samples of a bundle run (`jobs.bundle`) as lm-eval's results and samples."""
    config, manifest = run["config"], run.get("manifest") or {}
    by_task: dict[str, list[dict[str, Any]]] = {}
    for sample in sorted(samples, key=lambda s: (s["task"], s["doc_id"])):
        by_task.setdefault(sample["task"], []).append(sample)
    names = _task_names(config, run["scores"], by_task)
    tasks = [_task(name, manifest, run["scores"]) for name in names]

    results, configs, versions, n_shot, higher, n_samples, logged = {}, {}, {}, {}, {}, {}, {}
    for task in tasks:
        scores = [s for s in run["scores"] if s["task"] == task.name]
        task_samples = by_task.get(task.name, [])
        results[task.name] = {"name": task.name, "alias": task.name, "sample_len": len(task_samples)}
        for score in scores:
            metric, filter_name = task.split(score["metric"])
            results[task.name][f"{metric},{filter_name}"] = score["value"]
            stderr = score["stderr"]
            results[task.name][f"{metric}_stderr,{filter_name}"] = "N/A" if stderr is None else stderr
        configs[task.name] = task.lm_config or _rebuilt_config(task, scores, task_samples)
        versions[task.name] = _version(task.manifest)
        n_shot[task.name] = int(task.manifest.get("num_fewshot") or 0)
        higher[task.name] = {task.split(s["metric"])[0]: bool(s["higher_is_better"]) for s in scores}
        available = task.manifest.get("docs_available") or task.manifest.get("windows_available")
        n_samples[task.name] = {"original": int(available or len(task_samples)), "effective": len(task_samples)}
        logged[task.name] = [line for sample in task_samples for line in _sample_lines(task, sample)]

    results_dict = {
        "results": results, "group_subtasks": {name: [] for name in names}, "configs": configs,
        "versions": versions, "n-shot": n_shot, "higher_is_better": higher, "n-samples": n_samples,
        "config": _run_config(config, manifest, run.get("efficiency") or {}, tasks),
        "git_hash": manifest.get("project_commit"),
        "date": _timestamp(run.get("started_at")),
        "transformers_version": manifest.get("transformers"),
        "lm_eval_version": manifest.get("lm_eval_version") or manifest.get("lm_eval"),
        "pruneboard": {
            "job_id": job_id, "origin_id": run.get("origin_id"), "config": config,
            "config_hash": run.get("config_hash"), "finished_at": run.get("finished_at"),
            "comparability_keys": {t.name: t.manifest.get("comparability_key") for t in tasks},
        },
    }
    seconds = (run.get("stage_seconds") or {}).get("evaluate")
    return LmEvalRun(results=results_dict, samples=logged, model_name=f"{config['model']}@pruneboard-job-{job_id}",
                     evaluation_seconds=float(seconds) if isinstance(seconds, (int, float)) else None)


def write_lm_eval_files(lm_run: LmEvalRun, out_dir: str | Path) -> list[Path]:
    """Write the results JSON and one samples JSONL per task with lm-eval's `EvaluationTracker`;
    return their paths. Raises RuntimeError when lm-eval did not write them (it logs, not raises)."""
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import sanitize_model_name

    out = Path(out_dir)
    tracker = EvaluationTracker(output_path=str(out))
    general = tracker.general_config_tracker
    general.log_experiment_args(model_source=lm_run.results["config"]["model"],
                                model_args={"pretrained": lm_run.model_name}, system_instruction=None,
                                chat_template=None, fewshot_as_multiturn=True)
    if lm_run.evaluation_seconds is not None:  # lm-eval times from the tracker's creation
        general.start_time = time.perf_counter() - lm_run.evaluation_seconds
    tracker.save_results_aggregated(results=copy.deepcopy(lm_run.results), samples=copy.deepcopy(lm_run.samples))
    date_id = getattr(tracker, "date_id", None)
    folder = out / sanitize_model_name(lm_run.model_name)
    expected = [folder / f"results_{date_id}.json"]
    if date_id is not None:
        for task, task_samples in lm_run.samples.items():  # the tracker turns them into strings in place
            tracker.save_results_samples(task_name=task, samples=copy.deepcopy(task_samples))
            expected.append(folder / f"samples_{task}_{date_id}.jsonl")
    missing = [p.name for p in expected if not p.is_file()]
    if date_id is None or missing:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"lm-eval's EvaluationTracker did not write {', '.join(missing) or 'the results'}")
    return expected


# --- tasks --------------------------------------------------------------------------------------


def _task_names(config: dict[str, Any], scores: list[dict[str, Any]], by_task: dict[str, Any]) -> list[str]:
    """The config's tasks in order, then any other task the run has scores or samples of."""
    named = [t["name"] if isinstance(t, dict) else str(t) for t in config.get("tasks", [])]
    others = sorted(({s["task"] for s in scores} | set(by_task)) - set(named))
    return [*named, *others]


def _task(name: str, manifest: dict[str, Any], scores: list[dict[str, Any]]) -> _Task:
    task_manifest = (manifest.get("tasks") or {}).get(name) or {}
    lm_config = task_manifest.get("lm_eval_config")
    output_type = task_manifest.get("output_type") or _registered_output_type(name)
    if lm_config is not None:
        filters = [f.get("name", NO_FILTER) for f in lm_config.get("filter_list") or []] or [NO_FILTER]
    else:  # older runs: the names their metric keys carry
        keys = [s["metric"] for s in scores if s["task"] == name] + list(task_manifest.get("metrics") or [])
        filters = list(dict.fromkeys(k.partition(",")[2] for k in keys if "," in k)) or [NO_FILTER]
    primary = task_manifest.get("primary_metric") or ""
    primary_filter = primary.partition(",")[2] if "," in primary else filters[0]
    return _Task(name, task_manifest, lm_config, output_type, filters, primary_filter)


def _registered_output_type(name: str) -> str:
    from backend.tasks import get_task

    from backend.registry import UnknownName

    try:
        return get_task(name).output_type
    except UnknownName:  # a task this version no longer has: its samples read as generations
        return "generate"


def _version(task_manifest: dict[str, Any]) -> Any:
    version = task_manifest.get("lm_eval_task_version")
    if version is None:
        version = (task_manifest.get("key_fields") or {}).get("protocol_version")
    return version


def _rebuilt_config(task: _Task, scores: list[dict[str, Any]], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """An lm-eval-shaped task config from the task manifest (no lm-eval config was recorded)."""
    manifest = task.manifest
    per_sample = list(dict.fromkeys(task.split(k)[0] for s in samples for k in (s.get("metrics") or {})))
    higher = {task.split(s["metric"])[0]: bool(s["higher_is_better"]) for s in scores}
    perplexity = task.output_type == "perplexity"  # lower is better; not a mean of the windows
    aggregation = "pruneboard: see metadata.protocol" if perplexity else "mean"
    config: dict[str, Any] = {
        "task": task.name,
        "output_type": LM_EVAL_OUTPUT_TYPES.get(task.output_type, task.output_type),
        "num_fewshot": int(manifest.get("num_fewshot") or 0),
        "metric_list": [{"metric": m, "aggregation": aggregation, "higher_is_better": higher.get(m, not perplexity)}
                        for m in per_sample],
        "metadata": {"version": _version(manifest), "pruneboard_reconstructed": True,
                     "task_config_sha256": manifest.get("task_config_sha256")},
    }
    if manifest.get("generation"):
        config["generation_kwargs"] = manifest["generation"]
    if manifest.get("protocol"):
        config["metadata"]["protocol"] = manifest["protocol"]
    return config


def _run_config(config: dict[str, Any], manifest: dict[str, Any], efficiency: dict[str, Any],
                tasks: list[_Task]) -> dict[str, Any]:
    """lm-eval's `config` block: the evaluated model and the evaluation settings."""
    model_args = {"pretrained": config["model"]}
    revision = (config.get("model_args") or {}).get("revision")
    if revision:
        model_args["revision"] = revision
    if manifest.get("dtype"):
        model_args["dtype"] = manifest["dtype"]
    evaluation = config.get("evaluation") or {}
    limits = {t.manifest.get("limit") for t in tasks}
    seeds = next((t.manifest["seeds"] for t in tasks if t.manifest.get("seeds")), {})
    return {
        "model": evaluation.get("backend", "hf"),
        "model_args": model_args,
        "model_num_parameters": efficiency.get("params"),
        "model_dtype": manifest.get("dtype"),
        "model_revision": revision or "main",
        "model_sha": (manifest.get("model") or {}).get("fingerprint"),
        "batch_size": str(evaluation.get("batch_size", 8)),
        "batch_sizes": [],
        "device": manifest.get("device"),
        "use_cache": None,
        "limit": limits.pop() if len(limits) == 1 else None,
        "bootstrap_iters": 0,
        "gen_kwargs": None,
        "random_seed": seeds.get("random"),
        "numpy_seed": seeds.get("numpy"),
        "torch_seed": seeds.get("torch"),
        "fewshot_seed": seeds.get("fewshot"),
        "pruneboard": {"method": (config.get("pruning") or {}).get("method", "dense"),
                       "sparsity": (config.get("pruning") or {}).get("sparsity", 0.0),
                       "paradigm": config.get("paradigm", "instruct")},
    }


def _timestamp(value: str | None) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp() if value else None
    except ValueError:
        return None


# --- samples ------------------------------------------------------------------------------------


def _sample_lines(task: _Task, sample: dict[str, Any]) -> list[dict[str, Any]]:
    """One lm-eval sample per filter of the task, sharing the request and response fields."""
    if task.output_type == "loglikelihood":
        arguments, resps, filtered = _choice_fields(task, sample)
    elif task.output_type == "perplexity":
        nll_sum = (sample.get("metrics") or {}).get("nll_sum")
        loglikelihood = -nll_sum if isinstance(nll_sum, (int, float)) else None
        arguments, resps, filtered = [(sample["prompt"],)], [[loglikelihood]], {NO_FILTER: [loglikelihood]}
    else:
        gen_kwargs = (task.lm_config or {}).get("generation_kwargs") or task.manifest.get("generation") or {}
        arguments, resps = [(sample["prompt"], gen_kwargs)], [[sample["output"]]]
        filtered = {task.primary_filter: [sample["extracted"]]}
    metrics: dict[str, dict[str, Any]] = {name: {} for name in task.filters}
    for key, value in (sample.get("metrics") or {}).items():
        metric, filter_name = task.split(key)
        metrics.setdefault(filter_name, {})[metric] = value
    target = sample["gold"]
    hashes = _hashes(arguments[0][0], target)
    return [{
        "doc_id": sample["doc_id"], "doc": {}, "target": target, "arguments": arguments, "resps": resps,
        "filtered_resps": filtered.get(filter_name, filtered.get(NO_FILTER, [None])), "filter": filter_name,
        "metrics": list(values), **hashes, **values,
    } for filter_name, values in metrics.items()]


def _choice_fields(task: _Task, sample: dict[str, Any]) -> tuple[list, list, dict[str, list]]:
    """Arguments and responses of a log-likelihood sample, from its stored prompt and option lines."""
    options = _options(sample["output"] or "")
    choices = [text for _, text in options]
    prompt = sample["prompt"] or ""
    if len(choices) > 1 and prompt == "\n".join(choices):  # multiple inputs: each option is a context
        arguments = [(choice, None) for choice in choices]
    else:
        delimiter = (task.lm_config or {}).get("target_delimiter", " ")
        arguments = [(prompt, f"{delimiter}{choice}") for choice in choices]
    responses = [(loglikelihood, None) for loglikelihood, _ in options]
    return arguments, [[r] for r in responses], {NO_FILTER: responses}


def _options(output: str) -> list[tuple[float, str]]:
    """(log-likelihood, option text) of each `* [i] ll text` line; a text may span several lines."""
    options: list[tuple[float, str]] = []
    for line in output.split("\n"):
        match = _OPTION_LINE.match(line)
        if match and int(match.group(1)) == len(options) and _is_number(match.group(2)):
            options.append((float(match.group(2)), match.group(3)))
        elif options:
            loglikelihood, text = options[-1]
            options[-1] = (loglikelihood, f"{text}\n{line}")
    return options


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _hashes(prompt: str, target: Any) -> dict[str, str]:
    """lm-eval's doc, prompt and target hashes (the doc is the empty dict written)."""
    from lm_eval.utils import handle_non_serializable, hash_string

    doc = json.dumps({}, indent=2, default=handle_non_serializable, ensure_ascii=False)
    return {"doc_hash": hash_string(doc), "prompt_hash": hash_string(prompt), "target_hash": hash_string(str(target))}
