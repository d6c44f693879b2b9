"""Per-job queue overhead: N `builtin:noop` jobs (no sleep) drained by W worker processes.

Overhead per job = (last finish - first claim) x workers / jobs, from the jobs' own timestamps, so
worker start-up (imports) is excluded and what remains is claim + heartbeat + progress writes +
completion + idle polling. A scratch PRUNEBOARD_HOME (SQLite) is used, then the same protocol runs on
PostgreSQL: a scratch database on the server PRUNEBOARD_BENCH_POSTGRES_URL names (its user may create
databases), else on a throwaway cluster started with the local `initdb`/`pg_ctl` (as the `postgres`
user when run as root); without either the Postgres figure is null.
A larger SQLite drain (--large-jobs, --large-workers: 1000 jobs through 4 workers) adds its overhead
and how many jobs were lost (not succeeded) or duplicated (run more than once, or extra rows).
Last line: {"queue_ms_per_job": ..., "queue_ms_per_job_postgres": ..., "jobs": ..., "workers": ...,
"queue_ms_per_job_1000x4": ..., "lost_1000x4": 0, "duplicated_1000x4": 0, "large_jobs": ..., "large_workers": ...}.
Usage: python bench/queue_overhead.py [--jobs 200] [--workers 2] [--large-jobs 1000] [--large-workers 4] [--no-postgres]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def drain(database_url: str, n_jobs: int, n_workers: int, label: str, strict: bool = True) -> tuple[float, int, int]:
    """Queue `n_jobs` noop jobs in `database_url`, drain them with worker processes: (ms per job, jobs
    lost, jobs duplicated). `strict`: exit unless every job succeeded exactly once."""
    os.environ["DATABASE_URL"] = database_url
    from backend.config import validate_config
    from db.schema import Job
    from db.session import dispose_engines, read_session
    from jobs import queue

    for seed in range(n_jobs):
        queue.submit(validate_config({"model": "builtin:noop", "tasks": ["synthetic-mc"], "seed": seed}))
    started = time.perf_counter()
    workers = [
        subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--drain", "--id", f"bench-{i}"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(n_workers)
    ]
    for proc in workers:
        proc.wait()
    wall = time.perf_counter() - started

    with read_session() as session:  # full-precision timestamps straight from the rows
        jobs = session.query(Job.state, Job.attempts, Job.started_at, Job.finished_at).all()
    dispose_engines()
    states = {job.state.value for job in jobs}
    succeeded = [job for job in jobs if job.state.value == "succeeded"]
    lost = n_jobs - len(succeeded)
    duplicated = sum(job.attempts - 1 for job in succeeded) + max(len(jobs) - n_jobs, 0)
    if (strict and (lost or duplicated)) or not succeeded:
        raise SystemExit(f"{label}: unexpected outcome: states {states}, {len(jobs)} jobs")
    first = min(job.started_at for job in succeeded)
    last = max(job.finished_at for job in succeeded)
    span = (last - first).total_seconds()
    per_job_ms = span * n_workers / n_jobs * 1000
    print(f"{label}: {n_jobs} noop jobs, {n_workers} workers: {lost} lost, {duplicated} duplicated; drain span "
          f"{span:.2f} s (wall incl. worker start {wall:.2f} s); overhead {per_job_ms:.1f} ms/job")
    return per_job_ms, lost, duplicated


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@contextmanager
def throwaway_cluster() -> Iterator[str | None]:
    """A PostgreSQL cluster in a temporary directory, stopped and deleted on exit: its server URL,
    or None when initdb/pg_ctl are missing or it does not start."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        yield None
        return
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # postgres refuses root
    tmp = tempfile.mkdtemp(prefix="pruneboard-bench-pg-")
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = f"{tmp}/data"
    run = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = False
    try:
        if as_user:
            shutil.chown(tmp, "postgres")
        subprocess.run([*as_user, initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"], check=True, **run)
        options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1"
        start = [pg_ctl, "-D", data, "-l", f"{tmp}/log", "-o", options, "-w", "start"]
        subprocess.run([*as_user, *start], check=True, **run)
        started = True
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    except (OSError, LookupError, subprocess.CalledProcessError) as exc:
        if started:
            raise
        print(f"postgres: could not start a throwaway cluster ({exc})")
        yield None
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], **run)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new database on `server_url`, dropped on exit: its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    server = make_url(server_url)
    if server.drivername == "postgresql":
        server = server.set(drivername="postgresql+psycopg")
    name = f"pruneboard_bench_{os.getpid()}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_ms_per_job(n_jobs: int, n_workers: int) -> float | None:
    given = os.environ.get("PRUNEBOARD_BENCH_POSTGRES_URL")
    with (nullcontext(given) if given else throwaway_cluster()) as server:
        if server is None:
            print("postgres: no PRUNEBOARD_BENCH_POSTGRES_URL and no local initdb/pg_ctl; figure skipped")
            return None
        with scratch_database(server) as url:
            return drain(url, n_jobs, n_workers, "postgres")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--large-jobs", type=int, default=1000, help="jobs of the larger SQLite drain (0: skip)")
    parser.add_argument("--large-workers", type=int, default=4)
    parser.add_argument("--no-postgres", action="store_true", help="only the SQLite figure")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="pruneboard-bench-")
    os.environ.update(PRUNEBOARD_HOME=home, PRUNEBOARD_ALLOW_NOOP="1")
    sqlite_ms = drain(f"sqlite:///{home}/pruneboard.db", args.jobs, args.workers, "sqlite")[0]
    large_ms, lost, duplicated = (drain(f"sqlite:///{home}/pruneboard-large.db", args.large_jobs, args.large_workers,
                                        "sqlite-large", strict=False) if args.large_jobs else (None, None, None))
    postgres_ms = None if args.no_postgres else postgres_ms_per_job(args.jobs, args.workers)
    print(json.dumps({
        "queue_ms_per_job": round(sqlite_ms, 2),
        "queue_ms_per_job_postgres": None if postgres_ms is None else round(postgres_ms, 2),
        "jobs": args.jobs,
        "workers": args.workers,
        "queue_ms_per_job_1000x4": None if large_ms is None else round(large_ms, 2),
        "lost_1000x4": lost,
        "duplicated_1000x4": duplicated,
        "large_jobs": args.large_jobs,
        "large_workers": args.large_workers,
    }))


if __name__ == "__main__":
    main()
