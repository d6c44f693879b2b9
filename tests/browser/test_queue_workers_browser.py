"""The Queue tab explains itself in a real browser: the Workers panel, a queued job's waiting reason,
buttons that would do nothing disabled (and grey) from the first paint; and the API tokens tab:
create a token (shown once), use it, revoke it."""
from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest

from .conftest import WAIT_MS
from .test_smoke_browser import PAYLOADS, PWNED_GLOBALS

USER = "alice"
WAITING = "waiting: needs a CUDA worker with ≥ 40 GB; none online"
BIG_GPU_JOB = ("model: builtin:tiny-llama\ntasks: [synthetic-mc]\nseed: 2\n"
               "resources: {device: cuda, min_accelerator_memory_gb: 40}\n")
SMALL_JOB = "model: builtin:tiny-llama\ntasks: [synthetic-mc]\nseed: 1\n"


def _seed(server) -> None:
    from backend.config import parse_config_text
    from db.schema import WorkerRecord, utcnow
    from db.session import write_session
    from jobs import queue, registry
    from jobs.resources import Capabilities

    server.seeded["done"] = server.seed_run("dense", 0.0, {"synthetic-mc": 0.7})
    with server.database():
        for name, text in (("big", BIG_GPU_JOB), ("small", SMALL_JOB)):  # USER's: they may cancel them
            server.seeded[name] = queue.submit(parse_config_text(text), submitter=USER)[0].id
        for worker_id, caps in (("cpu-box", Capabilities(tasks=("synthetic-mc",))),
                                ("gpu-small", Capabilities(device="cuda", accelerator_memory_gb=24, hub=True,
                                                           models=PAYLOADS[:2]))):
            registry.seen(worker_id, current_job_id=None, device={"capabilities": caps.model_dump(mode="json")})
        with write_session() as session:
            session.add(WorkerRecord(id="gpu-gone", last_heartbeat_at=utcnow() - timedelta(days=1), device_json={
                "capabilities": Capabilities(device="cuda", accelerator_memory_gb=80).model_dump(mode="json")}))


@pytest.fixture(scope="module")
def browser_app_options():
    # Long leases: the seeded workers stay online however long the app takes to start.
    return {"seed": _seed, "env": {"PRUNEBOARD_TEST_IDENTITY": USER, "PRUNEBOARD_LEASE_SECONDS": "3600"}}


_BUTTON = """(sel) => { const b = document.querySelector(sel); const s = getComputedStyle(b);
  return {disabled: b.disabled, bg: s.backgroundColor, cursor: s.cursor}; }"""


def _rgb(css: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


def _looks_disabled(style: dict) -> bool:
    """Disabled, flat grey (no variant colour), and a not-allowed cursor."""
    r, g, b = _rgb(style["bg"])
    return style["disabled"] and max(r, g, b) - min(r, g, b) < 24 and style["cursor"] == "not-allowed"


def _select_job(ui, page, job_id: int) -> None:
    page.fill("#pb-queue-job input", str(job_id))
    page.press("#pb-queue-job input", "Enter")
    ui.wait_for_text(f"Job {job_id}", within="#pb-queue-detail")
    ui.wait_idle()


def test_workers_panel_and_waiting_reason(ui, page, browser_app, screenshot):
    ui.open()
    ui.select_tab("queue")
    ui.wait_for_text("gpu-small", within="#pb-workers")
    ui.wait_for_text(WAITING, within="#pb-queue-table")
    screenshot("queue-workers-panel")
    panel = ui.text("#pb-workers")
    assert "2 online (0 running, 2 idle); 1 stale" in panel
    assert "cpu-box" in panel and "gpu-gone" in panel and "CUDA, 24 GB" in panel and "CPU" in panel
    assert "builtin, hub" in panel and "not reported" in panel  # the stale record was seeded without tasks
    for payload in PAYLOADS[:2]:  # model ids a worker listed: shown as text, never as markup
        assert payload in panel
    assert page.locator("#pb-workers img").count() == 0
    for name in PWNED_GLOBALS:
        assert ui.js(f"typeof window.{name}") == "undefined"
    # the small job can run on the CPU worker: it states no reason
    table = ui.text("#pb-queue-table")
    assert table.count("waiting:") == 1

    _select_job(ui, page, browser_app.seeded["big"])
    ui.wait_for_text("Waiting: needs a CUDA worker", within="#pb-queue-detail")


def test_buttons_that_would_do_nothing_look_disabled_at_once(ui, page, browser_app, screenshot):
    ui.open()
    ui.select_tab("queue")
    style = lambda sel: page.evaluate(_BUTTON, sel)  # noqa: E731
    for button in ("#pb-queue-show", "#pb-queue-cancel", "#pb-queue-retry"):  # no job selected yet
        assert _looks_disabled(style(button)), (button, style(button))

    _select_job(ui, page, browser_app.seeded["done"])  # a succeeded job: nothing to cancel or retry
    screenshot("queue-succeeded-job-buttons")
    assert _looks_disabled(style("#pb-queue-cancel")) and _looks_disabled(style("#pb-queue-retry"))
    assert not style("#pb-queue-show")["disabled"]
    every_disabled = page.evaluate("""() => [...document.querySelectorAll('#pb-tab-queue button:disabled')]
        .map(b => ({id: b.id, bg: getComputedStyle(b).backgroundColor, cursor: getComputedStyle(b).cursor,
                    disabled: true}))""")
    assert every_disabled and all(_looks_disabled(b) for b in every_disabled), every_disabled

    # A queued job of the user: Cancel is live, and red once its background's transition has run.
    _select_job(ui, page, browser_app.seeded["small"])
    page.wait_for_function("""() => {
        const b = document.querySelector('#pb-queue-cancel');
        const [r, g] = getComputedStyle(b).backgroundColor.match(/\\d+/g).map(Number);
        return !b.disabled && r > g + 60; }""", timeout=WAIT_MS)
    assert style("#pb-queue-cancel")["cursor"] != "not-allowed"


def test_api_token_is_shown_once_works_and_is_revoked(ui, page, browser_app, screenshot):
    ui.open()
    ui.select_tab("tokens")
    ui.wait_for_text(f"Tokens act as {USER}", within="#pb-tokens-intro")
    page.locator("#pb-tokens-label input, #pb-tokens-label textarea").first.fill("notebook")
    page.click("#pb-tokens-create")
    ui.wait_for_text("shown only once", within="#pb-tokens-message")
    token = page.locator("#pb-tokens-new input, #pb-tokens-new textarea").first.input_value()
    assert token.startswith("pbu_")
    ui.wait_for_text("notebook", within="#pb-tokens-table")
    screenshot("tokens-created")
    jobs = f"{browser_app.url}api/v1/user/jobs"
    assert httpx.get(jobs, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    assert token not in ui.text("#pb-tokens-table")

    assert page.evaluate(_BUTTON, "#pb-tokens-revoke")["disabled"]  # no token chosen yet
    page.locator("#pb-tokens-table [role=gridcell]", has_text="notebook").first.click()
    page.wait_for_function("() => !document.querySelector('#pb-tokens-revoke').disabled", timeout=WAIT_MS)
    page.click("#pb-tokens-revoke")
    ui.wait_for_text("revoked: requests with it are refused", within="#pb-tokens-message")
    ui.wait_for_text("revoked", within="#pb-tokens-table")
    page.wait_for_function("() => document.querySelector('#pb-tokens-revoke').disabled", timeout=WAIT_MS)
    screenshot("tokens-revoked")
    assert httpx.get(jobs, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 403
