"""`python -m jobs`: answers on stdout, one-line errors on stderr, exit codes, no torch, fast."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.schema import Job
from db.session import dispose_engines, init_db, read_session
from jobs import queue
from jobs.cli import main
from db.states import JobState

ROOT = Path(__file__).resolve().parent.parent

NOOP_YAML = "model: builtin:noop\nmodel_args: {sleep_ms: 10}\ntasks: [synthetic-mc]\nseed: 1\n"


@pytest.fixture(autouse=True)
def _close_engines():
    """Each test has its own database file; close its pooled connections afterwards."""
    yield
    dispose_engines()


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def python_running_cli(*commands: list[str]) -> list[str]:
    """A fresh interpreter that runs CLI commands in-process, then reports whether torch got loaded."""
    calls = "\n".join(f"print('exit', main({cmd!r}), file=sys.stderr)" for cmd in commands)
    code = f"import sys\nfrom jobs.cli import main\n{calls}\nprint('TORCH', 'torch' in sys.modules)\n"
    return [sys.executable, "-c", code]


def job_count() -> int:
    with read_session() as session:
        return session.scalar(select(func.count()).select_from(Job))


@pytest.fixture
def noop_file(tmp_path) -> Path:
    path = tmp_path / "noop.yaml"
    path.write_text(NOOP_YAML)
    return path


# --- submit -----------------------------------------------------------------------------------


def test_submit_prints_the_id_then_reports_existing(capsys, noop_file):
    code, out, _ = run_cli(capsys, "submit", str(noop_file))
    assert code == 0 and out.strip().isdigit()
    job_id = int(out)
    code, out, _ = run_cli(capsys, "submit", str(noop_file), "--json")
    assert code == 0 and json.loads(out) == {"id": job_id, "state": "queued", "existing": True}
    code, out, _ = run_cli(capsys, "submit", str(noop_file), "--json", "--force")
    forced = json.loads(out)
    assert forced["existing"] is False and forced["id"] != job_id and forced["state"] == "queued"
    assert job_count() == 2


def test_submit_reads_json_and_stdin(capsys, tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "builtin:noop", "tasks": ["synthetic-mc"], "seed": 2}))
    assert run_cli(capsys, "submit", str(path))[0] == 0
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(NOOP_YAML))
    code, out, _ = run_cli(capsys, "submit", "-", "--json")
    assert code == 0 and json.loads(out)["existing"] is False


BAD_INPUTS = [
    ("unknown-method.yaml", NOOP_YAML + "pruning: {method: nope}\n", "pruning"),
    ("sparsity-neg.yaml", NOOP_YAML + "pruning: {method: magnitude, sparsity: -0.1}\n", "pruning.sparsity"),
    ("sparsity-one.yaml", NOOP_YAML + "pruning: {method: magnitude, sparsity: 1}\n", "pruning.sparsity"),
    ("sparsity-nan.yaml", NOOP_YAML + "pruning: {method: magnitude, sparsity: .nan}\n", "pruning.sparsity"),
    ("sparsity-huge.yaml", NOOP_YAML + "pruning: {method: magnitude, sparsity: 1e308}\n", "pruning.sparsity"),
    ("unknown-task.yaml", "model: builtin:noop\ntasks: [no-such-task]\n", "tasks.0.name"),
    ("builtin.yaml", "model: builtin:nope\ntasks: [synthetic-mc]\n", "model"),
    ("local.yaml", "model: /nonexistent/model/dir\ntasks: [synthetic-mc]\n", "model"),
    ("url.yaml", "model: file:///x\ntasks: [synthetic-mc]\n", "model"),
    ("dotdot.yaml", "model: ../x\ntasks: [synthetic-mc]\n", "model"),
    ("malformed.yaml", "model: [builtin:noop\ntasks: {", "malformed YAML"),
    ("malformed.json", '{"model": "builtin:noop", ', "malformed JSON"),
    ("empty.yaml", "", "empty"),
    ("null.yaml", "null\n", "empty"),
    ("list.yaml", "- model: builtin:noop\n", "list"),
    ("python-tag.yaml", "!!python/object:os.system {}\n", "malformed YAML"),
    ("huge-string.yaml", "model: " + "x" * 100_000 + "\ntasks: [synthetic-mc]\n", "config is larger"),
    ("long-model.yaml", "model: " + "x" * 60_000 + "\ntasks: [synthetic-mc]\n", "model"),
    ("unknown-key.yaml", NOOP_YAML + "bogus_key: 1\n", "bogus_key"),
    ("missing.yaml", None, "cannot read config"),
]


@pytest.mark.parametrize("name, text, expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_stderr_line_exit_2_and_no_rows(capsys, tmp_path, name, text, expected):
    init_db()
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    code, out, err = run_cli(capsys, "submit", str(path))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err
    assert job_count() == 0


def test_bad_input_in_a_real_process(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(NOOP_YAML + "pruning: {sparsity: .nan}\n")
    proc = subprocess.run([sys.executable, "-m", "jobs", "submit", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "pruning.sparsity" in proc.stderr
    assert not (Path(os.environ["PRUNEBOARD_HOME"]) / "pruneboard.db").exists()  # never opened


# --- status / cancel / retry ------------------------------------------------------------------


def test_status_lists_and_shows_jobs(capsys, noop_file):
    job_id = int(run_cli(capsys, "submit", str(noop_file))[1])
    code, out, _ = run_cli(capsys, "status", "--json")
    jobs = json.loads(out)["jobs"]
    assert code == 0 and len(jobs) == 1
    assert {"id", "state", "progress", "stage", "model", "method", "sparsity", "attempts", "error_type",
            "error_message", "created_at"} <= set(jobs[0])
    assert (jobs[0]["id"], jobs[0]["state"], jobs[0]["model"]) == (job_id, "queued", "builtin:noop")

    code, out, _ = run_cli(capsys, "status")
    assert code == 0 and "queued" in out and "builtin:noop" in out
    code, out, _ = run_cli(capsys, "status", str(job_id), "--json")
    assert code == 0 and json.loads(out)["jobs"][0]["config"]["seed"] == 1
    code, out, _ = run_cli(capsys, "status", str(job_id))
    assert code == 0 and "queued" in out


@pytest.mark.parametrize("command", ["status", "cancel", "retry"])
def test_unknown_job_id_exits_2(capsys, command):
    code, out, err = run_cli(capsys, command, "4242")
    assert code == 2 and out == "" and err.strip() == "error: no job with id 4242"


def test_cancel_retry_and_worker_commands(capsys, noop_file, tmp_path):
    job_id = int(run_cli(capsys, "submit", str(noop_file))[1])
    code, out, _ = run_cli(capsys, "cancel", str(job_id), "--json")
    assert code == 0 and json.loads(out) == {"id": job_id, "state": "cancelled"}
    code, out, _ = run_cli(capsys, "retry", str(job_id))
    assert code == 0 and "queued again" in out

    assert run_cli(capsys, "worker", "--drain", "--id", "cli-worker")[0] == 0
    assert queue.get_job(job_id).state == JobState.SUCCEEDED
    code, _, err = run_cli(capsys, "cancel", str(job_id))
    assert code == 1 and err.strip() == f"error: job {job_id} already succeeded"
    code, _, err = run_cli(capsys, "retry", str(job_id))
    assert code == 1 and "--force" in err

    failing = tmp_path / "fail.yaml"
    failing.write_text("model: builtin:noop\nmodel_args: {fail: kaboom}\ntasks: [synthetic-mc]\n")
    fail_id = int(run_cli(capsys, "submit", str(failing))[1])
    run_cli(capsys, "worker", "--drain")
    code, out, _ = run_cli(capsys, "status", str(fail_id))
    assert "RuntimeError" in out and "kaboom" in out
    code, out, _ = run_cli(capsys, "retry", str(fail_id), "--json")
    assert code == 0 and json.loads(out) == {"id": fail_id, "state": "queued"}


# --- catalogue commands -----------------------------------------------------------------------


def test_methods_and_tasks(capsys):
    code, out, _ = run_cli(capsys, "methods", "--json")
    methods = {m["name"]: m for m in json.loads(out)["methods"]}
    assert code == 0 and "dense" in methods
    assert {"family", "description", "sparsity_meaning", "parameters"} <= set(methods["dense"])
    assert methods["dense"]["parameters"]["type"] == "object"

    code, out, _ = run_cli(capsys, "tasks", "--json")
    tasks = {t["name"]: t for t in json.loads(out)["tasks"]}
    assert code == 0 and "synthetic-mc" in tasks
    assert {"category", "output_type", "primary_metric", "higher_is_better", "data_files"} <= set(tasks["synthetic-mc"])
    assert isinstance(tasks["synthetic-mc"]["data_present"], bool)

    assert run_cli(capsys, "methods")[0] == 0 and run_cli(capsys, "tasks")[0] == 0


# --- no torch, fast ---------------------------------------------------------------------------


def test_commands_that_run_no_model_import_no_torch(noop_file):
    commands = [
        ["submit", str(noop_file)], ["submit", str(noop_file), "--json"], ["status"], ["status", "1", "--json"],
        ["cancel", "1"], ["retry", "1"], ["methods", "--json"], ["tasks", "--json"], ["status", "99"],
    ]
    proc = subprocess.run(python_running_cli(*commands), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("exit ")] == [
        "exit 0", "exit 0", "exit 0", "exit 0", "exit 0", "exit 0", "exit 0", "exit 0", "exit 2",
    ]
    assert proc.stdout.strip().splitlines()[-1] == "TORCH False"



def test_worker_started_with_stop_with_parent_exits_when_its_parent_is_killed():
    """A parent killed with SIGKILL runs no exit handler (app.py's atexit stop): the worker notices."""
    import signal
    import time

    init_db()
    dispose_engines()
    launcher = ("import subprocess, sys\n"
                "child = subprocess.Popen([sys.executable, '-m', 'jobs', 'worker', '--id', 'orphan', "
                "'--poll', '0.1', '--stop-with-parent'])\n"
                "print(child.pid, flush=True)\n"
                "child.wait()\n")
    parent = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    try:
        time.sleep(3)  # the worker is up and polling
        assert _alive(worker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker_pid), "the orphaned worker kept running"
    finally:
        if _alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, reaped by init soon after, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
