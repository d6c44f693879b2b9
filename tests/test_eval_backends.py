"""evaluation.batch_size ("auto"), evaluation.backend (hf | vllm) and the efficiency figures per run."""
from __future__ import annotations

import importlib.util

import pytest

from backend.config import EvaluationConfig, TaskConfig, canonical_dict, validate_config
from backend.evaluation.backends import (
    CPU_AUTO_BATCH_SIZE,
    BackendUnavailable,
    check_backend,
    fixed_batch_size,
    resolve_batch_size,
)

BASE = {"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"]}


def test_config_fields_and_defaults_leave_the_canonical_form_alone():
    default = validate_config(BASE)
    assert default.evaluation == EvaluationConfig(batch_size=8, backend="hf")
    assert "evaluation" not in canonical_dict(default)
    auto = validate_config({**BASE, "evaluation": {"batch_size": "auto", "backend": "vllm"}})
    assert canonical_dict(auto)["evaluation"] == {"batch_size": "auto", "backend": "vllm"}
    from backend.config import ConfigError

    for bad, field in (({"batch_size": "big"}, "evaluation.batch_size"), ({"batch_size": 0}, "evaluation.batch_size"),
                       ({"batch_size": True}, "evaluation.batch_size"), ({"backend": "tgi"}, "evaluation.backend")):
        with pytest.raises(ConfigError, match=field):
            validate_config({**BASE, "evaluation": bad})


@pytest.mark.parametrize("pruning, reason", [
    ({"method": "flap", "sparsity": 0.2}, "different head counts and MLP widths"),
    ({"method": "llm-pruner", "sparsity": 0.2, "params": {"scope": "global"}}, "different head counts"),
    ({"method": "slicegpt", "sparsity": 0.2}, "shortcut matrices"),
    ({"method": "dllm-style", "sparsity": 0.2}, "routers are not part of the saved weights"),
    ({"method": "mod-style", "sparsity": 0.2}, "routers are not part of the saved weights"),
])
def test_vllm_refuses_shapes_it_cannot_load_at_submit(pruning, reason):
    from backend.config import ConfigError

    document = {**BASE, "pruning": pruning, "evaluation": {"backend": "vllm"}}
    with pytest.raises(ConfigError, match=reason) as info:
        validate_config(document)
    message = str(info.value)
    assert message.startswith("evaluation.backend: vllm cannot evaluate pruning.method") and "\n" not in message
    assert validate_config({**document, "evaluation": {"backend": "hf"}}).pruning.method == pruning["method"]


@pytest.mark.parametrize("pruning", [{"method": "wanda", "sparsity": 0.5}, {"method": "shortgpt", "sparsity": 0.25},
                                     {"method": "magnitude", "sparsity": 0.5, "params": {"pattern": "2:4"}}])
def test_vllm_takes_shapes_it_can_load(pruning):
    assert validate_config({**BASE, "pruning": pruning, "evaluation": {"backend": "vllm"}}).evaluation.backend == "vllm"


def test_batch_size_resolution():
    assert resolve_batch_size("auto", "cpu") == CPU_AUTO_BATCH_SIZE == 8
    assert resolve_batch_size("auto", "cuda") == "auto"
    assert resolve_batch_size(3, "cpu") == 3 and resolve_batch_size(16, "cuda") == 16
    assert fixed_batch_size("auto") == 8 and fixed_batch_size(5) == 5


def test_vllm_backend_fails_clearly_without_vllm_or_cuda(monkeypatch):
    check_backend("hf")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(BackendUnavailable, match="needs the vllm package"):
            check_backend("vllm")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        check_backend("vllm", cuda=False)
    check_backend("vllm", cuda=True)


def test_pipeline_rejects_vllm_before_loading_the_model(monkeypatch):
    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vllm can run here")
    import backend.models.loading
    from backend import pipeline

    monkeypatch.setattr(backend.models.loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    config = validate_config({**BASE, "evaluation": {"backend": "vllm"}})
    with pytest.raises(BackendUnavailable, match="vllm"):
        pipeline.run(config, lambda event: None)


def test_auto_batch_size_evaluates_on_cpu(tmp_path):
    from backend.evaluation.harness import evaluate
    from backend.models.loading import load_model

    tiny = load_model("builtin:tiny-llama")
    outputs = {}
    for batch_size in ("auto", 8):
        outputs[batch_size] = evaluate(
            tiny.model, tiny.tokenizer, [TaskConfig(name="synthetic-mc", limit=6)],
            EvaluationConfig(batch_size=batch_size), paradigm="instruct", dtype=tiny.dtype,
            data_dir=tmp_path / "data", workdir=tmp_path / f"work-{batch_size}",
            progress=lambda f, t: None, on_sample=lambda s: None)
    assert [s.output for s in outputs["auto"].samples] == [s.output for s in outputs[8].samples]
    assert [(s.metric, s.value, s.comparability_key) for s in outputs["auto"].scores] == \
        [(s.metric, s.value, s.comparability_key) for s in outputs[8].scores]


def test_efficiency_records_sparsity_throughput_latency_and_device():
    from backend.efficiency import measure_efficiency
    from backend.models.loading import count_parameters, load_model
    from backend.pruning import get_method

    loaded = load_model("builtin:tiny-llama")
    before = count_parameters(loaded.model)
    dense = measure_efficiency(loaded.model, loaded.tokenizer, loaded.device)
    assert dense["linear_sparsity"] == 0.0 and dense["achieved_sparsity"] < 0.01
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "latency_ms_first_token",
                "decode_latency_ms_per_token", "peak_memory_mb", "weights_mb"):
        assert dense[key] > 0, key
    assert dense["device"] == "cpu" and dense["device_name"] and dense["dtype"] == "float32"
    assert dense["torch_threads"] >= 1 and dense["probe"]["new_tokens"] == 8  # conftest's short probe

    get_method("magnitude")().prune(loaded.model, 0.5, None, None, lambda f, t: None)
    pruned = measure_efficiency(loaded.model, loaded.tokenizer, loaded.device, params_before=before)
    assert pruned["linear_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert 0.3 < pruned["achieved_sparsity"] < 0.5  # embeddings and norms stay dense

    deep = load_model("builtin:tiny-llama")
    method = get_method("shortgpt")
    calibration = __import__("torch").randint(3, 250, (2, 16))
    method().prune(deep.model, 0.25, method.Params(), calibration, lambda f, t: None)
    shallow = measure_efficiency(deep.model, deep.tokenizer, deep.device, params_before=before)
    assert shallow["params"] < before and shallow["achieved_sparsity"] > 0.1
    assert shallow["linear_sparsity"] == 0.0


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_backend_matches_hf_on_a_pruned_model(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm needs a CUDA GPU")
    from backend.evaluation.harness import evaluate
    from backend.models.loading import load_model
    from backend.pruning import get_method

    loaded = load_model("builtin:smollm2-135m-instruct")
    get_method("magnitude")().prune(loaded.model, 0.5, None, None, lambda f, t: None)
    scores = {}
    for backend in ("hf", "vllm"):
        out = evaluate(loaded.model, loaded.tokenizer, [TaskConfig(name="synthetic-mc", limit=40)],
                       EvaluationConfig(batch_size=8, backend=backend), paradigm="instruct", dtype=loaded.dtype,
                       data_dir=tmp_path / "data", workdir=tmp_path / backend, progress=lambda f, t: None,
                       on_sample=lambda s: None)
        scores[backend] = out.scores[0].value
    assert (tmp_path / "vllm" / "vllm-model" / "config.json").is_file()  # pruned weights handed over
    assert abs(scores["hf"] - scores["vllm"]) <= 0.1  # bf16 kernels differ; same pruned weights
