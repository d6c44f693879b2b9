"""Depth methods sleb, shortened-ppl, shortened-taylor (and shortgpt's shared report keys)."""
from __future__ import annotations

import copy
import math
import time

import pytest
import torch

from backend.calibration.build import build_calibration
from backend.config import CalibrationConfig, HFModelArgs, validate_config
from backend.events import Cancelled
from backend.models.loading import count_parameters, load_model
from backend.pruning import get_method
from backend.pruning.depth import cache_block_inputs, lm_nll, nll_from
from backend.pruning.layers import get_decoder_layers
from backend.pruning.shortened_ppl import ppl_without_each_block
from backend.pruning.shortened_taylor import taylor_importance
from backend.pruning.sleb import sleb_order

METHODS = ["sleb", "shortened-ppl", "shortened-taylor"]
SHARED_KEYS = {"removed_layers", "scores", "score_name", "score_rule", "layers_before", "layers_after", "tie_break"}


def _tiny(model_id="builtin:tiny-llama"):
    return load_model(model_id, HFModelArgs(dtype="float32"))


def _calibration(num_samples=6, seq_len=24, seed=0):
    return torch.randint(3, 259, (num_samples, seq_len), generator=torch.Generator().manual_seed(seed))


def _prune(method, model, sparsity=0.25, calibration=None, progress=lambda f, t: None, params=None):
    calibration = _calibration() if calibration is None else calibration
    return get_method(method)().prune(model, sparsity, params, calibration, progress)


def _all_predictions(method):
    """Params scoring every prediction: the self-sampled fixture's guarantee holds for the full loss."""
    cls = get_method(method)
    return cls.Params(loss_stride=1) if "loss_stride" in cls.Params.model_fields else None


def _self_sampled(model, num_samples=8, seq_len=32):
    """Text sampled from the model itself: in expectation, removing any block that changes the model
    raises its perplexity on it (cross-entropy >= entropy), so an identity block is the cheapest.
    A random-text calibration would not do: removing a random block of a random model may lower it."""
    prompts = _calibration(num_samples=num_samples, seq_len=4, seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return model.generate(prompts, max_new_tokens=seq_len - 4, min_new_tokens=seq_len - 4, do_sample=True,
                              top_k=0, top_p=1.0, temperature=1.0)


def _make_identity(model, index):
    with torch.no_grad():
        block = get_decoder_layers(model)[index]
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


def _assert_cache_consistent(model, ids):
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        prefix = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)
    out = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
    assert out.shape[1] == ids.shape[1] + 5 or out[0, -1].item() == model.config.eos_token_id


@pytest.mark.parametrize("method", METHODS + ["shortgpt"])
def test_registered_as_depth_methods_and_config_validates(method):
    cls = get_method(method)
    assert cls.family == "depth" and cls.needs_calibration
    with pytest.raises(ValueError, match="sparsity > 0"):
        cls.check_sparsity(0.0)
    config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                              "pruning": {"method": method, "sparsity": 0.25}})
    assert config.pruning.method == method


@pytest.mark.parametrize("model_id", ["builtin:tiny-llama", "builtin:tiny-qwen3"])
@pytest.mark.parametrize("method", METHODS)
def test_removes_a_quarter_generates_and_round_trips(method, model_id, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = _tiny(model_id)
    model = loaded.model
    per_layer = count_parameters(get_decoder_layers(model)[0])
    before = count_parameters(model)
    fractions: list[float] = []
    report = _prune(method, model, progress=lambda f, t: fractions.append(f))

    assert len(get_decoder_layers(model)) == 6 == model.config.num_hidden_layers
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 6
    assert [layer.self_attn.layer_idx for layer in get_decoder_layers(model)] == list(range(6))
    assert report.method == method and report.achieved_sparsity == 0.25
    assert report.params_after == count_parameters(model) == before - 2 * per_layer
    assert SHARED_KEYS <= set(report.details)
    assert len(report.details["removed_layers"]) == 2 and len(report.details["scores"]) == 8
    assert report.details["removed_layers"] == sorted(report.details["removed_layers"])
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert all(p.grad is None for p in model.parameters())
    ids = loaded.tokenizer("pruned models still talk", return_tensors="pt").input_ids
    _assert_cache_consistent(model, ids)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reloaded.config.num_hidden_layers == 6
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_shortgpt_report_has_the_shared_keys():
    report = _prune("shortgpt", _tiny().model)
    assert SHARED_KEYS <= set(report.details)
    assert report.details["scores"] == report.details["block_influence"]


def test_lm_nll_from_replayed_blocks_matches_the_model_loss():
    model = _tiny("builtin:tiny-qwen3").model
    calib = _calibration(num_samples=3)
    cache = cache_block_inputs(model, calib)
    nll, n = lm_nll(model, cache.final[0], calib)
    with torch.no_grad():
        loss = model(calib, labels=calib).loss.item()
    assert nll / n == pytest.approx(loss, rel=1e-5)
    assert nll_from(model, cache, 3) == pytest.approx(loss, rel=1e-5)  # restarting midway changes nothing


def test_ppl_without_a_block_equals_really_removing_it():
    from backend.pruning.layers import remove_layers

    model = _tiny().model
    calib = _calibration(num_samples=3)
    scores, dense = ppl_without_each_block(model, calib)
    with torch.no_grad():
        assert dense == pytest.approx(math.exp(model(calib, labels=calib).loss.item()), rel=1e-5)
    remove_layers(model, [4])
    with torch.no_grad():
        assert scores[4] == pytest.approx(math.exp(model(calib, labels=calib).loss.item()), rel=1e-5)


@pytest.mark.parametrize("stride", [1, 3, 5])
def test_loss_stride_scores_every_kth_prediction_exactly(stride):
    model = _tiny().model
    calib = _calibration(num_samples=2, seq_len=17)
    cache = cache_block_inputs(model, calib)
    nll, n = lm_nll(model, cache.final[0], calib, stride)
    with torch.no_grad():
        logp = torch.log_softmax(model(calib).logits.double(), dim=-1)
    positions = list(range(stride - 1, 16, stride))  # prediction at position p is of token p + 1
    expected = -sum(float(logp[b, p, calib[b, p + 1]]) for b in range(2) for p in positions)
    assert n == 2 * len(positions) and nll == pytest.approx(expected, rel=1e-5)


def test_sleb_scores_every_prediction_by_default_and_its_first_round_is_shortened_ppl():
    from backend.pruning.depth import PerplexityParams

    assert get_method("sleb").Params().loss_stride == 1 == get_method("shortened-ppl").Params().loss_stride
    for method in ("sleb", "shortened-ppl"):
        config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                                  "pruning": {"method": method, "sparsity": 0.25, "params": {"loss_stride": 2}}})
        assert config.pruning.method_params().loss_stride == 2
        with pytest.raises(ValueError):
            validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                             "pruning": {"method": method, "sparsity": 0.25, "params": {"loss_stride": 0}}})
    calib = _calibration()
    assert _prune("sleb", _tiny().model, calibration=calib).details["loss_stride"] == 1
    sleb = _prune("sleb", _tiny().model, calibration=calib, params=PerplexityParams(loss_stride=4))
    ppl = _prune("shortened-ppl", _tiny().model, calibration=calib, params=PerplexityParams(loss_stride=4))
    assert sleb.details["loss_stride"] == ppl.details["loss_stride"] == 4
    assert sleb.details["scores"] == pytest.approx(ppl.details["scores"], rel=1e-6)
    assert sleb.details["dense_ppl"] == pytest.approx(ppl.details["dense_ppl"], rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_identity_block_goes_first(method):
    model = _tiny().model
    _make_identity(model, 5)
    calib = _self_sampled(model)
    report = _prune(method, model, sparsity=0.125, calibration=calib, params=_all_predictions(method))
    assert report.details["removed_layers"] == [5]
    if method == "shortened-taylor":
        assert report.details["scores"][5] == pytest.approx(0.0, abs=1e-12)
    else:  # removing an identity block does not change perplexity at all
        assert report.details["scores"][5] == pytest.approx(report.details["dense_ppl"], rel=1e-5)


def test_sleb_is_greedy_and_re_measures_after_each_removal():
    model = _tiny().model
    _make_identity(model, 5)
    _make_identity(model, 2)
    calib = _self_sampled(model)
    order, rounds, dense = sleb_order(model, calib, 3)
    # two identity blocks: both cost nothing, the lower index goes first, then the other
    assert order[:2] == [2, 5]
    assert [r["removed"] for r in rounds] == order and len(set(order)) == 3
    assert len(rounds[0]["ppl_without"]) == 8 and len(rounds[1]["ppl_without"]) == 7
    assert "2" not in rounds[1]["ppl_without"] and len(rounds[2]["ppl_without"]) == 6
    assert rounds[1]["ppl_after"] == pytest.approx(dense, rel=1e-5)
    # round 3 is measured on the model without blocks 2 and 5: it equals a fresh one-shot on that model
    from backend.pruning.layers import remove_layers

    pruned = copy.deepcopy(model)
    remove_layers(pruned, [2, 5])
    fresh, _ = ppl_without_each_block(pruned, calib)
    kept = [i for i in range(8) if i not in (2, 5)]
    assert [rounds[2]["ppl_without"][str(i)] for i in kept] == pytest.approx(fresh, rel=1e-5)
    assert order[2] == kept[min(range(6), key=lambda k: (fresh[k], k))]


def test_taylor_plus_never_removes_the_first_four_and_last_two_blocks():
    from backend.pruning.shortened_taylor import TaylorParams

    assert TaylorParams().aggregate == "weight"
    assert (TaylorParams().keep_first_layers, TaylorParams().keep_last_layers) == (4, 2)
    model = _tiny().model
    for index in (0, 7):  # identity blocks the plain rule would remove first
        _make_identity(model, index)
    calib = _self_sampled(model)
    plain = _prune("shortened-taylor", copy.deepcopy(model), sparsity=0.25, calibration=calib,
                   params=TaylorParams(keep_first_layers=0, keep_last_layers=0))
    assert plain.details["removed_layers"] == [0, 7]
    plus = _prune("shortened-taylor", model, sparsity=0.25, calibration=calib)
    assert plus.details["removed_layers"] == [4, 5]  # only blocks 4 and 5 may go in an 8-block model
    assert plus.details["scores"] == pytest.approx(plain.details["scores"])  # every block still scored
    assert (plus.details["keep_first_layers"], plus.details["keep_last_layers"]) == (4, 2)
    with pytest.raises(ValueError, match="leave"):  # 3 blocks cannot come out of the 2 the rule leaves
        _prune("shortened-taylor", _tiny().model, sparsity=0.375)


def test_taylor_aggregates_and_leaves_gradients_off():
    model = _tiny().model
    flags = [p.requires_grad for p in model.parameters()]
    block, _ = taylor_importance(model, _calibration(), "block")
    weight, loss = taylor_importance(model, _calibration(), "weight")
    assert len(block) == len(weight) == 8 and loss > 0
    assert all(w >= b - 1e-9 for b, w in zip(block, weight))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError):
        validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                         "pruning": {"method": "shortened-taylor", "sparsity": 0.25, "params": {"aggregate": "x"}}})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sparsity, message", [(0.05, "= 0 of 8 layers"), (0.99, "remove all 8 layers")])
def test_rejects_removing_no_layer_or_every_layer(method, sparsity, message):
    model = _tiny().model
    with pytest.raises(ValueError, match=message):
        _prune(method, model, sparsity=sparsity)
    assert len(get_decoder_layers(model)) == 8


@pytest.mark.parametrize("method", METHODS)
def test_needs_calibration_and_lets_cancel_propagate(method):
    model = _tiny().model
    with pytest.raises(ValueError, match="calibration"):
        get_method(method)().prune(model, 0.25, None, None, lambda f, t: None)

    def cancel(fraction, text):
        raise Cancelled()

    with pytest.raises(Cancelled):
        _prune(method, model, progress=cancel)
    assert len(get_decoder_layers(model)) == 8


@pytest.mark.slow
def test_smollm2_sleb_quarter_depth(smollm2, shared_data):
    model = copy.deepcopy(smollm2.model)
    calib = build_calibration(
        CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=2, seq_len=64),
        smollm2.tokenizer, shared_data,
    )
    start = time.perf_counter()
    report = _prune("sleb", model, sparsity=0.25, calibration=calib.tensor)
    elapsed = time.perf_counter() - start
    print(f"sleb smollm2 25%: {elapsed:.1f}s, removed {report.details['removal_order']}")
    assert len(get_decoder_layers(model)) == 22 == model.config.num_hidden_layers
    assert 0 not in report.details["removed_layers"]
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    _assert_cache_consistent(model, ids)


def test_structured_speed_figures_on_a_depth_pruned_tiny_model():
    from torch import nn

    from backend.structured_speed import decode_flops_per_token, speed_comparison

    loaded = _tiny()
    dense = loaded.model
    pruned = copy.deepcopy(dense)
    _prune("shortgpt", pruned)
    block = sum(m.weight.numel() for m in get_decoder_layers(dense)[0].modules() if isinstance(m, nn.Linear))
    head = dense.get_output_embeddings().weight.numel()
    assert decode_flops_per_token(dense) == 2 * (8 * block + head)
    assert decode_flops_per_token(pruned) == 2 * (6 * block + head)
    figures = speed_comparison(dense, pruned, loaded.tokenizer, loaded.device, new_tokens=4, repeats=1)
    assert figures["ideal_speedup"] == pytest.approx((8 * block + head) / (6 * block + head), abs=1e-4)
    assert figures["params_pruned"] < figures["params_dense"]
    assert figures["measured_speedup"] > 0 and len(figures["runs"]["dense"]) == 1
