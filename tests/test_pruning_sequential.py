"""The layer-by-layer driver: replays the decoder exactly, one block on the target device at a time."""
from __future__ import annotations

import pytest
import torch

from backend.models.loading import load_model
from backend.pruning import get_method
from backend.pruning.sequential import HessianStats, InputNormStats, replay_layers


def calibration(num_samples=6, seq_len=24, seed=0):
    return torch.randint(3, 259, (num_samples, seq_len), generator=torch.Generator().manual_seed(seed))


def _assert_one_block_at_a_time(moves, layers, target):
    on_target: set[int] = set()
    for index, move in moves:
        if move == f"to:{target}":
            assert not on_target, f"block {index} moved while {on_target} still on {target}"
            on_target.add(index)
        else:
            assert move == f"from:{target}" and on_target == {index}
            on_target.clear()
    assert [i for i, move in moves if move.startswith("to:")] == list(range(layers))
    assert not on_target


def test_stats_are_running_means():
    x = torch.randn(3, 5, 4)
    norms, hessian = InputNormStats(4, "cpu"), HessianStats(4, "cpu")
    for part in x.split(1):
        norms.add(part)
        hessian.add(part)
    flat = x.reshape(-1, 4)
    torch.testing.assert_close(norms.norms(), flat.pow(2).mean(0).sqrt())
    torch.testing.assert_close(hessian.hessian, 2 * flat.t() @ flat / 15)


@pytest.mark.parametrize("model_id", ["builtin:tiny-llama", "builtin:tiny-qwen3"])
def test_replay_matches_the_full_forward(model_id):
    model = load_model(model_id).model
    calib = calibration()
    with torch.no_grad():
        expected = model(calib, output_hidden_states=True).hidden_states
    outputs, counts = [], []

    def look(ctx):
        outputs.append(torch.cat(ctx.outputs))
        counts.append({name: s.count for name, s in ctx.stats.items()})
        return False

    replay_layers(model, calib, lambda lin: InputNormStats(lin.in_features, "cpu"), look, batch_size=4)
    for i in range(7):  # hidden_states[-1] has the final norm applied
        torch.testing.assert_close(outputs[i], expected[i + 1], rtol=1e-4, atol=1e-4)
    assert all(c == calib.numel() for layer in counts for c in layer.values()) and len(counts[0]) == 7


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_block_on_the_target_device_at_a_time_cpu(method):
    model = load_model("builtin:tiny-llama").model
    moves: list[tuple[int, str]] = []
    cls = get_method(method)
    cls().prune(model, 0.5, cls.Params(), calibration(), lambda f, t: None, device="cpu",
                on_move=lambda i, move: moves.append((i, move)))
    _assert_one_block_at_a_time(moves, 8, torch.device("cpu"))


def test_allocation_pass_also_moves_one_block_at_a_time():
    model = load_model("builtin:tiny-llama").model
    moves: list[tuple[int, str]] = []
    cls = get_method("wanda")
    cls().prune(model, 0.5, cls.Params(allocation="owl"), calibration(), lambda f, t: None, device="cpu",
                on_move=lambda i, move: moves.append((i, move)))
    assert len(moves) == 2 * 2 * 8  # the outlier pass, then the pruning pass
    _assert_one_block_at_a_time(moves[:16], 8, torch.device("cpu"))
    _assert_one_block_at_a_time(moves[16:], 8, torch.device("cpu"))


def test_pruned_outputs_feed_the_next_block():
    """Block 1 collects its statistics from block 0 as pruned, not from the dense block 0."""
    model = load_model("builtin:tiny-llama").model
    calib = calibration()
    seen = []

    def prune_first(ctx):
        seen.append(ctx.stats["mlp.down_proj"].sq.clone())
        if ctx.index == 0:
            with torch.no_grad():
                ctx.layer.mlp.down_proj.weight.zero_()
                ctx.layer.self_attn.o_proj.weight.zero_()
            return True
        return False

    replay_layers(model, calib, lambda lin: InputNormStats(lin.in_features, "cpu"), prune_first)
    dense = load_model("builtin:tiny-llama").model
    dense_seen = []
    replay_layers(dense, calib, lambda lin: InputNormStats(lin.in_features, "cpu"),
                  lambda ctx: dense_seen.append(ctx.stats["mlp.down_proj"].sq.clone()) or False)
    torch.testing.assert_close(seen[0], dense_seen[0])
    assert not torch.allclose(seen[1], dense_seen[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_block_on_cuda_at_a_time(method):
    from backend.pruning.layers import get_decoder_layers

    model = load_model("builtin:tiny-qwen3").model.to("cpu").float()
    layers = get_decoder_layers(model)
    moves: list[tuple[int, str]] = []

    def on_move(index, move):
        moves.append((index, move))
        on_cuda = [i for i, layer in enumerate(layers) if next(layer.parameters()).is_cuda]
        assert len(on_cuda) <= 1, on_cuda

    cls = get_method(method)
    report = cls().prune(model, 0.5, cls.Params(), calibration(), lambda f, t: None, device="cuda",
                         on_move=on_move)
    _assert_one_block_at_a_time(moves, 8, torch.device("cuda"))
    assert all(not p.is_cuda for p in model.parameters())
    assert report.achieved_sparsity == 0.5


def _tiny_arch(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type, num_hidden_layers=3, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=300, max_position_embeddings=256)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "gemma"])
def test_other_architectures_replay_and_prune(model_type):
    model = _tiny_arch(model_type)
    calib = calibration(num_samples=4, seq_len=16)
    with torch.no_grad():
        expected = model(calib, output_hidden_states=True).hidden_states
    outputs = []
    replay_layers(model, calib, None, lambda ctx: outputs.append(torch.cat(ctx.outputs)) or False)
    for i in range(2):
        torch.testing.assert_close(outputs[i], expected[i + 1], rtol=1e-4, atol=1e-4)
    cls = get_method("sparsegpt")
    report = cls().prune(model, 0.5, cls.Params(pattern="2:4"), calib, lambda f, t: None)
    assert report.achieved_sparsity == 0.5 and len(report.details["layer_sparsity"]) == 3
