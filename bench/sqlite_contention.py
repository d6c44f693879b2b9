"""SQLite under contention: 4 worker processes running `builtin:noop` jobs while a process playing
the UI submits, reads the leaderboard, the queue, job panels and a comparison, and cancels and
retries jobs, all on one SQLite file, for `--seconds`.

Counts "database is locked" in every process's log and in every exception the UI process caught
(the target is 0), and any other error. The UI process runs `--ui-threads` threads, as Gradio runs
several callbacks at once, calling the same functions the tabs call (ui.board, ui.services,
db.compare). Workers use a short lease so heartbeats (lease/3) write often.
Last line: {"seconds": ..., "workers": 4, "jobs_done": ..., "ui_actions": ..., "locked_errors": 0,
"other_errors": ..., ...}.
Usage: python bench/sqlite_contention.py [--seconds 120] [--workers 4] [--ui-threads 3] [--lease 3]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOCKED = re.compile(r"database is locked|database table is locked", re.IGNORECASE)
NOOP_SLEEP_MS = 30
SEED_RUNS = 3
SEED_SAMPLES = 30
UI_PAUSE = 0.02
"""Seconds a UI thread waits between actions (a busy page, not a hot loop)."""
UI_ENTRY = ("import sys; from bench.sqlite_contention import ui_process; "
            "ui_process(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])")
ACTIONS = ("submit", "submit", "leaderboard", "queue", "panel", "compare", "cancel", "retry")


def noop_yaml(seed: int) -> str:
    return f"model: builtin:noop\nmodel_args: {{sleep_ms: {NOOP_SLEEP_MS}}}\ntasks: [synthetic-mc]\nseed: {seed}\n"


def seed_compared_runs() -> list[int]:
    """Finished runs with samples, so the Compare reads have rows (written through queue.complete)."""
    from backend.config import validate_config
    from backend.result import RunResult, SampleRecord, ScoreRecord
    from jobs import queue

    ids = []
    for i, sparsity in enumerate((0.0, 0.3, 0.5)[:SEED_RUNS]):
        config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-mc"],
                                  "pruning": {"method": "dense" if sparsity == 0 else "magnitude", "sparsity": sparsity}})
        job = queue.submit(config)[0]
        claimed = queue.claim_next("seed")
        samples = [SampleRecord(task="synthetic-mc", doc_id=d, prompt=f"q{d}", output="a", extracted="a", gold="a",
                                correct=(d + i) % 3 != 0, prompt_tokens=3, output_tokens=1,
                                metrics={"acc": float((d + i) % 3 != 0)}) for d in range(SEED_SAMPLES)]
        accuracy = sum(s.correct for s in samples) / len(samples)
        result = RunResult(scores=[ScoreRecord("synthetic-mc", "acc", accuracy, None, True, True, "k")],
                           samples=samples, efficiency={}, prune_report={"method": config.pruning.method}, manifest={})
        assert claimed is not None and claimed.id == job.id and queue.complete(job.id, claimed.attempts, result)
        ids.append(job.id)
    return ids


class UiSimulation:
    """Threads calling what the tabs' callbacks call, until `deadline`; counts actions and errors."""

    def __init__(self, deadline: float, compared: list[int], seed_base: int, log: logging.Logger):
        self.deadline, self.compared, self.log = deadline, compared, log
        self.next_seed = seed_base
        self.lock = threading.Lock()
        self.actions: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}

    def run(self, threads: int) -> dict:
        workers = [threading.Thread(target=self.loop, args=(n,), name=f"ui-{n}") for n in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        return {"ui_actions": sum(self.actions.values()), "ui_by_action": dict(self.actions),
                "ui_errors": sum(self.errors.values()), "ui_locked": self.errors["locked"],
                "ui_error_samples": self.error_samples}

    def loop(self, n: int) -> None:
        rng = random.Random(n)
        while time.monotonic() < self.deadline:
            action = rng.choice(ACTIONS)
            try:
                getattr(self, action)(rng)
            except Exception as exc:  # noqa: BLE001  (counted and logged: the point of the benchmark)
                kind = "locked" if LOCKED.search(str(exc)) else type(exc).__name__
                with self.lock:
                    self.errors[kind] += 1
                    self.error_samples.setdefault(kind, f"{action}: {exc}"[:300])
                self.log.error("ui %s failed: %s\n%s", action, exc, traceback.format_exc())
            else:
                with self.lock:
                    self.actions[action] += 1
            time.sleep(UI_PAUSE)

    def submit(self, rng: random.Random) -> None:
        from ui import services

        with self.lock:
            self.next_seed += 1
            seed = self.next_seed
        message = services.submit_text(noop_yaml(seed), False)
        if "Queued" not in message:
            raise RuntimeError(f"submit refused: {message}")

    def leaderboard(self, rng: random.Random) -> None:
        from ui import board

        board.board_view()

    def queue(self, rng: random.Random) -> None:
        from ui import services

        services.queue_view()

    def panel(self, rng: random.Random) -> None:
        from ui import services

        job_id = self._job_id(rng, None)
        if job_id is not None:
            services.job_panel(job_id)

    def compare(self, rng: random.Random) -> None:
        from db.compare import compare
        from db.session import read_session

        with read_session() as session:
            compare(session, self.compared, "synthetic-mc", outcome=rng.choice(("all", "only-a", "answers-differ")))

    def cancel(self, rng: random.Random) -> None:
        from ui import services

        job_id = self._job_id(rng, ("queued", "running"))
        if job_id is not None:
            services.cancel_job(job_id)

    def retry(self, rng: random.Random) -> None:
        from ui import services

        job_id = self._job_id(rng, ("cancelled",))
        if job_id is not None:
            services.retry_job(job_id)

    def _job_id(self, rng: random.Random, states: tuple[str, ...] | None) -> int | None:
        from sqlalchemy import select

        from db.schema import Job
        from db.session import read_session

        query = select(Job.id).order_by(Job.id.desc()).limit(50)
        if states is not None:
            query = query.where(Job.state.in_(states))
        with read_session() as session:
            ids = session.scalars(query).all()
        return rng.choice(ids) if ids else None


def ui_process(seconds: float, threads: int, compared: str, log_path: str) -> None:
    """Entry point of the UI process: runs the simulation, prints its counts as one JSON line."""
    logging.basicConfig(filename=log_path, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    simulation = UiSimulation(time.monotonic() + seconds, [int(i) for i in compared.split(",")], 1_000_000,
                              logging.getLogger("ui-sim"))
    print(json.dumps(simulation.run(threads)), flush=True)


def locked_lines(path: Path) -> int:
    return len(LOCKED.findall(path.read_text(errors="replace"))) if path.exists() else 0


_TRACEBACK = re.compile(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*(.*)")


def traceback_lines(path: Path) -> list[str]:
    """The exception line ending each traceback in a log."""
    return _TRACEBACK.findall(path.read_text(errors="replace")) if path.exists() else []


def contend(workdir: Path, seconds: float, n_workers: int = 4, ui_threads: int = 3) -> dict:
    """The run itself, in the database the environment names (SQLite); returns the figures."""
    from sqlalchemy import func, select

    from backend.config import validate_config
    from db.schema import Job
    from db.session import dispose_engines, read_session
    from jobs import queue

    workdir.mkdir(parents=True, exist_ok=True)
    compared = seed_compared_runs()
    for seed in range(4 * n_workers):  # a backlog so every worker starts busy
        queue.submit(validate_config({"model": "builtin:noop", "model_args": {"sleep_ms": NOOP_SLEEP_MS},
                                      "tasks": ["synthetic-mc"], "seed": seed}))
    dispose_engines()
    env = {**os.environ, "TMPDIR": str(workdir)}  # the UI's exports stay in the scratch directory
    logs = [workdir / f"worker-{n}.log" for n in range(n_workers)]
    workers = []
    for n, log in enumerate(logs):
        with log.open("w") as out:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "jobs", "worker", "--id", f"contend-{n}", "--poll", "0.1"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    ui_log = workdir / "ui.log"
    started = time.monotonic()
    ui = subprocess.run(
        [sys.executable, "-c", UI_ENTRY, str(seconds), str(ui_threads), ",".join(map(str, compared)), str(ui_log)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 600, check=False,
    )
    elapsed = time.monotonic() - started
    for proc in workers:
        proc.send_signal(signal.SIGTERM)  # each hands back its running job and exits
    worker_codes = []
    for proc in workers:
        try:
            worker_codes.append(proc.wait(timeout=60))
        except subprocess.TimeoutExpired:
            proc.kill()
            worker_codes.append(proc.wait())
    if ui.returncode != 0:
        raise RuntimeError(f"the UI process failed ({ui.returncode}): {ui.stderr[-3000:]}")
    ui_figures = json.loads(ui.stdout.strip().splitlines()[-1])

    with read_session() as session:
        states = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    dispose_engines()
    states = {state.value: n for state, n in states.items()}
    (workdir / "ui.stderr").write_text(ui.stderr)
    locked = sum(locked_lines(path) for path in [*logs, ui_log, workdir / "ui.stderr"])
    worker_errors = [line[:300] for path in logs for line in traceback_lines(path)]
    return {
        "seconds": round(elapsed, 1),
        "workers": n_workers,
        "ui_threads": ui_threads,
        "jobs_done": states.get("succeeded", 0) - len(compared),
        "jobs_by_state": states,
        "ui_actions": ui_figures["ui_actions"],
        "ui_by_action": ui_figures["ui_by_action"],
        "locked_errors": locked,
        "other_errors": ui_figures["ui_errors"] - ui_figures["ui_locked"] + len(worker_errors),
        "error_samples": {**ui_figures["ui_error_samples"], **{f"worker {n}": e for n, e in enumerate(worker_errors[:5])}},
        "worker_exit_codes": worker_codes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--ui-threads", type=int, default=3)
    parser.add_argument("--lease", type=float, default=3.0, help="lease seconds (heartbeat every lease/3)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="pruneboard-contention-"))
    os.environ.update(PRUNEBOARD_HOME=str(home), PRUNEBOARD_ALLOW_NOOP="1", PRUNEBOARD_AUTO_BASELINES="0",
                      PRUNEBOARD_LEASE_SECONDS=str(args.lease))
    os.environ.pop("DATABASE_URL", None)
    print(f"scratch home {home}: {args.workers} workers + UI ({args.ui_threads} threads) for {args.seconds:g} s",
          flush=True)
    figures = contend(home / "run", args.seconds, args.workers, args.ui_threads)
    print(f"jobs by state {figures['jobs_by_state']}; UI actions {figures['ui_by_action']}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
