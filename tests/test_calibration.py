"""Calibration sets: deterministic per seed, real windows of the text, clear preflight errors."""
from __future__ import annotations

import pytest
import torch

from backend.calibration.build import build_calibration, check_calibration
from backend.config import CalibrationConfig
from backend.models.loading import load_model

TEXT = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40))


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("builtin:tiny-llama").tokenizer


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    return tmp_path


def _text(path="corpus.txt", **kw):
    return CalibrationConfig(source="text", path=path, **{"num_samples": 4, "seq_len": 32, **kw})


def test_text_windows_are_deterministic_per_seed(tokenizer, data_dir):
    first = build_calibration(_text(seed=3), tokenizer, data_dir)
    again = build_calibration(_text(seed=3), tokenizer, data_dir)
    other = build_calibration(_text(seed=4), tokenizer, data_dir)
    assert first.tensor.shape == (4, 32) and first.tensor.dtype == torch.long
    assert torch.equal(first.tensor, again.tensor) and first.sha256 == again.sha256
    assert not torch.equal(first.tensor, other.tensor) and first.sha256 != other.sha256
    assert "corpus.txt" in first.source


def test_text_windows_are_contiguous_slices_of_the_joined_text(tokenizer, data_dir):
    joined = "\n\n".join(TEXT.splitlines())
    ids = tokenizer(joined, add_special_tokens=False).input_ids
    calib = build_calibration(_text(num_samples=6), tokenizer, data_dir)
    for row in calib.tensor.tolist():
        assert any(ids[s : s + 32] == row for s in range(len(ids) - 31))


def test_synthetic_is_deterministic_and_avoids_special_tokens(tokenizer, data_dir):
    cfg = CalibrationConfig(num_samples=16, seq_len=64, seed=1)
    first = build_calibration(cfg, tokenizer, data_dir)
    assert torch.equal(first.tensor, build_calibration(cfg, tokenizer, data_dir).tensor)
    assert first.tensor.shape == (16, 64)
    assert not set(first.tensor.unique().tolist()) & set(tokenizer.all_special_ids)
    assert first.tensor.max() < len(tokenizer)
    other = build_calibration(CalibrationConfig(num_samples=16, seq_len=64, seed=2), tokenizer, data_dir)
    assert first.sha256 != other.sha256


def test_missing_file_names_the_data_dir(data_dir):
    with pytest.raises(ValueError, match=r"calibration.path: file not found: .*nope.txt .*PRUNEBOARD_DATA_DIR"):
        check_calibration(_text("nope.txt"), data_dir)


def test_empty_file_is_rejected(data_dir):
    with pytest.raises(ValueError, match="calibration.path: file is empty"):
        check_calibration(_text("empty.txt"), data_dir)


def test_synthetic_needs_no_file(tmp_path):
    check_calibration(CalibrationConfig(), tmp_path / "does-not-exist")


def test_text_shorter_than_seq_len_is_rejected(tokenizer, data_dir):
    (data_dir / "short.txt").write_text("tiny", encoding="utf-8")
    with pytest.raises(ValueError, match="fewer than calibration.seq_len=32"):
        build_calibration(_text("short.txt"), tokenizer, data_dir)


def test_seq_len_beyond_model_context_is_rejected(tokenizer, data_dir):
    with pytest.raises(ValueError, match="exceeds the model context of 2048"):
        build_calibration(_text(seq_len=4096), tokenizer, data_dir)


def test_wikitext_calibration(tokenizer, shared_data):
    calib = build_calibration(_text("wikitext2/valid.txt", num_samples=2, seq_len=64), tokenizer, shared_data)
    assert calib.tensor.shape == (2, 64)
