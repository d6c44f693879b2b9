"""Prune without evaluating, and save pruned models so plain `transformers` loads them.

    prune_only(config, progress) -> (loaded, report, manifest)
    save_pruned(loaded, report, manifest, out_dir) -> out_dir

`python -m jobs prune CONFIG --out DIR` uses both; a job with `keep_model: true` saves its pruned model
under `kept_model_dir(config)` = $PRUNEBOARD_HOME/models/<config_hash>/.

A saved directory holds `save_pretrained`'s safetensors and config (depth-pruned models carry their
new `num_hidden_layers` / `layer_types`), the tokenizer files, and `pruneboard_manifest.json` (config,
prune report, calibration, model fingerprint, library versions), so
`AutoModelForCausalLM.from_pretrained(DIR)` gives back the pruned model with identical logits.
Unstructured sparsity is stored as explicit zeros in dense tensors. Width-pruned models (llm-pruner,
flap) have layers of different widths (`pruneboard_layer_widths` in config.json) that plain
`from_pretrained` cannot build: reload them with `backend.models.load_pruned(DIR)` (or `load_model(DIR)`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from common import settings
from backend.config import JobConfig, canonical_dict, config_hash
from backend.manifest import environment

__all__ = ["MANIFEST_NAME", "kept_model_dir", "prune_only", "save_pruned"]

MANIFEST_NAME = "pruneboard_manifest.json"


def kept_model_dir(config: JobConfig) -> Path:
    return settings.home() / "models" / config_hash(config)


def prune_only(config: JobConfig, progress: Callable[[float, str], None] | None = None):
    """Load, calibrate (when the method needs it) and prune; nothing is evaluated or queued.

    Bad input (missing or empty calibration file, `seq_len` beyond the model's context, ...)
    raises ValueError before the model is loaded.
    """
    from backend.calibration import build_calibration, check_calibration, model_context
    from backend.model_ids import NOOP_MODEL
    from backend.seeding import seed_everything
    from backend.pruning import get_method

    say = progress or (lambda fraction, text: None)
    if config.model == NOOP_MODEL:
        raise ValueError("model: builtin:noop has no weights to prune")
    data_dir = settings.data_dir()
    method_cls = get_method(config.pruning.method)
    params = config.pruning.method_params()
    calibrates = method_cls.uses_calibration(params)
    if calibrates:
        check_calibration(config.effective_calibration(), data_dir, context=model_context(config.model),
                          default=config.calibration is None)
    seed_everything(config.seed)

    from backend.models import load_model

    say(0.0, f"loading {config.model}")
    loaded = load_model(config.model, config.hf_args(), log=lambda msg: say(0.05, msg))
    calibration = None
    if calibrates:
        say(0.1, f"building calibration set ({config.effective_calibration().source})")
        calibration = build_calibration(
            config.effective_calibration(), loaded.tokenizer, data_dir, model=loaded.model,
            fingerprint=loaded.fingerprint,
            paradigm=config.paradigm, progress=lambda f, text: say(0.1 + 0.1 * f, text),
        )
    say(0.2, f"pruning with {config.pruning.method} at sparsity {config.pruning.sparsity}")
    report = method_cls().prune(
        loaded.model, config.pruning.sparsity, params,
        calibration.tensor if calibration is not None else None,
        lambda f, text: say(0.2 + 0.8 * f, text),
    )
    if config.recovery is not None and config.recovery.enabled:  # LoRA recovery, merged (backend.recovery)
        from backend.recovery import recover

        loaded.model, report.details["recovery"] = recover(
            loaded.model, loaded.tokenizer, config.recovery, data_dir, fingerprint=loaded.fingerprint,
            paradigm=config.paradigm, progress=lambda f, text: say(1.0, text))
    say(1.0, "pruned")
    manifest = {
        **environment(),
        "config_hash": config_hash(config),
        "config": canonical_dict(config),
        "seed": config.seed,
        "model": {"id": config.model, "fingerprint": loaded.fingerprint, "files": loaded.files},
        "device": loaded.device,
        "dtype": loaded.dtype,
        "calibration": None if calibration is None else {
            "source": calibration.source, "sha256": calibration.sha256,
            "shape": list(calibration.tensor.shape), "from_default": config.calibration is None,
            **calibration.details,
        },
        "prune_report": report.as_dict(),
    }
    return loaded, report, manifest


def save_pruned(loaded, report, manifest: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the pruned model, its tokenizer and `pruneboard_manifest.json` into `out_dir`.

    Written into a temporary sibling directory and renamed into place, so `out_dir` is either
    complete or absent; an existing non-empty `out_dir` is refused (a kept model of the same config
    is replaced).
    """

    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-tmp-"))
    try:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        data = dict(manifest)
        if report is not None and "prune_report" not in data:
            data["prune_report"] = report if isinstance(report, dict) else report.as_dict()
        data.setdefault("model", {"id": loaded.model_id, "fingerprint": loaded.fingerprint, "files": loaded.files})
        data.setdefault("dtype", loaded.dtype)
        (tmp / MANIFEST_NAME).write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        if out.exists():
            if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
                raise FileExistsError(f"{out} exists and is not empty")
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
