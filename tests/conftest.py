"""Shared fixtures: an isolated PRUNEBOARD_HOME per test, one persistent model cache, real data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
# Postgres mode (PRUNEBOARD_TEST_POSTGRES_URL): fixtures and helpers in tests/pg_support.py
from pg_support import empty_postgres_database, postgres_database, postgres_template, server_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
# Models are cached across tests and runs (downloads and conversions are slow); never committed.
TEST_MODEL_CACHE = ROOT / "var" / "test-cache"
SHORT_EFFICIENCY_PROBE = {"PRUNEBOARD_EFFICIENCY_ITERATIONS": "2", "PRUNEBOARD_EFFICIENCY_MIN_SECONDS": "0",
                          "PRUNEBOARD_EFFICIENCY_PROMPT_TOKENS": "32", "PRUNEBOARD_EFFICIENCY_NEW_TOKENS": "8"}
"""Every run's efficiency probe in tests: 2 iterations, no minimum time (the defaults time each figure
for at least 10 iterations and 10 s)."""


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch, request):
    """Each test gets its own home (database, exports) but shares the model cache; with
    PRUNEBOARD_TEST_POSTGRES_URL set, its own Postgres database instead of SQLite (tests/pg_support.py)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PRUNEBOARD_HOME", str(home))
    monkeypatch.setenv("PRUNEBOARD_CACHE_DIR", str(TEST_MODEL_CACHE))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    if server_url() is not None:
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("postgres_database"))
    monkeypatch.setenv("PRUNEBOARD_ALLOW_NOOP", "1")
    monkeypatch.setenv("PRUNEBOARD_AUTO_BASELINES", "0")  # tests of the feature switch it on
    monkeypatch.setenv("PRUNEBOARD_SEED_RESULTS", "0")  # likewise: the shipped snapshot stays out
    for logger_setting in ("WANDB_API_KEY", "PRUNEBOARD_TRACKIO_PROJECT"):  # no test logs to a real tracker
        monkeypatch.delenv(logger_setting, raising=False)
    for name, value in SHORT_EFFICIENCY_PROBE.items():
        monkeypatch.setenv(name, value)
    if SHARED_DATA.is_dir():
        monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(SHARED_DATA))
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skipped when absent, except under CI=true where it must exist."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {SHARED_DATA} is missing")
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, loaded once per session: (model, tokenizer).

    Tests that prune must work on a copy (`copy.deepcopy(model)`), never on this object.
    """
    os.environ.setdefault("PRUNEBOARD_CACHE_DIR", str(TEST_MODEL_CACHE))
    from backend.models.loading import load_model

    loaded = load_model("builtin:smollm2-135m-instruct")
    return loaded


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A loopback Hugging Face Hub (tests/hub_server.py) serving this test only; HF_ENDPOINT points at
    it and HF_HOME is private, so neither the real Hub nor a saved token is ever used."""
    from hub_server import FakeHub

    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        yield server
