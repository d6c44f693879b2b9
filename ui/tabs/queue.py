"""Queue tab."""
from __future__ import annotations

import gradio as gr

from ui import services

QUEUE_REFRESH_SECONDS = 2.0


def build(shared) -> None:
    shared.queue_table = gr.Dataframe(label="Jobs (refreshes every 2 s)", interactive=False, wrap=True)
    with gr.Row():
        shared.queue_job_id = gr.Number(label="Job id", precision=0, minimum=1)
        shared.queue_show = gr.Button("Show details")
        shared.queue_cancel = gr.Button("Cancel", variant="stop")
        shared.queue_retry = gr.Button("Retry")
    shared.queue_message = gr.Markdown()
    shared.queue_detail = gr.Code(label="Job details: error, log tail, manifest", language="json", lines=14,
                                  interactive=False)
    shared.queue_timer = gr.Timer(QUEUE_REFRESH_SECONDS)


def wire(shared, demo) -> None:
    shared.queue_timer.tick(services.queue_view, None, shared.queue_table, api_name=False)
    shared.queue_show.click(services.job_details, shared.queue_job_id, shared.queue_detail, api_name="job")
    shared.queue_cancel.click(services.cancel_job, shared.queue_job_id, shared.queue_message, api_name="cancel")
    shared.queue_retry.click(services.retry_job, shared.queue_job_id, shared.queue_message, api_name="retry")
    demo.load(services.queue_view, None, shared.queue_table, api_name=False)
