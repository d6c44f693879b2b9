"""Model loading: tiny builtins are reproducible and generate; SmolLM2 caching is atomic; efficiency probe."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.models import loading as models
from common import settings
from backend.config import HFModelArgs
from backend.models.loading import CHATML_TEMPLATE, count_parameters, load_model, state_dict_sha256

ROOT = Path(__file__).resolve().parent.parent
TINY = ["builtin:tiny-llama", "builtin:tiny-qwen3"]


@pytest.mark.parametrize("model_id", TINY)
def test_tiny_model_is_identical_when_built_twice(model_id):
    first, second = load_model(model_id), load_model(model_id)
    assert state_dict_sha256(first.model) == state_dict_sha256(second.model)
    assert first.fingerprint == second.fingerprint
    assert first.files["state_dict"] == state_dict_sha256(first.model)
    expected = ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")
    assert (first.device, first.dtype) == expected
    assert first.model.config.num_hidden_layers == 8
    assert not first.model.training


def test_tiny_models_are_identical_across_processes():
    code = (
        "from backend.models.loading import load_model, state_dict_sha256\n"
        f"print(' '.join(state_dict_sha256(load_model(m).model) for m in {TINY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    here = [state_dict_sha256(load_model(m).model) for m in TINY]
    assert out.stdout.split() == here
    assert here[0] != here[1]


def test_tiny_build_leaves_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_model("builtin:tiny-llama")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("model_id", TINY)
def test_tiny_tokenizer_is_byte_level_chatml(model_id):
    loaded = load_model(model_id)
    tok = loaded.tokenizer
    assert len(tok) == loaded.model.config.vocab_size == 259
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.chat_template == CHATML_TEMPLATE
    text = "héllo, wörld ✓ 123"
    assert tok.decode(tok(text).input_ids) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                     tokenize=False)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("model_id", TINY)
def test_tiny_model_generates_with_kv_cache(model_id):
    loaded = load_model(model_id)
    model, tok = loaded.model, loaded.tokenizer
    ids = tok("The quick brown fox", return_tensors="pt").input_ids.to(loaded.device)
    cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    plain = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape[1] > ids.shape[1]
    assert torch.equal(cached, plain)


def test_dtype_override_and_noop_refused():
    messages: list[str] = []
    loaded = load_model("builtin:tiny-llama", HFModelArgs(dtype="bfloat16"), log=messages.append)
    assert loaded.dtype == "bfloat16" and "bfloat16" in messages[-1]
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="noop"):
        load_model("builtin:noop")


def test_local_directory_loads_with_file_hashes(tmp_path):
    tiny = load_model("builtin:tiny-qwen3")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert set(loaded.files) == {"model.safetensors"}
    assert len(loaded.fingerprint) == 64
    assert state_dict_sha256(loaded.model) == state_dict_sha256(tiny.model)
    assert count_parameters(loaded.model) == count_parameters(tiny.model)


def test_count_parameters_counts_tied_weights_once():
    model = load_model("builtin:tiny-llama").model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    distinct = {id(p): p.numel() for p in model.state_dict(keep_vars=True).values()}
    assert count_parameters(model) == sum(distinct.values())


def _fake_download(workdir: Path, say) -> Path:
    workdir.mkdir(parents=True)
    say("downloading (fake)")
    gguf = workdir / models.SMOLLM2_GGUF
    gguf.write_bytes(b"gguf")
    return gguf


def test_smollm2_cache_is_written_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_download_smollm2_gguf", _fake_download)

    def broken_convert(gguf, out):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # killed mid-conversion

    monkeypatch.setattr(models, "_convert_gguf", broken_convert)
    with pytest.raises(KeyboardInterrupt):
        models._smollm2_dir(lambda msg, *level: None)
    cache = settings.model_cache_dir()
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []

    def convert(gguf, out):
        out.mkdir()
        (out / models.CACHE_MARKER).write_text(json.dumps({"fingerprint": "f", "files": {}}))

    monkeypatch.setattr(models, "_convert_gguf", convert)
    stale = cache / f".{models.SMOLLM2_CACHE_NAME}-tmp-killed"
    stale.mkdir()  # what SIGKILL leaves behind: TemporaryDirectory never cleaned up
    messages: list[str] = []
    target = models._smollm2_dir(lambda msg, *level: messages.append(msg))
    assert target == cache / models.SMOLLM2_CACHE_NAME and (target / models.CACHE_MARKER).is_file()
    assert messages and not stale.exists()
    monkeypatch.setattr(models, "_download_smollm2_gguf", lambda *a: pytest.fail("downloaded twice"))
    assert models._smollm2_dir(lambda msg, *level: messages.append(msg)) == target


def test_efficiency_probe_on_tiny_model():
    from backend.efficiency import measure_efficiency
    from backend.pruning import get_method

    loaded = load_model("builtin:tiny-llama")
    dense = measure_efficiency(loaded.model, loaded.tokenizer, loaded.device)
    assert dense["params"] == count_parameters(loaded.model)
    assert dense["prefill_tokens_per_s"] > 0 and dense["decode_tokens_per_s"] > 0
    assert dense["latency_ms_first_token"] > 0 and dense["peak_memory_mb"] > 0
    assert dense["device"] == loaded.device and dense["probe"]["prompt_tokens"] == 32  # conftest's short probe
    get_method("magnitude")().prune(loaded.model, 0.5, None, None, lambda f, t: None)
    pruned = measure_efficiency(loaded.model, loaded.tokenizer, loaded.device)
    assert pruned["params"] == dense["params"]
    assert pruned["nonzero_params"] < dense["nonzero_params"] * 0.75


@pytest.mark.slow
def test_smollm2_loads_from_the_cache_with_chat_template(smollm2):
    tok = smollm2.tokenizer
    assert smollm2.fingerprint == models.SMOLLM2_GGUF_SHA256
    assert smollm2.model.config.num_hidden_layers == 30
    assert "<|im_start|>" in tok.chat_template and tok.pad_token is not None
    assert tok.model_max_length == 8192
    assert (settings.model_cache_dir() / models.SMOLLM2_CACHE_NAME / models.CACHE_MARKER).is_file()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"].to(smollm2.device)
    out = smollm2.model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]
