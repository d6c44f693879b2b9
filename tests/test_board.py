"""db.leaderboard on a real SQLite file: layout, averages, delta and % retained (both signs),
comparability groups and flags, filters and exports, against hand-computed values."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from db.leaderboard import Board, BoardFilters, board, export_board, filter_options
from db.schema import Job, Score
from db.session import dispose_engines, read_session, write_session
from db.states import JobState
from jobs.facts import run_facts, task_facts

DENSE = {"piqa": 0.8, "boolq": 0.6, "gsm8k": 0.5, "humaneval": 0.4, "wikitext2-ppl": 20.0}
MAGNITUDE = {"piqa": 0.6, "boolq": 0.3, "gsm8k": 0.25, "humaneval": 0.2, "wikitext2-ppl": 25.0}


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


def add_run(session, method: str, sparsity: float, scores: dict[str, float], *, model: str = "m",
            paradigm: str = "instruct", keys: dict[str, str] | None = None, config_hash: str | None = None,
            state: JobState = JobState.SUCCEEDED, calibration: str | None = None, recovery: bool = False,
            efficiency: dict | None = None) -> int:
    config = {"model": model, "paradigm": paradigm, "pruning": {"method": method, "sparsity": sparsity}}
    if calibration:
        config["calibration"] = {"source": calibration}
    if recovery:
        config["recovery"] = {"data": "text", "path": "t.txt"}
    job = Job(config_hash=config_hash or f"{model}-{paradigm}-{method}-{sparsity}-{calibration}-{recovery}",
              config_json=json.dumps(config), model=model, paradigm=paradigm, method=method, sparsity=sparsity,
              state=state, attempts=1, requeues=0, progress=1.0, cancel_requested=False, efficiency_json=efficiency,
              **run_facts(config))
    session.add(job)
    session.flush()
    for task, value in scores.items():
        key = (keys or {}).get(task, "k")
        session.add(Score(job_id=job.id, task=task, metric="primary", value=value, stderr=None,
                          higher_is_better=task != "wikitext2-ppl", is_primary=True, comparability_key=key,
                          **task_facts(task)))
        session.add(Score(job_id=job.id, task=task, metric="secondary", value=-1.0, stderr=None,
                          higher_is_better=True, is_primary=False, comparability_key=key, **task_facts(task)))
    return job.id


@pytest.fixture
def seeded() -> dict[str, int]:
    with write_session() as s:
        ids = {
            "dense": add_run(s, "dense", 0.0, DENSE, efficiency={"params": 2_000_000, "decode_tokens_per_s": 100.0,
                                                                   "device_name": "cpu"}),
            "old_magnitude": add_run(s, "magnitude", 0.5, {"piqa": 0.1}, config_hash="mag"),
            "magnitude": add_run(s, "magnitude", 0.5, MAGNITUDE, config_hash="mag",
                                 efficiency={"params": 1_000_000, "decode_tokens_per_s": 150.0, "device_name": "cpu"}),
            "failed": add_run(s, "sparsegpt", 0.5, {"piqa": 0.7}, state=JobState.FAILED),
            "wanda": add_run(s, "wanda", 0.7, {"piqa": 0.7, "gsm8k": 0.4}, keys={"gsm8k": "k-other"},
                             calibration="text", recovery=True),
            "orphan": add_run(s, "wanda", 0.5, {"piqa": 0.5}, model="m2", calibration="synthetic"),
        }
    return ids


def get_board(filters: BoardFilters | None = None, view: str = "raw") -> Board:
    with read_session() as session:
        return board(session, filters or BoardFilters(), view)


def row(result: Board, job_id: int) -> pd.Series:
    rows = result.frame[result.frame["job_id"] == job_id]
    assert len(rows) == 1
    return rows.iloc[0]


def test_layout_groups_columns_by_category_and_shows_latest_succeeded_runs(seeded):
    result = get_board(BoardFilters(model="m"))
    assert result.column_groups == {
        "classification": ["boolq", "piqa", "classification avg"],
        "generation": ["humaneval", "generation avg"],
        "reasoning": ["gsm8k", "reasoning avg"],
        "overall": ["average"],
        "perplexity": ["wikitext2-ppl"],
        "efficiency": ["params_M", "speedup_measured"],
    }
    assert list(result.frame.columns) == result.meta_columns + [c for g in result.column_groups.values() for c in g]
    assert set(result.frame["job_id"]) == {seeded["dense"], seeded["magnitude"], seeded["wanda"]}
    assert result.frame.iloc[0]["job_id"] == seeded["dense"]  # pinned first
    assert result.higher_is_better["wikitext2-ppl"] is False and result.higher_is_better["piqa"] is True
    assert result.higher_is_better["params_M"] is False and result.higher_is_better["speedup_measured"] is True


def test_raw_view_averages_only_higher_is_better_metrics(seeded):
    result = get_board(BoardFilters(model="m"))
    dense, mag = row(result, seeded["dense"]), row(result, seeded["magnitude"])
    assert dense["classification avg"] == pytest.approx(0.7)
    assert dense["average"] == pytest.approx((0.8 + 0.6 + 0.5 + 0.4) / 4)  # perplexity left out
    assert mag["piqa"] == pytest.approx(0.6)  # the latest job of the config, not the older one
    assert mag["classification avg"] == pytest.approx(0.45)
    assert mag["average"] == pytest.approx(0.3375)
    assert mag["wikitext2-ppl"] == pytest.approx(25.0)
    assert mag["params_M"] == pytest.approx(1.0)
    assert mag["speedup_measured"] == pytest.approx(1.5)
    assert mag["baseline_job_id"] == seeded["dense"] and mag["flag"] == ""
    assert mag["family"] == "unstructured" and pd.isna(mag["calibration"]) and not mag["recovery"]


def test_delta_view_is_sign_aware(seeded):
    result = get_board(BoardFilters(model="m"), view="delta")
    mag = row(result, seeded["magnitude"])
    assert mag["piqa"] == pytest.approx(-0.2)
    assert mag["boolq"] == pytest.approx(-0.3)
    assert mag["classification avg"] == pytest.approx(-0.25)
    assert mag["average"] == pytest.approx((-0.2 - 0.3 - 0.25 - 0.2) / 4)
    assert mag["wikitext2-ppl"] == pytest.approx(20.0 - 25.0)  # higher perplexity is worse: negative
    assert row(result, seeded["dense"])["piqa"] == pytest.approx(0.0)
    assert result.higher_is_better["wikitext2-ppl"] is True


def test_retained_view_is_sign_aware(seeded):
    result = get_board(BoardFilters(model="m"), view="retained")
    mag = row(result, seeded["magnitude"])
    assert mag["piqa"] == pytest.approx(75.0)
    assert mag["boolq"] == pytest.approx(50.0)
    assert mag["classification avg"] == pytest.approx(62.5)
    assert mag["average"] == pytest.approx((75 + 50 + 50 + 50) / 4)
    assert mag["wikitext2-ppl"] == pytest.approx(100 * 20 / 25)
    assert row(result, seeded["dense"])["wikitext2-ppl"] == pytest.approx(100.0)


def test_differing_comparability_keys_are_grouped_apart_and_flagged(seeded):
    result = get_board(BoardFilters(model="m"), view="delta")
    wanda = row(result, seeded["wanda"])
    assert row(result, seeded["dense"])["group"] == "main" and row(result, seeded["magnitude"])["group"] == "main"
    assert wanda["group"] == "B"
    assert wanda["piqa"] == pytest.approx(0.7 - 0.8)  # same key: compared
    assert pd.isna(wanda["gsm8k"])  # different evaluation settings: no delta
    assert "gsm8k" in wanda["flag"] and "evaluation settings" in wanda["flag"]
    assert list(result.frame["job_id"]) == [seeded["dense"], seeded["magnitude"], seeded["wanda"]]
    assert any("grouped apart as B" in note for note in result.notes)
    raw = row(get_board(BoardFilters(model="m")), seeded["wanda"])
    assert raw["gsm8k"] == pytest.approx(0.4)


def test_run_without_dense_baseline_is_flagged(seeded):
    result = get_board(BoardFilters(model="m2"), view="retained")
    orphan = row(result, seeded["orphan"])
    assert pd.isna(orphan["piqa"]) and pd.isna(orphan["baseline_job_id"])
    assert orphan["flag"] == "no dense baseline for this model and paradigm"


@pytest.mark.parametrize("filters, expected", [
    (BoardFilters(), {"dense", "magnitude", "wanda", "orphan"}),
    (BoardFilters(families=("unstructured",)), {"magnitude", "wanda", "orphan"}),
    (BoardFilters(families=("dense", "depth")), {"dense"}),
    (BoardFilters(sparsity_min=0.5, sparsity_max=0.6), {"magnitude", "orphan"}),
    (BoardFilters(calibration="text"), {"wanda"}),
    (BoardFilters(calibration="synthetic"), {"orphan"}),
    (BoardFilters(recovery=True), {"wanda"}),
    (BoardFilters(recovery=False, model="m"), {"dense", "magnitude"}),
    (BoardFilters(search="WAN"), {"wanda", "orphan"}),
    (BoardFilters(search="m2"), {"orphan"}),
    (BoardFilters(paradigm="think"), set()),
])
def test_filters(seeded, filters, expected):
    assert set(get_board(filters).frame["job_id"]) == {seeded[n] for n in expected}


def set_config(session, job_id: int, document: dict) -> None:
    """Give a stored run another config, with the facts the queue stores beside it."""
    job = session.get(Job, job_id)
    job.config_json = json.dumps(document)
    for name, value in run_facts(document).items():
        setattr(job, name, value)


def test_calibration_columns_say_what_data_a_run_used():
    """A calibrated run without a calibration section used the default (marked); an empty section is
    synthetic 8 x 128; runs whose method uses no calibration show none."""
    with write_session() as s:
        default = add_run(s, "shortgpt", 0.25, {"piqa": 0.5})
        empty = add_run(s, "shortgpt", 0.25, {"piqa": 0.4}, config_hash="empty")
        set_config(s, empty, {"model": "m", "pruning": {"method": "shortgpt", "sparsity": 0.25}, "calibration": {}})
        aligned = add_run(s, "shortgpt", 0.25, {"piqa": 0.3}, config_hash="aligned")
        set_config(s, aligned, {
            "model": "m", "pruning": {"method": "shortgpt", "sparsity": 0.25},
            "calibration": {"source": "task-aligned", "task": "gsm8k", "num_samples": 16, "seq_len": 512}})
        dense = add_run(s, "dense", 0.0, {"piqa": 0.8})
    result = get_board()
    assert "calibration_data" in result.meta_columns
    assert row(result, default)["calibration"] == "text"
    assert row(result, default)["calibration_data"] == "text wikitext2/valid.txt 32x256 seed 0 (default)"
    assert row(result, empty)["calibration"] == "synthetic"
    assert row(result, empty)["calibration_data"] == "synthetic 8x128 seed 0"
    assert row(result, aligned)["calibration_data"] == "task-aligned gsm8k train 16x512 seed 0"
    assert pd.isna(row(result, dense)["calibration"]) and pd.isna(row(result, dense)["calibration_data"])


def test_filtered_out_dense_still_serves_as_baseline(seeded):
    result = get_board(BoardFilters(model="m", families=("unstructured",)), view="delta")
    assert row(result, seeded["magnitude"])["piqa"] == pytest.approx(-0.2)


def test_search_by_job_id(seeded):
    assert seeded["wanda"] in set(get_board(BoardFilters(search=str(seeded["wanda"]))).frame["job_id"])


def test_filter_options(seeded):
    with read_session() as session:
        options = filter_options(session)
    assert options == {"models": ["m", "m2"], "paradigms": ["instruct"], "families": ["dense", "unstructured"],
                       "calibrations": ["synthetic", "text"], "sparsity": (0.0, 0.7)}


def test_exports_are_exactly_the_frame(seeded):
    result = get_board(BoardFilters(model="m"), view="delta")
    from_csv = pd.read_csv(io.StringIO(export_board(result, "csv")))
    assert list(from_csv.columns) == list(result.frame.columns)
    assert list(from_csv["job_id"]) == list(result.frame["job_id"])
    assert from_csv["piqa"].tolist() == pytest.approx(result.frame["piqa"].tolist())
    records = json.loads(export_board(result, "json"))
    assert [r["job_id"] for r in records] == list(result.frame["job_id"])
    assert list(records[0]) == list(result.frame.columns)
    wanda = next(r for r in records if r["job_id"] == seeded["wanda"])
    assert wanda["gsm8k"] is None and wanda["group"] == "B"
    with pytest.raises(ValueError):
        export_board(result, "xlsx")


def test_empty_board_and_bad_view():
    result = get_board()
    assert result.frame.empty and list(result.frame.columns) == result.meta_columns
    with pytest.raises(ValueError):
        get_board(view="percent")


def test_on_a_tie_the_dense_baseline_is_in_main():
    with write_session() as s:
        pruned = add_run(s, "shortgpt", 0.25, {"piqa": 0.5}, keys={"piqa": "a"})
        dense = add_run(s, "dense", 0.0, {"piqa": 0.8}, keys={"piqa": "z"})
    result = get_board()
    assert row(result, dense)["group"] == "main" and row(result, pruned)["group"] == "B"
    assert list(result.frame["job_id"]) == [dense, pruned]


def test_flops_ratios_use_the_baseline():
    with write_session() as s:
        dense = add_run(s, "dense", 0.0, {"piqa": 0.8}, efficiency={"flops_per_token": 400.0})
        pruned = add_run(s, "shortgpt", 0.5, {"piqa": 0.4}, efficiency={"flops_per_token": 200.0})
        apart = add_run(s, "shortgpt", 0.25, {"piqa": 0.5}, keys={"piqa": "other"},
                        efficiency={"flops_per_token": 300.0})
    result = get_board()
    assert row(result, pruned)["flops_ratio"] == pytest.approx(0.5)
    assert row(result, pruned)["speedup_ideal"] == pytest.approx(2.0)
    assert row(result, dense)["flops_ratio"] == pytest.approx(1.0)
    assert pd.isna(row(result, apart)["flops_ratio"])  # no comparable baseline
    assert result.column_groups["efficiency"] == ["flops_ratio", "speedup_ideal"]
