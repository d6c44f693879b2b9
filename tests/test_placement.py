"""Offloaded pruning (backend.models.placement): the plan per mode, the weight-size estimate, and, forced on
CPU, runs whose weights equal the in-memory run's bit for bit with the same scores and outputs."""
from __future__ import annotations

import pytest

from backend.models import placement
from backend.config import validate_config
from backend.pruning import get_method

CALIBRATION = {"source": "synthetic", "num_samples": 4, "seq_len": 32}


def config(method: str = "wanda", sparsity: float = 0.5, model: str = "builtin:tiny-llama", **extra):
    document = {"model": model, "tasks": [{"name": "synthetic-mc", "limit": 4},
                                          {"name": "synthetic-arith", "limit": 2,
                                           "generation": {"max_new_tokens": 8}}],
                "pruning": {"method": method, "sparsity": sparsity, **extra.pop("pruning", {})},
                "calibration": CALIBRATION, **extra}
    return validate_config(document)


def test_never_keeps_the_model_whole_and_always_offloads_layerwise_methods(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_OFFLOAD", "never")
    assert not placement.plan(config(), get_method("wanda")).offload
    monkeypatch.setenv("PRUNEBOARD_OFFLOAD", "always")
    for method in ("wanda", "sparsegpt", "magnitude", "dense"):
        sparsity = 0.0 if method == "dense" else 0.5
        planned = placement.plan(config(method, sparsity), get_method(method))
        assert planned.offload and planned.record({"": "cpu"})["evaluation_device_map"] == {"": "cpu"}


@pytest.mark.parametrize("method, extra, why", [
    ("shortgpt", {}, "layer-at-a-time"),
    ("wanda", {"calibration": {"source": "self-generated", "task": "gsm8k", "num_samples": 2, "seq_len": 32}},
     "self-generated"),
    ("wanda", {"recovery": {"data": "synthetic"}}, "LoRA recovery"),
])
def test_runs_that_need_the_whole_model_are_refused_before_loading(monkeypatch, method, extra, why):
    monkeypatch.setenv("PRUNEBOARD_OFFLOAD", "always")
    with pytest.raises(ValueError, match=why):
        placement.plan(config(method, 0.25, **extra), get_method(method))


def test_an_unknown_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_OFFLOAD", "sometimes")
    with pytest.raises(ValueError, match="auto, always or never"):
        placement.plan(config(), get_method("wanda"))


def test_auto_offloads_only_weights_larger_than_the_gpu(monkeypatch):
    import torch

    assert not placement.plan(config(), get_method("wanda")).offload  # here: no CUDA at all
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (10 * 2**30, 80 * 2**30))
    sizes = {"org/small": 4 * 2**30, "org/large": 30 * 2**30}
    monkeypatch.setattr(placement, "weight_bytes", lambda model, revision=None: sizes[model])
    assert not placement.plan(config(model="org/small"), get_method("wanda")).offload
    large = placement.plan(config(model="org/large"), get_method("wanda"))
    assert large.offload and "30.0 GiB exceed 80% of the GPU's free 10.0 GiB" in large.reason
    with pytest.raises(ValueError, match="shortgpt runs the whole model"):
        placement.plan(config("shortgpt", 0.25, model="org/large"), get_method("shortgpt"))


def test_weight_bytes_are_the_weight_files_of_a_directory(tmp_path):
    from backend.models.loading import load_model

    assert placement.weight_bytes("builtin:tiny-llama") is None
    loaded = load_model("builtin:tiny-llama")
    loaded.model.save_pretrained(tmp_path, safe_serialization=True)
    files = list(tmp_path.glob("*.safetensors"))
    assert files and placement.weight_bytes(str(tmp_path)) == sum(f.stat().st_size for f in files)


def test_spread_leaves_a_cpu_model_where_it_is():
    import torch

    model = torch.nn.Linear(2, 2)
    assert placement.spread(model, "cpu") == {"": "cpu"} and model.weight.device.type == "cpu"


def _run(cfg, monkeypatch, mode: str):
    """(pruned weights' sha256, result) of one pipeline run with PRUNEBOARD_OFFLOAD=mode."""
    from backend.evaluation import harness as evaluation
    from backend.models.loading import state_dict_sha256
    from backend.pipeline import run

    monkeypatch.setenv("PRUNEBOARD_OFFLOAD", mode)
    seen = {}
    real = evaluation.evaluate

    def evaluate(model, *args, **kwargs):
        seen["weights"] = state_dict_sha256(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    result = run(cfg, lambda event: None)
    return seen["weights"], result


@pytest.mark.parametrize("model, method, params", [
    ("builtin:tiny-llama", "wanda", {}),
    ("builtin:tiny-llama", "sparsegpt", {}),
    ("builtin:tiny-llama", "magnitude", {"allocation": "owl"}),
    ("builtin:tiny-qwen3", "wanda", {"pattern": "2:4"}),
])
def test_forced_offload_equals_the_in_memory_run(monkeypatch, model, method, params):
    cfg = config(method, 0.5, model=model, pruning={"params": params})
    weights, whole = _run(cfg, monkeypatch, "never")
    offloaded_weights, offloaded = _run(cfg, monkeypatch, "always")
    assert offloaded_weights == weights
    assert [(s.task, s.metric, s.value) for s in offloaded.scores] == \
        [(s.task, s.metric, s.value) for s in whole.scores]
    assert [s.output for s in offloaded.samples] == [s.output for s in whole.samples]
    assert offloaded.prune_report == whole.prune_report
    assert whole.manifest["placement"] == {"mode": "never", "offload": False, "reason": "PRUNEBOARD_OFFLOAD=never"}
    record = offloaded.manifest["placement"]
    assert record["offload"] and record["evaluation_device_map"] == {"": "cpu"}
    assert "one decoder block" in record["pruning"]
    assert offloaded.efficiency["params"] == whole.efficiency["params"] and "dense_reference" in offloaded.efficiency


def test_a_worker_set_to_cpu_computes_on_cpu_even_beside_a_gpu(monkeypatch):
    import torch

    from common import settings
    from backend.models.loading import _device_and_dtype
    from backend.pruning.sequential import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert settings.use_cuda() and _device_and_dtype("auto") == ("cuda", "bfloat16")
    monkeypatch.setenv("PRUNEBOARD_WORKER_DEVICE", "cpu")
    assert not settings.use_cuda() and _device_and_dtype("auto") == ("cpu", "float32")
    assert default_device(torch.nn.Linear(2, 2)).type == "cpu"
