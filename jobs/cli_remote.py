"""`python -m jobs submit|status|cancel --server URL`: the same commands against a PruneBoard server
(a Space) through its user API, as the user whose API token is in $PRUNEBOARD_TOKEN or --token-file
(made in the app's *API tokens* tab; never a flag, which every local user could read with `ps`).
These functions return what the local commands compute; `jobs.cli` prints it the same way.

Output and exit codes are the local commands': 0 done, 1 the job's state forbids it (409) or a quota
is used up (429) or the server is unreachable, 2 an invalid config or unknown job (4xx), 3 the server
rejected the token or the user may not act on that job (401/403). Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from jobs.cli_errors import EXIT_AUTH, EXIT_BAD_INPUT, EXIT_CONFLICT, CliError
from jobs.cli_worker import check_server_url, read_token_file
from db.states import JobState
from jobs.user_client import UserApiError, UserClient

__all__ = ["remote_submit", "remote_status", "remote_cancel", "user_token", "TOKEN_VARIABLE"]

TOKEN_VARIABLE = "PRUNEBOARD_TOKEN"


def user_token(args: argparse.Namespace) -> str:
    """The user's API token: --token-file, else $PRUNEBOARD_TOKEN."""
    token = read_token_file(args.token_file) if args.token_file else os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token or any(c.isspace() for c in token):
        raise CliError(f"--server needs your API token (create one in the app's API tokens tab): ${TOKEN_VARIABLE} "
                       "or --token-file PATH (one line)")
    return token


def remote_submit(args: argparse.Namespace) -> dict[str, Any]:
    """{"id", "state", "existing"} of the submitted config, as the local `submit` has them."""
    if args.submitter is not None:
        raise CliError("--submitter does not apply with --server: the server records the token's user")
    text, fmt = _config_text(args.config)
    return _call(args, lambda client: client.submit(text, fmt, force=args.force))


def remote_status(args: argparse.Namespace) -> dict[str, Any]:
    """{"jobs", "workers"}, as the local `status` reads them (times as text)."""
    return _call(args, lambda client: client.status(args.id, limit=args.limit, state=args.state))


def remote_cancel(args: argparse.Namespace) -> JobState:
    """The job's state after the cancel."""
    return JobState(_call(args, lambda client: client.cancel(args.id))["state"])


def _config_text(path: str) -> tuple[str, str]:
    """The config file's text and format (`.json` is JSON, else YAML, as `load_config` reads them; '-' reads
    stdin); the server validates it."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read config {path!r}: {type(exc).__name__}") from None
    return text, "json" if path.lower().endswith(".json") else "yaml"


def _call(args: argparse.Namespace, request) -> dict[str, Any]:
    token = user_token(args)
    check_server_url(args.server, args.insecure)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    client = UserClient(args.server, token)
    try:
        return request(client)
    except UserApiError as exc:
        message = str(exc) if exc.status != 401 else f"the server rejected the API token: {exc}"
        raise CliError(message, _exit_code(exc.status)) from None
    finally:
        client.close()


def _exit_code(status: int | None) -> int:
    """The local commands' exit code for an HTTP status (None: the server was not reached)."""
    if status in (401, 403):
        return EXIT_AUTH  # the token, or this user on this job
    if status is not None and 400 <= status < 500 and status not in (409, 429):
        return EXIT_BAD_INPUT
    return EXIT_CONFLICT  # the job's state, a quota, or a server that cannot answer now

