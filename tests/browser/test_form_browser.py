"""Submit tab in a real browser: the form follows the method, validates inline, writes the YAML that is
submitted, and the job runs to the end on builtin:tiny-llama in the app's local worker, live in the
Queue tab; submitting the same form again is flagged as a duplicate that opens the existing job."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

RUN_MS = 300_000
"""A tiny-llama run takes seconds of compute, but the worker imports torch and lm-eval first on
shared CPU cores."""


@pytest.fixture(scope="module")
def browser_app_options():
    return {"workers": 1}


def _choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _type(page, selector: str, value: str) -> None:
    box = page.locator(selector)
    box.fill(value)
    box.press("Tab")


def test_form_submits_a_config_that_finishes_in_the_queue(ui, page, screenshot):
    ui.open("?tab=submit")
    page.wait_for_selector("#pb-tab-submit-button[aria-selected=true]")
    ui.wait_for_text("Valid", within="#pb-submit-check")

    # A depth method needs a sparsity above 0: the form says so, from the CLI's schema.
    _choose(page, "pb-submit-method", "depth · shortgpt")
    # leaving dense starts from sparsity 0.25 (wait for it: "Valid" was already shown for dense)
    page.wait_for_function(
        "() => document.querySelector('#pb-submit-sparsity input[type=number]')?.value === '0.25'", timeout=60_000)
    ui.wait_for_text("Valid", within="#pb-submit-check")
    _type(page, "#pb-submit-sparsity input[type=number]", "0")
    ui.wait_for_text("needs a sparsity > 0", within="#pb-submit-check")
    page.locator("#pb-param-choice-0").wait_for(state="visible")
    assert "last block output" in ui.text("#pb-param-choice-0")  # shortgpt's one parameter (a choice)
    assert page.locator("#pb-param-choice-1").is_hidden() and page.locator("#pb-param-text-0").is_hidden()

    # Magnitude pruning: its own parameters appear, calibration stays hidden (uniform allocation).
    _choose(page, "pb-submit-method", "unstructured · magnitude")
    ui.wait_for_text("allocation", within="#pb-param-choice-0")  # the slot shortgpt used is relabelled
    assert "pattern" in ui.text("#pb-param-text-0")
    _type(page, "#pb-submit-sparsity input[type=number]", "0.5")
    _type(page, "#pb-submit-limit input", "6")
    _type(page, "#pb-submit-max-new-tokens input", "8")
    ui.wait_for_text("at most 48 new tokens", within="#pb-submit-estimate")  # 6 samples x 8 tokens
    ui.wait_for_text("Valid", within="#pb-submit-check")
    screenshot("submit-form-magnitude")

    page.locator("#pb-submit-apply").click()
    ui.wait_for_text("method: magnitude", within="#pb-submit-editor")
    editor = ui.text("#pb-submit-editor")
    assert "sparsity: 0.5" in editor and "max_new_tokens: 8" in editor
    page.locator("#pb-submit-button").click()
    ui.wait_for_text("Queued as job 1", within="#pb-submit-message")

    ui.select_tab("queue")
    expect(page.locator("#pb-queue-job input")).to_have_value("1")  # the submitted job is selected
    ui.wait_for_text("Job 1", within="#pb-queue-detail")
    ui.wait_for_text("succeeded", within="#pb-queue-detail", timeout_ms=RUN_MS)
    detail = ui.text("#pb-queue-detail")
    assert "synthetic-arith" in detail and "synthetic-mc" in detail  # the scores it stored
    expect(page.locator("#pb-queue-cancel")).to_be_disabled()
    expect(page.locator("#pb-queue-retry")).to_be_disabled()
    screenshot("queue-job-succeeded")

    # The same form again is a duplicate of job 1, and the button opens it in the queue.
    ui.select_tab("submit")
    _type(page, "#pb-submit-seed input", "0")
    ui.wait_for_text("Duplicate", within="#pb-submit-duplicate")
    assert "job 1" in ui.text("#pb-submit-duplicate")
    page.locator("#pb-submit-open-duplicate").click()
    page.wait_for_selector("#pb-tab-queue-button[aria-selected=true]")
    ui.wait_for_text("Job 1", within="#pb-queue-detail")
    assert not [e for e in page.console_errors if "pageerror" in e], page.console_errors


NOOP_CONFIG = "model: builtin:noop\nmodel_args: {sleep_ms: 10}\ntasks: [synthetic-mc]\n"


def test_queue_buttons_are_explained_without_a_selection(ui, page, browser_app):
    job_id = browser_app.submit_config(NOOP_CONFIG)
    ui.open("?tab=queue")
    page.wait_for_selector("#pb-tab-queue-button[aria-selected=true]")
    expect(page.locator("#pb-queue-cancel")).to_be_disabled()
    expect(page.locator("#pb-queue-retry")).to_be_disabled()
    assert "Select a job" in ui.text("#pb-queue-hint")
    assert "No job selected" in ui.text("#pb-queue-detail")
    # The timer keeps refreshing the table while no job is selected (an empty job box is no error).
    ui.wait_for_text("builtin:noop", within="#pb-queue-table")
    page.locator("#pb-queue-table [role=gridcell]").first.click()  # newest first: this job
    ui.wait_for_text(f"Job {job_id}", within="#pb-queue-detail")
    expect(page.locator("#pb-queue-job input")).to_have_value(str(job_id))
