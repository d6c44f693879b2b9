"""Compare tab: 2-3 runs side by side, sample by sample, filtered by outcome; addressable by URL
(`?tab=compare&runs=1,2&task=gsm8k&outcome=only-a&doc=3`). Rendering lives in `ui.compare_view`.

One callback (`_render`) turns the whole state into every output, so each event only says what it
changes; user events use `.input` (programmatic updates do not re-trigger them). Views are answered
from the view cache (`ui.view_cache`), so a page others are reading costs no queries or bootstrap."""
from __future__ import annotations

import gradio as gr

from ui import compare_view
from ui.compare_view import CompareQuery
from ui.tabs import TAB_IDS
from ui.view_cache import cached


def build(shared) -> None:
    gr.Markdown("Pick two or three finished runs that share a task, then filter the samples by outcome.",
                elem_classes="pb-hint")
    with gr.Row(equal_height=False):
        shared.compare_runs = gr.Dropdown(label="Runs (A, B, C in the order picked)", choices=[], value=[],
                                          multiselect=True, max_choices=compare_view.MAX_RUNS, scale=3, min_width=280,
                                          elem_id="pb-compare-runs")
        shared.compare_task = gr.Dropdown(label="Task", choices=[], value=None, scale=1, elem_id="pb-compare-task")
        shared.compare_refresh = gr.Button("Refresh runs", scale=0, elem_id="pb-compare-refresh")
    shared.compare_outcome = gr.Radio([(label, value) for value, label in compare_view.OUTCOME_LABELS.items()],
                                      value="all", label="Outcome", elem_id="pb-compare-outcome")
    shared.compare_header = gr.HTML(elem_id="pb-compare-header")
    with gr.Row(equal_height=False):
        shared.compare_search = gr.Textbox(label="Search question, gold and answers (Enter)", scale=3,
                                           elem_id="pb-compare-search")
        shared.compare_page_prev = gr.Button("◀ Page", scale=0, interactive=False, elem_id="pb-compare-page-prev")
        shared.compare_page_next = gr.Button("Page ▶", scale=0, interactive=False, elem_id="pb-compare-page-next")
    shared.compare_page_info = gr.Markdown(elem_id="pb-compare-page-info")
    shared.compare_list = gr.Dataframe(headers=compare_view.LIST_COLUMNS_BASE, interactive=False, wrap=True,
                                       max_height=360, label="Samples (click one)", elem_id="pb-compare-list",
                                       column_widths=["64px", "40%", "80px"])
    with gr.Row(equal_height=False):
        shared.compare_prev = gr.Button("◀ Previous sample", interactive=False, elem_id="pb-compare-prev")
        shared.compare_doc = gr.Number(label="Doc id (Enter)", precision=0, elem_id="pb-compare-doc")
        shared.compare_next = gr.Button("Next sample ▶", interactive=False, elem_id="pb-compare-next")
    shared.compare_link = gr.Markdown(elem_id="pb-compare-link")
    shared.compare_sample = gr.HTML(elem_id="pb-compare-sample")
    with gr.Accordion("Diff of two traces", open=False):
        shared.compare_pair = gr.Radio([], label="Pair", elem_id="pb-compare-pair")
        shared.compare_diff = gr.HTML(elem_id="pb-compare-diff")
    shared.compare_page = gr.State(1)
    shared.compare_prev_doc = gr.State(None)
    shared.compare_next_doc = gr.State(None)


def _outputs(shared) -> list:
    return [shared.compare_runs, shared.compare_task, shared.compare_outcome, shared.compare_search,
            shared.compare_page, shared.compare_page_info, shared.compare_page_prev, shared.compare_page_next,
            shared.compare_header, shared.compare_list, shared.compare_doc, shared.compare_sample,
            shared.compare_pair, shared.compare_diff, shared.compare_prev, shared.compare_next,
            shared.compare_prev_doc, shared.compare_next_doc, shared.compare_link]


def _render(runs, task, outcome, search, page, doc, pair) -> list:
    query = CompareQuery(runs=[int(r) for r in (runs or [])][:compare_view.MAX_RUNS], task=task,
                         outcome=outcome or "all", search=(search or "").strip(), page=int(page or 1),
                         doc=None if doc is None else int(doc))
    view = _view(query, pair)
    q = view.query
    pair_value = pair if pair in view.pairs else (view.pairs[0] if view.pairs else None)
    has_rows = len(view.rows) > 0
    return [
        gr.update(choices=view.run_choices, value=q.runs),
        gr.update(choices=view.task_choices, value=q.task if view.task_choices else None),
        q.outcome, q.search, q.page, view.page_info,
        gr.update(interactive=view.has_previous_page), gr.update(interactive=view.has_next_page),
        view.header, view.rows, q.doc, view.sample,
        gr.update(choices=view.pairs, value=pair_value), view.diff,
        gr.update(interactive=view.prev_doc is not None), gr.update(interactive=view.next_doc is not None),
        view.prev_doc, view.next_doc,
        _link(q) if len(q.runs) >= 2 and has_rows else "",
    ]


def _view(query: CompareQuery, pair: str | None) -> compare_view.CompareView:
    key = ("compare", tuple(query.runs), query.task, query.outcome, query.search, query.page, query.doc, pair)
    return cached(key, lambda: compare_view.build_view(query, pair))


def compare_page(runs: str, task: str = "", outcome: str = "all", page: int = 1, doc: int | None = None) -> dict:
    """The compare view a shared link (`?tab=compare&runs=3,7&task=gsm8k&outcome=all&page=1&doc=12`)
    opens, for scripts: header and sample HTML, the listed samples and the link. Served from the
    same cache as the tab (API name `compare`)."""
    params = {"runs": runs, "task": task, "outcome": outcome, "page": page, "doc": doc}
    query = compare_view.parse_query({k: v for k, v in params.items() if v not in (None, "")})
    view = _view(query, None)
    return {"runs": view.query.runs, "task": view.query.task, "page": view.query.page, "pages": view.pages,
            "header": view.header, "samples": view.rows.to_dict(orient="records"), "sample": view.sample,
            "link": compare_view.query_string(view.query)}


def _link(query: CompareQuery) -> str:
    link = compare_view.query_string(query)  # built from validated ints and known words, URL-encoded
    return f"Link to this view: [`{link}`]({link})"


def _on_load(request: gr.Request) -> list:
    """Restore the view from the URL; `tab` selects a tab, `job` opens a job in the queue tab."""
    params = dict(request.query_params) if request is not None else {}
    query = compare_view.parse_query(params)
    tab_ids = set(TAB_IDS.values())
    tab = gr.Tabs(selected=query.tab) if query.tab in tab_ids else gr.update()
    job = query.job if query.job is not None else gr.update()
    return [tab, job, *_render(query.runs, query.task, query.outcome, query.search, query.page, query.doc, None)]


def wire(shared, demo) -> None:
    outputs = _outputs(shared)
    state = [shared.compare_runs, shared.compare_task, shared.compare_outcome, shared.compare_search]

    def fresh(runs, task, outcome, search, pair):  # a new filter: first page, first sample
        return _render(runs, task, outcome, search, 1, None, pair)

    def same(runs, task, outcome, search, page, doc, pair):
        return _render(runs, task, outcome, search, page, doc, pair)

    gr.on([shared.compare_runs.input, shared.compare_task.input, shared.compare_outcome.input,
           shared.compare_search.submit], fresh, [*state, shared.compare_pair], outputs, api_name=False,
          trigger_mode="always_last")
    shared.compare_refresh.click(same, [*state, shared.compare_page, shared.compare_doc, shared.compare_pair],
                                 outputs, api_name=False)
    gr.api(compare_page, api_name="compare")
    shared.compare_page_prev.click(lambda r, t, o, s, p, pair: _render(r, t, o, s, int(p) - 1, None, pair),
                                   [*state, shared.compare_page, shared.compare_pair], outputs, api_name=False)
    shared.compare_page_next.click(lambda r, t, o, s, p, pair: _render(r, t, o, s, int(p) + 1, None, pair),
                                   [*state, shared.compare_page, shared.compare_pair], outputs, api_name=False)

    def pick(runs, task, outcome, search, page, pair, evt: gr.SelectData):
        row = evt.row_value
        return _render(runs, task, outcome, search, page, int(row[0]) if row else None, pair)

    shared.compare_list.select(pick, [*state, shared.compare_page, shared.compare_pair], outputs, api_name=False)
    shared.compare_prev.click(same, [*state, shared.compare_page, shared.compare_prev_doc, shared.compare_pair],
                              outputs, api_name=False)
    shared.compare_next.click(same, [*state, shared.compare_page, shared.compare_next_doc, shared.compare_pair],
                              outputs, api_name=False)
    gr.on([shared.compare_doc.submit, shared.compare_pair.input], same,
          [*state, shared.compare_page, shared.compare_doc, shared.compare_pair], outputs, api_name=False)
    demo.load(_on_load, None, [shared.tabs, shared.queue_job_id, *outputs], api_name=False)
