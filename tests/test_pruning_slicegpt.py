"""SliceGPT: exact at 0 %, really smaller at 25 %, generates with a KV cache, saves and reloads."""
from __future__ import annotations

import copy

import pytest
import torch

from backend.config import HFModelArgs
from backend.models.loading import count_parameters, load_model
from backend.pruning import get_method
from backend.pruning.slicegpt import SlicedDecoderLayer, load_sliced

MODELS = ["builtin:tiny-llama", "builtin:tiny-qwen3"]


def _tiny(model_id="builtin:tiny-llama"):
    return load_model(model_id, HFModelArgs(dtype="float32"))


def _calibration(num_samples=8, seq_len=32, seed=0):
    return torch.randint(3, 259, (num_samples, seq_len), generator=torch.Generator().manual_seed(seed))


def _ids(seed=1):
    return torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(seed))


def _prune(model, sparsity):
    return get_method("slicegpt")().prune(model, sparsity, get_method("slicegpt").Params(), _calibration(),
                                          lambda f, t: None)


@pytest.mark.parametrize("model_id", MODELS)
def test_zero_slicing_reproduces_dense_logits(model_id):
    loaded = _tiny(model_id)
    ids = _ids()
    with torch.no_grad():
        dense = loaded.model(ids).logits
    report = _prune(loaded.model, 0.0)
    assert all(isinstance(layer, SlicedDecoderLayer) for layer in loaded.model.model.layers)
    assert report.details["untied_embeddings"] is True  # the tiny models tie lm_head to embed_tokens
    assert loaded.model.lm_head.weight is not loaded.model.model.embed_tokens.weight
    with torch.no_grad():
        rotated = loaded.model(ids).logits
    torch.testing.assert_close(rotated, dense, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_id", MODELS)
def test_slicing_shrinks_matrices_and_generates_with_cache(model_id):
    loaded = _tiny(model_id)
    model = loaded.model
    report = _prune(model, 0.25)
    assert report.achieved_sparsity == 0.25
    assert report.details["hidden_size_after"] == 48
    assert model.model.embed_tokens.weight.shape == (259, 48)
    assert model.lm_head.weight.shape == (259, 48)
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape[1] == 48
    assert layer.mlp.down_proj.weight.shape[0] == 48
    assert layer.attn_shortcut.weight.shape == (48, 48)
    assert report.params_after == count_parameters(model)
    ids = _ids()
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        prefix = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
    out = model.generate(ids[:1, :8], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 13)
    clone = copy.deepcopy(model)  # the dynamic layer class survives copies
    with torch.no_grad():
        torch.testing.assert_close(clone(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_save_and_reload_gives_identical_logits(tmp_path):
    from backend.publish.export import save_pruned

    loaded = _tiny()
    report = _prune(loaded.model, 0.25)
    save_pruned(loaded, report, {"config_hash": "test"}, tmp_path / "sliced")
    model, tokenizer = load_sliced(tmp_path / "sliced")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, loaded.model(ids).logits, atol=0, rtol=0)
    assert tokenizer("ab").input_ids
    reloaded = load_model(str(tmp_path / "sliced"), HFModelArgs(dtype="float32"))  # the project loader
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(ids).logits, loaded.model(ids).logits, atol=0, rtol=0)
    from backend.models.loading import load_pruned

    with torch.no_grad():
        torch.testing.assert_close(load_pruned(tmp_path / "sliced")(ids).logits, loaded.model(ids).logits,
                                   atol=0, rtol=0)


@pytest.mark.slow
def test_smollm2_zero_slicing_is_exact_and_quarter_slicing_shrinks(smollm2):
    model = copy.deepcopy(smollm2.model).float()
    ids = _ids()
    with torch.no_grad():
        dense = model(ids).logits
    get_method("slicegpt")().prune(model, 0.0, get_method("slicegpt").Params(), _calibration(4, 64), lambda f, t: None)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense, atol=1e-3, rtol=1e-3)
    model = copy.deepcopy(smollm2.model).float()
    report = get_method("slicegpt")().prune(model, 0.25, get_method("slicegpt").Params(), _calibration(4, 64),
                                            lambda f, t: None)
    assert report.details["hidden_size_after"] == 432 and report.details["untied_embeddings"]
    assert model.model.embed_tokens.weight.shape[1] == 432
