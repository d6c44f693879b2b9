"""Who is using the UI: the Hugging Face OAuth profile of a callback, as a `jobs.access.User`.

A callback gets the profile by declaring a parameter annotated `gr.OAuthProfile | None` (Gradio
injects it; it is not an input and does not change the callback's API), and a `gr.Request` the same
way, then calls `user_from(profile, request)`. The profile exists only once the user logged in with
the `gr.LoginButton` that `login_button()` adds when login is required.

Test-only hook: outside Space mode, PRUNEBOARD_TEST_IDENTITY=NAME makes every visitor without a
profile NAME, and a request header `X-PruneBoard-Test-Identity: OTHER` makes that request OTHER
(tests acting as several users). Both are ignored when SPACE_ID is set, so a Space only ever
trusts the OAuth profile.
"""
from __future__ import annotations

import os

import gradio as gr

from common import settings
from jobs.access import ANONYMOUS, User

__all__ = ["user_from", "login_button", "login_notice", "login_problem", "oauth_available", "TEST_IDENTITY_HEADER"]

TEST_IDENTITY_HEADER = "x-pruneboard-test-identity"


def user_from(profile: gr.OAuthProfile | None, request: gr.Request | None = None) -> User:
    """The user making a request: the logged-in HF user, else the test identity (outside Space mode
    only), else anonymous."""
    if profile is not None and getattr(profile, "username", None):
        return User.named(profile.username)
    injected = settings.injected_identity()
    if injected is None:
        return ANONYMOUS
    headers = getattr(request, "headers", None) or {}
    return User.named(headers.get(TEST_IDENTITY_HEADER) or injected)


def login_button() -> gr.LoginButton | None:
    """A "Sign in with Hugging Face" button when login is required and can work (call inside the
    Blocks), else None: then `login_notice()` says why no one can log in."""
    if not settings.require_login() or not oauth_available():
        return None
    return gr.LoginButton(elem_id="pb-login")


def oauth_available() -> bool:
    """Whether users can really log in: only on a Space with `hf_oauth: true`
    (`settings.real_space_login`). Elsewhere Gradio would mock the login with the host's own Hugging
    Face account (anyone would be that account), so no button is offered there and `app.py` refuses
    to start when login is required (`login_problem`)."""
    return settings.real_space_login()


def login_problem() -> str | None:
    """One line saying why the app must not start (login required where no real login exists), or None."""
    if not settings.require_login() or oauth_available():
        return None
    if os.environ.get("SYSTEM") == "spaces":
        return ("login is required but the Space has no OAuth client: add `hf_oauth: true` to the README's "
                "front matter")
    return ("login is required (SPACE_ID or PRUNEBOARD_REQUIRE_LOGIN=1) but Hugging Face login works only on a "
            "real Space with hf_oauth: true; unset them here (bind to 127.0.0.1, or put a login proxy in front)")


def login_notice() -> str:
    """Markdown for where the login button would be: empty when it is there or not needed."""
    problem = login_problem()
    return "" if problem is None else f"**Login is unavailable:** {problem}."
