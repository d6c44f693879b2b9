"""Wanda: |W| x ||X||_2 per output row, hand-checked; registered and exact on the tiny models."""
from __future__ import annotations

import copy

import pytest
import torch

from backend.calibration.build import build_calibration
from backend.config import CalibrationConfig
from backend.pruning import get_method
from backend.pruning.layers import count_linear_zeros
from backend.pruning.magnitude import magnitude_mask
from backend.pruning.sequential import InputNormStats
from backend.pruning.wanda import wanda_mask

W = torch.tensor([
    [1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0],
    [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
    [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0],
    [0.5, 4.0, 0.25, 2.0, 1.0, 8.0, 3.0, 0.1],
])
NORMS = torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0, 2.0, 4.0, 8.0])
# scores |W| x ||X||, by hand:
#   row 0: 8 8 6 4 5 12 28 64  -> zero 4, 5, 6, then 8 at column 0 (tie with column 1: lower index)
#   row 1: 64 28 12 5 4 6 8 8  -> zero 4, 5, 6, then 8 at column 6
#   row 2: 8 4 2 1 1 2 4 8     -> zero columns 3, 4, 2, 5
#   row 3: 4 16 .5 2 1 16 12 .8 -> zero .5, .8, 1, 2
EXPECTED = [
    [True, False, True, True, True, False, False, False],
    [False, False, False, True, True, True, True, False],
    [False, False, True, True, True, True, False, False],
    [False, False, True, True, True, False, False, True],
]


def test_hand_made_4x8_layer():
    assert wanda_mask(W, NORMS, 16).tolist() == EXPECTED
    stats = InputNormStats(8, "cpu")  # norms from real inputs: one token per column
    stats.add(torch.diag(NORMS))
    assert wanda_mask(W, stats.norms(), 16).tolist() == EXPECTED
    assert not torch.equal(magnitude_mask(W, 0.5), torch.tensor(EXPECTED))  # activations matter


def test_hand_made_4x8_layer_2_4():
    # groups of 4 per row; row 0: (8 8 6 4)(5 12 28 64) -> zero cols 2,3 and 4,5
    mask = wanda_mask(W, NORMS, 0, nm=(2, 4))
    assert mask[0].tolist() == [False, False, True, True, True, True, False, False]
    assert (mask.view(4, 2, 4).sum(-1) == 2).all()


def test_uneven_budget_spreads_over_rows():
    mask = wanda_mask(W, NORMS, 6)
    assert mask.sum(1).tolist() == [2, 2, 1, 1]


def test_registered():
    method = get_method("wanda")
    assert method.family == "unstructured" and method.needs_calibration
    assert "per output row" in method.__doc__
    assert set(method.Params.model_fields) == {"pattern", "allocation", "owl_m", "deviation", "allocation_scaling"}


@pytest.mark.slow
def test_smollm2_wanda_half(smollm2, shared_data):
    model = copy.deepcopy(smollm2.model)
    calib = build_calibration(
        CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=8, seq_len=128),
        smollm2.tokenizer, shared_data)
    embed = model.model.embed_tokens.weight.clone()
    cls = get_method("wanda")
    report = cls().prune(model, 0.5, cls.Params(), calib.tensor, lambda f, t: None)
    zeros, total = count_linear_zeros(model)
    assert report.achieved_sparsity == pytest.approx(0.5, abs=0.005) and zeros / total == pytest.approx(0.5, abs=0.005)
    assert torch.equal(model.model.embed_tokens.weight, embed)
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids.to(model.device)).logits).all()
