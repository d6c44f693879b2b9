"""The structured methods' exports pick what an independent reference implementation picks.

`tests/reference_structured.py` re-derives each selection rule the slow, obvious way (full forwards,
one autograd call, hooks), for the faithful defaults and for the earlier variants kept as params.
tiny-llama goes through the real `python -m jobs prune CONFIG --out DIR` (in-process
`jobs.cli.main`) and the exported directory is read back: which original blocks, head groups and MLP
channels survive is recovered by matching the saved weights to the dense ones, not from the report. SmolLM2 (slow) checks every method on a small WikiText-2 calibration in process and
one example config through the CLI. Scores computed in another order (batched vs one batch) may
differ in the last float bits, so a pick may differ from the reference only among units whose
reference scores tie with the boundary to 1e-4 relative.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

import reference_structured as ref
from backend.calibration.build import build_calibration
from backend.config import CalibrationConfig, HFModelArgs, validate_config
from backend.models.loading import load_model
from backend.pruning import get_method

ROOT = Path(__file__).resolve().parent.parent
TIES = 1e-4


def assert_same_pick(picked: list[int], scores: list[float], count: int, what: str) -> None:
    """`picked` are the `count` lowest `scores`, up to units tied with the boundary within TIES."""
    expected = ref.lowest(scores, count)
    assert len(picked) == count, f"{what}: picked {len(picked)}, expected {count}"
    if sorted(picked) == expected:
        return
    boundary = max(scores[i] for i in expected)
    differ = set(picked) ^ set(expected)
    assert all(abs(scores[i] - boundary) <= TIES * abs(boundary) for i in differ), \
        f"{what}: picked {sorted(picked)}, reference {expected} (scores {[scores[i] for i in sorted(differ)]})"


def export(tmp_path: Path, config: dict) -> tuple[Path, dict]:
    """Run `python -m jobs prune` (its main, in process) and return (DIR, its manifest)."""
    from jobs.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["prune", str(path), "--out", str(out)]) == 0
    return out, json.loads((out / "pruneboard_manifest.json").read_text())


def calibration_of(config: dict, loaded, manifest: dict) -> torch.Tensor:
    """The export's calibration tokens, rebuilt (same sha256 as the manifest records)."""
    from common import settings

    cfg = validate_config(config)
    data = build_calibration(cfg.calibration, loaded.tokenizer, settings.data_dir(),
                             model=loaded.model, fingerprint=loaded.fingerprint, paradigm=cfg.paradigm)
    assert data.sha256 == manifest["calibration"]["sha256"]
    return data.tensor


def surviving_blocks(dense: torch.nn.Module, pruned: torch.nn.Module) -> list[int]:
    """Original index of each block of `pruned` (its q_proj weight equals that dense block's)."""
    index = {layer.self_attn.q_proj.weight.detach().numpy().tobytes(): i for i, layer in enumerate(dense.model.layers)}
    return [index[layer.self_attn.q_proj.weight.detach().numpy().tobytes()] for layer in pruned.model.layers]


def width_removals(dense: torch.nn.Module, pruned: torch.nn.Module) -> tuple[dict, dict]:
    """Per layer: removed head groups (matched by k_proj rows) and MLP channels (gate_proj rows)."""
    shapes = ref._shapes(dense)
    groups, channels = {}, {}
    for i, (d, p) in enumerate(zip(dense.model.layers, pruned.model.layers)):
        kept_groups = ref.kept_rows(d.self_attn.k_proj.weight.detach(), p.self_attn.k_proj.weight.detach(),
                                    shapes["head_dim"])
        kept_channels = ref.kept_rows(d.mlp.gate_proj.weight.detach(), p.mlp.gate_proj.weight.detach())
        assert kept_groups == sorted(kept_groups) and kept_channels == sorted(kept_channels)
        groups[i] = [g for g in range(shapes["groups"]) if g not in kept_groups]
        channels[i] = [c for c in range(shapes["channels"]) if c not in kept_channels]
    return groups, channels


def tiny_config(method: str, sparsity: float = 0.25, **params) -> dict:
    return {"model": "builtin:tiny-llama", "model_args": {"dtype": "float32"},
            "pruning": {"method": method, "sparsity": sparsity, **({"params": params} if params else {})},
            "calibration": {"source": "synthetic", "num_samples": 4, "seq_len": 32, "seed": 0},
            "tasks": ["synthetic-mc"], "seed": 0}


def dense_tiny():
    return load_model("builtin:tiny-llama", HFModelArgs(dtype="float32"))


# --- checks shared by tiny-llama (exports) and SmolLM2 (in process) -------------------------------------


def check_depth(method: str, dense, pruned, calib: torch.Tensor, count: int, details: dict, params: dict) -> None:
    """`params` as in the config: a missing one is at the faithful default."""
    removed = sorted(set(range(len(dense.model.layers))) - set(surviving_blocks(dense, pruned)))
    assert removed == details["removed_layers"] and len(removed) == count
    if method == "shortgpt":
        scores = ref.shortgpt_scores(dense, calib, params.get("last_block_output", "final-norm"))
        assert details["scores"] == pytest.approx(scores, rel=1e-4, abs=1e-7)
        assert_same_pick(removed, scores, count, method)
    elif method == "shortened-ppl":
        scores = ref.ppl_without_each(dense, calib, params.get("loss_stride", 1))
        assert details["scores"] == pytest.approx(scores, rel=1e-4)
        assert_same_pick(removed, scores, count, method)
    elif method == "sleb":
        order = ref.sleb_order(dense, calib, count, params.get("loss_stride", 1))
        assert details["removal_order"] == order
    elif method == "shortened-taylor":
        scores = ref.taylor_block_scores(dense, calib, params.get("aggregate", "weight"))
        assert details["scores"] == pytest.approx(scores, rel=1e-3, abs=1e-9)
        keep = (params.get("keep_first_layers", 4), params.get("keep_last_layers", 2))
        expected = ref.taylor_plus_removed(scores, count, *keep)
        if removed != expected:  # a near-tie at the boundary, among the blocks the rule leaves
            candidates = [i for i in range(len(scores)) if keep[0] <= i < len(scores) - keep[1]]
            assert set(removed) <= set(candidates), f"{method}: removed a kept block ({removed})"
            assert_same_pick([candidates.index(i) for i in removed], [scores[i] for i in candidates], count, method)
    else:
        raise AssertionError(method)


def check_flap(dense, pruned, calib: torch.Tensor, sparsity: float, standardize: str = "per-layer") -> None:
    plan = ref.flap_plan(dense, calib, sparsity, standardize=standardize)
    groups, channels = width_removals(dense, pruned)
    assert {i: g for i, g in groups.items() if g} == plan["groups"]
    assert {i: c for i, c in channels.items() if c} == plan["channels"]
    for i, layer in enumerate(pruned.model.layers):
        for name, module, expected in (("o_proj", layer.self_attn.o_proj, plan["o_bias"].get(i)),
                                       ("down_proj", layer.mlp.down_proj, plan["down_bias"].get(i))):
            if expected is None:
                assert module.bias is None or not module.bias.any(), f"layer {i} {name}"
            else:
                torch.testing.assert_close(module.bias.double(), expected, rtol=1e-4, atol=1e-5)


def check_llm_pruner(dense, pruned, calib: torch.Tensor, sparsity: float, params: dict) -> None:
    """Per-layer scope; `params` as in the config (missing: the faithful defaults, element1 and the
    LLaMA recipe's layer range, first 4 and last 2 kept)."""
    total = len(dense.model.layers)
    layers = list(range(params.get("keep_first_layers", 4), total - params.get("keep_last_layers", 2)))
    heads, channels = ref.llm_pruner_importance(dense, calib, params.get("importance", "element1"), layers)
    head_count, channel_counts = ref.llm_pruner_per_layer_counts(dense, sparsity, len(layers))
    groups, removed_channels = width_removals(dense, pruned)
    for i in range(total):
        if i not in layers:
            assert groups[i] == [] and removed_channels[i] == [], f"llm-pruner pruned kept layer {i}"
            continue
        k = layers.index(i)
        assert_same_pick(groups[i], heads[k], head_count, f"llm-pruner layer {i} head groups")
        assert_same_pick(removed_channels[i], channels[k], channel_counts[k], f"llm-pruner layer {i} channels")


def check_llm_pruner_global(dense, pruned, calib: torch.Tensor, sparsity: float, importance: str) -> None:
    """Global scope over every layer: the lowest head groups / channels across all layers, each layer's most
    important one kept, and the removed parameters within half an MLP channel of round(sparsity x block
    parameters)."""
    heads, channels = ref.llm_pruner_importance(dense, calib, importance)
    head_total, channel_total = ref.llm_pruner_global_counts(dense, sparsity)
    groups, removed_channels = width_removals(dense, pruned)
    for what, scores, removed, total in (("head groups", heads, groups, head_total),
                                         ("channels", channels, removed_channels, channel_total)):
        candidates = ref.global_candidates(scores)
        position = {unit: n for n, unit in enumerate(candidates)}
        picked = [(layer, unit) for layer, units in removed.items() for unit in units]
        assert all(unit in position for unit in picked), \
            f"llm-pruner global {what}: removed a layer's most important unit ({sorted(set(picked) - set(position))})"
        assert_same_pick([position[unit] for unit in picked], [scores[layer][i] for layer, i in candidates], total,
                         f"llm-pruner global {what}")
    target = round(sparsity * ref.block_param_count(dense))
    removed_params = ref.block_param_count(dense) - ref.block_param_count(pruned)
    assert abs(removed_params - target) <= ref._shapes(dense)["channel_cost"] / 2


def check_slicegpt(dense, pruned, calib: torch.Tensor, sparsity: float, probe: torch.Tensor, atol: float) -> None:
    reference = ref.ProjectedModel(dense, calib, sparsity)
    want = reference.logits(probe)
    with torch.no_grad():
        got = pruned(input_ids=probe, use_cache=False).logits.double()
        dense_logits = dense(input_ids=probe, use_cache=False).logits.double()
    assert pruned.model.embed_tokens.weight.shape[1] == reference.dim
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
    assert float((dense_logits - want).abs().max()) > 20 * atol  # slicing really changed the function


# --- tiny-llama, through `python -m jobs prune` ----------------------------------------------------------


@pytest.mark.parametrize("method, params", [
    ("shortgpt", {}), ("shortgpt", {"last_block_output": "raw"}),
    ("sleb", {}), ("sleb", {"loss_stride": 4}),
    ("shortened-ppl", {}), ("shortened-ppl", {"loss_stride": 3}),
    ("shortened-taylor", {"keep_first_layers": 2, "keep_last_layers": 1}),  # Taylor+'s 4 and 2 leave 2 of 8 blocks
    ("shortened-taylor", {"aggregate": "block", "keep_first_layers": 0, "keep_last_layers": 0}),
])
def test_tiny_depth_export_matches_reference(method, params, tmp_path):
    from transformers import AutoModelForCausalLM

    config = tiny_config(method, 0.375, **params)
    out, manifest = export(tmp_path, config)
    dense = dense_tiny()
    calib = calibration_of(config, dense, manifest)
    pruned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    check_depth(method, dense.model, pruned, calib, 3, manifest["prune_report"], params)


@pytest.mark.parametrize("standardize", ["per-layer", "per-module-type"])
def test_tiny_flap_export_matches_reference(standardize, tmp_path):
    from backend.models.loading import load_pruned

    config = tiny_config("flap", 0.3, standardize=standardize)
    out, manifest = export(tmp_path, config)
    dense = dense_tiny()
    check_flap(dense.model, load_pruned(out), calibration_of(config, dense, manifest), 0.3, standardize)


@pytest.mark.parametrize("params", [
    {"keep_first_layers": 2, "keep_last_layers": 1},  # element1; the recipe's 4 and 2 leave 2 of 8 layers
    {"keep_first_layers": 2, "keep_last_layers": 1, "importance": "element2"},
    {"keep_first_layers": 0, "keep_last_layers": 0, "importance": "vector"},
    {"keep_first_layers": 0, "keep_last_layers": 0, "importance": "whole-group"},
])
def test_tiny_llm_pruner_export_matches_reference(params, tmp_path):
    from backend.models.loading import load_pruned

    sparsity = 0.2 if params["keep_first_layers"] else 0.3
    config = tiny_config("llm-pruner", sparsity, **params)
    out, manifest = export(tmp_path, config)
    dense = dense_tiny()
    check_llm_pruner(dense.model, load_pruned(out), calibration_of(config, dense, manifest), sparsity, params)


@pytest.mark.parametrize("importance", ["element1", "whole-group"])
def test_tiny_llm_pruner_global_export_matches_reference(importance, tmp_path):
    from backend.models.loading import load_pruned

    config = tiny_config("llm-pruner", 0.3, scope="global", importance=importance, keep_first_layers=0,
                         keep_last_layers=0)
    out, manifest = export(tmp_path, config)
    dense = dense_tiny()
    calib = calibration_of(config, dense, manifest)
    heads, _ = ref.llm_pruner_importance(dense.model, calib, importance)
    reported = [x for row in manifest["prune_report"]["head_importance"] for x in row]
    assert reported == pytest.approx([x for row in heads for x in row], rel=1e-3, abs=1e-8)
    # the per-layer minimum must matter here: unconstrained, the lowest head groups would empty a layer
    head_total, _ = ref.llm_pruner_global_counts(dense.model, 0.3)
    flat = [(layer, g) for layer, row in enumerate(heads) for g in range(len(row))]
    unconstrained = [flat[n] for n in ref.lowest([heads[layer][g] for layer, g in flat], head_total)]
    assert any(sum(layer == i for layer, _ in unconstrained) == len(heads[i]) for i in range(len(heads)))
    check_llm_pruner_global(dense.model, load_pruned(out), calib, 0.3, importance)


@pytest.mark.parametrize("sparsity", [0.0, 0.25])
def test_tiny_slicegpt_export_matches_reference(sparsity, tmp_path):
    from backend.pruning.slicegpt import load_sliced_model

    config = tiny_config("slicegpt", sparsity)
    out, manifest = export(tmp_path, config)
    dense = dense_tiny()
    calib = calibration_of(config, dense, manifest)
    probe = torch.randint(3, 250, (2, 20), generator=torch.Generator().manual_seed(7))
    if sparsity == 0.0:
        reference = ref.ProjectedModel(dense.model, calib, 0.0)
        with torch.no_grad():
            torch.testing.assert_close(load_sliced_model(out)(probe).logits.double(), reference.logits(probe),
                                       rtol=0, atol=1e-4)
        return
    check_slicegpt(dense.model, load_sliced_model(out), calib, sparsity, probe, atol=1e-3)


# --- SmolLM2-135M ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_calibration(smollm2, shared_data):
    cfg = CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=2, seq_len=64, seed=0)
    return build_calibration(cfg, smollm2.tokenizer, shared_data).tensor


@pytest.mark.slow
@pytest.mark.parametrize("method, sparsity", [("shortgpt", 0.25), ("shortened-ppl", 0.25), ("sleb", 0.1),
                                              ("shortened-taylor", 0.25)])
def test_smollm2_depth_matches_reference(method, sparsity, smollm2, smollm2_calibration):
    """The faithful defaults (ShortGPT's last block after the final norm, SLEB on every prediction,
    Taylor+) at CI size; bench/fidelity_smollm2.py runs the study's calibration size."""
    pruned = copy.deepcopy(smollm2.model)
    report = get_method(method)().prune(pruned, sparsity, None, smollm2_calibration, lambda f, t: None)
    check_depth(method, smollm2.model, pruned, smollm2_calibration, round(sparsity * 30), report.details, {})


@pytest.mark.slow
def test_smollm2_flap_matches_reference(smollm2, smollm2_calibration):
    pruned = copy.deepcopy(smollm2.model)
    get_method("flap")().prune(pruned, 0.25, None, smollm2_calibration, lambda f, t: None)
    check_flap(smollm2.model, pruned, smollm2_calibration, 0.25)


@pytest.mark.slow
def test_smollm2_llm_pruner_matches_reference(smollm2, smollm2_calibration):
    pruned = copy.deepcopy(smollm2.model)
    get_method("llm-pruner")().prune(pruned, 0.25, None, smollm2_calibration, lambda f, t: None)
    check_llm_pruner(smollm2.model, pruned, smollm2_calibration, 0.25, {})


@pytest.mark.slow
def test_smollm2_slicegpt_matches_reference(smollm2, shared_data):
    # PCA needs well over D = 576 tokens: with fewer, the kept subspace is partly arbitrary (a null space)
    cfg = CalibrationConfig(source="text", path="wikitext2/valid.txt", num_samples=16, seq_len=128, seed=0)
    calib = build_calibration(cfg, smollm2.tokenizer, shared_data).tensor
    pruned = copy.deepcopy(smollm2.model)
    get_method("slicegpt")().prune(pruned, 0.25, None, calib, lambda f, t: None)
    probe = smollm2.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    check_slicegpt(smollm2.model, pruned, calib, 0.25, probe, atol=5e-2)


@pytest.mark.slow
def test_smollm2_shortgpt_example_export_matches_reference(smollm2, tmp_path):
    """examples/smollm2-shortgpt.yaml through the CLI, its calibration cut to CI size (4 x 128)."""
    from transformers import AutoModelForCausalLM

    config = yaml.safe_load((ROOT / "examples" / "smollm2-shortgpt.yaml").read_text())
    config["calibration"].update(num_samples=4, seq_len=128)
    out, manifest = export(tmp_path, config)
    calib = calibration_of(config, smollm2, manifest)
    pruned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    check_depth("shortgpt", smollm2.model, pruned, calib, 8, manifest["prune_report"],
                config["pruning"].get("params", {}))
