"""The worker process: claim a job, run the pipeline, store the result; repeat.

While the pipeline runs (in the worker's main thread) a heartbeat thread renews the lease every
lease/3 seconds with the latest progress. The event sink, called from the pipeline, writes progress
at most every `PROGRESS_INTERVAL` seconds (always on a stage change), checkpoints finished samples,
and raises `Cancelled` once a cancel was requested, the claim was lost, or the worker is stopping.

Outcomes: the result is stored in one transaction (`queue.complete`); an exception fails the job at
once with its type, message and log tail (no retry); a cancel marks it cancelled; SIGTERM/SIGINT
hands the job back to the queue (`queue.release`) and exits.
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
from typing import Any

from backend import settings
from backend.events import Cancelled, Event, EventSink, Progress, SampleDone
from backend.result import RunResult, SampleRecord
from db.schema import Job
from jobs import queue
from jobs.states import LostClaim

__all__ = ["Worker", "default_worker_id", "PipelineFn"]

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

    def __init__(self, job: Job, worker: "Worker"):
        self.job_id = job.id
        self.attempt = job.attempts
        self.worker = worker
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.progress: Progress | None = None
        self.cancel_requested = False
        self.lost = False
        self.done = threading.Event()
        self._last_write = 0.0
        self._last_stage: str | None = None

    # -- called by the heartbeat thread and by the sink --
    def beat(self) -> None:
        # One write at a time, each with the progress latest at that moment: the stored progress
        # never goes backwards when the sink and the heartbeat thread write together.
        with self.write_lock:
            with self.lock:
                latest = self.progress
            try:
                cancel = queue.heartbeat(
                    self.job_id,
                    self.attempt,
                    latest.fraction if latest else None,
                    latest.stage if latest else None,
                    latest.text if latest else None,
                )
            except LostClaim:
                self.lost = True
                logger.warning("job %d: attempt %d lost its claim", self.job_id, self.attempt)
                return
        if cancel and not self.cancel_requested:
            logger.info("job %d: cancel requested", self.job_id)
        self.cancel_requested = self.cancel_requested or cancel

    def heartbeat_loop(self, interval: float) -> None:
        while not self.done.wait(interval):
            try:
                self.beat()
            except Exception:  # a transient DB error; the next beat may succeed
                logger.exception("job %d: heartbeat failed", self.job_id)

    # -- the pipeline's event sink --
    def sink(self, event: Event) -> None:
        self._check()
        if isinstance(event, Progress):
            with self.lock:
                self.progress = event
            now = time.monotonic()
            if event.stage != self._last_stage or now - self._last_write >= PROGRESS_INTERVAL:
                self._last_stage, self._last_write = event.stage, now
                self._tolerant(self.beat)
        elif isinstance(event, SampleDone):
            self._tolerant(queue.record_sample, self.job_id, self.attempt, event.sample)
        self._check()

    def _tolerant(self, write: Callable[..., Any], *args: Any) -> None:
        """A failed progress or checkpoint write must not fail the run: the heartbeat thread keeps
        renewing the lease, and the final result carries every sample anyway."""
        try:
            write(*args)
        except LostClaim:
            self.lost = True
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
    worker idling (and the CLI) never imports torch.
    """

    def __init__(
        self,
        worker_id: str | None = None,
        poll_interval: float = POLL_INTERVAL,
        pipeline: PipelineFn | None = None,
    ):
        self.worker_id = worker_id or default_worker_id()
        self.poll_interval = poll_interval
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
        logger.info("worker %s started%s", self.worker_id, " (drain)" if drain else "")
        try:
            while not self.stopping:
                try:
                    ran = self.run_once()
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
        finally:
            for signum, handler in restore.items():
                signal.signal(signum, handler)
        logger.info("worker %s exiting after %d job(s)", self.worker_id, processed)
        return processed

    def run_once(self) -> bool:
        """Claim and run one job; False when none was queued."""
        job = queue.claim_next(self.worker_id)
        if job is None:
            return False
        self._execute(job)
        return True

    def _execute(self, job: Job) -> None:
        running = _RunningJob(job, self)
        tail = _LogTail()
        root = logging.getLogger()
        root.addHandler(tail)
        beater = threading.Thread(
            target=running.heartbeat_loop,
            args=(settings.lease_seconds() / 3,),
            name=f"heartbeat-{job.id}",
            daemon=True,
        )
        beater.start()
        try:
            self._run_pipeline(job, running, tail)
        finally:
            running.done.set()
            beater.join()
            root.removeHandler(tail)

    def _run_pipeline(self, job: Job, running: _RunningJob, tail: _LogTail) -> None:
        job_id, attempt = job.id, job.attempts
        try:
            from backend.config import validate_config

            config = validate_config(json.loads(job.config_json))
            completed = queue.completed_samples(job_id) if attempt > 1 else []
            if completed:
                logger.info("job %d: resuming with %d checkpointed sample(s)", job_id, len(completed))
            result = self._pipeline_fn()(config, running.sink, completed)
        except Cancelled:
            self._stopped(running)
            return
        except Exception as exc:
            if running.lost:
                return
            logger.error("job %d failed: %s: %s", job_id, type(exc).__name__, exc)
            log_tail = tail.text() + "\n" + "".join(traceback.format_exception(exc))
            queue.fail(job_id, attempt, type(exc).__name__, str(exc) or repr(exc), log_tail.strip())
            return
        except BaseException:  # KeyboardInterrupt and friends: do not keep the job hostage
            queue.release(job_id, attempt)
            raise
        try:
            stored = queue.complete(job_id, attempt, result)
        except Exception as exc:
            logger.exception("job %d: storing the result failed", job_id)
            queue.fail(job_id, attempt, type(exc).__name__, f"storing the result failed: {exc}", tail.text())
            return
        if not stored:
            running.beat()  # find out why: a cancel that arrived after the last event, or a lost claim
            if running.cancel_requested and not running.lost:
                queue.mark_cancelled(job_id, attempt)

    def _stopped(self, running: _RunningJob) -> None:
        if running.lost:
            logger.warning("job %d: stopped; another attempt or the user owns it now", running.job_id)
        elif running.cancel_requested:
            queue.mark_cancelled(running.job_id, running.attempt)
            logger.info("job %d cancelled", running.job_id)
        else:  # worker stopping (or the pipeline cancelled itself): back to the queue
            queue.release(running.job_id, running.attempt)
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
