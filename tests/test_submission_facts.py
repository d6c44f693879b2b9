"""Facts known at submission are columns (issue 17): the queue stores them, migration 0012 fills
older rows from a frozen copy that agrees with `jobs.facts`, and the leaderboard reads them instead
of parsing configs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from backend.config import validate_config
from backend.pruning import list_methods
from backend.tasks import list_tasks
from db.leaderboard import BoardFilters, board
from db.schema import Job, Score
from db.session import MIGRATIONS_DIR, dispose_engines, read_session, write_session
from db.states import JobState
from jobs import queue, result_rows
from jobs.facts import run_facts, task_facts

ROOT = Path(__file__).resolve().parent.parent
BASE = {"model": "builtin:tiny-llama", "tasks": [{"name": "synthetic-mc"}]}
DOCUMENTS = [
    BASE,
    {**BASE, "pruning": {"method": "magnitude", "sparsity": 0.5}},
    {**BASE, "pruning": {"method": "magnitude", "sparsity": 0.5, "params": {"allocation": "owl"}}},
    {**BASE, "pruning": {"method": "wanda", "sparsity": 0.5}},
    {**BASE, "pruning": {"method": "wanda", "sparsity": 0.5}, "calibration": {}},
    {**BASE, "pruning": {"method": "sparsegpt", "sparsity": 0.5},
     "calibration": {"source": "text", "path": "wikitext2/valid.txt", "num_samples": 4, "seq_len": 64}},
    {**BASE, "pruning": {"method": "shortgpt", "sparsity": 0.25},
     "calibration": {"source": "task-aligned", "task": "gsm8k", "num_samples": 16, "seq_len": 512}},
    {**BASE, "pruning": {"method": "flap", "sparsity": 0.25},
     "calibration": {"source": "self-generated", "task": "gsm8k", "split": "test", "seed": 3}},
    {**BASE, "pruning": {"method": "llm-pruner", "sparsity": 0.25}, "recovery": {"data": "text", "path": "t.txt"}},
    {**BASE, "pruning": {"method": "slicegpt", "sparsity": 0.25}, "recovery": {"enabled": False}},
    {**BASE, "pruning": {"method": "no-such-method", "sparsity": 0.25}},
] + [{**BASE, "pruning": {"method": m.name, "sparsity": 0.0 if m.family == "dense" else 0.25}} for m in list_methods()]


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


def _migration():
    path = MIGRATIONS_DIR / "versions" / "0012_submission_facts.py"
    spec = importlib.util.spec_from_file_location("migration_0012", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: json.dumps(d.get("pruning", {}))[:60])
def test_the_migrations_frozen_copy_agrees_with_jobs_facts(document):
    frozen = _migration()
    if (document.get("pruning") or {}).get("method", "dense") not in frozen.FAMILY and \
            document["pruning"]["method"] != "no-such-method":
        pytest.skip("a method registered after migration 0012: its rows get their facts when written")
    assert frozen.run_facts(document) == run_facts(document)


def test_the_frozen_task_table_agrees_with_the_registry():
    frozen = _migration()
    for spec in list_tasks():
        if spec.name not in frozen.CATEGORY:
            continue  # registered after migration 0012
        assert task_facts(spec.name) == {
            "category": frozen.CATEGORY[spec.name], "test_time_scaling": spec.name in frozen.TEST_TIME_SCALING,
            "output_type": frozen.NOT_GENERATED.get(spec.name, "generate")}, spec.name
    assert task_facts("no-such-task") == {"category": None, "test_time_scaling": None, "output_type": None}


def test_upgrade_fills_the_columns_of_existing_rows(tmp_path):
    from alembic import command
    from alembic.config import Config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0011")
    documents = DOCUMENTS[:10]
    with engine.begin() as connection:
        for number, document in enumerate(documents):
            pruning = document.get("pruning") or {}
            connection.execute(sa.text(
                "INSERT INTO jobs (id, config_hash, config_json, model, paradigm, method, sparsity, state, attempts, "
                "requeues, progress, cancel_requested, created_at, hidden) VALUES (:id, :h, :c, 'm', 'instruct', "
                ":method, :s, 'succeeded', 1, 0, 1.0, 0, CURRENT_TIMESTAMP, 0)"),
                {"id": number + 1, "h": f"h{number}", "c": json.dumps(document),
                 "method": pruning.get("method", "dense"), "s": pruning.get("sparsity", 0.0)})
        for task in ("piqa", "math500", "truthfulqa-mc2", "wikitext2-ppl"):
            connection.execute(sa.text(
                "INSERT INTO scores (job_id, task, metric, value, higher_is_better, is_primary, comparability_key) "
                "VALUES (1, :t, 'm', 0.5, 1, 1, 'k')"), {"t": task})
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with engine.connect() as connection:
        jobs = {row.id: row._asdict() for row in connection.execute(sa.text(
            "SELECT id, family, uses_calibration, calibration_source, calibration_data, recovery FROM jobs"))}
        scores = {row.task: row._asdict() for row in connection.execute(sa.text(
            "SELECT task, category, test_time_scaling, output_type FROM scores"))}
    engine.dispose()
    for number, document in enumerate(documents):
        stored = {k: v for k, v in jobs[number + 1].items() if k != "id"}
        expected = run_facts(document)
        stored = {k: (bool(v) if k in ("uses_calibration", "recovery") and v is not None else v) for k, v in stored.items()}
        assert stored == expected, document
    for task, row in scores.items():
        assert {k: (bool(v) if k == "test_time_scaling" else v) for k, v in row.items() if k != "task"} == task_facts(task)


def test_submission_and_scores_store_the_facts():
    config = validate_config({**BASE, "pruning": {"method": "wanda", "sparsity": 0.5, "params": {"allocation": "owl"}},
                              "calibration": {"source": "task-aligned", "task": "gsm8k"}})
    job, _ = queue.submit(config)
    with write_session() as session:
        from backend.result import ScoreRecord

        result_rows.write_results(session, job.id, [ScoreRecord(task="math500", metric="exact_match", value=0.5,
                                                          stderr=None, higher_is_better=True, primary=True,
                                                          comparability_key="k")], [])
    with read_session() as session:
        stored = session.get(Job, job.id)
        score = session.scalar(select(Score).where(Score.job_id == job.id))
    assert (stored.family, stored.uses_calibration, stored.calibration_source, stored.recovery) == (
        "unstructured", True, "task-aligned", False)
    assert stored.calibration_data == "task-aligned gsm8k train 8x128 seed 0"
    assert (score.category, score.test_time_scaling, score.output_type) == ("reasoning", True, "generate")


def test_the_board_reads_the_columns_not_the_config():
    """A run's family, calibration and task category come from its columns: a config the board would
    have to parse says nothing here."""
    with write_session() as session:
        job = Job(config_hash="h", config_json="{}", model="m", paradigm="instruct", method="some-later-method",
                  sparsity=0.3, state=JobState.SUCCEEDED, attempts=1, requeues=0, progress=1.0,
                  cancel_requested=False, family="width", uses_calibration=True, calibration_source="text",
                  calibration_data="text mine.txt 4x64 seed 1", recovery=True)
        session.add(job)
        session.flush()
        session.add(Score(job_id=job.id, task="a-later-task", metric="m", value=0.4, stderr=None,
                          higher_is_better=True, is_primary=True, comparability_key="k", category="reasoning"))
    with read_session() as session:
        shown = board(session, BoardFilters())
    row = shown.frame.iloc[0]
    assert (row["family"], row["calibration"], row["calibration_data"], bool(row["recovery"])) == (
        "width", "text", "text mine.txt 4x64 seed 1", True)
    assert "a-later-task" in shown.column_groups["reasoning"]


def test_a_method_with_a_new_family_and_saved_format_needs_no_change_elsewhere(monkeypatch, tmp_path):
    """Only the method's own module: the facts, the board's family filter, the family list and the
    pruned-model loader pick it up from the registry and its hooks."""
    from backend.models.loading import load_pruned
    from backend.pruning import PruningMethod, method_families, saved_format_method
    from backend.pruning.base import _METHODS
    from db.leaderboard import filter_options

    class Loaded:
        def eval(self):
            return self

    class Sculpted(PruningMethod):
        name = "sculpted"
        family = "sculpting"
        needs_calibration = False

        @classmethod
        def is_saved_format(cls, directory):
            return (directory / "sculpted.json").is_file()

        @classmethod
        def load_saved(cls, directory, dtype=None, device="cpu"):
            return Loaded()

        def prune(self, model, sparsity, params, calibration, progress):
            raise NotImplementedError

    list_methods()  # discover first, so the registry is complete before the new method joins
    monkeypatch.setitem(_METHODS._items, "sculpted", Sculpted)
    assert method_families()[-1] == "sculpting"
    document = {**BASE, "pruning": {"method": "sculpted", "sparsity": 0.3}}
    assert run_facts(document)["family"] == "sculpting"
    job, _ = queue.submit(validate_config(document))
    with write_session() as session:
        session.get(Job, job.id).state = JobState.SUCCEEDED
    with read_session() as session:
        assert "sculpting" in filter_options(session)["families"]
        assert list(board(session, BoardFilters(families=("sculpting",))).frame["method"]) == ["sculpted"]
    (tmp_path / "sculpted.json").write_text("{}")
    assert saved_format_method(tmp_path) is Sculpted
    assert isinstance(load_pruned(tmp_path), Loaded)
