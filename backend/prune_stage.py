"""The stages a full run (`backend.pipeline.run`) and a prune-only export (`backend.publish.export.prune_only`)
share, in one place: the checks before loading, calibrate -> prune, recovery, and the manifest
fields that describe the pruned model.

Each stage reports through `start(name, text)`, which begins the named stage ("calibrate", "prune",
"recover") and returns the callback for its progress (`progress(fraction, text)`, which may raise
`Cancelled`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from backend.config import JobConfig, canonical_dict, config_hash
from backend.manifest import environment
from backend.pruning import PruneReport, get_method

if TYPE_CHECKING:
    from backend.calibration.build import CalibrationSet

__all__ = ["StageStart", "check_prune_inputs", "calibrate_and_prune", "recover_if_configured", "model_manifest"]

StageStart = Callable[[str, str], Callable[[float, str], None]]


def check_prune_inputs(config: JobConfig, data_dir: Path) -> None:
    """The data pruning reads, checked before a model is loaded: the calibration data (missing or
    empty file, windows beyond the model's context) and the recovery data."""
    if get_method(config.pruning.method).uses_calibration(config.pruning.method_params()):
        from backend.calibration.build import check_calibration, model_context

        check_calibration(config.effective_calibration(), data_dir, context=model_context(config.model),
                          default=config.calibration is None)
    if config.recovery is not None and config.recovery.enabled:
        from backend.calibration.build import check_calibration, model_context

        check_calibration(config.recovery.data_config(), data_dir, context=model_context(config.model))


def calibrate_and_prune(config: JobConfig, loaded, data_dir: Path,
                        start: StageStart) -> tuple[PruneReport, "CalibrationSet | None"]:
    """Build the calibration set when the method reads one, then prune `loaded.model` in place."""
    method = get_method(config.pruning.method)
    params = config.pruning.method_params()
    calibration = None
    if method.uses_calibration(params):
        from backend.calibration.build import build_calibration

        progress = start("calibrate", f"building calibration set ({config.effective_calibration().source})")
        calibration = build_calibration(config.effective_calibration(), loaded.tokenizer, data_dir,
                                        model=loaded.model, fingerprint=loaded.fingerprint,
                                        paradigm=config.paradigm, progress=progress)
    progress = start("prune", f"pruning with {config.pruning.method} at sparsity {config.pruning.sparsity}")
    report = method().prune(loaded.model, config.pruning.sparsity, params,
                            calibration.tensor if calibration is not None else None, progress)
    return report, calibration


def recover_if_configured(config: JobConfig, loaded, data_dir: Path, report: PruneReport,
                          start: StageStart) -> dict[str, Any] | None:
    """LoRA recovery (`backend.recovery`, adapters merged) when the config asks for it; its record is
    also added to the prune report. None when recovery is off."""
    if config.recovery is None or not config.recovery.enabled:
        return None
    from backend.recovery import recover

    progress = start("recover", f"LoRA recovery, {config.recovery.steps} steps")
    loaded.model, recovery = recover(loaded.model, loaded.tokenizer, config.recovery, data_dir,
                                     fingerprint=loaded.fingerprint, paradigm=config.paradigm, progress=progress)
    report.details["recovery"] = recovery
    return recovery


def model_manifest(config: JobConfig, loaded, calibration: "CalibrationSet | None") -> dict[str, Any]:
    """The manifest fields of a pruned model: environment, config, seed, model, device, dtype, calibration."""
    return {
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
    }
