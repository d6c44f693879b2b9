"""The command line's exit codes and its one error type, shared by `jobs.cli` and the modules of its
larger commands (`cli_worker`, `cli_remote`, `cli_sandbox`)."""
from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_CONFLICT", "EXIT_BAD_INPUT", "EXIT_AUTH", "CliError"]

EXIT_OK, EXIT_CONFLICT, EXIT_BAD_INPUT, EXIT_AUTH = 0, 1, 2, 3


class CliError(Exception):
    """A one-line error for the user, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(" ".join(str(message).split()))
        self.code = code
