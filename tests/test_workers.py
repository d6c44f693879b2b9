"""What workers report and what the queue explains with it: the tasks a worker can evaluate, the
Python mirror of the claim filter, `waiting_reason` (jobs.waiting) in `jobs status` and the Queue tab,
capabilities recorded by the worker API, and the Workers panel (ui.workers_view), escaped."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.config import validate_config
from backend.tasks import get_task, list_tasks
from db.schema import Job, WorkerRecord, utcnow
from db.session import dispose_engines, read_session, write_session
from jobs import queue, registry, resources, tokens
from jobs.api import API_PREFIX, create_api
from jobs.resources import Capabilities, claim_filter
from db.states import JobState
from jobs.waiting import JobNeeds, waiting_reason
from tests.api_support import run_cli
from ui import services
from ui.workers_view import render_workers

HOSTILE = '<img src=x onerror="window.__pwned=1">'
CUDA_40 = "needs a CUDA worker with ≥ 40 GB; none online"


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


@pytest.fixture(autouse=True)
def _plain_worker_settings(monkeypatch):
    for name in ("SPACE_ID", "PRUNEBOARD_USE_HUB", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def submit(model: str = "builtin:noop", tasks=("piqa",), seed: int = 0, **resources_) -> int:
    data = {"model": model, "tasks": list(tasks), "seed": seed}
    if resources_:
        data["resources"] = resources_
    return queue.submit(validate_config(data))[0].id


def online(worker_id: str, caps: Capabilities | None, job: int | None = None) -> None:
    """A worker heard from just now, as the registry records it (None: a record without capabilities)."""
    device = {"host": "box"} if caps is None else {"host": "box", "capabilities": caps.model_dump(mode="json")}
    registry.seen(worker_id, current_job_id=job, device=device)


def needs(model: str = "builtin:noop", tasks=("piqa",), device=None, memory=None) -> JobNeeds:
    return JobNeeds(device, memory, resources.model_source(model), model, tuple(tasks))


# --- what a worker reports ------------------------------------------------------------------------


def test_runnable_tasks_follow_the_data_directory_and_hub_access(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token saved by `hf auth login`
    self_contained = {t.name for t in list_tasks() if not t.data_files}
    assert set(resources.runnable_tasks()) == self_contained and "piqa" not in self_contained
    for name in get_task("piqa").data_files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    assert set(resources.runnable_tasks()) == self_contained | {"piqa"}
    monkeypatch.setenv("PRUNEBOARD_USE_HUB", "1")  # a worker that fetches missing data itself
    with_hub = set(resources.runnable_tasks())
    assert {"gsm8k", "boolq"} <= with_hub and "gpqa-diamond" not in with_hub  # gated: needs HF_TOKEN
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    assert "gpqa-diamond" in resources.runnable_tasks()


def test_can_run_agrees_with_the_claim_filter(tmp_path):
    local_dir = tmp_path / "m"
    local_dir.mkdir()
    (local_dir / "config.json").write_text("{}")
    for seed, (model, device, memory) in enumerate([
        ("builtin:noop", None, None), ("builtin:noop", "cpu", None), ("builtin:noop", "cuda", None),
        ("builtin:noop", "cuda", 40.0), ("builtin:noop", None, 16.0), ("someone/model", None, None),
        ("someone/model", "cuda", 24.0), (str(local_dir), None, None),
    ]):
        extra = {key: value for key, value in (("device", device), ("min_accelerator_memory_gb", memory)) if value}
        submit(model, ["synthetic-mc"], seed, **extra)
    with write_session() as session:  # a row from before migration 0006: any worker takes it
        session.get(Job, 1).required_device = session.get(Job, 1).model_source = None
    workers = [Capabilities(), Capabilities(device="cuda"), Capabilities(device="cuda", accelerator_memory_gb=24),
               Capabilities(device="cuda", accelerator_memory_gb=80, hub=True), Capabilities(local_dirs=True),
               Capabilities(models=("someone/model",)), Capabilities(device="cuda", accelerator_memory_gb=16)]
    with read_session() as session:
        jobs = session.scalars(select(Job).order_by(Job.id)).all()
        for caps in workers:
            by_sql = set(session.scalars(select(Job.id).where(claim_filter(caps))))
            by_python = {job.id for job in jobs if caps.can_run(job.required_device, job.min_accelerator_memory_gb,
                                                                job.model_source, job.model)}
            assert by_python == by_sql, caps
        assert len({frozenset(session.scalars(select(Job.id).where(claim_filter(c)))) for c in workers}) > 3


def test_capabilities_of_old_or_unreadable_records_are_unknown():
    assert Capabilities.recorded(None) is None and Capabilities.recorded({"host": "box"}) is None
    assert Capabilities.recorded({"capabilities": {"device": "tpu"}}) is None  # not this version's
    before_tasks = {"device": "cpu", "accelerator_memory_gb": None, "models": [], "hub": False, "local_dirs": True}
    caps = Capabilities.recorded({"capabilities": before_tasks})
    assert caps.local_dirs and caps.tasks is None and caps.missing_tasks(["gsm8k"]) == []


def test_remote_claims_record_the_capabilities_they_were_judged_by():
    token = tokens.create("gpu")
    with TestClient(create_api()) as client:
        for worker, body in (("new:1", {"capabilities": {"device": "cuda", "accelerator_memory_gb": 48,
                                                          "local_dirs": True, "tasks": ["piqa"]}}),
                             ("old:1", {})):  # a worker from before capabilities: a CPU worker
            response = client.post(f"{API_PREFIX}/claim", json={"worker": worker, "device": {"gpu": "x"}, **body},
                                   headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
    with read_session() as session:
        workers = {w["id"]: w for w in registry.list_workers(session)}
    new = workers["gpu/new:1"]["capabilities"]
    assert (new["device"], new["accelerator_memory_gb"], new["tasks"]) == ("cuda", 48.0, ["piqa"])
    assert new["local_dirs"] is False  # the server's directories are never a remote worker's
    assert workers["gpu/old:1"]["capabilities"]["device"] == "cpu" and workers["gpu/old:1"]["device"]["gpu"] == "x"


# --- waiting reasons ------------------------------------------------------------------------------


def test_waiting_reason_names_what_no_online_worker_offers():
    cpu = Capabilities(tasks=("piqa",))
    gpu_24 = Capabilities(device="cuda", accelerator_memory_gb=24, tasks=("piqa",))
    gpu_80 = Capabilities(device="cuda", accelerator_memory_gb=80, tasks=("piqa",))
    big = needs(device="cuda", memory=40)
    assert waiting_reason(needs(), []) == "no worker online"
    assert waiting_reason(big, []) == waiting_reason(big, [cpu, gpu_24]) == CUDA_40
    assert waiting_reason(big, [cpu, gpu_80]) is None
    assert waiting_reason(needs(device="cuda"), [cpu]) == "needs a CUDA worker; none online"
    assert waiting_reason(needs(memory=16), [cpu]) == "needs a worker with ≥ 16 GB of accelerator memory; none online"

    hub = needs("someone/model")
    assert waiting_reason(hub, [cpu, gpu_80]).startswith("no worker can load hub models")
    assert waiting_reason(hub, [cpu.model_copy(update={"hub": True})]) is None
    assert waiting_reason(hub, [cpu.model_copy(update={"models": ("someone/model",)})]) is None
    # the model check counts only workers that fit the device: a hub-capable CPU worker does not help
    assert waiting_reason(needs("someone/model", device="cuda"), [cpu.model_copy(update={"hub": True}), gpu_80]) \
        .startswith("no worker can load hub models")

    gsm8k = needs("builtin:tiny-llama", tasks=("gsm8k", "piqa"))
    reason = waiting_reason(gsm8k, [cpu, gpu_80])
    assert reason.startswith("task data missing on every worker: gsm8k (")
    assert "python -m jobs data fetch gsm8k" in reason
    assert waiting_reason(gsm8k, [cpu, gpu_80.model_copy(update={"tasks": ("gsm8k", "piqa")})]) is None
    assert waiting_reason(gsm8k, [cpu.model_copy(update={"tasks": None})]) is None  # tasks not reported
    assert waiting_reason(big, [cpu, None]) is None  # a worker that reported nothing might take it


def test_the_noop_model_needs_no_task_data():
    job_id = submit("builtin:noop", ["gsm8k"])
    with read_session() as session:
        assert JobNeeds.of(session.get(Job, job_id)).tasks == ()
    job_id = submit("builtin:tiny-llama", ["gsm8k", "piqa"])
    with read_session() as session:
        assert JobNeeds.of(session.get(Job, job_id)).tasks == ("gsm8k", "piqa")


def test_status_reports_why_queued_jobs_wait(capsys):
    big = submit(seed=1, device="cuda", min_accelerator_memory_gb=40)
    anywhere = submit(seed=2)
    running = submit(seed=3, device="cuda", min_accelerator_memory_gb=40)
    with write_session() as session:  # claimed by a GPU worker that has since gone silent
        row = session.get(Job, running)
        row.state, row.worker_id = JobState.RUNNING, "gone"
        session.add(WorkerRecord(id="gone", last_heartbeat_at=utcnow() - timedelta(hours=1), current_job_id=running,
                                 device_json={"capabilities": Capabilities(device="cuda", accelerator_memory_gb=80)
                                              .model_dump(mode="json")}))
    online("cpu-1", Capabilities(tasks=("piqa",)))

    code, out, _ = run_cli(capsys, "status", "--json")
    reasons = {job["id"]: job["waiting_reason"] for job in json.loads(out)["jobs"]}
    assert code == 0 and reasons == {big: CUDA_40, anywhere: None, running: None}  # the stale GPU worker is not online
    code, out, _ = run_cli(capsys, "status")
    assert f"waiting: {CUDA_40}" in out
    code, out, _ = run_cli(capsys, "status", str(big))
    assert f"waiting_reason: {CUDA_40}" in out

    online("gpu-1", Capabilities(device="cuda", accelerator_memory_gb=48))
    assert json.loads(run_cli(capsys, "status", str(big), "--json")[1])["jobs"][0]["waiting_reason"] is None


def test_queue_tab_shows_the_waiting_reason_in_the_row_and_the_panel():
    online("cpu-1", Capabilities())
    big = submit(device="cuda", min_accelerator_memory_gb=40)
    frame = services.queue_view()
    assert frame.loc[frame["id"] == big, "stage"].item() == f"waiting: {CUDA_40}"
    assert f"Waiting: {CUDA_40}" in services.job_panel(big)
    assert services.job_visible(big) and not services.job_visible(None) and not services.job_visible(big + 1)


# --- the Workers panel ----------------------------------------------------------------------------


def test_workers_panel_lists_online_and_stale_workers_with_what_they_run_escaped():
    all_tasks = ["gsm8k", "piqa", "synthetic-mc"]
    now = utcnow()

    def worker(worker_id, status, caps, job=None):
        return {"id": worker_id, "status": status, "current_job": job, "seconds_since_heartbeat": 75.0,
                "last_heartbeat_at": now, "capabilities": None if caps is None else caps.model_dump(mode="json")}

    html = render_workers([
        worker(f"gpu/{HOSTILE}", "running", Capabilities(device="cuda", accelerator_memory_gb=80, hub=True,
                                                         models=(HOSTILE,), tasks=tuple(all_tasks)), job=7),
        worker("local-0", "idle", Capabilities(local_dirs=True, tasks=("piqa", "synthetic-mc"))),
        worker("old", "stale", None),
        worker("done", "stopped", Capabilities()),
    ], all_tasks)
    assert "<img" not in html and html.count("&lt;img src=x") == 2  # the id and the listed model
    assert "1 running, 1 idle" in html and "1 stale" in html and "1 stopped, not listed" in html
    assert "done" not in html.replace("1 stopped", "")
    assert "CUDA, 80 GB" in html and "builtin, hub; listed:" in html and "job 7" in html and "1m 15s ago" in html
    assert "all 3" in html and "2 of 3" in html and "missing data: gsm8k" in html
    assert "builtin, local directories" in html and html.count("not reported") == 3  # device, models, tasks
    assert "pb-badge-stale" in html and "pb-badge-idle" in html
    assert "No worker has been seen yet" in render_workers([], all_tasks)
