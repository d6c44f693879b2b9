"""Plots tab: interactive plotly figures of the board (figure builders in `ui.plots`, data in
`ui.board.plot_figures`). Figures are answered from the view cache (`ui.view_cache`) as the JSON
Gradio sends, so a cached answer neither queries nor serialises a figure again."""
from __future__ import annotations

import gradio as gr

from common.vocabulary import PARADIGMS
from ui import board as svc
from ui.view_cache import cached

PARETO_CHOICES = [("Measured speed-up", "speedup_measured"), ("Parameter count", "params_M")]
SCALING_CHOICES = [("k (samples per prompt)", "k"), ("Thinking budget", "thinking_budget")]


def build(shared) -> None:
    with gr.Row(equal_height=True):
        shared.plots_model = gr.Dropdown(label="Model", choices=[svc.ALL], value=svc.ALL, allow_custom_value=True,
                                         scale=2)
        shared.plots_paradigm = gr.Dropdown(label="Paradigm", choices=[svc.ALL, *PARADIGMS], value=svc.ALL,
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


def figures_for(plot: gr.Plot):
    """The callback drawing the five figures; `plot` (any of the tab's gr.Plot) turns each figure
    into the value Gradio sends, once per cached view."""

    def figures(model, paradigm, column, pareto_x, scaling_by):
        *values, columns, chosen = cached(("plots", model, paradigm, column, pareto_x, scaling_by),
                                          lambda: _plot_values(plot, model, paradigm, column, pareto_x, scaling_by))
        return (*values, gr.update(choices=list(columns) or ["average"], value=chosen))

    return figures


def _plot_values(plot: gr.Plot, model, paradigm, column, pareto_x, scaling_by) -> tuple:
    """The five figures as plot values (plotly JSON), the score-column choices and the chosen one."""
    *figures, columns, chosen = svc.plot_figures(model, paradigm, column, pareto_x, scaling_by)
    return (*(plot.postprocess(figure) for figure in figures), tuple(columns), chosen)


def _options(model, paradigm):
    options = svc.filter_choices()
    return (gr.update(choices=options["models"], value=model if model in options["models"] else svc.ALL),
            gr.update(choices=options["paradigms"], value=paradigm if paradigm in options["paradigms"] else svc.ALL))




def wire(shared, demo) -> None:
    inputs = [shared.plots_model, shared.plots_paradigm, shared.plots_column, shared.plots_pareto_x,
              shared.plots_scaling_by]
    outputs = [shared.plot_sparsity, shared.plot_pareto, shared.plot_heatmap, shared.plot_thinking, shared.plot_tts,
               shared.plots_column]
    draw = dict(fn=figures_for(shared.plot_sparsity), inputs=inputs, outputs=outputs, api_name=False)
    shared.plots_refresh.click(_options, [shared.plots_model, shared.plots_paradigm],
                               [shared.plots_model, shared.plots_paradigm], api_name=False).then(**draw)
    for widget in (shared.plots_model, shared.plots_paradigm, shared.plots_column, shared.plots_pareto_x,
                   shared.plots_scaling_by):
        widget.input(**draw)
    demo.load(_options, [shared.plots_model, shared.plots_paradigm], [shared.plots_model, shared.plots_paradigm],
              api_name=False).then(**draw)
