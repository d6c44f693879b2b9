"""What a job needs (`resources` of its config) and what a worker offers (`Capabilities`).

At submit time a job's row records what it needs: `required_device` (NULL: any), the minimum
accelerator memory and where its model comes from (`model_source`: builtin, local or hub). A claim
then takes only the oldest job the claiming worker can run (`claim_filter`, one SQL condition, so the
claim stays a single atomic statement). Rows written before migration 0006 have NULLs: any worker
takes them, as before. A claim without capabilities (`None`) takes any job.

A worker can load builtin models always; local directories when it shares the server's filesystem
(local workers); hub ids when hub reads are enabled (PRUNEBOARD_USE_HUB=1, no HF offline variable);
and any model id listed in PRUNEBOARD_WORKER_MODELS (comma-separated hub ids or directories as the
jobs name them). Its device comes from PRUNEBOARD_WORKER_DEVICE (cpu | cuda), else from torch when
already imported, else from `nvidia-smi`; in Space mode (SPACE_ID set) it is cpu unless
PRUNEBOARD_WORKER_DEVICE says otherwise, so the Space's own worker never takes a GPU job.
Accelerator memory: PRUNEBOARD_WORKER_ACCELERATOR_MEMORY_GB, else the largest GPU's memory.

A worker also reports the tasks it can evaluate (`tasks`: data present in its PRUNEBOARD_DATA_DIR, or
fetched by itself from the Hub). Claims do not filter on them (a worker without a task's data fails
the job in its preflight with the command that fetches it); `jobs.waiting` uses them to tell a queued
job that every online worker lacks its data. `Capabilities.can_run` is `claim_filter` in Python, for
explaining why no worker takes a job; `recorded` reads what the worker registry stored.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, false, or_, true

from backend.config import JobConfig

__all__ = [
    "Capabilities", "detect_capabilities", "job_requirements", "model_source", "claim_filter",
    "num_gpus", "max_wall_seconds", "WALL_TIME_ERROR", "runnable_tasks",
]

WALL_TIME_ERROR = "WallTimeExceeded"
"""error_type of a job that ran past its `resources.max_wall_minutes`."""
_MAX_MODELS = 200
_MAX_TASKS = 500


class Capabilities(BaseModel):
    """What a worker can run; sent with each claim (remote workers: in the claim body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["cpu", "cuda"] = "cpu"
    accelerator_memory_gb: float | None = Field(None, ge=0.0, le=100_000.0)
    """The largest single accelerator's memory (a job runs on one)."""
    models: tuple[str, ...] = Field((), max_length=_MAX_MODELS)
    """Model ids it can load besides builtin ones (PRUNEBOARD_WORKER_MODELS)."""
    hub: bool = False
    """It may download hub models (hub reads enabled)."""
    local_dirs: bool = False
    """It sees the server's filesystem (a local worker): local model directories load. The worker
    API sets it False for remote workers whatever they send."""
    tasks: tuple[str, ...] | None = Field(None, max_length=_MAX_TASKS)
    """Tasks whose data it has or fetches itself (`runnable_tasks`); None: not reported (a worker
    from before this field), taken as able to run any task."""

    def can_run(self, required_device: str | None, min_accelerator_memory_gb: float | None,
                model_source: str | None, model: str) -> bool:
        """Whether a claim with these capabilities may take a job with these columns: `claim_filter`,
        condition for condition."""
        return (self.fits_device(required_device, min_accelerator_memory_gb)
                and self.loads_model(model_source, model))

    def fits_device(self, required_device: str | None, min_accelerator_memory_gb: float | None) -> bool:
        if required_device not in (None, self.device):
            return False
        if min_accelerator_memory_gb is None:
            return True
        return (self.device == "cuda" and self.accelerator_memory_gb is not None
                and min_accelerator_memory_gb <= self.accelerator_memory_gb)

    def loads_model(self, model_source: str | None, model: str) -> bool:
        return (model_source in (None, "builtin") or (model_source == "local" and self.local_dirs)
                or (model_source == "hub" and self.hub) or model in self.models)

    def missing_tasks(self, tasks: list[str]) -> list[str]:
        """The tasks among `tasks` it lacks the data of (none when it did not report its tasks)."""
        return [] if self.tasks is None else [task for task in tasks if task not in self.tasks]

    @classmethod
    def recorded(cls, device: dict[str, Any] | None) -> Capabilities | None:
        """The capabilities a worker's registry record holds (`device["capabilities"]`); None when it
        holds none or ones this version cannot read (taken as able to run anything)."""
        data = (device or {}).get("capabilities") if isinstance(device, dict) else None
        if not isinstance(data, dict):
            return None
        try:
            return cls.model_validate(data)
        except ValueError:
            return None


def detect_capabilities(local_dirs: bool = True) -> Capabilities:
    """This machine's capabilities from the environment (see the module docstring); never imports torch."""
    from backend.tasks.base import hub_enabled

    device, memory = _detect_device()
    models = tuple(m.strip() for m in os.environ.get("PRUNEBOARD_WORKER_MODELS", "").split(",") if m.strip())
    return Capabilities(device=device, accelerator_memory_gb=memory, models=models[:_MAX_MODELS],
                        hub=hub_enabled(), local_dirs=local_dirs, tasks=runnable_tasks())


def runnable_tasks() -> tuple[str, ...]:
    """The registered tasks this machine can evaluate: their data is in PRUNEBOARD_DATA_DIR, or its
    worker would fetch it (`backend.taskdata.availability`)."""
    from common import settings
    from backend.taskdata.availability import missing_task_data
    from backend.tasks import list_tasks

    names = [task.name for task in list_tasks()]
    missing = set(missing_task_data(names, settings.data_dir()))
    return tuple(name for name in names if name not in missing)[:_MAX_TASKS]


def _detect_device() -> tuple[str, float | None]:
    override = os.environ.get("PRUNEBOARD_WORKER_DEVICE", "").strip().lower()
    memory_env = os.environ.get("PRUNEBOARD_WORKER_ACCELERATOR_MEMORY_GB", "").strip()
    if override not in ("", "cpu", "cuda"):
        raise ValueError(f"PRUNEBOARD_WORKER_DEVICE must be cpu or cuda, not {override!r}")
    if override == "cpu" or (not override and os.environ.get("SPACE_ID")):
        return "cpu", None
    memories = _gpu_memories_gb()
    device = override or ("cuda" if memories else "cpu")
    if device == "cpu":
        return "cpu", None
    memory = float(memory_env) if memory_env else (max(memories) if memories else None)
    return "cuda", memory


def _gpu_memories_gb() -> list[float]:
    """Memory of each visible GPU; torch only when already imported (idle workers stay light)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(torch.cuda.device_count())]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [float(line) / 1024 for line in out.split() if line.replace(".", "", 1).isdigit()]  # MiB


def model_source(model_id: str) -> str:
    """builtin | local | hub, judged where the job is submitted (as `check_model_id` does)."""
    if model_id.startswith("builtin:"):
        return "builtin"
    if model_id.startswith(("/", "./")) or Path(model_id).exists():
        return "local"
    return "hub"


def job_requirements(config: JobConfig) -> dict[str, Any]:
    """The `jobs` columns a claim filters on."""
    resources = config.resources
    device = resources.device if resources is not None else "any"
    return {
        "required_device": None if device == "any" else device,
        "min_accelerator_memory_gb": resources.min_accelerator_memory_gb if resources is not None else None,
        "model_source": model_source(config.model),
    }


def claim_filter(caps: Capabilities):
    """SQL condition on `jobs`: the job can run on a worker with `caps`."""
    from db.schema import Job

    if caps.device == "cuda":
        device = or_(Job.required_device.is_(None), Job.required_device == "cuda")
        memory = (Job.min_accelerator_memory_gb.is_(None) if caps.accelerator_memory_gb is None else
                  or_(Job.min_accelerator_memory_gb.is_(None),
                      Job.min_accelerator_memory_gb <= caps.accelerator_memory_gb))
    else:
        device = or_(Job.required_device.is_(None), Job.required_device == "cpu")
        memory = Job.min_accelerator_memory_gb.is_(None)
    model = or_(
        Job.model_source.is_(None),
        Job.model_source == "builtin",
        and_(Job.model_source == "local", true() if caps.local_dirs else false()),
        and_(Job.model_source == "hub", true() if caps.hub else false()),
        Job.model.in_(caps.models) if caps.models else false(),
    )
    return and_(device, memory, model)


def num_gpus(config: JobConfig) -> int:
    """GPUs a job asks of a Ray cluster: one when it needs cuda."""
    return 1 if config.resources is not None and config.resources.device == "cuda" else 0


def max_wall_seconds(config: dict[str, Any]) -> float | None:
    """resources.max_wall_minutes of a claimed (canonical) config, in seconds."""
    minutes = (config.get("resources") or {}).get("max_wall_minutes")
    return None if minutes is None else float(minutes) * 60
