"""Calibration token sets for methods that look at activations (ShortGPT, Wanda, SparseGPT).

Four sources, all deterministic for a given seed:
- `synthetic`: uniform random token ids, excluding special tokens; needs no data at all.
- `text`: a plain-text file (e.g. WikiText-2), its lines joined with blank lines, tokenised once;
  `num_samples` windows of `seq_len` tokens start at random offsets, as in the Wanda/SparseGPT
  recipe. Only local files: a named hub dataset would need the hub, which workers cannot reach,
  so such a path is rejected with a message saying to download the text first.
- `task-aligned`: rows of a task's training split (`CALIBRATION_TASKS`, e.g. GSM8K train) in a
  seeded order, each rendered with the model's chat template as a user turn (the task's own
  prompt) and an assistant turn (the worked answer; for think models the working goes inside the
  thinking markers, then the final answer). The conversations are concatenated and cut into
  `num_samples` consecutive windows of `seq_len` tokens.
- `self-generated`: the dense model answers the same prompts through its chat template (thinking
  included for think models: nothing is stripped), one prompt at a time (greedy, or sampled with a
  per-prompt seed derived from `seed` and the row, so one prompt regenerates to the same text);
  prompt + answer conversations are packed into windows as above. Generations are cached on disk
  (`calibration_cache_dir()`) under a key made of the model fingerprint, prompt source and rows,
  sample count, sequence length, seed and generation settings; a later run with the same key
  reuses them and generates nothing.

Leakage: `leak_check(cfg, task_names, data_dir)` flags calibration text that is also evaluation
data (the same file, e.g. WikiText-2 test calibration with WikiText-2 test perplexity, or GSM8K
test questions with the GSM8K task).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from common import settings
from backend.calibration.tasks import CALIBRATION_TASKS
from backend.config import CalibrationConfig, data_file

if TYPE_CHECKING:
    import torch

__all__ = [
    "CALIBRATION_TASKS",
    "CalibrationSet",
    "build_calibration",
    "calibration_cache_dir",
    "check_calibration",
    "generate_answer",
    "leak_check",
    "render_task_aligned",
    "sample_windows",
    "synthetic_ids",
]

logger = logging.getLogger(__name__)


THINK_MARKERS = ("<think>", "</think>")
"""Used to wrap the reference reasoning for think models when the template does not add markers."""
SELF_GENERATED_VERSION = 1
"""Part of the cache key: bump when the generation or packing procedure changes."""


@dataclass
class CalibrationSet:
    tensor: "torch.Tensor"
    """LongTensor (num_samples, seq_len) of token ids."""
    sha256: str
    """Hash of the token ids (int64, row-major): identifies the exact calibration data."""
    source: str
    """Human-readable description, e.g. `text:wikitext2/valid.txt (8x128, seed 0)`."""
    details: dict[str, Any] = field(default_factory=dict)
    """Source-specific facts for the manifest: rows used, text hash, cache key, whether it was reused."""


def _text_path(cfg: CalibrationConfig, data_dir: Path) -> Path:
    """The text file inside this machine's data dir (checked again here: a link may have changed)."""
    try:
        return data_file(cfg.path or "", data_dir)
    except ValueError as exc:
        raise ValueError(f"calibration.{exc}") from None


def _task_path(cfg: CalibrationConfig, data_dir: Path) -> Path:
    return Path(data_dir) / CALIBRATION_TASKS[cfg.task or ""].splits[cfg.split]


def source_file(cfg: CalibrationConfig, data_dir: Path) -> Path | None:
    """The data file the calibration text comes from (None for synthetic)."""
    if cfg.source == "text":
        return _text_path(cfg, data_dir)
    if cfg.source in ("task-aligned", "self-generated"):
        return _task_path(cfg, data_dir)
    return None


def check_calibration(cfg: CalibrationConfig, data_dir: Path, context: int | None = None,
                      default: bool = False) -> None:
    """Preflight before any model loads: the source's file must exist and hold some text, and
    `seq_len` must fit the model's context when it is known (`model_context`). `default`: `cfg` is
    the default calibration of a config without a `calibration` section (said in the error)."""
    try:
        _check_calibration(cfg, data_dir, context)
    except ValueError as exc:
        if default:
            raise ValueError(f"{exc} (the default calibration, used because the config has no calibration "
                             "section; name one to use other data)") from None
        raise


def _check_calibration(cfg: CalibrationConfig, data_dir: Path, context: int | None) -> None:
    if context is not None and cfg.seq_len > context:
        raise ValueError(f"calibration.seq_len {cfg.seq_len} exceeds the model context of {context} tokens")
    path = source_file(cfg, data_dir)
    if path is None:
        return
    where = f"(relative paths resolve against PRUNEBOARD_DATA_DIR={data_dir})"
    if not path.is_file():
        hint = ""
        if cfg.source == "text" and not Path(cfg.path or "").suffix and len(Path(cfg.path or "").parts) == 2:
            hint = (" - named hub datasets are not fetched (workers cannot reach the hub); save the text "
                    "to a local file and give its path")
        raise ValueError(f"calibration.path: file not found: {path} {where}{hint}")
    try:
        with open(path, encoding="utf-8") as handle:
            has_text = any(line.strip() for line in handle)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"calibration.path: cannot read {path}: {exc.__class__.__name__}") from None
    if not has_text:
        raise ValueError(f"calibration.path: file is empty: {path}")


def model_context(model_id: str) -> int | None:
    """The context a model declares, known before loading it (builtins, local directories); else None."""
    from backend.models import loading as models
    if model_id in models.TINY_RECIPES:
        return int(models.TINY_SHAPE["max_position_embeddings"])
    if model_id == models.SMOLLM2_ID:
        directory = settings.model_cache_dir() / models.SMOLLM2_CACHE_NAME
        return _config_context(directory) or 8192
    if Path(model_id).is_dir():
        return _config_context(Path(model_id))
    return None


def _config_context(directory: Path) -> int | None:
    try:
        value = json.loads((directory / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def leak_check(cfg: CalibrationConfig, task_names: list[str], data_dir: Path) -> tuple[bool, str | None]:
    """(leak, reason): whether the calibration text is also evaluation data of one of the tasks."""
    from backend.tasks import get_task

    path = source_file(cfg, data_dir)
    if path is None:
        return False, None
    resolved = path.resolve()
    for name in sorted(task_names):
        for rel in get_task(name).data_files:
            if (Path(data_dir) / rel).resolve() == resolved:
                return True, (f"calibration text {path.name} ({cfg.source}) is evaluation data of task "
                              f"{name!r} ({rel})")
    return False, None


def calibration_cache_dir() -> Path:
    """Where self-generated calibration text is cached: $PRUNEBOARD_CACHE_DIR/calibration."""
    return settings.model_cache_dir() / "calibration"


def build_calibration(
    cfg: CalibrationConfig,
    tokenizer: Any,
    data_dir: Path,
    *,
    model: Any = None,
    fingerprint: str | None = None,
    paradigm: str = "instruct",
    progress: Callable[[float, str], None] | None = None,
) -> CalibrationSet:
    """The calibration token ids the config asks for, tokenised with the model's own tokenizer.

    `self-generated` needs the dense `model` and its `fingerprint` (the cache key); `paradigm`
    decides whether reference answers are rendered with their reasoning in thinking markers.
    """
    import torch

    limit = _context_length(tokenizer)
    if limit is not None and cfg.seq_len > limit:
        raise ValueError(f"calibration.seq_len {cfg.seq_len} exceeds the model context of {limit} tokens")
    generator = torch.Generator().manual_seed(cfg.seed)
    shape = f"{cfg.num_samples}x{cfg.seq_len}, seed {cfg.seed}"
    details: dict[str, Any] = {}
    if cfg.source == "synthetic":
        tensor = synthetic_ids(tokenizer, cfg.num_samples, cfg.seq_len, generator)
        source = f"synthetic ({shape})"
    elif cfg.source == "text":
        check_calibration(cfg, data_dir)
        path = _text_path(cfg, data_dir)
        lines = path.read_text(encoding="utf-8").splitlines()
        joined = "\n\n".join(lines)  # verbose=False: a corpus is longer than the context on purpose
        ids = tokenizer(joined, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids[0]
        tensor = sample_windows(ids, cfg.num_samples, cfg.seq_len, generator)
        source = f"text:{cfg.path} ({shape})"
    elif cfg.source == "task-aligned":
        check_calibration(cfg, data_dir)
        rows = _load_rows(cfg, data_dir)
        order = _row_order(len(rows), cfg.seed)
        texts, used = [], []
        need = cfg.num_samples * cfg.seq_len
        total = 0
        for row in order:
            text = render_task_aligned(tokenizer, rows[row], cfg.task or "", paradigm)
            texts.append(text)
            used.append(row)
            total += _count(tokenizer, text)
            if total >= need:
                break
        tensor = pack_windows(tokenizer, texts, cfg.num_samples, cfg.seq_len)
        source = f"task-aligned:{cfg.task}/{cfg.split} ({shape}, {paradigm})"
        details = {"rows": used, "text_sha256": _texts_sha256(texts)}
    else:
        check_calibration(cfg, data_dir)
        tensor, details = _self_generated(cfg, tokenizer, data_dir, model, fingerprint, paradigm, progress)
        source = f"self-generated:{cfg.task}/{cfg.split} ({shape}, {paradigm})"
    digest = hashlib.sha256(tensor.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()
    logger.info("calibration %s sha256=%s", source, digest[:12])
    return CalibrationSet(tensor=tensor, sha256=digest, source=source, details=details)


# --- task-aligned and self-generated -------------------------------------------------------------


def _load_rows(cfg: CalibrationConfig, data_dir: Path) -> list[dict[str, Any]]:
    with open(_task_path(cfg, data_dir), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _row_order(count: int, seed: int) -> list[int]:
    """A seeded permutation of the rows (the order prompts are drawn in)."""
    import torch

    return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()


def _messages(task: str, row: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": CALIBRATION_TASKS[task].prompt(row)}]


def render_task_aligned(tokenizer: Any, row: dict[str, Any], task: str, paradigm: str = "instruct") -> str:
    """One training row as a chat: the task's prompt as the user turn, its worked answer as the
    assistant turn (think models: the working inside thinking markers, then the final answer)."""
    reasoning, final = CALIBRATION_TASKS[task].answer(row)
    if paradigm == "think":
        start, end = THINK_MARKERS
        reply = f"{start}\n{reasoning}\n{end}\n\n{final}"
    else:
        reply = f"{reasoning}\n{final}" if reasoning else final
    messages = [*_messages(task, row), {"role": "assistant", "content": reply}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def pack_windows(tokenizer: Any, texts: list[str], num_samples: int, seq_len: int) -> "torch.Tensor":
    """Concatenate the texts' tokens and cut `num_samples` consecutive windows of `seq_len` tokens."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)
    need = num_samples * seq_len
    if len(ids) < need:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than "
                         f"calibration.num_samples x seq_len = {need}")
    return torch.tensor(ids[:need], dtype=torch.long).view(num_samples, seq_len)


def _texts_sha256(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


def _generation_settings(cfg: CalibrationConfig) -> dict[str, Any]:
    sampled = cfg.temperature > 0
    return {"max_new_tokens": cfg.max_new_tokens, "do_sample": sampled,
            "temperature": cfg.temperature if sampled else None, "top_p": cfg.top_p if sampled else None}


def self_generated_key(cfg: CalibrationConfig, fingerprint: str, data_sha256: str, paradigm: str,
                       chat_template: str | None) -> tuple[str, dict[str, Any]]:
    """(key, fields): the cache key of a self-generated calibration set and what it is made of."""
    fields = {
        "version": SELF_GENERATED_VERSION,
        "model_fingerprint": fingerprint,
        "prompts": {"task": cfg.task, "split": cfg.split, "file_sha256": data_sha256,
                    "rows": f"seeded permutation (seed {cfg.seed}), in order until enough tokens"},
        "chat_template_sha256": hashlib.sha256((chat_template or "").encode()).hexdigest(),
        "paradigm": paradigm,
        "num_samples": cfg.num_samples,
        "seq_len": cfg.seq_len,
        "seed": cfg.seed,
        "generation": _generation_settings(cfg),
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return key, fields


def _prompt_text(tokenizer: Any, task: str, row: dict[str, Any]) -> str:
    return tokenizer.apply_chat_template(_messages(task, row), tokenize=False, add_generation_prompt=True)


def generate_answer(model: Any, tokenizer: Any, prompt: str, cfg: CalibrationConfig, row: int) -> str:
    """The model's reply to one chat-templated prompt, special tokens kept (end of turn included).

    Greedy at temperature 0; otherwise sampled under a seed derived from `cfg.seed` and the row, so
    the same prompt regenerates to the same text whatever else was generated before it.
    """
    import torch

    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    settings_ = _generation_settings(cfg)
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "do_sample": settings_["do_sample"]}
    if settings_["do_sample"]:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(cfg.seed * 1_000_003 + row)
        out = model.generate(**inputs, pad_token_id=pad, **kwargs)
    return tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=False)


def _self_generated(cfg, tokenizer, data_dir, model, fingerprint, paradigm, progress):
    if model is None or not fingerprint:
        raise ValueError("calibration source 'self-generated' needs the dense model and its fingerprint")
    say = progress or (lambda fraction, text: None)
    path = _task_path(cfg, data_dir)
    data_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    key, fields = self_generated_key(cfg, fingerprint, data_sha, paradigm, getattr(tokenizer, "chat_template", None))
    cache_file = calibration_cache_dir() / f"{key}.json"
    rows = _load_rows(cfg, data_dir)
    cached = _read_cache(cache_file, key)
    if cached is not None:
        say(0.5, f"reusing {len(cached['rows'])} self-generated calibration answers ({key[:12]})")
        used, answers = cached["rows"], cached["answers"]
        texts = [_prompt_text(tokenizer, cfg.task, rows[r]) + a for r, a in zip(used, answers)]
        reused = True
    else:
        need = cfg.num_samples * cfg.seq_len
        used, answers, texts, total = [], [], [], 0
        for row in _row_order(len(rows), cfg.seed):
            prompt = _prompt_text(tokenizer, cfg.task, rows[row])
            say(min(total / need, 0.99), f"generating calibration answer {len(used) + 1} "
                                         f"({total}/{need} tokens)")
            answer = generate_answer(model, tokenizer, prompt, cfg, row)
            used.append(row)
            answers.append(answer)
            texts.append(prompt + answer)
            total += _count(tokenizer, prompt + answer)
            if total >= need:
                break
        _write_cache(cache_file, {"key": key, "fields": fields, "rows": used, "answers": answers,
                                  "text_sha256": _texts_sha256(texts)})
        reused = False
    tensor = pack_windows(tokenizer, texts, cfg.num_samples, cfg.seq_len)
    say(1.0, f"calibration set from {len(used)} self-generated answers")
    details = {"rows": used, "text_sha256": _texts_sha256(texts), "cache_key": key,
               "cache_file": str(cache_file), "reused": reused, "key_fields": fields}
    return tensor, details


def _read_cache(path: Path, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("key") != key or len(data.get("rows", [])) != len(data.get("answers", [])) or not data["rows"]:
        logger.warning("ignoring unusable calibration cache %s", path)
        return None
    return data


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Atomic: written to a temporary file beside it, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- windows and synthetic ids -------------------------------------------------------------------


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
