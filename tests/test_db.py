"""Schema, migrations, SQLite connection settings and the UI queries, on a real SQLite file."""
from __future__ import annotations

import subprocess
import sys
import threading
import json
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from backend.result import RunResult, SampleRecord, ScoreRecord
from db import queries
from db.schema import Base, Job, Score
from db.session import dispose_engines, get_engine, init_db, read_session, write_session
from jobs import queue
from jobs.facts import run_facts, task_facts
from db.states import JobState
from pg_support import empty_database, requires_postgres, server_url, sqlite_only

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _close_engines():
    """Each test has its own database file; close its pooled connections afterwards."""
    yield
    dispose_engines()


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from db.session import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def add_job(session, **fields) -> Job:
    values = dict(config_hash="h", config_json="{}", model="m", paradigm="instruct", method="dense",
                  sparsity=0.0, state=JobState.SUCCEEDED, attempts=1, requeues=0, progress=1.0,
                  cancel_requested=False)
    values.update(fields)
    document = json.loads(values["config_json"])
    job = Job(**run_facts({**document, "pruning": {**document.get("pruning", {}), "method": values["method"]}}),
              **values)
    session.add(job)
    session.flush()
    return job


def add_scores(session, job: Job, primary: dict[str, float], lower_is_better: tuple[str, ...] = ()) -> None:
    for task, value in primary.items():
        session.add(Score(job_id=job.id, task=task, metric="m", value=value, stderr=None,
                          higher_is_better=task not in lower_is_better, is_primary=True, comparability_key=task,
                          **task_facts(task)))
        session.add(Score(job_id=job.id, task=task, metric="other", value=-1.0, stderr=None,
                          higher_is_better=True, is_primary=False, comparability_key=task, **task_facts(task)))


# --- migrations and connections ---------------------------------------------------------------


@sqlite_only
def test_default_database_is_sqlite_in_home(isolated_home):
    assert Path(init_db().url.database) == isolated_home / "pruneboard.db"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=requires_postgres)])
def test_migrations_create_the_schema_of_the_models(backend, isolated_home):
    """`upgrade head` on an empty database of each backend gives exactly db/schema.py."""
    fresh = nullcontext(f"sqlite:///{isolated_home / 'fresh.db'}") if backend == "sqlite" else empty_database()
    with fresh as url:
        engine = init_db(url)
        assert engine.dialect.name == backend
        tables = set(inspect(engine).get_table_names())
        assert tables >= {"jobs", "scores", "samples", "sample_checkpoints", "alembic_version"}
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == [], diff  # migrations and db/schema.py agree
        assert init_db(url) is engine  # idempotent, cached


@sqlite_only
def test_sqlite_connections_use_wal_and_busy_timeout():
    init_db()
    with read_session() as session:
        assert session.scalar(text("PRAGMA journal_mode")) == "wal"
        assert session.scalar(text("PRAGMA busy_timeout")) == 30_000
        assert session.scalar(text("PRAGMA foreign_keys")) == 1


def test_processes_migrating_at_once_all_succeed(isolated_home, monkeypatch, request):
    if server_url() is not None:  # the test's database is migrated already: start from an empty one
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("empty_postgres_database"))
    code = "from db.session import init_db; init_db()"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    with get_engine().connect() as connection:
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == head_revision()


def test_state_column_accepts_exactly_the_job_states():
    assert [s.value for s in JobState] == ["queued", "running", "succeeded", "failed", "cancelled"]
    init_db()
    with write_session() as session:
        job = add_job(session, state=JobState.QUEUED)
    with pytest.raises(IntegrityError):
        with write_session() as session:
            session.execute(text("UPDATE jobs SET state = 'finished' WHERE id = :id"), {"id": job.id})
    with read_session() as session:
        assert session.get(Job, job.id).state is JobState.QUEUED


def test_write_session_rolls_back_on_error():
    init_db()
    with pytest.raises(RuntimeError):
        with write_session() as session:
            add_job(session)
            raise RuntimeError("boom")
    with read_session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_read_then_write_transactions_in_parallel_do_not_hit_locked_errors():
    """Write sessions take the lock when they begin, so a read-then-write never fails halfway."""
    init_db()
    with write_session() as session:
        job_id = add_job(session, attempts=0).id
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(5):
                with write_session() as session:
                    # Postgres needs the row lock; on SQLite the write session already holds the write lock
                    job = session.get(Job, job_id, with_for_update=True)
                    time.sleep(0.01)
                    job.attempts = job.attempts + 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with read_session() as session:
        assert session.get(Job, job_id).attempts == 20  # no lost updates either


def test_deleting_a_job_deletes_its_results():
    init_db()
    with write_session() as session:
        job = add_job(session)
        add_scores(session, job, {"t": 1.0})
    with write_session() as session:
        session.delete(session.get(Job, job.id))
    with read_session() as session:
        assert session.scalar(select(func.count()).select_from(Score)) == 0


# --- queries ----------------------------------------------------------------------------------


def test_leaderboard_uses_latest_succeeded_run_per_config_dense_first():
    init_db()
    with write_session() as session:
        wanda = add_job(session, config_hash="w", method="wanda", sparsity=0.5)
        add_scores(session, wanda, {"arc": 0.4, "gsm": 0.2, "wikitext": 30.0}, lower_is_better=("wikitext",))
        old_dense = add_job(session, config_hash="d", method="dense")
        add_scores(session, old_dense, {"arc": 0.1})
        dense = add_job(session, config_hash="d", method="dense")  # same config, forced rerun: newest wins
        add_scores(session, dense, {"arc": 0.6, "gsm": 0.4})
        failed = add_job(session, config_hash="d", method="dense", state=JobState.FAILED)
        add_job(session, config_hash="q", method="magnitude", sparsity=0.3, state=JobState.RUNNING)
        other = add_job(session, config_hash="o", model="other", paradigm="think", method="magnitude", sparsity=0.3)
        add_scores(session, other, {"arc": 0.3})

    with read_session() as session:
        board = queries.leaderboard(session)
    assert list(board.columns) == ["job_id", "model", "paradigm", "method", "sparsity", "arc", "gsm", "wikitext", "average"]
    assert list(board["job_id"]) == [dense.id, wanda.id, other.id]
    assert failed.id not in set(board["job_id"])
    rows = board.set_index("job_id")
    assert rows.loc[dense.id, "arc"] == 0.6 and rows.loc[dense.id, "average"] == pytest.approx(0.5)
    assert rows.loc[wanda.id, "average"] == pytest.approx(0.3)  # perplexity (lower is better) left out
    assert rows.loc[wanda.id, "wikitext"] == 30.0
    assert board.isna().loc[board["job_id"] == other.id, "gsm"].all()

    with read_session() as session:
        assert list(queries.leaderboard(session, model="other")["job_id"]) == [other.id]
        assert list(queries.leaderboard(session, paradigm="instruct")["job_id"]) == [dense.id, wanda.id]
        empty = queries.leaderboard(session, model="nobody")
    assert empty.empty and list(empty.columns) == [*queries.LEADERBOARD_COLUMNS, "average"]


def test_list_jobs_and_job_detail():
    init_db()
    with write_session() as session:
        first = add_job(session, state=JobState.FAILED, error_type="RuntimeError", error_message="boom", log_tail="x\ny")
        second = add_job(session, config_hash="h2", state=JobState.QUEUED, config_json='{"seed": 1}')
    with read_session() as session:
        listed = queries.list_jobs(session)
        assert [j["id"] for j in listed] == [second.id, first.id]
        assert listed[1]["state"] == "failed" and listed[1]["error_message"] == "boom"
        assert [j["id"] for j in queries.list_jobs(session, state="queued")] == [second.id]
        assert queries.list_jobs(session, limit=1)[0]["id"] == second.id
        detail = queries.job_detail(session, second.id)
        assert detail["config"] == {"seed": 1} and detail["scores"] == [] and detail["samples"] == {}
        assert queries.job_detail(session, 999) is None


def test_job_detail_and_samples_of_a_completed_run():
    init_db()
    with write_session() as session:
        job_id = add_job(session, state=JobState.QUEUED, attempts=0).id
    claimed = queue.claim_next("w")
    samples = [
        SampleRecord("mc", doc_id, f"q{doc_id}", "A", "A", "A" if doc_id else "B", bool(doc_id), 5, 1, {"acc": 1.0})
        for doc_id in range(3)
    ]
    score = ScoreRecord("mc", "acc", 2 / 3, float("nan"), True, True, "mc|0shot")
    assert queue.complete(job_id, claimed.attempts, RunResult([score], samples, {"latency": float("inf")}, {}, {"seed": 0}))
    with read_session() as session:
        detail = queries.job_detail(session, job_id)
        frame = queries.job_samples(session, job_id)
        only = queries.job_samples(session, job_id, task="other")
    assert detail["state"] == "succeeded" and detail["samples"] == {"mc": {"count": 3, "correct": 2}}
    assert detail["scores"][0]["value"] == pytest.approx(2 / 3) and detail["scores"][0]["stderr"] is None
    assert detail["efficiency"] == {"latency": None}  # non-finite floats are stored as null
    assert list(frame["doc_id"]) == [0, 1, 2] and frame["correct"].tolist() == [False, True, True]
    assert only.empty
