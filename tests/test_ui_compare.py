"""The Compare tab's rendering (ui.compare_view) and its state from the URL, without a browser."""
from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from backend.config import validate_config
from backend.result import RunResult, SampleRecord, ScoreRecord
from jobs import queue
from ui import compare_view as cv

HOSTILE = ('<script>window.__pwned=1</script> <img src=x onerror="window.__pwned2=1"> '
           "[x](javascript:window.__pwned3=1)")
N_DOCS = 30


def _inert(html_text: str) -> None:
    """No element came from the hostile text: it is all entities and characters."""
    assert "<script" not in html_text
    assert "<img" not in html_text
    assert "<a " not in html_text and "href=" not in html_text
    assert "onerror=\"" not in html_text.replace("onerror=&quot;", "")


# --- URL parameters ---------------------------------------------------------------------------------


def test_parse_query_reads_the_documented_url():
    q = cv.parse_query({"tab": "compare", "runs": "1,2", "task": "gsm8k", "outcome": "only-a", "doc": "3"})
    assert (q.tab, q.runs, q.task, q.outcome, q.doc, q.page) == ("compare", [1, 2], "gsm8k", "only-a", 3, 1)


@pytest.mark.parametrize("params, expected", [
    ({"runs": "1,x,2,2,5,6"}, {"runs": [1, 2, 5]}),  # ints only, distinct, at most three
    ({"runs": "-1,0,<script>"}, {"runs": []}),
    ({"outcome": "javascript:alert(1)"}, {"outcome": "all"}),
    ({"outcome": "ONLY-B"}, {"outcome": "only-b"}),
    ({"doc": "-4", "page": "0"}, {"doc": None, "page": 1}),
    ({"doc": "abc", "page": "3"}, {"doc": None, "page": 3}),
    ({"runs": ["4,5"], "task": ["  "]}, {"runs": [4, 5], "task": None}),
    ({"tab": "queue", "job": "12"}, {"tab": "queue", "job": 12}),
    ({}, {"runs": [], "task": None, "outcome": "all", "tab": None, "job": None}),
])
def test_parse_query_drops_malformed_values(params, expected):
    query = cv.parse_query(params)
    for name, value in expected.items():
        assert getattr(query, name) == value, name


def test_query_string_round_trips():
    query = cv.CompareQuery(runs=[3, 1], task="gsm8k", outcome="answers-differ", search="a&b <c>", page=2, doc=7)
    text = cv.query_string(query)
    assert text.startswith("?tab=compare&runs=3,1&task=gsm8k") and "<" not in text and " " not in text
    back = cv.parse_query({k: v for k, v in parse_qs(urlsplit(text).query).items()})
    assert (back.runs, back.task, back.outcome, back.search, back.page, back.doc) == (
        [3, 1], "gsm8k", "answers-differ", "a&b <c>", 2, 7)


def test_outcomes_match_the_database_module():
    from db import compare as compare_db

    assert cv.OUTCOMES == compare_db.OUTCOMES
    assert set(cv.OUTCOME_LABELS) == set(cv.OUTCOMES)


# --- renderers ----------------------------------------------------------------------------------------


def _run(letter, **changes):
    run = {"letter": letter, "job_id": ord(letter) - 64, "reasoning": f"think {HOSTILE}", "answer": f"ans {HOSTILE}",
           "output": f"out {HOSTILE}", "correct": letter == "A", "output_tokens": 120, "thinking_tokens": 80,
           "truncated": letter == "B", "finish_reason": "length"}
    return {**run, **changes}


def test_render_sample_is_inert_and_collapses_reasoning():
    sample = {"question": f"Q {HOSTILE}", "gold": HOSTILE, "doc_id": 4, "prev": 3, "next": 5,
              "runs": [_run("A"), _run("B"), _run("C", correct=None, thinking_tokens=None)]}
    html_text = cv.render_sample(sample)
    _inert(html_text)
    assert html_text.count("&lt;script&gt;") == 1 + 1 + 3 * 3  # question, gold, 3 texts per run
    assert html_text.count('<details class="pb-reasoning">') == 3 and "<details open" not in html_text
    assert "pb-badge-correct" in html_text and "pb-badge-wrong" in html_text and "pb-badge-unscored" in html_text
    assert "truncated (length)" in html_text and html_text.count("truncated (") == 1
    assert "120 output tokens · 80 thinking" in html_text


def test_render_diff_escapes_and_marks_changes():
    diff = cv.render_diff(f"so the answer is 4 {HOSTILE}", f"so the answer is 5 {HOSTILE}", "A", "B")
    _inert(diff)
    assert "<del>4</del>" in diff and "<ins>5</ins>" in diff
    long = cv.render_diff("x " * (cv.DIFF_MAX_WORDS + 10), "y")
    assert f"first {cv.DIFF_MAX_WORDS:,} words" in long
    sample = {"runs": [_run("A", reasoning="a b c", output="d"), _run("B", reasoning="a x c", output="d")]}
    assert "<del>b</del>" in cv.render_sample_diff(sample, None)
    assert cv.diff_pairs(["A", "B", "C"]) == ["A vs B", "A vs C", "B vs C"]


def test_render_header_shows_accuracy_ci_and_mcnemar():
    comparison = SimpleNamespace(
        runs=[{"letter": "A", "job_id": 1, "model": "m<b>", "method": "dense", "sparsity": 0.0, "accuracy": 0.65, "n": 40},
              {"letter": "B", "job_id": 2, "model": "m", "method": "wanda", "sparsity": 0.5, "accuracy": 0.5, "n": 40}],
        pairs=[{"a": "A", "b": "B", "n_paired": 40, "diff": -0.15, "ci_low": -0.375, "ci_high": 0.075,
                "only_a": 13, "only_b": 7, "mcnemar_p": 0.0004}])
    header = cv.render_header(comparison)
    assert "65.0%" in header and "−15.0 pt" not in header and "-15.0 pt" in header
    assert "[-37.5 pt, +7.5 pt]" in header and "13 / 7" in header and "&lt; 0.001" in header
    assert "m&lt;b&gt;" in header


def test_list_frame_marks_correctness():
    rows = pd.DataFrame([{"doc_id": 1, "question": "q " * 200, "gold": "4", "correct_A": True, "answer_A": "4",
                          "correct_B": False, "answer_B": HOSTILE, "correct_C": None, "answer_C": None}])
    frame = cv.list_frame(rows, ["A", "B", "C"])
    assert list(frame.columns) == ["doc", "question", "gold", "A", "B", "C"]
    first = frame.iloc[0]
    assert first["A"] == "✓ 4" and first["B"].startswith("✗ <script>") and first["C"] == "? "
    assert len(first["question"]) <= 160


# --- the whole view, from a seeded database ---------------------------------------------------------------


def _seed(method: str, sparsity: float, correct) -> int:
    config = validate_config({"model": "builtin:tiny-llama", "tasks": ["synthetic-arith"],
                              "pruning": {"method": method, "sparsity": sparsity}})
    queue.submit(config, force=True)
    claimed = queue.claim_next("seed")
    samples = [
        SampleRecord(task="synthetic-arith", doc_id=i, prompt=f"What is {i}+{i}? {HOSTILE}",
                     output=f"{HOSTILE} so {2 * i if correct(i) else 0}", extracted=str(2 * i if correct(i) else 0),
                     gold=str(2 * i), correct=correct(i), prompt_tokens=5, output_tokens=12,
                     metrics={"acc": float(correct(i))}, reasoning=f"think {HOSTILE}", answer=str(2 * i if correct(i) else 0),
                     finish_reason="stop", thinking_tokens=4)
        for i in range(N_DOCS)
    ]
    accuracy = sum(correct(i) for i in range(N_DOCS)) / N_DOCS
    result = RunResult(scores=[ScoreRecord("synthetic-arith", "acc", accuracy, 0.01, True, True, "k")],
                       samples=samples, efficiency={}, prune_report={}, manifest={})
    assert queue.complete(claimed.id, claimed.attempts, result)
    return claimed.id


def test_build_view_filters_and_renders_a_seeded_comparison():
    a, b = _seed("dense", 0.0, lambda i: i % 3 != 0), _seed("magnitude", 0.5, lambda i: i % 2 == 0)
    only_a = [i for i in range(N_DOCS) if i % 3 != 0 and i % 2 != 0]
    view = cv.build_view(cv.CompareQuery(runs=[a, b], outcome="only-a"))
    assert view.query.task == "synthetic-arith" and view.task_choices == ["synthetic-arith"]
    assert view.rows["doc"].tolist() == only_a
    assert view.query.doc == only_a[0]  # the first listed sample is shown
    assert view.next_doc == only_a[1] and view.prev_doc is None  # neighbours within the filter
    assert f"of {len(only_a)}" in view.page_info
    _inert(view.header + view.sample + view.diff)
    assert "66.7%" in view.header and "50.0%" in view.header
    assert view.link == f"?tab=compare&runs={a},{b}&task=synthetic-arith&outcome=only-a&doc={only_a[0]}"
    both_wrong = cv.build_view(cv.CompareQuery(runs=[a, b], outcome="all-wrong"))
    assert both_wrong.rows["doc"].tolist() == [i for i in range(N_DOCS) if i % 6 == 3]
    # Only C needs three runs: with two the filter falls back to all.
    assert cv.build_view(cv.CompareQuery(runs=[a, b], outcome="only-c")).query.outcome == "all"
    paged = cv.build_view(cv.CompareQuery(runs=[a, b], page=99))
    assert paged.query.page == 2 and len(paged.rows) == N_DOCS - cv.PAGE_SIZE
    explicit = cv.build_view(cv.CompareQuery(runs=[a, b], doc=4))
    assert "(doc 4)" in explicit.sample and explicit.prev_doc == 3 and explicit.next_doc == 5
    nothing = cv.build_view(cv.CompareQuery(runs=[a, b], search="no such text"))
    assert "No sample matches" in nothing.sample and nothing.rows.empty


def test_stepping_past_a_page_end_lists_the_page_of_the_shown_sample(monkeypatch):
    monkeypatch.setattr(cv, "PAGE_SIZE", 10)  # 30 docs: pages 0-9, 10-19, 20-29
    a, b = _seed("dense", 0.0, lambda i: i % 3 != 0), _seed("magnitude", 0.5, lambda i: i % 2 == 0)
    last_of_first = cv.build_view(cv.CompareQuery(runs=[a, b], page=1, doc=9))
    assert last_of_first.query.page == 1 and last_of_first.next_doc == 10
    # The tab passes the list page it shows with the neighbour's doc; the doc decides the page.
    stepped = cv.build_view(cv.CompareQuery(runs=[a, b], page=1, doc=last_of_first.next_doc))
    assert "(doc 10)" in stepped.sample
    assert stepped.query.page == 2 and stepped.rows["doc"].tolist() == list(range(10, 20))
    assert "Samples 11–20 of 30 · page 2 of 3" == stepped.page_info
    assert stepped.has_previous_page and stepped.has_next_page
    back = cv.build_view(cv.CompareQuery(runs=[a, b], page=2, doc=stepped.prev_doc))
    assert "(doc 9)" in back.sample and back.query.page == 1 and back.rows["doc"].tolist() == list(range(10))
    assert not back.has_previous_page and back.has_next_page
    # Pages count positions in the filtered list, not doc ids.
    monkeypatch.setattr(cv, "PAGE_SIZE", 4)
    only_a = [i for i in range(N_DOCS) if i % 3 != 0 and i % 2 != 0]  # 1 5 7 11 | 13 17 19 23 | 25 29
    filtered = cv.build_view(cv.CompareQuery(runs=[a, b], outcome="only-a", page=1, doc=only_a[3]))
    assert filtered.query.page == 1 and filtered.next_doc == only_a[4]
    filtered_next = cv.build_view(cv.CompareQuery(runs=[a, b], outcome="only-a", page=1, doc=filtered.next_doc))
    assert filtered_next.query.page == 2 and filtered_next.rows["doc"].tolist() == only_a[4:8]
    assert "page 2 of 3" in filtered_next.page_info


def test_doc_in_the_url_opens_the_list_page_that_holds_it(monkeypatch):
    monkeypatch.setattr(cv, "PAGE_SIZE", 10)
    a, b = _seed("dense", 0.0, lambda i: i % 3 != 0), _seed("magnitude", 0.5, lambda i: i % 2 == 0)
    view = cv.build_view(cv.parse_query({"tab": "compare", "runs": f"{a},{b}", "page": "1", "doc": "25"}))
    assert "(doc 25)" in view.sample
    assert view.query.page == 3 and view.rows["doc"].tolist() == list(range(20, 30))
    assert "page 3 of 3" in view.page_info and "page=3" in view.link
    assert view.has_previous_page and not view.has_next_page
    # A doc the filter leaves out is still shown; the list keeps the page asked for.
    outside = cv.build_view(cv.CompareQuery(runs=[a, b], outcome="only-a", page=1, doc=2))
    assert "(doc 2)" in outside.sample and outside.query.page == 1


def test_page_controls_are_never_dead(monkeypatch):
    from ui.tabs import compare as compare_tab

    monkeypatch.setattr(cv, "PAGE_SIZE", 10)
    a, b = _seed("dense", 0.0, lambda i: i % 3 != 0), _seed("magnitude", 0.5, lambda i: i % 2 == 0)
    outputs = compare_tab._render([a, b], "synthetic-arith", "all", "", 1, 19, None)
    page, page_prev, page_next = outputs[4], outputs[6], outputs[7]
    assert page == 2 and page_prev["interactive"] and page_next["interactive"]
    outputs = compare_tab._render([a, b], "synthetic-arith", "all", "", 3, None, None)
    assert outputs[4] == 3 and outputs[6]["interactive"] and not outputs[7]["interactive"]
    # Nothing listed (one run; a page from an old link): no page to go to either way.
    lone = cv.build_view(cv.CompareQuery(runs=[a], page=5))
    assert lone.query.page == 1 and not lone.has_previous_page and not lone.has_next_page
    outputs = compare_tab._render([a], None, "all", "", 5, None, None)
    assert not outputs[6]["interactive"] and not outputs[7]["interactive"]


def test_build_view_empty_states_say_what_to_do():
    assert "Submit two runs" in cv.build_view(cv.CompareQuery()).header
    a = _seed("dense", 0.0, lambda i: True)
    one = cv.build_view(cv.CompareQuery(runs=[a, 999]))
    assert one.query.runs == [a] and "Pick two or three runs" in one.header
    assert one.run_choices and one.run_choices[0][1] == a


def test_url_load_selects_the_tab_and_restores_the_view():
    from ui.layout import build_demo
    from ui.tabs import compare as compare_tab

    a, b = _seed("dense", 0.0, lambda i: i % 3 != 0), _seed("magnitude", 0.5, lambda i: i % 2 == 0)
    with build_demo():
        request = SimpleNamespace(query_params={"tab": "compare", "runs": f"{a},{b}", "task": "synthetic-arith",
                                                "outcome": "only-b", "doc": "3"})
        tab, _job, runs, task, outcome, *rest = compare_tab._on_load(request)
    assert tab.selected == "compare"
    assert runs["value"] == [a, b] and task["value"] == "synthetic-arith" and outcome == "only-b"
    sample = rest[8]
    assert "(doc 3)" in sample
    _inert(sample)
