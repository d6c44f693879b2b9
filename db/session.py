"""Engines, sessions and migrations.

`init_db()` applies the Alembic migrations (`upgrade head`) and is cheap after the first call per
URL in a process. `read_session()` is for queries; `write_session()` commits on success. On SQLite,
a write session takes the write lock when it begins (`BEGIN IMMEDIATE`), so a read-then-write
transaction cannot fail halfway with "database is locked" when another process wrote in between;
every connection runs in WAL mode with a busy timeout. A SQLite database file is created 0600 (its
-wal and -shm files take its mode): it holds every result and the worker tokens' hashes.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from common import settings
from common.private_files import create_private, make_private

__all__ = ["get_engine", "init_db", "read_session", "write_session", "dispose_engines", "MIGRATIONS_DIR"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for another writer before 'database is locked'."""
_WRITE_OPTION = "pruneboard_write"
_MIGRATION_LOCK_KEY = 0x5052554E  # "PRUN": pg advisory lock serialising concurrent migrations

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_migrated: set[str] = set()


def _resolve(url: str | None) -> str:
    return url or settings.database_url()


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: settings.database_url()); no migrations."""
    url = _resolve(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = _create_engine(url)
        return engine


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        path = Path(database).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        create_private(path)  # SQLite gives its -wal and -shm files the database file's mode
        for suffix in ("-wal", "-shm", "-journal"):
            make_private(f"{path}{suffix}")  # left by an older version with a looser umask
        engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def init_db(url: str | None = None) -> Engine:
    """Create or upgrade the schema to the newest migration; return the engine."""
    url = _resolve(url)
    engine = get_engine(url)
    if url in _migrated:
        return engine
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # One transaction for the whole upgrade. It takes the write lock first (SQLite) or an advisory
    # lock (Postgres), so workers starting together migrate once and the others see the result.
    with engine.execution_options(**{_WRITE_OPTION: True}).connect() as connection:
        with connection.begin():
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    with _lock:
        _migrated.add(url)
    return engine


def _sessionmaker(url: str | None, write: bool) -> sessionmaker[Session]:
    engine = init_db(url)
    if write:
        engine = engine.execution_options(**{_WRITE_OPTION: True})
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def read_session(url: str | None = None) -> Iterator[Session]:
    """A session for queries (migrating the database first if needed); nothing is committed."""
    with _sessionmaker(url, write=False)() as session:
        yield session


@contextmanager
def write_session(url: str | None = None) -> Iterator[Session]:
    """One write transaction: commits when the block ends, rolls back if it raises."""
    with _sessionmaker(url, write=True)() as session:
        with session.begin():
            yield session


def dispose_engines() -> None:
    """Close every pooled connection (tests, and before a process forks)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _migrated.clear()
    for engine in engines:
        engine.dispose()
