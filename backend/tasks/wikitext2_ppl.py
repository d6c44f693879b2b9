"""WikiText-2 perplexity: a built-in lower-is-better metric computed with direct forward passes.

Protocol (stated in the task manifest and every score's comparability key):
* text: `wikitext2/test.txt` under PRUNEBOARD_DATA_DIR, its lines joined with blank lines ("\\n\\n"),
  tokenised once with the model's tokenizer, no special tokens added;
* windows: non-overlapping, `window` tokens each (TaskConfig.window, default 512), taken from the
  start; `limit` is the number of windows (None: every full window); a trailing partial window is
  dropped;
* each window is one forward pass with no earlier context; every token but the first is predicted
  (window - 1 predictions per window);
* perplexity = exp(mean NLL over all predicted tokens of all windows), natural log.

Runs outside lm-eval (`TaskSpec.runner`), batched by `evaluation.batch_size` windows, reporting
progress before each batch. One SampleRecord per window, doc_id = window index, with its NLL sum,
token count and mean NLL in `metrics`; resumed windows are not recomputed and the aggregate is
rebuilt from all windows' sums, so it does not depend on whether the run resumed.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Iterable

from backend.tasks._common import require_files
from backend.tasks.base import TaskSpec, register_task

NAME = "wikitext2-ppl"
DATA_FILE = "wikitext2/test.txt"
DEFAULT_WINDOW = 512
PROTOCOL_VERSION = 1
PROTOCOL = ("lines joined with '\\n\\n', tokenised once without special tokens; non-overlapping windows "
            "of {window} tokens from the start, no cross-window context; exp(mean NLL over the "
            "window-1 predicted tokens of each of {windows} windows)")


def build(data_dir: Path, workdir: Path) -> dict[str, Any]:
    """Not an lm-eval task: `runner` evaluates it. Only checks the data is there."""
    require_files(NAME, data_dir, (DATA_FILE,))
    return {}


def token_stream(tokenizer, data_dir: Path) -> list[int]:
    text = "\n\n".join((data_dir / DATA_FILE).read_text(encoding="utf-8").splitlines())
    return tokenizer(text, add_special_tokens=False, verbose=False).input_ids


def windows(ids: list[int], window: int, limit: int | None) -> list[list[int]]:
    count = len(ids) // window
    if limit is not None:
        count = min(count, limit)
    return [ids[i * window:(i + 1) * window] for i in range(count)]


def window_nll(model, batch: list[list[int]]) -> list[tuple[float, int]]:
    """(sum of NLL, predicted tokens) of each window (same length), from one batched forward pass."""
    import torch

    device = next(model.parameters()).device
    input_ids = torch.tensor(batch, dtype=torch.long, device=device)
    out = []
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits
        for row in range(len(batch)):  # one window at a time: no second (batch, seq, vocab) tensor
            nll = torch.nn.functional.cross_entropy(
                logits[row, :-1].float(), input_ids[row, 1:], reduction="sum")
            out.append((float(nll.double()), input_ids.shape[1] - 1))
    return out


def run(model, tokenizer, tc, *, data_dir: Path, dtype: str, batch_size: int,
        progress: Callable[[float, str], None], on_sample: Callable[[Any], None],
        completed: Iterable[Any] = ()):
    """Evaluate perplexity; returns (scores, samples, task_manifest)."""
    from backend.evaluation.harness import comparability_key
    from backend.result import SampleRecord, ScoreRecord

    require_files(NAME, data_dir, (DATA_FILE,))
    window = tc.window or DEFAULT_WINDOW
    progress(0.0, f"{NAME}: tokenising {DATA_FILE}")
    ids = token_stream(tokenizer, data_dir)
    chunks = windows(ids, window, tc.limit)
    if not chunks:
        raise ValueError(f"{NAME}: {DATA_FILE} has {len(ids)} tokens, fewer than one window of {window}")
    kept = {s.doc_id: s for s in completed if s.task == NAME and s.doc_id < len(chunks)}
    todo = [i for i in range(len(chunks)) if i not in kept]
    new: dict[int, Any] = {}
    for start in range(0, len(todo), batch_size):
        batch_ids = todo[start:start + batch_size]
        progress(start / max(len(todo), 1), f"{NAME}: {start}/{len(todo)} windows")
        for i, (nll_sum, count) in zip(batch_ids, window_nll(model, [chunks[i] for i in batch_ids])):
            mean = nll_sum / count
            record = SampleRecord(
                task=NAME, doc_id=i, prompt=tokenizer.decode(chunks[i]),
                output=f"mean NLL {mean:.4f} over {count} predicted tokens (perplexity {math.exp(mean):.3f})",
                extracted=None, gold="", correct=None, prompt_tokens=len(chunks[i]), output_tokens=0,
                metrics={"nll": mean, "nll_sum": nll_sum, "tokens": float(count)},
            )
            new[i] = record
            on_sample(record)
    progress(1.0, f"{NAME}: {len(chunks)} windows")

    merged = {**kept, **new}
    samples = [merged[i] for i in range(len(chunks))]
    total_nll = sum(s.metrics["nll_sum"] for s in samples)
    total_tokens = sum(s.metrics["tokens"] for s in samples)
    mean_nll = total_nll / total_tokens
    data_sha = hashlib.sha256((data_dir / DATA_FILE).read_bytes()).hexdigest()
    key_fields = {
        "task": NAME, "protocol_version": PROTOCOL_VERSION, "window": window, "windows": len(chunks),
        "data_sha256": data_sha, "tokenizer_sha256": _tokenizer_sha256(tokenizer), "dtype": dtype,
    }
    key = comparability_key(key_fields)
    protocol = PROTOCOL.format(window=window, windows=len(chunks))
    scores = [
        ScoreRecord(task=NAME, metric="perplexity", value=math.exp(mean_nll), stderr=None,
                    higher_is_better=False, primary=True, comparability_key=key),
        ScoreRecord(task=NAME, metric="nll", value=mean_nll, stderr=None,
                    higher_is_better=False, primary=False, comparability_key=key),
    ]
    manifest = {
        "comparability_key": key, "key_fields": key_fields, "protocol": protocol,
        "data_files": {DATA_FILE: data_sha}, "docs": len(chunks), "windows_available": len(ids) // window,
        "window": window, "limit": tc.limit, "tokens_total": len(ids), "predicted_tokens": int(total_tokens),
        "output_type": "perplexity", "primary_metric": "perplexity", "metrics": ["perplexity", "nll"],
        "evaluated": len(todo), "resumed": len(kept),
    }
    return scores, samples, manifest


def _tokenizer_sha256(tokenizer) -> str:
    """Windows depend on the tokenizer: hash its vocabulary so different tokenizers never compare."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]


register_task(TaskSpec(
    name=NAME,
    category="perplexity",
    output_type="perplexity",
    primary_metric="perplexity",
    higher_is_better=False,
    description="WikiText-2 test perplexity: non-overlapping windows (default 512 tokens), "
                "exp(mean NLL); lower is better; `limit` counts windows.",
    build=build,
    data_files=(DATA_FILE,),
    metrics=("perplexity", "nll"),
    runner=run,
))
