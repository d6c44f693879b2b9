"""SparseGPT: reduces to magnitude with an identity Hessian, reconstructs better than Wanda and
magnitude on correlated inputs, retries a failed Cholesky with more damping."""
from __future__ import annotations

import copy

import pytest
import torch

from backend.calibration.build import build_calibration
from backend.config import CalibrationConfig
from backend.pruning import get_method
from backend.pruning.layers import count_linear_zeros
from backend.pruning.magnitude import magnitude_mask
from backend.pruning.masks import nm_mask
from backend.pruning.sequential import HessianStats, InputNormStats
from backend.pruning.sparsegpt import sparsegpt_prune
from backend.pruning.wanda import wanda_mask


def test_identity_hessian_is_magnitude_pruning():
    weight = torch.randn(24, 96, generator=torch.Generator().manual_seed(0))
    pruned, info = sparsegpt_prune(weight, torch.eye(96), 24 * 48, blocksize=128)
    expected = weight.masked_fill(magnitude_mask(weight, 0.5), 0)
    torch.testing.assert_close(pruned, expected, rtol=0, atol=1e-6)
    assert info == {"percdamp": 0.01, "retries": 0}
    nm, _ = sparsegpt_prune(weight, torch.eye(96), 0, nm=(2, 4), blocksize=32)
    torch.testing.assert_close(nm, weight.masked_fill(nm_mask(weight.abs(), 2, 4), 0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude(seed):
    g = torch.Generator().manual_seed(seed)
    rows, cols, tokens = 32, 64, 2048
    weight = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 + torch.eye(cols)
    x = (torch.randn(tokens, cols, generator=g) @ mix) * torch.randn(cols, generator=g).exp()
    norms, hessian = InputNormStats(cols, "cpu"), HessianStats(cols, "cpu")
    norms.add(x)
    hessian.add(x)
    zeros = rows * cols // 2

    def error(pruned):
        return float(torch.linalg.norm(x @ weight.t() - x @ pruned.t()))

    magnitude = error(weight.masked_fill(magnitude_mask(weight, 0.5), 0))
    wanda = error(weight.masked_fill(wanda_mask(weight, norms.norms(), zeros), 0))
    sparsegpt_w, _ = sparsegpt_prune(weight, hessian.hessian, zeros, blocksize=16)
    assert int((sparsegpt_w == 0).sum()) == zeros
    assert error(sparsegpt_w) < wanda < magnitude


def test_singular_hessian_is_retried_with_more_damping():
    weight = torch.randn(8, 16)
    hessian = -torch.eye(16)  # not positive definite at 0.01 damping
    hessian[0, 0] = 100.0
    pruned, info = sparsegpt_prune(weight, hessian, 64, percdamp=0.01)
    assert info["retries"] >= 1 and info["percdamp"] > 0.01
    assert int((pruned == 0).sum()) == 64


def test_dead_inputs_are_zeroed():
    weight = torch.randn(4, 8)
    x = torch.randn(32, 8)
    x[:, 3] = 0
    stats = HessianStats(8, "cpu")
    stats.add(x)
    pruned, _ = sparsegpt_prune(weight, stats.hessian, 8, blocksize=4)
    assert (pruned[:, 3] == 0).all() and int((pruned == 0).sum()) >= 8


def test_registered():
    method = get_method("sparsegpt")
    assert method.family == "unstructured" and method.needs_calibration
    assert "per block of" in method.__doc__
    params = method.Params()
    assert (params.blocksize, params.percdamp, params.pattern, params.allocation) == (128, 0.01, "unstructured", "uniform")


@pytest.mark.slow
def test_smollm2_sparsegpt_half(smollm2, shared_data):
    model = copy.deepcopy(smollm2.model)
    calib = build_calibration(
        CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=8, seq_len=128),
        smollm2.tokenizer, shared_data)
    cls = get_method("sparsegpt")
    report = cls().prune(model, 0.5, cls.Params(), calib.tensor, lambda f, t: None)
    zeros, total = count_linear_zeros(model)
    assert report.achieved_sparsity == pytest.approx(0.5, abs=0.005) and zeros / total == pytest.approx(0.5, abs=0.005)
    assert "cholesky_retries" not in report.details
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids.to(model.device)).logits).all()
