"""Per-sample records in the database: previews in `samples`, compressed full texts in `traces`
within the per-run cap, trace statistics, and the 0001 -> 0002 migration of an existing database."""
from __future__ import annotations

import json
import random
import zlib

import pytest
from sqlalchemy import func, select, text

from backend.config import validate_config
from backend.result import RunResult, SampleRecord, ScoreRecord
from backend.evaluation.scoring import SCORER_VERSION
from common.trace_stats import LENGTH_BUCKETS, length_bucket, trace_stats
from db import queries
from db.schema import SAMPLE_PREVIEW_CHARS, Job, Sample, Score, Trace
from db.session import MIGRATIONS_DIR, dispose_engines, get_engine, init_db, read_session
from db.traces import CUT_KEEP_CHARS, decode_trace, encode_traces
from jobs import queue
from pg_support import server_url


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


def noop_config(seed: int = 0):
    return validate_config({"model": "builtin:noop", "tasks": ["synthetic-arith"], "seed": seed})


def words(n_chars: int, seed: int) -> str:
    """Text that compresses like prose (a small vocabulary), with non-ASCII characters in it."""
    rng = random.Random(seed)
    vocab = ["the", "answer", "is", "so", "we", "add", "carry", "ünïcode", "数", "step", "then", "=", "42"]
    out, size = [], 0
    while size < n_chars:
        word = rng.choice(vocab)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:n_chars]


def noise(n_chars: int, seed: int) -> str:
    """Text that barely compresses (random letters)."""
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(n_chars))


def think_sample(doc_id: int, reasoning: str, answer: str, task: str = "synthetic-arith", **fields) -> SampleRecord:
    output = f"<think>{reasoning}</think>{answer}"
    values = dict(task=task, doc_id=doc_id, prompt=f"<|im_start|>user\nQ{doc_id} " + "x" * 3000, output=output,
                  extracted="42", gold="42", correct=True, prompt_tokens=700, output_tokens=len(output) // 4,
                  metrics={"exact_match": 1.0}, reasoning=reasoning, answer=answer, finish_reason="stop",
                  thinking_tokens=len(reasoning) // 4, truncated=False, repetition=0.1)
    values.update(fields)
    return SampleRecord(**values)


def complete_run(samples, scores=(), seed: int = 0) -> int:
    job, _ = queue.submit(noop_config(seed))
    claimed = queue.claim_next("w")
    assert claimed.id == job.id
    result = RunResult(scores=list(scores), samples=list(samples), efficiency={}, prune_report={}, manifest={})
    assert queue.complete(job.id, claimed.attempts, result)
    return job.id


# --- storage ----------------------------------------------------------------------------------


def test_long_outputs_are_stored_compressed_and_read_back_identical():
    long_reasoning, answer = words(60_000, 1), " So the answer is 42. ✓"
    samples = [
        think_sample(0, long_reasoning, answer),
        # reasoning and answer that are not parts of the output are stored as their own blobs
        SampleRecord("synthetic-arith", 1, "p", "short output 7", "7", "7", True, 3, 4, {"exact_match": 1.0},
                     reasoning="a separate reasoning", answer="a separate answer", finish_reason="length",
                     thinking_tokens=4, truncated=True, repetition=0.75),
        SampleRecord("synthetic-arith", 2, "p2", "", None, "3", False, 2, 0, {"exact_match": 0.0}),  # old-style record
    ]
    job_id = complete_run(samples)

    with read_session() as session:
        rows = {s.doc_id: s for s in session.scalars(select(Sample).where(Sample.job_id == job_id))}
        traces = {t.doc_id: t for t in session.scalars(select(Trace).where(Trace.job_id == job_id))}
        full = {d: queries.sample_trace(session, job_id, "synthetic-arith", d) for d in (0, 1, 2)}
        frame = queries.job_samples(session, job_id)
        assert queries.sample_trace(session, job_id, "synthetic-arith", 99) is None

    first = samples[0]
    assert rows[0].output == first.output[:SAMPLE_PREVIEW_CHARS] and rows[0].output_chars == len(first.output)
    assert rows[0].prompt == first.prompt[:SAMPLE_PREVIEW_CHARS]
    assert (rows[0].answer, rows[0].finish_reason, rows[0].truncated) == (answer, "stop", False)
    assert rows[0].thinking_tokens == first.thinking_tokens and rows[0].repetition == pytest.approx(0.1)
    trace = traces[0]
    assert trace.codec == "zlib" and not trace.truncated_for_storage
    assert trace.stored_bytes < len(first.output.encode()) / 3  # really compressed
    assert trace.reasoning_z is None and trace.answer_z is None  # positions in the output, no copies
    assert zlib.decompress(trace.output_z).decode() == first.output
    for doc_id, sample in enumerate(samples):
        got = full[doc_id]
        assert (got["prompt"], got["output"], got["reasoning"], got["answer"]) == (
            sample.prompt, sample.output, sample.reasoning, sample.answer)
        assert got["output_chars"] == len(sample.output) and got["truncated_for_storage"] is False
    assert traces[1].reasoning_z is not None and traces[1].answer_z is not None
    assert (rows[1].truncated, rows[1].finish_reason, rows[1].repetition) == (True, "length", 0.75)
    assert list(frame.columns) == queries.SAMPLE_COLUMNS
    assert frame["output_chars"].tolist() == [len(s.output) for s in samples]
    assert frame["truncated_for_storage"].tolist() == [False, False, False]
    assert frame["truncated"].tolist() == [False, True, False]


def test_cap_cuts_the_remaining_traces_keeping_head_and_tail():
    samples = [think_sample(i, noise(20_000, i), f" The answer is {i}.") for i in range(4)]
    samples.append(think_sample(4, "short", " 4", prompt="Q4"))  # past the cap but nothing to cut
    full = [encode_traces(1, [s], cap_bytes=10**9)[0] for s in samples]
    cap = full[0]["stored_bytes"] + full[1]["stored_bytes"]

    rows = encode_traces(1, reversed(samples), cap_bytes=cap)  # stored in (task, doc_id) order
    assert [r["doc_id"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["truncated_for_storage"] for r in rows] == [False, False, True, True, False]
    assert rows[0] == full[0] and rows[1] == full[1]
    for row, sample in zip(rows[2:4], samples[2:4]):
        got = decode_trace(row)
        assert got["output_chars"] == len(sample.output) and got["reasoning_chars"] == len(sample.reasoning)
        for name in ("output", "reasoning", "prompt"):
            original, kept = getattr(sample, name), got[name]
            assert kept.startswith(original[:CUT_KEEP_CHARS]) and kept.endswith(original[-CUT_KEEP_CHARS:])
            assert f"[... {len(original) - 2 * CUT_KEEP_CHARS} characters cut for storage ...]" in kept
        assert got["answer"] == sample.answer  # short: kept whole
        assert row["stored_bytes"] < full[2]["stored_bytes"] / 4
    assert decode_trace(rows[4])["output"] == samples[4].output


def test_cap_from_the_environment_marks_cut_traces(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_TRACE_CAP_MB", "0")
    sample = think_sample(0, noise(10_000, 3), " The answer is 42.")
    job_id = complete_run([sample])
    with read_session() as session:
        got = queries.sample_trace(session, job_id, "synthetic-arith", 0)
        frame = queries.job_samples(session, job_id)
    assert got["truncated_for_storage"] is True and got["output_chars"] == len(sample.output)
    assert got["output"].endswith(sample.output[-CUT_KEEP_CHARS:]) and len(got["output"]) < 2 * CUT_KEEP_CHARS + 100
    assert frame["truncated_for_storage"].tolist() == [True]


def test_checkpoints_keep_full_texts_and_new_fields_for_resume():
    job, _ = queue.submit(noop_config())
    claimed = queue.claim_next("w")
    sample = think_sample(0, words(5000, 2), " 42", finish_reason="length", truncated=True, repetition=0.6)
    queue.record_sample(job.id, claimed.attempts, sample)
    assert queue.completed_samples(job.id) == [sample]


def test_complete_records_scorer_version_and_trace_stats():
    samples = [think_sample(i, words(100 * (i + 1), i), " 42", correct=i != 1) for i in range(3)]
    score = ScoreRecord("synthetic-arith", "exact_match", 2 / 3, 0.3, True, True, "k")
    job_id = complete_run(samples, [score])
    with read_session() as session:
        assert session.scalar(select(Score.scorer_version)) == SCORER_VERSION
        detail = queries.job_detail(session, job_id)
    assert detail["scores"][0]["scorer_version"] == SCORER_VERSION
    assert detail["trace_stats"] == json.loads(json.dumps(trace_stats(samples)))


# --- trace statistics -------------------------------------------------------------------------


def record(task, doc_id, output_tokens, correct, thinking=None, truncated=False, repetition=None, finish=None):
    return SampleRecord(task, doc_id, "p", "o", None, "g", correct, 1, output_tokens, {},
                        thinking_tokens=thinking, truncated=truncated, repetition=repetition, finish_reason=finish)


def test_trace_stats_on_hand_made_samples():
    samples = [
        record("b", 0, 10, True, thinking=100, truncated=False, repetition=0.1, finish="stop"),
        record("b", 1, 70, False, thinking=300, truncated=True, repetition=0.9, finish="length"),
        record("b", 2, 63, True, thinking=None, truncated=False, repetition=0.5, finish="stop"),
        record("b", 3, 5000, None, thinking=200, truncated=True, repetition=None, finish=None),
        record("a", 0, 64, True),
    ]
    stats = trace_stats(samples)
    assert list(stats) == ["a", "b"]
    b = stats["b"]
    assert b["samples"] == 4
    assert b["mean_output_tokens"] == pytest.approx((10 + 70 + 63 + 5000) / 4)
    assert b["mean_thinking_tokens"] == pytest.approx(200.0)  # (100 + 300 + 200) / 3
    assert b["truncation_rate"] == pytest.approx(0.5)  # 2 of 4
    assert b["length_stop_rate"] == pytest.approx(1 / 3)  # 1 of the 3 with a finish reason
    assert b["mean_repetition"] == pytest.approx(0.5)  # (0.1 + 0.9 + 0.5) / 3
    assert b["repetition_rate"] == pytest.approx(2 / 3)  # 0.9 and 0.5 reach the 0.5 threshold
    assert b["accuracy"] == pytest.approx(2 / 3)  # the None verdict is left out
    buckets = {e["bucket"]: (e["samples"], e["accuracy"]) for e in b["accuracy_by_length"]}
    assert buckets == {"0-63": (2, 1.0), "64-255": (1, 0.0), "256-1023": (0, None),
                       "1024-4095": (0, None), "4096+": (1, None)}
    a = stats["a"]
    assert (a["mean_thinking_tokens"], a["length_stop_rate"], a["mean_repetition"], a["repetition_rate"]) == (
        None, None, None, None)
    assert a["truncation_rate"] == 0.0 and a["accuracy_by_length"][1]["accuracy"] == 1.0
    assert [length_bucket(n) for n in (0, 63, 64, 255, 256, 4095, 4096)] == [
        "0-63", "0-63", "64-255", "64-255", "256-1023", "1024-4095", "4096+"]
    assert len(LENGTH_BUCKETS) == 5
    assert trace_stats([]) == {}


# --- migration 0001 -> 0002 -------------------------------------------------------------------


def _upgrade(target: str) -> None:
    from alembic import command
    from alembic.config import Config

    engine = get_engine()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as connection:
        with connection.begin():
            config.attributes["connection"] = connection
            command.upgrade(config, target)


def test_migration_0002_upgrades_a_database_with_data(monkeypatch, request):
    if server_url() is not None:  # the test's database is migrated already: start from an empty one
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("empty_postgres_database"))
    _upgrade("0001")
    with get_engine().connect() as connection:
        with connection.begin():
            connection.execute(text(
                "INSERT INTO jobs (id, config_hash, config_json, model, paradigm, method, sparsity, state, attempts,"
                " requeues, progress, cancel_requested, created_at) VALUES (7, 'h', '{}', 'm', 'instruct', 'dense',"
                " 0.0, 'succeeded', 1, 0, 1.0, FALSE, '2026-11-25 00:00:00')"))
            connection.execute(text(
                "INSERT INTO scores (job_id, task, metric, value, stderr, higher_is_better, is_primary,"
                " comparability_key) VALUES (7, 'synthetic-arith', 'exact_match', 0.0, NULL, TRUE, TRUE, 'k')"))
            connection.execute(text(
                "INSERT INTO samples (job_id, task, doc_id, prompt, output, extracted, gold, correct, prompt_tokens,"
                " output_tokens, metrics_json) VALUES (7, 'synthetic-arith', 0, 'What is 40 + 2?', :out, '4', '42',"
                " FALSE, 5, 9, '{\"exact_match\": 0.0}')"), {"out": "x" * 3000 + " 42"})
            assert connection.scalar(text("SELECT version_num FROM alembic_version")) == "0001"

    init_db()  # upgrades to head, as every process does on start
    with read_session() as session:
        assert session.scalar(text("SELECT version_num FROM alembic_version")) != "0001"
        sample = session.scalar(select(Sample))
        assert (sample.output_chars, sample.answer, sample.truncated, sample.finish_reason) == (None, None, False, None)
        assert session.scalar(select(Score.scorer_version)) is None
        assert session.scalar(select(func.count()).select_from(Trace)) == 0
        assert session.get(Job, 7).trace_stats_json is None
        full = queries.sample_trace(session, 7, "synthetic-arith", 0)
        assert full["output"] == "x" * 3000 + " 42" and full["prompt"] == "What is 40 + 2?"
        frame = queries.job_samples(session, 7)
        assert frame["output_chars"].tolist() == [3003] and frame["truncated_for_storage"].isna().all()
        detail = queries.job_detail(session, 7)
        assert detail["trace_stats"]["synthetic-arith"]["accuracy"] == 0.0  # computed from the rows
        assert detail["scores"][0]["scorer_version"] is None

    from jobs.rescore import rescore

    report = rescore(7)  # a run stored before traces existed is rescored from its full `samples.output`
    assert report["tasks"][0]["changed"] == 1
    with read_session() as session:
        assert session.scalar(select(Sample.correct)) is True
        assert session.scalar(select(Score.value)) == 1.0
        assert session.get(Job, 7).trace_stats_json["synthetic-arith"]["accuracy"] == 1.0
