"""The JSON form of what crosses the worker API: samples, scores and whole run results.

One place converts both ways. JSON has no NaN or infinity, so non-finite floats travel as null and
come back as NaN where the record's type is a float (a score's value, a sample's metrics). The
Pydantic models validate what a worker sends before anything is stored.
"""
from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.result import RunResult, SampleRecord, ScoreRecord

__all__ = [
    "API_PREFIX", "USER_API_PREFIX", "SampleModel", "ScoreModel", "ResultModel", "encode_sample", "decode_sample",
    "encode_result", "decode_result", "jsonable",
]

API_PREFIX = "/api/v1/worker"
"""Where the worker API's routes live (jobs.api serves them, jobs.remote calls them)."""
USER_API_PREFIX = "/api/v1/user"
"""Where the user API's routes live (jobs.user_api serves them, jobs.user_client calls them)."""
_NAME = 200  # task and metric names: the DB columns' length


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleModel(_Strict):
    """backend.result.SampleRecord."""

    task: str = Field(min_length=1, max_length=_NAME)
    doc_id: int = Field(ge=0, le=2**31 - 1)
    prompt: str
    output: str
    extracted: str | None = None
    gold: str
    correct: bool | None = None
    prompt_tokens: int = Field(ge=0, le=2**31 - 1)
    output_tokens: int = Field(ge=0, le=2**31 - 1)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    reasoning: str | None = None
    answer: str | None = None
    finish_reason: str | None = Field(None, max_length=32)
    thinking_tokens: int | None = Field(None, ge=0, le=2**31 - 1)
    truncated: bool = False
    repetition: float | None = None


class ScoreModel(_Strict):
    """backend.result.ScoreRecord."""

    task: str = Field(min_length=1, max_length=_NAME)
    metric: str = Field(min_length=1, max_length=_NAME)
    value: float | None
    stderr: float | None = None
    higher_is_better: bool
    primary: bool
    comparability_key: str = Field(max_length=500)


class ResultModel(_Strict):
    """backend.result.RunResult."""

    scores: list[ScoreModel]
    samples: list[SampleModel]
    efficiency: dict[str, Any] = Field(default_factory=dict)
    prune_report: dict[str, Any] = Field(default_factory=dict)
    manifest: dict[str, Any] = Field(default_factory=dict)
    stage_seconds: dict[str, float | None] = Field(default_factory=dict)
    trace_stats: dict[str, Any] = Field(default_factory=dict)


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: non-finite floats become None, tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def encode_sample(sample: SampleRecord) -> dict[str, Any]:
    return jsonable(asdict(sample))


def decode_sample(data: SampleModel | dict[str, Any]) -> SampleRecord:
    model = data if isinstance(data, SampleModel) else SampleModel.model_validate(data)
    values = model.model_dump()
    values["metrics"] = {k: _nan(v) for k, v in values["metrics"].items()}
    return SampleRecord(**values)


def encode_result(result: RunResult) -> dict[str, Any]:
    return jsonable(asdict(result))


def decode_result(data: ResultModel | dict[str, Any]) -> RunResult:
    model = data if isinstance(data, ResultModel) else ResultModel.model_validate(data)
    scores = [ScoreRecord(**{**s.model_dump(), "value": _nan(s.value)}) for s in model.scores]
    return RunResult(
        scores=scores,
        samples=[decode_sample(s) for s in model.samples],
        efficiency=model.efficiency,
        prune_report=model.prune_report,
        manifest=model.manifest,
        stage_seconds={k: v for k, v in model.stage_seconds.items() if v is not None},
        trace_stats=model.trace_stats,
    )


def field_names(record_type: type) -> set[str]:
    """The dataclass's fields (tests check each model mirrors its record exactly)."""
    return {f.name for f in fields(record_type)}
