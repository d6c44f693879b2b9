"""A reasoning trace full of markup, opened in the Compare tab by URL, renders as inert text."""
from __future__ import annotations

import pytest

from .conftest import WAIT_MS, make_sample
from .test_smoke_browser import PAYLOADS, PWNED_GLOBALS

TASK = "synthetic-arith"
HOSTILE_DOC = 1
HOSTILE = " ".join(PAYLOADS)


def _seed(server) -> None:
    def samples(hostile_correct: bool) -> list:
        rows = [make_sample(TASK, doc, f"The answer is {doc}.", doc % 2 == 0, gold=str(doc)) for doc in (0, 2, 3)]
        rows.append(make_sample(
            TASK, HOSTILE_DOC, f"thinking... {HOSTILE} final: {HOSTILE}", hostile_correct, gold="1",
            prompt=f"Question with {HOSTILE}?", reasoning=f"thinking... {HOSTILE}", answer=f"final: {HOSTILE}",
            thinking_tokens=12,
        ))
        return rows

    server.seeded["a"] = server.seed_run("dense", 0.0, {TASK: 0.75}, samples(True), paradigm="think")
    server.seeded["b"] = server.seed_run("magnitude", 0.5, {TASK: 0.5}, samples(False), paradigm="think")


@pytest.fixture(scope="module")
def browser_app_options():
    return {"seed": _seed}


def test_hostile_trace_in_compare_tab_is_inert_and_literal(ui, page, browser_app, screenshot):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # absent: skipped by the fixtures

    a, b = browser_app.seeded["a"], browser_app.seeded["b"]
    ui.open(f"?tab=compare&runs={a},{b}&task={TASK}&doc={HOSTILE_DOC}")
    try:  # the URL's load event selects the tab and fills the view
        page.wait_for_selector("#pb-tab-compare-button[aria-selected=true]", timeout=WAIT_MS)
    except PlaywrightTimeout:
        ui.select_tab("compare")
        if page.locator("#pb-compare-sample").count() == 0:
            screenshot("compare-hostile-trace-missing")
            pytest.xfail("the Compare tab has no #pb-compare-sample yet (UI-FORM helper is building it)")
        pytest.fail(f"?tab=compare did not select the Compare tab; app log:\n{browser_app.log_tail(2500)}")
    ui.wait_idle()
    # The sample view shows the question of the addressed doc (the reasoning may be collapsed).
    ui.wait_for_text("Question with", within="#pb-compare-sample")
    screenshot("compare-hostile-trace")

    for name in PWNED_GLOBALS:
        assert ui.js(f"typeof window.{name}") == "undefined", f"window.{name} was set"
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("a[href^='javascript:' i]").count() == 0
    # Visible text (question, final answer) shows the payloads as characters; textContent also
    # covers collapsed reasoning, and would lose the tags had they been parsed as HTML.
    visible = ui.text("#pb-compare-sample")
    everything = page.locator("#pb-compare-sample").text_content()
    for payload in PAYLOADS:
        assert payload in visible, f"{payload!r} not shown literally"
        assert everything.count(payload) >= 3, f"{payload!r} missing from question, reasoning or answer"
