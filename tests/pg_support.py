"""Running the DB/queue tests against a real PostgreSQL server instead of SQLite.

Set PRUNEBOARD_TEST_POSTGRES_URL to a server URL whose user may create databases, e.g.
`postgresql+psycopg://postgres@127.0.0.1:5432/postgres` (`.ci/run` starts a throwaway cluster and sets
it). The migrations run once per test session into a template database; each test then gets its own
copy (`CREATE DATABASE ... TEMPLATE`), dropped afterwards, as DATABASE_URL.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

ENV = "PRUNEBOARD_TEST_POSTGRES_URL"
_names = itertools.count()

requires_postgres = pytest.mark.skipif(not os.environ.get(ENV), reason=f"{ENV} is not set")
sqlite_only = pytest.mark.skipif(bool(os.environ.get(ENV)), reason=f"SQLite-specific ({ENV} is set)")


def server_url() -> URL | None:
    """The server from PRUNEBOARD_TEST_POSTGRES_URL (plain postgresql:// means the psycopg 3 driver)."""
    value = os.environ.get(ENV)
    if not value:
        return None
    url = make_url(value)
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def database_url(server: URL, name: str) -> str:
    return server.set(database=name).render_as_string(hide_password=False)


def _admin_engine(server: URL) -> Engine:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    return create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)


@contextmanager
def empty_database(template: str | None = None) -> Iterator[str]:
    """A new database on the test server (a copy of `template`, else empty); dropped on exit."""
    server = server_url()
    assert server is not None, f"{ENV} is not set"
    from db.session import dispose_engines

    admin = _admin_engine(server)
    name = f"pruneboard_test_{os.getpid()}_{next(_names)}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield database_url(server, name)
    finally:
        dispose_engines()  # pooled connections of this process; FORCE ends other processes' ones
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """Name of a database migrated to head once per session (copied for each test)."""
    from db.session import dispose_engines, init_db

    with empty_database() as url:
        init_db(url)
        dispose_engines()  # a template must have no open connections
        yield make_url(url).database


@pytest.fixture
def postgres_database(postgres_template) -> Iterator[str]:
    """URL of a fresh, migrated database for one test."""
    with empty_database(template=postgres_template) as url:
        yield url


@pytest.fixture
def empty_postgres_database() -> Iterator[str]:
    """URL of a new database with no tables (for tests of the migrations themselves)."""
    with empty_database() as url:
        yield url
