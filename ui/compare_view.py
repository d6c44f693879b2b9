"""The trace comparison, rendered: URL query parameters, the header with the paired statistics, the
sample list, one sample side by side and a diff of two traces. No Gradio here.

Every text that came from a model, a dataset or a user goes through `html.escape` before it becomes
HTML, so a trace holding `<script>`, `<img onerror=...>` or a `javascript:` link shows as characters.
Data comes from `db.compare` (`compare`, `compare_sample`, `comparable_runs`, `shared_tasks`).
"""
from __future__ import annotations

import difflib
import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pandas as pd

from backend.models.ids import RANDOM_MODELS

OUTCOMES = ("all", "all-correct", "only-a", "only-b", "only-c", "all-wrong", "answers-differ")
"""Same values as `db.compare.OUTCOMES` (kept here so the renderers import without the database)."""
OUTCOME_LABELS = {
    "all": "All", "all-correct": "All correct", "only-a": "Only A correct", "only-b": "Only B correct",
    "only-c": "Only C correct", "all-wrong": "All wrong", "answers-differ": "Answers differ",
}
LETTERS = ("A", "B", "C")
MAX_RUNS = 3
PAGE_SIZE = 25
DIFF_MAX_WORDS = 4000
"""Word-level diffs are quadratic at worst; longer traces are diffed on their first words (said so)."""
LIST_COLUMNS_BASE = ["doc", "question", "gold"]


@dataclass
class CompareQuery:
    """The view's state as it appears in the URL: `?tab=compare&runs=1,2&task=gsm8k&outcome=only-a&doc=3`."""

    runs: list[int] = field(default_factory=list)
    task: str | None = None
    outcome: str = "all"
    search: str = ""
    page: int = 1
    doc: int | None = None
    tab: str | None = None
    job: int | None = None
    """`?tab=queue&job=N` opens a job in the queue tab."""


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def parse_query(params: Mapping[str, Any]) -> CompareQuery:
    """Read the query parameters; anything malformed is dropped, never trusted (ids must be integers,
    the outcome one of OUTCOMES, at most three distinct runs)."""
    def one(name: str) -> str | None:
        value = params.get(name)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        return None if value is None else str(value)

    runs: list[int] = []
    for part in (one("runs") or "").split(","):
        run = _int(part)
        if run is not None and run > 0 and run not in runs:
            runs.append(run)
    outcome = (one("outcome") or "all").strip().lower()
    page = _int(one("page"))
    doc = _int(one("doc"))
    job = _int(one("job"))
    task = (one("task") or "").strip() or None
    return CompareQuery(
        runs=runs[:MAX_RUNS], task=task[:200] if task else None,
        outcome=outcome if outcome in OUTCOMES else "all", search=(one("q") or "")[:200],
        page=page if page and page > 0 else 1, doc=doc if doc is not None and doc >= 0 else None,
        tab=(one("tab") or "").strip().lower() or None, job=job if job and job > 0 else None,
    )


def query_string(query: CompareQuery) -> str:
    """The URL query that restores this view (inverse of `parse_query`)."""
    params: dict[str, Any] = {"tab": "compare"}
    if query.runs:
        params["runs"] = ",".join(str(r) for r in query.runs)
    if query.task:
        params["task"] = query.task
    if query.outcome != "all":
        params["outcome"] = query.outcome
    if query.search:
        params["q"] = query.search
    if query.page > 1:
        params["page"] = query.page
    if query.doc is not None:
        params["doc"] = query.doc
    return "?" + urlencode(params, safe=",")


# --- rendering ---------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * float(value):.1f}%"


def _p_value(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return "&lt; 0.001" if p < 0.001 else f"{p:.3f}"


def correctness_badge(correct: Any) -> str:
    if correct is None or (isinstance(correct, float) and math.isnan(correct)):
        return '<span class="pb-badge pb-badge-unscored">not scored</span>'
    return ('<span class="pb-badge pb-badge-correct">correct</span>' if bool(correct)
            else '<span class="pb-badge pb-badge-wrong">wrong</span>')


def empty_state(text: str) -> str:
    return f'<div class="pb-empty">{_esc(text)}</div>'


def render_header(comparison: Any) -> str:
    """Each run's accuracy, then per pair the paired difference with its bootstrap 95 % CI, the
    discordant counts and McNemar's exact p."""
    runs = "".join(
        f"<tr><td><strong>{_esc(r['letter'])}</strong></td><td>job {_esc(r['job_id'])}</td>"
        f"<td>{_esc(r.get('model'))}</td><td>{_esc(r.get('method'))}</td><td>{_esc(_sparsity(r.get('sparsity')))}</td>"
        f"<td>{_pct(r.get('accuracy'))}</td><td>{_esc(r.get('n'))}</td></tr>"
        for r in comparison.runs
    )
    parts = [('<div class="pb-compare-header"><table class="pb-mini"><tr><th>run</th><th>job</th><th>model</th>'
              f"<th>method</th><th>sparsity</th><th>accuracy</th><th>n</th></tr>{runs}</table>")]
    if comparison.pairs:
        rows = "".join(
            f"<tr><td>{_esc(p['b'])} − {_esc(p['a'])}</td><td>{_esc(p.get('n_paired'))}</td>"
            f"<td>{_signed_pct(p.get('diff'))}</td><td>[{_signed_pct(p.get('ci_low'))}, {_signed_pct(p.get('ci_high'))}]</td>"
            f"<td>{_esc(p.get('only_a'))} / {_esc(p.get('only_b'))}</td><td>{_p_value(p.get('mcnemar_p'))}</td></tr>"
            for p in comparison.pairs
        )
        parts.append('<table class="pb-mini"><tr><th>pair</th><th>paired n</th><th>Δ accuracy</th>'
                     "<th>bootstrap 95% CI</th><th>only first / only second correct</th><th>McNemar p</th></tr>"
                     f"{rows}</table>")
    parts.append("</div>")
    return "".join(parts)


def _sparsity(value: Any) -> str:
    return "-" if value is None else f"{float(value):g}"


def _signed_pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * float(value):+.1f} pt"


def list_frame(rows: pd.DataFrame, letters: list[str]) -> pd.DataFrame:
    """The sample list as shown: doc, question, gold, then per run "✓ answer" / "✗ answer".
    Plain text cells (the Dataframe shows `str` cells as text, never as markup)."""
    columns = [*LIST_COLUMNS_BASE, *letters]
    shown = []
    for row in rows.to_dict("records"):
        item = {"doc": int(row["doc_id"]), "question": _preview(row.get("question"), 160),
                "gold": _preview(row.get("gold"), 40)}
        for letter in letters:
            correct = row.get(f"correct_{letter}")
            mark = "?" if correct is None or (isinstance(correct, float) and math.isnan(correct)) else (
                "✓" if bool(correct) else "✗")
            item[letter] = f"{mark} {_preview(row.get(f'answer_{letter}'), 60)}"
        shown.append(item)
    return pd.DataFrame(shown, columns=columns)


def _preview(value: Any, limit: int) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_sample(sample: Mapping[str, Any]) -> str:
    """Question and gold, then one column per run: final answer, correctness, token counts,
    truncation flag and the reasoning collapsed in a <details>."""
    parts = [(f'<div class="pb-sample"><div class="pb-question"><h4>Question (doc {_esc(sample.get("doc_id"))})</h4>'
              f'<pre>{_esc(sample.get("question"))}</pre><p><strong>Gold:</strong> <code>{_esc(sample.get("gold"))}</code>'
              "</p></div>"), '<div class="pb-runs">']
    for run in sample.get("runs", []):
        reasoning = run.get("reasoning")
        tokens = [f"{_esc(run.get('output_tokens'))} output tokens"]
        if run.get("thinking_tokens") is not None:
            tokens.append(f"{_esc(run.get('thinking_tokens'))} thinking")
        flags = ""
        if run.get("truncated"):
            flags = f'<span class="pb-badge pb-badge-truncated">truncated ({_esc(run.get("finish_reason") or "length")})</span>'
        parts.append(
            f'<div class="pb-run"><h4>{_esc(run.get("letter"))} · job {_esc(run.get("job_id"))}</h4>'
            f'<p>{correctness_badge(run.get("correct"))} {flags}</p>'
            f'<p class="pb-tokens">{" · ".join(tokens)}</p>'
            f'<p><strong>Answer:</strong></p><pre class="pb-answer">{_esc(run.get("answer"))}</pre>'
        )
        if reasoning:
            parts.append(f'<details class="pb-reasoning"><summary>Reasoning ({len(reasoning):,} characters)</summary>'
                         f"<pre>{_esc(reasoning)}</pre></details>")
        output = run.get("output")
        if output and output != run.get("answer"):
            parts.append(f'<details class="pb-output"><summary>Full output ({len(output):,} characters)</summary>'
                         f"<pre>{_esc(output)}</pre></details>")
        if run.get("missing"):
            parts.append('<p class="pb-note">This run has no stored sample for this document.</p>')
        parts.append("</div>")
    parts.append("</div></div>")
    return "".join(parts)


def trace_text(run: Mapping[str, Any]) -> str:
    """What the diff compares: reasoning then output."""
    return "\n".join(t for t in (run.get("reasoning"), run.get("output")) if t)


def render_diff(text_a: str, text_b: str, label_a: str = "A", label_b: str = "B") -> str:
    """Word-level diff of two traces: deletions (only in the first) and insertions (only in the
    second) highlighted; each piece escaped."""
    words_a, words_b = (text_a or "").split(), (text_b or "").split()
    cut = len(words_a) > DIFF_MAX_WORDS or len(words_b) > DIFF_MAX_WORDS
    words_a, words_b = words_a[:DIFF_MAX_WORDS], words_b[:DIFF_MAX_WORDS]
    matcher = difflib.SequenceMatcher(None, words_a, words_b, autojunk=False)
    pieces = []
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            pieces.append(_esc(" ".join(words_a[a0:a1])))
            continue
        if a1 > a0:
            pieces.append(f"<del>{_esc(' '.join(words_a[a0:a1]))}</del>")
        if b1 > b0:
            pieces.append(f"<ins>{_esc(' '.join(words_b[b0:b1]))}</ins>")
    note = f"<p class='pb-note'>Diff of the first {DIFF_MAX_WORDS:,} words of each trace.</p>" if cut else ""
    similarity = f"{100 * matcher.ratio():.0f}%"
    return (f'<div class="pb-diff"><p class="pb-diff-legend"><del>only in {_esc(label_a)}</del> '
            f"<ins>only in {_esc(label_b)}</ins> · word overlap {similarity}</p>{note}"
            f'<div class="pb-diff-body">{" ".join(pieces)}</div></div>')


def diff_pairs(letters: list[str]) -> list[str]:
    return [f"{a} vs {b}" for i, a in enumerate(letters) for b in letters[i + 1:]]


def render_sample_diff(sample: Mapping[str, Any], pair: str | None) -> str:
    runs = {run.get("letter"): run for run in sample.get("runs", [])}
    pairs = diff_pairs([r for r in LETTERS if r in runs])
    if not pairs:
        return ""
    if pair not in pairs:
        pair = pairs[0]
    a, b = pair.split(" vs ")
    return render_diff(trace_text(runs[a]), trace_text(runs[b]), a, b)


def page_of(position: int, page_size: int) -> int:
    """The 1-based list page that holds the sample at 0-based `position` of the filtered list."""
    return position // max(1, page_size) + 1


def page_text(comparison: Any) -> str:
    if not comparison.total:
        return "No samples match."
    first = (comparison.page - 1) * comparison.page_size + 1
    last = min(comparison.total, comparison.page * comparison.page_size)
    return f"Samples {first}–{last} of {comparison.total} · page {comparison.page} of {comparison.pages}"


# --- the whole view, from the database ------------------------------------------------------------


@dataclass
class CompareView:
    """Everything the Compare tab shows for one state (the tab turns it into component updates)."""

    run_choices: list[tuple[str, int]]
    query: CompareQuery
    task_choices: list[str] = field(default_factory=list)
    header: str = ""
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LIST_COLUMNS_BASE))
    page_info: str = ""
    pages: int = 1
    sample: str = ""
    diff: str = ""
    pairs: list[str] = field(default_factory=list)
    prev_doc: int | None = None
    next_doc: int | None = None

    @property
    def link(self) -> str:
        return query_string(self.query)

    @property
    def has_previous_page(self) -> bool:
        return self.query.page > 1

    @property
    def has_next_page(self) -> bool:
        return self.query.page < self.pages


def build_view(query: CompareQuery, pair: str | None = None) -> CompareView:
    """Query `db.compare` for this state and render it; an empty state says what to do next.

    A shown doc that the filtered list holds decides the list page (it wins over `query.page`), so stepping
    to the previous / next sample or opening `?doc=` lists the page that holds it. Without a doc,
    the first sample of `query.page` is shown. `query.page` ends within 1..pages."""
    requested_page, query.page = query.page, 1  # page 1 until a list exists (no dead page buttons)
    try:
        from db import compare as compare_db
    except ImportError:
        return CompareView([], query, header=empty_state("Trace comparison is not available in this build "
                                                         "(db.compare is missing)."))
    from db.session import read_session

    with read_session() as session:
        options = compare_db.comparable_runs(session)
        choices = [(_run_label(o), int(o["job_id"])) for o in options]
        known = {job_id for _, job_id in choices}
        query.runs = [r for r in query.runs if r in known][:MAX_RUNS]
        view = CompareView(choices, query)
        if not choices:
            view.header = empty_state("No finished runs with stored samples yet. Submit two runs on the same "
                                      "generation task (for example synthetic-arith or gsm8k) in Submit; "
                                      "once they succeed, pick them here.")
            return view
        if len(query.runs) < 2:
            view.header = empty_state("Pick two or three runs above (they must share a task) to compare "
                                      "their answers and reasoning sample by sample.")
            return view
        view.task_choices = list(compare_db.shared_tasks(session, query.runs))
        if not view.task_choices:
            view.header = empty_state("These runs share no task with stored samples; pick runs evaluated on a "
                                      "common task.")
            return view
        if query.task not in view.task_choices:
            query.task = view.task_choices[0]
        if query.outcome == "only-c" and len(query.runs) < 3:
            query.outcome = "all"
        try:
            sample = None
            if query.doc is not None:
                sample = compare_db.compare_sample(session, query.runs, query.task, query.doc,
                                                    outcome=query.outcome, search=query.search)
                if sample and sample.get("position") is not None:
                    requested_page = page_of(sample["position"], PAGE_SIZE)
            comparison = compare_db.compare(session, query.runs, query.task, outcome=query.outcome,
                                            search=query.search, page=requested_page, page_size=PAGE_SIZE)
        except ValueError as exc:
            view.header = empty_state(f"Cannot compare these runs: {exc}")
            return view
        query.page = comparison.page
        letters = [r["letter"] for r in comparison.runs]
        view.header = render_header(comparison)
        view.rows = list_frame(comparison.rows, letters)
        view.page_info = page_text(comparison)
        view.pages = max(1, comparison.pages)
        view.pairs = diff_pairs(letters)
        if query.doc is None and len(comparison.rows):
            query.doc = int(comparison.rows.iloc[0]["doc_id"])
            sample = compare_db.compare_sample(session, query.runs, query.task, query.doc,
                                                outcome=query.outcome, search=query.search)
        if query.doc is None:
            view.sample = empty_state(f"No sample matches “{OUTCOME_LABELS[query.outcome]}”"
                                      + (f" and the search {query.search!r}" if query.search else "")
                                      + ". Choose another outcome filter or clear the search.")
            return view
    if not sample:
        view.sample = empty_state(f"No stored sample with doc id {query.doc} for {query.task}.")
        return view
    view.sample = render_sample(sample)
    view.diff = render_sample_diff(sample, pair)
    view.prev_doc, view.next_doc = sample.get("prev"), sample.get("next")
    return view


def _run_label(option: dict) -> str:
    label = str(option.get("label") or f"job {option['job_id']}")
    return f"{label} · random weights" if option.get("model") in RANDOM_MODELS else label
