"""Real-browser tests: Playwright drives Debian's `chromium` against `python app.py` in a subprocess.

Playwright's own browser download does not work here, so Chromium is launched from the system
package (`.ci/run` installs it). Without playwright or chromium the tests skip, except under CI=true
where that is an error.

Fixtures (see each docstring):
- `app_factory(workers=0, seed=None, env=None) -> AppServer` starts an app (stopped at session end);
- `browser_app` (module scope): an `AppServer` built from the module's `browser_app_options`
  fixture (override it in a test module: `{"workers": 1, "seed": callable(AppServer)}`);
- `page`: a fresh Playwright page (new context, 1366x900), console errors collected in
  `page.console_errors`; `screenshot(name)` saves var/test-artifacts/screenshots/<name>.png.
- `ui`: `GradioPage(page, browser_app)` (build your own for an `app_factory` app): `ui.open(query="")`, `ui.select_tab(tab_id)`,
  `ui.wait_for_text(text, within="body")`, `ui.text(within)`, `ui.wait_idle()`, `ui.selected_tab()`.
`make_sample(task, doc_id, output, correct, ...)` builds a SampleRecord for `AppServer.seed_run`
(`from .conftest import make_sample`).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = ROOT / "var" / "test-artifacts" / "screenshots"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
WAIT_MS = 60_000
"""Generous: several test processes share two CPU cores; waits end as soon as the page is ready."""
APP_START_SECONDS = 120
SCORE_KEY = "browser-test"
"""comparability_key of seeded scores (all seeded runs are comparable with each other)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason} (.ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    _missing("the chromium package is not installed")


@pytest.fixture(scope="session")
def playwright_browser(chromium_path: str):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        yield browser
        browser.close()


# --- the app under test ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_sample(
    task: str,
    doc_id: int,
    output: str,
    correct: bool | None,
    *,
    gold: str = "42",
    prompt: str | None = None,
    extracted: str | None = None,
    reasoning: str | None = None,
    answer: str | None = None,
    output_tokens: int | None = None,
    thinking_tokens: int | None = None,
    truncated: bool = False,
    finish_reason: str = "stop",
):
    """A generated `SampleRecord` with plausible defaults (prompt "Question <doc_id>?")."""
    from backend.result import SampleRecord

    return SampleRecord(
        task=task, doc_id=doc_id, prompt=prompt if prompt is not None else f"Question {doc_id}?",
        output=output, extracted=extracted if extracted is not None else (answer or output)[-40:],
        gold=gold, correct=correct, prompt_tokens=8,
        output_tokens=output_tokens if output_tokens is not None else len(output.split()),
        metrics={} if correct is None else {"acc": float(correct)},
        reasoning=reasoning, answer=answer if answer is not None else output,
        finish_reason=finish_reason, thinking_tokens=thinking_tokens, truncated=truncated,
    )


@dataclass
class AppServer:
    """One running `python app.py` with its own PRUNEBOARD_HOME.

    `seed_run` / `seed_failed` write through `jobs.queue` (submit, claim_next, complete / fail) into
    this app's database; they may be called before start (the `seed` callable) or while the app runs,
    but not while its local workers run (a worker could claim the job being seeded).
    """

    home: Path
    workers: int = 0
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    seeded: dict[str, Any] = field(default_factory=dict)
    """Free for the `seed` callable to record what it wrote (job ids) for the tests."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @contextmanager
    def database(self) -> Iterator[None]:
        """Point this process's settings at the app's home (other fixtures set their own)."""
        names = ("PRUNEBOARD_HOME", "DATABASE_URL", "PRUNEBOARD_AUTO_BASELINES")
        saved = {name: os.environ.get(name) for name in names}
        os.environ["PRUNEBOARD_HOME"] = str(self.home)
        os.environ.pop("DATABASE_URL", None)
        os.environ["PRUNEBOARD_AUTO_BASELINES"] = self.env.get("PRUNEBOARD_AUTO_BASELINES", "0")
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def _claimed(self, config_data: Mapping[str, Any]):
        from backend.config import validate_config
        from jobs import queue

        if self.proc is not None and self.workers:
            raise RuntimeError("seed before start when the app runs local workers")
        job, _ = queue.submit(validate_config(dict(config_data)), force=True)
        claimed = queue.claim_next("browser-seed")
        if claimed is None or claimed.id != job.id:
            raise RuntimeError(f"seeding job {job.id}: another queued job was claimed first")
        return claimed

    def seed_run(
        self,
        method: str = "dense",
        sparsity: float = 0.0,
        scores: Mapping[str, float] | Iterable[Any] = (),
        samples: Iterable[Any] = (),
        *,
        model: str = "builtin:tiny-llama",
        paradigm: str = "instruct",
        tasks: Iterable[str] = (),
        config: Mapping[str, Any] | None = None,
    ) -> int:
        """A succeeded job; returns its id.

        `scores`: {task: value} (metric "acc", higher is better, primary, comparability key
        SCORE_KEY) or ScoreRecords. `samples`: SampleRecords (see `make_sample`); their full texts
        are stored as traces by `queue.complete`. The config's tasks are `tasks` plus every task of
        the scores and samples; `config` adds or overrides config fields (e.g. pruning params).
        """
        from backend.result import RunResult, ScoreRecord
        from jobs import queue

        records = [
            ScoreRecord(task, "acc", float(value), 0.01, True, True, SCORE_KEY)
            for task, value in scores.items()
        ] if isinstance(scores, Mapping) else list(scores)
        samples = list(samples)
        names = sorted({*tasks, *(r.task for r in records), *(s.task for s in samples)}) or ["synthetic-mc"]
        data = {"model": model, "paradigm": paradigm, "tasks": names,
                "pruning": {"method": method, "sparsity": sparsity}, **(config or {})}
        with self.database():
            claimed = self._claimed(data)
            result = RunResult(scores=records, samples=samples, efficiency={},
                               prune_report={"method": method}, manifest={"seeded_by": "tests/browser"})
            if not queue.complete(claimed.id, claimed.attempts, result):
                raise RuntimeError(f"seeding job {claimed.id}: completion was refused")
        return claimed.id

    def seed_failed(
        self,
        error_type: str,
        message: str,
        log_tail: str | None = None,
        *,
        method: str = "magnitude",
        sparsity: float = 0.5,
        model: str = "builtin:tiny-llama",
        tasks: Iterable[str] = ("synthetic-mc",),
    ) -> int:
        """A failed job with this exception type, message and log tail; returns its id."""
        from jobs import queue

        data = {"model": model, "tasks": list(tasks), "pruning": {"method": method, "sparsity": sparsity}}
        with self.database():
            claimed = self._claimed(data)
            if not queue.fail(claimed.id, claimed.attempts, error_type, message, log_tail):
                raise RuntimeError(f"seeding job {claimed.id}: failing it was refused")
        return claimed.id

    def submit_config(self, yaml_text: str) -> int:
        """Queue a config as the CLI would (for the local workers to run); returns the job id."""
        from backend.config import parse_config_text
        from jobs import queue

        with self.database():
            job, _ = queue.submit(parse_config_text(yaml_text))
        return job.id

    def job_state(self, job_id: int) -> str:
        from jobs import queue

        with self.database():
            return queue.get_job(job_id).state.value

    def start(self) -> None:
        self.port = _free_port()
        env = {
            **os.environ,
            "PRUNEBOARD_HOME": str(self.home),
            "PRUNEBOARD_LOCAL_WORKERS": str(self.workers),
            "PRUNEBOARD_AUTO_BASELINES": "0",
            "PRUNEBOARD_SEED_RESULTS": "0",  # tests see what they seed; the fresh-start test turns it on
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            **self.env,
        }
        env.pop("DATABASE_URL", None)
        log = open(self.home / "app.log", "w")  # a file, not a pipe: a full pipe would block the app
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, text=True)
        log.close()
        deadline = time.monotonic() + APP_START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"app exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"app did not serve within {APP_START_SECONDS} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # app.py stops its workers at exit
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 4000) -> str:
        path = self.home / "app.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture(scope="session")
def app_factory(tmp_path_factory, playwright_browser) -> Iterator[Callable[..., AppServer]]:
    """`app_factory(workers=0, seed=None, env=None)`: start an app with a fresh PRUNEBOARD_HOME.

    `seed(server)` runs before the app starts (e.g. `server.seed_run(...)`); `env` adds variables.
    Depends on the browser so that a missing chromium skips before any app is started.
    """
    servers: list[AppServer] = []

    def start(workers: int = 0, seed: Callable[[AppServer], Any] | None = None,
              env: Mapping[str, str] | None = None) -> AppServer:
        home = tmp_path_factory.mktemp("browser-home")
        server = AppServer(home=home, workers=workers, env=dict(env or {}))
        if shared := os.environ.get("PRUNEBOARD_DATA_DIR") or _shared_data():
            server.env.setdefault("PRUNEBOARD_DATA_DIR", shared)
        server.env.setdefault("PRUNEBOARD_CACHE_DIR", str(ROOT / "var" / "test-cache"))
        server.env.setdefault("PRUNEBOARD_ALLOW_NOOP", "1")
        if seed is not None:
            seed(server)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def _shared_data() -> str | None:
    path = ROOT.parent / "shared" / "data"
    return str(path) if path.is_dir() else None


@pytest.fixture(scope="module")
def browser_app_options() -> dict[str, Any]:
    """Override in a test module: {"workers": N, "seed": callable(AppServer), "env": {...}}."""
    return {}


@pytest.fixture(scope="module")
def browser_app(app_factory, browser_app_options) -> AppServer:
    """One app per test module, built from `browser_app_options`."""
    return app_factory(**browser_app_options)


# --- pages ---------------------------------------------------------------------------------------


@pytest.fixture
def page(playwright_browser, request):
    """A page in a fresh browser context; `page.console_errors` lists console errors and page errors.

    Navigate with `ui.open(query)` (or `GradioPage(page, server).open()` for an app of your own). On failure a screenshot
    `FAILED-<test name>.png` is saved.
    """
    context = playwright_browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    context.set_default_timeout(WAIT_MS)
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    new_page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    new_page.console_errors = errors
    yield new_page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        _save(new_page, f"FAILED-{request.node.name}")
    context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report


def _save(page, name: str) -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def screenshot(page) -> Callable[[str], Path]:
    """`screenshot(name)`: full-page PNG of `page` at var/test-artifacts/screenshots/<name>.png."""
    return lambda name: _save(page, name)


class GradioPage:
    """Wait helpers for the Gradio app on one page (the `ui` fixture)."""

    def __init__(self, page, app: AppServer):
        self.page, self.app = page, app

    def open(self, query: str = "") -> None:
        """Go to the app (optional query such as "?tab=compare&runs=1,2") and wait until the tabs
        are rendered and Gradio's load events have finished."""
        self.page.goto(self.app.url + query.lstrip("/"), wait_until="domcontentloaded")
        self.page.locator("#pb-tabs [role=tab]").first.wait_for(state="visible")
        self.wait_idle()

    def wait_idle(self, timeout_ms: int = WAIT_MS) -> None:
        """Wait until no Gradio component shows a pending status (a running event)."""
        self.page.wait_for_function(
            "() => !document.querySelector('.wrap.pending, .wrap.generating')",
            timeout=timeout_ms, polling=250,
        )

    def tab_button(self, tab_id: str):
        """Gradio 6 renders each tab button as `button[role=tab]#pb-tab-<id>-button[data-tab-id=<id>]`."""
        return self.page.locator(f"#pb-tab-{tab_id}-button")

    def select_tab(self, tab_id: str) -> None:
        """Click the tab's button and wait for its panel (`#pb-tab-<id>`) to show."""
        button = self.tab_button(tab_id)
        if not button.is_visible():  # narrow viewports move tabs into the "More tabs" menu
            self.page.get_by_role("button", name="More tabs").click()
            self.page.locator("#pb-tabs .overflow-dropdown button", has_text=_tab_label(tab_id)).click()
        else:
            button.click()
        self.page.wait_for_selector(f"#pb-tab-{tab_id}-button[aria-selected=true]")
        self.page.locator(f"#pb-tab-{tab_id}").wait_for(state="visible")
        self.wait_idle()

    def selected_tab(self) -> str | None:
        return self.page.locator("#pb-tabs [role=tab][aria-selected=true]").get_attribute("data-tab-id")

    def wait_for_text(self, text: str, within: str = "body", timeout_ms: int = WAIT_MS) -> None:
        """Wait until `text` is part of the rendered text (innerText) of the CSS selector `within`."""
        self.page.wait_for_function(
            "([sel, text]) => { const el = document.querySelector(sel); return !!el && el.innerText.includes(text); }",
            arg=[within, text], timeout=timeout_ms, polling=250,
        )

    def text(self, within: str = "body") -> str:
        """The rendered text (innerText) of `within`: what a user reads; markup shows as characters."""
        return self.page.locator(within).first.inner_text()

    def js(self, expression: str) -> Any:
        return self.page.evaluate(expression)


def _tab_label(tab_id: str) -> str:
    from ui.layout import TABS

    return next(label for label, tid, _ in TABS if tid == tab_id)


@pytest.fixture
def ui(page, browser_app) -> GradioPage:
    """`GradioPage` helpers bound to `page` and `browser_app`."""
    return GradioPage(page, browser_app)
