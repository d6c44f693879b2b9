"""Compressed full texts of samples (`traces` table): encoding, the per-run size cap, decoding.

Every stored sample gets one trace row holding its full prompt, output, reasoning and answer as
zlib-compressed UTF-8. Reasoning and answer are normally parts of the output; then only their
position in it is stored (no second copy). Listings read the short previews in `samples`.

Size cap: a run keeps at most `settings.trace_cap_bytes()` of compressed text in full
(`PRUNEBOARD_TRACE_CAP_MB`, default 64 MB). Traces are stored in (task, doc_id) order; from the
first one that would take the run past the cap on, every text longer than
2 x `CUT_KEEP_CHARS` keeps only its first and last `CUT_KEEP_CHARS` characters around a marker, and
the trace is marked `truncated_for_storage`. The cap therefore bounds the full traces; each cut
trace adds at most a few kB more.
"""
from __future__ import annotations

import zlib
from typing import Any, Iterable


__all__ = ["CODEC", "CUT_KEEP_CHARS", "encode_traces", "decode_trace", "cut_text"]

CODEC = "zlib"
ZLIB_LEVEL = 6
CUT_KEEP_CHARS = 1000
"""Characters kept at each end of a text cut for storage (the final answer is at the end)."""


def cut_text(text: str, keep: int = CUT_KEEP_CHARS) -> tuple[str, bool]:
    """Head and tail of `text` around a marker naming how much was cut; (text, False) if short."""
    if len(text) <= 2 * keep:
        return text, False
    removed = len(text) - 2 * keep
    return f"{text[:keep]}\n[... {removed} characters cut for storage ...]\n{text[-keep:]}", True


def encode_traces(job_id: int, samples: Iterable[Any], cap_bytes: int) -> list[dict[str, Any]]:
    """`traces` rows for a run's samples, applying the run's cap (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    total = 0
    over = False
    for sample in sorted(samples, key=lambda s: s.key):
        row = None
        if not over:
            row = _encode(job_id, sample, cut=False)
            if total + row["stored_bytes"] > cap_bytes:
                over, row = True, None
        if row is None:
            row = _encode(job_id, sample, cut=True)
        total += row["stored_bytes"]
        rows.append(row)
    return rows


def decode_trace(row: Any) -> dict[str, Any]:
    """The full texts of a `Trace` row (or of a mapping with its columns), decompressed."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    output = _unpack(get("output_z"))
    return {
        "prompt": _unpack(get("prompt_z")),
        "output": output,
        "reasoning": _part(get, "reasoning", output),
        "answer": _part(get, "answer", output),
        "prompt_chars": get("prompt_chars"),
        "output_chars": get("output_chars"),
        "reasoning_chars": get("reasoning_chars"),
        "answer_chars": get("answer_chars"),
        "stored_bytes": get("stored_bytes"),
        "truncated_for_storage": bool(get("truncated_for_storage")),
    }


def _encode(job_id: int, sample: Any, cut: bool) -> dict[str, Any]:
    texts = {"prompt": sample.prompt or "", "output": sample.output or ""}
    parts = {"reasoning": sample.reasoning, "answer": sample.answer}
    lost = False
    row: dict[str, Any] = {"job_id": job_id, "task": sample.task, "doc_id": sample.doc_id, "codec": CODEC}
    for name, text in texts.items():
        kept, was_cut = cut_text(text) if cut else (text, False)
        lost |= was_cut
        row[f"{name}_z"] = _pack(kept)
        row[f"{name}_chars"] = len(text)
    output = texts["output"]
    for name, text in parts.items():
        row[f"{name}_z"] = row[f"{name}_start"] = row[f"{name}_chars"] = None
        if text is None:
            continue
        row[f"{name}_chars"] = len(text)
        start = -1 if cut else (output.rfind(text) if name == "answer" else output.find(text))
        if start >= 0:
            row[f"{name}_start"] = start
        else:
            kept, was_cut = cut_text(text) if cut else (text, False)
            lost |= was_cut
            row[f"{name}_z"] = _pack(kept)
    row["stored_bytes"] = sum(len(row[f"{n}_z"]) for n in ("prompt", "output", "reasoning", "answer")
                              if row[f"{n}_z"] is not None)
    row["truncated_for_storage"] = lost
    return row


def _part(get, name: str, output: str) -> str | None:
    chars = get(f"{name}_chars")
    if chars is None:
        return None
    blob = get(f"{name}_z")
    if blob is not None:
        return _unpack(blob)
    start = get(f"{name}_start") or 0
    return output[start:start + chars]


def _pack(text: str) -> bytes:
    return zlib.compress(text.encode("utf-8", "surrogatepass"), ZLIB_LEVEL)


def _unpack(blob: bytes | None) -> str:
    return zlib.decompress(bytes(blob)).decode("utf-8", "surrogatepass") if blob is not None else ""
