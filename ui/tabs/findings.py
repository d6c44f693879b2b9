"""Findings tab: each seed finding, whether the stored results support it, and the numbers behind it
(answered from the view cache, `ui.view_cache`: the verdicts' bootstraps run once per results state)."""
from __future__ import annotations

import gradio as gr

from ui import services
from ui.view_cache import cached


def build(shared) -> None:
    gr.Markdown("Each statement from the seed studies is checked against the stored results by a stated rule "
                "(a paired difference with a bootstrap 95% CI; *inconclusive* when the interval crosses zero or "
                "fewer than 30 paired samples exist).", elem_classes="pb-hint")
    with gr.Row():
        shared.findings_model = gr.Dropdown(label="Model", choices=[services.ALL], value=services.ALL,
                                            allow_custom_value=True)
        shared.findings_paradigm = gr.Dropdown(label="Paradigm", choices=[services.ALL, "instruct", "think"],
                                               value=services.ALL)
        shared.findings_refresh = gr.Button("Refresh", elem_id="pb-findings-refresh")
    shared.findings = gr.HTML(elem_id="pb-findings")
    presets = [choice for choice in services.preset_choices() if choice[1].startswith("study")]
    with gr.Row(equal_height=False):
        shared.findings_preset = gr.Dropdown(label="Study preset", choices=presets,
                                             value=presets[0][1] if presets else None, interactive=bool(presets),
                                             info="Queues every run the findings need." if presets
                                             else "No study presets in this build.")
        shared.findings_submit = gr.Button("Submit study preset", variant="primary", interactive=bool(presets),
                                           elem_id="pb-findings-submit")
    shared.findings_message = gr.Markdown(elem_id="pb-findings-message")


def _view(model, paradigm):
    text, models = cached(("findings", model, paradigm),
                          lambda: (services.findings_html(model, paradigm), tuple(services.findings_models())))
    return text, gr.update(choices=list(models))


def wire(shared, demo) -> None:
    inputs = [shared.findings_model, shared.findings_paradigm]
    outputs = [shared.findings, shared.findings_model]
    shared.findings_refresh.click(_view, inputs, outputs, api_name=False)
    shared.findings_model.input(_view, inputs, outputs, api_name=False)
    shared.findings_paradigm.input(_view, inputs, outputs, api_name=False)
    shared.findings_submit.click(services.submit_preset, shared.findings_preset, shared.findings_message,
                                 api_name=False)
    demo.load(_view, inputs, outputs, api_name=False)
