"""Hugging Face Space mode, run locally: SPACE_ID set, a temporary directory standing in for /data,
identities from the test-only hook (which Space mode must ignore). Login, quotas, owners and admins,
moderation with its audit log, SQLite backup and restore on start, the README's Space front matter."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
import yaml
from sqlalchemy import func, select

from common import settings
from backend.config import validate_config
from backend.result import RunResult, SampleRecord, ScoreRecord
from db import backup as db_backup
from db.compare import comparable_runs, compare, compare_sample
from db.findings import findings
from db.leaderboard import board
from db.plot_data import latest_runs
from db.queries import list_jobs
from db.schema import AuditEntry, Job, Sample, Score
from db.session import dispose_engines, read_session
from jobs import access, queue
from jobs.access import ANONYMOUS, AccessDenied, LoginRequired, QuotaExceeded, User
from db.states import JobState
from ui.auth import TEST_IDENTITY_HEADER, user_from

ROOT = Path(__file__).resolve().parent.parent


def config(sparsity: float = 0.1, method: str = "magnitude"):
    return validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                            "pruning": {"method": method, "sparsity": sparsity}})


@pytest.fixture
def space(monkeypatch, tmp_path):
    """Space mode with a temporary /data; returns that directory (the default home)."""
    volume = tmp_path / "data"
    volume.mkdir()
    monkeypatch.setattr(settings, "DATA_VOLUME", volume)
    monkeypatch.delenv("PRUNEBOARD_HOME", raising=False)
    monkeypatch.setenv("SPACE_ID", "pruneboard/test-space")
    monkeypatch.setenv("PRUNEBOARD_ADMINS", "Carol, dave")
    for name in ("PRUNEBOARD_LOCAL_WORKERS", "PRUNEBOARD_BACKUP_SECONDS", "PRUNEBOARD_BACKUP_DIR",
                 "PRUNEBOARD_REQUIRE_LOGIN", "PRUNEBOARD_TEST_IDENTITY"):
        monkeypatch.delenv(name, raising=False)
    dispose_engines()
    yield volume
    dispose_engines()


def finished_run(method: str, sparsity: float, value: float, submitter: str | None = None) -> int:
    """A succeeded job with one score and one sample, through the queue's own completion path."""
    job, _ = queue.submit(config(sparsity, method), submitter=submitter)
    claimed = queue.claim_next("seed-worker")
    assert claimed is not None and claimed.id == job.id
    sample = SampleRecord(task="synthetic-mc", doc_id=0, prompt="q", output="a", extracted="a", gold="a",
                          correct=True, prompt_tokens=1, output_tokens=1)
    result = RunResult(scores=[ScoreRecord("synthetic-mc", "acc", value, 0.01, True, True, "k")],
                       samples=[sample], efficiency={}, prune_report={"method": method}, manifest={})
    assert queue.complete(job.id, claimed.attempts, result)
    return job.id


def states() -> dict[int, JobState]:
    with read_session() as session:
        return dict(session.execute(select(Job.id, Job.state)).all())


# --- settings ---------------------------------------------------------------------------------


def test_space_mode_defaults(space):
    assert settings.space_mode() and settings.require_login()
    assert settings.home() == space.resolve()
    assert settings.database_url() == f"sqlite:///{space.resolve() / 'pruneboard.db'}"
    assert settings.local_workers() == 0
    assert settings.backup_seconds() == settings.DEFAULT_SPACE_BACKUP_SECONDS
    assert db_backup.backup_path() == space.resolve() / "backups" / "pruneboard.sqlite3"
    assert settings.admins() == {"carol", "dave"}


def test_local_defaults_without_a_data_volume(monkeypatch, tmp_path):
    monkeypatch.setattr(settings, "DATA_VOLUME", tmp_path / "absent")
    monkeypatch.delenv("PRUNEBOARD_HOME", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("PRUNEBOARD_LOCAL_WORKERS", raising=False)
    monkeypatch.delenv("PRUNEBOARD_BACKUP_SECONDS", raising=False)
    monkeypatch.delenv("PRUNEBOARD_REQUIRE_LOGIN", raising=False)
    assert settings.home() == Path("var").resolve()
    assert settings.local_workers() == 1 and settings.backup_seconds() == 0
    assert not settings.require_login()
    monkeypatch.setenv("PRUNEBOARD_REQUIRE_LOGIN", "1")
    assert settings.require_login() and not settings.space_mode()


def test_identity_hook_works_locally_and_is_ignored_in_space_mode(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("PRUNEBOARD_ADMINS", "carol")
    monkeypatch.setenv("PRUNEBOARD_TEST_IDENTITY", "alice")
    assert user_from(None, None) == User("alice", False)

    class FakeRequest:
        headers = {TEST_IDENTITY_HEADER: "Carol"}  # noqa: RUF012

    assert user_from(None, FakeRequest()) == User("Carol", True)  # admins match case-insensitively
    profile = gr.OAuthProfile({"preferred_username": "bob", "name": "Bob", "picture": "", "profile": ""})
    assert user_from(profile, FakeRequest()) == User("bob", False)  # a real login wins

    monkeypatch.setenv("SPACE_ID", "pruneboard/test-space")
    assert user_from(None, None) == ANONYMOUS  # the hook is off on a Space
    assert user_from(None, FakeRequest()) == ANONYMOUS
    assert user_from(profile, None) == User("bob", False)



def who_is_calling(text: str, profile: gr.OAuthProfile | None, request: gr.Request) -> str:
    """A callback as the UI declares them: Gradio injects `profile` and `request` (not inputs)."""
    user = user_from(profile, request)
    return f"{text}:{user.name}:{user.is_admin}"


def test_gradio_injects_the_identity_into_callbacks(monkeypatch):
    from gradio_client import Client

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("PRUNEBOARD_ADMINS", "carol")
    monkeypatch.setenv("PRUNEBOARD_TEST_IDENTITY", "alice")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        gr.Button().click(who_is_calling, box, out, api_name="who")
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port())
    try:
        assert Client(url, verbose=False).predict("a", api_name="/who") == "a:alice:False"
        as_carol = Client(url, verbose=False, headers={TEST_IDENTITY_HEADER: "carol"})
        assert as_carol.predict("b", api_name="/who") == "b:carol:True"
        monkeypatch.setenv("SPACE_ID", "pruneboard/test-space")  # on a Space only OAuth counts
        assert as_carol.predict("c", api_name="/who") == "c:None:False"
    finally:
        demo.close()


def test_login_button_only_where_gradio_can_log_users_in(monkeypatch):
    import gradio.oauth

    from ui.auth import login_button, login_notice

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # no local token: no mocked login
    monkeypatch.delenv("SYSTEM", raising=False)
    monkeypatch.setenv("SPACE_ID", "pruneboard/test-space")
    with gr.Blocks():  # Space mode simulated locally: no button (Gradio would fail to build the app)
        assert login_button() is None
    assert "unavailable" in login_notice()

    # On a real Space with hf_oauth: true the platform sets these; Gradio reads them at import.
    oauth_env = {"OAUTH_CLIENT_ID": "id", "OAUTH_CLIENT_SECRET": "secret", "OAUTH_SCOPES": "openid profile",
                 "OPENID_PROVIDER_URL": "https://huggingface.co"}
    monkeypatch.setenv("SYSTEM", "spaces")
    for name, value in oauth_env.items():
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(gradio.oauth, name, value)
    with gr.Blocks() as demo:
        button = login_button()
    assert isinstance(button, gr.LoginButton) and login_notice() == ""
    assert any(getattr(route, "path", None) == "/login/huggingface" for route in demo.app.routes)

    monkeypatch.delenv("SPACE_ID")
    monkeypatch.delenv("SYSTEM")
    with gr.Blocks():
        assert login_button() is None  # login not required locally


# --- login and quotas -------------------------------------------------------------------------


def test_login_is_required_to_submit_in_space_mode(space):
    with pytest.raises(LoginRequired, match="Log in"):
        access.submit_as(ANONYMOUS, config())
    assert states() == {}
    job, existing = access.submit_as(User.named("alice"), config())
    assert not existing and job.submitter == "alice"
    with read_session() as session:
        assert session.get(Job, job.id).submitter == "alice"


def test_login_required_by_setting_and_anonymous_allowed_otherwise(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("PRUNEBOARD_REQUIRE_LOGIN", "1")
    with pytest.raises(LoginRequired):
        access.submit_as(ANONYMOUS, config())
    monkeypatch.setenv("PRUNEBOARD_REQUIRE_LOGIN", "0")
    job, _ = access.submit_as(ANONYMOUS, config())
    assert job.submitter == access.ANONYMOUS_SUBMITTER


def test_queued_quota_counts_baselines_queued_for_the_user_not_duplicates(space, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_AUTO_BASELINES", "1")
    monkeypatch.setenv("PRUNEBOARD_MAX_QUEUED_PER_USER", "3")
    alice, bob = User.named("alice"), User.named("bob")
    first, _ = access.submit_as(alice, config(0.1))
    access.submit_as(alice, config(0.2))
    with read_session() as session:
        baselines = session.scalars(select(Job).where(Job.submitter == "system")).all()
    assert [b.method for b in baselines] == ["dense"]  # queued with alice's first run, counted for her

    again, existing = access.submit_as(alice, config(0.1))  # a duplicate costs nothing
    assert existing and again.id == first.id
    with pytest.raises(QuotaExceeded, match="at most 3"):
        access.submit_as(alice, config(0.3))
    assert len(states()) == 3

    access.submit_as(bob, config(0.3))  # others are not limited by alice's jobs (the baseline exists)
    access.cancel_as(alice, first.id)
    job, _ = access.submit_as(alice, config(0.4))  # a slot is free again
    assert job.submitter == "alice"
    assert access.quota_status(alice) == {"limited": True, "active": 3, "max_active": 3, "today": 4,
                                          "max_per_day": settings.max_submissions_per_day()}


def test_a_preset_is_checked_whole_before_anything_is_queued(space, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_MAX_QUEUED_PER_USER", "2")
    with pytest.raises(QuotaExceeded, match="would add 3"):
        access.submit_many_as(User.named("alice"), [config(0.1), config(0.2), config(0.3)])
    assert states() == {}


def test_daily_quota_counts_submissions_and_retries_not_admins(space, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_MAX_QUEUED_PER_USER", "0")  # no limit: only the daily one
    monkeypatch.setenv("PRUNEBOARD_MAX_SUBMISSIONS_PER_DAY", "4")
    alice = User.named("alice")
    jobs = [access.submit_as(alice, config(s))[0] for s in (0.1, 0.2, 0.3)]
    for job in jobs:
        access.cancel_as(alice, job.id)  # cancelling does not give submissions back
    assert access.retry_as(alice, jobs[0].id).state == JobState.QUEUED  # the 4th of the day
    with pytest.raises(QuotaExceeded, match="last 24 hours"):
        access.retry_as(alice, jobs[1].id)
    with pytest.raises(QuotaExceeded):
        access.submit_as(alice, config(0.5))
    assert states()[jobs[1].id] == JobState.CANCELLED

    carol = User.named("carol")
    assert carol.is_admin
    for s in (0.5, 0.6, 0.7, 0.8, 0.9):
        access.submit_as(carol, config(s))  # admins have no quota


# --- owners and admins ------------------------------------------------------------------------


def test_users_cancel_and_retry_their_own_jobs_admins_anyone(space, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_AUTO_BASELINES", "1")
    alice, bob, carol = User.named("alice"), User.named("bob"), User.named("carol")
    job, _ = access.submit_as(alice, config())
    baseline = next(j for j, s in states().items() if j != job.id)

    with pytest.raises(AccessDenied, match="another user"):
        access.cancel_as(bob, job.id)
    with pytest.raises(LoginRequired):
        access.cancel_as(ANONYMOUS, job.id)
    with pytest.raises(AccessDenied, match="system"):
        access.cancel_as(alice, baseline)
    assert states()[job.id] == JobState.QUEUED
    assert access.can_manage(alice, job.id) and access.can_manage(carol, baseline)
    assert not access.can_manage(bob, job.id) and not access.can_manage(ANONYMOUS, job.id)

    assert access.cancel_as(carol, job.id) == JobState.CANCELLED  # an admin cancels anyone's job
    with pytest.raises(AccessDenied):
        access.retry_as(bob, job.id)
    assert access.retry_as(alice, job.id).state == JobState.QUEUED
    assert access.cancel_as(alice, job.id) == JobState.CANCELLED
    assert access.retry_as(carol, job.id).state == JobState.QUEUED

    actions = [(e["actor"], e["action"]) for e in reversed(access.audit_entries(job_id=job.id))]
    assert actions == [("alice", "submit"), ("carol", "cancel"), ("alice", "retry"), ("alice", "cancel"),
                       ("carol", "retry")]


def test_anonymous_manages_jobs_only_when_login_is_not_required(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    job, _ = access.submit_as(ANONYMOUS, config())
    assert access.cancel_as(ANONYMOUS, job.id) == JobState.CANCELLED
    monkeypatch.setenv("PRUNEBOARD_REQUIRE_LOGIN", "1")
    with pytest.raises(LoginRequired):
        access.retry_as(ANONYMOUS, job.id)


# --- moderation -------------------------------------------------------------------------------


def test_hidden_and_deleted_runs_leave_the_board_and_are_audited(space, capsys):
    from jobs.cli import main as cli

    dense = finished_run("dense", 0.0, 0.8, submitter="alice")
    pruned = finished_run("magnitude", 0.5, 0.6, submitter="alice")
    carol = User.named("carol")

    def board_ids() -> set[int]:
        with read_session() as session:
            return set(board(session).frame["job_id"])

    def compare_ids() -> set[int]:
        with read_session() as session:
            return {run["job_id"] for run in comparable_runs(session)}

    assert board_ids() == compare_ids() == {dense, pruned}
    with pytest.raises(AccessDenied, match="Only admins"):
        access.hide_run(User.named("alice"), pruned, "mine")
    with pytest.raises(ValueError, match="reason"):
        access.hide_run(carol, pruned, "  ")

    access.hide_run(carol, pruned, "scores look wrong")
    assert board_ids() == compare_ids() == {dense}
    with read_session() as session:  # nor by naming it (a compare URL), nor in plots or findings
        with pytest.raises(ValueError, match="no such job"):
            compare(session, [dense, pruned], "synthetic-mc")
        assert compare_sample(session, [dense, pruned], "synthetic-mc", 0) is None
        assert {job.id for job in latest_runs(session)} == {dense}
        assert all(pruned not in verdict.numbers.get("job_ids", ()) for verdict in findings(session))
    with read_session() as session:
        assert [j["id"] for j in list_jobs(session, include_hidden=False)] == [dense]
        assert {j["id"]: j["hidden"] for j in list_jobs(session)} == {dense: False, pruned: True}

    access.unhide_run(carol, pruned)
    assert board_ids() == {dense, pruned}

    assert cli(["admin", "delete", str(pruned), "--reason", "bad run", "--actor", "ops"]) == 0
    assert board_ids() == {dense}
    with read_session() as session:
        assert session.get(Job, pruned) is None
        assert session.scalar(select(func.count()).select_from(Score).where(Score.job_id == pruned)) == 0
        assert session.scalar(select(func.count()).select_from(Sample).where(Sample.job_id == pruned)) == 0
    assert cli(["admin", "hide", str(pruned), "--reason", "x"]) == 2  # gone: unknown job

    capsys.readouterr()
    assert cli(["admin", "audit", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    moderation = [(e["actor"], e["action"], e["job_id"]) for e in reversed(entries)]
    assert moderation == [("carol", "hide", pruned), ("carol", "unhide", pruned), ("ops", "delete", pruned)]
    assert entries[0]["detail"]["reason"] == "bad run" and entries[0]["detail"]["method"] == "magnitude"
    assert entries[-1]["detail"] == {"reason": "scores look wrong"}


def test_a_running_job_is_not_deleted(space):
    job, _ = queue.submit(config())
    queue.claim_next("w")
    with pytest.raises(Exception, match="cancel it first"):
        access.delete_run(User.named("carol"), job.id, "spam")
    with read_session() as session:
        assert session.get(Job, job.id) is not None
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 0


# --- backups ----------------------------------------------------------------------------------


def test_backup_is_written_and_restored_on_start(space, monkeypatch):
    import app

    monkeypatch.setenv("PRUNEBOARD_BACKUP_SECONDS", "3600")  # the test backs up itself, not the timer
    thread = app.prepare_database()
    assert thread is not None and thread.is_alive()
    job, _ = access.submit_as(User.named("alice"), config())
    thread.stop()  # stopping takes a last backup
    assert not thread.is_alive()
    saved = db_backup.backup_path()
    assert saved.is_file()

    live = db_backup.sqlite_path()
    assert live == space.resolve() / "pruneboard.db"
    dispose_engines()  # the app stops ...
    for path in live.parent.glob("pruneboard.db*"):
        path.unlink()  # ... and its database is lost
    thread = app.prepare_database()  # ... and starts again
    thread.stop(final_backup=False)
    with read_session() as session:
        assert session.get(Job, job.id).submitter == "alice"

    dispose_engines()
    for path in live.parent.glob("pruneboard.db-*"):
        path.unlink()
    live.write_bytes(b"not a database" * 100)  # unreadable: moved aside, then restored
    assert db_backup.restore_if_needed()
    assert len(list(live.parent.glob("pruneboard.db.unreadable-*"))) == 1
    with read_session() as session:
        assert session.get(Job, job.id) is not None
    assert not db_backup.restore_if_needed()  # a healthy database is left alone


def test_backup_is_a_noop_for_other_databases(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:1/none")
    assert db_backup.sqlite_path() is None
    assert db_backup.backup() is None and not db_backup.restore_if_needed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_app_in_space_mode_runs_no_worker_backs_up_and_registers_secret_tokens(tmp_path):
    home = tmp_path / "space-home"
    port, token = _free_port(), "pbw_" + "s" * 40
    # A real Space: the platform sets SYSTEM and the OAuth client (elsewhere the app refuses to start).
    oauth = {"SYSTEM": "spaces", "OAUTH_CLIENT_ID": "id", "OAUTH_CLIENT_SECRET": "secret",
             "OAUTH_SCOPES": "openid profile", "OPENID_PROVIDER_URL": "https://huggingface.co"}
    env = {**os.environ, **oauth, "SPACE_ID": "pruneboard/test-space", "PRUNEBOARD_HOME": str(home),
           "GRADIO_SERVER_PORT": str(port), "PRUNEBOARD_BACKUP_SECONDS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PRUNEBOARD_WORKER_TOKENS": f"gpu-1={token},bad=short"}
    env.pop("PRUNEBOARD_LOCAL_WORKERS", None)
    log = tmp_path / "app.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while not (home / "backups" / "pruneboard.sqlite3").is_file() or not _serves(base):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert httpx.get(f"{base}/healthz", timeout=10).json()["ok"]
        url = f"{base}/api/v1/worker/claim"
        accepted = httpx.post(url, json={"worker": "w1"}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert accepted.status_code not in (401, 403), accepted.text
        assert httpx.post(url, json={"worker": "w1"}, headers={"Authorization": "Bearer short"},
                          timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Space mode (SPACE_ID=pruneboard/test-space)" in text
    assert "started 0 local worker(s)" in text
    assert "skipped an entry" in text and "gpu-1" in text
    assert token not in text


def _serves(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- README -----------------------------------------------------------------------------------


def test_readme_front_matter_configures_a_gradio_space():
    import gradio

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    assert {"title", "sdk", "sdk_version", "app_file", "hf_oauth", "python_version"} <= set(meta)
    assert meta["sdk"] == "gradio" and meta["hf_oauth"] is True
    assert str(meta["sdk_version"]) == gradio.__version__  # the pinned gradio the tests run
    assert (ROOT / meta["app_file"]).is_file() and meta["app_file"] == "app.py"
    assert str(meta["python_version"]) == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "## Deploying on a Hugging Face Space" in text
