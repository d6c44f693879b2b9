"""PruneBoard web app: `python app.py` serves the UI and the worker API (one process, one port) and
starts PRUNEBOARD_LOCAL_WORKERS local workers.

The UI (Gradio) is mounted at "/" on the FastAPI app of `jobs.api`, so remote workers reach
`/api/v1/worker/...` and monitors `/healthz` on the same port (GRADIO_SERVER_PORT, default 7860).
"""
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


def create_app():
    """The FastAPI app: worker API, /healthz, and the Gradio UI at "/"."""
    import gradio as gr

    from jobs.api import create_api
    from ui.layout import build_demo

    demo = build_demo()
    demo.queue(default_concurrency_limit=8)
    return gr.mount_gradio_app(
        create_api(), demo, path="/",
        css_paths=[ROOT / "static" / "style.css"],
        allowed_paths=[str(ROOT / "static")],
    )


def setup_logging() -> None:
    from jobs.logs import formatter

    handler = logging.StreamHandler()
    handler.setFormatter(formatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def main() -> None:
    import uvicorn

    setup_logging()
    from db.session import init_db

    init_db()
    workers = start_local_workers(settings.local_workers())
    logger.info("started %d local worker(s)", len(workers))
    app = create_app()
    port = settings.server_port()
    logger.info("serving the UI and the worker API on http://0.0.0.0:%d", port)
    uvicorn.run(app, host="0.0.0.0", port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
