"""SmolLM2-135M through the queue: every structured method at 25 % lands in the leaderboard, and LoRA
recovery of a width-pruned model lowers its calibration loss with the curve stored in the database.

CI-sized: 4 x 128 calibration tokens (2 x 64 for SLEB and Shortened-PPL, whose cost grows with the
square of the layer count) and 20 synthetic-mc questions per run; the examples use 32 x 512 / 8 x 256.
"""
from __future__ import annotations

import pytest

from backend.config import validate_config
from db.session import dispose_engines, read_session
from jobs import queue
from db.states import JobState
from jobs.worker import Worker

MODEL = "builtin:smollm2-135m-instruct"
DEPTH = ["shortgpt", "sleb", "shortened-ppl", "shortened-taylor"]
WIDTH = ["llm-pruner", "flap", "slicegpt"]


@pytest.fixture(autouse=True)
def _queue_env(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_AUTO_BASELINES", "0")  # the dense run is submitted here, explicitly
    yield
    dispose_engines()


def _config(method: str, sparsity: float | None = 0.25, samples: int = 4, seq_len: int = 128, **extra) -> dict:
    config = {"model": MODEL, "paradigm": "instruct", "pruning": {"method": method},
              "tasks": [{"name": "synthetic-mc", "limit": 20}], "seed": 0, **extra}
    if sparsity is not None:
        config["pruning"]["sparsity"] = sparsity
        config["calibration"] = {"source": "text", "path": "wikitext2/valid.txt", "num_samples": samples,
                                 "seq_len": seq_len, "seed": 0}
    return config


def _run_all(configs: list[dict]) -> dict[int, dict]:
    from db.queries import job_detail

    ids = [queue.submit(validate_config(c))[0].id for c in configs]
    assert Worker("structured-test").run(drain=True) == len(ids)
    with read_session() as session:
        details = {job_id: job_detail(session, job_id) for job_id in ids}
    failed = {d["id"]: (d["state"], d["log_tail"]) for d in details.values() if d["state"] != JobState.SUCCEEDED.value}
    assert not failed, failed
    return details


@pytest.mark.slow
def test_every_structured_method_runs_through_the_queue_into_the_leaderboard(smollm2, shared_data):
    from db.leaderboard import board

    configs = [_config("dense", None)] + [
        _config(m, samples=2, seq_len=64) if m in ("sleb", "shortened-ppl") else _config(m) for m in DEPTH + WIDTH
    ]
    details = _run_all(configs)
    by_method = {d["method"]: d for d in details.values()}
    dense_params = by_method["dense"]["prune_report"]["params_after"]
    for method in DEPTH:
        report = by_method[method]["prune_report"]
        assert len(report["removed_layers"]) == 8 and report["layers_after"] == 22, method
        assert report["params_after"] < dense_params
    for method in WIDTH:
        report = by_method[method]["prune_report"]
        assert report["params_after"] < dense_params, method
    assert by_method["slicegpt"]["prune_report"]["hidden_size_after"] == 432

    with read_session() as session:
        frame = board(session).frame
    rows = frame.set_index("method")
    assert set(rows.index) == {"dense", *DEPTH, *WIDTH}
    assert {m: rows.loc[m, "family"] for m in DEPTH + WIDTH} == {
        **{m: "depth" for m in DEPTH}, **{m: "width" for m in WIDTH}}
    assert set(frame["job_id"]) == set(details)
    assert frame["synthetic-mc"].notna().all()


@pytest.mark.slow
def test_lora_recovery_of_a_width_pruned_model_lowers_the_loss_and_stores_the_curve(smollm2, shared_data):
    # two windows, batch 2: every step trains on the same batch, so the curve is comparable step to step
    recovery = {"data": "text", "path": "wikitext2/valid.txt", "num_samples": 2, "seq_len": 64,
                "batch_size": 2, "steps": 6, "learning_rate": 1e-3, "rank": 8, "alpha": 16, "seed": 0}
    (detail,) = _run_all([_config("llm-pruner", recovery=recovery)]).values()

    stored = detail["prune_report"]["recovery"]
    assert detail["manifest"]["recovery"] == stored
    losses = stored["losses"]
    assert len(losses) == 6 and stored["steps"] == 6 and stored["merged"] is True
    assert losses[-1] < losses[0]
    assert stored["loss_after"] < stored["loss_before"]
    assert stored["params_after"] == stored["params_before"] == detail["prune_report"]["params_after"]
