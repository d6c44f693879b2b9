"""Submit tab."""
from __future__ import annotations

import gradio as gr

from ui import services


def build(shared) -> None:
    with gr.Row():
        shared.submit_example = gr.Dropdown(label="Start from an example", choices=services.example_names(),
                                            value=services.DEFAULT_EXAMPLE)
        shared.submit_force = gr.Checkbox(label="Force a new run even if this config ran before", value=False)
    shared.submit_editor = gr.Code(label="Configuration (YAML or JSON)", language="yaml", lines=18,
                                   value=services.example_text(services.DEFAULT_EXAMPLE))
    shared.submit_button = gr.Button("Validate and submit", variant="primary")
    shared.submit_message = gr.Markdown()


def wire(shared, demo) -> None:
    shared.submit_example.change(services.example_text, shared.submit_example, shared.submit_editor, api_name=False)
    shared.submit_button.click(services.submit_text, [shared.submit_editor, shared.submit_force],
                               shared.submit_message, api_name="submit")
