"""Width pruning (llm-pruner, flap): heads and MLP channels removed for real, GQA kept consistent,
the parameter target met within one group, KV-cache generation, save -> reload, bad input, and
FLAP's bias compensation."""
from __future__ import annotations

import copy

import pytest
import torch

from backend.config import HFModelArgs, validate_config
from backend.models.loading import count_parameters, load_model, load_pruned
from backend.pruning import get_method
from backend.pruning.flap import FlapParams
from backend.pruning.layers import get_decoder_layers
from backend.pruning.llm_pruner import LLMPrunerParams
from backend.pruning.width import WIDTHS_KEY, block_params, geometry

MODELS = ["builtin:tiny-llama", "builtin:tiny-qwen3"]
EVERY_LAYER = {"keep_first_layers": 0, "keep_last_layers": 0}
"""The tiny models have 8 layers: the LLaMA recipe's range (4 and 2 kept) leaves only 2 to prune."""
CASES = [("llm-pruner", LLMPrunerParams(scope="per-layer", **EVERY_LAYER)),
         ("llm-pruner", LLMPrunerParams(scope="global", **EVERY_LAYER)),
         ("flap", FlapParams()), ("flap", FlapParams(standardize="per-module-type"))]


def _tiny(model_id="builtin:tiny-llama"):
    return load_model(model_id, HFModelArgs(dtype="float32"))


def _calibration(num_samples=8, seq_len=32, seed=0):
    return torch.randint(3, 259, (num_samples, seq_len), generator=torch.Generator().manual_seed(seed))


def _prune(model, method, params, sparsity=0.25, calibration=None, progress=lambda f, t: None):
    calibration = _calibration() if calibration is None else calibration
    return get_method(method)().prune(model, sparsity, params, calibration, progress)


def _assert_cache_consistent(model, ids):
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        prefix = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)
    out = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
    assert out.shape[1] == ids.shape[1] + 5 or out[0, -1].item() == model.config.eos_token_id


def test_registered_as_width_methods():
    for name in ("llm-pruner", "flap"):
        method = get_method(name)
        assert method.family == "width" and method.needs_calibration
        with pytest.raises(ValueError, match="sparsity > 0"):
            method.check_sparsity(0.0)
    config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                              "pruning": {"method": "llm-pruner", "sparsity": 0.25, "params": {"scope": "global"}}})
    assert config.pruning.params == {"scope": "global"}
    with pytest.raises(ValueError, match="scope"):
        validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                         "pruning": {"method": "llm-pruner", "sparsity": 0.25, "params": {"scope": "nope"}}})


@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("method, params", CASES, ids=["llm-pruner-per-layer", "llm-pruner-global", "flap",
                                                     "flap-per-module-type"])
def test_meets_the_parameter_target_and_still_generates(model_id, method, params):
    loaded = _tiny(model_id)
    model = loaded.model
    geo = geometry(get_decoder_layers(model)[0])
    before, block_before = count_parameters(model), block_params(model)
    fractions: list[float] = []
    report = _prune(model, method, params, progress=lambda f, t: fractions.append(f))

    target = round(0.25 * block_before)
    removed = block_before - block_params(model)
    assert abs(removed - target) <= geo.channel_cost  # within one MLP channel (a head group is larger)
    assert report.params_before == before and report.params_after == count_parameters(model)
    assert report.params_after == before - removed
    assert report.achieved_sparsity == pytest.approx(removed / block_before)
    details = report.details
    assert details["block_params_before"] == block_before and details["params_removed"] == removed
    for i, layer in enumerate(get_decoder_layers(model)):
        attn, mlp = layer.self_attn, layer.mlp
        heads, kv = attn.q_proj.out_features // 16, attn.k_proj.out_features // 16
        assert heads == details["heads_kept"][i] and kv == details["kv_heads_kept"][i] >= 1
        assert heads == kv * attn.num_key_value_groups == kv * geo.rep  # whole KV groups: GQA consistent
        assert attn.o_proj.in_features == heads * 16 and attn.v_proj.out_features == kv * 16
        assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features
        assert mlp.gate_proj.out_features == details["channels_kept"][i] >= 1
    assert getattr(model.config, WIDTHS_KEY)[0]["heads"] == details["heads_kept"][0]
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    if method == "llm-pruner" and params.scope == "per-layer":
        assert len(set(details["heads_kept"])) == 1 and max(details["channels_kept"]) - min(details["channels_kept"]) <= 1
    ids = loaded.tokenizer("pruned models still talk", return_tensors="pt").input_ids
    _assert_cache_consistent(model, ids)


@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("method", ["llm-pruner", "flap"])
def test_save_and_reload_gives_identical_logits(tmp_path, model_id, method):
    from backend.publish.export import prune_only, save_pruned

    params = {"keep_first_layers": 1, "keep_last_layers": 1} if method == "llm-pruner" else {}
    config = validate_config({"model": model_id, "tasks": ["synthetic-mc"], "seed": 0,
                              "pruning": {"method": method, "sparsity": 0.3, "params": params},
                              "calibration": {"num_samples": 4, "seq_len": 32}})
    loaded, report, manifest = prune_only(config)
    out = save_pruned(loaded, report, manifest, tmp_path / "pruned")
    reloaded = load_pruned(out)
    ids = _calibration(2, 24, seed=3)
    with torch.no_grad():
        expected = loaded.model(ids).logits
        got = reloaded(ids).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert count_parameters(reloaded) == count_parameters(loaded.model) == report.params_after
    # a saved directory is also a model id the pipeline can load
    again = load_model(str(out), HFModelArgs(dtype="float32"))
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, expected, atol=0, rtol=0)
    _assert_cache_consistent(reloaded, ids[:1])


def test_too_high_sparsity_fails_before_any_work(monkeypatch):
    from backend.pruning import flap, llm_pruner

    def boom(*args, **kwargs):
        raise AssertionError("calibration work started before the plan was checked")

    monkeypatch.setattr(llm_pruner, "taylor_importance", boom)
    monkeypatch.setattr(flap, "input_moments", boom)
    model = _tiny().model
    before = count_parameters(model)
    with pytest.raises(ValueError, match="leaving it no heads"):
        _prune(model, "llm-pruner", LLMPrunerParams(scope="per-layer", **EVERY_LAYER), sparsity=0.8)
    with pytest.raises(ValueError, match="keeping one per layer"):
        _prune(model, "llm-pruner", LLMPrunerParams(scope="global", **EVERY_LAYER), sparsity=0.95)
    with pytest.raises(ValueError, match="of the 2 pruned layers"):  # 30 % of all blocks from layers 4 and 5
        _prune(model, "llm-pruner", LLMPrunerParams(), sparsity=0.3)
    with pytest.raises(ValueError, match="leave no layer to prune"):
        _prune(model, "llm-pruner", LLMPrunerParams(keep_first_layers=6), sparsity=0.1)
    with pytest.raises(ValueError, match="more than keeping one head group"):
        _prune(model, "flap", FlapParams(), sparsity=0.995)
    for method, params in [("llm-pruner", LLMPrunerParams()), ("flap", FlapParams())]:
        with pytest.raises(ValueError, match="calibration"):
            get_method(method)().prune(model, 0.25, params, None, lambda f, t: None)
    assert count_parameters(model) == before


def test_llm_pruner_leaves_the_kept_layers_whole_and_takes_the_target_from_the_others():
    model = _tiny().model
    dense = copy.deepcopy(model)
    block_before = block_params(model)
    report = _prune(model, "llm-pruner", LLMPrunerParams(keep_first_layers=3, keep_last_layers=2), sparsity=0.15)
    assert report.details["pruned_layers"] == [3, 4, 5]
    for i, (layer, dense_layer) in enumerate(zip(get_decoder_layers(model), get_decoder_layers(dense))):
        same = all(torch.equal(a, b) for a, b in zip(layer.state_dict().values(), dense_layer.state_dict().values()))
        assert same == (i not in (3, 4, 5)), i
    geo = geometry(get_decoder_layers(dense)[0])
    assert abs(block_before - block_params(model) - round(0.15 * block_before)) <= geo.channel_cost
    assert report.details["importance"] == "element1"


@pytest.mark.parametrize("importance", ["element1", "element2", "vector", "whole-group"])
def test_llm_pruner_importances_rank_differently_but_all_prune_to_the_target(importance):
    from backend.pruning.llm_pruner import taylor_importance

    model = _tiny().model
    heads, channels = taylor_importance(model, _calibration(), importance)
    assert len(heads) == len(channels) == 8
    assert all(h.shape == (2,) and c.shape == (128,) for h, c in zip(heads, channels))
    assert all(float(c.min()) >= 0 for c in channels)
    others = [taylor_importance(model, _calibration(), other)[1] for other in ("element1", "vector", "whole-group")
              if other != importance]
    assert all(not torch.allclose(channels[0], o[0]) for o in others)  # each variant is its own score
    block_before = block_params(model)
    _prune(model, "llm-pruner", LLMPrunerParams(importance=importance, **EVERY_LAYER), sparsity=0.25)
    assert abs(block_before - block_params(model) - round(0.25 * block_before)) <= geometry(
        get_decoder_layers(model)[0]).channel_cost


def test_inconsistent_gqa_layout_is_a_clear_error():
    model = _tiny("builtin:tiny-qwen3").model
    get_decoder_layers(model)[2].self_attn.num_key_value_groups = 3
    with pytest.raises(ValueError, match="inconsistent GQA layout"):
        _prune(model, "llm-pruner", LLMPrunerParams())


@pytest.mark.parametrize("model_id", MODELS)
def test_flap_bias_compensation_keeps_the_output_mean(monkeypatch, model_id):
    """On the calibration data, each pruned o_proj / down_proj has the dense module's output mean."""
    from backend.pruning import width

    model = _tiny(model_id).model
    dense = copy.deepcopy(model)
    calib = _calibration()
    captured: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(get_decoder_layers(dense)):
        for name, module in (("o", layer.self_attn.o_proj), ("down", layer.mlp.down_proj)):
            handles.append(module.register_forward_hook(
                lambda mod, args, out, key=(i, name): captured.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        dense(calib, use_cache=False)
    for h in handles:
        h.remove()

    plans = {}
    real_apply = width.apply_plan

    def spy(model_, groups, channels):
        plans["groups"], plans["channels"] = copy.deepcopy(groups), copy.deepcopy(channels)
        return real_apply(model_, groups, channels)

    monkeypatch.setattr(width, "apply_plan", spy)
    # per-module-type standardisation removes head groups of the tiny models at 25 % (per-layer removes
    # MLP channels only there); the compensation is the same code either way
    _prune(model, "flap", FlapParams(standardize="per-module-type"), calibration=calib)
    assert plans["groups"] and plans["channels"]
    geo = geometry(get_decoder_layers(dense)[0])
    checked = 0
    for i, (layer, dense_layer) in enumerate(zip(get_decoder_layers(model), get_decoder_layers(dense))):
        for name, drops, width_of in (("o", plans["groups"].get(i), geo.rep * geo.head_dim),
                                      ("down", plans["channels"].get(i), 1)):
            if not drops:
                continue
            x = torch.cat(captured[(i, name)]).double()
            dense_mod = dense_layer.self_attn.o_proj if name == "o" else dense_layer.mlp.down_proj
            mod = layer.self_attn.o_proj if name == "o" else layer.mlp.down_proj
            dropped = {c for d in drops for c in range(d * width_of, (d + 1) * width_of)}
            kept = torch.tensor([c for c in range(x.shape[1]) if c not in dropped])
            dense_mean = (x @ dense_mod.weight.double().T).mean(0)
            pruned_mean = (x[:, kept] @ mod.weight.double().T + mod.bias.double()).mean(0)
            torch.testing.assert_close(pruned_mean, dense_mean, atol=1e-5, rtol=1e-5)
            without_bias = (x[:, kept] @ mod.weight.double().T).mean(0)
            assert (without_bias - dense_mean).abs().max() > 1e-4  # the bias is what closes the gap
            checked += 1
    assert checked >= 4


@pytest.mark.slow
@pytest.mark.parametrize("method, params", [("llm-pruner", LLMPrunerParams()), ("flap", FlapParams())])
def test_smollm2_quarter_width(smollm2, shared_data, method, params):
    from backend.calibration.build import build_calibration
    from backend.config import CalibrationConfig

    model = copy.deepcopy(smollm2.model)
    calib = build_calibration(CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=4,
                                                seq_len=128), smollm2.tokenizer, shared_data)
    geo = geometry(get_decoder_layers(model)[0])
    assert (geo.groups, geo.rep) == (3, 3)  # SmolLM2: 9 query heads in 3 KV groups
    block_before = block_params(model)
    report = _prune(model, method, params, calibration=calib.tensor)
    assert abs(block_before - block_params(model) - round(0.25 * block_before)) <= geo.channel_cost
    assert all(h % 3 == 0 and h >= 3 for h in report.details["heads_kept"])
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    _assert_cache_consistent(model, ids)
