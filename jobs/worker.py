"""The worker process: claim a job, run the pipeline, store the result; repeat.

The loop talks to the queue through a backend with the operations of a claim (`QueueBackend`):
`LocalQueue` calls `jobs.queue` on this machine's database; `jobs.remote.HttpQueue` calls the
worker API of a PruneBoard server (no database access). The loop is the same for both.

While the pipeline runs (in the worker's main thread) a heartbeat thread renews the lease every
lease/3 seconds with the latest progress. The event sink, called from the pipeline, writes progress
at most every `PROGRESS_INTERVAL` seconds (always on a stage change), checkpoints finished samples,
and raises `Cancelled` once a cancel was requested, the claim was lost, or the worker is stopping.

Outcomes: the result is stored in one transaction (`complete`); an exception fails the job at once
with its type, message and log tail (no retry); a cancel marks it cancelled; SIGTERM/SIGINT hands
the job back to the queue (`release`) and exits. An attempt past its config's
`resources.max_wall_minutes` is failed by the heartbeat thread (WallTimeExceeded). A
`FatalWorkerError` from the backend (the server rejected the token) ends the worker at once; the
job's lease then expires and it is requeued.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from common import settings
from backend.events import Cancelled, Event, EventSink, Progress, SampleDone
from backend.result import RunResult, SampleRecord
from jobs import queue, registry
from jobs.logs import event
from jobs.resources import WALL_TIME_ERROR, Capabilities, detect_capabilities, max_wall_seconds
from jobs.states import LostClaim

__all__ = ["Worker", "default_worker_id", "PipelineFn", "Claim", "QueueBackend", "LocalQueue", "FatalWorkerError"]

logger = logging.getLogger(__name__)

PipelineFn = Callable[[Any, EventSink, Iterable[SampleRecord]], RunResult]
POLL_INTERVAL = 0.3
"""Seconds an idle worker waits before looking for a job again."""
PROGRESS_INTERVAL = 0.5
"""Progress events are written at most this often (stage changes always)."""
LOG_TAIL_LINES = 200
ERROR_BACKOFF = 5.0
"""Seconds a worker waits after the database failed (e.g. unreachable) before trying again."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class FatalWorkerError(Exception):
    """The worker cannot go on at all (e.g. the server rejected its token): it exits at once."""


@dataclass(frozen=True)
class Claim:
    """One attempt of a job, as a worker got it."""

    job_id: int
    attempt: int
    config: dict[str, Any]
    completed: list[SampleRecord] = field(default_factory=list)
    """Samples checkpointed by earlier attempts: the pipeline resumes after them."""
    lease_seconds: float = 60.0
    worker_id: str | None = None
    """The id the queue recorded for this worker (a remote one gets its token's name in front)."""


class QueueBackend(Protocol):
    """What a worker does with the queue. Every call after `claim` acts only while the claim
    (job id + attempt) holds: `heartbeat` and `record_sample` raise LostClaim otherwise, the
    others return False and write nothing."""

    def claim(self, worker_id: str) -> Claim | None: ...
    def heartbeat(self, job_id: int, attempt: int, progress: float | None, stage: str | None,
                  text: str | None) -> bool: ...
    def record_sample(self, job_id: int, attempt: int, sample: SampleRecord) -> None: ...
    def complete(self, job_id: int, attempt: int, result: RunResult) -> bool: ...
    def fail(self, job_id: int, attempt: int, error_type: str, message: str, log_tail: str | None) -> bool: ...
    def mark_cancelled(self, job_id: int, attempt: int) -> bool: ...
    def release(self, job_id: int, attempt: int) -> bool: ...
    def stopped(self, worker_id: str) -> None: ...


class LocalQueue:
    """`jobs.queue` on this machine's database; also keeps the worker registry up to date."""

    def __init__(self, device: dict[str, Any] | None = None, capabilities: Capabilities | None = None):
        """`capabilities`: what this worker can run (default: detected at the first claim)."""
        self.device = device
        self.capabilities = capabilities
        self.worker_id: str | None = None

    def claim(self, worker_id: str) -> Claim | None:
        self.worker_id = worker_id
        if self.capabilities is None:
            self.capabilities = detect_capabilities(local_dirs=True)
            self.device = {**(self.device or {}), "capabilities": self.capabilities.model_dump(mode="json")}
        job = queue.claim_next(worker_id, self.capabilities)
        registry.seen(worker_id, current_job_id=job.id if job else None, device=self.device)
        if job is None:
            return None
        completed = queue.completed_samples(job.id) if job.attempts > 1 else []
        return Claim(job.id, job.attempts, json.loads(job.config_json), completed, settings.lease_seconds(), worker_id)

    def heartbeat(self, job_id, attempt, progress, stage, text) -> bool:
        cancel = queue.heartbeat(job_id, attempt, progress, stage, text)
        if self.worker_id is not None:
            registry.seen(self.worker_id)
        return cancel

    def record_sample(self, job_id, attempt, sample) -> None:
        queue.record_sample(job_id, attempt, sample)

    def complete(self, job_id, attempt, result) -> bool:
        return queue.complete(job_id, attempt, result)

    def fail(self, job_id, attempt, error_type, message, log_tail) -> bool:
        return queue.fail(job_id, attempt, error_type, message, log_tail)

    def mark_cancelled(self, job_id, attempt) -> bool:
        return queue.mark_cancelled(job_id, attempt)

    def release(self, job_id, attempt) -> bool:
        return queue.release(job_id, attempt)

    def stopped(self, worker_id: str) -> None:
        registry.stopped(worker_id)


class WorkerStopping(Cancelled):
    """Raised into the pipeline when the worker was asked to shut down."""


class _LogTail(logging.Handler):
    """Keeps the last lines logged while a job runs (they go into the job's log_tail)."""

    def __init__(self, lines: int = LOG_TAIL_LINES):
        super().__init__(level=logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.extend(self.format(record).splitlines() or [""])
        except Exception:  # a broken log record must not break the job
            self.handleError(record)

    def text(self) -> str:
        return "\n".join(self.lines)


class _RunningJob:
    """Shared state of one attempt between the pipeline thread (sink) and the heartbeat thread."""

    def __init__(self, claim: Claim, worker: "Worker"):
        self.job_id = claim.job_id
        self.attempt = claim.attempt
        self.worker = worker
        self.backend = worker.backend
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.progress: Progress | None = None
        self.cancel_requested = False
        self.lost = False
        self.fatal: FatalWorkerError | None = None
        self.done = threading.Event()
        self._last_write = 0.0
        self._last_stage: str | None = None
        wall = max_wall_seconds(claim.config)
        self.wall_minutes = None if wall is None else wall / 60
        self.deadline = None if wall is None else time.monotonic() + wall

    # -- called by the heartbeat thread and by the sink --
    def beat(self) -> None:
        # One write at a time, each with the progress latest at that moment: the stored progress
        # never goes backwards when the sink and the heartbeat thread write together.
        with self.write_lock:
            with self.lock:
                latest = self.progress
            try:
                cancel = self.backend.heartbeat(
                    self.job_id,
                    self.attempt,
                    latest.fraction if latest else None,
                    latest.stage if latest else None,
                    latest.text if latest else None,
                )
            except LostClaim:
                self.lost = True
                event(logger, "claim_lost", logging.WARNING, job_id=self.job_id, attempt=self.attempt)
                return
        if cancel and not self.cancel_requested:
            logger.info("job %d: cancel requested", self.job_id)
        self.cancel_requested = self.cancel_requested or cancel

    def heartbeat_loop(self, interval: float) -> None:
        while not self.done.wait(interval if self.deadline is None else
                                 max(min(interval, self.deadline - time.monotonic()), 0.1)):
            try:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.expire()
                    return
                self.beat()
            except FatalWorkerError as exc:
                self.fatal, self.lost = exc, True
                return
            except Exception:  # a transient DB or network error; the next beat may succeed
                logger.exception("job %d: heartbeat failed", self.job_id)

    def expire(self) -> None:
        """Past resources.max_wall_minutes: fail the job now (even if the pipeline never yields);
        the pipeline stops at its next event and its result, if any, is refused by the claim."""
        with self.write_lock:
            self.backend.fail(self.job_id, self.attempt, WALL_TIME_ERROR,
                              f"ran longer than resources.max_wall_minutes ({self.wall_minutes:g} min)", None)
            self.lost = True
        event(logger, "job_wall_time_exceeded", logging.ERROR, job_id=self.job_id, attempt=self.attempt,
              max_wall_minutes=self.wall_minutes)

    # -- the pipeline's event sink --
    def sink(self, item: Event) -> None:
        self._check()
        if isinstance(item, Progress):
            with self.lock:
                self.progress = item
            now = time.monotonic()
            if item.stage != self._last_stage or now - self._last_write >= PROGRESS_INTERVAL:
                self._last_stage, self._last_write = item.stage, now
                self._tolerant(self.beat)
        elif isinstance(item, SampleDone):
            self._tolerant(self.backend.record_sample, self.job_id, self.attempt, item.sample)
        self._check()

    def _tolerant(self, write: Callable[..., Any], *args: Any) -> None:
        """A failed progress or checkpoint write must not fail the run: the heartbeat thread keeps
        renewing the lease, and the final result carries every sample anyway."""
        try:
            write(*args)
        except LostClaim:
            self.lost = True
        except FatalWorkerError as exc:
            self.fatal, self.lost = exc, True
        except Exception:
            logger.warning("job %d: could not write progress/checkpoint", self.job_id, exc_info=True)

    def _check(self) -> None:
        if self.lost:
            raise Cancelled(f"job {self.job_id}: claim lost")
        if self.cancel_requested:
            raise Cancelled(f"job {self.job_id}: cancel requested")
        if self.worker.stopping:
            raise WorkerStopping(f"job {self.job_id}: worker stopping")


class Worker:
    """Runs queued jobs one at a time in this process.

    `pipeline` defaults to `backend.pipeline.run`, imported when the first job starts so that a
    worker idling (and the CLI) never imports torch. `backend` defaults to `LocalQueue()`.
    """

    def __init__(
        self,
        worker_id: str | None = None,
        poll_interval: float = POLL_INTERVAL,
        pipeline: PipelineFn | None = None,
        backend: QueueBackend | None = None,
    ):
        self.worker_id = worker_id or default_worker_id()
        self.poll_interval = poll_interval
        self.backend: QueueBackend = backend if backend is not None else LocalQueue()
        self._pipeline = pipeline
        self._stop = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the worker to stop: it hands back its current job at the next event and exits."""
        self._stop.set()

    def run(self, drain: bool = False, install_signals: bool = True) -> int:
        """Process jobs until stopped (or, with `drain`, until no job is queued); return how many ran."""
        restore = self._install_signals() if install_signals else {}
        processed = 0
        event(logger, "worker_started", worker=self.worker_id, drain=drain)
        try:
            while not self.stopping:
                try:
                    ran = self.run_once()
                except FatalWorkerError:
                    raise
                except Exception:
                    if drain:
                        raise
                    logger.exception("worker %s: queue error; retrying in %.0f s", self.worker_id, ERROR_BACKOFF)
                    self._stop.wait(ERROR_BACKOFF)
                    continue
                if ran:
                    processed += 1
                elif drain:
                    break
                else:
                    self._stop.wait(self.poll_interval)
            self._say_goodbye()
        finally:
            for signum, handler in restore.items():
                signal.signal(signum, handler)
        event(logger, "worker_exiting", worker=self.worker_id, jobs=processed)
        return processed

    def _say_goodbye(self) -> None:
        try:
            self.backend.stopped(self.worker_id)
        except FatalWorkerError:
            raise
        except Exception:  # the registry only informs `jobs status`; never fail an exit for it
            logger.warning("worker %s: could not record its exit", self.worker_id, exc_info=True)

    def run_once(self) -> bool:
        """Claim and run one job; False when none was queued."""
        claim = self.backend.claim(self.worker_id)
        if claim is None:
            return False
        event(logger, "job_claimed", worker=claim.worker_id or self.worker_id, job_id=claim.job_id,
              attempt=claim.attempt, resumed_samples=len(claim.completed))
        self._execute(claim)
        return True

    def _execute(self, claim: Claim) -> None:
        running = _RunningJob(claim, self)
        tail = _LogTail()
        root = logging.getLogger()
        root.addHandler(tail)
        beater = threading.Thread(
            target=running.heartbeat_loop,
            args=(claim.lease_seconds / 3,),
            name=f"heartbeat-{claim.job_id}",
            daemon=True,
        )
        beater.start()
        try:
            self._run_pipeline(claim, running, tail)
        finally:
            running.done.set()
            beater.join()
            root.removeHandler(tail)
        if running.fatal is not None:
            raise running.fatal

    def _run_pipeline(self, claim: Claim, running: _RunningJob, tail: _LogTail) -> None:
        job_id, attempt, backend = claim.job_id, claim.attempt, self.backend
        try:
            from backend.config import validate_config

            config = validate_config(claim.config)
            if claim.completed:
                logger.info("job %d: resuming with %d checkpointed sample(s)", job_id, len(claim.completed))
            result = self._pipeline_fn()(config, running.sink, list(claim.completed))
        except Cancelled:
            self._stopped(running)
            return
        except Exception as exc:
            if running.lost:
                return
            event(logger, "job_failed", logging.ERROR, job_id=job_id, attempt=attempt,
                  error_type=type(exc).__name__, error=str(exc))
            log_tail = tail.text() + "\n" + "".join(traceback.format_exception(exc))
            backend.fail(job_id, attempt, type(exc).__name__, str(exc) or repr(exc), log_tail.strip())
            return
        except BaseException:  # KeyboardInterrupt and friends: do not keep the job hostage
            if running.fatal is None:
                backend.release(job_id, attempt)
            raise
        try:
            stored = backend.complete(job_id, attempt, result)
        except FatalWorkerError:
            raise
        except Exception as exc:
            logger.exception("job %d: storing the result failed", job_id)
            backend.fail(job_id, attempt, type(exc).__name__, f"storing the result failed: {exc}", tail.text())
            return
        if stored:
            event(logger, "job_succeeded", job_id=job_id, attempt=attempt, scores=len(result.scores),
                  samples=len(result.samples))
        else:
            running.beat()  # find out why: a cancel that arrived after the last event, or a lost claim
            if running.cancel_requested and not running.lost:
                backend.mark_cancelled(job_id, attempt)

    def _stopped(self, running: _RunningJob) -> None:
        if running.fatal is not None:
            return  # the queue cannot be told; the lease expires and the job is requeued
        if running.lost:
            logger.warning("job %d: stopped; another attempt or the user owns it now", running.job_id)
        elif running.cancel_requested:
            self.backend.mark_cancelled(running.job_id, running.attempt)
            event(logger, "job_cancelled", job_id=running.job_id, attempt=running.attempt)
        else:  # worker stopping (or the pipeline cancelled itself): back to the queue
            self.backend.release(running.job_id, running.attempt)
            event(logger, "job_released", job_id=running.job_id, attempt=running.attempt)
            logger.info("job %d handed back to the queue", running.job_id)

    def _pipeline_fn(self) -> PipelineFn:
        if self._pipeline is None:
            from backend.pipeline import run

            self._pipeline = run
        return self._pipeline

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self.stopping:  # asked twice: stop now; the running job is released on the way out
                raise KeyboardInterrupt(name)
            logger.info("worker %s: %s received, stopping after handing back its job", self.worker_id, name)
            self.stop()

        return {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}
