"""Score a finished run's stored outputs again after a scorer change, without running the model.

    rescore(job_id) -> report        (`python -m jobs rescore RUN_ID [--json]`)

For every task of a succeeded run whose `TaskSpec.rescore` is set (generation tasks), each stored
sample is scored again from its full stored text (its trace; `samples` for runs stored before
traces existed): the answer text is the stored `answer`, or for "think" runs the answer part of the
output read as evaluation read it (`backend.evaluation.scoring.think_answer` with the markers the task manifest
records in `generation.think_markers`, `<think>` / `</think>` when it records none: no end marker,
no answer), or the output. The sample's `extracted`, `correct` and metrics are updated, the task's
scores are recomputed from the per-sample metrics with the aggregation of
`backend.evaluation.records.aggregate` (lm-eval's `mean` and `mean_stderr`, stderr None for one sample),
and they record the current `backend.evaluation.scoring.SCORER_VERSION` and the comparability key recomputed
with it. The run's trace statistics are recomputed. All in one transaction.

Tasks without `rescore` (log-likelihood ones: their scores depend only on the model) are left
alone and reported as not rescorable. A trace cut for storage (see `db.traces`) is rescored from
the head and tail it kept; the report counts such samples.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from sqlalchemy import select

from backend.result import SampleRecord
from db import results_version
from db.schema import Job, Sample, Score, Trace
from db.session import write_session
from db.states import JobState
from jobs.states import InvalidTransition, JobNotFound

__all__ = ["rescore", "NOT_RESCORABLE"]

logger = logging.getLogger(__name__)

NOT_RESCORABLE = "not rescorable (log-likelihood scores depend only on the model)"


def rescore(job_id: int) -> dict[str, Any]:
    """Rescore a succeeded run in one transaction; return a JSON-serialisable report.

    Raises JobNotFound for an unknown id and InvalidTransition unless the run succeeded.
    """
    from backend.evaluation import scoring
    from backend.registry import UnknownName
    from backend.tasks import get_task
    from db.queries import job_trace_stats

    with write_session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(job_id)
        if job.state != JobState.SUCCEEDED:
            raise InvalidTransition(f"job {job_id} is {job.state.value}; only succeeded runs can be rescored")
        tasks = sorted(set(session.scalars(select(Sample.task).where(Sample.job_id == job_id)))
                       | set(session.scalars(select(Score.task).where(Score.job_id == job_id))))
        manifest = dict(job.manifest_json or {})
        task_manifests = dict(manifest.get("tasks") or {})
        reports = []
        for task in tasks:
            try:
                spec = get_task(task)
            except UnknownName:
                reports.append({"task": task, "rescored": False, "reason": "unknown task (no longer registered)"})
                continue
            if spec.rescore is None:
                reason = NOT_RESCORABLE if spec.output_type == "loglikelihood" else "not rescorable (the task has no rescore function)"
                reports.append({"task": task, "rescored": False, "reason": reason})
                continue
            key = _new_key(task_manifests.get(task), scoring.SCORER_VERSION)
            report = _rescore_task(session, job, spec, key, _recorded_think_markers(task_manifests.get(task)))
            if key is not None and task in task_manifests:
                task_manifests[task] = {**task_manifests[task], "comparability_key": key,
                                        "scorer_version": scoring.SCORER_VERSION,
                                        "key_fields": {**task_manifests[task]["key_fields"],
                                                       "scorer": scoring.SCORER_VERSION}}
            reports.append(report)
        if task_manifests:
            job.manifest_json = {**manifest, "tasks": task_manifests}
        session.flush()
        job.trace_stats_json = job_trace_stats(session, job_id)
        results_version.bump(session)
    changed = sum(r.get("changed", 0) for r in reports)
    logger.info("job %d rescored with scorer %s (%d sample(s) changed)", job_id, scoring.SCORER_VERSION, changed)
    return {"id": job_id, "scorer_version": scoring.SCORER_VERSION, "tasks": reports}


def _rescore_task(session, job: Job, spec, key: str | None, markers: tuple[str, str]) -> dict[str, Any]:
    from backend.evaluation import scoring
    from db.traces import decode_trace

    rows = session.scalars(
        select(Sample).where(Sample.job_id == job.id, Sample.task == spec.name).order_by(Sample.doc_id)
    ).all()
    traces = {
        t.doc_id: t for t in session.scalars(select(Trace).where(Trace.job_id == job.id, Trace.task == spec.name))
    }
    changed = cut = 0
    metrics_by_doc: dict[int, dict[str, float]] = {}
    for row in rows:
        trace = traces.get(row.doc_id)
        if trace is not None:
            texts = decode_trace(trace)
            cut += texts["truncated_for_storage"]
        else:
            texts = {"prompt": row.prompt, "output": row.output, "reasoning": None, "answer": row.answer}
        answer = texts["answer"]
        if answer is None:
            answer = scoring.think_answer(texts["output"], markers) if job.paradigm == "think" else texts["output"]
        record = SampleRecord(
            task=row.task, doc_id=row.doc_id, prompt=texts["prompt"], output=texts["output"],
            extracted=row.extracted, gold=row.gold, correct=row.correct, prompt_tokens=row.prompt_tokens,
            output_tokens=row.output_tokens, metrics=dict(row.metrics_json or {}), reasoning=texts["reasoning"],
            answer=answer, finish_reason=row.finish_reason, thinking_tokens=row.thinking_tokens,
            truncated=bool(row.truncated), repetition=row.repetition,
        )
        extracted, new_metrics = spec.rescore(record)
        metrics = {**record.metrics, **{k: float(v) for k, v in new_metrics.items()}}
        extracted = None if extracted is None else str(extracted)
        correct = bool(metrics.get(spec.primary_metric))
        if (extracted, correct, metrics) != (row.extracted, row.correct, record.metrics):
            changed += 1
        row.extracted, row.correct, row.metrics_json = extracted, correct, _json_metrics(metrics)
        metrics_by_doc[row.doc_id] = metrics

    scores_report = []
    for score in session.scalars(select(Score).where(Score.job_id == job.id, Score.task == spec.name).order_by(Score.metric)):
        values = [m.get(score.metric) for m in metrics_by_doc.values()]
        old = score.value
        if values and None not in values:
            score.value, score.stderr = _aggregate(values)
        else:
            logger.warning("job %d: %s %s kept (not every sample has the metric)", job.id, spec.name, score.metric)
        score.scorer_version = _scorer_version()
        if key is not None:
            score.comparability_key = key
        scores_report.append({"metric": score.metric, "old": old, "new": score.value, "stderr": score.stderr,
                              "primary": score.is_primary})
    return {"task": spec.name, "rescored": True, "samples": len(rows), "changed": changed,
            "truncated_traces": cut, "scores": scores_report}


def _recorded_think_markers(task_manifest: dict[str, Any] | None) -> tuple[str, str]:
    """The (start, end) reasoning markers the run's evaluation used for the task.

    Evaluation records them as `generation.think_markers` in think runs (prompted thinking only
    changes the prompt, not how the answer is read); the default markers otherwise.
    """
    from backend.evaluation.scoring import DEFAULT_THINK_MARKERS

    generation = (task_manifest or {}).get("generation")
    recorded = generation.get("think_markers") if isinstance(generation, dict) else None
    if isinstance(recorded, (list, tuple)) and len(recorded) == 2 and all(isinstance(m, str) and m for m in recorded):
        return recorded[0], recorded[1]
    return DEFAULT_THINK_MARKERS


def _aggregate(values: list[float]) -> tuple[float | None, float | None]:
    """lm-eval's `mean` and `mean_stderr` (as backend.evaluation.records.aggregate), non-finite -> None."""
    from lm_eval.api.metrics import mean, mean_stderr

    value = float(mean(values))
    stderr = float(mean_stderr(values)) if len(values) > 1 else None
    return _finite(value), _finite(stderr)


def _new_key(task_manifest: dict[str, Any] | None, version: str) -> str | None:
    """The task's comparability key with the current scorer version (None: no key fields stored)."""
    if not task_manifest or not isinstance(task_manifest.get("key_fields"), dict):
        return None
    from backend.evaluation.harness import comparability_key

    return comparability_key({**task_manifest["key_fields"], "scorer": version})


def _scorer_version() -> str:
    from backend.evaluation import scoring
    return scoring.SCORER_VERSION


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: _finite(float(v)) for k, v in metrics.items()}
