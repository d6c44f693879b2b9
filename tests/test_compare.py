"""db.compare: outcome filters for 2 and 3 runs, search, pagination, the paired statistics against
hand-computed values and one sample's full texts with prev/next inside the filter."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from backend.config import validate_config
from backend.result import RunResult, SampleRecord, ScoreRecord
from db.compare import comparable_runs, compare, compare_sample, mcnemar_exact, paired_bootstrap, shared_tasks
from db.session import dispose_engines, read_session
from jobs import queue

TASK = "synthetic-arith"
# Docs 0..12. A vs B: doc 0 only A right, docs 1-8 only B right, 9-10 both right, 11-12 both wrong.
A = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
B = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
C = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1]  # doc 13 only in C: never paired
LONG_PROMPT = "Question about item {doc}. " + "context " * 400


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


def _record(doc: int, right: int, wrong_answer: str, task: str = TASK) -> SampleRecord:
    answer = str(doc) if right else wrong_answer
    return SampleRecord(task=task, doc_id=doc, prompt=LONG_PROMPT.format(doc=doc),
                        output=f"<think>reasoning {doc}</think>The answer is {answer}", extracted=answer,
                        gold=str(doc), correct=bool(right), prompt_tokens=5, output_tokens=10 + doc,
                        reasoning=f"reasoning {doc}", answer=f"The answer is {answer}", finish_reason="stop",
                        thinking_tokens=3, truncated=doc == 12)


def seed_run(sparsity: float, pattern: list[int], wrong: dict[int, str] | None = None,
             extra_task: bool = False) -> int:
    tasks = [TASK, "synthetic-mc"] if extra_task else [TASK]
    config = validate_config({"model": "builtin:tiny-llama", "tasks": tasks,
                              "pruning": {"method": "magnitude", "sparsity": sparsity}})
    job, _ = queue.submit(config)
    claimed = queue.claim_next("seed-worker")
    samples = [_record(doc, right, (wrong or {}).get(doc, "x")) for doc, right in enumerate(pattern)]
    if extra_task:
        samples.append(_record(0, 1, "x", task="synthetic-mc"))
    scores = [ScoreRecord(t, "acc", 0.5, None, True, True, "k") for t in tasks]
    assert queue.complete(job.id, claimed.attempts,
                          RunResult(scores=scores, samples=samples, efficiency={}, prune_report={}, manifest={}))
    return job.id


@pytest.fixture
def runs() -> tuple[int, int, int]:
    return (seed_run(0.1, A, extra_task=True), seed_run(0.2, B, wrong={11: "zz"}),
            seed_run(0.3, C, wrong={doc: "y" for doc in range(14)}))


def run_compare(ids, **kwargs):
    with read_session() as session:
        return compare(session, ids, TASK, **kwargs)


def docs(result) -> list[int]:
    return result.rows["doc_id"].tolist()


# --- statistics -------------------------------------------------------------------------------


def test_mcnemar_exact_against_hand_computed_values():
    assert mcnemar_exact(1, 8) == pytest.approx(2 * (1 + 9) / 2**9)  # 0.0390625
    assert mcnemar_exact(8, 1) == pytest.approx(0.0390625)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    for only_a, only_b in [(2, 7), (10, 25), (40, 41)]:
        assert mcnemar_exact(only_a, only_b) == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def test_paired_bootstrap():
    assert paired_bootstrap([0, 0, 0], [1, 1, 1]) == (1.0, 1.0, 1.0)  # no spread: the interval is a point
    assert all(math.isnan(v) for v in paired_bootstrap([], []))
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    diff, low, high = paired_bootstrap(a, b)
    assert diff == pytest.approx(b.mean() - a.mean())
    half = 1.96 * (b - a).std() / math.sqrt(400)  # the normal approximation it must be close to
    assert low == pytest.approx(diff - half, abs=0.015) and high == pytest.approx(diff + half, abs=0.015)
    assert paired_bootstrap(a, b) == (diff, low, high)  # seeded
    assert paired_bootstrap(a, b, seed=1) != (diff, low, high)


def test_header_and_pair_statistics_for_two_runs(runs):
    a, b, _ = runs
    result = run_compare([a, b])
    assert [(r["letter"], r["job_id"], r["n"]) for r in result.runs] == [("A", a, 13), ("B", b, 13)]
    assert result.runs[0]["accuracy"] == pytest.approx(3 / 13)
    assert result.runs[1]["accuracy"] == pytest.approx(10 / 13)
    assert result.runs[1]["method"] == "magnitude" and result.runs[1]["sparsity"] == pytest.approx(0.2)
    (pair,) = result.pairs
    assert (pair["a"], pair["b"], pair["n_paired"], pair["only_a"], pair["only_b"]) == ("A", "B", 13, 1, 8)
    assert pair["diff"] == pytest.approx(7 / 13)
    assert pair["mcnemar_p"] == pytest.approx(0.0390625)
    assert pair["ci_low"] < pair["diff"] < pair["ci_high"]
    assert (pair["diff"], pair["ci_low"], pair["ci_high"]) == pytest.approx(
        paired_bootstrap(np.array(A), np.array(B)))


@pytest.mark.parametrize("outcome, expected", [
    ("all", list(range(13))),
    ("all-correct", [9, 10]),
    ("only-a", [0]),
    ("only-b", [1, 2, 3, 4, 5, 6, 7, 8]),
    ("all-wrong", [11, 12]),
    ("answers-differ", [0, 1, 2, 3, 4, 5, 6, 7, 8, 11]),
])
def test_outcome_filters_two_runs(runs, outcome, expected):
    result = run_compare(list(runs[:2]), outcome=outcome, page_size=50)
    assert docs(result) == expected and result.total == len(expected)


@pytest.mark.parametrize("outcome, expected", [
    ("all", list(range(13))),  # doc 13 is only in C
    ("all-correct", [9]),
    ("only-a", [0]),
    ("only-b", [1, 2, 3, 4, 5, 6, 7, 8]),
    ("only-c", [11]),
    ("all-wrong", [12]),
    ("answers-differ", [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12]),  # C's wrong answer "y" differs from "x"
])
def test_outcome_filters_three_runs(runs, outcome, expected):
    result = run_compare(list(runs), outcome=outcome, page_size=50)
    assert docs(result) == expected


def test_three_runs_have_three_pairs(runs):
    result = run_compare(list(runs))
    assert [(p["a"], p["b"]) for p in result.pairs] == [("A", "B"), ("A", "C"), ("B", "C")]
    a_c = result.pairs[1]
    assert (a_c["only_a"], a_c["only_b"], a_c["n_paired"]) == (2, 1, 13)  # docs 0, 10 vs doc 11
    assert result.runs[2]["n"] == 14
    assert list(result.rows.columns) == ["doc_id", "question", "gold"] + [
        f"{c}_{letter}" for letter in "ABC" for c in ("correct", "answer", "tokens", "truncated")]


def test_only_c_needs_three_runs(runs):
    with pytest.raises(ValueError, match="needs 3 runs"):
        run_compare(list(runs[:2]), outcome="only-c")
    with pytest.raises(ValueError):
        run_compare(list(runs[:2]), outcome="sometimes")


def test_search_question_gold_and_answers(runs):
    ids = list(runs[:2])
    assert docs(run_compare(ids, search="ITEM 1.")) == [1]
    assert docs(run_compare(ids, search="zz")) == [11]  # B's extracted answer
    assert docs(run_compare(ids, search="12")) == [12]
    assert docs(run_compare(ids, search="zz", outcome="all-correct")) == []


def test_pagination(runs):
    ids = list(runs[:2])
    first = run_compare(ids, page=1, page_size=4)
    assert (first.total, first.pages, first.page, docs(first)) == (13, 4, 1, [0, 1, 2, 3])
    last = run_compare(ids, page=99, page_size=4)
    assert (last.page, docs(last)) == (4, [12])
    row = last.rows.iloc[0]
    assert row["gold"] == "12" and row["answer_A"] == "x" and bool(row["truncated_A"]) and row["tokens_B"] == 22
    assert row["question"].startswith("Question about item 12.") and len(row["question"]) <= 300
    empty = run_compare(ids, outcome="only-a", search="nothing matches")
    assert (empty.total, empty.pages, empty.page, len(empty.rows)) == (0, 1, 1, 0)


def test_compare_sample_full_texts_and_neighbours(runs):
    ids = list(runs[:2])
    with read_session() as session:
        sample = compare_sample(session, ids, TASK, 3, outcome="only-b")
        first = compare_sample(session, ids, TASK, 1, outcome="only-b")
        last = compare_sample(session, ids, TASK, 8, outcome="only-b")
        outside = compare_sample(session, ids, TASK, 10, outcome="only-b")
        unfiltered = compare_sample(session, ids, TASK, 0)
        missing = compare_sample(session, ids, TASK, 99)
    assert sample["question"] == LONG_PROMPT.format(doc=3)  # full, beyond the 2000-character preview
    assert (sample["doc_id"], sample["gold"], sample["prev"], sample["next"]) == (3, "3", 2, 4)
    run_a, run_b = sample["runs"]
    assert (run_a["letter"], run_a["correct"], run_a["answer"], run_a["reasoning"]) == (
        "A", False, "The answer is x", "reasoning 3")
    assert run_b["output"] == "<think>reasoning 3</think>The answer is 3" and run_b["correct"] is True
    assert (run_b["output_tokens"], run_b["thinking_tokens"], run_b["finish_reason"], run_b["truncated"]) == (
        13, 3, "stop", False)
    assert (first["prev"], first["next"], last["prev"], last["next"]) == (None, 2, 7, None)
    assert (outside["prev"], outside["next"]) == (8, None)  # a doc outside the filter still navigates
    assert (unfiltered["prev"], unfiltered["next"]) == (None, 1)
    assert missing is None


def test_picking_runs_and_shared_tasks(runs):
    a, b, c = runs
    with read_session() as session:
        listed = comparable_runs(session)
        arith = comparable_runs(session, TASK)
        mc = comparable_runs(session, "synthetic-mc")
        assert shared_tasks(session, [a, b]) == [TASK]
        assert shared_tasks(session, [a]) == sorted([TASK, "synthetic-mc"])
        assert shared_tasks(session, []) == []
    assert [r["job_id"] for r in listed] == [c, b, a]
    assert listed[2]["tasks"] == sorted([TASK, "synthetic-mc"]) and "magnitude" in listed[2]["label"]
    assert [r["job_id"] for r in arith] == [c, b, a]
    assert [r["job_id"] for r in mc] == [a]
