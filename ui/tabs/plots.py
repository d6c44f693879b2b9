"""Plots tab: interactive plotly figures of the board (figure builders in `ui.plots`, data in
`ui.board.plot_figures`)."""
from __future__ import annotations

import gradio as gr

from ui import board as svc

PARETO_CHOICES = [("Measured speed-up", "speedup_measured"), ("Parameter count", "params_M")]
SCALING_CHOICES = [("k (samples per prompt)", "k"), ("Thinking budget", "thinking_budget")]


def build(shared) -> None:
    with gr.Row(equal_height=True):
        shared.plots_model = gr.Dropdown(label="Model", choices=[svc.ALL], value=svc.ALL, allow_custom_value=True,
                                         scale=2)
        shared.plots_paradigm = gr.Dropdown(label="Paradigm", choices=[svc.ALL, "instruct", "think"], value=svc.ALL,
                                            allow_custom_value=True)
        shared.plots_column = gr.Dropdown(label="Score (task, category average or overall)", choices=["average"],
                                          value="average", allow_custom_value=True, scale=2)
        shared.plots_refresh = gr.Button("Refresh plots", elem_id="pb-plots-refresh", scale=0, min_width=140)
    with gr.Row():
        shared.plot_sparsity = gr.Plot(label="Score vs sparsity per method", elem_id="pb-plot-sparsity")
        with gr.Column():
            shared.plots_pareto_x = gr.Radio(label="Pareto x axis", choices=PARETO_CHOICES, value="speedup_measured")
            shared.plot_pareto = gr.Plot(label="Pareto front (highlighted)", elem_id="pb-plot-pareto")
    shared.plot_heatmap = gr.Plot(label="Δ vs dense: method x task", elem_id="pb-plot-heatmap")
    with gr.Row():
        shared.plot_thinking = gr.Plot(label="Accuracy vs thinking length", elem_id="pb-plot-thinking")
        with gr.Column():
            shared.plots_scaling_by = gr.Radio(label="Test-time scaling x axis", choices=SCALING_CHOICES, value="k")
            shared.plot_tts = gr.Plot(label="Test-time scaling", elem_id="pb-plot-tts")


def _figures(model, paradigm, column, pareto_x, scaling_by):
    sparsity, pareto, heatmap, thinking, scaling, columns, chosen = svc.plot_figures(
        model, paradigm, column, pareto_x, scaling_by)
    return sparsity, pareto, heatmap, thinking, scaling, gr.update(choices=columns or ["average"], value=chosen)


def _options(model, paradigm):
    options = svc.filter_choices()
    return (gr.update(choices=options["models"], value=model if model in options["models"] else svc.ALL),
            gr.update(choices=options["paradigms"], value=paradigm if paradigm in options["paradigms"] else svc.ALL))


def _initial_options(model, paradigm):
    if model == svc.ALL and paradigm == svc.ALL:
        model, paradigm = svc.busiest_setting()
    return _options(model, paradigm)


def wire(shared, demo) -> None:
    inputs = [shared.plots_model, shared.plots_paradigm, shared.plots_column, shared.plots_pareto_x,
              shared.plots_scaling_by]
    outputs = [shared.plot_sparsity, shared.plot_pareto, shared.plot_heatmap, shared.plot_thinking, shared.plot_tts,
               shared.plots_column]
    draw = dict(fn=_figures, inputs=inputs, outputs=outputs, api_name=False)
    shared.plots_refresh.click(_options, [shared.plots_model, shared.plots_paradigm],
                               [shared.plots_model, shared.plots_paradigm], api_name=False).then(**draw)
    for widget in (shared.plots_model, shared.plots_paradigm, shared.plots_column, shared.plots_pareto_x,
                   shared.plots_scaling_by):
        widget.input(**draw)
    demo.load(_initial_options, [shared.plots_model, shared.plots_paradigm], [shared.plots_model, shared.plots_paradigm],
              api_name=False).then(**draw)
