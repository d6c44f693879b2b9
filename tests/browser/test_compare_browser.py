"""Compare tab in a real browser: a comparison opened by URL, every outcome filter applied, samples
stepped through; screenshots of each filter."""
from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from .conftest import make_sample

TASK = "synthetic-arith"
N_DOCS = 12
CORRECT = {
    "A": lambda doc: doc % 2 == 0,
    "B": lambda doc: doc % 3 == 0,
    "C": lambda doc: doc < 6,
}
"""Which docs each run answers correctly (wrong answers are "0", so answers differ when correctness does)."""


def _samples(letter: str) -> list:
    right = CORRECT[letter]
    return [make_sample(TASK, doc, f"Reasoning of {letter} on {doc}. The answer is {doc if right(doc) else 0}.",
                        right(doc), gold=str(doc), answer=str(doc if right(doc) else 0),
                        extracted=str(doc if right(doc) else 0), reasoning=f"{letter} thinks about {doc}",
                        thinking_tokens=5)
            for doc in range(N_DOCS)]


def _seed(server) -> None:
    server.seeded["A"] = server.seed_run("dense", 0.0, {TASK: 0.5}, _samples("A"))
    server.seeded["B"] = server.seed_run("magnitude", 0.5, {TASK: 0.33}, _samples("B"))
    server.seeded["C"] = server.seed_run("wanda", 0.5, {TASK: 0.5}, _samples("C"))


@pytest.fixture(scope="module")
def browser_app_options():
    return {"seed": _seed}


def _expected(outcome: str, letters: str) -> list[int]:
    docs = []
    for doc in range(N_DOCS):
        marks = {x: CORRECT[x](doc) for x in letters}
        answers = {str(doc) if marks[x] else "0" for x in letters}
        keep = {
            "all": True, "all-correct": all(marks.values()), "all-wrong": not any(marks.values()),
            "answers-differ": len(answers) > 1,
        }.get(outcome)
        if keep is None:  # only-x
            only = outcome[-1].upper()
            keep = marks[only] and not any(v for x, v in marks.items() if x != only)
        if keep:
            docs.append(doc)
    return docs


LABELS = {"all": "All", "all-correct": "All correct", "only-a": "Only A correct", "only-b": "Only B correct",
          "only-c": "Only C correct", "all-wrong": "All wrong", "answers-differ": "Answers differ"}


def _listed_docs(page) -> list[int]:
    """The doc column of the sample list (Gradio 6 renders rows as role=gridcell divs)."""
    columns = page.locator("#pb-compare-list [role=columnheader]").count()
    cells = page.locator("#pb-compare-list [role=gridcell]").all_inner_texts()
    return [int(c.strip()) for c in cells[::columns]] if columns else []


def _wait_for_docs(page, expected: list[int], outcome: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (listed := _listed_docs(page)) != expected and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert listed == expected, outcome


def test_comparison_by_url_and_every_outcome_filter(ui, page, browser_app, screenshot):
    ids = browser_app.seeded
    runs = f"{ids['A']},{ids['B']},{ids['C']}"
    ui.open(f"?tab=compare&runs={runs}&task={TASK}&outcome=only-a&doc=4")
    page.wait_for_selector("#pb-tab-compare-button[aria-selected=true]")  # the load event selects it
    ui.wait_for_text("(doc 4)", within="#pb-compare-sample")
    assert page.locator("#pb-compare-outcome input[value=only-a]").is_checked()
    ui.wait_for_text("McNemar p", within="#pb-compare-header")
    _wait_for_docs(page, _expected("only-a", "ABC"), "only-a")
    # Reasoning is collapsed by default: its text is in the page but not visible.
    reasoning = page.locator("#pb-compare-sample details.pb-reasoning").first
    assert reasoning.get_attribute("open") is None
    assert not page.get_by_text("A thinks about 4").is_visible()
    screenshot("compare-url-only-a")

    for outcome, label in LABELS.items():
        page.locator("#pb-compare-outcome").get_by_text(label, exact=True).click()
        expected = _expected(outcome, "ABC")
        if expected:
            # Two filters in a row can list the same number of docs, so wait for the list itself.
            ui.wait_for_text(f"of {len(expected)} ", within="#pb-compare-page-info")
            _wait_for_docs(page, expected, outcome)
            ui.wait_for_text(f"(doc {expected[0]})", within="#pb-compare-sample")
        else:
            ui.wait_for_text("No samples match", within="#pb-compare-page-info")
            ui.wait_for_text("No sample matches", within="#pb-compare-sample")
        screenshot(f"compare-outcome-{outcome}")

    # Step through the "all" list with next / previous, and open a sample by clicking its row.
    page.locator("#pb-compare-outcome").get_by_text("All", exact=True).click()
    ui.wait_for_text("(doc 0)", within="#pb-compare-sample")
    expect(page.locator("#pb-compare-prev")).to_be_disabled()
    page.locator("#pb-compare-next").click()
    ui.wait_for_text("(doc 1)", within="#pb-compare-sample")
    page.locator("#pb-compare-list [role=gridcell]", has_text=re.compile(r"^\s*7\s*$")).first.click()
    ui.wait_for_text("(doc 7)", within="#pb-compare-sample")
    assert "doc=7" in ui.text("#pb-compare-link")
    page.locator("#pb-compare-sample details.pb-reasoning summary").first.click()
    assert page.get_by_text("A thinks about 7").is_visible()
    screenshot("compare-sample-expanded")
    assert not [e for e in page.console_errors if "pageerror" in e], page.console_errors


def test_compare_tab_without_runs_explains_what_to_do(ui, page):
    ui.open("?tab=compare")
    page.wait_for_selector("#pb-tab-compare-button[aria-selected=true]")
    ui.wait_for_text("Pick two or three runs", within="#pb-compare-header")
    expect(page.locator("#pb-compare-next")).to_be_disabled()
    expect(page.locator("#pb-compare-prev")).to_be_disabled()
