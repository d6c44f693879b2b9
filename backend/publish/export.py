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
`from_pretrained` cannot build: reload them with `backend.models.loading.load_pruned(DIR)` (or `load_model(DIR)`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from common import settings
from backend.config import JobConfig, config_hash
from backend.prune_stage import StageStart, calibrate_and_prune, check_prune_inputs, model_manifest, recover_if_configured

__all__ = ["MANIFEST_NAME", "kept_model_dir", "prune_only", "save_pruned"]

MANIFEST_NAME = "pruneboard_manifest.json"


def kept_model_dir(config: JobConfig) -> Path:
    return settings.home() / "models" / config_hash(config)


def prune_only(config: JobConfig, progress: Callable[[float, str], None] | None = None):
    """Load, calibrate (when the method needs it), prune and recover (when configured), with the
    stages `backend.pipeline.run` uses (`backend.prune_stage`); nothing is evaluated or queued.

    Bad input (missing or empty calibration file, `seq_len` beyond the model's context, ...)
    raises ValueError before the model is loaded.
    """
    from backend.models.ids import NOOP_MODEL
    from backend.models.loading import load_model
    from backend.seeding import seed_everything

    say = progress or (lambda fraction, text: None)
    if config.model == NOOP_MODEL:
        raise ValueError("model: builtin:noop has no weights to prune")
    data_dir = settings.data_dir()
    check_prune_inputs(config, data_dir)
    seed_everything(config.seed)
    say(0.0, f"loading {config.model}")
    loaded = load_model(config.model, config.hf_args(), log=lambda msg: say(0.05, msg))
    report, calibration = calibrate_and_prune(config, loaded, data_dir, _stages(say))
    recover_if_configured(config, loaded, data_dir, report, _stages(say))
    say(1.0, "pruned")
    return loaded, report, {**model_manifest(config, loaded, calibration), "prune_report": report.as_dict()}


_SHARES = {"calibrate": (0.1, 0.2), "prune": (0.2, 1.0), "recover": (1.0, 1.0)}
"""Each stage's share of `prune_only`'s progress (loading takes the first tenth)."""


def _stages(say: Callable[[float, str], None]) -> StageStart:
    def start(name: str, text: str) -> Callable[[float, str], None]:
        low, high = _SHARES[name]
        say(low, text)
        return lambda fraction, message: say(low + (high - low) * fraction, message)
    return start


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
