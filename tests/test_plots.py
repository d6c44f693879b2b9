"""Plot builders (ui.plots) on hand-made frames, and the plot data queries (db.plot_data) on a seeded DB."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from backend.config import validate_config
from backend.result import RunResult, SampleRecord, ScoreRecord
from jobs import queue
from ui import plots


def board_frame() -> pd.DataFrame:
    return pd.DataFrame([
        {"job_id": 1, "method": "dense", "family": "dense", "sparsity": 0.0, "acc": 0.8, "speedup_measured": 1.0,
         "params_M": 100.0},
        {"job_id": 2, "method": "magnitude", "family": "unstructured", "sparsity": 0.5, "acc": 0.5,
         "speedup_measured": 1.4, "params_M": 60.0},
        {"job_id": 3, "method": "magnitude", "family": "unstructured", "sparsity": 0.3, "acc": 0.7,
         "speedup_measured": 1.2, "params_M": 80.0},
        {"job_id": 4, "method": "<b>wanda</b>", "family": "unstructured", "sparsity": 0.5, "acc": 0.6,
         "speedup_measured": 1.3, "params_M": 60.0},
    ])


def test_pareto_front_on_a_hand_made_example():
    # (speed-up, score): C is beaten by B on both, E by D on score at equal speed, F has no speed-up
    xs = [1.0, 1.5, 1.4, 2.0, 2.0, float("nan")]
    ys = [0.8, 0.7, 0.6, 0.5, 0.4, 0.9]
    assert plots.pareto_front(xs, ys) == [0, 1, 3]
    # (parameters, score), fewer parameters better: Q beats R and S; P has the best score
    assert plots.pareto_front([100, 50, 60, 50], [0.8, 0.7, 0.6, 0.6], maximize_x=False) == [1, 0]
    assert plots.pareto_front([], []) == []


def test_sparsity_figure_draws_one_line_per_method_and_the_dense_reference():
    figure = plots.sparsity_figure(board_frame(), "acc")
    names = [trace.name for trace in figure.data]
    assert names == ["&lt;b&gt;wanda&lt;/b&gt;", "magnitude"]
    magnitude = figure.data[1]
    assert list(magnitude.x) == [0.3, 0.5] and list(magnitude.y) == [0.7, 0.5]
    assert figure.layout.xaxis.title.text == "Sparsity" and figure.layout.yaxis.title.text == "acc"
    assert [shape.y0 for shape in figure.layout.shapes] == [0.8]
    assert not plots.is_message_figure(figure)


def test_pareto_figure_highlights_the_front():
    figure = plots.pareto_figure(board_frame(), "speedup_measured", "acc")
    runs, front = figure.data
    assert front.name == "Pareto front" and len(runs.x) == 4
    # dense (1.0, 0.8), magnitude 30% (1.2, 0.7), wanda (1.3, 0.6), magnitude 50% (1.4, 0.5): all optimal
    assert list(front.x) == [1.0, 1.2, 1.3, 1.4]
    assert figure.layout.xaxis.title.text == "Measured speed-up (x)"
    by_params = plots.pareto_figure(board_frame(), "params_M", "acc")
    # 60 M parameters: wanda (0.6) beats magnitude 50% (0.5)
    assert list(by_params.data[1].x) == [60.0, 80.0, 100.0]
    assert list(by_params.data[1].y) == [0.6, 0.7, 0.8]
    assert by_params.layout.xaxis.title.text == "Parameters (millions)"


def test_pareto_error_bars_show_the_measured_spread_where_known():
    frame = board_frame().assign(speedup_measured_low=[None, 1.3, 1.1, None],
                                 speedup_measured_high=[None, 1.6, 1.25, None])
    runs, front = plots.pareto_figure(frame, "speedup_measured", "acc").data
    assert list(runs.error_x.array) == [None, pytest.approx(0.2), pytest.approx(0.05), None]
    assert list(runs.error_x.arrayminus) == [None, pytest.approx(0.1), pytest.approx(0.1), None]
    assert runs.error_x.symmetric is False
    assert list(front.x) == [1.0, 1.2, 1.3, 1.4] and list(front.error_x.arrayminus)[1] == pytest.approx(0.1)
    assert plots.pareto_figure(board_frame(), "speedup_measured", "acc").data[0].error_x.array is None


def test_heatmap_is_method_by_task_without_dense_rows():
    frame = pd.DataFrame([
        {"method": "dense", "family": "dense", "sparsity": 0.0, "a": 0.0, "b": 0.0},
        {"method": "wanda", "family": "unstructured", "sparsity": 0.5, "a": -0.1, "b": 0.05},
        {"method": "sleb", "family": "depth", "sparsity": 0.25, "a": -0.3, "b": None},
    ])
    figure = plots.heatmap_figure(frame, ["a", "b", "missing"])
    heatmap = figure.data[0]
    assert list(heatmap.x) == ["a", "b"] and list(heatmap.y) == ["wanda @ 50%", "sleb @ 25%"]
    assert heatmap.z[0] == (-0.1, 0.05) or list(heatmap.z[0]) == [-0.1, 0.05]
    assert heatmap.zmid == 0 and heatmap.zmin == -0.3 and heatmap.zmax == 0.3
    assert figure.layout.xaxis.title.text == "Task"


def test_thinking_figure_uses_thinking_tokens_when_known():
    frame = pd.DataFrame([
        {"method": "dense", "sparsity": 0.0, "task": "gsm8k", "mean_thinking_tokens": 300.0,
         "mean_output_tokens": 350.0, "accuracy": 0.6},
        {"method": "wanda", "sparsity": 0.5, "task": "gsm8k", "mean_thinking_tokens": 500.0,
         "mean_output_tokens": 540.0, "accuracy": 0.4},
        {"method": "wanda", "sparsity": 0.5, "task": "aime24", "mean_thinking_tokens": None,
         "mean_output_tokens": 800.0, "accuracy": 0.1},
    ])
    figure = plots.thinking_figure(frame)
    traces = {trace.name: trace for trace in figure.data}
    assert set(traces) == {"gsm8k", "aime24"}
    assert list(traces["gsm8k"].x) == [300.0, 500.0] and list(traces["gsm8k"].y) == [0.6, 0.4]
    assert list(traces["aime24"].x) == [800.0] and "output tokens" in traces["aime24"].text[0]
    assert figure.layout.xaxis.title.text == "Mean thinking tokens"
    assert figure.layout.yaxis.title.text == "Accuracy"


def test_scaling_figure_one_line_per_series_and_metric():
    frame = pd.DataFrame([
        {"series": "s", "metric": "pass@k", "k": 1, "thinking_budget": None, "value": 0.2},
        {"series": "s", "metric": "pass@k", "k": 4, "thinking_budget": None, "value": 0.5},
        {"series": "s", "metric": "maj@k", "k": 1, "thinking_budget": None, "value": 0.2},
        {"series": "s", "metric": "maj@k", "k": 4, "thinking_budget": None, "value": 0.3},
    ])
    figure = plots.scaling_figure(frame, "k")
    assert [trace.name for trace in figure.data] == ["maj@k", "pass@k"]  # the shared series name is dropped
    assert list(figure.data[1].x) == [1, 4] and list(figure.data[1].y) == [0.2, 0.5]
    assert figure.layout.xaxis.title.text == "k (samples per prompt)"
    assert plots.is_message_figure(plots.scaling_figure(frame, "thinking_budget"))
    lone = pd.concat([frame, pd.DataFrame([{"series": "t", "metric": "pass@k", "k": 1, "thinking_budget": None,
                                            "value": 0.1}])])
    assert len(plots.scaling_figure(lone, "k").data) == 2  # a one-point series is not a curve


@pytest.mark.parametrize("build", [
    lambda: plots.sparsity_figure(pd.DataFrame(columns=["method", "sparsity", "acc"]), "acc"),
    lambda: plots.pareto_figure(pd.DataFrame(columns=["method", "sparsity"]), "speedup_measured", "acc"),
    lambda: plots.heatmap_figure(pd.DataFrame(columns=["method", "sparsity", "a"]), ["a"]),
    lambda: plots.thinking_figure(pd.DataFrame(columns=["method", "sparsity", "task", "mean_thinking_tokens",
                                                        "mean_output_tokens", "accuracy"])),
    lambda: plots.scaling_figure(pd.DataFrame(columns=["series", "metric", "k", "thinking_budget", "value"]), "k"),
])
def test_empty_data_gives_a_message_figure(build):
    figure = build()
    assert plots.is_message_figure(figure) and not figure.data
    message = figure.layout.annotations[0].text
    assert "yet" in message and ("refresh" in message.lower() or "run" in message)


def test_message_figure_escapes_its_text():
    figure = plots.message_figure("<script>x</script>")
    assert figure.layout.annotations[0].text == "&lt;script&gt;x&lt;/script&gt;"


# --- db.plot_data on a seeded database ---------------------------------------------------------


def seed(config: dict, scores: list[ScoreRecord], samples: list[SampleRecord] = (),
         efficiency: dict | None = None) -> int:
    job, _ = queue.submit(validate_config(config))
    claimed = queue.claim_next("test-worker")
    assert claimed is not None and claimed.id == job.id
    result = RunResult(scores=scores, samples=list(samples), efficiency=efficiency or {}, prune_report={},
                       manifest={})
    assert queue.complete(job.id, claimed.attempts, result)
    return job.id


def sample(doc_id: int, correct: bool, output_tokens: int, thinking_tokens: int | None) -> SampleRecord:
    return SampleRecord(task="aime24", doc_id=doc_id, prompt="q", output="a", extracted="1", gold="1",
                        correct=correct, prompt_tokens=3, output_tokens=output_tokens, metrics={},
                        finish_reason="stop", thinking_tokens=thinking_tokens)


def aime(k: int = 1, budget: int | None = None, method: str = "dense", sparsity: float = 0.0) -> dict:
    generation: dict = {}
    if k > 1:
        generation.update(num_samples=k, temperature=0.7)
    if budget is not None:
        generation["thinking_budget"] = budget
    return {"model": "builtin:tiny-llama", "paradigm": "think", "pruning": {"method": method, "sparsity": sparsity},
            "tasks": [{"name": "aime24", "generation": generation}]}


def score(metric: str, value: float, primary: bool = False) -> ScoreRecord:
    return ScoreRecord("aime24", metric, value, None, True, primary, "k")


def test_thinking_points_from_stored_trace_stats():
    from db.plot_data import thinking_points
    from db.session import read_session

    job_id = seed(aime(), [score("exact_match", 0.5, True)],
                  [sample(0, True, 100, 80), sample(1, False, 300, 240)])
    with read_session() as session:
        frame = thinking_points(session)
        assert thinking_points(session, paradigm="instruct").empty
    row = frame.iloc[0]
    assert row["job_id"] == job_id and row["task"] == "aime24" and row["samples"] == 2
    assert row["mean_thinking_tokens"] == pytest.approx(160.0)
    assert row["mean_output_tokens"] == pytest.approx(200.0)
    assert row["accuracy"] == pytest.approx(0.5)


def test_thinking_points_fall_back_to_the_samples():
    from db.plot_data import thinking_points
    from db.schema import Job
    from db.session import read_session, write_session

    job_id = seed(aime(), [score("exact_match", 1.0, True)], [sample(0, True, 50, 40)])
    with write_session() as session:  # a run finished before trace statistics were stored
        session.get(Job, job_id).trace_stats_json = None
    with read_session() as session:
        row = thinking_points(session).iloc[0]
    assert row["mean_thinking_tokens"] == pytest.approx(40.0) and row["accuracy"] == pytest.approx(1.0)


def test_scaling_points_by_k_and_by_budget():
    from db.plot_data import scaling_points
    from db.session import read_session

    seed(aime(k=1), [score("exact_match", 0.2, True)])
    seed(aime(k=4), [score("exact_match", 0.25, True), score("pass@1", 0.25), score("pass@4", 0.5),
                     score("maj@4", 0.3)])
    seed(aime(budget=256), [score("exact_match", 0.1, True)])
    seed(aime(budget=1024), [score("exact_match", 0.15, True)])
    seed({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"]},
         [ScoreRecord("synthetic-mc", "acc", 0.9, None, True, True, "k")])
    with read_session() as session:
        by_k = scaling_points(session, "k")
        by_budget = scaling_points(session, "thinking_budget")
        with pytest.raises(ValueError):
            scaling_points(session, "temperature")
    assert set(by_k["task"]) == {"aime24"}  # synthetic-mc is not a test-time-scaling task
    unbudgeted = by_k[by_k["thinking_budget"].isna()]
    points = {(r.metric, int(r.k)): r.value for r in unbudgeted.itertuples()}
    # k=1: the k=1 run's score and the k=4 run's pass@1 are averaged
    assert points == {("pass@k", 1): pytest.approx(0.225), ("pass@k", 4): 0.5,
                      ("maj@k", 1): pytest.approx(0.225), ("maj@k", 4): 0.3}
    assert sorted(zip(by_budget["thinking_budget"], by_budget["value"])) == [(256.0, 0.1), (1024.0, 0.15)]
    figure = plots.scaling_figure(by_budget, "thinking_budget")
    assert len(figure.data) == 1 and figure.layout.xaxis.title.text == "Thinking budget (tokens)"


def test_plot_figures_from_the_board():
    from ui import board

    seed({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"]},
         [ScoreRecord("synthetic-mc", "acc", 0.8, None, True, True, "k")])
    seed({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"], "pruning": {"method": "magnitude", "sparsity": 0.5}},
         [ScoreRecord("synthetic-mc", "acc", 0.6, None, True, True, "k")])
    sparsity, pareto, heatmap, thinking, scaling, columns, chosen = board.plot_figures(score_column="synthetic-mc")
    assert chosen == "synthetic-mc" and "average" in columns
    assert [trace.name for trace in sparsity.data] == ["magnitude"]
    assert plots.is_message_figure(pareto)  # no efficiency figures were stored
    assert list(heatmap.data[0].y) == ["magnitude @ 50%"] and math.isclose(heatmap.data[0].z[0][0], -0.2)
    assert plots.is_message_figure(thinking) and plots.is_message_figure(scaling)


def test_pareto_from_the_board_has_error_bars_for_runs_measured_side_by_side():
    from ui import board

    def pruned(method: str, speedup: float, span: list[float] | None) -> dict:
        efficiency = {"decode_tokens_per_s": 10.0 * speedup, "measured_speedup": speedup, "device_name": "cpu"}
        if span is not None:
            efficiency.update(probe_version=2, measured_speedup_range=span)
        return efficiency

    config = {"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"]}
    seed(config, [ScoreRecord("synthetic-mc", "acc", 0.8, None, True, True, "k")],
         efficiency={"decode_tokens_per_s": 10.0, "device_name": "cpu"})
    seed({**config, "pruning": {"method": "magnitude", "sparsity": 0.5}},
         [ScoreRecord("synthetic-mc", "acc", 0.6, None, True, True, "k")],
         efficiency=pruned("magnitude", 1.5, [1.4, 1.7]))
    seed({**config, "pruning": {"method": "wanda", "sparsity": 0.5}},  # the older probe: no spread
         [ScoreRecord("synthetic-mc", "acc", 0.5, None, True, True, "k")], efficiency=pruned("wanda", 1.2, None))
    _, pareto, *_ = board.plot_figures(score_column="synthetic-mc")
    runs = pareto.data[0]
    by_x = {x: (plus, minus) for x, plus, minus in zip(runs.x, runs.error_x.array, runs.error_x.arrayminus)}
    assert by_x[1.5] == (pytest.approx(0.2), pytest.approx(0.1))
    assert by_x[1.2] == (None, None) and by_x[1.0] == (None, None)
