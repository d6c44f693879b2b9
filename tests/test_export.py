"""Pruned-model export: `prune_only` + `save_pruned`, `python -m jobs prune`, `keep_model`, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend.config import validate_config
from backend.publish.export import MANIFEST_NAME, prune_only, save_pruned
from jobs.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
PROBE = "The quick brown fox jumps over the lazy dog. 12 + 30 = 42"


def _config(method: str, sparsity: float, **extra):
    return validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                            "pruning": {"method": method, "sparsity": sparsity}, **extra})


@pytest.mark.parametrize("method, sparsity", [("magnitude", 0.5), ("shortgpt", 0.25)])
def test_saved_model_reloads_with_identical_logits(tmp_path, method, sparsity):
    progress = []
    loaded, report, manifest = prune_only(_config(method, sparsity), lambda f, t: progress.append((f, t)))
    out = save_pruned(loaded, report, manifest, tmp_path / "pruned")

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    reloaded.eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(PROBE, return_tensors="pt", add_special_tokens=False).input_ids
    assert torch.equal(ids, loaded.tokenizer(PROBE, return_tensors="pt", add_special_tokens=False).input_ids)
    with torch.no_grad():
        expected = loaded.model(ids).logits
        got = reloaded(ids).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)

    layers = 6 if method == "shortgpt" else 8
    assert reloaded.config.num_hidden_layers == layers and len(reloaded.model.layers) == layers
    if getattr(reloaded.config, "layer_types", None) is not None:
        assert len(reloaded.config.layer_types) == layers
    saved = json.loads((out / MANIFEST_NAME).read_text())
    assert saved["prune_report"]["method"] == method and saved["config_hash"] == manifest["config_hash"]
    assert (out / "model.safetensors").is_file() and progress[-1][0] == 1.0
    if method == "magnitude":
        assert saved["prune_report"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    else:
        assert saved["calibration"]["sha256"] and len(saved["prune_report"]["removed_layers"]) == 2


def test_jobs_prune_cli_end_to_end(tmp_path):
    config = tmp_path / "prune.yaml"
    config.write_text("model: builtin:tiny-llama\npruning: {method: shortgpt, sparsity: 0.25}\n"
                      "tasks: [synthetic-mc]\nseed: 0\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "jobs", "prune", str(config), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(out.resolve())
    assert "pruning with shortgpt" in proc.stderr and "%]" in proc.stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 6
    assert json.loads((out / MANIFEST_NAME).read_text())["config"]["pruning"]["method"] == "shortgpt"


def _fail_if_loaded(monkeypatch):
    import backend.models.loading

    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(backend.models.loading, "load_model", boom)


def test_empty_calibration_file_fails_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(tmp_path))
    (tmp_path / "empty.txt").write_text("\n \n")
    _fail_if_loaded(monkeypatch)
    config = _config("shortgpt", 0.25, calibration={"source": "text", "path": "empty.txt"})
    with pytest.raises(ValueError, match="calibration.path: file is empty"):
        prune_only(config)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.model_dump(mode="json", exclude_defaults=True)))
    assert cli_main(["prune", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "file is empty" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_seq_len_beyond_context_fails_before_loading(monkeypatch):
    _fail_if_loaded(monkeypatch)
    with pytest.raises(ValueError, match="calibration.seq_len 4096 exceeds the model context of 2048"):
        prune_only(_config("shortgpt", 0.25, calibration={"seq_len": 4096}))


def test_pipeline_preflight_checks_the_context_too(monkeypatch):
    from backend import pipeline
    from backend.events import ignore_events

    _fail_if_loaded(monkeypatch)
    with pytest.raises(ValueError, match="exceeds the model context"):
        pipeline.run(_config("shortgpt", 0.25, calibration={"seq_len": 4096}), ignore_events)


def test_out_dir_must_be_empty(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: builtin:tiny-llama\ntasks: [synthetic-mc]\n")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert cli_main(["prune", str(config), "--out", str(tmp_path / "busy")]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_keep_model_saves_under_home_and_records_the_path(isolated_home):
    from backend import pipeline
    from backend.config import config_hash
    from backend.events import ignore_events

    config = _config("magnitude", 0.5, keep_model=True, tasks=[{"name": "synthetic-mc", "limit": 2}])
    assert "keep_model" in config.model_dump(exclude_defaults=True)
    result = pipeline.run(config, ignore_events)
    saved = Path(result.manifest["saved_model"])
    assert saved == isolated_home / "models" / config_hash(config)
    assert (saved / MANIFEST_NAME).is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    zeros = (reloaded.model.layers[0].mlp.up_proj.weight == 0).float().mean().item()
    assert zeros == pytest.approx(0.5, abs=0.01)
