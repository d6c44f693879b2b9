"""Claimed jobs as Ray tasks: `python -m jobs worker --executor ray [--address auto] [--max-concurrent N]`.

The driver (this process) claims jobs like any worker (`LocalQueue` on this machine's database, or
`HttpQueue` with --server), up to `max_concurrent` at once, and submits each as a Ray task running
the pure pipeline (`backend.pipeline.run`) with `num_gpus` 1 for `resources.device: cuda` (else 0)
and `cpus_per_job` CPUs, so a cluster runs many jobs at once. The driver renews every in-flight
job's lease each lease/3 seconds; a requested cancel or a lost claim cancels the task
(`ray.cancel(force=True)`), and a job past `resources.max_wall_minutes` is failed with
WallTimeExceeded and its task cancelled. Results go through the same completion path as the local
worker (`complete` under the claim's attempt); a task that raises fails its job with the exception's
type and message. SIGTERM/SIGINT cancels the tasks and hands their jobs back to the queue.

Progress and samples: each task's event sink puts the pipeline's events, tagged with job id and
attempt, into one `ray.util.queue.Queue` actor (0 CPUs) that the driver drains every loop. The
driver writes the latest progress with the job's heartbeat (at most every PROGRESS_INTERVAL seconds,
always on a stage change) and checkpoints each finished sample (`record_sample` under the claim's
attempt) before it completes the job, so a requeued job resumes from its checkpoints (the claim's
`completed` samples go into the task). Events of a job no longer in flight are dropped. Limits: a
task cannot be stopped between events as the local worker's sink does; cancels kill it. The driver's
PRUNEBOARD_* and HF_* variables travel with each task. Capabilities: the cluster counts as a GPU
worker when it has GPU resources (accelerator memory: PRUNEBOARD_WORKER_ACCELERATOR_MEMORY_GB, else
the driver's largest GPU); models as for other workers (`jobs.resources`). Nodes of an existing
cluster (`--address auto`) must have this repository importable (e.g. `PYTHONPATH=<repo> ray start`).
Ray is an optional extra: `pip install -r requirements-ray.txt`.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.events import Event, Progress, SampleDone
from jobs.logs import event
from jobs.resources import (
    WALL_TIME_ERROR,
    Capabilities,
    detect_capabilities,
    max_wall_seconds,
)
from jobs.states import LostClaim
from jobs.worker import (
    ERROR_BACKOFF,
    POLL_INTERVAL,
    PROGRESS_INTERVAL,
    Claim,
    FatalWorkerError,
    LocalQueue,
    QueueBackend,
    default_worker_id,
)

__all__ = ["RayExecutor", "RayMissing", "import_ray", "init_ray"]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
_FORWARDED_PREFIXES = ("PRUNEBOARD_", "HF_", "TRANSFORMERS_")
_SECRET_VARIABLES = ("PRUNEBOARD_WORKER_TOKEN",)
LOG_TAIL_CHARS = 16_000


class RayMissing(RuntimeError):
    """--executor ray without Ray installed."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissing("--executor ray needs Ray: pip install -r requirements-ray.txt") from None
    return ray


def init_ray(address: str | None = None, **init_kwargs: Any):
    """Connect to `address` ("auto": a running cluster) or start a local Ray (extra `init_kwargs`,
    e.g. num_cpus); no-op when Ray is already initialised in this process."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address is None:  # local workers inherit this environment: make the repository importable
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(ROOT) not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])
    ray.init(address=address, include_dashboard=False, configure_logging=False, **init_kwargs)
    return ray


def _run_task(config: dict[str, Any], completed: list, env: dict[str, str], channel: Any, tag: tuple[int, int]):
    """The Ray task: the pipeline on one claimed config, resuming after `completed`; its events go
    to the driver through `channel` (no database access here)."""
    os.environ.update(env)
    from backend.config import validate_config
    from backend.pipeline import run

    return run(validate_config(config), _ChannelSink(channel, tag), completed)


class _ChannelSink:
    """The task's event sink: puts (job id, attempt, event) into the driver's queue actor.

    A queue actor rather than, say, a per-job actor or returning a generator: one actor serves every
    task, the pipeline never waits for the driver (the queue is unbounded, a put is one short call
    to the actor), and a finished task's events are all in the queue before its result is ready
    (each put returns once the actor holds the event), so the driver checkpoints them before it
    completes the job."""

    def __init__(self, channel: Any, tag: tuple[int, int]):
        self.channel = channel
        self.tag = tag
        self.broken = False

    def __call__(self, item: Event) -> None:
        if self.channel is None or self.broken:
            return
        try:
            self.channel.put_nowait((*self.tag, item))
        except Exception:  # progress and checkpoints must not fail the run: the result carries every sample
            self.broken = True
            logger.warning("job %d: cannot send events to the driver; running on without them", self.tag[0],
                           exc_info=True)


@dataclass
class _InFlight:
    claim: Claim
    ref: Any
    deadline: float | None
    next_beat: float
    stopping: str | None = None
    """Why its task was cancelled: cancel | lost | wall | stop."""
    progress: Progress | None = None
    """The latest progress its task sent."""
    progress_unwritten: bool = False
    written_stage: str | None = None
    last_progress_write: float = 0.0


class RayExecutor:
    """Claims jobs and runs up to `max_concurrent` of them at once as Ray tasks (see the module)."""

    def __init__(
        self,
        worker_id: str | None = None,
        backend: QueueBackend | None = None,
        max_concurrent: int | None = None,
        cpus_per_job: float = 1.0,
        poll_interval: float = POLL_INTERVAL,
        address: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ):
        self.worker_id = worker_id or default_worker_id()
        self.backend: QueueBackend = backend if backend is not None else LocalQueue()
        self.max_concurrent = max_concurrent
        self.cpus_per_job = cpus_per_job
        self.poll_interval = poll_interval
        self.address = address
        self.init_kwargs = init_kwargs or {}
        self.inflight: dict[Any, _InFlight] = {}
        self._channel: Any = None
        """The queue actor the tasks send their events through (while `run` runs)."""
        self._stop = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def run(self, drain: bool = False, install_signals: bool = True) -> int:
        """Run jobs until stopped (with `drain`: until none is queued or running); return how many
        finished (succeeded, failed or cancelled)."""
        ray = init_ray(self.address, **self.init_kwargs)
        self._set_capabilities(ray)
        slots = self.max_concurrent or max(int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_job), 1)
        task = ray.remote(_run_task)
        restore = self._install_signals() if install_signals else {}
        processed = 0
        event(logger, "worker_started", worker=self.worker_id, executor="ray", slots=slots, drain=drain)
        from ray.util.queue import Queue

        self._channel = Queue(actor_options={"num_cpus": 0})
        try:
            while True:
                try:
                    queue_empty = self.stopping or self._fill(ray, task, slots)
                except FatalWorkerError:
                    raise
                except Exception:
                    if drain:
                        raise
                    logger.exception("worker %s: queue error; retrying in %.0f s", self.worker_id, ERROR_BACKOFF)
                    queue_empty = False
                    self._stop.wait(ERROR_BACKOFF)
                if not self.inflight:
                    if self.stopping or (drain and queue_empty):
                        break
                    self._stop.wait(self.poll_interval)
                    continue
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=self.poll_interval)
                self._drain_events(ray)  # before _finish: a job's checkpoints never arrive after its completion
                for ref in ready:
                    self._finish(ray, self.inflight.pop(ref))
                    processed += 1
                self._beat(ray)
                if self.stopping:
                    self._cancel_all(ray, "stop")
        finally:
            if self.inflight:  # an error or a second signal: hand the jobs back, never keep them hostage
                self._cancel_all(ray, "stop")
                for item in list(self.inflight.values()):
                    self._settle_cancelled(item)
                self.inflight.clear()
            for signum, handler in restore.items():
                signal.signal(signum, handler)
            self._close_channel()
            try:
                self.backend.stopped(self.worker_id)
            except Exception:
                logger.warning("worker %s: could not record its exit", self.worker_id, exc_info=True)
        event(logger, "worker_exiting", worker=self.worker_id, jobs=processed)
        return processed

    # -- claiming and dispatch --

    def _set_capabilities(self, ray) -> None:
        caps = detect_capabilities(local_dirs=isinstance(self.backend, LocalQueue))
        if ray.cluster_resources().get("GPU", 0) > 0 and caps.device != "cuda":
            memory = os.environ.get("PRUNEBOARD_WORKER_ACCELERATOR_MEMORY_GB")
            caps = caps.model_copy(update={"device": "cuda", "accelerator_memory_gb": float(memory) if memory else None})
        elif ray.cluster_resources().get("GPU", 0) == 0 and caps.device == "cuda":
            caps = caps.model_copy(update={"device": "cpu", "accelerator_memory_gb": None})
        if isinstance(self.backend, LocalQueue):
            self.backend.capabilities = caps
            self.backend.device = {"executor": "ray", "capabilities": caps.model_dump(mode="json")}
        elif hasattr(self.backend, "capabilities"):  # jobs.remote.HttpQueue
            self.backend.capabilities = caps.model_dump(mode="json")
        self.capabilities: Capabilities = caps

    def _fill(self, ray, task, slots: int) -> bool:
        """Claim jobs while slots are free; True when the queue had nothing (more) for us."""
        while len(self.inflight) < slots:
            claim = self.backend.claim(self.worker_id)
            if claim is None:
                return True
            self._dispatch(task, claim)
        return False

    def _dispatch(self, task, claim: Claim) -> None:
        device = (claim.config.get("resources") or {}).get("device", "any")
        ref = task.options(num_gpus=1 if device == "cuda" else 0, num_cpus=self.cpus_per_job,
                           name=f"pruneboard-job-{claim.job_id}", max_retries=0).remote(
            claim.config, list(claim.completed), _forwarded_env(), self._channel, (claim.job_id, claim.attempt))
        wall = max_wall_seconds(claim.config)
        now = time.monotonic()
        self.inflight[ref] = _InFlight(claim, ref, None if wall is None else now + wall, now)
        event(logger, "job_claimed", worker=claim.worker_id or self.worker_id, job_id=claim.job_id,
              attempt=claim.attempt, executor="ray", num_gpus=1 if device == "cuda" else 0,
              resumed_samples=len(claim.completed))

    # -- events from the tasks --

    def _drain_events(self, ray) -> None:
        """Apply every event the tasks sent since the last drain: progress is remembered (written by
        `_beat`), samples are checkpointed under the claim's attempt."""
        if self._channel is None:
            return
        try:
            waiting = self._channel.qsize()
            batch = self._channel.get_nowait_batch(waiting) if waiting else []
        except Exception:  # the queue actor died: jobs run on and complete without progress
            logger.exception("worker %s: the event queue failed; progress and checkpoints stop", self.worker_id)
            self._channel = None
            return
        by_claim = {(item.claim.job_id, item.claim.attempt): item for item in self.inflight.values()}
        for job_id, attempt, item_event in batch:
            item = by_claim.get((job_id, attempt))
            if item is None or item.stopping not in (None, "stop"):  # gone, or its claim is settled
                continue
            if isinstance(item_event, Progress):
                item.progress, item.progress_unwritten = item_event, True
            elif isinstance(item_event, SampleDone):
                self._record_sample(ray, item, item_event)

    def _record_sample(self, ray, item: _InFlight, done: SampleDone) -> None:
        claim = item.claim
        try:
            self.backend.record_sample(claim.job_id, claim.attempt, done.sample)
        except LostClaim:
            event(logger, "claim_lost", logging.WARNING, job_id=claim.job_id, attempt=claim.attempt)
            self._cancel(ray, item, "lost")
        except FatalWorkerError:
            raise
        except Exception:  # a transient DB or network error: the final result carries every sample anyway
            logger.warning("job %d: could not checkpoint a sample", claim.job_id, exc_info=True)

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is None:
            return
        try:
            channel.shutdown(force=True)  # every event of a finished job was drained before it completed
        except Exception:
            logger.warning("worker %s: could not shut down the event queue", self.worker_id, exc_info=True)

    # -- leases, cancels and wall time --

    def _beat(self, ray) -> None:
        """Renew each lease every lease/3 seconds, and write new progress at most every
        PROGRESS_INTERVAL seconds (at once on a stage change), with the latest progress."""
        now = time.monotonic()
        for item in list(self.inflight.values()):
            if item.stopping is not None or (now < item.next_beat and not _progress_due(item, now)):
                continue
            claim = item.claim
            item.next_beat = now + claim.lease_seconds / 3
            try:
                if item.deadline is not None and now >= item.deadline:
                    minutes = max_wall_seconds(claim.config) / 60
                    self.backend.fail(claim.job_id, claim.attempt, WALL_TIME_ERROR,
                                      f"ran longer than resources.max_wall_minutes ({minutes:g} min)", None)
                    event(logger, "job_wall_time_exceeded", logging.ERROR, job_id=claim.job_id,
                          attempt=claim.attempt, max_wall_minutes=minutes)
                    self._cancel(ray, item, "wall")
                elif self.backend.heartbeat(claim.job_id, claim.attempt, *self._progress_to_write(item, now)):
                    logger.info("job %d: cancel requested", claim.job_id)
                    self._cancel(ray, item, "cancel")
            except LostClaim:
                event(logger, "claim_lost", logging.WARNING, job_id=claim.job_id, attempt=claim.attempt)
                self._cancel(ray, item, "lost")
            except FatalWorkerError:
                raise
            except Exception:  # a transient DB or network error; the next beat may succeed
                item.next_beat = now + 1.0
                logger.exception("job %d: heartbeat failed", claim.job_id)

    def _progress_to_write(self, item: _InFlight, now: float) -> tuple[float | None, str, str]:
        latest = item.progress
        if latest is None:  # the task has not started (or sent nothing) yet
            return None, "running", f"running as a Ray task ({self.worker_id})"
        item.progress_unwritten, item.written_stage, item.last_progress_write = False, latest.stage, now
        return latest.fraction, latest.stage, latest.text

    def _cancel(self, ray, item: _InFlight, why: str) -> None:
        item.stopping = why
        try:
            ray.cancel(item.ref, force=True)
        except Exception:  # already finished: its result is settled by _finish
            logger.debug("job %d: ray.cancel failed", item.claim.job_id, exc_info=True)

    def _cancel_all(self, ray, why: str) -> None:
        for item in self.inflight.values():
            if item.stopping is None:
                self._cancel(ray, item, why)

    # -- outcomes --

    def _finish(self, ray, item: _InFlight) -> None:
        claim, backend = item.claim, self.backend
        try:
            result = ray.get(item.ref)
        except Exception as exc:
            if item.stopping is not None:
                self._settle_cancelled(item)
                return
            cause = _cause(exc)
            message = str(cause) or repr(cause)
            event(logger, "job_failed", logging.ERROR, job_id=claim.job_id, attempt=claim.attempt,
                  error_type=type(cause).__name__, error=message)
            tail = "".join(traceback.format_exception(exc))[-LOG_TAIL_CHARS:]
            backend.fail(claim.job_id, claim.attempt, type(cause).__name__, message, tail)
            return
        if item.stopping in ("lost", "wall"):
            return  # the claim is gone: nothing to store
        try:
            stored = backend.complete(claim.job_id, claim.attempt, result)
        except FatalWorkerError:
            raise
        except Exception as exc:
            logger.exception("job %d: storing the result failed", claim.job_id)
            backend.fail(claim.job_id, claim.attempt, type(exc).__name__, f"storing the result failed: {exc}", None)
            return
        if stored:
            event(logger, "job_succeeded", job_id=claim.job_id, attempt=claim.attempt, executor="ray",
                  scores=len(result.scores), samples=len(result.samples))
            return
        try:  # refused: a cancel that arrived meanwhile, or a lost claim
            if backend.heartbeat(claim.job_id, claim.attempt, None, None, None):
                backend.mark_cancelled(claim.job_id, claim.attempt)
        except LostClaim:
            pass

    def _settle_cancelled(self, item: _InFlight) -> None:
        claim = item.claim
        if item.stopping == "cancel":
            self.backend.mark_cancelled(claim.job_id, claim.attempt)
            event(logger, "job_cancelled", job_id=claim.job_id, attempt=claim.attempt)
        elif item.stopping == "stop":
            self.backend.release(claim.job_id, claim.attempt)
            event(logger, "job_released", job_id=claim.job_id, attempt=claim.attempt)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, _frame: Any) -> None:
            if self.stopping:
                raise KeyboardInterrupt(signal.Signals(signum).name)
            logger.info("worker %s: stopping; its Ray tasks are cancelled and their jobs handed back", self.worker_id)
            self.stop()

        return {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}


def _progress_due(item: _InFlight, now: float) -> bool:
    return item.progress_unwritten and (item.progress.stage != item.written_stage
                                        or now - item.last_progress_write >= PROGRESS_INTERVAL)


def _cause(exc: BaseException) -> BaseException:
    """The task's own exception inside Ray's RayTaskError (else Ray's error itself)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k.startswith(_FORWARDED_PREFIXES) and k not in _SECRET_VARIABLES}
