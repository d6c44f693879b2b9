"""Findings tab: each seed finding, whether the stored results support it, and the numbers behind it
(answered from the view cache, `ui.view_cache`: the verdicts' bootstraps run once per results state)."""
from __future__ import annotations

import gradio as gr

from common.vocabulary import PARADIGMS
from ui import services
from ui.equal_cost import MEASURE_CHOICES
from ui.view_cache import cached


PAIRING_CHOICES = [("Each finding's measured cost", "auto"), *MEASURE_CHOICES,
                   ("Nominal sparsity (no measured cost)", "sparsity")]


def build(shared) -> None:
    gr.Markdown("Each statement from the seed studies is checked against the stored results by the rule shown "
                "with it: which runs, paired how, which tasks and measure, and the decision on a 95% interval "
                "that resamples documents. Every finding is listed; *inconclusive* when the interval is not "
                "decisive or fewer than 30 documents were compared.", elem_classes="pb-hint")
    with gr.Row():
        shared.findings_model = gr.Dropdown(label="Model", choices=[services.ALL], value=services.ALL,
                                            allow_custom_value=True)
        shared.findings_paradigm = gr.Dropdown(label="Paradigm", choices=[services.ALL, *PARADIGMS],
                                               value=services.ALL)
        shared.findings_pairing = gr.Dropdown(label="Pair method families at", choices=PAIRING_CHOICES,
                                              value="auto", elem_id="pb-findings-pairing",
                                              info="Matched measured cost; nominal sparsity only where a run "
                                                   "lacks the figure.")
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


def _view(model, paradigm, pairing):
    text, models = cached(("findings", model, paradigm, pairing),
                          lambda: (services.findings_html(model, paradigm, pairing), tuple(services.findings_models())))
    return text, gr.update(choices=list(models))


def wire(shared, demo) -> None:
    inputs = [shared.findings_model, shared.findings_paradigm, shared.findings_pairing]
    outputs = [shared.findings, shared.findings_model]
    shared.findings_refresh.click(_view, inputs, outputs, api_name=False)
    for widget in (shared.findings_model, shared.findings_paradigm, shared.findings_pairing):
        widget.input(_view, inputs, outputs, api_name=False)
    shared.findings_submit.click(services.submit_preset, shared.findings_preset, shared.findings_message,
                                 api_name=False)
    demo.load(_view, inputs, outputs, api_name=False)
