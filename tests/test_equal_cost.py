"""Comparing at equal measured cost (db.equal_cost, ui.equal_cost): each cost measure from stored
efficiency figures and prune reports, matching within the tolerance with the nominal fallback, and
the view's bands of one model's runs with their leaderboard scores."""
from __future__ import annotations

import json
import math

import pytest

from db.equal_cost import NOMINAL, TOLERANCE, equal_cost_view, matched_by, relative_cost
from db.schema import Job, Score
from db.session import dispose_engines, read_session, write_session
from db.states import JobState
from jobs.facts import run_facts, task_facts
from ui.equal_cost import equal_cost_table

MODEL = "org/model"
HOSTILE_MODEL = "org/<img src=x onerror=alert(1)>"


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


def add_run(method: str, sparsity: float, piqa: float, efficiency: dict | None = None, model: str = MODEL,
            paradigm: str = "instruct", report: dict | None = None) -> int:
    config = {"model": model, "paradigm": paradigm, "pruning": {"method": method, "sparsity": sparsity}}
    with write_session() as session:
        job = Job(config_hash=f"{model}-{paradigm}-{method}-{sparsity}", config_json=json.dumps(config), model=model,
                  paradigm=paradigm, method=method, sparsity=sparsity, state=JobState.SUCCEEDED, attempts=1,
                  requeues=0, progress=1.0, cancel_requested=False, efficiency_json=efficiency,
                  prune_report_json=report, **run_facts(config))
        session.add(job)
        session.flush()
        session.add(Score(job_id=job.id, task="piqa", metric="acc", value=piqa, stderr=None, higher_is_better=True,
                          is_primary=True, comparability_key="k", **task_facts("piqa")))
        return job.id


def kept(fraction: float, **extra) -> dict:
    return {"params": 1_000_000, "nonzero_params": round(fraction * 1_000_000), "params_before": 1_000_000, **extra}


# --- measures ---------------------------------------------------------------------------------------


def test_parameters_kept_from_the_probe_else_from_the_prune_report():
    assert relative_cost("params", kept(0.8), None) == pytest.approx(0.8)
    # a mask method keeps its zeros as parameters: the report's zero_weights count as removed
    report = {"params_before": 1000, "params_after": 1000, "zero_weights": 300}
    assert relative_cost("params", None, report) == pytest.approx(0.7)
    assert relative_cost("params", None, {"params_before": 1000, "params_after": 750}) == pytest.approx(0.75)
    assert relative_cost("params", {"params": 5}, {}) is None


def test_flops_from_stored_speedups_or_flops_per_token():
    assert relative_cost("flops", {"ideal_speedup": 1.25}, None) == pytest.approx(0.8)
    assert relative_cost("flops", {"flops_per_token": 300.0}, None, {"flops_per_token": 400.0}) == pytest.approx(0.75)
    dynamic = {"evaluation_skip": {"ideal_speedup": 2.0}, "calibration_ideal_speedup": 1.6}
    assert relative_cost("flops", {}, dynamic) == pytest.approx(0.5)  # measured on the evaluation first
    assert relative_cost("flops", {}, {"calibration_ideal_speedup": 1.6}) == pytest.approx(0.625)
    assert relative_cost("flops", {"flops_per_token": 300.0}, None, None) is None


def test_latency_only_against_a_dense_run_on_the_same_device():
    dense = {"decode_tokens_per_s": 100.0, "device_name": "cpu-a"}
    assert relative_cost("latency", {"decode_tokens_per_s": 125.0, "device_name": "cpu-a"}, None,
                         dense) == pytest.approx(0.8)
    assert relative_cost("latency", {"decode_tokens_per_s": 125.0, "device_name": "cpu-b"}, None, dense) is None
    assert relative_cost("latency", {"measured_speedup": 2.0}, None, None) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="measure must be one of"):
        relative_cost("layers", {}, {})


def test_matching_within_tolerance_and_the_nominal_fallback():
    assert matched_by("params", 0.80, 0.80 - TOLERANCE["params"], 0.25, 0.4) == "params"
    assert matched_by("params", 0.80, 0.74, 0.25, 0.25) is None  # measured apart: equal nominal does not help
    assert matched_by("params", 0.80, None, 0.25, 0.25) == NOMINAL
    assert matched_by("params", 0.80, None, 0.25, 0.4) is None
    assert matched_by("latency", 0.80, 0.89, 0.1, 0.5) == "latency"  # wall-clock: a wider tolerance
    assert matched_by(NOMINAL, 0.80, 0.80, 0.25, 0.4) is None


# --- the view ---------------------------------------------------------------------------------------


@pytest.fixture
def runs() -> dict[str, int]:
    return {
        "dense": add_run("dense", 0.0, 0.80, kept(1.0, decode_tokens_per_s=100.0, device_name="cpu")),
        "shortgpt": add_run("shortgpt", 0.25, 0.60, kept(0.80, decode_tokens_per_s=130.0, device_name="cpu")),
        "flap": add_run("flap", 0.4, 0.50, kept(0.81, decode_tokens_per_s=125.0, device_name="cpu")),
        "slicegpt": add_run("slicegpt", 0.25, 0.55, kept(0.70)),
        "wanda": add_run("wanda", 0.5, 0.70, kept(0.55, decode_tokens_per_s=100.0, device_name="cpu")),
        "magnitude": add_run("magnitude", 0.5, 0.30),
        "other_model": add_run("shortgpt", 0.25, 0.1, kept(0.80), model="org/other"),
        "think": add_run("shortgpt", 0.25, 0.1, kept(0.80), paradigm="think"),
    }


def test_runs_grouped_in_bands_of_matched_parameters(runs):
    with read_session() as session:
        view = equal_cost_view(session, MODEL, "instruct", "params")
    frame = view.frame
    assert list(frame["job_id"]) == [runs[k] for k in ("dense", "shortgpt", "flap", "slicegpt", "wanda", "magnitude")]
    assert list(frame["band"]) == ["params 100 %", "params 80–81 %", "params 80–81 %", "params 70 %", "params 55 %",
                                   "not measured: nominal sparsity 0.5"]
    assert frame["cost"].iloc[1] == pytest.approx(0.80) and math.isnan(frame["cost"].iloc[-1])
    assert list(frame["piqa"]) == [0.80, 0.60, 0.50, 0.55, 0.70, 0.30]  # best first within a band
    assert any("1 run(s) lack the figures" in note for note in view.notes)


def test_bands_hold_only_runs_within_the_tolerance_of_each_other():
    add_run("dense", 0.0, 0.8)
    for method, fraction in (("shortgpt", 0.80), ("flap", 0.77), ("slicegpt", 0.74)):
        add_run(method, 0.25, 0.5, kept(fraction))
    with read_session() as session:
        frame = equal_cost_view(session, MODEL, "instruct", "params").frame
    bands = dict(zip(frame["method"], frame["band"]))
    assert bands["shortgpt"] == bands["flap"] == "params 77–80 %" and bands["slicegpt"] == "params 74 %"


def test_latency_bands_and_retained_scores(runs):
    with read_session() as session:
        view = equal_cost_view(session, MODEL, "instruct", "latency", view="retained")
    frame = view.frame.set_index("method")
    assert frame.loc["shortgpt", "cost"] == pytest.approx(100 / 130) and frame.loc["flap", "cost"] == pytest.approx(0.8)
    assert frame.loc["shortgpt", "band"] == frame.loc["flap", "band"]  # 0.77 and 0.80: within 0.10
    assert frame.loc["wanda", "band"] == frame.loc["dense", "band"] == "latency 100 %"  # no speed-up
    assert frame.loc["slicegpt", "band"] == "not measured: nominal sparsity 0.25"
    assert frame.loc["shortgpt", "piqa"] == pytest.approx(75.0)  # % retained: 100 x 0.6 / 0.8


def test_unknown_measure_and_empty_setting():
    with read_session() as session:
        with pytest.raises(ValueError, match="measure must be one of"):
            equal_cost_view(session, MODEL, "instruct", "layers")
        assert equal_cost_view(session, MODEL, "instruct").frame.empty


def test_table_for_the_tab_names_the_measure_and_escapes_the_model():
    add_run("dense", 0.0, 0.8, kept(1.0), model=HOSTILE_MODEL)
    add_run("shortgpt", 0.25, 0.6, kept(0.8), model=HOSTILE_MODEL)
    table, summary = equal_cost_table(HOSTILE_MODEL, "instruct", "params")
    assert list(table["parameters kept (% of dense)"]) == [100.0, 80.0]
    assert "<img" not in summary and "2 run(s) in 2 band(s)" in summary
    empty, message = equal_cost_table("(all)", "instruct")
    assert empty.empty and "Choose a model and a paradigm" in message
