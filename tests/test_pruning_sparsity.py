"""Shared pieces of the mask methods: exact masks, N:M, allocations, and params rejected at submit."""
from __future__ import annotations

import pytest
import torch

from backend.config import ConfigError, validate_config
from backend.models.loading import load_model
from backend.pruning import get_method
from backend.pruning.allocation import spread
from backend.pruning.layers import get_decoder_layers, prunable_linears
from backend.pruning.masks import largest_remainder, nm_mask, row_mask, smallest_mask
from backend.pruning.sparsity import parse_pattern
from jobs.cli import main as cli_main

MASK_METHODS = ["magnitude", "wanda", "sparsegpt"]


def calibration(num_samples=8, seq_len=32, seed=0):
    return torch.randint(3, 259, (num_samples, seq_len), generator=torch.Generator().manual_seed(seed))


def prune(model, method, sparsity, **params):
    cls = get_method(method)
    return cls().prune(model, sparsity, cls.Params(**params), calibration(), lambda f, t: None)


# --- pure mask functions ----------------------------------------------------------------------


def test_smallest_and_row_masks_are_exact_with_index_ties():
    score = torch.tensor([[1.0, 1.0, 1.0, 0.5], [2.0, 1.0, 1.0, 3.0]])
    assert smallest_mask(score, 3).tolist() == [[True, True, False, True], [False, False, False, False]]
    assert row_mask(score, [2, 1]).tolist() == [[True, False, False, True], [False, True, False, False]]
    big = torch.randn(64, 96).round(decimals=1)  # many ties
    assert int(row_mask(big, [17] * 64).sum()) == 17 * 64
    assert (row_mask(big, [17] * 64).sum(1) == 17).all()


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_has_exactly_n_zeros_per_group(n, m):
    score = torch.randn(16, 8 * m).abs()
    mask = nm_mask(score, n, m)
    assert (mask.view(16, 8, m).sum(-1) == n).all()
    kept_min = score.masked_fill(mask, float("inf")).view(16, 8, m).min(-1).values
    pruned_max = score.masked_fill(~mask, float("-inf")).view(16, 8, m).max(-1).values
    assert (pruned_max <= kept_min).all()


def test_largest_remainder_sums_exactly():
    assert largest_remainder([1.5, 1.5, 1.0], 4) == [2, 1, 1]
    out = largest_remainder([0.33 * 100, 0.5 * 300, 0.61 * 50], 213, caps=[100, 300, 50])
    assert sum(out) == 213 and all(abs(o - r) <= 1.5 for o, r in zip(out, [33 * 213 / 213.5, 150, 30.5]))


def test_spread_minmax_spans_two_lambda_around_the_target():
    """OWL's code: ratios min-max scaled to [0, 2 lambda], centred; sparsity = target - centred."""
    s = spread([0.1, 0.4, 0.2, 0.3], target=0.5, deviation=0.08)
    assert max(s) - min(s) == pytest.approx(0.16)
    assert sum(s) / 4 == pytest.approx(0.5)
    assert s == pytest.approx([0.5 + 0.08, 0.5 - 0.08, 0.5 + 0.08 / 3, 0.5 - 0.08 / 3])
    skewed = spread([0.0, 0.0, 0.0, 1.0], target=0.5, deviation=0.08)  # one outlier layer: more than lambda away
    assert skewed == pytest.approx([0.54, 0.54, 0.54, 0.38])
    assert spread([0.2, 0.2], 0.5, 0.08) == [0.5, 0.5]


def test_spread_peak_is_bounded_by_lambda_and_mean_exact():
    s = spread([0.1, 0.4, 0.2, 0.3], target=0.5, deviation=0.08, scaling="peak")
    assert max(abs(x - 0.5) for x in s) == pytest.approx(0.08)
    assert sum(s) / 4 == pytest.approx(0.5)
    assert s[1] < s[3] < s[2] < s[0]  # more outliers / more sensitive -> pruned less
    skewed = spread([0.0, 0.0, 0.0, 1.0], target=0.5, deviation=0.08, scaling="peak")
    assert max(abs(x - 0.5) for x in skewed) == pytest.approx(0.08)


@pytest.mark.parametrize("scaling", ["minmax", "peak"])
def test_spread_weighted_mean_is_the_target(scaling):
    weighted = spread([0.1, 0.4, 0.2], 0.5, 0.08, weights=[1.0, 3.0, 2.0], scaling=scaling)
    assert sum(w * x for w, x in zip([1, 3, 2], weighted)) / 6 == pytest.approx(0.5)
    assert weighted[1] < weighted[2] < weighted[0]


# --- methods on the tiny models ---------------------------------------------------------------


@pytest.mark.parametrize("model_id", ["builtin:tiny-llama", "builtin:tiny-qwen3"])
@pytest.mark.parametrize("method", MASK_METHODS)
def test_uniform_hits_the_target_in_every_linear(model_id, method):
    model = load_model(model_id).model
    report = prune(model, method, 0.5)
    for layer in get_decoder_layers(model):
        for name, linear in prunable_linears(layer).items():
            assert int((linear.weight == 0).sum()) == linear.weight.numel() // 2, name
    assert report.achieved_sparsity == 0.5
    assert report.details["layer_sparsity"] == [0.5] * 8
    assert report.details["speedup_kernel"] == "none"
    assert report.params_before == report.params_after


@pytest.mark.parametrize("method", MASK_METHODS)
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_patterns_on_tiny_qwen3(method, pattern):
    n, m = parse_pattern(pattern)
    model = load_model("builtin:tiny-qwen3").model
    report = prune(model, method, n / m, pattern=pattern)
    for layer in get_decoder_layers(model):
        for name, linear in prunable_linears(layer).items():
            zeros = (linear.weight == 0).view(linear.out_features, -1, m).sum(-1)
            assert (zeros == n).all(), name
    assert report.details["pattern"] == pattern and report.achieved_sparsity == n / m


@pytest.mark.parametrize("allocation", ["owl", "reconstruction-sensitivity"])
@pytest.mark.parametrize("method", MASK_METHODS)
def test_non_uniform_allocation_is_exact_globally(method, allocation):
    model = load_model("builtin:tiny-llama").model
    report = prune(model, method, 0.6, allocation=allocation, deviation=0.1)
    details = report.details
    zeros, total = details["zero_weights"], details["prunable_weights"]
    assert zeros == round(0.6 * total) and report.achieved_sparsity == pytest.approx(0.6, abs=1 / total)
    layer = details["layer_sparsity"]
    assert len(set(layer)) > 1 and max(layer) - min(layer) <= 2 * 0.1 + 1e-3  # min-max: 2 lambda apart
    assert max(layer) - min(layer) >= 2 * 0.1 - 1e-3
    assert layer == pytest.approx(details["layer_sparsity_planned"], abs=1e-3)
    key = "outlier_ratio" if allocation == "owl" else "reconstruction_sensitivity"
    assert len(details[key]) == 8 and details["allocation_scaling"] == "minmax"


def test_peak_scaling_keeps_every_layer_within_lambda():
    report = prune(load_model("builtin:tiny-llama").model, "wanda", 0.6, allocation="owl", deviation=0.1,
                   allocation_scaling="peak")
    layer = report.details["layer_sparsity"]
    assert max(abs(s - 0.6) for s in layer) <= 0.1 + 1e-3 and max(abs(s - 0.6) for s in layer) >= 0.1 - 1e-3


def test_allocations_are_method_independent_and_deterministic():
    a = prune(load_model("builtin:tiny-llama").model, "wanda", 0.5, allocation="owl")
    b = prune(load_model("builtin:tiny-llama").model, "sparsegpt", 0.5, allocation="owl")
    assert a.details["layer_sparsity_planned"] == b.details["layer_sparsity_planned"]


def test_magnitude_needs_calibration_only_for_non_uniform_allocation():
    magnitude = get_method("magnitude")
    assert not magnitude.uses_calibration(magnitude.Params())
    assert magnitude.uses_calibration(magnitude.Params(allocation="owl"))
    assert get_method("wanda").uses_calibration(get_method("wanda").Params())
    with pytest.raises(ValueError, match="needs calibration"):
        magnitude().prune(load_model("builtin:tiny-llama").model, 0.5, magnitude.Params(allocation="owl"),
                          None, lambda f, t: None)


def test_unsupported_architecture_fails_before_calibration():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    for method in MASK_METHODS:
        with pytest.raises(ValueError, match="unsupported architecture Odd"):
            prune(Odd(), method, 0.5)


def test_nm_needs_in_features_divisible_by_m():
    model = load_model("builtin:tiny-llama").model  # in_features 64 and 128
    with pytest.raises(ValueError, match="not a multiple of 48"):
        get_method("wanda")().prune(model, 1 / 48, get_method("wanda").Params(pattern="1:48"), calibration(),
                                    lambda f, t: None)


# --- bad input rejected at config validation ---------------------------------------------------

BASE = {"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"]}

BAD_PRUNING = [
    ({"method": "wanda", "sparsity": 0.5, "params": {"pattern": "4:2"}}, "1 <= N < M"),
    ({"method": "sparsegpt", "sparsity": 0.5, "params": {"pattern": "4:4"}}, "1 <= N < M"),
    ({"method": "magnitude", "sparsity": 0.5, "params": {"pattern": "2-4"}}, "'unstructured' or 'N:M'"),
    ({"method": "wanda", "sparsity": 0.3, "params": {"pattern": "2:4"}}, "fixes the sparsity at 0.5"),
    ({"method": "wanda", "sparsity": 0.5, "params": {"pattern": "2:4", "allocation": "owl"}}, "uniform"),
    ({"method": "wanda", "sparsity": 0.05, "params": {"allocation": "owl"}}, "does not fit sparsity"),
    ({"method": "wanda", "sparsity": 0.15, "params": {"allocation": "owl"}}, "2 x deviation"),  # minmax: 2 lambda
    ({"method": "sparsegpt", "sparsity": 0.92,
      "params": {"allocation": "reconstruction-sensitivity", "deviation": 0.05}}, "does not fit sparsity"),
    ({"method": "wanda", "sparsity": 0.5, "params": {"allocation": "layer-influence"}},
     "now called 'reconstruction-sensitivity'"),
    ({"method": "wanda", "sparsity": 0.5, "params": {"allocation": "owl", "allocation_scaling": "clip"}},
     "allocation_scaling"),
    ({"method": "wanda", "sparsity": 0.5, "params": {"allocation": "best"}}, "allocation"),
    ({"method": "wanda", "sparsity": 0.5, "params": {"owl_m": 0}}, "owl_m"),
    ({"method": "sparsegpt", "sparsity": 0.5, "params": {"percdamp": 0}}, "percdamp"),
    ({"method": "sparsegpt", "sparsity": 0.5, "params": {"pattern": "4:8", "blocksize": 100}}, "multiple of M=8"),
    ({"method": "wanda", "sparsity": 0.5, "params": {"blocksize": 64}}, "blocksize"),
]


@pytest.mark.parametrize("pruning, message", BAD_PRUNING)
def test_bad_params_rejected_at_validation(pruning, message):
    with pytest.raises(ConfigError, match="pruning") as info:
        validate_config({**BASE, "pruning": pruning})
    assert message in str(info.value)


def test_good_params_validate_and_default_params_drop_out():
    config = validate_config({**BASE, "pruning": {"method": "sparsegpt", "sparsity": 0.5,
                                                  "params": {"pattern": "2:4", "blocksize": 128}}})
    assert config.pruning.params == {"pattern": "2:4"}
    owl = validate_config({**BASE, "pruning": {"method": "wanda", "sparsity": 0.7,
                                               "params": {"allocation": "owl", "owl_m": 7}}})
    assert owl.pruning.method_params().owl_m == 7
    assert owl.pruning.method_params().allocation_scaling == "minmax"
    peak = validate_config({**BASE, "pruning": {"method": "wanda", "sparsity": 0.15,
                                                "params": {"allocation": "owl", "allocation_scaling": "peak"}}})
    assert peak.pruning.params == {"allocation": "owl", "allocation_scaling": "peak"}  # lambda fits: 0.15 - 0.08 >= 0


def test_cli_submit_rejects_bad_pattern_with_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: builtin:tiny-llama\ntasks: [synthetic-mc]\n"
                    "pruning: {method: wanda, sparsity: 0.5, params: {pattern: '3:2'}}\n")
    assert cli_main(["submit", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pattern" in err and len(err.strip().splitlines()) == 1
