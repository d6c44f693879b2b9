"""Typed events the pipeline sends to its caller while it runs.

The caller's sink may raise `Cancelled` from any event to stop the run; the pipeline lets it
propagate, so nothing is returned and the executor writes no scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from backend.result import SampleRecord


class Cancelled(Exception):
    """Raised by an event sink to stop a running pipeline."""


@dataclass(frozen=True)
class Progress:
    """Overall progress of the run in [0, 1] with the current stage and a human-readable text."""

    fraction: float
    stage: str
    text: str


@dataclass(frozen=True)
class SampleDone:
    """One evaluation sample finished (sent once per sample, for streaming and resume)."""

    sample: SampleRecord


Event = Union[Progress, SampleDone]
EventSink = Callable[[Event], None]


def ignore_events(event: Event) -> None:
    """A sink for callers that do not care about progress."""
