"""Optional experiment logging (backend.experiment_log): finished runs go through lm-eval's own
Trackio / W&B loggers only when the package and its settings are both present; otherwise nothing
changes. `trackio` is not a dependency, so a stand-in package on sys.path plays it here."""
from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest

from backend.experiment_log import enabled_loggers
from db.session import dispose_engines, init_db
from jobs.run_files import log_finished_run
from test_run_files import older_run

STAND_IN = textwrap.dedent('''
    """Records what lm-eval's TrackioLogger asks of trackio."""
    CALLS = []

    class Trace:
        def __init__(self, messages, metadata):
            self.messages, self.metadata = messages, metadata

    class _Config:
        def update(self, values):
            CALLS.append(("config", values))

    config = _Config()

    def init(**kwargs):
        CALLS.append(("init", kwargs))
        return object()

    def log(values, step=None):
        CALLS.append(("log", values))

    def finish():
        CALLS.append(("finish", None))
''')


@pytest.fixture(autouse=True)
def _database():
    init_db()
    yield
    dispose_engines()


@pytest.fixture()
def stand_in_trackio(tmp_path, monkeypatch):
    (tmp_path / "trackio").mkdir()
    (tmp_path / "trackio" / "__init__.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("trackio", None)


def test_without_the_packages_nothing_is_logged(monkeypatch):
    if any(importlib.util.find_spec(package) for package in ("wandb", "trackio")):
        pytest.skip("wandb or trackio is installed here")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("PRUNEBOARD_TRACKIO_PROJECT", "pruneboard-tests")
    assert enabled_loggers() == []
    job_id = older_run()  # completes through jobs.queue.complete, which calls the hook
    assert log_finished_run(job_id) == []
    assert "trackio" not in sys.modules and "wandb" not in sys.modules


def test_a_package_without_its_setting_stays_off(stand_in_trackio):
    assert enabled_loggers() == []
    assert log_finished_run(older_run()) == []
    assert "trackio" not in sys.modules  # not even imported


def test_trackio_gets_the_run_through_lm_evals_logger(stand_in_trackio, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_TRACKIO_PROJECT", "pruneboard-tests")
    assert enabled_loggers() == ["trackio"]
    job_id = older_run()  # the completion hook logs it once
    import trackio

    calls = trackio.CALLS
    kinds = [kind for kind, _ in calls]
    assert kinds[0] == "init" and kinds[-1] == "finish" and kinds.count("init") == 1
    init = calls[0][1]
    assert init["project"] == "pruneboard-tests" and init["name"] == f"builtin:noop@pruneboard-job-{job_id}"
    assert init["config"]["job_id"] == job_id
    metrics = [values for kind, values in calls if kind == "log" and not any(k.endswith("/sample") for k in values)]
    assert metrics == [{"gsm8k/sample_len": 1, "gsm8k/exact_match,flexible-extract": 1.0,
                        "wikitext2-ppl/sample_len": 1, "wikitext2-ppl/perplexity": pytest.approx(7.389),
                        "winogrande/sample_len": 1, "winogrande/acc": 1.0}]  # ",none" dropped by lm-eval
    task_configs = next(values for kind, values in calls if kind == "config")["task_configs"]
    assert task_configs["winogrande"]["output_type"] == "multiple_choice"
    traces = [values for kind, values in calls if kind == "log" and any(k.endswith("/sample") for k in values)]
    gsm8k = [t["gsm8k/sample"] for t in traces if "gsm8k/sample" in t]
    assert len(gsm8k) == 2 and gsm8k[0].messages[0]["content"] == "<|user|>What is 2+2?"
    assert {t.metadata["filter"] for t in gsm8k} == {"strict-match", "flexible-extract"}
