"""The security review's findings outside the worker API (tests/test_api_security.py) and the jail
(tests/test_sandbox*.py), one section per item of the issue: tokens off the command line and private
files (2), data paths (3), the listen address (7), login only on a real Space (8), bounds on a job's
work (9), hidden runs (10), tokens removed from PRUNEBOARD_WORKER_TOKENS (11), plain http to
remote servers (12), Gradio's upload limit (13), the lease sweeper (14), baselines in quotas (15),
private log tails (16) and job ids out of range in the UI (17)."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from common import settings
from backend.config import validate_config
from backend.result import RunResult, ScoreRecord
from db import backup as db_backup
from db.schema import Job, WorkerToken, utcnow
from db.session import dispose_engines, init_db, read_session, write_session
from jobs import access, queue, tokens
from jobs.access import ANONYMOUS, LimitExceeded, QuotaExceeded, User
from jobs.cli import main as cli
from jobs.remote import TokenRejected
from db.states import JobState

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


def config(sparsity: float = 0.1, method: str = "magnitude", **extra):
    return validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                            "pruning": {"method": method, "sparsity": sparsity}, **extra})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def job_count() -> int:
    with read_session() as session:
        return session.scalar(select(func.count()).select_from(Job))


# --- 2. tokens off the command line; private files --------------------------------------------


class FakeServer:
    """Stands in for jobs.remote.HttpQueue: records the token, then rejects it (the worker exits 3)."""

    seen: list[tuple[str, str]] = []

    def __init__(self, server: str, token: str):
        FakeServer.seen.append((server, token))

    def claim(self, worker_id):
        raise TokenRejected("rejected by the fake server")

    def stopped(self, worker_id):
        pass

    def close(self):
        pass


@pytest.fixture
def fake_server(monkeypatch):
    FakeServer.seen = []
    monkeypatch.setattr("jobs.remote.HttpQueue", FakeServer)
    monkeypatch.delenv("PRUNEBOARD_WORKER_TOKEN", raising=False)
    return FakeServer.seen


def test_worker_token_from_a_file_or_the_environment_and_a_warning_for_the_flag(fake_server, tmp_path, monkeypatch,
                                                                                caplog):
    token_file = tmp_path / "token"
    token_file.write_text("pbw_from-file\n")
    token_file.chmod(0o600)
    url = "http://127.0.0.1:9"
    assert cli(["worker", "--server", url, "--token-file", str(token_file)]) == 3
    monkeypatch.setenv("PRUNEBOARD_WORKER_TOKEN", "pbw_from-env")
    assert cli(["worker", "--server", url]) == 3
    with caplog.at_level(logging.WARNING):
        assert cli(["worker", "--server", url, "--token", "pbw_from-flag"]) == 3
    assert [token for _, token in fake_server] == ["pbw_from-file", "pbw_from-env", "pbw_from-flag"]
    assert any("process list" in r.getMessage() for r in caplog.records)

    monkeypatch.delenv("PRUNEBOARD_WORKER_TOKEN")
    assert cli(["worker", "--server", url]) == 2  # no token anywhere
    assert cli(["worker", "--server", url, "--token-file", str(tmp_path / "missing")]) == 2
    assert len(fake_server) == 3


@pytest.mark.skipif(os.environ.get("PRUNEBOARD_TEST_POSTGRES_URL") is not None, reason="SQLite's files")
def test_the_database_backups_and_token_files_are_private(monkeypatch, tmp_path, capsys):
    os.umask(0o022)  # a permissive umask must not matter
    home = Path(os.environ["PRUNEBOARD_HOME"])
    init_db()
    with write_session() as session:
        session.add(WorkerToken(name="w", token_hash="h" * 64))
    database = home / "pruneboard.db"
    assert mode(database) == 0o600
    assert mode(Path(f"{database}-wal")) == 0o600

    monkeypatch.setenv("PRUNEBOARD_BACKUP_DIR", str(tmp_path / "backups"))
    assert mode(db_backup.backup()) == 0o600

    out = tmp_path / "gpu-1.token"
    assert cli(["token", "create", "gpu-1", "--out", str(out)]) == 0
    assert mode(out) == 0o600 and tokens.authenticate(out.read_text().strip()) == "gpu-1"
    assert out.read_text().strip() not in capsys.readouterr().out  # not printed as well
    assert cli(["token", "create", "gpu-2", "--out", str(out)]) == 2  # never overwrites

    dispose_engines()
    database.chmod(0o644)  # made by an older version
    init_db()
    assert mode(database) == 0o600


# --- 3. calibration and recovery paths stay inside the data directory --------------------------


def test_data_paths_outside_the_data_dir_are_refused_at_submit(monkeypatch, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "text").mkdir(parents=True)
    (data / "text" / "ok.txt").write_text("some calibration text\n")
    (data / "leak.txt").symlink_to("/etc/passwd")
    (data / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(data))
    database = Path(os.environ["PRUNEBOARD_HOME"]) / "pruneboard.db"
    outside = ["/etc/passwd", "/etc/no-such-file", str(database), "/proc/self/environ", "../data/text/ok.txt",
               "leak.txt", "dangling.txt", "text/../../x"]
    errors = []
    for section, path in [("calibration", p) for p in outside] + [("recovery", "/etc/passwd"), ("recovery", "leak.txt")]:
        document = {"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                    "pruning": {"method": "wanda", "sparsity": 0.5},
                    section: {"source": "text", "path": path} if section == "calibration" else {"data": "text", "path": path}}
        file = tmp_path / "job.yaml"
        file.write_text(yaml.safe_dump(document))
        code = cli(["submit", str(file)])
        err = capsys.readouterr().err
        assert code == 2, (path, err)
        errors.append(err.replace(section, "SECTION"))
    assert len(set(errors)) == 1, set(errors)  # one message: nothing says whether a file exists
    assert "PRUNEBOARD_DATA_DIR" in errors[0] and "/etc" not in errors[0]
    assert not database.exists() or job_count() == 0

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                                    "pruning": {"method": "wanda", "sparsity": 0.5},
                                    "calibration": {"source": "text", "path": "text/ok.txt"}}))
    assert cli(["submit", str(good)]) == 0 and job_count() == 1


def test_the_worker_refuses_a_data_path_that_leads_out_at_run_time(monkeypatch, tmp_path):
    from backend.calibration.build import check_calibration

    data = tmp_path / "data"
    data.mkdir()
    (data / "text.txt").write_text("fine\n")
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(data))
    cfg = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                           "pruning": {"method": "wanda", "sparsity": 0.5},
                           "calibration": {"source": "text", "path": "text.txt"}}).calibration
    (data / "text.txt").unlink()
    (data / "text.txt").symlink_to("/etc/passwd")  # swapped after the submit, on the worker's disk
    with pytest.raises(ValueError, match="PRUNEBOARD_DATA_DIR"):
        check_calibration(cfg, data)


# --- 7. the listen address ---------------------------------------------------------------------


def test_a_local_install_listens_on_loopback_unless_told_otherwise(monkeypatch):
    import app

    served, sweepers = [], []

    class Sweeper:  # the app's lease sweeper (item 14), not left running after this test
        def start(self):
            sweepers.append(self)

        def stop(self):
            pass

    monkeypatch.setattr(app, "LeaseSweeper", Sweeper)
    monkeypatch.setattr(app, "create_app", lambda: "the app")
    monkeypatch.setattr("uvicorn.run", lambda application, host, port, **kw: served.append(host))
    monkeypatch.setattr(app, "start_local_workers", lambda count: [])
    for name in ("GRADIO_SERVER_NAME", "SPACE_ID", "PRUNEBOARD_REQUIRE_LOGIN"):
        monkeypatch.delenv(name, raising=False)
    app.main([])
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    app.main([])
    monkeypatch.delenv("GRADIO_SERVER_NAME")
    app.main(["--host", "0.0.0.0"])
    assert served == ["127.0.0.1", "0.0.0.0", "0.0.0.0"] and len(sweepers) == 3
    monkeypatch.setenv("SPACE_ID", "owner/space")
    assert settings.server_name() == "0.0.0.0"  # a Space's proxy connects from outside


# --- 8. login only on a real Space -------------------------------------------------------------


def test_login_required_off_a_real_space_refuses_to_start(tmp_path):
    env = {**os.environ, "PRUNEBOARD_REQUIRE_LOGIN": "1", "PRUNEBOARD_HOME": str(tmp_path / "app-home"),
           "HF_TOKEN": "hf_" + "x" * 34, "GRADIO_SERVER_PORT": "1", "PRUNEBOARD_LOCAL_WORKERS": "0"}
    for name in ("SPACE_ID", "SYSTEM", "OAUTH_CLIENT_ID"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: login is required")
    assert not (tmp_path / "app-home").exists()  # refused before touching anything


def test_gradio_mock_login_is_never_offered(monkeypatch):
    import gradio as gr

    from ui.auth import login_button, login_problem, oauth_available

    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)  # Gradio would log everyone in as this account
    monkeypatch.setenv("PRUNEBOARD_REQUIRE_LOGIN", "1")
    for name in ("SPACE_ID", "SYSTEM"):
        monkeypatch.delenv(name, raising=False)
    assert not oauth_available() and "login is required" in login_problem()
    with gr.Blocks():
        assert login_button() is None
    monkeypatch.setenv("SPACE_ID", "owner/space")
    monkeypatch.setenv("SYSTEM", "spaces")
    for name in settings.OAUTH_VARIABLES:
        monkeypatch.setenv(name, "set-by-the-platform")
    assert oauth_available() and login_problem() is None


# --- 9. bounds on one job's work ---------------------------------------------------------------


def test_non_admins_get_a_default_and_a_maximum_wall_time_and_work(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_MAX_WALL_MINUTES", "600")
    monkeypatch.setenv("PRUNEBOARD_DEFAULT_WALL_MINUTES", "90")
    alice, carol = User.named("alice"), User("carol", is_admin=True)
    job, _ = access.submit_as(alice, config())
    with read_session() as session:
        stored = session.get(Job, job.id).config_json
    assert '"max_wall_minutes":90.0' in stored

    huge = {"recovery": {"data": "synthetic", "steps": 100_000, "batch_size": 1024, "seq_len": 32768,
                         "num_samples": 1000}, "tasks": [{"name": "synthetic-mc", "limit": 1_000_000}]}
    with pytest.raises(LimitExceeded, match="tokens of work"):
        access.submit_as(alice, config(0.2, **huge))
    with pytest.raises(LimitExceeded, match="max_wall_minutes"):
        access.submit_as(alice, config(0.3, resources={"max_wall_minutes": 6000}))
    with pytest.raises(LimitExceeded, match="only admins"):
        access.submit_as(ANONYMOUS, config(0.4, keep_model=True))
    assert job_count() == 1
    access.submit_as(carol, config(0.2, **huge))  # admins are not bounded
    access.submit_as(carol, config(0.4, keep_model=True))
    assert job_count() == 3


# --- 10. hidden runs are not readable by id ----------------------------------------------------


def finished(submitter: str | None = None, log_tail: str | None = None, fail: bool = False) -> int:
    job, _ = queue.submit(config(), submitter=submitter, force=True)
    claimed = queue.claim_next("/home/builder/worker-7")
    if fail:
        queue.fail(job.id, claimed.attempts, "RuntimeError", "boom", log_tail)
    else:
        queue.complete(job.id, claimed.attempts, RunResult(
            scores=[ScoreRecord("synthetic-mc", "acc", 0.5, 0.1, True, True, "k")], samples=[], efficiency={},
            prune_report={}, manifest={}))
    return job.id


def test_a_hidden_run_is_not_readable_by_its_id(monkeypatch):
    from ui import board, services

    monkeypatch.delenv("SPACE_ID", raising=False)
    job_id = finished(submitter="alice")
    access.hide_run(User("carol", is_admin=True), job_id, "spam")
    for user in (ANONYMOUS, User.named("alice"), User.named("bob")):
        assert "No job" in services.job_details(job_id, user)
        assert "There is no job" in services.job_panel(job_id, user)
        assert board.run_detail(job_id, user).config_yaml == "" and "No job" in board.run_detail(job_id, user).summary
        assert board.fork_config(job_id, user) == ""
    admin = User("carol", is_admin=True)
    assert f'"id": {job_id}' in services.job_details(job_id, admin)
    assert board.run_detail(job_id, admin).config_yaml != ""


# --- 11. a token removed from PRUNEBOARD_WORKER_TOKENS is revoked -------------------------------


def test_a_name_removed_from_the_worker_tokens_variable_is_revoked(monkeypatch):
    import app

    first, second = "pbw_" + "a" * 40, "pbw_" + "b" * 40
    monkeypatch.setenv("PRUNEBOARD_WORKER_TOKENS", f"gpu-1={first},gpu-2={second}")
    app.register_worker_tokens()
    by_cli = tokens.create("laptop")  # made with the CLI: not the variable's to revoke
    assert tokens.authenticate(first) == "gpu-1" and tokens.authenticate(second) == "gpu-2"
    monkeypatch.setenv("PRUNEBOARD_WORKER_TOKENS", f"gpu-1={first}")
    app.register_worker_tokens()
    assert tokens.authenticate(first) == "gpu-1" and tokens.authenticate(by_cli) == "laptop"
    with pytest.raises(tokens.TokenRevoked):
        tokens.authenticate(second)
    monkeypatch.setenv("PRUNEBOARD_WORKER_TOKENS", f"gpu-1={first},gpu-2={second}")
    app.register_worker_tokens()  # put back unchanged: the revoke stands
    with pytest.raises(tokens.TokenRevoked):
        tokens.authenticate(second)


# --- 12. plain http to another machine needs --insecure ----------------------------------------


def test_remote_workers_refuse_plain_http_to_other_hosts(fake_server, monkeypatch, capsys):
    monkeypatch.setenv("PRUNEBOARD_WORKER_TOKEN", "pbw_x")
    assert cli(["worker", "--server", "http://10.1.2.3:7860"]) == 2
    assert "--insecure" in capsys.readouterr().err and fake_server == []
    for url in ("https://pruneboard.example", "http://127.0.0.1:7860", "http://localhost:7860", "http://[::1]:7860"):
        assert cli(["worker", "--server", url]) == 3  # allowed: it got as far as the (fake) server
    assert cli(["worker", "--server", "http://10.1.2.3:7860", "--insecure"]) == 3
    assert [server for server, _ in fake_server][-1] == "http://10.1.2.3:7860" and len(fake_server) == 5


# --- 13. Gradio's upload route takes small files only ------------------------------------------


def test_gradio_uploads_are_limited_in_size(monkeypatch):
    from fastapi.testclient import TestClient

    import app

    monkeypatch.delenv("SPACE_ID", raising=False)
    with TestClient(app.create_app()) as client:
        big = client.post("/gradio_api/upload", files={"files": ("big.bin", b"x" * (2 * 1024 * 1024))})
        small = client.post("/gradio_api/upload", files={"files": ("small.txt", b"hello")})
    assert big.status_code == 413
    assert small.status_code == 200


# --- 14. expired leases are requeued without a claim -------------------------------------------


def test_the_app_requeues_expired_leases_on_a_timer(monkeypatch):
    from jobs.sweeper import LeaseSweeper

    job, _ = queue.submit(config())
    queue.claim_next("dead-worker")
    with write_session() as session:
        session.get(Job, job.id).lease_expires_at = utcnow() - timedelta(seconds=5)
    sweeper = LeaseSweeper(interval=0.1)
    sweeper.start()
    try:
        deadline = time.monotonic() + 20
        while queue.get_job(job.id).state != JobState.QUEUED:
            assert time.monotonic() < deadline, "the expired lease was not swept"
            time.sleep(0.1)
    finally:
        sweeper.stop()
    assert not sweeper.is_alive() and queue.get_job(job.id).worker_id is None


# --- 15. baselines count against the quota of whoever queued them ------------------------------


def test_auto_queued_baselines_count_against_the_submitters_quota(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_AUTO_BASELINES", "1")
    monkeypatch.setenv("PRUNEBOARD_MAX_QUEUED_PER_USER", "2")
    monkeypatch.setenv("SPACE_ID", "owner/space")
    alice = User.named("alice")
    access.submit_as(alice, config(0.1))  # and its dense baseline: two jobs
    with pytest.raises(QuotaExceeded, match="at most 2"):
        access.submit_as(alice, config(0.2))
    status = access.quota_status(alice)
    assert (status["active"], status["today"]) == (2, 2)
    with read_session() as session:
        assert session.scalar(select(Job.submitter).where(Job.method == "dense")) == "system"  # still shared


# --- 16. log tails for the submitter and admins only -------------------------------------------


def test_a_failed_jobs_log_tail_is_shown_to_its_submitter_and_admins_only(monkeypatch):
    from ui import board, services

    monkeypatch.setenv("SPACE_ID", "owner/space")
    tail = "Traceback: /home/builder/.cache/model.bin on gpu-host-7"
    job_id = finished(submitter="alice", log_tail=tail, fail=True)
    for user, shown in ((User.named("bob"), False), (ANONYMOUS, False), (User.named("alice"), True),
                        (User("carol", is_admin=True), True)):
        assert (tail in services.job_panel(job_id, user)) is shown, user
        assert (tail.replace("/", "\\/") in services.job_details(job_id, user)
                or tail in services.job_details(job_id, user)) is shown, user
        assert (board.run_detail(job_id, user).log_tail == tail) is shown, user
        assert "RuntimeError" in services.job_panel(job_id, user)  # the error itself stays public


# --- 17. job ids beyond what a job can have ----------------------------------------------------


def test_out_of_range_job_ids_in_the_ui_are_just_unknown_jobs():
    from ui import board, services

    job_id = finished()
    for value in (2**64 + 1, 2**70, -(2**70), 1e30, float("inf"), float("nan"), 2.5, "1" * 40):
        assert "No job" in services.job_details(value)
        assert "There is no job" in services.job_panel(value)
        assert services.job_actions(value)[:2] == (False, False)
        assert "no job" in services.cancel_job(value).lower() and "no job" in services.retry_job(value).lower()
        assert "No job" in board.run_detail(value).summary and board.fork_config(value) == ""
    assert f"Job {job_id}" in services.job_panel(float(job_id))  # a number box gives floats
