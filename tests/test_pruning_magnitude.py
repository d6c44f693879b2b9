"""Magnitude pruning: exact per-matrix counts, smallest first, deterministic ties, embeddings untouched."""
from __future__ import annotations

import copy

import pytest
import torch

from backend.models.loading import load_model
from backend.pruning import get_method
from backend.pruning.layers import count_linear_zeros, get_decoder_layers, prunable_linears
from backend.pruning.magnitude import magnitude_mask


def _no_progress(fraction, text):
    pass


@pytest.mark.parametrize("shape", [(7,), (5, 3), (16, 24)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 0.99])
def test_mask_zeros_exactly_round_sparsity_numel(shape, sparsity):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    mask = magnitude_mask(weight, sparsity)
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    assert int(mask.sum()) == round(sparsity * weight.numel())


def test_mask_takes_the_smallest_magnitudes():
    weight = torch.tensor([[0.5, -0.1, 3.0], [-2.0, 0.05, -0.7]])
    mask = magnitude_mask(weight, 0.5)
    assert mask.tolist() == [[True, True, False], [False, True, False]]


def test_mask_breaks_ties_by_flat_index():
    weight = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 2.0]])
    mask = magnitude_mask(weight, 0.5)
    assert mask.tolist() == [[True, True, True], [False, False, False]]
    assert torch.equal(mask, magnitude_mask(weight.clone(), 0.5))
    bf16 = torch.randn(64, 64).to(torch.bfloat16)  # coarse dtype: many ties
    assert torch.equal(magnitude_mask(bf16, 0.3), magnitude_mask(bf16.clone(), 0.3))
    assert int(magnitude_mask(bf16, 0.3).sum()) == round(0.3 * 64 * 64)


def test_registered_with_family():
    method = get_method("magnitude")
    assert method.family == "unstructured" and not method.needs_calibration


@pytest.mark.parametrize("model_id", ["builtin:tiny-llama", "builtin:tiny-qwen3"])
def test_prunes_each_decoder_linear_exactly(model_id):
    model = load_model(model_id).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fractions: list[float] = []
    report = get_method("magnitude")().prune(model, 0.4, None, None, lambda f, t: fractions.append(f))

    pruned_names = set()
    for i, layer in enumerate(get_decoder_layers(model)):
        for name, linear in prunable_linears(layer).items():
            pruned_names.add(f"model.layers.{i}.{name}.weight")
            assert int((linear.weight == 0).sum()) == round(0.4 * linear.weight.numel()), name
    assert len(pruned_names) == 8 * 7
    for key, value in model.state_dict().items():  # embeddings, lm_head, norms: untouched
        if key not in pruned_names:
            assert torch.equal(value, before[key]), key
    zeros, total = count_linear_zeros(model)
    assert report.achieved_sparsity == zeros / total == pytest.approx(0.4, abs=1e-3)
    assert report.params_before == report.params_after
    assert report.details["comparison_group"] == "per_matrix"
    assert fractions[-1] == 1.0


def test_pruning_is_deterministic():
    a, b = load_model("builtin:tiny-llama").model, load_model("builtin:tiny-llama").model
    for model in (a, b):
        get_method("magnitude")().prune(model, 0.5, None, None, _no_progress)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.slow
def test_smollm2_magnitude_half(smollm2):
    model = copy.deepcopy(smollm2.model)
    embed = model.model.embed_tokens.weight.clone()
    report = get_method("magnitude")().prune(model, 0.5, None, None, _no_progress)
    assert report.achieved_sparsity == pytest.approx(0.5, abs=0.01)
    zeros, total = count_linear_zeros(model)
    assert zeros / total == pytest.approx(0.5, abs=0.01)
    assert torch.equal(model.model.embed_tokens.weight, embed)
    assert torch.equal(model.lm_head.weight, embed)
