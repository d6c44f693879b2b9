"""How a run's results become table rows and back: scores, final samples (previews, with their full
texts in `traces`), the checkpoints a running attempt streams, and the records rebuilt from them.
The queue writes a finished run with `write_results`, and so does a bundle import."""
from __future__ import annotations

import math
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from backend.result import SampleRecord
from backend.evaluation.scoring import SCORER_VERSION
from common import settings
from db.schema import SAMPLE_PREVIEW_CHARS, Sample, SampleCheckpoint, Score, Trace
from db.traces import encode_traces
from jobs.facts import task_facts

__all__ = ["write_results", "finite", "jsonable", "score_row", "sample_row", "checkpoint_row", "stored_sample_row",
           "sample_record"]


def write_results(session: Session, job_id: int, scores: list[Any], samples: list[SampleRecord],
                  scorer_version: str | None = SCORER_VERSION) -> None:
    """Insert a run's scores, samples (previews) and compressed traces (within the trace cap) in the
    caller's transaction. `scorer_version`: the scorer that produced the scores (default: this one;
    imported runs keep the one they were scored with)."""
    if scores:
        session.execute(insert(Score), [score_row(job_id, score, scorer_version) for score in scores])
    if samples:
        session.execute(insert(Sample), [stored_sample_row(job_id, sample) for sample in samples])
        session.execute(insert(Trace), encode_traces(job_id, samples, settings.trace_cap_bytes()))


def finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def jsonable(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (Postgres JSON rejects NaN)."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def score_row(job_id: int, score: Any, scorer_version: str | None) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "task": score.task,
        "metric": score.metric,
        "value": finite(score.value),
        "stderr": finite(score.stderr),
        "higher_is_better": bool(score.higher_is_better),
        "is_primary": bool(score.primary),
        "comparability_key": score.comparability_key,
        "scorer_version": scorer_version,
        **task_facts(score.task),
    }


def sample_row(job_id: int, sample: SampleRecord) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "task": sample.task,
        "doc_id": sample.doc_id,
        "prompt": sample.prompt,
        "output": sample.output,
        "extracted": sample.extracted,
        "gold": sample.gold,
        "correct": sample.correct,
        "prompt_tokens": sample.prompt_tokens,
        "output_tokens": sample.output_tokens,
        "metrics_json": jsonable(dict(sample.metrics)),
        "answer": sample.answer,
        "finish_reason": sample.finish_reason,
        "thinking_tokens": sample.thinking_tokens,
        "truncated": bool(sample.truncated),
        "repetition": finite(sample.repetition),
    }


def checkpoint_row(job_id: int, attempt: int, sample: SampleRecord) -> dict[str, Any]:
    """Checkpoints keep every text in full: a resumed attempt rebuilds the records from them."""
    return {**sample_row(job_id, sample), "attempt": attempt, "reasoning": sample.reasoning}


def stored_sample_row(job_id: int, sample: SampleRecord) -> dict[str, Any]:
    """A final sample: previews of the long texts (the full ones go to `traces`) and flags."""
    row = sample_row(job_id, sample)
    for name in ("prompt", "output", "answer"):
        if row[name] is not None:
            row[name] = row[name][:SAMPLE_PREVIEW_CHARS]
    row["output_chars"] = len(sample.output)
    return row


def sample_record(row: Sample | SampleCheckpoint) -> SampleRecord:
    return SampleRecord(
        task=row.task,
        doc_id=row.doc_id,
        prompt=row.prompt,
        output=row.output,
        extracted=row.extracted,
        gold=row.gold,
        correct=row.correct,
        prompt_tokens=row.prompt_tokens,
        output_tokens=row.output_tokens,
        metrics={k: (math.nan if v is None else v) for k, v in (row.metrics_json or {}).items()},
        reasoning=getattr(row, "reasoning", None),
        answer=row.answer,
        finish_reason=row.finish_reason,
        thinking_tokens=row.thinking_tokens,
        truncated=bool(row.truncated),
        repetition=row.repetition,
    )
