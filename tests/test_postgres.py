"""Postgres-only queue behaviour (PRUNEBOARD_TEST_POSTGRES_URL; see tests/pg_support.py): claims skip
rows other transactions hold locked, and concurrent submissions of one config are serialised."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from common import settings
from backend.config import validate_config
from db.schema import Job
from db.session import dispose_engines, init_db, read_session
from jobs import queue
from db.states import JobState
from pg_support import requires_postgres

pytestmark = requires_postgres


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


def config(seed: int):
    return validate_config({"model": "builtin:noop", "tasks": ["synthetic-mc"], "seed": seed})


def test_claim_skips_a_job_another_transaction_holds_locked():
    url = settings.database_url()
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:  # a lock wait fails after 5 s instead of hanging the test
        connection.execute(text(f'ALTER DATABASE "{make_url(url).database}" SET lock_timeout = \'5s\''))
        connection.commit()
    dispose_engines()  # new connections pick the setting up
    first, _ = queue.submit(config(0))
    second, _ = queue.submit(config(1))
    with engine.connect() as locker, locker.begin():
        locker.execute(select(Job.id).where(Job.id == first.id).with_for_update())
        claimed = queue.claim_next("w")  # FOR UPDATE SKIP LOCKED: takes the next job, no wait
        assert claimed is not None and claimed.id == second.id
        assert queue.claim_next("w") is None  # the locked one is invisible to claims, not lost
    assert queue.claim_next("w").id == first.id  # ... and is claimed once the lock is gone
    engine.dispose()


def test_concurrent_submissions_of_one_config_make_one_job():
    init_db()
    barrier = threading.Barrier(6)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            barrier.wait()
            job, existing = queue.submit(config(0))
            results.append((job.id, existing))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({job_id for job_id, _ in results}) == 1
    assert sorted(existing for _, existing in results) == [False] + [True] * 5
    with read_session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert session.scalar(select(Job.state)) is JobState.QUEUED
