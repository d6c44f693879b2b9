"""`python -m jobs worker`: the command's worker loop, its executor (this process or Ray) and the
parent watch of --stop-with-parent (parser and dispatch in `jobs.cli`)."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import threading
import time
from urllib.parse import urlsplit

from jobs.cli_errors import EXIT_AUTH, EXIT_CONFLICT, CliError

__all__ = ["run_worker", "worker_token", "read_token_file", "check_server_url"]

logger = logging.getLogger(__name__)


def run_worker(args: argparse.Namespace) -> None:
    """`python -m jobs worker`: a local worker, a remote one (--server) or a Ray executor."""
    from jobs.worker import POLL_INTERVAL

    if args.server is None:
        if args.token or args.token_file or args.insecure:
            raise CliError("--token, --token-file and --insecure need --server (local workers use the database)")
        _runner(args, args.poll or POLL_INTERVAL).run(drain=args.drain)
        return
    token = worker_token(args)
    check_server_url(args.server, args.insecure)
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


def worker_token(args: argparse.Namespace) -> str:
    """The remote worker's token: --token-file, else $PRUNEBOARD_WORKER_TOKEN, else (deprecated,
    with a warning) --token, which every local user can read in the process list."""
    if args.token_file and args.token:
        raise CliError("give the token once: --token-file or --token, not both")
    if args.token_file:
        token = read_token_file(args.token_file)
    elif args.token:
        logger.warning("--token puts the worker token in the process list, where any local user can read it; "
                       "use $PRUNEBOARD_WORKER_TOKEN or --token-file PATH")
        token = args.token
    else:
        token = os.environ.get("PRUNEBOARD_WORKER_TOKEN", "").strip()
    if not token or any(c.isspace() for c in token):
        raise CliError("--server needs a worker token: $PRUNEBOARD_WORKER_TOKEN or --token-file PATH (one line)")
    return token


def read_token_file(path: str) -> str:
    """The token a --token-file holds (warning when other users may read the file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
        loose = os.stat(path).st_mode & 0o077
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read --token-file {path}: {type(exc).__name__}") from None
    if loose:
        logger.warning("--token-file %s is readable by other users; chmod 600 it", path)
    return token


def check_server_url(server: str, insecure: bool) -> None:
    """Only https, or http to this machine, unless --insecure: a worker sends its token and results."""
    parsed = urlsplit(server)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CliError(f"--server must be an http(s) URL, got {server!r}")
    if parsed.scheme == "http" and not insecure and not _loopback(parsed.hostname):
        raise CliError(f"--server {server} is plain http to another machine: the token and results would travel "
                       "unencrypted; use https, or --insecure on a network you trust")


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
