"""API tokens tab: a signed-in user's personal tokens for the CLI's `--server` (`ui.api_tokens`)."""
from __future__ import annotations

import gradio as gr

from jobs.access import ANONYMOUS
from ui import api_tokens
from ui.auth import user_from


def build(shared) -> None:
    shared.tokens_intro = gr.Markdown(api_tokens.intro(ANONYMOUS), elem_id="pb-tokens-intro")
    with gr.Row(equal_height=True):
        shared.tokens_label = gr.Textbox(label="Token name", placeholder="laptop", max_length=100,
                                         elem_id="pb-tokens-label")
        shared.tokens_create = gr.Button("Create token", variant="primary", interactive=False,
                                         elem_id="pb-tokens-create")
    shared.tokens_new = gr.Textbox(label="Your new token: shown once, copy it now", visible=False,
                                   interactive=False, buttons=["copy"], elem_id="pb-tokens-new")
    shared.tokens_message = gr.Markdown(elem_id="pb-tokens-message")
    shared.tokens_table = gr.Dataframe(headers=api_tokens.TOKEN_COLUMNS, label="Your tokens", interactive=False,
                                       wrap=True, elem_id="pb-tokens-table")
    with gr.Row(equal_height=True):
        shared.tokens_revoke_id = gr.Number(label="Token id (click a row)", precision=0,
                                            elem_id="pb-tokens-revoke-id")
        shared.tokens_revoke = gr.Button("Revoke", variant="stop", interactive=False, elem_id="pb-tokens-revoke")


# Callbacks take the visitor's identity (injected by annotation, as in the Queue tab): tokens are per user.


def _load(profile: gr.OAuthProfile | None, request: gr.Request):
    user = user_from(profile, request)
    return api_tokens.intro(user), api_tokens.token_table(user), gr.update(interactive=user.logged_in)


def _create(label, profile: gr.OAuthProfile | None, request: gr.Request):
    user = user_from(profile, request)
    message, token = api_tokens.create_token(user, label)
    shown = gr.update(value=token, visible=True) if token else gr.update(value="", visible=False)
    return message, shown, api_tokens.token_table(user)


def _revoke_state(token_id, profile: gr.OAuthProfile | None, request: gr.Request):
    return gr.update(interactive=api_tokens.can_revoke(user_from(profile, request), token_id))


def _revoke(token_id, profile: gr.OAuthProfile | None, request: gr.Request):
    user = user_from(profile, request)
    message = api_tokens.revoke_token(user, token_id)
    return message, api_tokens.token_table(user), gr.update(interactive=api_tokens.can_revoke(user, token_id))


def _on_select(evt: gr.SelectData):
    row = evt.row_value
    return int(row[0]) if row else gr.update()


def wire(shared, demo) -> None:
    shared.tokens_create.click(_create, shared.tokens_label,
                               [shared.tokens_message, shared.tokens_new, shared.tokens_table], api_name=False)
    shared.tokens_table.select(_on_select, None, shared.tokens_revoke_id, api_name=False)
    shared.tokens_revoke_id.change(_revoke_state, shared.tokens_revoke_id, shared.tokens_revoke, api_name=False,
                                   trigger_mode="always_last")
    shared.tokens_revoke.click(_revoke, shared.tokens_revoke_id,
                               [shared.tokens_message, shared.tokens_table, shared.tokens_revoke], api_name=False)
    demo.load(_load, None, [shared.tokens_intro, shared.tokens_table, shared.tokens_create], api_name=False)
