"""Per-job queue overhead: N `builtin:noop` jobs (no sleep) drained by W worker processes.

Overhead per job = (last finish - first claim) x workers / jobs, from the jobs' own timestamps, so
worker start-up (imports) is excluded and what remains is claim + heartbeat + progress writes +
completion + idle polling. A scratch PRUNEBOARD_HOME is used. Last line: {"queue_ms_per_job": ...}.
Usage: python bench/queue_overhead.py [--jobs 200] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="pruneboard-bench-")
    os.environ.update(PRUNEBOARD_HOME=home, PRUNEBOARD_ALLOW_NOOP="1")
    os.environ.pop("DATABASE_URL", None)
    from backend.config import validate_config
    from db.schema import Job
    from db.session import read_session
    from jobs import queue

    for seed in range(args.jobs):
        queue.submit(validate_config({"model": "builtin:noop", "tasks": ["synthetic-mc"], "seed": seed}))
    started = time.perf_counter()
    workers = [
        subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--drain", "--id", f"bench-{i}"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(args.workers)
    ]
    for proc in workers:
        proc.wait()
    wall = time.perf_counter() - started

    with read_session() as session:  # full-precision timestamps straight from the rows
        jobs = session.query(Job.state, Job.attempts, Job.started_at, Job.finished_at).all()
    states = {job.state.value for job in jobs}
    if states != {"succeeded"} or len(jobs) != args.jobs or any(job.attempts != 1 for job in jobs):
        raise SystemExit(f"unexpected outcome: states {states}, {len(jobs)} jobs")
    first = min(job.started_at for job in jobs)
    last = max(job.finished_at for job in jobs)
    span = (last - first).total_seconds()
    per_job_ms = span * args.workers / args.jobs * 1000
    print(f"{args.jobs} noop jobs, {args.workers} workers: all succeeded once; drain span {span:.2f} s "
          f"(wall incl. worker start {wall:.2f} s); overhead {per_job_ms:.1f} ms/job")
    print(json.dumps({"queue_ms_per_job": round(per_job_ms, 2), "jobs": args.jobs, "workers": args.workers}))


if __name__ == "__main__":
    main()
