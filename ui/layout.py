"""Gradio Blocks layout and wiring only; each callback delegates to `ui.services`."""
from __future__ import annotations

import gradio as gr

from ui import services

QUEUE_REFRESH_SECONDS = 2.0


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="PruneBoard") as demo:
        gr.Markdown("# PruneBoard\nWhat pruning really does to language models: prune, evaluate, compare.")
        with gr.Tab("Leaderboard"):
            with gr.Row():
                model = gr.Dropdown(label="Model", choices=["(all)"], value="(all)", allow_custom_value=True)
                paradigm = gr.Dropdown(label="Paradigm", choices=["(all)", "instruct", "think"], value="(all)")
                refresh = gr.Button("Refresh", variant="secondary")
            board_note = gr.Markdown()
            board = gr.Dataframe(label="Method x task (primary metric per task)", interactive=False, wrap=True)
        with gr.Tab("Submit"):
            with gr.Row():
                example = gr.Dropdown(label="Start from an example", choices=services.example_names(),
                                      value=services.DEFAULT_EXAMPLE)
                force = gr.Checkbox(label="Force a new run even if this config ran before", value=False)
            editor = gr.Code(label="Configuration (YAML or JSON)", language="yaml", lines=18,
                             value=services.example_text(services.DEFAULT_EXAMPLE))
            submit = gr.Button("Validate and submit", variant="primary")
            submit_message = gr.Markdown()
        with gr.Tab("Queue"):
            queue = gr.Dataframe(label="Jobs (refreshes every 2 s)", interactive=False, wrap=True)
            with gr.Row():
                job_id = gr.Number(label="Job id", precision=0, minimum=1)
                show = gr.Button("Show details")
                cancel = gr.Button("Cancel", variant="stop")
                retry = gr.Button("Retry")
            action_message = gr.Markdown()
            detail = gr.Code(label="Job details: error, log tail, manifest", language="json", lines=14,
                             interactive=False)
            timer = gr.Timer(QUEUE_REFRESH_SECONDS)

        board_inputs = [model, paradigm]
        board_outputs = [board, board_note, model]
        refresh.click(services.leaderboard_view, board_inputs, board_outputs, api_name="leaderboard")
        model.change(services.leaderboard_view, board_inputs, board_outputs, api_name=False)
        paradigm.change(services.leaderboard_view, board_inputs, board_outputs, api_name=False)
        example.change(services.example_text, example, editor, api_name=False)
        submit.click(services.submit_text, [editor, force], submit_message, api_name="submit")
        timer.tick(services.queue_view, None, queue, api_name=False)
        show.click(services.job_details, job_id, detail, api_name="job")
        cancel.click(services.cancel_job, job_id, action_message, api_name="cancel")
        retry.click(services.retry_job, job_id, action_message, api_name="retry")
        demo.load(services.leaderboard_view, board_inputs, board_outputs, api_name=False)
        demo.load(services.queue_view, None, queue, api_name=False)
    return demo
