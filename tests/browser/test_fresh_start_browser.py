"""A first visitor on a fresh start: the app seeds its empty database with the shipped results
snapshot (results/snapshot.jsonl.gz) before it answers, and every results view shows real content."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs.bundle import read_bundle

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "results" / "snapshot.jsonl.gz"


@pytest.fixture(scope="module")
def browser_app_options():
    if not SNAPSHOT.is_file():
        pytest.skip("results/snapshot.jsonl.gz is not built")
    return {"env": {"PRUNEBOARD_SEED_RESULTS": "1"}}


def test_a_fresh_start_shows_the_snapshot_in_every_results_view(ui, page, browser_app, screenshot):
    bundle = read_bundle(SNAPSHOT)
    methods = {(run.record["config"].get("pruning") or {}).get("method", "dense") for run in bundle.runs}
    ui.open()
    ui.wait_for_text("run(s)", within="#pb-board-summary")
    board = ui.text("#pb-board")
    assert "smollm2" in board.lower()
    assert sum(method in board for method in methods) == len(methods)  # every method of the snapshot has a row
    screenshot("fresh-start-leaderboard")

    ui.select_tab("plots")
    page.locator("#pb-plot-sparsity .js-plotly-plot").first.wait_for(state="visible")
    assert "yet" not in ui.text("#pb-plot-sparsity")  # a real figure, not the empty-data message
    screenshot("fresh-start-plots")

    with browser_app.database():  # the imported runs got ids in this app's database
        from db.compare import comparable_runs
        from db.session import read_session

        with read_session() as session:
            runs = [r["job_id"] for r in comparable_runs(session, task="gsm8k")]
    assert len(runs) >= 2
    ui.open(f"?tab=compare&runs={runs[0]},{runs[1]}&task=gsm8k")
    ui.wait_for_text("McNemar p", within="#pb-compare-header")  # paired statistics over the snapshot's samples
    ui.wait_for_text("(doc 0)", within="#pb-compare-sample")
    screenshot("fresh-start-compare")

    ui.select_tab("findings")
    ui.wait_for_text("Rule:", within="#pb-findings")
    findings = ui.text("#pb-findings")
    # the snapshot's runs pair up: some finding compared documents
    assert re.search(r"n = [1-9][0-9]* documents \([0-9]+ paired values\)", findings)
    assert "No paired results yet" not in findings
    screenshot("fresh-start-findings")

    ui.select_tab("queue")
    ui.wait_for_text("succeeded", within="#pb-tab-queue")
    assert "imported" in ui.text("#pb-tab-queue").lower()
