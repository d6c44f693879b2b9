"""Leaderboard and Plots tabs in a real browser: load, filter, switch view, export CSV, open a run,
fork it into the Submit editor, draw the plots; one screenshot per tab."""
from __future__ import annotations

import pandas as pd
import pytest

SEEDED: dict[str, int] = {}
HOSTILE = '<img src=x onerror="window.pwnedBoard=1">'


def _seed(server) -> None:
    SEEDED["dense"] = server.seed_run("dense", 0.0, {"synthetic-mc": 0.8})
    SEEDED["magnitude"] = server.seed_run("magnitude", 0.5, {"synthetic-mc": 0.5})
    SEEDED["wanda"] = server.seed_run("wanda", 0.3, {"synthetic-mc": 0.7})
    SEEDED["hostile"] = server.seed_run("magnitude", 0.2, {"synthetic-mc": 0.6})
    from db.schema import Job
    from db.session import write_session

    with server.database(), write_session() as session:  # a method name no config could carry
        session.get(Job, SEEDED["hostile"]).method = HOSTILE


@pytest.fixture(scope="module")
def browser_app_options():
    return {"seed": _seed}


def _board_text(ui) -> str:
    return ui.text("#pb-board")


def _search(page, text: str) -> None:
    box = page.locator("#pb-board-search textarea, #pb-board-search input").first
    box.fill(text)
    box.press("Enter")


def test_leaderboard_loads_filters_and_exports(page, ui, screenshot, tmp_path):
    ui.open()
    ui.wait_for_text("4 run(s)", within="#pb-board-summary")
    table = _board_text(ui)
    assert "magnitude" in table and "wanda" in table and "dense" in table
    assert table.index("dense") < table.index("magnitude")  # the dense baseline is pinned first
    assert HOSTILE in table and ui.js("window.pwnedBoard") is None  # shown as text, never run
    screenshot("leaderboard")

    _search(page, "wanda")
    ui.wait_for_text("1 run(s)", within="#pb-board-summary")
    ui.wait_idle()
    assert "magnitude" not in _board_text(ui)

    with page.expect_download() as download_info:
        page.locator("#pb-board-csv").click()
    path = tmp_path / "board.csv"
    download_info.value.save_as(path)
    exported = pd.read_csv(path)
    assert exported["job_id"].tolist() == [SEEDED["wanda"]]
    assert exported["synthetic-mc"].tolist() == [pytest.approx(0.7)]

    page.locator("#pb-board-view").get_by_text("Δ vs dense").click()
    ui.wait_for_text("Δ vs dense: run minus", within="#pb-board-summary")
    ui.wait_idle()
    with page.expect_download() as download_info:
        page.locator("#pb-board-csv").click()
    download_info.value.save_as(path)
    assert pd.read_csv(path)["synthetic-mc"].tolist() == [pytest.approx(-0.1)]
    assert not [e for e in page.console_errors if "pageerror" in e]


def test_row_opens_detail_and_fork_fills_the_submit_editor(page, ui, screenshot):
    ui.open()
    ui.wait_for_text("4 run(s)", within="#pb-board-summary")
    page.locator("#pb-board [role=gridcell]", has_text="magnitude").first.click()
    ui.wait_for_text(f"Job {SEEDED['magnitude']}: magnitude", within="#pb-board-detail")
    ui.wait_idle()
    screenshot("leaderboard-detail")
    page.locator("#pb-board-fork").click()
    page.wait_for_selector("#pb-tab-submit-button[aria-selected=true]")
    ui.wait_for_text(f"forked from job {SEEDED['magnitude']}", within="#pb-submit-editor")
    assert "method: magnitude" in ui.text("#pb-submit-editor")


def test_plots_tab_draws_figures(page, ui, screenshot):
    ui.open()
    ui.select_tab("plots")
    page.locator("#pb-plot-sparsity .js-plotly-plot").wait_for(state="visible")
    page.locator("#pb-plot-heatmap .js-plotly-plot").wait_for(state="visible")
    ui.wait_for_text("magnitude", within="#pb-plot-sparsity")
    ui.wait_for_text("No test-time-scaling scores yet", within="#pb-plot-tts")
    assert HOSTILE in ui.text("#pb-plot-sparsity") and ui.js("window.pwnedBoard") is None
    screenshot("plots")


def test_a_linked_view_restores_filters_and_columns_and_explains_headers(page, ui, screenshot):
    from playwright.sync_api import expect

    ui.open("?tab=leaderboard&q=wanda&view=delta&cols=synthetic-mc")
    ui.wait_for_text("1 run(s)", within="#pb-board-summary")
    ui.wait_for_text("Δ vs dense: run minus", within="#pb-board-summary")
    expect(page.locator("#pb-board-view input[value=delta]")).to_be_checked()
    assert "synthetic-mc" in ui.text("#pb-board-columns")
    headers = page.locator("#pb-board [role=columnheader], #pb-board th").all_inner_texts()
    assert not any("average" in h for h in headers)  # the picker left only the chosen value column
    link = ui.text("#pb-board-link")
    assert "q=wanda" in link and "view=delta" in link and "cols=synthetic-mc" in link
    assert "(all)" in ui.text("#pb-board-families")
    screenshot("leaderboard-linked-view")

    ui.open()
    ui.wait_for_text("4 run(s)", within="#pb-board-summary")
    average = page.locator("#pb-board th, #pb-board [role=columnheader]", has_text="average").first
    expect(average).to_have_attribute("title", __import__("re").compile("Mean of every higher-is-better"))
    model = page.locator("#pb-board [role=gridcell] a, #pb-board td a").first
    assert model.count() == 0  # tiny-llama has random weights and no Hub page: plain text


def test_run_buttons_wake_up_when_a_run_is_chosen(page, ui):
    from playwright.sync_api import expect

    ui.open()
    ui.wait_for_text("4 run(s)", within="#pb-board-summary")
    for button in ("#pb-board-open", "#pb-board-fork", "#pb-board-files", "#pb-board-publish"):
        expect(page.locator(button)).to_be_disabled()
    page.locator("#pb-board [role=gridcell]", has_text="wanda").first.click()
    ui.wait_for_text(f"Job {SEEDED['wanda']}: wanda", within="#pb-board-detail")
    for button in ("#pb-board-open", "#pb-board-fork", "#pb-board-files", "#pb-board-publish"):
        expect(page.locator(button)).to_be_enabled()
