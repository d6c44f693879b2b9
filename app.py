"""PruneBoard web app: `python app.py` serves the UI and the worker API (one process, one port) and
starts PRUNEBOARD_LOCAL_WORKERS local workers.

The UI (Gradio) is mounted at "/" on the FastAPI app of `jobs.api`, so remote workers reach
`/api/v1/worker/...` and monitors `/healthz` on the same port (GRADIO_SERVER_PORT, default 7860).
It listens on 127.0.0.1 unless GRADIO_SERVER_NAME, `--host` or Space mode says otherwise, and refuses
to start (exit 2) where login is required but no real Hugging Face login exists (`ui.auth.login_problem`).

Space mode (SPACE_ID set, i.e. on a Hugging Face Space): no local worker unless
PRUNEBOARD_LOCAL_WORKERS says so (jobs run on remote GPU workers), login required to submit, and
the SQLite database is backed up every PRUNEBOARD_BACKUP_SECONDS; on start a missing or unreadable
database is restored from the backup (`db.backup`).
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import subprocess
import sys
from pathlib import Path

from common import settings
from jobs import results_repo
from jobs.sweeper import LeaseSweeper

ROOT = Path(__file__).resolve().parent
MIN_SECRET_TOKEN_CHARS = 32
UPLOAD_LIMIT = "1mb"
"""Gradio's upload route accepts files up to this (the UI has no upload field; anyone may post there)."""
logger = logging.getLogger("pruneboard.app")


def start_local_workers(count: int) -> list[subprocess.Popen]:
    """Workers are separate processes (a model run never blocks the UI); stopped when the app exits,
    and on their own (--stop-with-parent) when the app was killed without running its exit handlers."""
    workers = [
        subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--id", f"local-{i}", "--stop-with-parent"],
                         cwd=ROOT)
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
    """The FastAPI app: worker API, /healthz, leaderboard downloads (`ui.exports`) and the Gradio UI at "/"."""
    import gradio as gr

    from jobs.api import create_api
    from ui.exports import register_export_route
    from ui.layout import build_demo

    demo = build_demo()
    demo.queue(default_concurrency_limit=8)
    api = create_api()
    register_export_route(api)  # before the UI is mounted at "/", which would take the path
    return gr.mount_gradio_app(
        api, demo, path="/",
        css_paths=[ROOT / "static" / "style.css"],
        head=header_hints_head(),
        allowed_paths=[str(ROOT / "static")],
        max_file_size=UPLOAD_LIMIT,
    )


def header_hints_head() -> str:
    """The page's <head> addition: the leaderboard's column hints and the script that shows them on hover."""
    import json

    from ui.board import HEADER_HINTS

    hints = json.dumps(HEADER_HINTS).replace("</", "<\\/")  # no "</script>" can end the tag early
    script = (ROOT / "static" / "header_hints.js").read_text(encoding="utf-8")
    return f"<script>window.PRUNEBOARD_HEADER_HINTS = {hints};</script>\n<script>{script}</script>"


def setup_logging() -> None:
    from jobs.logs import formatter

    handler = logging.StreamHandler()
    handler.setFormatter(formatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


SNAPSHOT = ROOT / "results" / "snapshot.jsonl.gz"
"""The shipped results (results/README.md): an empty database starts with them."""


def seed_results(snapshot: Path | None = None) -> dict | None:
    """Import the shipped snapshot (default `SNAPSHOT`) into an empty, never-seeded database (one
    transaction, before the first request is answered); off with PRUNEBOARD_SEED_RESULTS=0."""
    from jobs.bundle import BundleError, seed_empty_database

    snapshot = snapshot or SNAPSHOT

    if not settings.seed_results():
        return None
    if not snapshot.is_file():
        logger.warning("no results snapshot at %s: the leaderboard starts empty", snapshot)
        return None
    try:
        counts = seed_empty_database(snapshot, source_name=f"results/{snapshot.name}")
    except BundleError as exc:
        logger.error("the results snapshot %s was not imported: %s", snapshot, exc)
        return None
    if counts is not None:
        logger.info("imported the results snapshot: %d run(s)", counts["imported"])
    return counts


def prepare_database():
    """Restore a lost database from its backup, migrate, seed an empty one with the shipped
    results, and start periodic backups when enabled; returns the backup thread (None when
    backups are off)."""
    from db.backup import BackupThread, restore_if_needed
    from db.session import init_db

    restore_if_needed()
    init_db()
    if results_repo.configured():  # results kept on the Hub come back before the shipped snapshot is considered
        try:
            results_repo.restore_results()
        except Exception:  # the Hub being down must not keep the app from starting
            logger.exception("restoring from the results repo %s failed", settings.results_repo())
    seed_results()
    warning = results_repo.ephemeral_storage_warning()
    if warning:
        logger.warning("%s\n%s\n%s", "!" * 100, warning, "!" * 100)
    interval = settings.backup_seconds()
    if interval <= 0:
        return None
    thread = BackupThread(interval)
    thread.start()
    logger.info("backing the database up every %.0f s to %s", interval, settings.backup_dir())
    return thread


def register_worker_tokens() -> list[str]:
    """PRUNEBOARD_WORKER_TOKENS="name=token,..." (a Space secret): worker tokens for deployments
    where no one can run `python -m jobs token create` beside the database. A new name is added and
    a changed token replaces the old one; an unchanged one is left as it is, so a revoke stands. A
    name that came from the variable and is no longer in it is revoked (to bring that worker back,
    give it a new token). Returns the names added or changed."""
    from sqlalchemy import select

    from db.schema import WorkerToken, utcnow
    from db.session import write_session
    from jobs.tokens import NAME_PATTERN, digest

    changed, listed = [], set()
    for item in filter(None, (part.strip() for part in os.environ.get("PRUNEBOARD_WORKER_TOKENS", "").split(","))):
        name, _, token = (piece.strip() for piece in item.partition("="))
        if not NAME_PATTERN.match(name) or len(token) < MIN_SECRET_TOKEN_CHARS:
            logger.error("PRUNEBOARD_WORKER_TOKENS: skipped an entry (want name=token, token of at least %d "
                         "characters)", MIN_SECRET_TOKEN_CHARS)
            continue
        listed.add(name)
        with write_session() as session:
            row = session.scalar(select(WorkerToken).where(WorkerToken.name == name))
            if row is not None and row.token_hash == digest(token):
                row.source = "env"  # rows made before the source was recorded
                continue
            if row is None:
                row = WorkerToken(name=name)
                session.add(row)
            row.token_hash, row.revoked_at, row.source = digest(token), None, "env"
        changed.append(name)
    if changed:
        logger.info("worker tokens from PRUNEBOARD_WORKER_TOKENS: %s", ", ".join(changed))
    with write_session() as session:
        dropped = session.scalars(select(WorkerToken).where(
            WorkerToken.source == "env", WorkerToken.revoked_at.is_(None), WorkerToken.name.not_in(listed))).all()
        for row in dropped:
            row.revoked_at = utcnow()
    if dropped:
        logger.warning("worker tokens revoked (no longer in PRUNEBOARD_WORKER_TOKENS): %s",
                       ", ".join(row.name for row in dropped))
    return changed


def log_mode() -> None:
    if settings.space_mode():
        logger.info("Space mode (SPACE_ID=%s): home %s, login required, %d admin(s)",
                    os.environ.get("SPACE_ID"), settings.home(), len(settings.admins()))
    else:
        logger.info("local mode: home %s, login %s", settings.home(),
                    "required" if settings.require_login() else "not required")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description="PruneBoard: the UI and the worker API.")
    parser.add_argument("--host", default=None, metavar="ADDR",
                        help="address to listen on, e.g. 0.0.0.0 for workers on other machines (default: "
                             "$GRADIO_SERVER_NAME, else 127.0.0.1; 0.0.0.0 in Space mode)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from ui.auth import login_problem

    args = parse_args(argv)
    problem = login_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    setup_logging()
    log_mode()
    backups = prepare_database()
    if backups is not None:
        atexit.register(backups.stop)  # one last backup on a clean exit
    register_worker_tokens()
    if results_repo.configured():
        pusher = results_repo.ResultsPusher(settings.results_push_seconds(), settings.results_debounce_seconds())
        pusher.start()
        atexit.register(pusher.stop)  # one last push on a clean exit
        logger.info("pushing results to the Hub dataset %s", settings.results_repo())
    sweeper = LeaseSweeper()
    sweeper.start()
    atexit.register(sweeper.stop)
    workers = start_local_workers(settings.local_workers())
    logger.info("started %d local worker(s)", len(workers))
    app = create_app()
    host, port = args.host or settings.server_name(), settings.server_port()
    logger.info("serving the UI and the worker API on http://%s:%d", host, port)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
