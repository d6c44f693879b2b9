"""The app in a real browser: it loads, every tab opens, a failed job's hostile error text is inert."""
from __future__ import annotations

from pathlib import Path

import pytest

from ui.layout import TABS

from .conftest import GradioPage

ROOT = Path(__file__).resolve().parents[2]
RUN_WAIT_MS = 300_000
"""A tiny-llama run takes seconds alone, minutes on two CPU cores shared by many processes."""

PAYLOADS = (
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned2=1">',
    "[x](javascript:window.__pwned3=1)",
)
PWNED_GLOBALS = ("__pwned", "__pwned2", "__pwned3")
ERROR_TYPE = "HostileOutputError"


def _seed(server) -> None:
    server.seed_run("dense", 0.0, {"synthetic-mc": 0.75})
    server.seed_run("magnitude", 0.5, {"synthetic-mc": 0.5})
    server.seed_failed(ERROR_TYPE, "model said " + " and ".join(PAYLOADS), log_tail="\n".join(PAYLOADS))


@pytest.fixture(scope="module")
def browser_app_options():
    return {"seed": _seed}


def test_app_loads_and_every_tab_opens(ui, page, screenshot):
    ui.open()
    assert "PruneBoard" in page.title()
    assert ui.selected_tab() == "leaderboard"
    for _label, tab_id, _module in TABS:
        ui.select_tab(tab_id)
        assert ui.selected_tab() == tab_id
        assert page.locator(f"#pb-tab-{tab_id}").is_visible()
        screenshot(f"tab-{tab_id}")
    assert not [e for e in page.console_errors if "pageerror" in e], page.console_errors


def test_failed_job_error_renders_literally_and_runs_no_script(ui, page, screenshot):
    ui.open()
    ui.select_tab("queue")
    # The error is shown in the queue table or in the job's details, whatever the layout.
    ui.wait_for_text(ERROR_TYPE, within="#pb-tab-queue")
    screenshot("queue-hostile-error")
    shown = ui.text("#pb-tab-queue")
    for payload in PAYLOADS:
        assert payload in shown, f"{payload!r} not shown literally"
    for name in PWNED_GLOBALS:
        assert ui.js(f"typeof window.{name}") == "undefined", f"window.{name} was set"
    # No element was created from the payloads (an <img onerror> or a javascript: link).
    assert page.locator("#pb-tab-queue img[src=x]").count() == 0
    assert page.locator("#pb-tab-queue a[href^='javascript:']").count() == 0


@pytest.mark.slow
def test_local_worker_runs_a_queued_job_shown_live_in_the_queue(app_factory, page, screenshot):
    server = app_factory(workers=1)
    ui = GradioPage(page, server)
    ui.open()
    ui.select_tab("queue")
    job_id = server.submit_config((ROOT / "examples" / "tiny-dense.yaml").read_text())
    # The only job of this app; the table refreshes itself (gr.Timer), the page is not reloaded.
    ui.wait_for_text("succeeded", within="#pb-queue-table", timeout_ms=RUN_WAIT_MS)
    screenshot("queue-local-worker-succeeded")
    assert server.job_state(job_id) == "succeeded"
