"""Gradio Blocks layout: one `gr.Tab` per module in `ui.tabs`; callbacks live in the services."""
from __future__ import annotations

import gradio as gr

from ui.auth import login_button, login_notice, user_from
from ui.shared import Shared
from ui.tabs import TAB_IDS, api_tokens, compare, equal_cost, findings, leaderboard, plots, queue, submit

_MODULES = {"Leaderboard": leaderboard, "Plots": plots, "Equal cost": equal_cost, "Submit": submit, "Queue": queue,
            "Compare traces": compare, "Findings": findings, "API tokens": api_tokens}
TABS = [(label, tab_id, _MODULES[label]) for label, tab_id in TAB_IDS.items()]
"""(label, tab id, module) in the page's order (`ui.tabs.TAB_IDS`)."""


GRADIO_CACHE_CLEANUP = (3600, 6 * 3600)
"""(every, older than) seconds: Gradio's copies of downloads and plots are deleted, so a long-running
Space does not fill its disk; six hours outlasts any page a user still has open."""


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="PruneBoard", delete_cache=GRADIO_CACHE_CLEANUP) as demo:
        gr.Markdown("# PruneBoard\nWhat pruning really does to language models: prune, evaluate, compare.",
                    elem_id="pb-header")
        notice = login_notice()
        with gr.Row(elem_id="pb-account"):
            login_button()  # None unless login is required and can work (see ui.auth)
            if notice:
                gr.Markdown(notice, elem_id="pb-login-notice")
        admin_banner = gr.Markdown(visible=False, elem_id="pb-admin-banner")
        shared = Shared()
        with gr.Tabs(elem_id="pb-tabs") as tabs:
            shared.tabs = tabs
            for label, tab_id, module in TABS:
                with gr.Tab(label, id=tab_id, elem_id=f"pb-tab-{tab_id}"):
                    module.build(shared)
        for _, _, module in TABS:
            module.wire(shared, demo)
        demo.load(_admin_banner, None, admin_banner, api_name=False)
        gr.api(ping, api_name="ping")
    return demo


def ping() -> str:
    """A no-op answered through the same Gradio queue as every view: its latency is the floor of
    any answer's (`bench/load_leaderboard.py` reports it beside the leaderboard's)."""
    return "ok"


def _admin_banner(profile: gr.OAuthProfile | None, request: gr.Request):
    """Operational warnings only admins can act on (e.g. results that a restart would lose)."""
    from jobs.results_repo import ephemeral_storage_warning

    warning = ephemeral_storage_warning() if user_from(profile, request).is_admin else None
    return gr.update(value=f"**Admin:** {warning}" if warning else "", visible=bool(warning))
