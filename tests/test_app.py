"""`python app.py` serves the UI; read the leaderboard through Gradio's client, submit through the API."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend.config import validate_config
from backend.result import RunResult, ScoreRecord
from jobs import queue

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _seed_finished_run(method: str, sparsity: float, value: float) -> int:
    """A succeeded job with one score, written through the queue's own completion path."""
    config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                              "pruning": {"method": method, "sparsity": sparsity}})
    job, _ = queue.submit(config)
    claimed = queue.claim_next("seed-worker")
    assert claimed is not None and claimed.id == job.id
    result = RunResult(
        scores=[ScoreRecord("synthetic-mc", "acc", value, 0.01, True, True, "k")],
        samples=[], efficiency={}, prune_report={"method": method}, manifest={},
    )
    assert queue.complete(job.id, claimed.attempts, result)
    return job.id


@pytest.fixture
def running_app(isolated_home):
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PRUNEBOARD_LOCAL_WORKERS": "0",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app exited early: {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("app did not serve within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_app_serves_the_leaderboard(running_app):
    from gradio_client import Client

    dense = _seed_finished_run("dense", 0.0, 0.75)
    pruned = _seed_finished_run("magnitude", 0.5, 0.5)

    assert "PruneBoard" in httpx.get(running_app, timeout=10).text
    client = Client(running_app, verbose=False)
    table, note, *_ = client.predict("(all)", "(all)", api_name="/leaderboard")
    headers, rows = table["headers"], table["data"]
    assert "synthetic-mc" in headers and "average" in headers
    by_id = {row[headers.index("job_id")]: row for row in rows}
    assert set(by_id) == {dense, pruned}
    assert rows[0][headers.index("method")] == "dense"
    assert by_id[pruned][headers.index("synthetic-mc")] == pytest.approx(0.5)
    assert "2 run(s)" in note


def test_app_submit_reports_errors_and_queues(running_app):
    from gradio_client import Client

    client = Client(running_app, verbose=False)
    bad = client.predict("model: builtin:tiny-llama\ntasks: [synthetic-mc]\npruning: {method: magnitude, sparsity: 2}\n",
                         False, api_name="/submit")
    assert "Not submitted" in bad and "pruning.sparsity" in bad
    assert queue_count() == 0
    good = client.predict((ROOT / "examples" / "tiny-dense.yaml").read_text(), False, api_name="/submit")
    assert "Queued as **job 1**" in good
    again = client.predict((ROOT / "examples" / "tiny-dense.yaml").read_text(), False, api_name="/submit")
    assert "already exists as **job 1**" in again


def queue_count() -> int:
    from db.queries import list_jobs
    from db.session import read_session

    with read_session() as session:
        return len(list_jobs(session))
