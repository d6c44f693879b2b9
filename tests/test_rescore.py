"""`python -m jobs rescore`: stored outputs scored again with the current scorers, no model."""
from __future__ import annotations

import json
import math

import pytest
from sqlalchemy import select

from backend.evaluation import scoring
from backend.config import validate_config
from backend.evaluation.harness import comparability_key
from backend.result import RunResult, SampleRecord, ScoreRecord
from backend.tasks import get_task
from db import queries
from db.schema import Job, Sample, Score
from db.session import dispose_engines, read_session
from jobs import queue
from jobs.cli import main
from jobs.rescore import NOT_RESCORABLE, rescore
from jobs.states import InvalidTransition, JobNotFound

ARITH_OUTPUTS = {0: ("17 + 25 = 42", "42"), 1: ("It is 12, I think", "12"), 2: ("9 - 3 = 5", "6")}
KEY_FIELDS = {"task": "synthetic-arith", "docs": 3, "scorer": scoring.SCORER_VERSION}


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    dispose_engines()


def arith(doc_id: int) -> SampleRecord:
    output, gold = ARITH_OUTPUTS[doc_id]
    extracted = scoring.extract_flexible(output)
    em = scoring.exact_match(extracted, gold)
    return SampleRecord("synthetic-arith", doc_id, f"Q{doc_id}", output, extracted, gold, bool(em), 9, 6,
                        {"exact_match": em}, answer=output, finish_reason="stop")


def mc(doc_id: int, correct: bool) -> SampleRecord:
    return SampleRecord("synthetic-mc", doc_id, "The capital of France is", "* [0] -1.0 Paris\n  [1] -3.0 Rome",
                        "0", "0" if correct else "1", correct, 5, 1, {"acc": float(correct)})


def stored_run(paradigm: str = "instruct", seed: int = 0, extra=(), generation=None) -> int:
    """`generation`: the task manifest's generation record (think runs keep their markers there)."""
    samples = [arith(i) for i in range(3)] + [mc(0, True), mc(1, False)] + list(extra)
    scores = [
        ScoreRecord("synthetic-arith", "exact_match", 2 / 3, 1 / 3, True, True, comparability_key(KEY_FIELDS)),
        ScoreRecord("synthetic-mc", "acc", 0.5, 0.5, True, True, "mc-key"),
    ]
    arith_manifest = {"key_fields": KEY_FIELDS, "comparability_key": comparability_key(KEY_FIELDS),
                      "scorer_version": scoring.SCORER_VERSION}
    if generation is not None:
        arith_manifest["generation"] = generation
    manifest = {"tasks": {"synthetic-arith": arith_manifest}}
    config = validate_config({"model": "builtin:noop", "paradigm": paradigm, "tasks": ["synthetic-arith"], "seed": seed})
    job, _ = queue.submit(config)
    claimed = queue.claim_next("w")
    assert queue.complete(job.id, claimed.attempts, RunResult(scores, samples, {}, {}, manifest))
    return job.id


def first_number(text):
    """A deliberately different extractor: the FIRST number of the text."""
    match = scoring.NUMBER_RE.search(text or "")
    return scoring.normalize_number(match.group(0)) if match else None


def rows(job_id: int, task: str):
    with read_session() as session:
        samples = session.scalars(select(Sample).where(Sample.job_id == job_id, Sample.task == task).order_by(Sample.doc_id)).all()
        scores = {s.metric: s for s in session.scalars(select(Score).where(Score.job_id == job_id, Score.task == task))}
        return samples, scores


def test_rescore_after_a_scorer_change_updates_samples_and_scores(monkeypatch):
    job_id = stored_run()
    mc_before = rows(job_id, "synthetic-mc")
    assert [s.correct for s in rows(job_id, "synthetic-arith")[0]] == [True, True, False]

    with monkeypatch.context() as patch:
        patch.setattr(scoring, "extract_flexible", first_number)
        patch.setattr(scoring, "SCORER_VERSION", "test-2")
        report = rescore(job_id)

    samples, scores = rows(job_id, "synthetic-arith")
    # first numbers: 17 (gold 42), 12 (gold 12), 9 (gold 6)
    assert [(s.extracted, s.correct, s.metrics_json) for s in samples] == [
        ("17", False, {"exact_match": 0.0}), ("12", True, {"exact_match": 1.0}), ("9", False, {"exact_match": 0.0})]
    em = scores["exact_match"]
    assert em.value == pytest.approx(1 / 3)
    assert em.stderr == pytest.approx(math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2 / 3))  # sample sd / sqrt(n)
    assert em.scorer_version == "test-2"
    assert em.comparability_key == comparability_key({**KEY_FIELDS, "scorer": "test-2"}) != comparability_key(KEY_FIELDS)

    mc_after = rows(job_id, "synthetic-mc")  # log-likelihood task untouched
    assert [(s.extracted, s.correct, s.metrics_json) for s in mc_after[0]] == [
        (s.extracted, s.correct, s.metrics_json) for s in mc_before[0]]
    assert (mc_after[1]["acc"].value, mc_after[1]["acc"].scorer_version) == (0.5, mc_before[1]["acc"].scorer_version)

    by_task = {t["task"]: t for t in report["tasks"]}
    assert report["scorer_version"] == "test-2"
    assert by_task["synthetic-mc"] == {"task": "synthetic-mc", "rescored": False, "reason": NOT_RESCORABLE}
    arith_report = by_task["synthetic-arith"]
    assert (arith_report["samples"], arith_report["changed"], arith_report["truncated_traces"]) == (3, 2, 0)
    assert arith_report["scores"][0]["old"] == pytest.approx(2 / 3) and arith_report["scores"][0]["new"] == pytest.approx(1 / 3)
    with read_session() as session:
        job = session.get(Job, job_id)
        assert job.trace_stats_json["synthetic-arith"]["accuracy"] == pytest.approx(1 / 3)
        assert "synthetic-mc" not in job.trace_stats_json  # log-likelihood samples have no generation stats
        assert job.manifest_json["tasks"]["synthetic-arith"]["scorer_version"] == "test-2"
        assert queries.job_detail(session, job_id)["scores"][0]["scorer_version"] == "test-2"

    rescore(job_id)  # the original scorer gives the original scores back
    samples, scores = rows(job_id, "synthetic-arith")
    assert [s.correct for s in samples] == [True, True, False] and scores["exact_match"].value == pytest.approx(2 / 3)
    assert scores["exact_match"].comparability_key == comparability_key(KEY_FIELDS)


def test_rescore_reads_the_full_stored_output_and_strips_reasoning_in_think_runs():
    reasoning = "Let me think. " + "We try 7, then 9. " * 500  # far longer than the preview in `samples`
    output = f"<think>{reasoning}</think>So it is 42"
    long_one = SampleRecord("synthetic-arith", 3, "Q3", output, "42", "42", True, 9, 3000, {"exact_match": 1.0})
    job_id = stored_run(paradigm="think", extra=[long_one])
    with read_session() as session:
        assert len(session.scalar(select(Sample.output).where(Sample.doc_id == 3))) < len(output)
    report = rescore(job_id)
    samples, _ = rows(job_id, "synthetic-arith")
    assert (samples[3].extracted, samples[3].correct) == ("42", True)  # the answer after </think>, not a "9"
    assert report["tasks"][0]["changed"] == 0


def answerless(doc_id: int, output: str, gold: str = "42") -> SampleRecord:
    """A think sample stored without its answer part, scored correct (as by a looser reader)."""
    return SampleRecord("synthetic-arith", doc_id, f"Q{doc_id}", output, gold, gold, True, 9, 30,
                        {"exact_match": 1.0}, answer=None)


def test_rescore_of_a_truncated_prompted_think_trace_finds_no_answer():
    # Prompted thinking prefills `<think>` in the prompt: the output has only the end marker, and
    # here not even that (the budget ran out), so evaluation read no answer from it.
    generation = {"think_markers": ["<think>", "</think>"],
                  "think_prompt": {"instruction": "Think first.", "prefill": "<think>\n", "close_at_end_of_turn": "\n</think>\n"}}
    job_id = stored_run(paradigm="think", extra=[answerless(3, "Let me try 6 * 7 = 42, or maybe")], generation=generation)
    rescore(job_id)
    samples, scores = rows(job_id, "synthetic-arith")
    assert (samples[3].extracted, samples[3].correct, samples[3].metrics_json) == (None, False, {"exact_match": 0.0})
    assert scores["exact_match"].value == pytest.approx(2 / 4)


def test_rescore_reads_answers_after_the_markers_the_run_recorded():
    generation = {"think_markers": ["<seed:think>", "</seed:think>"]}
    finished = answerless(3, "<seed:think>Qwen would open with <think>; 6 * 7 = 41? No.</seed:think>So it is 42")
    truncated = answerless(4, "<seed:think>6 * 7 = 42, I guess")
    job_id = stored_run(paradigm="think", extra=[finished, truncated], generation=generation)
    rescore(job_id)
    samples, _ = rows(job_id, "synthetic-arith")
    assert [(s.extracted, s.correct) for s in samples[3:]] == [("42", True), (None, False)]


def test_gsm8k_rescore_scores_both_filters():
    spec = get_task("gsm8k")
    sample = SampleRecord("gsm8k", 0, "Q", "x", None, "18", None, 1, 1, {},
                          answer="She sells 16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18 dollars, or 20")
    extracted, metrics = spec.rescore(sample)
    assert extracted == "20"
    assert metrics == {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 0.0}
    assert get_task("synthetic-arith").rescore is not None and get_task("synthetic-mc").rescore is None


def test_rescore_refuses_unknown_and_unfinished_runs(capsys):
    with pytest.raises(JobNotFound):
        rescore(404)
    job, _ = queue.submit(validate_config({"model": "builtin:noop", "tasks": ["synthetic-arith"]}))
    with pytest.raises(InvalidTransition, match="only succeeded runs"):
        rescore(job.id)

    assert main(["rescore", "404"]) == 2
    assert capsys.readouterr().err.strip() == "error: no job with id 404"
    assert main(["rescore", str(job.id)]) == 1
    assert "queued; only succeeded runs can be rescored" in capsys.readouterr().err


def test_rescore_command(capsys, monkeypatch):
    job_id = stored_run(seed=1)
    assert main(["rescore", str(job_id), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["id"] == job_id and {t["task"] for t in report["tasks"]} == {"synthetic-arith", "synthetic-mc"}
    monkeypatch.setattr(scoring, "extract_flexible", first_number)
    assert main(["rescore", str(job_id)]) == 0
    out = capsys.readouterr().out
    assert "synthetic-arith: 3 samples, 2 changed" in out and "0.6667 -> 0.3333" in out
    assert f"synthetic-mc: {NOT_RESCORABLE}" in out
