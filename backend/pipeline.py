"""The pure prune-and-evaluate pipeline: `run(config, events, completed) -> RunResult`.

It never touches the database: executors (local worker, remote worker, Ray) call it, forward its
events, and store the returned result. Stages: load -> calibrate -> prune -> recover (only with a
`recovery:` section) -> evaluate -> efficiency.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from common import settings
from backend.config import JobConfig, canonical_dict, config_hash
from backend.events import EventSink, Progress, SampleDone
from backend.models.ids import NOOP_MODEL
from backend.manifest import environment
from backend.prune_stage import calibrate_and_prune, check_prune_inputs, model_manifest, recover_if_configured
from backend.pruning import get_method
from backend.result import RunResult, SampleRecord
from backend.seeding import seed_everything
from backend.taskdata.availability import ensure_task_data
from backend.tasks import get_task

logger = logging.getLogger("pruneboard.pipeline")

# Share of overall progress per stage: evaluation dominates on every model we run.
STAGES: dict[str, tuple[float, float]] = {
    "load": (0.0, 0.10),
    "calibrate": (0.10, 0.15),
    "prune": (0.15, 0.35),
    "recover": (0.35, 0.45),  # LoRA recovery (`recovery:`); runs without it skip this share
    "evaluate": (0.45, 0.95),
    "efficiency": (0.95, 1.0),
}


class _Reporter:
    """Maps per-stage fractions onto overall progress and times each stage."""

    def __init__(self, events: EventSink):
        self.events = events
        self.seconds: dict[str, float] = {}
        self._stage = ""
        self._started = 0.0

    def stage(self, name: str, text: str) -> None:
        self._close()
        self._stage, self._started = name, time.perf_counter()
        self.update(0.0, text)

    def update(self, fraction: float, text: str) -> None:
        start, end = STAGES[self._stage]
        overall = start + (end - start) * min(max(fraction, 0.0), 1.0)
        self.events(Progress(fraction=round(overall, 4), stage=self._stage, text=text))

    def stage_progress(self) -> Callable[[float, str], None]:
        return self.update

    def start(self, name: str, text: str) -> Callable[[float, str], None]:
        """Begin a stage and return its progress callback (`backend.prune_stage.StageStart`)."""
        self.stage(name, text)
        return self.update

    def _close(self) -> None:
        if self._stage:
            self.seconds[self._stage] = round(time.perf_counter() - self._started, 3)

    def finish(self) -> dict[str, float]:
        self._close()
        self._stage = ""
        return self.seconds


def run(config: JobConfig, events: EventSink, completed: Iterable[SampleRecord] = ()) -> RunResult:
    """Prune the configured model and evaluate it; raise on any failure (`Cancelled` included)."""
    if config.model == NOOP_MODEL:
        return _run_noop(config, events)
    completed = list(completed)
    data_dir = settings.data_dir()
    method = get_method(config.pruning.method)()
    _preflight(config, data_dir)
    reporter = _Reporter(events)
    seed_everything(config.seed)

    reporter.stage("load", f"loading {config.model}")
    from backend.models import placement
    from backend.models.loading import load_model

    placed = placement.plan(config, type(method))
    loaded = load_model(config.model, config.hf_args(), log=lambda msg: reporter.update(0.5, msg),
                        offload=placed.offload)
    report, calibration, reused = _prune(config, loaded, data_dir, reporter)
    seed_everything(config.seed)  # evaluation draws the same numbers whether pruning ran or was reused
    recovery = recover_if_configured(config, loaded, data_dir, report, reporter.start)
    saved_model = _keep_model(config, loaded, report, reporter) if config.keep_model else None

    reporter.stage("evaluate", f"evaluating {len(config.tasks)} task(s)")
    device_map = placement.spread(loaded.model, loaded.device) if placed.offload else None
    method.before_evaluation(loaded.model)
    evaluation = _evaluate(config, loaded, data_dir, completed, reporter, events)
    report.details.update(method.after_evaluation(loaded.model))

    reporter.stage("efficiency", "measuring parameters and throughput")
    efficiency = _efficiency(config, loaded, report.params_before, method.family == "dense", placed, reporter)
    reporter.update(1.0, "done")
    manifest = {
        **model_manifest(config, loaded, calibration),
        "lm_eval_version": evaluation.lm_eval_version,
        "tasks": evaluation.task_manifest,
        **_leak_fields(config, data_dir, calibration is not None),
        "saved_model": saved_model,
        "resumed_samples": len(completed),
        "pruned_model_reused": reused,
        "placement": placed.record(device_map),
        **({"recovery": recovery} if recovery is not None else {}),
    }
    return RunResult(scores=evaluation.scores, samples=evaluation.samples, efficiency=efficiency,
                     prune_report=report.as_dict(), manifest=manifest, stage_seconds=reporter.finish(),
                     trace_stats=_trace_stats(evaluation.samples))


def _prune(config: JobConfig, loaded, data_dir: Path, reporter: _Reporter):
    """(report, calibration, reused): calibrate and prune, or reuse this process's last pruning of the
    same weights with the same settings (e.g. the other paradigm's run; `_PruneCache`)."""
    cache_key = prune_cache_key(config, loaded.fingerprint)
    cached = _PRUNE_CACHE.get(cache_key) if settings.prune_cache_enabled() else None
    if cached is not None:
        reporter.stage("prune", f"reusing the pruned model of an earlier run ({cache_key[:12]})")
        loaded.model, report, calibration = cached.restore(loaded.model)
        return report, calibration, True
    report, calibration = calibrate_and_prune(config, loaded, data_dir, reporter.start)
    if settings.prune_cache_enabled():
        _PRUNE_CACHE.put(cache_key, loaded.model, report, calibration)
    return report, calibration, False


def _keep_model(config: JobConfig, loaded, report, reporter: _Reporter) -> str:
    """Save the pruned model (`keep_model`), before evaluation, which never changes the weights."""
    from backend.publish.export import kept_model_dir, save_pruned

    reporter.update(1.0, "saving the pruned model")
    return str(save_pruned(loaded, report, {"config_hash": config_hash(config), "config": canonical_dict(config)},
                           kept_model_dir(config)))


def _evaluate(config: JobConfig, loaded, data_dir: Path, completed: list[SampleRecord], reporter: _Reporter,
              events: EventSink):
    from backend.evaluation.harness import evaluate

    with tempfile.TemporaryDirectory(prefix="pruneboard-eval-") as workdir:
        return evaluate(
            loaded.model, loaded.tokenizer, list(config.tasks), config.evaluation, paradigm=config.paradigm,
            dtype=loaded.dtype, data_dir=data_dir, workdir=Path(workdir), progress=reporter.stage_progress(),
            on_sample=lambda sample: events(SampleDone(sample)), completed=completed,
            think_markers=config.hf_args().think_markers if config.paradigm == "think" else None,
            think_prompt=config.hf_args().think_prompt,
        )


def _efficiency(config: JobConfig, loaded, params_before: int, dense: bool, placed, reporter: _Reporter) -> dict:
    """The pruned model's efficiency; for a pruned run also the dense model's speed, measured in this
    process right after (`backend.efficiency.with_dense_reference`), placed as the pruned one was.
    The dense weights are loaded again rather than copied before pruning: a copy would double the
    memory through pruning and evaluation, a reload only briefly (the pruned model is released
    first; it is not needed after this stage)."""
    from backend.models import placement
    from backend.efficiency import measure_efficiency, measure_speed, with_dense_reference

    efficiency = measure_efficiency(loaded.model, loaded.tokenizer, loaded.device, params_before=params_before)
    if dense or not settings.efficiency_dense_reference():
        return efficiency
    reporter.update(0.5, "measuring the dense model side by side")
    from backend.models.loading import load_model

    loaded.model = None
    reference = load_model(config.model, config.hf_args(), offload=placed.offload)
    if placed.offload:
        placement.spread(reference.model, reference.device)
    return with_dense_reference(efficiency, measure_speed(reference.model, reference.tokenizer, reference.device))


def prune_cache_key(config: JobConfig, fingerprint: str) -> str:
    """What determines the pruned weights: the model's weights and load settings, the pruning, the
    seed and, when the method calibrates, the calibration (with the paradigm and thinking settings
    where the calibration text depends on them). Tasks, evaluation and recovery are left out."""
    method_cls = get_method(config.pruning.method)
    calibrated = method_cls.uses_calibration(config.pruning.method_params())
    calibration = config.effective_calibration().model_dump(mode="json") if calibrated else None
    paradigm_bound = calibrated and config.effective_calibration().source in ("task-aligned", "self-generated")
    key = {
        "fingerprint": fingerprint,
        "model": config.model,
        "model_args": config.model_args,
        "pruning": config.pruning.model_dump(mode="json"),
        "calibration": calibration,
        "paradigm": config.paradigm if paradigm_bound else None,
        "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@dataclass
class _CachedPrune:
    model: object
    report: object
    calibration: object

    def restore(self, loaded_model):
        """A fresh copy (evaluation and recovery change the model they get)."""
        del loaded_model  # the freshly loaded dense weights are replaced, not pruned again
        return copy.deepcopy(self.model), copy.deepcopy(self.report), self.calibration


class _PruneCache:
    """The last pruned model of this process (PRUNEBOARD_PRUNE_CACHE=1), kept on its device.

    A worker that runs the instruct and think runs of one pruning back to back prunes once. One
    entry only: a pruned model is as large as the model; a different key replaces it."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._entry: _CachedPrune | None = None

    def get(self, key: str) -> _CachedPrune | None:
        return self._entry if key == self._key else None

    def put(self, key: str, model, report, calibration) -> None:
        self._key, self._entry = None, None  # free the old copy before making the new one
        self._key, self._entry = key, _CachedPrune(copy.deepcopy(model), copy.deepcopy(report), calibration)


_PRUNE_CACHE = _PruneCache()


def _trace_stats(samples: list[SampleRecord]) -> dict:
    """`common.trace_stats` per task, for the tasks with generated samples (finish_reason set)."""
    from common.trace_stats import trace_stats

    return trace_stats([s for s in samples if s.finish_reason is not None])


def _preflight(config: JobConfig, data_dir: Path) -> None:
    """Cheap checks that must fail before any model is loaded."""
    from backend.evaluation.backends import check_backend

    check_backend(config.evaluation.backend)  # vllm without the package or CUDA: a clear error
    get_method(config.pruning.method).check_run(config)  # the method's own limits (e.g. routers: hf only)
    if any(get_task(task.name).runs_code for task in config.tasks):
        from backend.sandbox import require_jail

        require_jail()  # SandboxUnavailable: generated code is never run outside the jail
    for task in config.tasks:  # fetched here when PRUNEBOARD_USE_HUB=1, else TaskDataMissing naming the command
        ensure_task_data(task.name, data_dir)
    check_prune_inputs(config, data_dir)


def _leak_fields(config: JobConfig, data_dir: Path, calibrated: bool) -> dict:
    """`calibration_leak`: the calibration text is also evaluation data of one of the run's tasks."""
    if not calibrated:
        return {"calibration_leak": False, "calibration_leak_reason": None}
    from backend.calibration.build import leak_check

    leak, reason = leak_check(config.effective_calibration(), [t.name for t in config.tasks], data_dir)
    return {"calibration_leak": leak, "calibration_leak_reason": reason}


def _run_noop(config: JobConfig, events: EventSink) -> RunResult:
    """builtin:noop: no torch, sleeps `sleep_ms` while reporting, for queue tests and benchmarks."""
    args = config.noop_args()
    steps = 4 if args.sleep_ms >= 4 else 1
    for step in range(steps):
        events(Progress(fraction=step / steps, stage="noop", text=f"sleeping {step + 1}/{steps}"))
        time.sleep(args.sleep_ms / 1000 / steps)
    if args.fail:
        logger.error("noop job failing on request: %s", args.fail)
        raise RuntimeError(args.fail)
    events(Progress(fraction=1.0, stage="noop", text="done"))
    return RunResult(
        scores=[], samples=[], efficiency={}, prune_report={"method": config.pruning.method},
        manifest={**environment(), "config_hash": config_hash(config), "config": canonical_dict(config)},
    )
