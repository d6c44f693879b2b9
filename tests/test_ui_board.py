"""Leaderboard tab services (ui.board) on a seeded database: filters, views, sort, exports, detail, fork."""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from backend.config import config_hash, parse_config_text, validate_config
from backend.result import RunResult, ScoreRecord
from jobs import queue
from ui import board


def seed(method: str, sparsity: float, scores: dict[str, float], *, extra: dict | None = None,
         prune_report: dict | None = None, key: str = "k") -> int:
    """A succeeded run written through the queue's completion path; returns its job id."""
    config = validate_config({"model": "builtin:tiny-llama", "tasks": sorted(scores),
                              "pruning": {"method": method, "sparsity": sparsity}, **(extra or {})})
    job, _ = queue.submit(config)
    claimed = queue.claim_next("test-worker")
    assert claimed is not None and claimed.id == job.id
    result = RunResult(
        scores=[ScoreRecord(task, "acc", value, 0.01, True, True, key) for task, value in scores.items()],
        samples=[], efficiency={}, prune_report=prune_report or {"method": method}, manifest={"seeded": True},
    )
    assert queue.complete(job.id, claimed.attempts, result)
    return job.id


@pytest.fixture
def runs() -> dict[str, int]:
    return {
        "dense": seed("dense", 0.0, {"synthetic-mc": 0.8}),
        "magnitude": seed("magnitude", 0.5, {"synthetic-mc": 0.4}),
        "wanda": seed("wanda", 0.3, {"synthetic-mc": 0.6}, extra={"calibration": {"source": "synthetic"}}),
        "recovered": seed("magnitude", 0.7, {"synthetic-mc": 0.5}, extra={"recovery": {"data": "synthetic"}}),
    }


def test_filters_narrow_the_rows(runs):
    def shown(**widgets) -> list[int]:
        return board.board_view(**widgets).board.frame["job_id"].tolist()

    assert shown() == [runs["dense"], runs["magnitude"], runs["recovered"], runs["wanda"]]
    assert set(shown(families=["unstructured"])) == {runs["magnitude"], runs["wanda"], runs["recovered"]}
    assert set(shown(sparsity_min=0.25, sparsity_max=0.55)) == {runs["magnitude"], runs["wanda"]}
    assert shown(recovery="yes") == [runs["recovered"]]
    assert runs["recovered"] not in shown(recovery="no")
    assert shown(calibration="synthetic") == [runs["wanda"]]
    assert shown(search="WAN") == [runs["wanda"]]
    assert shown(model="builtin:tiny-llama", paradigm="think") == []
    empty = board.board_view(search="no-such-method")
    assert "No runs match these filters" in empty.summary


def test_empty_board_says_what_to_do():
    for view in (board.board_view(), board.board_view(sparsity_min=0.0, sparsity_max=1.0)):  # the sliders' defaults
        assert view.board.frame.empty
        assert "No finished runs yet" in view.summary
        assert "Submit" in view.summary and "Refresh" in view.summary


def test_view_switch_changes_the_cells(runs):
    def cell(view: str, job: str) -> float:
        frame = board.board_view(view=view).board.frame
        return float(frame.loc[frame["job_id"] == runs[job], "synthetic-mc"].iloc[0])

    assert cell("raw", "magnitude") == pytest.approx(0.4)
    assert cell("delta", "magnitude") == pytest.approx(-0.4)
    assert cell("retained", "magnitude") == pytest.approx(50.0)
    assert cell("retained", "dense") == pytest.approx(100.0)
    assert "%" in board.board_view(view="retained").summary


def test_sort_keeps_the_dense_baseline_pinned(runs):
    view = board.board_view(sort_by="synthetic-mc", order="worst first")
    assert view.board.frame["job_id"].tolist() == [runs["dense"], runs["magnitude"], runs["recovered"], runs["wanda"]]
    best = board.board_view(sort_by="synthetic-mc", order="best first").board.frame["job_id"].tolist()
    assert best == [runs["dense"], runs["wanda"], runs["recovered"], runs["magnitude"]]
    assert "synthetic-mc" in view.sort_choices


def test_exports_equal_the_shown_table(runs):
    import gradio as gr

    view = board.board_view(families=["dense", "unstructured"], sort_by="synthetic-mc", view="delta")
    shown = gr.Dataframe(interactive=False).postprocess(view.table)
    exported = pd.read_csv(view.csv_path)
    assert list(exported.columns) == shown.headers
    assert exported["job_id"].tolist() == [row[shown.headers.index("job_id")] for row in shown.data]
    column = shown.headers.index("synthetic-mc")
    for row, value in zip(shown.data, exported["synthetic-mc"]):
        assert (pd.isna(value) and row[column] is None) or row[column] == pytest.approx(value)
    records = json.loads(Path(view.json_path).read_text(encoding="utf-8"))
    assert [r["job_id"] for r in records] == exported["job_id"].tolist()
    assert records[1]["synthetic-mc"] == pytest.approx(exported["synthetic-mc"][1])


def test_styled_table_colours_better_cells_greener(runs):
    view = board.board_view()
    metadata = __import__("gradio").Dataframe(interactive=False).postprocess(view.table).metadata
    column = list(view.board.frame.columns).index("synthetic-mc")
    styles = {row_id: metadata["styling"][i][column] for i, row_id in enumerate(view.board.frame["job_id"])}
    assert all("background-color" in style for style in styles.values())
    display = {row_id: metadata["display_value"][i][column] for i, row_id in enumerate(view.board.frame["job_id"])}
    assert display[runs["magnitude"]] == "0.4000"

    def green(style: str) -> int:
        return int(style.split("rgb(")[1].split(",")[1])

    assert green(styles[runs["dense"]]) > green(styles[runs["magnitude"]])


def test_fork_gives_the_runs_config_as_yaml(runs):
    text = board.fork_config(runs["wanda"])
    assert text.startswith("# forked from job")
    forked = parse_config_text(text, "yaml")
    config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                              "pruning": {"method": "wanda", "sparsity": 0.3}, "calibration": {"source": "synthetic"}})
    assert config_hash(forked) == config_hash(config)
    assert yaml.safe_load(text)["pruning"] == {"method": "wanda", "sparsity": 0.3}
    assert board.fork_config(None) == "" and board.fork_config(999) == ""


def test_detail_shows_the_run_and_escapes_untrusted_text(runs):
    from db.schema import Job
    from db.session import write_session

    report = {"method": "shortgpt", "details": {"removed_layers": [3, 5], "scores": [0.1, 0.2]}}
    job_id = seed("magnitude", 0.2, {"synthetic-mc": 0.3}, prune_report=report)
    with write_session() as session:
        job = session.get(Job, job_id)
        job.method = '<img src=x onerror="alert(1)">'
        job.model = "[click](javascript:alert(1))"
        job.log_tail = "loading\n<script>window.pwned = 1</script>"
    detail = board.run_detail(job_id)
    assert "<img" not in detail.summary and "&lt;img" in detail.summary
    assert "](javascript" not in detail.summary and "\\[click\\]" in detail.summary
    assert detail.log_tail.endswith("<script>window.pwned = 1</script>")  # shown in a code box, as text
    structure = json.loads(detail.structure_json)
    assert structure["chosen"] == {"removed_layers": [3, 5]}
    manifest = json.loads(detail.manifest_json)
    assert manifest["seeded"] is True and set(manifest["produced_by"]) == {"worker_id", "attempt"}
    assert "synthetic\\-mc" in detail.summary
    assert "No job 999" in board.run_detail(999).summary
    assert "Click a row" in board.run_detail(None).summary


def test_legend_groups_columns_and_escapes_notes(runs):
    seed("magnitude", 0.6, {"synthetic-mc": 0.45}, key="other-settings")
    view = board.board_view()
    assert "**classification**: synthetic\\-mc, classification avg" in view.legend
    assert "grouped apart" in view.summary and "builtin:tiny\\-llama" in view.summary
    assert "comparability groups" in view.summary


def test_job_at_row_reads_the_table_value(runs):
    frame = board.board_view().board.frame
    assert board.job_at_row(frame, 1) == runs["magnitude"]
    assert board.job_at_row(frame, 99) is None
    assert board.job_at_row(None, 0) is None


def test_make_filters_maps_widget_values():
    filters = board.make_filters("(all)", "think", ["depth", "bogus"], 0.1, None, "(all)", "no", "  x ")
    assert filters.model is None and filters.paradigm == "think" and filters.families == ("depth",)
    assert filters.sparsity_min == 0.1 and filters.sparsity_max is None
    assert filters.calibration is None and filters.recovery is False and filters.search == "x"


def test_written_exports_are_readable(tmp_path, runs):
    shown = board.board_view().board
    csv_path, json_path = board.write_exports(shown, "raw", tmp_path)
    assert pd.read_csv(io.StringIO(Path(csv_path).read_text()))["job_id"].tolist() == shown.frame["job_id"].tolist()
    assert len(json.loads(Path(json_path).read_text())) == len(shown.frame)


def test_job_at_row_prefers_the_clicked_row_values(runs):
    frame = board.board_view().board.frame
    clicked = frame.iloc[2].tolist()
    assert board.job_at_row(frame, 0, clicked) == int(frame["job_id"].iloc[2])


def test_busiest_setting_is_the_plots_default(runs):
    assert board.busiest_setting() == ("builtin:tiny-llama", "instruct")


def test_busiest_setting_of_an_empty_board():
    assert board.busiest_setting() == (board.ALL, board.ALL)


def test_fork_without_a_run_says_what_to_do(runs):
    from ui.tabs.leaderboard import _fork

    editor, tabs, message = _fork(None)
    assert "Open a run first" in message
    text, selected, _ = _fork(runs["dense"])
    assert "model: builtin:tiny-llama" in text and selected.selected == "submit"


def test_threads_exporting_the_same_board_at_once_all_succeed(tmp_path, runs):
    """The app serves several requests per process: simultaneous writes of one export must not collide."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    shown = board.board_view().board
    threads = 8
    for attempt in range(5):
        folder = tmp_path / str(attempt)  # a fresh folder: every thread finds the files missing
        barrier = Barrier(threads)

        def export(_):
            barrier.wait()
            return board.write_exports(shown, "raw", folder)

        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(export, range(threads)))
        assert len(set(results)) == 1
        assert sorted(p.name for p in folder.iterdir()) == sorted(Path(p).name for p in results[0])


def test_writing_exports_removes_only_its_own_stale_files(tmp_path, runs):
    shown = board.board_view().board
    folder = tmp_path / "exports"
    folder.mkdir()
    long_ago = time.time() - board.EXPORT_RETENTION_S - 60
    stale = folder / "pruneboard-leaderboard-delta-0123456789ab.csv"
    stale_part = folder / "pruneboard-leaderboard-raw-0123456789ab.jsonk3_x9.part"  # an interrupted write
    fresh = folder / "pruneboard-leaderboard-retained-abcdef012345.json"
    foreign = folder / "notes.csv"  # old, but not ours
    for path in (stale, stale_part, fresh, foreign):
        path.write_text("x")
    for path in (stale, stale_part, foreign):
        os.utime(path, (long_ago, long_ago))

    written = board.write_exports(shown, "raw", folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([fresh.name, foreign.name, *(Path(p).name for p in written)])


def test_reused_exports_are_renewed_so_cleanup_keeps_them(tmp_path, runs):
    """An unchanged board reuses its files; reuse renews them, else another request's cleanup could
    delete a file just handed out for download."""
    shown = board.board_view().board
    first = board.write_exports(shown, "raw", tmp_path)
    nearly_stale = time.time() - board.EXPORT_RETENTION_S + 60
    for path in first:
        os.utime(path, (nearly_stale, nearly_stale))
    before = time.time()
    assert board.write_exports(shown, "raw", tmp_path) == first
    assert all(Path(p).stat().st_mtime >= before - 1 for p in first)
    assert board.remove_stale_exports(tmp_path, max_age_s=30) == 0


def test_stale_export_cleanup_tolerates_files_removed_meanwhile(tmp_path, monkeypatch):
    stale = tmp_path / "pruneboard-leaderboard-raw-0123456789ab.csv"
    stale.write_text("x")
    os.utime(stale, (0, 0))
    real_unlink = os.unlink

    def racing_unlink(path):  # another process deletes the file first
        real_unlink(path)
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", racing_unlink)
    assert board.remove_stale_exports(tmp_path) == 0 and not stale.exists()
    assert board.remove_stale_exports(tmp_path / "missing") == 0


def test_random_test_models_are_labelled_wherever_their_results_show(runs):
    from ui import services

    view = board.board_view()
    assert "has random weights (test models)" in view.summary and "tiny" in view.summary
    detail = board.run_detail(runs["dense"])
    assert "Random test model" in detail.summary
    queue_frame = services.queue_view()
    assert set(queue_frame["model"]) == {"builtin:tiny-llama (random weights)"}
