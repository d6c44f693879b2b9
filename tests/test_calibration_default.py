"""A calibrated method whose config names no calibration gets the study's setting (WikiText-2 validation
text, 32 x 256 tokens, seed 0), said in the manifest; configs that name calibration are unchanged."""
from __future__ import annotations

import hashlib
import json

import pytest

from backend.config import DEFAULT_CALIBRATION, CalibrationConfig, canonical_dict, config_hash, validate_config

BASE = {"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"], "pruning": {"method": "shortgpt", "sparsity": 0.25}}


def _formula_hash(document: dict) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_no_section_means_the_study_default_and_an_empty_one_synthetic():
    assert DEFAULT_CALIBRATION == CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=32,
                                                    seq_len=256, seed=0)
    unnamed = validate_config(BASE)
    assert unnamed.calibration is None and unnamed.effective_calibration() == DEFAULT_CALIBRATION
    assert "calibration" not in canonical_dict(unnamed)
    empty = validate_config({**BASE, "calibration": {}})
    assert empty.effective_calibration() == CalibrationConfig() and CalibrationConfig().source == "synthetic"
    assert canonical_dict(empty)["calibration"] == {}
    assert config_hash(empty) != config_hash(unnamed)


@pytest.mark.parametrize("calibration", [
    {"source": "text", "path": "wikitext2/valid.txt", "num_samples": 32, "seq_len": 256},  # the default, named
    {"num_samples": 16, "seq_len": 64},
    {"source": "task-aligned", "task": "gsm8k"},
])
def test_configs_naming_calibration_keep_their_canonical_form_and_hash(calibration):
    config = validate_config({**BASE, "calibration": calibration})
    assert canonical_dict(config)["calibration"] == calibration
    assert config_hash(config) == _formula_hash(canonical_dict(config))
    assert config.effective_calibration() == CalibrationConfig(**calibration)


def test_prune_uses_the_default_and_the_manifest_says_so(shared_data):
    from backend.publish.export import prune_only

    _, _, manifest = prune_only(validate_config(BASE))
    calibration = manifest["calibration"]
    assert calibration["from_default"] is True and calibration["shape"] == [32, 256]
    assert calibration["source"].startswith("text")
    named, _, named_manifest = prune_only(validate_config({**BASE, "calibration": {"num_samples": 4, "seq_len": 32}}))
    assert named_manifest["calibration"]["from_default"] is False
    assert named_manifest["calibration"]["shape"] == [4, 32]


def test_missing_default_data_fails_before_loading_and_says_it_is_the_default(tmp_path, monkeypatch):
    from backend.publish.export import prune_only

    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="calibration.path: file not found.*the default calibration"):
        prune_only(validate_config(BASE))
    with pytest.raises(ValueError, match="calibration.path: file not found") as info:
        prune_only(validate_config({**BASE, "calibration": {"source": "text", "path": "mine.txt"}}))
    assert "the default calibration" not in str(info.value)


def test_methods_without_calibration_ignore_the_default(tmp_path, monkeypatch):
    from backend.publish.export import prune_only

    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(tmp_path))  # no WikiText-2 here: nothing may ask for it
    _, report, manifest = prune_only(validate_config({**BASE, "pruning": {"method": "magnitude", "sparsity": 0.5}}))
    assert manifest["calibration"] is None and report.achieved_sparsity == pytest.approx(0.5, abs=1e-3)
