"""Leaderboard tab services (ui.board) on a seeded database: filters, views, sort, exports, detail, fork."""
from __future__ import annotations

import io
import json

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


def _export(fmt: str, *widgets) -> tuple[str, str]:
    """The download the links of `board_view(*widgets)` point at, fetched as a browser would."""
    from urllib.parse import parse_qs

    from ui.exports import export_file, export_query

    params = {name: values[-1] for name, values in parse_qs(export_query(*widgets)).items()}
    params["families"] = parse_qs(export_query(*widgets)).get("families", [])
    return export_file(fmt, params)


def test_exports_equal_the_shown_table(runs):
    import gradio as gr

    widgets = (None, None, ["dense", "unstructured"], 0.0, 1.0, None, "any", "", "delta", "synthetic-mc",
               "best first")
    view = board.board_view(*widgets)
    shown = gr.Dataframe(interactive=False).postprocess(view.table)
    name, text = _export("csv", *widgets)
    assert name == "pruneboard-leaderboard-delta.csv"
    exported = pd.read_csv(io.StringIO(text))
    assert list(exported.columns) == shown.headers
    assert exported["job_id"].tolist() == [row[shown.headers.index("job_id")] for row in shown.data]
    assert set(exported["family"]) == {"dense", "unstructured"}
    column = shown.headers.index("synthetic-mc")
    for row, value in zip(shown.data, exported["synthetic-mc"]):
        assert (pd.isna(value) and row[column] is None) or row[column] == pytest.approx(value)
    records = json.loads(_export("json", *widgets)[1])
    assert [r["job_id"] for r in records] == exported["job_id"].tolist()
    assert records[1]["synthetic-mc"] == pytest.approx(exported["synthetic-mc"][1])


def test_export_links_carry_the_widget_values_escaped():
    from ui.exports import export_links

    links = export_links("m<x>", None, ["depth", "width"], 0.1, 0.5, None, "any", 'a"b&c', "raw", None, None)
    assert 'id="pb-board-csv"' in links and 'id="pb-board-json"' in links
    assert "families=depth&amp;families=width" in links and "<x>" not in links and 'a"b' not in links
    assert 'href="export/leaderboard.csv?model=m%3Cx%3E' in links


def test_a_refresh_writes_no_files(runs, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    board.board_view()
    board.board_view(view="delta")
    assert list(scratch.iterdir()) == []


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


def test_random_test_models_are_labelled_wherever_their_results_show(runs):
    from ui import services

    view = board.board_view()
    assert "has random weights (test models)" in view.summary and "tiny" in view.summary
    detail = board.run_detail(runs["dense"])
    assert "Random test model" in detail.summary
    queue_frame = services.queue_view()
    assert set(queue_frame["model"]) == {"builtin:tiny-llama (random weights)"}


def test_the_column_picker_keeps_meta_columns_and_the_chosen_values(runs):
    full = board.board_view()
    assert {"synthetic-mc", "average"} <= set(full.column_choices)
    picked = board.board_view(columns=["average", "no-such-column"])
    values = set(picked.board.frame.columns) & set(full.column_choices)
    assert values == {"average"} and "job_id" in picked.board.frame.columns and "method" in picked.board.frame.columns
    assert picked.column_choices == full.column_choices  # the picker still offers every column
    assert set(board.board_view(columns=["no-such-column"]).board.frame.columns) == set(full.board.frame.columns)


def test_model_cells_link_to_the_hub_page_and_stay_inert():
    assert board.model_link("meta-llama/Llama-2-7b-hf") == \
        "[meta\\-llama/Llama\\-2\\-7b\\-hf](https://huggingface.co/meta-llama/Llama-2-7b-hf)"
    assert "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct" in board.model_link("builtin:smollm2-135m-instruct")
    assert "](" not in board.model_link("builtin:tiny-llama")  # random test models have no page
    assert board.model_link("/models/[x](javascript:alert(1))") == "/models/\\[x\\]\\(javascript:alert\\(1\\)\\)"


def test_a_board_view_round_trips_through_its_url():
    from ui.board_query import BoardQuery, parse_query, query_string

    families = frozenset({"dense", "depth", "width", "unstructured", "dynamic"})
    query = BoardQuery(model="builtin:smollm2-135m-instruct", paradigm="think", families=("depth", "width"),
                       sparsity_min=0.2, sparsity_max=0.4, recovery="no", search="wanda", view="retained",
                       sort_by="piqa", order="worst first", columns=("piqa", "average"))
    link = query_string(query)
    assert link.startswith("?tab=leaderboard&") and "family=depth%2Cwidth" in link
    from urllib.parse import parse_qsl, urlsplit

    assert parse_query(dict(parse_qsl(urlsplit(link).query)), families) == query
    assert query_string(BoardQuery()) == "?tab=leaderboard"  # defaults are left out
    hostile = parse_query({"family": "depth,<script>,width", "smin": "nan", "smax": "-3", "view": "evil",
                           "recovery": "maybe", "order": "x", "q": "x" * 1000}, families)
    assert hostile.families == ("depth", "width") and (hostile.sparsity_min, hostile.sparsity_max) == (0.0, 0.0)
    assert (hostile.view, hostile.recovery, hostile.order, hostile.search) == ("raw", "any", "best first", "")
