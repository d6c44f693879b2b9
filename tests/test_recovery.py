"""LoRA recovery: lowers the training loss, merges its adapters, rejects unknown target modules."""
from __future__ import annotations

import pytest
import torch

from backend.config import ConfigError, HFModelArgs, RecoveryConfig, validate_config
from backend.models.loading import count_parameters, load_model
from backend.pruning import get_method
from backend.recovery import check_target_modules, recover

BASE = {"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"]}


def _pruned(method="magnitude", sparsity=0.5):
    loaded = load_model("builtin:tiny-llama", HFModelArgs(dtype="float32"))
    calibration = torch.randint(3, 259, (4, 32), generator=torch.Generator().manual_seed(0))
    cls = get_method(method)
    cls().prune(loaded.model, sparsity, cls.Params(), calibration, lambda f, t: None)
    return loaded


def _cfg(**overrides):
    fields = {"data": "synthetic", "num_samples": 2, "batch_size": 2, "seq_len": 32, "steps": 6,
              "learning_rate": 5e-3, "rank": 4, "seed": 0}
    return RecoveryConfig(**{**fields, **overrides})


@pytest.mark.parametrize("method, sparsity", [("magnitude", 0.5), ("shortgpt", 0.25)])
def test_lora_lowers_the_loss_and_merges(tmp_path, method, sparsity):
    loaded = _pruned(method, sparsity)
    before = count_parameters(loaded.model)
    steps = []
    model, report = recover(loaded.model, loaded.tokenizer, _cfg(), tmp_path,
                            progress=lambda f, text: steps.append(f))
    assert model is loaded.model
    assert len(report["losses"]) == 6
    assert report["losses"][-1] < report["losses"][0]  # same batch every step (num_samples == batch_size)
    assert report["loss_after"] < report["loss_before"]
    assert not [n for n, m in model.named_modules() if type(m).__module__.startswith("peft")]
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert count_parameters(model) == before == report["params_after"]
    assert steps[-1] == 1.0 and len(steps) >= 6
    if method == "magnitude":  # the merged dense delta must not undo the sparsity
        from backend.pruning.layers import count_linear_zeros

        zeros, total = count_linear_zeros(model)
        assert zeros / total == pytest.approx(0.5, abs=0.01)
        assert report["sparsity_masks_reapplied"] > 0
    assert not model.training


def test_recovery_is_seeded(tmp_path):
    first, second = _pruned(), _pruned()
    a = recover(first.model, first.tokenizer, _cfg(steps=2), tmp_path)[1]["losses"]
    b = recover(second.model, second.tokenizer, _cfg(steps=2), tmp_path)[1]["losses"]
    assert a == b


def test_unknown_target_modules_are_rejected():
    with pytest.raises(ConfigError, match="recovery.target_modules: nope_proj"):
        validate_config({**BASE, "recovery": {"data": "synthetic", "target_modules": ["q_proj", "nope_proj"]}})
    with pytest.raises(ConfigError, match="recovery.target_modules"):
        validate_config({**BASE, "recovery": {"data": "synthetic", "target_modules": ["bad name"]}})
    loaded = _pruned()
    with pytest.raises(ValueError, match="recovery.target_modules: mlp_shortcut match no linear"):
        check_target_modules(loaded.model, ["q_proj", "mlp_shortcut"])


def test_recovery_section_is_optional_and_validated():
    plain = validate_config(BASE)
    assert plain.recovery is None
    config = validate_config({**BASE, "recovery": {"data": "text", "path": "wikitext2/train.txt"}})
    assert config.recovery.steps == 8 and config.recovery.enabled
    with pytest.raises(ConfigError, match="recovery"):
        validate_config({**BASE, "recovery": {"data": "text"}})  # text needs a path
    with pytest.raises(ConfigError, match="recovery"):
        validate_config({**BASE, "recovery": {"data": "task-aligned", "task": "nope"}})


def test_pipeline_runs_a_recover_stage_after_slicegpt():
    from backend.config import canonical_dict, config_hash
    from backend.events import Progress
    from backend.pipeline import run

    config = validate_config({
        "model": "builtin:tiny-llama",
        "pruning": {"method": "slicegpt", "sparsity": 0.25},
        "calibration": {"num_samples": 4, "seq_len": 32},
        "recovery": {"data": "synthetic", "num_samples": 2, "seq_len": 32, "steps": 3, "learning_rate": 5e-3},
        "tasks": [{"name": "synthetic-mc", "limit": 4}],
        "keep_model": True,
    })
    assert "recovery" in canonical_dict(config)
    events = []
    result = run(config, events.append)
    recovery = result.prune_report["recovery"]
    assert len(recovery["losses"]) == 3 and recovery["merged"]
    assert result.manifest["recovery"] == recovery
    stages = [e.stage for e in events if isinstance(e, Progress)]
    assert stages.index("prune") < stages.index("recover") < stages.index("evaluate")
    assert sum(1 for s in stages if s == "recover") >= 3  # per-step progress
    assert result.prune_report["hidden_size_after"] == 48
    # the kept model (sliced + recovered) reloads through the project loader
    reloaded = load_model(result.manifest["saved_model"], HFModelArgs(dtype="float32"))
    assert count_parameters(reloaded.model) == result.prune_report["params_after"]
    assert config_hash(config) in result.manifest["saved_model"]


def test_prune_only_export_includes_recovery(tmp_path):
    from backend.publish.export import prune_only

    config = validate_config({
        **BASE, "pruning": {"method": "magnitude", "sparsity": 0.5},
        "recovery": {"data": "synthetic", "num_samples": 2, "seq_len": 16, "steps": 2},
    })
    loaded, report, manifest = prune_only(config)
    assert len(manifest["prune_report"]["recovery"]["losses"]) == 2
    assert report.details["recovery"]["merged"]
