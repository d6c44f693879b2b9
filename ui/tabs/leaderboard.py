"""Leaderboard tab: filters, view, sort, the coloured method x task table, exports, a run's detail,
"rerun / fork this config", its lm-eval files and "publish to the Hub" (logic in `ui.board` and
`ui.run_actions`, downloads in `ui.exports`).

A refresh is answered from the view cache (`ui.view_cache`): the table is kept as the value Gradio
sends (cells, display strings and styles), so a cached answer costs neither the board's queries
nor rendering the styled table again."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backend.pruning import method_families
from common.vocabulary import PARADIGMS
from ui import board as svc
from ui import run_actions
from ui.auth import user_from
from ui.board_query import BoardQuery, parse_query, query_string
from ui.exports import export_links
from ui.view_cache import cached


def build(shared) -> None:
    with gr.Row(equal_height=True):
        shared.board_model = gr.Dropdown(label="Model", choices=[svc.ALL], value=svc.ALL, allow_custom_value=True,
                                         scale=2)
        shared.board_paradigm = gr.Dropdown(label="Paradigm", choices=[svc.ALL, *PARADIGMS], value=svc.ALL,
                                            allow_custom_value=True)
        shared.board_families = gr.Dropdown(label="Method family", choices=[svc.ALL, *method_families()], value=[svc.ALL],
                                            multiselect=True, scale=2, elem_id="pb-board-families")
        shared.board_calibration = gr.Dropdown(label="Calibration source", choices=[svc.ALL], value=svc.ALL,
                                               allow_custom_value=True)
        shared.board_recovery = gr.Radio(label="Recovery (LoRA)", choices=svc.RECOVERY_CHOICES, value="any")
    with gr.Row(equal_height=True):
        shared.board_sparsity_min = gr.Slider(label="Sparsity from", minimum=0.0, maximum=1.0, step=0.05, value=0.0)
        shared.board_sparsity_max = gr.Slider(label="Sparsity to", minimum=0.0, maximum=1.0, step=0.05, value=1.0)
        shared.board_search = gr.Textbox(label="Search", value="", placeholder="method, model or job id",
                                         elem_id="pb-board-search", scale=2)
    with gr.Row():
        shared.board_view = gr.Radio(label="View", choices=svc.VIEW_CHOICES, value="raw", elem_id="pb-board-view",
                                     scale=2)
        shared.board_sort = gr.Dropdown(label="Sort by", choices=[svc.PINNED_ORDER], value=svc.PINNED_ORDER,
                                        allow_custom_value=True)
        shared.board_order = gr.Radio(label="Order", choices=svc.ORDER_CHOICES, value="best first")
        shared.board_refresh = gr.Button("Refresh", variant="secondary", elem_id="pb-board-refresh", scale=0,
                                         min_width=120)
    shared.board_columns = gr.Dropdown(label="Columns (empty: all)", choices=[], value=[], multiselect=True,
                                       elem_id="pb-board-columns",
                                       info="Pick the task, average and efficiency columns to show.")
    shared.board_note = gr.Markdown(elem_id="pb-board-summary")
    shared.board_link = gr.Markdown(elem_id="pb-board-link")
    shared.board = gr.Dataframe(label="Method x task (dense baseline first in each group; green = better)",
                                interactive=False, wrap=False, max_height=560, pinned_columns=3, elem_id="pb-board",
                                datatype=svc.TABLE_DATATYPES)
    shared.board_exports = gr.HTML(elem_id="pb-board-exports", elem_classes=["pb-downloads"])
    with gr.Accordion("Column groups", open=False):
        shared.board_legend = gr.Markdown(elem_id="pb-board-legend")
    with gr.Column(elem_id="pb-board-detail", elem_classes=["pb-board-detail"]):
        gr.Markdown("### Run detail")
        with gr.Row():
            shared.board_job = gr.Number(label="Job id", value=None, precision=0, elem_id="pb-board-job")
            # Disabled until a run is chosen (a click or a typed id): they would do nothing without one.
            shared.board_open = gr.Button("Open run", elem_id="pb-board-open", interactive=False)
            shared.board_fork = gr.Button("Rerun / fork this config", variant="primary", elem_id="pb-board-fork",
                                          interactive=False)
        with gr.Row(equal_height=True):
            shared.board_files = gr.Button("lm-eval files (zip)", elem_id="pb-board-files", scale=0, min_width=160,
                                           interactive=False)
            shared.board_publish_repo = gr.Textbox(label="Hub repo for the pruned model", placeholder="owner/name",
                                                   elem_id="pb-board-publish-repo", scale=2)
            shared.board_publish = gr.Button("Publish to the Hub", elem_id="pb-board-publish", scale=0, min_width=160,
                                             interactive=False)
        shared.board_files_out = gr.File(label="lm-eval files", visible=False, elem_id="pb-board-files-out")
        shared.board_action_note = gr.Markdown(elem_id="pb-board-action-note")
        shared.board_detail = gr.Markdown(svc.run_detail(None).summary, elem_id="pb-board-detail-summary")
        with gr.Row():
            shared.board_detail_config = gr.Code(label="Config (YAML)", language="yaml", interactive=False, lines=12,
                                                 visible=False)
            shared.board_detail_structure = gr.Code(label="Pruning report: chosen layers / blocks / widths",
                                                    language="json", interactive=False, lines=12,
                                                    visible=False)
        with gr.Row():
            shared.board_detail_efficiency = gr.Code(label="Efficiency", language="json", interactive=False, lines=8,
                                                     visible=False)
            shared.board_detail_manifest = gr.Code(label="Manifest", language="json", interactive=False, lines=8,
                                                   visible=False)
        shared.board_detail_log = gr.Code(label="Log tail", language=None, interactive=False, lines=8, visible=False)


@dataclass(frozen=True)
class _Shown:
    """What a refresh sends, as plain values (Gradio consumes `gr.update` dicts, so they are built per request)."""

    table: dict
    summary: str
    legend: str
    exports: str
    sort_choices: tuple[str, ...]
    column_choices: tuple[str, ...]
    link: str


def refresh_for(table: gr.Dataframe):
    """The refresh callback of the board `table` (its `postprocess` renders the cached table once;
    components cannot be made inside a callback, where Gradio reads them as updates)."""

    def refresh(model, paradigm, families, sparsity_min, sparsity_max, calibration, recovery, search, view, sort_by,
                order, columns):
        families = tuple(f for f in families or () if f != svc.ALL)  # "(all)" is the empty filter
        widgets = (model, paradigm, families, sparsity_min, sparsity_max, calibration, recovery, search, view,
                   sort_by, order)
        shown = cached(("leaderboard", *widgets, tuple(columns or ())),
                       lambda: _shown(table, widgets, tuple(columns or ())))
        sort_value = sort_by if sort_by in shown.sort_choices else svc.PINNED_ORDER
        chosen = [c for c in columns or () if c in shown.column_choices]
        return (shown.table, shown.summary, shown.legend, shown.exports,
                gr.update(choices=list(shown.sort_choices), value=sort_value),
                gr.update(choices=list(shown.column_choices), value=chosen), shown.link)

    return refresh


def _shown(table: gr.Dataframe, widgets: tuple, columns: tuple[str, ...]) -> _Shown:
    view = svc.board_view(*widgets, columns=columns)
    query = BoardQuery(*widgets[:8], view=widgets[8], sort_by="" if widgets[9] == svc.PINNED_ORDER else widgets[9],
                       order=widgets[10], columns=columns)
    link = query_string(query)  # validated words and numbers, URL-encoded
    return _Shown(table.postprocess(view.table).model_dump(), view.summary, view.legend, export_links(*widgets),
                  tuple(view.sort_choices), tuple(view.column_choices), f"Link to this view: [`{link}`]({link})")


def _families(families):
    """"(all)" and a family exclude each other: the latest pick wins."""
    families = list(families or [])
    if not families:
        return [svc.ALL]
    if families[-1] == svc.ALL:
        return [svc.ALL]
    return [f for f in families if f != svc.ALL]


def _from_url(request: gr.Request):
    """The widget values a shared link names (`ui.board_query`), with the filters' current choices."""
    params = dict(request.query_params) if request is not None else {}
    query = parse_query(params, frozenset(method_families()))
    options = svc.filter_choices()

    def choice(value, choices):
        return gr.update(choices=choices, value=value if value in choices else svc.ALL)

    return (choice(query.model, options["models"]), choice(query.paradigm, options["paradigms"]),
            list(query.families) or [svc.ALL], query.sparsity_min, query.sparsity_max,
            choice(query.calibration, options["calibrations"]), query.recovery, query.search, query.view,
            gr.update(choices=[svc.PINNED_ORDER, query.sort_by] if query.sort_by else [svc.PINNED_ORDER],
                      value=query.sort_by or svc.PINNED_ORDER),
            query.order, gr.update(choices=list(query.columns), value=list(query.columns)))


def _options(model, paradigm, calibration):
    options = svc.filter_choices()
    return (
        gr.update(choices=options["models"], value=model if model in options["models"] else svc.ALL),
        gr.update(choices=options["paradigms"], value=paradigm if paradigm in options["paradigms"] else svc.ALL),
        gr.update(choices=options["calibrations"],
                  value=calibration if calibration in options["calibrations"] else svc.ALL),
    )


def _detail(job_id, profile: gr.OAuthProfile | None = None, request: gr.Request = None):
    detail = svc.run_detail(job_id, user_from(profile, request))
    boxes = (detail.config_yaml, detail.structure_json, detail.efficiency_json, detail.manifest_json, detail.log_tail)
    return detail.summary, *(gr.update(value=text, visible=bool(text)) for text in boxes)


def _run_buttons(job_id):
    """Open, fork, files and publish act on a run: live only once one is chosen."""
    chosen = svc.job_id_of(job_id) is not None
    return tuple(gr.update(interactive=chosen) for _ in range(4))


def _select(table, evt: gr.SelectData):
    job_id = svc.job_at_row(table, evt.index[0] if evt.index else None, getattr(evt, "row_value", None))
    return job_id if job_id is not None else gr.update()


def _fork(job_id, profile: gr.OAuthProfile | None = None, request: gr.Request = None):
    text = svc.fork_config(job_id, user_from(profile, request))
    if not text:
        return gr.update(), gr.update(), "Open a run first: click a row of the table or enter its job id."
    return text, gr.Tabs(selected="submit"), gr.update()


def _files(job_id, profile: gr.OAuthProfile | None, request: gr.Request):
    path, note = run_actions.lm_eval_files(job_id, user_from(profile, request))
    return gr.update(value=path, visible=path is not None), note


def _publish(job_id, repo_id, profile: gr.OAuthProfile | None, request: gr.Request):
    return run_actions.publish(job_id, repo_id, user_from(profile, request))


def wire(shared, demo) -> None:
    inputs = [shared.board_model, shared.board_paradigm, shared.board_families, shared.board_sparsity_min,
              shared.board_sparsity_max, shared.board_calibration, shared.board_recovery, shared.board_search,
              shared.board_view, shared.board_sort, shared.board_order, shared.board_columns]
    outputs = [shared.board, shared.board_note, shared.board_legend, shared.board_exports, shared.board_sort,
               shared.board_columns, shared.board_link]
    refresh_board = refresh_for(shared.board)
    refresh = dict(fn=refresh_board, inputs=inputs, outputs=outputs, api_name=False)
    shared.board_refresh.click(_options, [shared.board_model, shared.board_paradigm, shared.board_calibration],
                               [shared.board_model, shared.board_paradigm, shared.board_calibration], api_name=False)
    shared.board_refresh.click(refresh_board, inputs, outputs, api_name="leaderboard")
    shared.board_families.input(_families, shared.board_families, shared.board_families, api_name=False).then(**refresh)
    for widget in (shared.board_model, shared.board_paradigm, shared.board_calibration, shared.board_recovery,
                   shared.board_view, shared.board_sort, shared.board_order, shared.board_columns):
        widget.input(**refresh)
    for slider in (shared.board_sparsity_min, shared.board_sparsity_max):
        slider.change(**refresh, trigger_mode="always_last")  # drag or typed number
    shared.board_search.submit(**refresh)
    shared.board_search.input(**refresh, trigger_mode="always_last")
    demo.load(_from_url, None, inputs, api_name=False).then(**refresh)

    detail_outputs = [shared.board_detail, shared.board_detail_config, shared.board_detail_structure,
                      shared.board_detail_efficiency, shared.board_detail_manifest, shared.board_detail_log]
    shared.board.select(_select, shared.board, shared.board_job, api_name=False)
    shared.board_job.change(_detail, shared.board_job, detail_outputs, api_name=False)
    shared.board_job.change(_run_buttons, shared.board_job,
                            [shared.board_open, shared.board_fork, shared.board_files, shared.board_publish],
                            api_name=False)
    shared.board_open.click(_detail, shared.board_job, detail_outputs, api_name="run_detail")
    shared.board_fork.click(_fork, shared.board_job, [shared.submit_editor, shared.tabs, shared.board_detail],
                            api_name=False)
    shared.board_job.change(lambda _: (gr.update(value=None, visible=False), ""), shared.board_job,
                            [shared.board_files_out, shared.board_action_note], api_name=False)  # another run
    shared.board_files.click(_files, shared.board_job, [shared.board_files_out, shared.board_action_note],
                             api_name=False)
    shared.board_publish.click(_publish, [shared.board_job, shared.board_publish_repo], shared.board_action_note,
                               api_name=False)
