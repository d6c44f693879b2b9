"""Equal cost tab: one model's runs grouped by matched measured cost (parameters kept, FLOPs or
latency) instead of nominal sparsity, with their scores (logic in `ui.equal_cost`)."""
from __future__ import annotations

import gradio as gr

from common.vocabulary import PARADIGMS
from ui import board as board_svc
from ui.equal_cost import MEASURE_CHOICES, equal_cost_table


def build(shared) -> None:
    gr.Markdown("\"25 %\" means layers for depth pruning, block parameters for width pruning, hidden size for "
                "SliceGPT and the skip ratio for routers. Here runs are grouped by what they measurably cost "
                "instead, so methods in one band are compared at equal cost.", elem_classes="pb-hint")
    with gr.Row(equal_height=True):
        shared.cost_model = gr.Dropdown(label="Model", choices=[board_svc.ALL], value=board_svc.ALL,
                                        allow_custom_value=True, scale=2)
        shared.cost_paradigm = gr.Dropdown(label="Paradigm", choices=[board_svc.ALL, *PARADIGMS],
                                           value=board_svc.ALL, allow_custom_value=True)
        shared.cost_measure = gr.Radio(label="Match runs on", choices=MEASURE_CHOICES, value="params",
                                       elem_id="pb-cost-measure", scale=2)
        shared.cost_view = gr.Radio(label="Scores", choices=board_svc.VIEW_CHOICES, value="raw", scale=2)
        shared.cost_refresh = gr.Button("Refresh", elem_id="pb-cost-refresh", scale=0, min_width=120)
    shared.cost_note = gr.Markdown(elem_id="pb-cost-summary")
    shared.cost_table = gr.Dataframe(label="Runs by band of matched cost (most expensive first; best first in a band)",
                                     interactive=False, wrap=False, max_height=560, pinned_columns=2,
                                     elem_id="pb-cost-table")


def _options(model, paradigm):
    if model == board_svc.ALL and paradigm == board_svc.ALL:
        model, paradigm = board_svc.busiest_setting()
    options = board_svc.filter_choices()
    return (gr.update(choices=options["models"], value=model if model in options["models"] else board_svc.ALL),
            gr.update(choices=options["paradigms"],
                      value=paradigm if paradigm in options["paradigms"] else board_svc.ALL))


def wire(shared, demo) -> None:
    inputs = [shared.cost_model, shared.cost_paradigm, shared.cost_measure, shared.cost_view]
    draw = dict(fn=equal_cost_table, inputs=inputs, outputs=[shared.cost_table, shared.cost_note], api_name=False)
    selection = [shared.cost_model, shared.cost_paradigm]
    shared.cost_refresh.click(_options, selection, selection, api_name=False).then(**draw)
    for widget in inputs:
        widget.input(**draw)
    demo.load(_options, selection, selection, api_name=False).then(**draw)
