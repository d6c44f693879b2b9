"""Calibration token sets for methods that look at activations (ShortGPT, Wanda, SparseGPT).

Two sources, both deterministic for a given seed:
- `synthetic`: uniform random token ids, excluding special tokens; needs no data at all.
- `text`: a plain-text file (e.g. WikiText-2), its lines joined with blank lines, tokenised once;
  `num_samples` windows of `seq_len` tokens start at random offsets, as in the Wanda/SparseGPT
  recipe.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.config import CalibrationConfig

if TYPE_CHECKING:
    import torch

__all__ = ["CalibrationSet", "build_calibration", "check_calibration", "sample_windows", "synthetic_ids"]

logger = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    tensor: "torch.Tensor"
    """LongTensor (num_samples, seq_len) of token ids."""
    sha256: str
    """Hash of the token ids (int64, row-major): identifies the exact calibration data."""
    source: str
    """Human-readable description, e.g. `text:wikitext2/valid.txt (8x128, seed 0)`."""


def _text_path(cfg: CalibrationConfig, data_dir: Path) -> Path:
    path = Path(cfg.path or "")
    return path if path.is_absolute() else Path(data_dir) / path


def check_calibration(cfg: CalibrationConfig, data_dir: Path) -> None:
    """Preflight before any model loads: a `text` source's file must exist and hold some text."""
    if cfg.source != "text":
        return
    path = _text_path(cfg, data_dir)
    where = f"(relative paths resolve against PRUNEBOARD_DATA_DIR={data_dir})"
    if not path.is_file():
        raise ValueError(f"calibration.path: file not found: {path} {where}")
    try:
        with open(path, encoding="utf-8") as handle:
            has_text = any(line.strip() for line in handle)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"calibration.path: cannot read {path}: {exc.__class__.__name__}") from None
    if not has_text:
        raise ValueError(f"calibration.path: file is empty: {path}")


def build_calibration(cfg: CalibrationConfig, tokenizer: Any, data_dir: Path) -> CalibrationSet:
    """The calibration token ids the config asks for, tokenised with the model's own tokenizer."""
    import torch

    limit = _context_length(tokenizer)
    if limit is not None and cfg.seq_len > limit:
        raise ValueError(f"calibration.seq_len {cfg.seq_len} exceeds the model context of {limit} tokens")
    generator = torch.Generator().manual_seed(cfg.seed)
    shape = f"{cfg.num_samples}x{cfg.seq_len}, seed {cfg.seed}"
    if cfg.source == "synthetic":
        tensor = synthetic_ids(tokenizer, cfg.num_samples, cfg.seq_len, generator)
        source = f"synthetic ({shape})"
    else:
        check_calibration(cfg, data_dir)
        path = _text_path(cfg, data_dir)
        lines = path.read_text(encoding="utf-8").splitlines()
        joined = "\n\n".join(lines)  # verbose=False: a corpus is longer than the context on purpose
        ids = tokenizer(joined, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids[0]
        tensor = sample_windows(ids, cfg.num_samples, cfg.seq_len, generator)
        source = f"text:{cfg.path} ({shape})"
    digest = hashlib.sha256(tensor.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()
    logger.info("calibration %s sha256=%s", source, digest[:12])
    return CalibrationSet(tensor=tensor, sha256=digest, source=source)


def sample_windows(
    ids: "torch.Tensor", num_samples: int, seq_len: int, generator: "torch.Generator"
) -> "torch.Tensor":
    """`num_samples` windows of `seq_len` consecutive tokens at random starts (may overlap)."""
    import torch

    total = ids.numel()
    if total < seq_len:
        raise ValueError(f"calibration text has {total} tokens, fewer than calibration.seq_len={seq_len}")
    starts = torch.randint(0, total - seq_len + 1, (num_samples,), generator=generator)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()]).to(torch.long)


def synthetic_ids(
    tokenizer: Any, num_samples: int, seq_len: int, generator: "torch.Generator"
) -> "torch.Tensor":
    """Uniform random ids over the vocabulary minus special tokens (they would change the model's mode)."""
    import torch

    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)
    picks = torch.randint(0, allowed.numel(), (num_samples, seq_len), generator=generator)
    return allowed[picks]


def _context_length(tokenizer: Any) -> int | None:
    """The tokenizer's declared context, when it declares a real one (HF uses ~1e30 for 'unknown')."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**9 else None
