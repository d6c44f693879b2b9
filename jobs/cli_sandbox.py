"""`python -m jobs sandbox-run FILE`: run a file exactly as a code task runs generated code (through
`backend.sandbox.run_program`, with its memory limit) and print one JSON line
{"status", "exit_code", "stdout", "stderr"}, stdout and stderr cut to `SHOWN_CHARS` each.

Exit codes: 0 the program ran (its own exit code is in the JSON), 2 bad input (unreadable file, a
timeout out of range), 3 the jail cannot be built here (`"status": "refused"`, the reason on stderr).
"""
from __future__ import annotations

import argparse
import json
import sys

from jobs.cli_errors import EXIT_AUTH, EXIT_BAD_INPUT, CliError

__all__ = ["run_sandboxed_file", "MAX_FILE_BYTES", "MAX_TIMEOUT_S", "SHOWN_CHARS"]

MAX_FILE_BYTES = 1 << 20
MAX_TIMEOUT_S = 600.0
SHOWN_CHARS = 64 * 1024
EXIT_REFUSED = EXIT_AUTH
"""3, as for a rejected worker token: the environment, not the input, stops it."""


def run_sandboxed_file(args: argparse.Namespace) -> int:
    """The command; returns its exit code."""
    from backend.sandbox import DEFAULT_MEMORY_MB, run_program

    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        raise CliError(f"--timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds, got {args.timeout:g}", EXIT_BAD_INPUT)
    try:
        with open(args.file, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
        source = raw.decode("utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror or exc}", EXIT_BAD_INPUT) from None
    except UnicodeDecodeError:
        raise CliError(f"{args.file} is not UTF-8 text", EXIT_BAD_INPUT) from None
    if len(raw) > MAX_FILE_BYTES:
        raise CliError(f"{args.file} is larger than {MAX_FILE_BYTES} bytes", EXIT_BAD_INPUT)
    result = run_program(source, timeout_s=args.timeout, memory_mb=DEFAULT_MEMORY_MB)
    print(json.dumps({"status": result.status, "exit_code": result.returncode,
                      "stdout": result.stdout[:SHOWN_CHARS], "stderr": result.stderr[:SHOWN_CHARS]}))
    if result.status == "refused":
        print(f"error: {result.reason}", file=sys.stderr)
        return EXIT_REFUSED
    return 0
