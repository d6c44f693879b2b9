"""kill -9 a worker mid-job, N trials each for a local worker (database) and a remote one (worker API).

Each trial queues one job and starts a worker process whose pipeline streams one sample every
`SAMPLE_SECONDS` (the worker loop, the queue, the HTTP backend and the server are the real ones; the
pipeline is scripted so the kill lands at a known point: after 1, 2, ... all samples were
checkpointed, round-robin over the trials). The worker is SIGKILLed, its lease expires, and a second
worker drains the queue. A trial is ok when the job ended `succeeded` with exactly one accepted
completion (one "job N succeeded" line of `jobs.queue`, logged where the completion commits: the
workers' logs for local trials, the server's log for remote ones, since a remote worker can be killed
after the server accepted its result and before it logs anything), exactly its scores and samples (none
partial, none twice), no checkpoint left, the second worker evaluated only what the first had not
checkpointed, and (remote) the workers' own home stayed empty.

Remote trials run against `python app.py` (no local worker) on a free loopback port, sharing the
scratch database; the remote workers get their own empty home, so they have no database.
Last line: {"local_kill_trials": n, "local_ok": n, "remote_kill_trials": n, "remote_ok": n}.
Usage: python bench/kill_trials.py [--trials 20] [--kinds local,remote] [--lease 2]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_SAMPLES = 6
SAMPLE_SECONDS = 0.15
SCORES = (("piqa", "acc"), ("piqa", "acc_norm"))
"""What the scripted pipeline reports: a task with two metrics (the worker API checks both exist)."""
WORKER_TIMEOUT = 180.0

# One worker process: the real Worker loop over LocalQueue (args: "local") or HttpQueue (args: URL
# TOKEN); a pipeline that resumes after the checkpointed samples and logs what it evaluated.
SCRIPTED_WORKER = r'''
import json, logging, sys, time
from backend.events import Progress, SampleDone
from backend.result import RunResult, SampleRecord, ScoreRecord
from jobs.logs import formatter
from jobs.worker import Worker

name, log_path, n_samples, pause, drain, server, token = sys.argv[1:8]
n_samples, pause = int(n_samples), float(pause)
handler = logging.StreamHandler()
handler.setFormatter(formatter())
logging.basicConfig(level=logging.INFO, handlers=[handler])
logging.getLogger("httpx").setLevel(logging.WARNING)

def make(doc_id):
    return SampleRecord(task="piqa", doc_id=doc_id, prompt=f"q{doc_id}", output="a", extracted="a",
                        gold="a", correct=doc_id % 2 == 0, prompt_tokens=3, output_tokens=1,
                        metrics={"acc": float(doc_id % 2 == 0)})

def pipeline(config, events, completed):
    done = {s.doc_id for s in completed}
    with open(log_path, "a") as log:
        log.write(json.dumps({"completed": sorted(done)}) + "\n")
        log.flush()
        for doc_id in range(n_samples):
            if doc_id not in done:
                time.sleep(pause)
                events(SampleDone(make(doc_id)))
                log.write(json.dumps({"emitted": doc_id}) + "\n")
                log.flush()
            events(Progress((doc_id + 1) / n_samples, "evaluate", f"{doc_id + 1}/{n_samples}"))
    samples = [make(d) for d in range(n_samples)]
    acc = sum(s.correct for s in samples) / n_samples
    scores = [ScoreRecord("piqa", "acc", acc, None, True, True, "k"),
              ScoreRecord("piqa", "acc_norm", acc, None, True, False, "k")]
    return RunResult(scores=scores, samples=samples, efficiency={}, prune_report={"method": "dense"},
                     manifest={"scripted": True})

if server == "local":
    backend = None
else:
    from jobs.remote import HttpQueue
    backend = HttpQueue(server, token)
Worker(name, poll_interval=0.2, pipeline=pipeline, backend=backend).run(drain=drain == "drain")
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def serve_app(log_path: Path, timeout: float = 240.0) -> Iterator[str]:
    """`python app.py` (no local worker) on a free loopback port with this process's environment
    (database, lease); its URL once /healthz answers ok. Stopped on exit."""
    import httpx

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PRUNEBOARD_LOCAL_WORKERS": "0",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    with log_path.open("w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early: {log_path.read_text()[-3000:]}")
        try:
            return bool(httpx.get(f"{url}/healthz", timeout=2).json().get("ok"))
        except (httpx.HTTPError, ValueError):
            time.sleep(0.3)
            return False

    try:
        wait_for(healthy, timeout, "the app to serve /healthz")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Trials:
    """Runs kill trials of one kind ("local" or "remote": then `server` and `token` are needed) in
    the database this process's environment names; `workdir` keeps the workers' logs."""

    def __init__(self, kind: str, workdir: Path, server: str | None = None, token: str | None = None,
                 n_samples: int = N_SAMPLES, sample_seconds: float = SAMPLE_SECONDS,
                 server_log: Path | None = None):
        if kind not in ("local", "remote") or (kind == "remote" and not (server and token)):
            raise ValueError("kind is local, or remote with server and token")
        self.kind, self.workdir, self.server, self.token = kind, workdir, server, token
        self.n_samples, self.sample_seconds = n_samples, sample_seconds
        self.server_log = server_log
        """Remote: the app's log, where the queue logs the completions it commits."""
        self.env = dict(os.environ)
        if kind == "remote":  # another machine: an empty home and no database URL
            remote_home = workdir / "remote-home"
            remote_home.mkdir(parents=True, exist_ok=True)
            self.env.update(PRUNEBOARD_HOME=str(remote_home))
            self.env.pop("DATABASE_URL", None)
            self.env.pop("PRUNEBOARD_LEASE_SECONDS", None)  # the server's lease rules

    def start(self, name: str, drain: bool) -> tuple[subprocess.Popen, Path, Path]:
        pipeline_log, stderr_path = self.workdir / f"{name}.jsonl", self.workdir / f"{name}.log"
        where = [self.server, self.token] if self.kind == "remote" else ["local", "-"]
        with stderr_path.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", SCRIPTED_WORKER, name, str(pipeline_log), str(self.n_samples),
                 str(self.sample_seconds), "drain" if drain else "run", *where],
                cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=err,
            )
        return proc, pipeline_log, stderr_path

    def run(self, trials: int, first_seed: int = 0) -> list[list[str]]:
        """Each trial's problems (an empty list: the trial is ok)."""
        outcomes = []
        for trial in range(trials):
            problems = self.trial(trial, first_seed + trial)
            outcomes.append(problems)
            status = "ok" if not problems else "FAILED: " + "; ".join(problems)
            print(f"{self.kind} trial {trial + 1}/{trials}: {status}", flush=True)
        return outcomes

    def trial(self, trial: int, seed: int) -> list[str]:
        from backend.config import validate_config
        from db.schema import utcnow
        from jobs import queue
        from db.states import JobState

        config = validate_config({"model": "builtin:noop", "tasks": ["piqa"], "seed": seed,
                                  "model_args": {"sleep_ms": 0}})
        job_id = queue.submit(config)[0].id
        kill_after = 1 + trial % self.n_samples  # checkpointed samples; the last: around completion
        victim, _, victim_err = self.start(f"{self.kind}-victim-{trial}", drain=False)
        try:
            wait_for(lambda: _checkpoints(job_id) >= kill_after or _state(job_id) == JobState.SUCCEEDED,
                     WORKER_TIMEOUT, f"job {job_id} to checkpoint {kill_after} sample(s)")
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
        checkpointed = set(_checkpoint_docs(job_id))
        job = _job(job_id)
        victim_finished = job.state == JobState.SUCCEEDED
        if job.state == JobState.RUNNING:
            expires = job.lease_expires_at
            wait_for(lambda: utcnow() > expires, WORKER_TIMEOUT, "the victim's lease to expire")
        rescuer, rescuer_log, rescuer_err = self.start(f"{self.kind}-rescuer-{trial}", drain=True)
        try:
            rescuer.wait(timeout=WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            rescuer.kill()
            rescuer.wait()
            return [f"job {job_id}: the rescuer did not finish within {WORKER_TIMEOUT:.0f} s"]
        problems = [] if rescuer.returncode == 0 else [f"rescuer exited {rescuer.returncode}"]
        problems += self.check(job_id, [self.server_log] if self.kind == "remote" else [victim_err, rescuer_err])
        if not victim_finished:
            problems += self.check_resume(rescuer_log, checkpointed)
        if self.kind == "remote" and any(Path(self.env["PRUNEBOARD_HOME"]).iterdir()):
            problems.append("a remote worker wrote into its home (a database?)")
        return [f"job {job_id}: {p}" for p in problems]

    def check(self, job_id: int, logs: list[Path]) -> list[str]:
        from sqlalchemy import select

        from db.schema import Sample, Score
        from db.session import read_session
        from db.states import JobState

        problems = []
        job = _job(job_id)
        if job.state != JobState.SUCCEEDED:
            problems.append(f"ended {job.state.value} ({job.error_type}: {job.error_message})")
        accepted = sum(_succeeded_events(path, job_id) for path in logs)
        if accepted != 1:
            problems.append(f"{accepted} accepted completions")
        with read_session() as session:
            scores = session.execute(select(Score.task, Score.metric).where(Score.job_id == job_id)).all()
            docs = session.scalars(select(Sample.doc_id).where(Sample.job_id == job_id)).all()
        if sorted(tuple(s) for s in scores) != sorted(SCORES):
            problems.append(f"score rows {sorted(tuple(s) for s in scores)}")
        if sorted(docs) != list(range(self.n_samples)):
            problems.append(f"sample rows {sorted(docs)}")
        if _checkpoints(job_id):
            problems.append(f"{_checkpoints(job_id)} checkpoint(s) left")
        return problems

    def check_resume(self, pipeline_log: Path, checkpointed: set[int]) -> list[str]:
        entries = [json.loads(line) for line in pipeline_log.read_text().splitlines()] if pipeline_log.exists() else []
        if not entries:
            return ["the rescuer never ran the pipeline"]
        problems = []
        if set(entries[0]["completed"]) != checkpointed:
            problems.append(f"resumed from {entries[0]['completed']}, checkpointed {sorted(checkpointed)}")
        emitted = sorted(e["emitted"] for e in entries[1:])
        if emitted != sorted(set(range(self.n_samples)) - checkpointed):
            problems.append(f"re-evaluated {emitted} after {sorted(checkpointed)} were checkpointed")
        return problems


def _job(job_id: int):
    from db.schema import Job
    from db.session import read_session

    with read_session() as session:
        return session.get(Job, job_id)


def _state(job_id: int):
    return _job(job_id).state


def _checkpoint_docs(job_id: int) -> list[int]:
    from sqlalchemy import select

    from db.schema import SampleCheckpoint
    from db.session import read_session

    with read_session() as session:
        return list(session.scalars(select(SampleCheckpoint.doc_id).where(SampleCheckpoint.job_id == job_id)))


def _checkpoints(job_id: int) -> int:
    return len(_checkpoint_docs(job_id))


def _succeeded_events(log: Path | None, job_id: int) -> int:
    """Completions of this job committed by the queue (its "job N succeeded (" line) in a log."""
    if log is None or not log.exists():
        return 0
    marker = f"job {job_id} succeeded ("
    return sum("jobs.queue" in line and marker in line for line in log.read_text(errors="replace").splitlines())


def run_kind(kind: str, trials: int, workdir: Path, first_seed: int = 0) -> int:
    """Trials of one kind in the current environment's database; how many were ok."""
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "local":
        return sum(not p for p in Trials("local", workdir).run(trials, first_seed))
    from jobs import tokens

    token = tokens.create(f"kill-trials-{os.getpid()}-{first_seed}")
    with serve_app(workdir / "app.log") as url:
        trials_ = Trials("remote", workdir, url, token, server_log=workdir / "app.log")
        return sum(not p for p in trials_.run(trials, first_seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per kind")
    parser.add_argument("--kinds", default="local,remote", help="comma-separated: local, remote")
    parser.add_argument("--lease", type=float, default=2.0, help="lease seconds (short: fast requeue)")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]

    home = Path(tempfile.mkdtemp(prefix="pruneboard-kill-"))
    os.environ.update(PRUNEBOARD_HOME=str(home), PRUNEBOARD_ALLOW_NOOP="1", PRUNEBOARD_AUTO_BASELINES="0",
                      PRUNEBOARD_LEASE_SECONDS=str(args.lease))
    os.environ.pop("DATABASE_URL", None)
    print(f"scratch home {home}; lease {args.lease:g} s; {args.trials} trial(s) per kind", flush=True)
    figures: dict[str, int | None] = {}
    for offset, kind in enumerate(("local", "remote")):
        ok = run_kind(kind, args.trials, home / kind, first_seed=offset * 100_000) if kind in kinds else None
        figures[f"{kind}_kill_trials"] = args.trials if kind in kinds else 0
        figures[f"{kind}_ok"] = ok if ok is not None else 0
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
