"""Sample-level comparison of 2 or 3 runs on one task: outcome filters, search, pagination, the
paired statistics of each pair of runs and one sample's full texts side by side.

Runs are lettered A, B, C in the order given. The sample list holds the docs every run has, in
doc order. Outcomes (`OUTCOMES`): `all-correct` / `all-wrong`; `only-a` (only A correct; likewise
`only-b`, `only-c`); `answers-differ` (the extracted answers, stripped, are not all equal). A sample
with undefined correctness counts as not correct in the filters and is left out of the statistics.

Statistics per pair (a, b), over the docs both scored: `diff` = accuracy of b - accuracy of a with
a paired bootstrap 95 % interval (resampling docs, `BOOTSTRAP_RESAMPLES`, seed 0, percentile
method) and the exact two-sided McNemar test on the discordant docs (`only_a`: a right and b wrong).
A run's own `accuracy` and `n` are over all its scored samples of the task.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from db.schema import Job, Sample, Score
from db.states import JobState

__all__ = [
    "OUTCOMES", "LETTERS", "BOOTSTRAP_RESAMPLES", "Comparison", "comparable_runs", "shared_tasks", "compare",
    "compare_sample", "paired_bootstrap", "mcnemar_exact",
]

OUTCOMES = ("all", "all-correct", "only-a", "only-b", "only-c", "all-wrong", "answers-differ")
LETTERS = ("A", "B", "C")
BOOTSTRAP_RESAMPLES = 2000
QUESTION_PREVIEW_CHARS = 300
ANSWER_PREVIEW_CHARS = 200


@dataclass
class Comparison:
    runs: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    rows: pd.DataFrame
    total: int
    page: int
    pages: int
    page_size: int


# --- picking runs -----------------------------------------------------------------------------


def comparable_runs(session: Session, task: str | None = None) -> list[dict[str, Any]]:
    """Succeeded runs with stored samples, newest first: job_id, label, model, tasks (those with samples)."""
    with_samples = exists().where(Sample.job_id == Score.job_id, Sample.task == Score.task)
    query = (
        select(Job.id, Job.model, Job.paradigm, Job.method, Job.sparsity, Score.task)
        .join(Score, Score.job_id == Job.id)
        .where(Job.state == JobState.SUCCEEDED, Job.hidden.is_(False), Score.is_primary.is_(True), with_samples)
        .order_by(Job.id.desc(), Score.task)
    )
    if task is not None:
        query = query.where(Score.task == task)
    runs: dict[int, dict[str, Any]] = {}
    for job_id, model, paradigm, method, sparsity, task_name in session.execute(query):
        run = runs.setdefault(job_id, {"job_id": job_id, "label": _label(job_id, model, paradigm, method, sparsity),
                                       "model": model, "tasks": []})
        run["tasks"].append(task_name)
    return list(runs.values())


def shared_tasks(session: Session, job_ids: Sequence[int]) -> list[str]:
    """Tasks for which every one of `job_ids` has stored samples, sorted."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return []
    rows = session.execute(
        select(Sample.task).where(Sample.job_id.in_(ids)).group_by(Sample.task)
        .having(func.count(func.distinct(Sample.job_id)) == len(ids))
        .order_by(Sample.task)
    )
    return [task for (task,) in rows]


# --- comparing --------------------------------------------------------------------------------


def compare(session: Session, job_ids: Sequence[int], task: str, outcome: str = "all", search: str = "",
            page: int = 1, page_size: int = 25) -> Comparison:
    """The runs' header, the statistics of each pair and one page of the filtered sample list."""
    ids = _check_runs(job_ids, outcome)
    page_size = max(1, int(page_size))
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids), Job.hidden.is_(False)))}
    missing = [job_id for job_id in ids if job_id not in jobs]
    if missing:
        raise ValueError(f"no such job: {', '.join(map(str, missing))}")
    samples = _samples(session, ids, task, full_question=bool(search.strip()))
    docs = _paired_docs(samples, ids)

    runs = []
    for letter, job_id in zip(LETTERS, ids):
        scored = [s["correct"] for s in samples[job_id].values() if s["correct"] is not None]
        job = jobs[job_id]
        runs.append({"letter": letter, "job_id": job_id, "model": job.model, "paradigm": job.paradigm,
                     "method": job.method, "sparsity": job.sparsity,
                     "label": _label(job_id, job.model, job.paradigm, job.method, job.sparsity),
                     "accuracy": sum(scored) / len(scored) if scored else None, "n": len(scored)})
    pairs = [_pair_stats(samples, docs, ids, i, j) for i, j in combinations(range(len(ids)), 2)]

    selected = _select(samples, docs, ids, outcome, search)
    total = len(selected)
    pages = max(1, math.ceil(total / page_size))
    page = min(max(1, int(page)), pages)
    shown = selected[(page - 1) * page_size: page * page_size]
    return Comparison(runs=runs, pairs=pairs, rows=_rows(samples, shown, ids), total=total, page=page,
                      pages=pages, page_size=page_size)


def compare_sample(session: Session, job_ids: Sequence[int], task: str, doc_id: int, outcome: str = "all",
                   search: str = "") -> dict[str, Any] | None:
    """One sample of every run with full texts (db.queries.sample_trace); `prev` / `next` are the
    neighbouring doc ids within the list filtered by `outcome` and `search` (None at the ends), and
    `position` is the doc's 0-based index in that list (None when the filter leaves it out), so a
    caller can tell which page of `compare` lists it. None when a run lacks the sample."""
    from db.queries import sample_trace

    ids = _check_runs(job_ids, outcome)
    if session.scalar(select(func.count()).select_from(Job).where(Job.id.in_(ids), Job.hidden.is_(False))) < len(ids):
        return None  # a hidden (moderated) or missing run
    samples = _samples(session, ids, task, full_question=bool(search.strip()))
    if any(doc_id not in samples[job_id] for job_id in ids):
        return None
    selected = _select(samples, _paired_docs(samples, ids), ids, outcome, search)
    before = [d for d in selected if d < doc_id]
    after = [d for d in selected if d > doc_id]
    runs, question = [], None
    for letter, job_id in zip(LETTERS, ids):
        sample = samples[job_id][doc_id]
        trace = sample_trace(session, job_id, task, doc_id) or {}
        if question is None:
            question = trace.get("prompt", sample["question"])
        runs.append({
            "letter": letter, "job_id": job_id, "reasoning": trace.get("reasoning"), "answer": trace.get("answer"),
            "output": trace.get("output"), "extracted": sample["extracted"], "correct": sample["correct"],
            "output_tokens": sample["output_tokens"], "thinking_tokens": sample["thinking_tokens"],
            "truncated": sample["truncated"], "finish_reason": sample["finish_reason"],
            "truncated_for_storage": trace.get("truncated_for_storage", False),
        })
    return {"question": question, "gold": samples[ids[0]][doc_id]["gold"], "doc_id": doc_id,
            "prev": before[-1] if before else None, "next": after[0] if after else None,
            "position": len(before) if doc_id in selected else None, "runs": runs}


# --- statistics -------------------------------------------------------------------------------


def paired_bootstrap(a, b, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean(b) - mean(a), 2.5th and 97.5th percentile of the same difference over `n_resamples`
    resamples of the pairs with replacement). NaNs when there are no pairs."""
    diffs = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if diffs.size == 0:
        return math.nan, math.nan, math.nan
    # Resampling n pairs with replacement = multinomial counts over the distinct differences (the
    # same distribution), so the cost grows with the distinct values (3 for 0/1 correctness), not n.
    values, counts = np.unique(diffs, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(diffs.size, counts / diffs.size, size=n_resamples)
    means = draws @ values / diffs.size
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: 2 x P(X <= min) for X ~ Binomial(only_a + only_b, 1/2), capped at 1."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


# --- helpers ----------------------------------------------------------------------------------


def _check_runs(job_ids: Sequence[int], outcome: str) -> list[int]:
    ids = [int(job_id) for job_id in dict.fromkeys(job_ids)]
    if not 1 <= len(ids) <= len(LETTERS):
        raise ValueError(f"compare takes 1 to {len(LETTERS)} different runs, got {len(ids)}")
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    if outcome.startswith("only-") and LETTERS.index(outcome[-1].upper()) >= len(ids):
        raise ValueError(f"outcome {outcome!r} needs {LETTERS.index(outcome[-1].upper()) + 1} runs")
    return ids


def _samples(session: Session, ids: list[int], task: str, full_question: bool) -> dict[int, dict[int, dict]]:
    """job id -> doc id -> the sample's listing fields (previews)."""
    question = Sample.prompt if full_question else func.substr(Sample.prompt, 1, QUESTION_PREVIEW_CHARS)
    rows = session.execute(
        select(Sample.job_id, Sample.doc_id, Sample.correct, Sample.extracted, Sample.answer, Sample.gold,
               Sample.output_tokens, Sample.thinking_tokens, Sample.truncated, Sample.finish_reason, question)
        .where(Sample.job_id.in_(ids), Sample.task == task)
    ).all()
    samples: dict[int, dict[int, dict]] = {job_id: {} for job_id in ids}
    for (job_id, doc_id, correct, extracted, answer, gold, output_tokens, thinking_tokens, truncated,
         finish_reason, text) in rows:
        samples[job_id][doc_id] = {
            "correct": None if correct is None else bool(correct), "extracted": extracted, "answer": answer,
            "gold": gold, "output_tokens": output_tokens, "thinking_tokens": thinking_tokens,
            "truncated": bool(truncated), "finish_reason": finish_reason, "question": text,
        }
    return samples


def _paired_docs(samples: dict[int, dict[int, dict]], ids: list[int]) -> list[int]:
    docs = set(samples[ids[0]])
    for job_id in ids[1:]:
        docs &= set(samples[job_id])
    return sorted(docs)


def _select(samples, docs: list[int], ids: list[int], outcome: str, search: str) -> list[int]:
    needle = search.strip().lower()
    selected = []
    for doc in docs:
        row = [samples[job_id][doc] for job_id in ids]
        correct = [s["correct"] is True for s in row]
        if outcome == "all-correct" and not all(correct):
            continue
        if outcome == "all-wrong" and any(correct):
            continue
        if outcome.startswith("only-"):
            wanted = LETTERS.index(outcome[-1].upper())
            if correct != [i == wanted for i in range(len(ids))]:
                continue
        if outcome == "answers-differ" and len({_answer_key(s) for s in row}) < 2:
            continue
        if needle and not _found(needle, row):
            continue
        selected.append(doc)
    return selected


def _answer_key(sample: dict) -> str:
    return (sample["extracted"] or "").strip()


def _found(needle: str, row: list[dict]) -> bool:
    texts = [row[0]["question"], row[0]["gold"]]
    for sample in row:
        texts += [sample["extracted"], sample["answer"]]
    return any(needle in text.lower() for text in texts if text)


def _pair_stats(samples, docs: list[int], ids: list[int], i: int, j: int) -> dict[str, Any]:
    first, second = samples[ids[i]], samples[ids[j]]
    scored = [d for d in docs if first[d]["correct"] is not None and second[d]["correct"] is not None]
    a = np.fromiter((first[d]["correct"] for d in scored), dtype=np.int8, count=len(scored))
    b = np.fromiter((second[d]["correct"] for d in scored), dtype=np.int8, count=len(scored))
    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    diff, low, high = paired_bootstrap(a, b)
    return {"a": LETTERS[i], "b": LETTERS[j], "job_a": ids[i], "job_b": ids[j], "n_paired": len(scored),
            "diff": diff, "ci_low": low, "ci_high": high, "only_a": only_a, "only_b": only_b,
            "mcnemar_p": mcnemar_exact(only_a, only_b)}


def _rows(samples, docs: list[int], ids: list[int]) -> pd.DataFrame:
    columns = ["doc_id", "question", "gold"]
    for letter in LETTERS[:len(ids)]:
        columns += [f"correct_{letter}", f"answer_{letter}", f"tokens_{letter}", f"truncated_{letter}"]
    rows = []
    for doc in docs:
        first = samples[ids[0]][doc]
        row: dict[str, Any] = {"doc_id": doc, "question": _preview(first["question"], QUESTION_PREVIEW_CHARS),
                               "gold": first["gold"]}
        for letter, job_id in zip(LETTERS, ids):
            sample = samples[job_id][doc]
            answer = sample["extracted"] if sample["extracted"] is not None else sample["answer"]
            row[f"correct_{letter}"] = sample["correct"]
            row[f"answer_{letter}"] = _preview(answer, ANSWER_PREVIEW_CHARS)
            row[f"tokens_{letter}"] = sample["output_tokens"]
            row[f"truncated_{letter}"] = sample["truncated"]
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _preview(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _label(job_id: int, model: str, paradigm: str, method: str, sparsity: float) -> str:
    return f"#{job_id} {model} ({paradigm}) · {method} {sparsity:g}"
