"""Leaderboard under load, loopback only and bounded: `python app.py` (no local worker) on a free
127.0.0.1 port with a seeded scratch database (`--runs` finished runs), then `--clients` concurrent
clients read the leaderboard for `--seconds` through the app's Gradio HTTP API, as a browser's
refresh does (it runs the same callback and waits in the same Gradio queue).

One request = Gradio 6's two-step call: POST /gradio_api/call/v2/leaderboard with the named inputs
(none: the widgets' defaults) returns an event id; GET /gradio_api/call/v2/leaderboard/<id> streams
server-sent events until `complete` (the table) or `error`. Latency covers both steps. The first
answer is checked to hold every seeded run; an `error` event, an HTTP error or a timeout counts as
an error, not as a latency.
Last line: {"clients": 50, "seconds": 30, "requests": ..., "errors": ..., "p50_ms": ..., "p99_ms": ...}.
Usage: python bench/load_leaderboard.py [--clients 50] [--seconds 30] [--runs 36]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kill_trials import serve_app

CALL = "/gradio_api/call/v2/leaderboard"
REQUEST_TIMEOUT = 120.0
METHODS = ("magnitude", "wanda", "sparsegpt")
SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
TASKS = (("synthetic-mc", "acc"), ("synthetic-arith", "exact_match"))


def seed_runs(n_runs: int) -> list[int]:
    """`n_runs` finished runs (a dense baseline per paradigm, then pruned ones) written through the
    queue's own completion path, each with a primary score on every task of TASKS."""
    from backend.config import validate_config
    from backend.result import RunResult, ScoreRecord
    from jobs import queue

    plans = []
    for paradigm in ("instruct", "think"):
        plans.append((paradigm, "dense", 0.0))
        plans += [(paradigm, method, sparsity) for method in METHODS for sparsity in SPARSITIES]
    ids = []
    for paradigm, method, sparsity in plans[:n_runs]:
        config = validate_config({"model": "builtin:tiny-llama", "paradigm": paradigm,
                                  "tasks": [task for task, _ in TASKS],
                                  "pruning": {"method": method, "sparsity": sparsity}})
        job = queue.submit(config)[0]
        claimed = queue.claim_next("seed")
        if claimed is None or claimed.id != job.id:
            raise RuntimeError("seeding expects an otherwise empty queue")
        scores = [ScoreRecord(task, metric, max(0.0, 0.8 - sparsity * 0.6 - 0.05 * k), 0.01, True, True, "k")
                  for k, (task, metric) in enumerate(TASKS)]
        result = RunResult(scores=scores, samples=[], efficiency={}, prune_report={"method": method}, manifest={})
        if not queue.complete(job.id, claimed.attempts, result):
            raise RuntimeError(f"could not complete seeded job {job.id}")
        ids.append(job.id)
    return ids


async def read_leaderboard(client) -> list:
    """One leaderboard read through the Gradio HTTP API; the `complete` event's data."""
    posted = await client.post(CALL, json={})
    posted.raise_for_status()
    event_id = posted.json()["event_id"]
    kind = None
    async with client.stream("GET", f"{CALL}/{event_id}") as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                kind = line.partition(":")[2].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                data = json.loads(line.partition(":")[2])
                if kind == "error":
                    raise RuntimeError(f"error event: {str(data)[:300]}")
                return data
    raise RuntimeError("the event stream ended without a result")


def table_rows(data: list) -> int:
    """Rows of the leaderboard table in a `complete` event (the first output, a Dataframe)."""
    table = data[0]
    return len(table.get("data", [])) if isinstance(table, dict) else len(table)


async def load(url: str, clients: int, seconds: float) -> tuple[list[float], int, list[str]]:
    import httpx

    latencies: list[float] = []
    problems: list[str] = []
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    deadline = time.monotonic() + seconds

    async def client_loop(client) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                await read_leaderboard(client)
            except Exception as exc:  # noqa: BLE001  (counted, and the client goes on)
                problems.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return latencies, len(latencies) + len(problems), problems


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=36, help="seeded finished runs")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="pruneboard-load-"))
    os.environ.update(PRUNEBOARD_HOME=str(home), PRUNEBOARD_AUTO_BASELINES="0", TMPDIR=str(home))
    os.environ.pop("DATABASE_URL", None)
    seeded = seed_runs(args.runs)
    print(f"scratch home {home}: {len(seeded)} runs seeded; starting the app", flush=True)
    with serve_app(home / "app.log") as url:
        first = asyncio.run(_first(url))
        if table_rows(first) != len(seeded):
            raise SystemExit(f"the leaderboard shows {table_rows(first)} rows, {len(seeded)} seeded")
        print(f"{url}: the leaderboard shows all {len(seeded)} runs; {args.clients} clients for {args.seconds:g} s",
              flush=True)
        latencies, requests, problems = asyncio.run(load(url, args.clients, args.seconds))
    for problem in sorted(set(problems))[:5]:
        print(f"error: {problem}")
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(json.dumps({
        "clients": args.clients,
        "seconds": args.seconds,
        "requests": requests,
        "errors": len(problems),
        "p50_ms": None if p50 is None else round(p50, 1),
        "p99_ms": None if p99 is None else round(p99, 1),
    }))


async def _first(url: str) -> list:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        return await read_leaderboard(client)


if __name__ == "__main__":
    main()
