"""The efficiency probe (backend.efficiency): LLM-Perf-style repeated timing with medians and spread,
settings, the dense reference measured side by side by the pipeline, and the legacy probe version."""
from __future__ import annotations

import pytest

from common import settings
from backend.efficiency import (
    PROBE_VERSION,
    ProbeSettings,
    measure_speed,
    probe_version,
    summarize,
    with_dense_reference,
)


def test_defaults_are_llm_perf_like_and_settings_override_them(monkeypatch):
    for name in ("ITERATIONS", "MIN_SECONDS", "PROMPT_TOKENS", "NEW_TOKENS"):
        monkeypatch.delenv(f"PRUNEBOARD_EFFICIENCY_{name}")
    assert ProbeSettings.from_settings() == ProbeSettings(prompt_tokens=256, new_tokens=64, min_iterations=10,
                                                          min_seconds=10.0)
    monkeypatch.setenv("PRUNEBOARD_EFFICIENCY_ITERATIONS", "3")
    monkeypatch.setenv("PRUNEBOARD_EFFICIENCY_MIN_SECONDS", "0.5")
    monkeypatch.setenv("PRUNEBOARD_EFFICIENCY_PROMPT_TOKENS", "17")
    monkeypatch.setenv("PRUNEBOARD_EFFICIENCY_NEW_TOKENS", "5")
    assert ProbeSettings.from_settings() == ProbeSettings(17, 5, 3, 0.5)
    assert settings.efficiency_dense_reference()
    monkeypatch.setenv("PRUNEBOARD_EFFICIENCY_DENSE", "0")
    assert not settings.efficiency_dense_reference()


def test_summary_is_the_median_with_quartiles_and_extremes():
    assert summarize([5.0, 1.0, 3.0, 2.0, 4.0]) == {"median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 5.0,
                                                   "n": 5}
    assert summarize([7.0]) == {"median": 7.0, "q1": 7.0, "q3": 7.0, "min": 7.0, "max": 7.0, "n": 1}


def test_each_figure_has_the_minimum_iterations_and_seconds():
    from backend.models.loading import load_model

    loaded = load_model("builtin:tiny-llama")
    probe = ProbeSettings(prompt_tokens=16, new_tokens=4, min_iterations=3, min_seconds=0.25)
    speed = measure_speed(loaded.model, loaded.tokenizer, loaded.device, probe)
    assert speed["probe"]["prompt_tokens"] == 16 and speed["probe"]["new_tokens"] == 4
    for figure in ("prefill_tokens_per_s", "latency_ms_first_token", "decode_tokens_per_s",
                   "decode_latency_ms_per_token"):
        spread = speed["spread"][figure]
        assert spread["n"] >= 3 and spread["seconds"] >= 0.25, figure
        assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
        assert speed[figure] == spread["median"]
    assert speed["spread"]["decode_tokens_per_s"]["n"] == speed["probe"]["iterations"]["decode"]
    # one iteration's figures describe the same timing: tokens/s x ms/token = 1000
    assert speed["decode_tokens_per_s"] * speed["decode_latency_ms_per_token"] == pytest.approx(1000, rel=1e-3)
    assert speed["peak_memory_mb"] > 0


def test_speedup_is_a_ratio_of_medians_with_a_quartile_range():
    def speed(decode: dict, prefill: dict) -> dict:
        return {"spread": {"decode_tokens_per_s": decode, "prefill_tokens_per_s": prefill}}

    pruned = speed({"median": 30.0, "q1": 28.0, "q3": 33.0}, {"median": 500.0, "q1": 480.0, "q3": 510.0})
    dense = speed({"median": 20.0, "q1": 19.0, "q3": 22.0}, {"median": 400.0, "q1": 390.0, "q3": 420.0})
    out = with_dense_reference({**pruned, "decode_tokens_per_s": 30.0}, dense)
    assert out["measured_speedup"] == 1.5
    assert out["measured_speedup_range"] == [round(28 / 22, 4), round(33 / 19, 4)]
    assert out["prefill_speedup"] == 1.25
    assert out["dense_reference"]["spread"] == dense["spread"] and "same process" in out["dense_reference"]["measured"]


def test_records_without_a_version_are_the_legacy_probe():
    assert probe_version({"decode_tokens_per_s": 40.0}) == 1
    assert probe_version(None) == 1
    assert probe_version({"probe_version": PROBE_VERSION}) == 2


def _run(method: str, sparsity: float):
    from backend.config import validate_config
    from backend.pipeline import run

    config = validate_config({"model": "builtin:tiny-llama", "tasks": [{"name": "synthetic-mc", "limit": 4}],
                              "pruning": {"method": method, "sparsity": sparsity}})
    return run(config, lambda event: None)


def test_a_pruned_run_measures_the_dense_model_side_by_side(monkeypatch):
    from backend.models import loading as models
    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    pruned = _run("magnitude", 0.5).efficiency
    assert loads == ["builtin:tiny-llama", "builtin:tiny-llama"]  # the run's model, then the dense reference
    assert pruned["probe_version"] == PROBE_VERSION and pruned["linear_sparsity"] == pytest.approx(0.5, abs=0.01)
    reference = pruned["dense_reference"]
    assert reference["probe"] == pruned["probe"]
    decode, dense_decode = pruned["spread"]["decode_tokens_per_s"], reference["spread"]["decode_tokens_per_s"]
    assert pruned["measured_speedup"] == pytest.approx(decode["median"] / dense_decode["median"], abs=1e-4)
    low, high = pruned["measured_speedup_range"]
    assert low <= pruned["measured_speedup"] <= high

    dense = _run("dense", 0.0).efficiency
    assert "dense_reference" not in dense and "measured_speedup" not in dense


def test_the_dense_reference_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_EFFICIENCY_DENSE", "0")
    efficiency = _run("magnitude", 0.5).efficiency
    assert "dense_reference" not in efficiency and efficiency["spread"]["decode_tokens_per_s"]["n"] == 2


def test_run_detail_shows_medians_with_spread_and_the_older_probe_without():
    from backend.config import validate_config
    from backend.result import RunResult
    from jobs import queue
    from ui.board import run_detail

    def stored(efficiency: dict) -> int:
        config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                                  "pruning": {"method": "magnitude", "sparsity": 0.5}})
        job, _ = queue.submit(config, force=True)
        claimed = queue.claim_next("w")
        assert queue.complete(job.id, claimed.attempts, RunResult([], [], efficiency, {}, {}))
        return job.id

    figure = {"median": 31.25, "q1": 30.0, "q3": 32.5, "min": 29.0, "max": 33.0, "n": 12, "seconds": 10.4}
    dense = {**figure, "median": 20.0, "q1": 19.5, "q3": 21.0}
    new = stored({"probe_version": 2, "decode_tokens_per_s": 31.25, "spread": {"decode_tokens_per_s": figure},
                  "probe": {"min_iterations": 10, "min_seconds": 10.0, "prompt_tokens": 256, "new_tokens": 64},
                  "dense_reference": {"decode_tokens_per_s": 20.0, "spread": {"decode_tokens_per_s": dense}},
                  "measured_speedup": 1.5625, "measured_speedup_range": [1.4286, 1.6667],
                  "peak_memory_mb": 812.5, "device_name": "<b>GPU</b>", "dtype": "bfloat16"})
    old = stored({"decode_tokens_per_s": 40.0, "prefill_tokens_per_s": 900.0, "device_name": "cpu"})

    summary = run_detail(new).summary
    assert "probe v2" in summary and "at least 10 iterations and 10 s per figure" in summary
    assert "| decode tokens/s | 31.25 [30–32.5] (n=12) | 20 [19.5–21] (n=12) |" in summary
    assert "| speed-up, decode (x) | 1.562 [1.429–1.667] |" in summary and "812.5" in summary
    assert "<b>GPU</b>" not in summary and "&lt;b&gt;GPU&lt;/b&gt;" in summary
    legacy = run_detail(old).summary
    assert "probe v1" in legacy and "no spread" in legacy and "| decode tokens/s | 40 |" in legacy
    assert "[" not in legacy.split("probe v1")[1]
