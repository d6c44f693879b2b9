"""CUDA as a tested path (marked `gpu`, skipped without CUDA; `bench/gpu_check.sh` runs them).

For every registered method on the tiny models (configs: `bench/gpu_jobs.py`), against the same
config run on the CPU in float32 in this process (`PRUNEBOARD_WORKER_DEVICE=cpu`):

* CUDA, float32: the pruned structure matches. Parameter shapes (removed layers, widths, routers)
  and the removed layers are equal; every decoder matrix has the same number of zeros; zero masks
  agree exactly for magnitude (it reads the weights only) and on at least `MASK_AGREEMENT` of the
  weights otherwise (calibration statistics are sums whose order differs between devices, which can
  swap two near-equal scores); router skip ratios agree within `SKIP_TOLERANCE` (routers are trained
  by a few gradient steps, whose float order differs too).
* CUDA, bfloat16 (the default dtype there): the job succeeds through the queue and a worker, and
  each primary score is within `BF16_SCORE_TOLERANCE` of the CPU float32 score. The tiny models have
  random weights, so many multiple-choice options sit closer than bfloat16's resolution (3 significant
  digits) and a few of the 40 rows may flip.

And offloaded pruning (`backend.models.placement`) on CUDA: one block on the GPU at a time, the same
weights as the in-memory CUDA run, and an evaluation device map in the manifest.
"""
from __future__ import annotations

import pytest
import torch

from backend.pruning import list_methods

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

METHODS = sorted(cls.name for cls in list_methods())
MASK_AGREEMENT = 0.99
SKIP_TOLERANCE = 0.1
BF16_SCORE_TOLERANCE = 0.15
"""Absolute, per primary score: 6 of the 40 synthetic-mc rows."""


def _run(document: dict, monkeypatch, *, device: str, dtype: str | None = None) -> tuple[dict, object]:
    """(structure of the pruned model as evaluated, RunResult) of one pipeline run on `device`."""
    from backend.evaluation import harness as evaluation
    from backend.config import validate_config
    from backend.pipeline import run

    if device == "cpu":
        monkeypatch.setenv("PRUNEBOARD_WORKER_DEVICE", "cpu")
    else:
        monkeypatch.delenv("PRUNEBOARD_WORKER_DEVICE", raising=False)
    if dtype is not None:
        document = {**document, "model_args": {"dtype": dtype}}
    seen = {}
    real = evaluation.evaluate

    def evaluate(model, *args, **kwargs):
        seen["structure"] = structure(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    result = run(validate_config(document), lambda event: None)
    assert result.manifest["device"] == device
    return seen["structure"], result


def structure(model) -> dict:
    """Shapes of every parameter and the zero mask of every decoder matrix (on CPU)."""
    state = model.state_dict()
    return {"shapes": {name: tuple(t.shape) for name, t in state.items()},
            "masks": {name: (t == 0).cpu() for name, t in state.items() if t.dim() == 2 and ".layers." in name}}


_CPU_RUNS: dict[str, tuple[dict, object]] = {}


def cpu_reference(method: str, monkeypatch) -> tuple[dict, object]:
    """The CPU float32 run of `method`'s config (once per method and session)."""
    from bench.gpu_jobs import method_config

    if method not in _CPU_RUNS:
        _CPU_RUNS[method] = _run(method_config(method), monkeypatch, device="cpu")
    return _CPU_RUNS[method]


def _skip_ratios(report: dict) -> list[float]:
    layers = ((report.get("calibration_skip") or {}).get("per_layer")) or []
    return [value for row in layers for value in row.values() if value is not None]


@pytest.mark.parametrize("method", METHODS)
def test_cuda_float32_prunes_the_same_structure_as_the_cpu(method, monkeypatch):
    from bench.gpu_jobs import method_config

    cpu, cpu_result = cpu_reference(method, monkeypatch)
    cuda, cuda_result = _run(method_config(method), monkeypatch, device="cuda", dtype="float32")
    assert cuda["shapes"] == cpu["shapes"]
    assert cuda_result.prune_report.get("removed_layers") == cpu_result.prune_report.get("removed_layers")
    for name, mask in cpu["masks"].items():
        other = cuda["masks"][name]
        assert int(other.sum()) == int(mask.sum()), name
        agreement = float((other == mask).float().mean())
        assert agreement == 1.0 if method == "magnitude" else agreement >= MASK_AGREEMENT, (name, agreement)
    cpu_skips, cuda_skips = _skip_ratios(cpu_result.prune_report), _skip_ratios(cuda_result.prune_report)
    assert len(cuda_skips) == len(cpu_skips)
    assert all(abs(a - b) <= SKIP_TOLERANCE for a, b in zip(cuda_skips, cpu_skips)), (cuda_skips, cpu_skips)


@pytest.mark.parametrize("method", METHODS)
def test_cuda_bfloat16_job_succeeds_and_scores_agree_with_the_cpu(method, monkeypatch):
    from backend.config import validate_config
    from bench.gpu_jobs import method_config
    from db import queries
    from db.session import read_session
    from jobs import queue
    from jobs.worker import Worker

    _, cpu_result = cpu_reference(method, monkeypatch)
    monkeypatch.delenv("PRUNEBOARD_WORKER_DEVICE", raising=False)
    job, _ = queue.submit(validate_config(method_config(method)))
    Worker("gpu-test", poll_interval=0.1).run(drain=True, install_signals=False)
    with read_session() as session:
        detail = queries.job_detail(session, job.id)
    assert detail["state"] == "succeeded", (detail["error_type"], detail["error_message"], detail["log_tail"])
    assert detail["manifest"]["device"] == "cuda" and detail["manifest"]["dtype"] == "bfloat16"
    cpu_scores = {(s.task, s.metric): s.value for s in cpu_result.scores if s.primary}
    cuda_scores = {(s["task"], s["metric"]): s["value"] for s in detail["scores"] if s["primary"]}
    assert cuda_scores.keys() == cpu_scores.keys()
    for key, value in cpu_scores.items():
        assert abs(cuda_scores[key] - value) <= BF16_SCORE_TOLERANCE, (key, cuda_scores[key], value)


def test_offloaded_pruning_keeps_one_block_on_the_gpu_and_equals_the_in_memory_run():
    from backend.config import HFModelArgs
    from backend.models.loading import count_parameters, load_model, state_dict_sha256
    from backend.pruning import get_method
    from backend.pruning.layers import get_decoder_layers

    calibration = torch.randint(3, 250, (8, 64), generator=torch.Generator().manual_seed(0))
    whole = load_model("builtin:tiny-llama", HFModelArgs(dtype="float32"))
    assert next(whole.model.parameters()).device.type == "cuda"
    get_method("wanda")().prune(whole.model, 0.5, None, calibration, lambda f, t: None)

    offloaded = load_model("builtin:tiny-llama", HFModelArgs(dtype="float32"), offload=True)
    assert next(offloaded.model.parameters()).device.type == "cpu"
    layers = get_decoder_layers(offloaded.model)
    moves: list[tuple[str, int]] = []

    def moved(index: int, where: str) -> None:  # called before a block goes up and after it came back
        on_gpu = sum(next(layer.parameters()).device.type == "cuda" for layer in layers)
        moves.append((where.split(":")[0], on_gpu))

    torch.cuda.reset_peak_memory_stats()
    get_method("wanda")().prune(offloaded.model, 0.5, None, calibration, lambda f, t: None, on_move=moved)
    assert moves == [("to", 0), ("from", 0)] * len(layers)  # one block up at a time, none left behind
    model_bytes = count_parameters(offloaded.model) * 4
    assert torch.cuda.max_memory_allocated() < model_bytes / 2
    assert all(p.device.type == "cpu" for p in offloaded.model.parameters())
    assert state_dict_sha256(offloaded.model) == state_dict_sha256(whole.model)


def test_an_offloaded_run_is_spread_for_evaluation_and_scores_as_the_in_memory_run(monkeypatch):
    from bench.gpu_jobs import method_config

    document = method_config("wanda")
    monkeypatch.setenv("PRUNEBOARD_OFFLOAD", "never")
    whole_structure, whole = _run(document, monkeypatch, device="cuda", dtype="float32")
    monkeypatch.setenv("PRUNEBOARD_OFFLOAD", "always")
    offloaded_structure, offloaded = _run(document, monkeypatch, device="cuda", dtype="float32")
    record = offloaded.manifest["placement"]
    assert record["offload"] and any(str(d).startswith("cuda") for d in record["evaluation_device_map"].values())
    assert all(bool((a == b).all()) for a, b in zip(offloaded_structure["masks"].values(),
                                                    whole_structure["masks"].values()))
    assert [(s.metric, s.value) for s in offloaded.scores] == [(s.metric, s.value) for s in whole.scores]
