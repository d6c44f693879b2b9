"""PruneBoard web app: `python app.py` serves the UI and starts PRUNEBOARD_LOCAL_WORKERS workers."""
from __future__ import annotations

import atexit
import logging
import subprocess
import sys
from pathlib import Path

from backend import settings

ROOT = Path(__file__).resolve().parent
logger = logging.getLogger("pruneboard.app")


def start_local_workers(count: int) -> list[subprocess.Popen]:
    """Workers are separate processes (a model run never blocks the UI); stopped when the app exits."""
    workers = [
        subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--id", f"local-{i}"], cwd=ROOT)
        for i in range(count)
    ]

    def stop() -> None:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    atexit.register(stop)
    return workers


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from db.session import init_db
    from ui.layout import build_demo

    init_db()
    workers = start_local_workers(settings.local_workers())
    logger.info("started %d local worker(s)", len(workers))
    demo = build_demo()
    demo.queue(default_concurrency_limit=8)
    demo.launch(
        server_name="0.0.0.0",
        server_port=settings.server_port(),
        css_paths=[ROOT / "static" / "style.css"],
        allowed_paths=[str(ROOT / "static")],
    )


if __name__ == "__main__":
    main()
