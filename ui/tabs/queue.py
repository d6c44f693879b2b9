"""Queue tab: the live job list (gr.Timer), the selected job's progress, error and log, cancel and retry,
and the Workers panel (`ui.workers_view`). Buttons that would do nothing are disabled (and look it)."""
from __future__ import annotations

import gradio as gr

from ui import services
from ui.auth import user_from
from ui.workers_view import workers_html

QUEUE_REFRESH_SECONDS = 2.0


def build(shared) -> None:
    gr.Markdown("Jobs, newest first; refreshes every 2 s. Click a row to see its progress, error and log.",
                elem_classes="pb-hint")
    shared.queue_table = gr.Dataframe(headers=services.QUEUE_COLUMNS, datatype=services.QUEUE_DATATYPES,
                                      label="Jobs", interactive=False, wrap=True, max_height=420,
                                      elem_id="pb-queue-table")
    with gr.Row(equal_height=False):
        # No minimum: an empty box reads 0, and a bound would make every event reading it fail.
        shared.queue_job_id = gr.Number(label="Job id", precision=0, elem_id="pb-queue-job")
        shared.queue_show = gr.Button("Full record", interactive=False, elem_id="pb-queue-show")
        shared.queue_cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="pb-queue-cancel")
        shared.queue_retry = gr.Button("Retry", interactive=False, elem_id="pb-queue-retry")
    shared.queue_hint = gr.Markdown("Select a job to cancel or retry it.", elem_id="pb-queue-hint",
                                    elem_classes="pb-hint")
    shared.queue_message = gr.Markdown(elem_id="pb-queue-message")
    shared.queue_panel = gr.HTML(services.job_panel(None), elem_id="pb-queue-detail")
    with gr.Accordion("Full record: config, scores, manifest (JSON)", open=False):
        shared.queue_detail = gr.Code(language="json", lines=14, interactive=False, elem_id="pb-queue-json")
    gr.Markdown("### Workers\nWhat each worker can run; a queued job that none online can run says why in "
                "its *stage*.", elem_id="pb-workers-head")
    shared.queue_workers = gr.HTML(elem_id="pb-workers")
    shared.queue_timer = gr.Timer(QUEUE_REFRESH_SECONDS)


# Callbacks take the visitor's identity (Gradio injects `profile` and `request` by annotation;
# they are not inputs): cancel, retry and hidden runs depend on who is asking.


def _job_state(job_id, profile: gr.OAuthProfile | None, request: gr.Request):
    """[panel, full record, cancel, retry, hint] for the selected job."""
    user = user_from(profile, request)
    can_cancel, can_retry, hint = services.job_actions(job_id, user)
    return [services.job_panel(job_id, user), gr.update(interactive=services.job_visible(job_id, user)),
            gr.update(interactive=can_cancel), gr.update(interactive=can_retry), hint]


def _refresh(job_id, profile: gr.OAuthProfile | None, request: gr.Request):
    user = user_from(profile, request)
    return [services.queue_view(user), workers_html(), *_job_state(job_id, profile, request)]


def _queue_view(profile: gr.OAuthProfile | None, request: gr.Request):
    return services.queue_view(user_from(profile, request)), workers_html()


def _job_details(job_id, profile: gr.OAuthProfile | None, request: gr.Request):
    return services.job_details(job_id, user_from(profile, request))


def _cancel(job_id, profile: gr.OAuthProfile | None, request: gr.Request):
    return services.cancel_job(job_id, user_from(profile, request))


def _retry(job_id, profile: gr.OAuthProfile | None, request: gr.Request):
    return services.retry_job(job_id, user_from(profile, request))


def _on_select(evt: gr.SelectData):
    row = evt.row_value
    return int(row[0]) if row else gr.update()


def wire(shared, demo) -> None:
    job_outputs = [shared.queue_panel, shared.queue_show, shared.queue_cancel, shared.queue_retry, shared.queue_hint]
    refresh_outputs = [shared.queue_table, shared.queue_workers, *job_outputs]
    shared.queue_timer.tick(_refresh, shared.queue_job_id, refresh_outputs, api_name=False, show_progress="hidden")
    shared.queue_table.select(_on_select, None, shared.queue_job_id, api_name=False)
    shared.queue_job_id.change(_job_state, shared.queue_job_id, job_outputs, api_name=False, trigger_mode="always_last")
    shared.queue_show.click(_job_details, shared.queue_job_id, shared.queue_detail, api_name="job")
    shared.queue_cancel.click(_cancel, shared.queue_job_id, shared.queue_message, api_name="cancel").then(
        _refresh, shared.queue_job_id, refresh_outputs, api_name=False)
    shared.queue_retry.click(_retry, shared.queue_job_id, shared.queue_message, api_name="retry").then(
        _refresh, shared.queue_job_id, refresh_outputs, api_name=False)
    demo.load(_queue_view, None, [shared.queue_table, shared.queue_workers], api_name=False)
