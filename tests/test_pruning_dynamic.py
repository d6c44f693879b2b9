"""Dynamic (router) pruning: routers reach their target, really skip, keep the KV cache right.

This file checks the causal-threshold routing whose skipped tokens keep writing their K/V (SkipGPT-style,
D-LLM-style with `skipped_kv: keep`, MoD-style `causal-threshold`); D-LLM's K/V eviction and the
seed study's MoD are checked against their references in tests/test_pruning_dynamic_faithful.py."""
from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from backend.config import HFModelArgs, PruningConfig
from backend.models.loading import load_model
from backend.pruning import get_method
from backend.pruning.dynamic import evaluation_skip_report, reset_skip_counters
from backend.pruning.dynamic.routing import LayerRouting, force_routing, routing_layers, skip_ratios
from backend.pruning.dynamic.training import LoRALinear
from backend.pruning.layers import get_decoder_layers

METHODS = ["skipgpt-style", "dllm-style", "mod-style"]
VARIANTS = {"skipgpt-style": ("skipgpt-style", {}), "dllm-style-keep": ("dllm-style", {"skipped_kv": "keep"}),
            "mod-style-causal": ("mod-style", {"variant": "causal-threshold"})}
"""Routing variants whose skipped tokens keep their K/V: name -> (method, params)."""
MODELS = ["builtin:tiny-llama", "builtin:tiny-qwen3"]


def _tiny(model_id="builtin:tiny-llama"):
    return load_model(model_id, HFModelArgs(dtype="float32")).model


def _tokens(num, seq_len, seed):
    return torch.randint(3, 259, (num, seq_len), generator=torch.Generator().manual_seed(seed))


def _routed(method, model_id="builtin:tiny-llama", sparsity=0.25, params=None):
    """(dense copy, routed model, report), routers trained on 64 x 48 random tokens."""
    torch.manual_seed(0)  # router initialisation
    model = _tiny(model_id)
    dense = copy.deepcopy(model)
    cls = get_method(method)
    report = cls().prune(model, sparsity, cls.Params(**(params or {})), _tokens(64, 48, 0), lambda f, t: None)
    return dense, model, report


@pytest.fixture(scope="module")
def routed_models():
    """One trained model per (method, tiny model), shared by the read-only tests below."""
    return {(name, mid): _routed(method, mid, params=params) for name, (method, params) in VARIANTS.items()
            for mid in MODELS}


def test_registered_as_dynamic_methods_with_calibration():
    for name in METHODS:
        cls = get_method(name)
        assert cls.family == "dynamic" and cls.needs_calibration
    assert get_method("dllm-style").Params().router_hidden > 0
    assert get_method("skipgpt-style").Params().lora_steps == 0  # LoRA restoration off by default


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_target_outside_unit_interval_is_rejected(sparsity):
    with pytest.raises(ValidationError):
        PruningConfig(method="mod-style", sparsity=sparsity)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        get_method("skipgpt-style")().prune(_tiny(), sparsity, None, _tokens(2, 8, 0), lambda f, t: None)


def test_unknown_router_param_is_rejected():
    with pytest.raises(ValidationError):
        PruningConfig(method="mod-style", sparsity=0.25, params={"temperature": 2.0})  # a Gumbel knob
    assert PruningConfig(method="skipgpt-style", sparsity=0.25, params={"steps": 5}).method_params().steps == 5


class _NoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)


def test_model_without_decoder_layers_fails_before_any_work():
    calls = []
    with pytest.raises(ValueError, match="skipgpt-style.*model.model.layers"):
        get_method("skipgpt-style")().prune(_NoLayers(), 0.25, None, _tokens(2, 8, 0), lambda f, t: calls.append(t))
    assert calls == []


def test_blocks_without_attention_and_mlp_fail_before_any_work():
    model = _tiny()
    model.model.layers = nn.ModuleList([nn.Linear(64, 64) for _ in range(2)])
    calls = []
    with pytest.raises(ValueError, match="dllm-style: decoder layer 0 .*lacks input_layernorm, self_attn"):
        get_method("dllm-style")().prune(model, 0.25, None, _tokens(2, 8, 0), lambda f, t: calls.append(t))
    assert calls == [] and not any(hasattr(layer, "routing") for layer in model.model.layers)


def test_calibration_is_required():
    with pytest.raises(ValueError, match="needs calibration"):
        get_method("mod-style")().prune(_tiny(), 0.25, None, None, lambda f, t: None)


@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("method", VARIANTS)
def test_routers_reach_the_target_skip_ratio(routed_models, method, model_id):
    _, model, report = routed_models[(method, model_id)]
    assert report.achieved_sparsity == pytest.approx(0.25, abs=0.01)  # on the calibration tokens
    assert report.details["granularity"] == ("module" if method == "skipgpt-style" else "block")
    assert len(report.details["calibration_skip"]["per_layer"]) == 8
    assert report.params_after > report.params_before  # the routers
    reset_skip_counters(model)
    with torch.no_grad():
        model(_tokens(32, 48, 7))  # calibration-like data the routers never saw
    ratios = skip_ratios(model)
    assert ratios["overall"] == pytest.approx(0.25, abs=0.05)
    if method == "mod-style-causal":  # one capacity per layer
        for row in report.details["calibration_skip"]["per_layer"]:
            assert row["block"] == pytest.approx(0.25, abs=0.01)


def test_other_targets_are_reached():
    for sparsity in (0.0, 0.5):
        report = _routed("skipgpt-style", sparsity=sparsity, params={"steps": 10})[2]
        assert report.achieved_sparsity == pytest.approx(sparsity, abs=0.01)


@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("method", VARIANTS)
def test_run_everything_equals_the_dense_model(routed_models, method, model_id):
    dense, model, _ = routed_models[(method, model_id)]
    ids = _tokens(2, 24, 3)
    force_routing(model, True)
    try:
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, dense(ids).logits, atol=1e-5, rtol=0)
            prefix = model(ids[:, :-4], use_cache=True)
            steps = model(ids[:, -4:], past_key_values=prefix.past_key_values, use_cache=True).logits
            torch.testing.assert_close(steps, dense(ids).logits[:, -4:], atol=1e-5, rtol=0)
    finally:
        force_routing(model, None)


def _reference_with_skips(dense, ids, masks, attention_mask=None):
    """Logits of the dense model where `masks[(layer, "attn"|"mlp")]` (bool, True = run) drops the
    module's output for the other tokens, computed with hooks on the dense modules."""
    handles = []
    for i, layer in enumerate(get_decoder_layers(dense)):
        for name, module in (("attn", layer.self_attn), ("mlp", layer.mlp)):
            keep = masks[(i, name)]

            def hook(mod, args, out, keep=keep):
                if isinstance(out, tuple):
                    return (out[0] * keep.unsqueeze(-1).to(out[0].dtype),) + tuple(out[1:])
                return out * keep.unsqueeze(-1).to(out.dtype)

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return dense(ids, attention_mask=attention_mask).logits
    finally:
        for handle in handles:
            handle.remove()


def _force(model, masks):
    for i, routing in enumerate(routing_layers(model)):
        if routing.granularity == "module":
            routing.attn.force, routing.mlp.force = masks[(i, "attn")], masks[(i, "mlp")]
        else:
            routing.block.force = masks[(i, "attn")]


@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("method", VARIANTS)
def test_forced_skips_equal_the_model_without_those_modules_for_those_tokens(routed_models, method, model_id):
    dense, model, _ = routed_models[(method, model_id)]
    ids = _tokens(2, 16, 4)
    gen = torch.Generator().manual_seed(11)
    masks = {}
    for i in range(8):
        masks[(i, "attn")] = torch.rand(2, 16, generator=gen) > 0.4
        masks[(i, "mlp")] = torch.rand(2, 16, generator=gen) > 0.4
        if method != "skipgpt-style":  # one decision per block
            masks[(i, "mlp")] = masks[(i, "attn")]
    masks[(0, "attn")][1] = False  # a whole row skipping, and rows with different counts
    padding = torch.ones(2, 16, dtype=torch.long)
    padding[1, :3] = 0  # left padding, as batched generation does
    _force(model, masks)
    try:
        for attention_mask in (None, padding):
            with torch.no_grad():
                got = model(ids, attention_mask=attention_mask).logits
            want = _reference_with_skips(dense, ids, masks, attention_mask)
            rows = slice(None) if attention_mask is None else padding.bool()
            torch.testing.assert_close(got[rows], want[rows], atol=1e-5, rtol=0)
            with torch.no_grad():  # and the skipping changed the output
                assert (got[rows] - dense(ids, attention_mask=attention_mask).logits[rows]).abs().max() > 1e-3
    finally:
        force_routing(model, None)


def _decisions(model):
    return [g.recorded for r in routing_layers(model) for g in r.gates().values()]


def _record(model, on):
    for routing in routing_layers(model):
        for gate in routing.gates().values():
            gate.recorded = [] if on else None


@pytest.mark.parametrize("method", VARIANTS)
def test_prefill_and_step_by_step_decoding_route_the_same(routed_models, method):
    _, model, _ = routed_models[(method, "builtin:tiny-qwen3")]
    ids = _tokens(1, 20, 5)
    _record(model, True)
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
            prefill = [torch.cat(r, dim=1) for r in _decisions(model)]
            _record(model, True)
            past = None
            for t in range(ids.shape[1]):
                past = model(ids[:, t:t + 1], past_key_values=past, use_cache=True).past_key_values
            stepped = [torch.cat(r, dim=1) for r in _decisions(model)]
    finally:
        _record(model, False)
    assert all(a.shape == (1, 20) for a in prefill)
    for a, b in zip(prefill, stepped):
        assert torch.equal(a, b)
    mixed = torch.cat(prefill)
    assert mixed.any() and not mixed.all()  # some tokens skip, some run


@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("method", VARIANTS)
def test_cached_greedy_generation_equals_full_recompute(routed_models, method, model_id):
    _, model, _ = routed_models[(method, model_id)]
    prompt = _tokens(1, 12, 6)
    new = 10
    reset_skip_counters(model)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True)
        assert out.shape[1] == prompt.shape[1] + new
        ids = prompt
        for _ in range(new):  # no cache: every step recomputes the whole sequence, same routers
            ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
        full = model(out, use_cache=False).logits[:, prompt.shape[1] - 1:-1]
        prefix = model(prompt[:, :-1], use_cache=True)
        cached = model(out[:, prompt.shape[1] - 1:-1], past_key_values=prefix.past_key_values, use_cache=True).logits
    assert torch.equal(out, ids)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    report = evaluation_skip_report(model)
    assert report["decisions"] > 0 and 0 < report["overall"] < 1
    assert report["ideal_speedup"] > 1


def test_skipped_tokens_pay_for_kv_only():
    """A token skipping every attention runs k/v projections only; q/o and the MLP see routed tokens."""
    _, model, _ = _routed("skipgpt-style", params={"steps": 2})
    seen = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(
        args[0].shape[:-1].numel())) for name, m in get_decoder_layers(model)[2].named_modules()
        if isinstance(m, nn.Linear) and "routing" not in name]
    routing = routing_layers(model)[2]
    routing.attn.force = torch.tensor([[True, False, True, False, False, True]])
    routing.mlp.force = torch.tensor([[False, False, False, True, False, False]])
    with torch.no_grad():
        model(_tokens(1, 6, 1))
    for h in handles:
        h.remove()
    assert seen["self_attn.k_proj"] == seen["self_attn.v_proj"] == [6]
    assert seen["self_attn.q_proj"] == seen["self_attn.o_proj"] == [3]
    assert seen["mlp.gate_proj"] == seen["mlp.down_proj"] == [1]


def test_lora_restoration_merges_and_keeps_the_target():
    _, model, report = _routed("skipgpt-style", params={"steps": 3, "lora_steps": 2, "lora_rank": 4})
    assert report.details["lora_restoration"]["merged"] is True
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert report.achieved_sparsity == pytest.approx(0.25, abs=0.01)
    assert all(isinstance(r, LayerRouting) for r in routing_layers(model))


def test_pipeline_stores_the_skip_ratio_measured_on_the_evaluation():
    from backend import pipeline
    from backend.config import validate_config
    from backend.events import ignore_events

    config = validate_config({
        "model": "builtin:tiny-llama", "pruning": {"method": "dllm-style", "sparsity": 0.25, "params": {"steps": 3}},
        "calibration": {"source": "synthetic", "num_samples": 8, "seq_len": 32},
        "tasks": [{"name": "synthetic-mc", "limit": 6},
                  {"name": "synthetic-arith", "limit": 4, "generation": {"max_new_tokens": 8}}],
        "evaluation": {"batch_size": 2},
    })
    report = pipeline.run(config, ignore_events).prune_report
    assert report["method"] == "dllm-style" and report["achieved_sparsity"] == pytest.approx(0.25, abs=0.02)
    skip = report["evaluation_skip"]
    assert skip["decisions"] > 0 and len(skip["per_layer"]) == 8 and 0 < skip["overall"] < 1
    assert report["kv_cache"].startswith("a token that skips an attention computes no K/V")  # D-LLM's eviction


def test_pipeline_refuses_to_keep_a_routed_model_before_loading_it():
    from backend import pipeline
    from backend.config import validate_config
    from backend.events import ignore_events

    config = validate_config({"model": "builtin:tiny-llama", "pruning": {"method": "mod-style", "sparsity": 0.25},
                              "tasks": [{"name": "synthetic-mc", "limit": 2}], "keep_model": True})
    with pytest.raises(ValueError, match="mod-style: routers live in the Python model only"):
        pipeline.run(config, ignore_events)
