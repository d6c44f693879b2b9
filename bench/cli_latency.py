"""Wall time of the CLI commands that run no model (target: under 2 s each), median of 5 runs.

A scratch PRUNEBOARD_HOME is used. Last line: {"cli_seconds": {command: s}}.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "submit": ["submit", str(ROOT / "examples" / "tiny-dense.yaml")],
    "status": ["status"],
    "status --json": ["status", "--json"],
    "methods": ["methods"],
    "tasks": ["tasks"],
}


def main() -> None:
    env = {**os.environ, "PRUNEBOARD_HOME": tempfile.mkdtemp(prefix="pruneboard-cli-")}
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "jobs", "status"], cwd=ROOT, env=env, check=True, capture_output=True)
    seconds = {}
    for name, args in COMMANDS.items():
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env, check=True, capture_output=True)
            runs.append(time.perf_counter() - start)
        seconds[name] = round(statistics.median(runs), 3)
        print(f"{name:15s} median {seconds[name]:.3f} s")
    print(json.dumps({"cli_seconds": seconds}))


if __name__ == "__main__":
    main()
