"""Results that survive a Space restart (jobs.results_repo) against the loopback Hub
(tests/hub_server.py, the real huggingface_hub client): push and restore round trip, restore before
the shipped snapshot, the debounced pusher, and the warning when results would be lost."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.config import validate_config
from backend.result import RunResult, SampleRecord, ScoreRecord
from db.schema import Job
from db.session import dispose_engines, init_db, read_session
from hub_server import TEST_TOKEN
from jobs import access, bundle, queue, results_repo

REPO = "board-owner/pruneboard-results"


@pytest.fixture()
def space_results(hub, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_RESULTS_REPO", REPO)
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    init_db()
    yield hub
    dispose_engines()


def _run(method: str, sparsity: float, value: float) -> int:
    config = {"model": "builtin:smollm2-135m-instruct", "tasks": [{"name": "gsm8k", "limit": 2}]}
    if method != "dense":
        config.update(pruning={"method": method, "sparsity": sparsity},
                      calibration={"source": "text", "path": "wikitext2/valid.txt"})
    job, _ = queue.submit(validate_config(config))
    claimed = queue.claim_next("test-worker")
    samples = [SampleRecord("gsm8k", i, f"q{i}", f"The answer is {i}.", str(i), str(i), True, 4, 6,
                            {"exact_match,flexible-extract": 1.0}, answer=f"The answer is {i}.",
                            finish_reason="stop") for i in range(2)]
    result = RunResult(scores=[ScoreRecord("gsm8k", "exact_match,flexible-extract", value, None, True, True, "k")],
                       samples=samples, efficiency={}, prune_report={}, manifest={"project_commit": "abc"})
    assert queue.complete(job.id, claimed.attempts, result)
    return job.id


def _origins() -> set[str]:
    with read_session() as session:
        deployment = bundle.deployment_id(session)
        return {bundle.origin_id(job, deployment) for job in session.scalars(select(Job))}


def _switch_database(monkeypatch, home: Path) -> None:
    dispose_engines()
    home.mkdir(parents=True)
    monkeypatch.setenv("PRUNEBOARD_HOME", str(home))


def test_push_then_restore_into_an_empty_database_round_trips(space_results, monkeypatch, tmp_path):
    dense, pruned = _run("dense", 0.0, 0.5), _run("magnitude", 0.5, 0.25)
    access.hide_run(access.User(name="admin", is_admin=True), pruned, "under review")
    before = _origins()
    counts = results_repo.push_results()
    assert counts == {"runs": 2, "samples": 4}
    pushed = space_results.files_at(REPO)[results_repo.RESULTS_FILE]
    assert bundle.inspect_bundle(pushed)["hidden"] == 1  # hidden runs travel, marked hidden

    _switch_database(monkeypatch, tmp_path / "after-restart")  # the Space restarted: an empty disk
    assert results_repo.restore_results() == {"imported": 2, "skipped": 0}
    assert _origins() == before
    with read_session() as session:
        hidden = session.scalars(select(Job.method).where(Job.hidden.is_(True))).all()
        assert hidden == ["magnitude"]
    assert results_repo.restore_results() is None  # only an empty, never-seeded database is restored


def test_restore_comes_before_the_shipped_snapshot(space_results, monkeypatch, tmp_path):
    import app

    _run("dense", 0.0, 0.5)
    results_repo.push_results()
    pushed = _origins()
    snapshot = tmp_path / "snapshot.jsonl.gz"
    _switch_database(monkeypatch, tmp_path / "other")
    _run("wanda", 0.5, 0.1)  # a different deployment's run stands in for the shipped snapshot
    bundle.export_bundle(snapshot)
    monkeypatch.setattr(app, "SNAPSHOT", snapshot)
    monkeypatch.setenv("PRUNEBOARD_SEED_RESULTS", "1")

    _switch_database(monkeypatch, tmp_path / "restarted")
    app.prepare_database()
    assert _origins() == pushed  # restored from the Hub; the snapshot was not imported

    monkeypatch.setenv("PRUNEBOARD_RESULTS_REPO", "board-owner/never-pushed")
    _switch_database(monkeypatch, tmp_path / "new-space")
    app.prepare_database()
    with read_session() as session:
        assert session.scalars(select(Job.method)).all() == ["wanda"]  # nothing to restore: the snapshot


def test_the_pusher_debounces_a_burst_of_finished_runs(space_results):
    pusher = results_repo.ResultsPusher(interval=60, debounce=0.6, check_every=0.1)
    pusher.start()
    try:
        _run("dense", 0.0, 0.5)
        time.sleep(0.2)
        _run("magnitude", 0.3, 0.4)  # within the debounce: one push for both
        deadline = time.monotonic() + 20
        while pusher.pushes == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert pusher.pushes == 1
        assert bundle.inspect_bundle(space_results.files_at(REPO)[results_repo.RESULTS_FILE])["runs"] == 2
    finally:
        pusher.stop(final_push=False)
    assert pusher.pushes == 1


def test_the_pusher_pushes_once_more_when_it_stops(space_results):
    pusher = results_repo.ResultsPusher(interval=600, debounce=600, check_every=600)
    pusher.start()
    _run("dense", 0.0, 0.5)
    pusher.stop()  # a clean exit pushes what changed
    assert pusher.pushes == 1
    assert bundle.inspect_bundle(space_results.files_at(REPO)[results_repo.RESULTS_FILE])["runs"] == 1


def test_a_bad_token_fails_the_push_and_writes_nothing(space_results, monkeypatch):
    _run("dense", 0.0, 0.5)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(Exception):
        results_repo.push_results()
    assert not space_results.has_repo(REPO)


def test_a_space_that_would_lose_its_results_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("SPACE_ID", "someone/board")
    monkeypatch.delenv("PRUNEBOARD_RESULTS_REPO", raising=False)
    assert "lost at the next restart" in results_repo.ephemeral_storage_warning()
    monkeypatch.setenv("PRUNEBOARD_RESULTS_REPO", REPO)
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    assert results_repo.ephemeral_storage_warning() is None
    monkeypatch.delenv("SPACE_ID")
    assert results_repo.ephemeral_storage_warning() is None


def test_admins_see_the_banner_and_visitors_do_not(monkeypatch):
    from ui.layout import _admin_banner

    monkeypatch.setenv("PRUNEBOARD_ADMINS", "boss")
    monkeypatch.setenv("SPACE_ID", "someone/board")
    monkeypatch.delenv("PRUNEBOARD_RESULTS_REPO", raising=False)

    class Profile:
        def __init__(self, name):
            self.username = name

    shown = _admin_banner(Profile("boss"), None)
    assert shown["visible"] is True and "lost at the next restart" in shown["value"]
    assert _admin_banner(Profile("visitor"), None)["visible"] is False
