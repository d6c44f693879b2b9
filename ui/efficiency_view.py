"""A run's efficiency figures as Markdown for the run detail: medians with their spread (probe
version 2, `backend.efficiency`), the dense model measured side by side, and records of the older
one-run probe shown without a spread (they have none)."""
from __future__ import annotations

from typing import Any

from backend.efficiency import LEGACY_PROBE_VERSION, probe_version
from ui.markdown import escape

__all__ = ["FIGURES", "efficiency_markdown"]

FIGURES = (("decode_tokens_per_s", "decode tokens/s"), ("prefill_tokens_per_s", "prefill tokens/s"),
           ("latency_ms_first_token", "first-token latency (ms)"),
           ("decode_latency_ms_per_token", "decode latency (ms/token)"))
"""Speed figures shown, in order, with their labels."""


def efficiency_markdown(efficiency: dict[str, Any] | None) -> list[str]:
    """Markdown lines (empty when the run stored no speed figures); every stored string escaped."""
    efficiency = efficiency or {}
    if not any(isinstance(efficiency.get(name), (int, float)) for name, _ in FIGURES):
        return []
    where = ", ".join(escape(str(efficiency[key])) for key in ("device_name", "dtype") if efficiency.get(key))
    if probe_version(efficiency) == LEGACY_PROBE_VERSION:
        head = (f"**Efficiency** (probe v{LEGACY_PROBE_VERSION}: one timed run of a 64-token prompt and 24 decode "
                f"steps, so no spread; {where})")
        rows = [f"| {label} | {_number(efficiency.get(name))} |" for name, label in FIGURES]
        return ["", head, "", "| figure | value |", "|---|---|", *rows, *_extra_rows(efficiency, 1)]
    probe = efficiency.get("probe") or {}
    head = (f"**Efficiency** (probe v{probe_version(efficiency)}: median [quartiles] over n timed iterations, at "
            f"least {_number(probe.get('min_iterations'))} iterations and {_number(probe.get('min_seconds'))} s per "
            f"figure; prompt {_number(probe.get('prompt_tokens'))} tokens, {_number(probe.get('new_tokens'))} new "
            f"tokens, batch 1; {where})")
    reference = efficiency.get("dense_reference")
    columns = ["figure", "this run", *(["dense, same process"] if reference else [])]
    lines = ["", head, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, label in FIGURES:
        cells = [_spread(efficiency, name), *([_spread(reference, name)] if reference else [])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + _extra_rows(efficiency, len(columns) - 1)


def _extra_rows(efficiency: dict[str, Any], width: int) -> list[str]:
    rows = []
    for key, label in (("measured_speedup", "speed-up, decode (x)"), ("prefill_speedup", "speed-up, prefill (x)")):
        if isinstance(efficiency.get(key), (int, float)):
            low, high = (efficiency.get(f"{key}_range") or [None, None])[:2]
            spread = f" [{_number(low)}–{_number(high)}]" if low is not None and high is not None else ""
            rows.append(f"| {label} | {_number(efficiency[key])}{spread} |" + " |" * (width - 1))
    if isinstance(efficiency.get("peak_memory_mb"), (int, float)):
        kind = f" ({escape(efficiency['peak_memory_kind'])})" if efficiency.get("peak_memory_kind") else ""
        rows.append(f"| peak memory (MB) | {_number(efficiency['peak_memory_mb'])}{kind} |" + " |" * (width - 1))
    return rows


def _spread(record: dict[str, Any], name: str) -> str:
    stats = ((record or {}).get("spread") or {}).get(name)
    if not isinstance(stats, dict):
        return _number((record or {}).get(name))
    return f"{_number(stats.get('median'))} [{_number(stats.get('q1'))}–{_number(stats.get('q3'))}] (n={stats.get('n')})"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return f"{value:.4g}"
