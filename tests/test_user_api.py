"""Personal API tokens (jobs.user_tokens), the user API (jobs.user_api) under the browser's rules, and
`python -m jobs submit|status|cancel --server URL` in a subprocess against a served app."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend.config import validate_config
from bench.kill_trials import serve_app
from db.schema import Job, UserToken
from db.session import read_session
from jobs import access, queue, tokens, user_tokens
from jobs.access import AccessDenied, LoginRequired, User
from jobs.api import API_PREFIX, create_api
from db.states import JobState
from jobs.user_client import UserApiError, UserClient
from jobs.wire import USER_API_PREFIX
from tests.api_support import _close_engines, bearer, run_cli  # noqa: F401  (a fixture used by name)

ROOT = Path(__file__).resolve().parent.parent
NOOP_YAML = "model: builtin:noop\ntasks: [piqa]\nseed: {seed}\n"
ALICE, BOB = User.named("alice"), User.named("bob")


@pytest.fixture(autouse=True)
def _rules(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_ADMINS", "carol")
    monkeypatch.setenv("PRUNEBOARD_MAX_QUEUED_PER_USER", "2")
    monkeypatch.delenv("PRUNEBOARD_TOKEN", raising=False)


@pytest.fixture
def api():
    with TestClient(create_api()) as client:
        yield client


def as_user(api, user: User) -> UserClient:
    return UserClient("http://testserver", user_tokens.create(user, "test")[1], client=api)


def jobs_count() -> int:
    with read_session() as session:
        return session.scalar(select(func.count()).select_from(Job))


# --- tokens -----------------------------------------------------------------------------------


def test_tokens_are_shown_once_stored_hashed_and_revoked_by_their_owner_only(monkeypatch):
    token_id, token = user_tokens.create(ALICE, "laptop")
    with read_session() as session:
        row = session.get(UserToken, token_id)
    assert token.startswith("pbu_") and len(token) > 40
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and row.user_name == "alice"
    assert user_tokens.authenticate(token) == "alice"
    listed = user_tokens.list_tokens(ALICE)
    assert [t["label"] for t in listed] == ["laptop"] and listed[0]["last_used_at"] is not None
    assert token not in repr(listed) and user_tokens.list_tokens(BOB) == []

    with pytest.raises(KeyError):
        user_tokens.revoke(BOB, token_id)  # another user's token is no token of theirs
    assert user_tokens.authenticate(token) == "alice"
    assert user_tokens.revoke(ALICE, token_id) is True and user_tokens.revoke(ALICE, token_id) is False
    with pytest.raises(tokens.TokenRevoked):
        user_tokens.authenticate(token)
    actions = [(e["actor"], e["action"]) for e in access.audit_entries()]
    assert actions == [("alice", "token-revoke"), ("alice", "token-create")]

    with pytest.raises(LoginRequired):
        user_tokens.create(access.ANONYMOUS, "laptop")
    with pytest.raises(ValueError, match="Name the token"):
        user_tokens.create(ALICE, "my laptop!")
    monkeypatch.setattr(user_tokens, "MAX_ACTIVE_PER_USER", 2)
    user_tokens.create(ALICE, "a")
    user_tokens.create(ALICE, "b")
    with pytest.raises(AccessDenied, match="revoke one first"):
        user_tokens.create(ALICE, "c")


def test_the_token_is_checked_before_the_body_and_never_crosses_apis(api):
    alice = user_tokens.create(ALICE, "t")[1]
    worker = tokens.create("gpu")
    revoked_id, revoked = user_tokens.create(BOB, "old")
    user_tokens.revoke(BOB, revoked_id)
    submit = f"{USER_API_PREFIX}/submit"
    huge = b"x" * (2 * 1024 * 1024)
    for headers, status in (({}, 401), (bearer("pbu_" + "x" * 43), 401), (bearer(worker), 401), (bearer(revoked), 403)):
        response = api.post(submit, content=huge, headers=headers)  # refused before the body is read: not 413
        assert response.status_code == status, response.text
    assert api.post(f"{API_PREFIX}/claim", json={"worker": "w"}, headers=bearer(alice)).status_code == 401
    assert api.post(submit, content=huge, headers=bearer(alice)).status_code == 413
    assert api.post(submit, content=b"{}", headers=bearer(alice)).status_code == 422
    assert jobs_count() == 0


def test_the_user_api_applies_the_browsers_rules(api):
    done = queue.submit(validate_config({"model": "builtin:noop", "tasks": ["piqa"], "seed": 9}),
                        submitter="alice")[0].id
    claimed = queue.claim_next("w")
    queue.fail(claimed.id, claimed.attempts, "RuntimeError", "boom", log_tail="/home/alice/secret path")
    admin = User.named("carol")  # PRUNEBOARD_ADMINS, read now
    alice, bob, carol = as_user(api, ALICE), as_user(api, BOB), as_user(api, admin)
    first = alice.submit(NOOP_YAML.format(seed=1))
    assert first["existing"] is False and queue.get_job(first["id"]).submitter == "alice"
    assert alice.submit(NOOP_YAML.format(seed=1)) == {**first, "existing": True}  # a duplicate costs nothing
    alice.submit(NOOP_YAML.format(seed=2))
    with pytest.raises(UserApiError) as quota:
        alice.submit(NOOP_YAML.format(seed=3))
    assert quota.value.status == 429 and "at most 2" in str(quota.value)
    for text, status, words in (("model: builtin:noop\ntasks: [nope]\n", 422, "nope"),
                                ("model: builtin:noop\ntasks: [piqa]\nkeep_model: true\n", 422, "only admins"),
                                ("model: [", 422, "malformed YAML")):
        with pytest.raises(UserApiError) as refused:
            bob.submit(text)
        assert refused.value.status == status and words in str(refused.value)
    assert jobs_count() == 3
    assert carol.submit('{"model": "builtin:noop", "tasks": ["piqa"], "keep_model": true}', "json")["id"]  # an admin

    with pytest.raises(UserApiError) as denied:
        bob.cancel(first["id"])
    assert denied.value.status == 403 and "only its submitter or an admin" in str(denied.value)
    assert queue.get_job(first["id"]).state == JobState.QUEUED
    assert alice.cancel(first["id"]) == {"id": first["id"], "state": "cancelled"}
    assert ("alice", "cancel", first["id"]) in [(e["actor"], e["action"], e["job_id"]) for e in access.audit_entries()]

    with pytest.raises(UserApiError) as finished:
        alice.cancel(done)
    assert finished.value.status == 409 and "already failed" in str(finished.value)
    assert alice.status(done)["jobs"][0]["log_tail"] == "/home/alice/secret path"
    assert bob.status(done)["jobs"][0]["log_tail"] is None  # not bob's to manage

    access.hide_run(admin, done, "spam")
    with pytest.raises(UserApiError) as hidden:
        bob.status(done)
    assert hidden.value.status == 404 and str(hidden.value) == f"no job with id {done}"
    assert done not in [j["id"] for j in bob.status()["jobs"]] and done in [j["id"] for j in carol.status()["jobs"]]
    listing = bob.status(limit=2, state="queued")
    assert [j["state"] for j in listing["jobs"]] == ["queued", "queued"] and listing["workers"] == []
    for bad in ({"limit": 0}, {"state": "lost"}):
        assert api.get(f"{USER_API_PREFIX}/jobs", params=bad, headers=bob.headers).status_code == 422


# --- the CLI against a served app -------------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_submits_watches_and_cancels_on_a_served_app_as_the_token_user(isolated_home, tmp_path, capsys):
    _, alice = user_tokens.create(ALICE, "script")
    _, bob = user_tokens.create(BOB, "script")
    config = tmp_path / "noop.yaml"
    config.write_text(NOOP_YAML.format(seed=5))
    token_file = tmp_path / "bob.token"
    token_file.write_text(bob + "\n")
    token_file.chmod(0o600)
    remote_home = tmp_path / "laptop"  # the researcher's machine: no database of its own
    remote_home.mkdir()
    env = {**os.environ, "PRUNEBOARD_HOME": str(remote_home), "PRUNEBOARD_TOKEN": alice}
    with serve_app(isolated_home / "app.log", timeout=600) as url:
        submitted = cli("submit", str(config), "--server", url, env=env)
        assert submitted.returncode == 0, submitted.stderr
        job_id = int(submitted.stdout)
        assert queue.get_job(job_id).submitter == "alice"

        remote = cli("status", "--server", url, "--json", env=env)
        assert remote.returncode == 0, remote.stderr
        remote_jobs = json.loads(remote.stdout)["jobs"]
        code, local, _ = run_cli(capsys, "status", "--json")
        assert code == 0 and remote_jobs == json.loads(local)["jobs"]  # the same answer as beside the database
        assert remote_jobs[0]["waiting_reason"] == "no worker online"
        table = cli("status", "--server", url, env=env)
        assert "waiting: no worker online" in table.stdout and table.stdout.startswith("   ID  STATE")

        not_bobs = cli("cancel", str(job_id), "--server", url, "--token-file", str(token_file),
                       env={k: v for k, v in env.items() if k != "PRUNEBOARD_TOKEN"})
        assert not_bobs.returncode == 3 and not_bobs.stderr.startswith("error: Job")
        assert not_bobs.stderr.count("\n") == 1  # one line
        cancelled = cli("cancel", str(job_id), "--server", url, env=env)
        assert (cancelled.returncode, cancelled.stdout) == (0, f"job {job_id}: cancelled\n")
        unknown = cli("status", "999", "--server", url, env=env)
        assert (unknown.returncode, unknown.stderr) == (2, "error: no job with id 999\n")
        wrong = cli("status", "--server", url, env={**env, "PRUNEBOARD_TOKEN": "pbu_" + "x" * 43})
        assert wrong.returncode == 3 and "rejected the API token" in wrong.stderr
    flag = cli("status", "--server", url, "--token", alice, env=env)  # never a flag: ps would show it
    assert flag.returncode == 2 and "--token is refused" in flag.stderr and alice not in flag.stderr
    gone = cli("status", "--server", url, env=env)
    assert gone.returncode == 1 and "unreachable" in gone.stderr
    assert list(remote_home.iterdir()) == []
    assert queue.get_job(job_id).state == JobState.CANCELLED
