"""What the API tokens tab does, without Gradio: a signed-in user creates a personal API token (shown
once), lists and revokes their own (`jobs.user_tokens`). With a token, `python -m jobs submit|status|
cancel --server URL` acts as that user. Labels are the user's text: escaped in Markdown, plain-text
cells in the table."""
from __future__ import annotations

import pandas as pd

from common import settings
from jobs import user_tokens
from jobs.access import AccessError, User, job_id_from
from ui.markdown import escape

__all__ = ["TOKEN_COLUMNS", "intro", "token_table", "create_token", "revoke_token", "can_revoke"]

TOKEN_COLUMNS = ["id", "name", "created", "last used", "state"]


def intro(user: User) -> str:
    """Markdown above the form: who the tokens act as and how the CLI uses one, or why none can be made."""
    server = settings.public_url() or "https://THIS-SERVER"
    usage = (f"```bash\nexport PRUNEBOARD_TOKEN=pbu_...   # or --token-file FILE (never a flag)\n"
             f"python -m jobs submit config.yaml --server {server}\n"
             f"python -m jobs status [ID] --server {server} [--json]\n"
             f"python -m jobs cancel ID --server {server}\n```")
    if not user.logged_in:
        return ("**Log in with Hugging Face to create an API token.** A token lets the command line queue, "
                "watch and cancel your jobs on this server from a notebook or a script:\n\n" + usage)
    return (f"Tokens act as **{escape(user.name)}**, with your quotas and rights, from the command line or a "
            "script (`jobs.user_client`). A new token is shown once; only its hash is kept. Revoke one you no "
            f"longer use (at most {user_tokens.MAX_ACTIVE_PER_USER} active).\n\n" + usage)


def token_table(user: User) -> pd.DataFrame:
    rows = [{"id": t["id"], "name": t["label"], "created": _when(t["created_at"]),
             "last used": _when(t["last_used_at"]) or "never",
             "state": "active" if t["active"] else f"revoked {_when(t['revoked_at'])}"}
            for t in user_tokens.list_tokens(user)]
    return pd.DataFrame(rows, columns=TOKEN_COLUMNS)


def create_token(user: User, label: str) -> tuple[str, str]:
    """(Markdown message, the new token or "" when none was made)."""
    try:
        token_id, token = user_tokens.create(user, label)
    except (AccessError, ValueError) as exc:
        return f"**No token created.** {escape(exc)}", ""
    return (f"Token {token_id} (**{escape(label.strip())}**) created. Copy it now: it is shown only once. "
            "Keep it in `PRUNEBOARD_TOKEN` or a file only you can read."), token


def can_revoke(user: User, token_id: float | None) -> bool:
    """Whether `token_id` names one of `user`'s active tokens (the Revoke button is enabled only then)."""
    return any(t["id"] == token_id and t["active"] for t in user_tokens.list_tokens(user)) if token_id else False


def revoke_token(user: User, token_id: float | None) -> str:
    if not token_id:
        return "Enter the id of one of your tokens."
    number = job_id_from(token_id)  # ids are INTEGER columns: a huge or fractional number names none
    try:
        if number is None:
            raise KeyError(f"You have no API token {str(token_id)[:24]}.")
        revoked = user_tokens.revoke(user, number)
    except KeyError as exc:
        return escape(exc.args[0])
    if not revoked:
        return f"Token {number} was revoked already."
    return f"Token {number} revoked: requests with it are refused."


def _when(value) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M} UTC"
