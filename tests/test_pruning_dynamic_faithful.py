"""D-LLM's KV eviction and the seed study's Mixture-of-Depths against tests/reference_dynamic.py.

The reference routes the dense model's own modules by the settings the papers (and the seed study)
give, reading only the trained routers' weights from the routed model: D-LLM-style evicts a skipped
token's K/V (later tokens of that layer do not attend to it); MoD (variant `seed`) has an attention
and an MLP router in every layer but the first and the last, top-k per prompt, router-weighted
outputs, and runs every decoded token.
"""
from __future__ import annotations

import copy

import pytest
import torch

import reference_dynamic as ref
from backend.config import CalibrationConfig, HFModelArgs, validate_config
from backend.models.loading import load_model
from backend.pruning import get_method
from backend.pruning.dynamic import evaluation_skip_report, reset_skip_counters
from backend.pruning.layers import get_decoder_layers

MODELS = ["builtin:tiny-llama", "builtin:tiny-qwen3"]
ATOL = 1e-4


def _tokens(num, seq_len, seed):
    return torch.randint(3, 259, (num, seq_len), generator=torch.Generator().manual_seed(seed))


def _routed(method, model_id="builtin:tiny-llama", sparsity=0.25, params=None, model=None, calibration=None):
    torch.manual_seed(0)  # router initialisation
    model = load_model(model_id, HFModelArgs(dtype="float32")).model if model is None else model
    dense = copy.deepcopy(model)
    cls = get_method(method)
    calibration = _tokens(32, 48, 0) if calibration is None else calibration
    report = cls().prune(model, sparsity, cls.Params(**(params or {})), calibration, lambda f, t: None)
    return dense, model, report


def _dllm_plan(model, evict=True):
    """D-LLM: one router per block, causal threshold, skipped tokens' K/V evicted; every layer routed."""
    plan = []
    for layer in get_decoder_layers(model):
        gate = layer.routing.block
        plan.append({"granularity": "block", "gates": {"block": (ref.gate_weights(gate.net), float(gate.threshold))},
                     "selection": "threshold", "capacity": None, "scale": False, "evict": evict})
    return plan


def _mod_seed_plan(model, capacity):
    """The seed study's MoD: attention and MLP routers, first and last layer unrouted, top-k, weighted, evicting."""
    layers = get_decoder_layers(model)
    plan = []
    for i, layer in enumerate(layers):
        if i in (0, len(layers) - 1):
            assert not hasattr(layer, "routing"), f"layer {i} must not be routed"
            plan.append(None)
            continue
        gates = {name: (ref.gate_weights(getattr(layer.routing, name).net), None) for name in ("attn", "mlp")}
        plan.append({"granularity": "module", "gates": gates, "selection": "top-k", "capacity": capacity,
                     "scale": True, "evict": True})
    return plan


@pytest.fixture(scope="module")
def dllm_models():
    return {mid: _routed("dllm-style", mid) for mid in MODELS}


@pytest.fixture(scope="module")
def mod_models():
    return {mid: _routed("mod-style", mid) for mid in MODELS}


# --- D-LLM-style: skipped tokens' K/V evicted ---------------------------------------------------------


def test_dllm_evicts_by_default_and_the_config_says_so():
    assert get_method("dllm-style").Params().skipped_kv == "evict"
    config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                              "pruning": {"method": "dllm-style", "sparsity": 0.25, "params": {"skipped_kv": "keep"}}})
    assert config.pruning.params == {"skipped_kv": "keep"}


@pytest.mark.parametrize("model_id", MODELS)
def test_dllm_evicting_forward_matches_the_reference(dllm_models, model_id):
    dense, model, report = dllm_models[model_id]
    assert report.details["kv_cache"].startswith("a token that skips an attention computes no K/V")
    ids = _tokens(2, 24, 3)
    with torch.no_grad():
        got = model(ids, use_cache=False).logits.double()
    want = ref.routed_logits(dense, ids, _dllm_plan(model)).double()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    kept_kv = ref.routed_logits(dense, ids, _dllm_plan(model, evict=False)).double()
    assert (kept_kv - want).abs().max() > 1e-3  # eviction changed what later tokens see


@pytest.mark.parametrize("model_id", MODELS)
def test_dllm_evicting_cached_decoding_equals_full_recompute(dllm_models, model_id):
    _, model, _ = dllm_models[model_id]
    prompt = _tokens(1, 12, 6)
    reset_skip_counters(model)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
        full = model(out, use_cache=False).logits[:, prompt.shape[1] - 1:-1]
        prefix = model(prompt[:, :-1], use_cache=True)
        cached = model(out[:, prompt.shape[1] - 1:-1], past_key_values=prefix.past_key_values, use_cache=True).logits
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)
    report = evaluation_skip_report(model)
    assert report["decisions"] > 0 and 0 < report["overall"] < 1


def test_dllm_forced_decisions_match_the_reference_and_skipped_tokens_pay_no_kv(dllm_models):
    dense, model, _ = dllm_models["builtin:tiny-llama"]
    ids = _tokens(2, 16, 4)
    gen = torch.Generator().manual_seed(11)
    forced = {}
    for i, layer in enumerate(get_decoder_layers(model)):
        run = torch.rand(2, 16, generator=gen) > 0.4
        forced[(i, "attn")] = forced[(i, "mlp")] = run
        layer.routing.block.force = run
    seen = []
    k_proj = get_decoder_layers(model)[3].self_attn.k_proj
    handle = k_proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[:-1].numel()))
    try:
        with torch.no_grad():
            got = model(ids, use_cache=False).logits.double()
    finally:
        handle.remove()
        for layer in get_decoder_layers(model):
            layer.routing.block.force = None
    torch.testing.assert_close(got, ref.routed_logits(dense, ids, _dllm_plan(model), forced=forced).double(),
                               atol=ATOL, rtol=0)
    run = forced[(3, "attn")]
    assert seen == [2 * int(run.sum(1).max())]  # K/V only for the routed tokens (rows padded to the longest)


def test_dllm_training_masks_evicted_keys_as_evaluation_does(dllm_models):
    """While routers train every token runs and the gate scales the output; with eviction the skipped
    tokens' keys are masked out there too, so a 0/1 gate computes exactly the evaluation forward."""
    dense, model, _ = dllm_models["builtin:tiny-llama"]
    ids = _tokens(2, 16, 5)
    gen = torch.Generator().manual_seed(12)
    forced = {}
    for i, layer in enumerate(get_decoder_layers(model)):
        run = torch.rand(2, 16, generator=gen) > 0.5
        forced[(i, "attn")] = forced[(i, "mlp")] = run
        layer.routing.train_gate = lambda gate, x, run=run: run.to(x.dtype)
    try:
        with torch.no_grad():
            got = model(ids, use_cache=False).logits.double()
    finally:
        for layer in get_decoder_layers(model):
            layer.routing.train_gate = None
    torch.testing.assert_close(got, ref.routed_logits(dense, ids, _dllm_plan(model), forced=forced).double(),
                               atol=ATOL, rtol=0)


# --- MoD-style, variant seed ----------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", MODELS)
def test_mod_seed_is_the_default_with_the_seed_study_layout(mod_models, model_id):
    _, model, report = mod_models[model_id]
    details = report.details
    assert get_method("mod-style").Params().variant == "seed"
    assert details["variant"] == "seed" and details["granularity"] == "module"
    assert details["routed_layers"] == [1, 2, 3, 4, 5, 6]
    assert details["selection"] == "top-k" and details["router_weighted_output"] is True
    per_layer = details["calibration_skip"]["per_layer"]
    assert per_layer[0] == per_layer[7] == {}
    assert all(row["attn"] == row["mlp"] == 0.25 for row in per_layer[1:7])  # top-k: exactly 12 of 48 skip
    assert report.achieved_sparsity == 0.25
    assert details["kv_cache"].startswith("a token that skips an attention computes no K/V")


@pytest.mark.parametrize("model_id", MODELS)
def test_mod_seed_prompt_forward_matches_the_reference(mod_models, model_id):
    dense, model, _ = mod_models[model_id]
    ids = _tokens(2, 20, 3)
    with torch.no_grad():
        got = model(ids, use_cache=False).logits.double()
    torch.testing.assert_close(got, ref.routed_logits(dense, ids, _mod_seed_plan(model, 0.75)).double(),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("model_id", MODELS)
def test_mod_seed_routes_the_prompt_only_and_decodes_every_token(mod_models, model_id):
    dense, model, _ = mod_models[model_id]
    ids = _tokens(1, 18, 7)
    prompt = 12
    reset_skip_counters(model)
    with torch.no_grad():
        out = model(ids[:, :prompt], use_cache=True)
        steps = [out.logits[:, -1:]]
        past = out.past_key_values
        for t in range(prompt, ids.shape[1] - 1):
            out = model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            steps.append(out.logits)
            past = out.past_key_values
    got = torch.cat(steps, dim=1).double()
    want = ref.routed_logits(dense, ids, _mod_seed_plan(model, 0.75), prompt=prompt)[:, prompt - 1:-1].double()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    report = evaluation_skip_report(model)
    assert report["decisions"] == 6 * 2 * prompt  # decoded tokens are no decisions
    assert report["overall"] == pytest.approx(1 - round(0.75 * prompt) / prompt)


def test_mod_seed_top_k_counts_real_tokens_only():
    """Left padding: each row runs round(capacity x its real tokens); padding never runs."""
    _, model, _ = _routed("mod-style", params={"steps": 2})
    ids = _tokens(2, 16, 8)
    padding = torch.ones(2, 16, dtype=torch.long)
    padding[1, :6] = 0
    gates = [layer.routing.attn for layer in get_decoder_layers(model)[1:7]]
    for gate in gates:
        gate.recorded = []
    try:
        with torch.no_grad():
            model(ids, attention_mask=padding, use_cache=False)
    finally:
        decisions = [gate.recorded[0] for gate in gates]
        for gate in gates:
            gate.recorded = None
    for run in decisions:
        assert int(run[0].sum()) == round(0.75 * 16) and int(run[1].sum()) == round(0.75 * 10)
        assert not run[1, :6].any()


def test_mod_causal_threshold_is_still_there_by_name():
    _, _, report = _routed("mod-style", params={"steps": 2, "variant": "causal-threshold"})
    details = report.details
    assert details["variant"] == "causal-threshold" and details["granularity"] == "block"
    assert details["routed_layers"] == list(range(8)) and details["selection"] == "threshold"
    assert details["kv_cache"].startswith("a token that skips an attention still writes its K/V")


# --- SmolLM2 (CI size) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_router_calibration(smollm2, shared_data):
    from backend.calibration.build import build_calibration

    cfg = CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=4, seq_len=64, seed=0)
    return build_calibration(cfg, smollm2.tokenizer, shared_data).tensor


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dllm-style", "mod-style"])
def test_smollm2_routed_forward_matches_the_reference(method, smollm2, smollm2_router_calibration):
    """Two router steps are enough: the check is the routed forward, not the routers' quality."""
    dense, model, _ = _routed(method, params={"steps": 2}, model=copy.deepcopy(smollm2.model),
                              calibration=smollm2_router_calibration)
    ids = smollm2.tokenizer("The capital of France is Paris, and the capital of Italy is Rome. The capital of",
                            return_tensors="pt").input_ids
    plan = _dllm_plan(model) if method == "dllm-style" else _mod_seed_plan(model, 0.75)
    with torch.no_grad():
        got = model(ids, use_cache=False).logits.double()
    torch.testing.assert_close(got, ref.routed_logits(dense, ids, plan).double(), atol=2e-3, rtol=0)
