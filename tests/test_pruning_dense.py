"""Dense: a no-op that refuses a sparsity and reports the model as it is."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.config import PruningConfig
from backend.models.loading import count_parameters, load_model, state_dict_sha256
from backend.pruning import get_method


def test_dense_rejects_sparsity_at_submit():
    with pytest.raises(ValueError, match="dense takes no sparsity"):
        get_method("dense").check_sparsity(0.5)
    with pytest.raises(ValidationError, match="dense takes no sparsity"):
        PruningConfig(method="dense", sparsity=0.3)
    assert PruningConfig(method="dense").sparsity == 0.0


def test_dense_changes_nothing_and_reports_params():
    model = load_model("builtin:tiny-llama").model
    before = state_dict_sha256(model)
    report = get_method("dense")().prune(model, 0.0, None, None, lambda f, t: None)
    assert state_dict_sha256(model) == before
    assert report.params_before == report.params_after == count_parameters(model) > 0
    assert report.achieved_sparsity == 0.0 and report.method == "dense"
