"""Leaderboard tab."""
from __future__ import annotations

import gradio as gr

from ui import services


def build(shared) -> None:
    with gr.Row():
        shared.board_model = gr.Dropdown(label="Model", choices=["(all)"], value="(all)", allow_custom_value=True)
        shared.board_paradigm = gr.Dropdown(label="Paradigm", choices=["(all)", "instruct", "think"], value="(all)")
        shared.board_refresh = gr.Button("Refresh", variant="secondary")
    shared.board_note = gr.Markdown()
    shared.board = gr.Dataframe(label="Method x task (primary metric per task)", interactive=False, wrap=True)


def wire(shared, demo) -> None:
    inputs = [shared.board_model, shared.board_paradigm]
    outputs = [shared.board, shared.board_note, shared.board_model]
    shared.board_refresh.click(services.leaderboard_view, inputs, outputs, api_name="leaderboard")
    shared.board_model.change(services.leaderboard_view, inputs, outputs, api_name=False)
    shared.board_paradigm.change(services.leaderboard_view, inputs, outputs, api_name=False)
    demo.load(services.leaderboard_view, inputs, outputs, api_name=False)
