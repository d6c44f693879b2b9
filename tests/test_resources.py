"""Job resources (jobs.resources): config validation, unchanged hashes, claims that take only jobs
the worker can run (device, accelerator memory, models; locally and over the worker API), the
Space's CPU worker never taking a GPU job, and wall time: a job past it fails with that reason."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.config import (
    ConfigError,
    canonical_dict,
    config_hash,
    load_config,
    validate_config,
)
from backend.result import RunResult
from db.session import dispose_engines
from jobs import queue, resources, tokens
from jobs.api import API_PREFIX, create_api
from jobs.baselines import dense_baseline_config
from jobs.resources import WALL_TIME_ERROR, Capabilities, detect_capabilities
from db.states import JobState
from jobs.worker import LocalQueue, Worker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY_DENSE_HASH = "e3d89bc71efb1624553888bb2c2595bae6c018ce43525e4c7454d2823280cd5b"  # as tests/test_config.py
CPU = Capabilities(device="cpu")


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


@pytest.fixture(autouse=True)
def _no_gpu_settings(monkeypatch):
    for name in ("SPACE_ID", "PRUNEBOARD_WORKER_DEVICE", "PRUNEBOARD_WORKER_MODELS",
                 "PRUNEBOARD_WORKER_ACCELERATOR_MEMORY_GB", "PRUNEBOARD_USE_HUB", "HF_HUB_OFFLINE",
                 "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(resources, "_gpu_memories_gb", list)


def noop(seed: int = 0, **extra) -> dict:
    return {"model": "builtin:noop", "tasks": ["synthetic-mc"], "seed": seed, **extra}


def submit(data: dict) -> int:
    return queue.submit(validate_config(data))[0].id


def claim_ids(caps: Capabilities | None) -> list[int]:
    ids = []
    while (job := queue.claim_next("w", caps)) is not None:
        ids.append(job.id)
    return ids


# --- config -----------------------------------------------------------------------------------


def test_resources_validate_and_name_the_field():
    config = validate_config(noop(resources={"device": "cuda", "min_accelerator_memory_gb": 24,
                                             "max_wall_minutes": 90}))
    assert config.resources.device == "cuda" and config.resources.min_accelerator_memory_gb == 24.0
    for bad, field in (({"device": "tpu"}, "resources.device"),
                       ({"gpus": 2}, "resources.gpus"),
                       ({"max_wall_minutes": 0}, "resources.max_wall_minutes"),
                       ({"min_accelerator_memory_gb": -1}, "resources.min_accelerator_memory_gb")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            validate_config(noop(resources=bad))
    with pytest.raises(ConfigError, match="needs device 'cuda' or 'any'"):
        validate_config(noop(resources={"device": "cpu", "min_accelerator_memory_gb": 8}))


def test_empty_or_default_resources_are_no_resources():
    plain = validate_config(noop())
    for spelled in ({}, {"device": "any"}):
        config = validate_config(noop(resources=spelled))
        assert config.resources is None and canonical_dict(config) == canonical_dict(plain)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_hashes_do_not_change_with_or_without_resources(path):
    config = load_config(path)
    assert "resources" not in canonical_dict(config)
    with_resources = validate_config({**canonical_dict(config),
                                      "resources": {"device": "cuda", "max_wall_minutes": 30}})
    assert canonical_dict(with_resources)["resources"] == {"device": "cuda", "max_wall_minutes": 30.0}
    assert config_hash(with_resources) == config_hash(config)  # where and how long do not change results


def test_tiny_dense_hash_is_still_pinned():
    assert config_hash(load_config(EXAMPLES / "tiny-dense.yaml")) == TINY_DENSE_HASH


def test_dense_baseline_keeps_the_resources():
    pruned = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                              "pruning": {"method": "magnitude", "sparsity": 0.5},
                              "resources": {"device": "cuda"}})
    assert dense_baseline_config(pruned).resources.device == "cuda"


# --- claims -----------------------------------------------------------------------------------


def test_claims_filter_by_device_and_accelerator_memory():
    anywhere = submit(noop(0))
    cpu_only = submit(noop(1, resources={"device": "cpu"}))
    gpu = submit(noop(2, resources={"device": "cuda"}))
    big_gpu = submit(noop(3, resources={"device": "cuda", "min_accelerator_memory_gb": 40}))
    any_with_memory = submit(noop(4, resources={"min_accelerator_memory_gb": 16}))

    assert claim_ids(CPU) == [anywhere, cpu_only]
    assert claim_ids(Capabilities(device="cuda", accelerator_memory_gb=24)) == [gpu, any_with_memory]
    assert claim_ids(Capabilities(device="cuda")) == []  # memory unknown: no job with a minimum
    assert claim_ids(Capabilities(device="cuda", accelerator_memory_gb=80)) == [big_gpu]


def test_claims_filter_by_the_models_a_worker_can_load(tmp_path, monkeypatch):
    local_dir = tmp_path / "my-model"
    local_dir.mkdir()
    (local_dir / "config.json").write_text("{}")
    builtin = submit(noop(0))
    hub = submit({"model": "someone/some-model", "tasks": ["synthetic-mc"]})
    other_hub = submit({"model": "someone/other-model", "tasks": ["synthetic-mc"]})
    local = submit({"model": str(local_dir), "tasks": ["synthetic-mc"]})
    assert queue.get_job(local).model_source == "local" and queue.get_job(hub).model_source == "hub"

    assert claim_ids(CPU) == [builtin]
    assert claim_ids(Capabilities(models=("someone/other-model",))) == [other_hub]
    assert claim_ids(Capabilities(local_dirs=True)) == [local]
    assert claim_ids(Capabilities(hub=True)) == [hub]


def test_a_claim_without_capabilities_and_rows_before_0006_take_any_job():
    gpu = submit(noop(0, resources={"device": "cuda"}))
    legacy = submit(noop(1, resources={"device": "cuda"}))
    from db.schema import Job
    from db.session import write_session

    with write_session() as session:  # as migration 0006 leaves older rows
        row = session.get(Job, legacy)
        row.required_device = row.model_source = None
    assert claim_ids(CPU) == [legacy]
    assert claim_ids(None) == [gpu]


def test_worker_capabilities_come_from_the_environment(monkeypatch):
    tasks = resources.runnable_tasks()  # tests/test_workers.py checks these against the data directory
    assert detect_capabilities() == Capabilities(device="cpu", local_dirs=True, tasks=tasks)
    monkeypatch.setattr(resources, "_gpu_memories_gb", lambda: [24.0, 80.0])
    assert detect_capabilities(local_dirs=False) == Capabilities(device="cuda", accelerator_memory_gb=80.0, tasks=tasks)
    monkeypatch.setenv("PRUNEBOARD_WORKER_MODELS", "a/b, /models/c")
    monkeypatch.setenv("PRUNEBOARD_WORKER_ACCELERATOR_MEMORY_GB", "40")
    monkeypatch.setenv("PRUNEBOARD_USE_HUB", "1")
    caps = detect_capabilities()
    assert (caps.accelerator_memory_gb, caps.models, caps.hub) == (40.0, ("a/b", "/models/c"), True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert detect_capabilities().hub is False
    monkeypatch.setenv("PRUNEBOARD_WORKER_DEVICE", "cpu")
    assert detect_capabilities().device == "cpu"


def test_the_space_cpu_worker_never_takes_a_gpu_job(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/pruneboard")
    monkeypatch.setattr(resources, "_gpu_memories_gb", lambda: [80.0])  # even on a machine with a GPU
    gpu = submit(noop(0, resources={"device": "cuda"}))
    cpu = submit(noop(1))
    assert Worker("space-local-0").run(drain=True, install_signals=False) == 1
    assert queue.get_job(cpu).state == JobState.SUCCEEDED
    assert queue.get_job(gpu).state == JobState.QUEUED
    from db.session import read_session
    from jobs.registry import list_workers

    with read_session() as session:
        advertised = list_workers(session)[0]["device"]["capabilities"]
    assert advertised["device"] == "cpu"


def test_remote_claims_send_capabilities_and_never_get_server_directories(tmp_path):
    local_dir = tmp_path / "m"
    local_dir.mkdir()
    (local_dir / "config.json").write_text("{}")
    local = submit({"model": str(local_dir), "tasks": ["synthetic-mc"]})
    gpu = submit(noop(0, resources={"device": "cuda", "min_accelerator_memory_gb": 40}))
    token = tokens.create("gpu-box")
    with TestClient(create_api()) as client:
        def claim(caps: dict | None) -> int | None:
            body = {"worker": "box:1"} if caps is None else {"worker": "box:1", "capabilities": caps}
            response = client.post(f"{API_PREFIX}/claim", json=body, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
            return (response.json()["job"] or {}).get("id")

        assert claim(None) is None  # no capabilities: a CPU worker loading builtin models only
        assert claim({"device": "cuda", "accelerator_memory_gb": 24, "local_dirs": True}) is None
        assert claim({"device": "cuda", "accelerator_memory_gb": 48}) == gpu
        bad = client.post(f"{API_PREFIX}/claim", json={"worker": "box:1", "capabilities": {"device": "tpu"}},
                          headers={"Authorization": f"Bearer {token}"})
        assert bad.status_code == 422 and "capabilities.device" in bad.json()["detail"]
    assert queue.get_job(local).state == JobState.QUEUED


# --- wall time --------------------------------------------------------------------------------


def test_a_job_past_its_wall_time_fails_with_that_reason():
    job_id = submit(noop(0, model_args={"sleep_ms": 8_000}, resources={"max_wall_minutes": 0.01}))
    assert Worker("w").run(drain=True, install_signals=False) == 1
    job = queue.get_job(job_id)
    assert job.state == JobState.FAILED and job.error_type == WALL_TIME_ERROR
    assert "max_wall_minutes (0.01 min)" in job.error_message


def test_wall_time_fails_a_silent_pipeline_and_its_late_result_is_refused():
    job_id = submit(noop(0, resources={"max_wall_minutes": 0.005}))
    seen_failed = []

    def silent(config, events, completed):  # no events: only the heartbeat thread can notice
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and queue.get_job(job_id).state != JobState.FAILED:
            time.sleep(0.05)
        seen_failed.append(queue.get_job(job_id).state == JobState.FAILED)
        return RunResult(scores=[], samples=[], efficiency={}, prune_report={}, manifest={}, stage_seconds={})

    Worker("w", pipeline=silent, backend=LocalQueue()).run(drain=True, install_signals=False)
    job = queue.get_job(job_id)
    assert seen_failed == [True]  # failed while the pipeline was still running
    assert job.state == JobState.FAILED and job.error_type == WALL_TIME_ERROR


def test_resubmitting_with_more_wall_time_requeues_with_the_new_resources():
    job_id = submit(noop(0, model_args={"sleep_ms": 20_000}, resources={"max_wall_minutes": 0.01}))
    Worker("w").run(drain=True, install_signals=False)
    again, existing = queue.submit(validate_config(noop(0, model_args={"sleep_ms": 20_000},
                                                        resources={"device": "cpu", "max_wall_minutes": 60})))
    assert (again.id, existing, again.state) == (job_id, True, JobState.QUEUED)
    assert '"max_wall_minutes":60.0' in again.config_json and again.required_device == "cpu"
