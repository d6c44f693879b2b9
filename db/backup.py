"""Online backups of the SQLite database, and restore on start.

`backup()` copies the live database with SQLite's backup API (`sqlite3.Connection.backup`), which
reads a consistent snapshot while workers and the UI keep writing (WAL mode: readers never block
writers). The copy goes to a temporary file in `settings.backup_dir()` and is renamed over the
previous backup only when complete, so a crash mid-backup never leaves a torn file.
`BackupThread` repeats it every `settings.backup_seconds()` (app.py starts one in Space mode).

`restore_if_needed()` runs before the database is opened: when the live file is missing, empty or
unreadable and a backup exists, the backup is copied into place (an unreadable file is first moved
aside, never deleted). Everything here is a no-op for non-SQLite URLs (Postgres has its own tools)
and in-memory databases.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from sqlalchemy.engine import make_url

from common import settings
from common.private_files import create_private
from db.session import SQLITE_BUSY_TIMEOUT_MS

__all__ = ["BACKUP_NAME", "sqlite_path", "backup_path", "backup", "restore_if_needed", "BackupThread"]

logger = logging.getLogger(__name__)

BACKUP_NAME = "pruneboard.sqlite3"
_SIDE_FILES = ("-wal", "-shm", "-journal")


def sqlite_path(url: str | None = None) -> Path | None:
    """The database file of a SQLite URL (default: settings.database_url()); None for anything else."""
    parsed = make_url(url or settings.database_url())
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def backup_path() -> Path:
    return settings.backup_dir() / BACKUP_NAME


def backup(url: str | None = None) -> Path | None:
    """Write a consistent copy of the live SQLite database to `backup_path()`; return it (None when
    there is nothing to back up: not SQLite, or no database file yet)."""
    source = sqlite_path(url)
    if source is None or not source.is_file():
        return None
    target = backup_path()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        _copy(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("database backed up to %s", target)
    return target


def restore_if_needed(url: str | None = None) -> bool:
    """Before the database is opened: put the backup in place of a missing, empty or unreadable live
    database. Returns whether it restored."""
    live = sqlite_path(url)
    saved = backup_path()
    if live is None or not saved.is_file():
        return False
    problem = _problem(live)
    if problem is None:
        return False
    if _problem(saved) is not None:
        logger.error("live database %s is %s, and the backup %s is unreadable too: not restored", live, problem, saved)
        return False
    if live.exists():
        aside = live.with_name(f"{live.name}.unreadable-{int(os.path.getmtime(live))}")
        os.replace(live, aside)
        logger.warning("live database %s was %s: moved to %s", live, problem, aside)
    for suffix in _SIDE_FILES:  # a stale WAL must never be replayed onto the restored file
        Path(f"{live}{suffix}").unlink(missing_ok=True)
    live.parent.mkdir(parents=True, exist_ok=True)
    tmp = live.with_name(f".{live.name}.restore.tmp")
    try:
        _copy(saved, tmp)
        os.replace(tmp, live)
    finally:
        tmp.unlink(missing_ok=True)
    logger.warning("database %s was %s: restored from the backup %s", live, problem, saved)
    return True


class BackupThread(threading.Thread):
    """Backs the database up every `interval` seconds, and once more when stopped."""

    def __init__(self, interval: float, url: str | None = None):
        super().__init__(name="pruneboard-backup", daemon=True)
        self.interval = interval
        self.url = url
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._backup_once()

    def stop(self, final_backup: bool = True) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=60)
        if final_backup:
            self._backup_once()

    def _backup_once(self) -> None:
        try:
            backup(self.url)
        except (sqlite3.Error, OSError):  # a failed backup must not take the app down; the next one retries
            logger.exception("database backup failed")


# --- helpers ----------------------------------------------------------------------------------


def _copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    create_private(target)  # 0600 before a byte is written: the copy holds every result
    with closing(sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)) as src, \
            closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode = DELETE")  # a self-contained single file (no -wal beside it)


def _problem(path: Path) -> str | None:
    """Why a database file cannot be used (missing, empty, unreadable), or None when it can."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    try:
        with closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)) as connection:
            result = connection.execute("PRAGMA quick_check").fetchone()
            tables = connection.execute("SELECT count(*) FROM sqlite_master WHERE name = 'jobs'").fetchone()
    except sqlite3.DatabaseError as exc:
        return f"unreadable ({exc})"
    if not result or result[0] != "ok":
        return f"corrupt ({result[0] if result else 'no answer'})"
    if not tables[0]:
        return "empty (no jobs table)"
    return None
