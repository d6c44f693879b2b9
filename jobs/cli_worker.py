"""`python -m jobs worker`: the command's worker loop, its executor (this process or Ray) and the
parent watch of --stop-with-parent (parser and dispatch in `jobs.cli`)."""
from __future__ import annotations

import argparse
import logging
import os
import threading
import time

from jobs.cli import EXIT_AUTH, EXIT_CONFLICT, CliError

__all__ = ["run_worker"]

logger = logging.getLogger(__name__)


def run_worker(args: argparse.Namespace) -> None:
    """`python -m jobs worker`: a local worker, a remote one (--server) or a Ray executor."""
    from jobs.worker import POLL_INTERVAL

    token = args.token or os.environ.get("PRUNEBOARD_WORKER_TOKEN")
    if args.server is None:
        if args.token:
            raise CliError("--token needs --server (local workers use the database directly)")
        _runner(args, args.poll or POLL_INTERVAL).run(drain=args.drain)
        return
    if not token:
        raise CliError("--server needs --token TOKEN (or $PRUNEBOARD_WORKER_TOKEN)")
    from jobs.remote import REMOTE_POLL_INTERVAL, HttpQueue, ServerUnreachable, TokenRejected

    logging.getLogger("httpx").setLevel(logging.WARNING)  # our own events say what each call did
    backend = HttpQueue(args.server, token)
    try:
        _runner(args, args.poll or REMOTE_POLL_INTERVAL, backend).run(drain=args.drain)
    except TokenRejected as exc:
        raise CliError(str(exc), EXIT_AUTH) from None
    except ServerUnreachable as exc:
        raise CliError(f"server {args.server} unreachable: {exc}", EXIT_CONFLICT) from None
    finally:
        backend.close()


def _runner(args: argparse.Namespace, poll: float, backend=None):
    """The worker loop of --executor: this process (Worker) or a Ray cluster (RayExecutor)."""
    runner = _executor(args, poll, backend)
    if args.stop_with_parent:
        _stop_when_orphaned(runner)
    return runner


def _stop_when_orphaned(runner, interval: float = 1.0) -> None:
    """Stop `runner` once this process is re-parented. A parent killed with SIGKILL (or one whose
    shutdown timed out) runs no exit handler, so its children must notice on their own."""
    from jobs import LAUNCHED_BY

    parent = LAUNCHED_BY

    def watch() -> None:
        while not runner.stopping:
            if os.getppid() != parent:
                logger.warning("worker: parent process %d is gone; stopping", parent)
                runner.stop()
                return
            time.sleep(interval)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _executor(args: argparse.Namespace, poll: float, backend=None):
    if args.executor == "local":
        if args.address is not None or args.max_concurrent is not None:
            raise CliError("--address and --max-concurrent need --executor ray")
        from jobs.worker import Worker

        return Worker(worker_id=args.worker_id, poll_interval=poll, backend=backend)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise CliError("--max-concurrent must be at least 1")
    from jobs.ray_executor import RayExecutor, RayMissing, import_ray

    try:
        import_ray()
    except RayMissing as exc:
        raise CliError(str(exc)) from None
    return RayExecutor(worker_id=args.worker_id, backend=backend, max_concurrent=args.max_concurrent,
                       cpus_per_job=args.cpus_per_job, poll_interval=poll, address=args.address)
