"""Typed records that cross the pipeline boundary; all JSON-serialisable for remote executors."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SampleRecord:
    """One evaluated sample: what the model saw, what it said, and how it was scored."""

    task: str
    doc_id: int
    prompt: str
    output: str
    extracted: str | None
    gold: str
    correct: bool | None
    prompt_tokens: int
    output_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)
    reasoning: str | None = None
    """Think paradigm: the reasoning part of `output` (between the model's thinking markers)."""
    answer: str | None = None
    """The part of `output` after the reasoning (the whole output for instruct models)."""
    finish_reason: str | None = None
    """"stop" (the model ended) or "length" (the token budget ran out)."""
    thinking_tokens: int | None = None
    truncated: bool = False
    """Think paradigm: no end-of-thinking marker was produced."""
    repetition: float | None = None
    """Share of repeated n-grams in the output (a degeneration indicator)."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.task, self.doc_id)


@dataclass(frozen=True)
class ScoreRecord:
    """An aggregate metric of one task in one run."""

    task: str
    metric: str
    value: float
    stderr: float | None
    higher_is_better: bool
    primary: bool
    comparability_key: str


@dataclass
class RunResult:
    """Everything a finished run produced. The executor stores it in one transaction."""

    scores: list[ScoreRecord]
    samples: list[SampleRecord]
    efficiency: dict[str, Any]
    prune_report: dict[str, Any]
    manifest: dict[str, Any]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    trace_stats: dict[str, Any] = field(default_factory=dict)
    """Per generation task: `common.trace_stats.trace_stats` of its samples (mean thinking length,
    truncation, repetition, accuracy by output-length bucket); empty for log-likelihood-only runs."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunResult":
        return cls(
            scores=[ScoreRecord(**s) for s in data["scores"]],
            samples=[SampleRecord(**s) for s in data["samples"]],
            efficiency=data["efficiency"],
            prune_report=data["prune_report"],
            manifest=data["manifest"],
            stage_seconds=data.get("stage_seconds", {}),
            trace_stats=data.get("trace_stats", {}),
        )
