"""ShortGPT: removes the lowest Block Influence layers for real, and the model still generates."""
from __future__ import annotations

import copy

import pytest
import torch

from backend.calibration.build import build_calibration
from backend.config import CalibrationConfig, HFModelArgs
from backend.events import Cancelled
from backend.models.loading import count_parameters, load_model
from backend.pruning import get_method
from backend.pruning.layers import get_decoder_layers
from backend.pruning.shortgpt import block_influence, layers_to_remove


def _tiny(model_id="builtin:tiny-llama"):
    """float32 on any device, so tolerances below do not depend on the machine."""
    return load_model(model_id, HFModelArgs(dtype="float32"))


def _calibration(num_samples=8, seq_len=32, seed=0):
    return torch.randint(3, 259, (num_samples, seq_len), generator=torch.Generator().manual_seed(seed))


def _prune(model, sparsity=0.25, calibration=None, progress=lambda f, t: None):
    calibration = _calibration() if calibration is None else calibration
    return get_method("shortgpt")().prune(model, sparsity, None, calibration, progress)


def _assert_cache_consistent(model, ids):
    """Logits of a cached next-token step equal a full forward: layer_idx and config line up."""
    ids = ids.to(model.device)
    tol = 1e-4 if model.dtype == torch.float32 else 0.1
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        prefix = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=tol, atol=tol)
    out = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
    assert out.shape[1] == ids.shape[1] + 5 or out[0, -1].item() == model.config.eos_token_id


def test_registered_as_depth_method_with_calibration():
    method = get_method("shortgpt")
    assert method.family == "depth" and method.needs_calibration
    with pytest.raises(ValueError, match="sparsity > 0"):
        method.check_sparsity(0.0)


def test_layers_to_remove_takes_lowest_scores_ties_to_lower_index():
    assert layers_to_remove([0.3, 0.1, 0.2, 0.1], 2) == [1, 3]
    assert layers_to_remove([0.5, 0.5, 0.5, 0.5], 2) == [0, 1]
    assert layers_to_remove([0.9, 0.1, 0.2, 0.3], 3) == [1, 2, 3]


@pytest.mark.parametrize("model_id", ["builtin:tiny-llama", "builtin:tiny-qwen3"])
def test_removes_a_quarter_of_the_layers_and_still_generates(model_id):
    loaded = _tiny(model_id)
    model = loaded.model
    per_layer = count_parameters(get_decoder_layers(model)[0])
    before = count_parameters(model)
    fractions: list[float] = []
    report = _prune(model, progress=lambda f, t: fractions.append(f))

    assert len(get_decoder_layers(model)) == 6 == model.config.num_hidden_layers
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 6
    assert [layer.self_attn.layer_idx for layer in get_decoder_layers(model)] == list(range(6))
    assert report.params_before == before
    assert report.params_after == count_parameters(model) == before - 2 * per_layer
    assert report.achieved_sparsity == 0.25
    assert len(report.details["removed_layers"]) == 2 and len(report.details["block_influence"]) == 8
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    ids = loaded.tokenizer("pruned models still talk", return_tensors="pt").input_ids
    _assert_cache_consistent(model, ids)


def test_identity_block_has_zero_influence_and_goes_first():
    model = _tiny().model
    with torch.no_grad():
        block = get_decoder_layers(model)[5]
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    scores = block_influence(model, _calibration())
    assert scores[5] == pytest.approx(0.0, abs=1e-6)
    assert min(s for i, s in enumerate(scores) if i != 5) > 1e-3
    kept = [get_decoder_layers(model)[i] for i in range(8) if i != 5]
    report = _prune(model, sparsity=0.125)
    assert report.details["removed_layers"] == [5]
    assert all(a is b for a, b in zip(get_decoder_layers(model), kept))


def test_scores_match_full_forward_hidden_states():
    """Replaying blocks one by one sees exactly what the model's own forward computes; by default the
    last block is compared with hidden_states[-1], the final norm's output, as the paper's script does."""
    model = _tiny("builtin:tiny-qwen3").model
    with torch.no_grad():  # the tiny models' norms are all ones; a real norm rescales channels unevenly
        model.model.norm.weight.copy_(torch.linspace(0.2, 3.0, model.model.norm.weight.numel()))
    calib = _calibration(num_samples=3)
    with torch.no_grad():
        hidden = model(calib.to(model.device), output_hidden_states=True).hidden_states
    expected = [1 - torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1).mean().item()
                for i in range(8)]
    assert block_influence(model, calib) == pytest.approx(expected, abs=1e-5)
    raw = block_influence(model, calib, last_block_output="raw")
    assert raw[:7] == pytest.approx(expected[:7], abs=1e-5)
    assert abs(raw[7] - expected[7]) > 1e-4  # the final norm changes the last block's score


def test_batching_does_not_change_scores(monkeypatch):
    from backend.pruning import shortgpt

    model = _tiny().model
    calib = _calibration(num_samples=6)
    monkeypatch.setattr(shortgpt, "BATCH_SIZE", 6)
    whole = block_influence(model, calib)
    monkeypatch.setattr(shortgpt, "BATCH_SIZE", 1)
    assert block_influence(model, calib) == pytest.approx(whole, abs=1e-6)


@pytest.mark.parametrize("sparsity, message", [(0.05, "= 0 of 8 layers"), (0.99, "remove all 8 layers")])
def test_rejects_removing_no_layer_or_every_layer(sparsity, message):
    model = _tiny().model
    with pytest.raises(ValueError, match=message):
        _prune(model, sparsity=sparsity)
    assert len(get_decoder_layers(model)) == 8


def test_needs_calibration_and_lets_cancel_propagate():
    model = _tiny().model
    with pytest.raises(ValueError, match="calibration"):
        get_method("shortgpt")().prune(model, 0.25, None, None, lambda f, t: None)

    def cancel(fraction, text):
        raise Cancelled()

    with pytest.raises(Cancelled):
        _prune(model, progress=cancel)
    assert len(get_decoder_layers(model)) == 8


@pytest.mark.slow
def test_smollm2_quarter_depth(smollm2, shared_data):
    model = copy.deepcopy(smollm2.model)
    calib = build_calibration(
        CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=8, seq_len=128),
        smollm2.tokenizer, shared_data,
    )
    per_layer = count_parameters(get_decoder_layers(model)[0])
    before = count_parameters(model)
    report = _prune(model, sparsity=0.25, calibration=calib.tensor)
    layers = len(get_decoder_layers(model))
    removed = report.details["removed_layers"]
    assert layers in (22, 23) and layers == model.config.num_hidden_layers == 30 - len(removed)
    assert count_parameters(model) == report.params_after == before - len(removed) * per_layer
    assert 0 not in removed  # the first block transforms embeddings a lot: never the least influential
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    _assert_cache_consistent(model, ids)
