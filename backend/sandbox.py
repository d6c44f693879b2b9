"""Run untrusted generated code (a program and its tests) in a jail; the one entry point for it.

    run_program(source, stdin="", timeout_s=10, memory_mb=512) -> SandboxResult
    require_jail()                  # raises SandboxUnavailable where generated code must not run
    jail_unavailable_reason() -> str | None

The code tasks (HumanEval, HumanEval+, LiveCodeBench) score every reply through `run_program`, and
`python -m jobs sandbox-run FILE` runs a file through it too, so the jail can be tried from outside.
The program never runs in the calling (worker) process: it runs in a bubblewrap jail
(`backend.jail`: fresh user, mount, PID, IPC and network namespaces, a read-only view of only the
interpreter and system libraries, a private tmpfs working directory, rlimits on memory, CPU,
processes, file size and open files, no capabilities, no-new-privileges) with

* a wall-clock timeout: past it the jail's PID 1 is killed, which kills every process in it;
  when the program ends on its own, whatever it left running (a `setsid()` daemon) dies with it;
* stdout and stderr captured to files the file-size limit bounds, of which `OUTPUT_LIMIT_BYTES`
  are kept;
* stdin from the caller.

Where the jail cannot be built (no bwrap, no user namespaces) nothing runs: the result is `refused`
with a one-line reason, and `require_jail()` lets a job fail with it before its model is loaded.
An operator may opt out with PRUNEBOARD_UNSAFE_SANDBOX=1: the program then runs in a plain child
process with the same rlimits (bar the process count) and no namespaces, and every such run is
logged as a warning.

Statuses: `passed` (exit 0), `failed` (non-zero exit, e.g. an AssertionError: `reason` is the last
line of stderr), `timeout`, `memory` (MemoryError or killed while over the limit), `error` (could not
run: jail setup failed, output limit, killed by a signal), `refused` (no jail here).
"""
from __future__ import annotations

import logging
import math
import os
import resource
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from backend import jail
from common import settings

__all__ = ["SandboxResult", "SandboxUnavailable", "Status", "run_program", "require_jail", "jail_unavailable_reason",
           "DEFAULT_MEMORY_MB", "OUTPUT_LIMIT_BYTES"]

logger = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "memory", "error", "refused"]

DEFAULT_MEMORY_MB = 512
"""Address space of each process of a program (the code tasks use this)."""
MAX_PROCESSES = 16
"""Processes and threads a program may have at once (a fork bomb stops here)."""
OUTPUT_LIMIT_BYTES = 1 << 20
"""Cap on stdout/stderr kept; the file size limit kills a program that writes more than 8x this."""
FILE_LIMIT_BYTES = 8 * OUTPUT_LIMIT_BYTES
REASON_CHARS = 300
_KILL_GRACE_S = 5.0


class SandboxUnavailable(RuntimeError):
    """The jail cannot be built here, so generated code must not run (str: the one-line reason)."""


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    reason: str
    """Short explanation: "" when passed, else e.g. "AssertionError", "timed out after 10.0 s"."""
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def jail_unavailable_reason() -> str | None:
    """None when generated code runs in the jail here, else why not (cheap after the first call)."""
    return jail.probe()


def require_jail() -> None:
    """Raise SandboxUnavailable unless generated code can run here: in the jail, or (logged) without
    it because the operator set PRUNEBOARD_UNSAFE_SANDBOX=1."""
    reason = jail_unavailable_reason()
    if reason is None:
        return
    if settings.unsafe_sandbox():
        logger.warning("PRUNEBOARD_UNSAFE_SANDBOX=1: generated code runs WITHOUT the jail (%s)", reason)
        return
    raise SandboxUnavailable(f"generated code cannot run here: {reason}")


def run_program(source: str, *, stdin: str = "", timeout_s: float = 10.0, memory_mb: int = DEFAULT_MEMORY_MB,
                filename: str = "main.py") -> SandboxResult:
    """Run `source` as a Python program in the jail; never raises for anything the program does."""
    started = time.perf_counter()
    reason = jail_unavailable_reason()
    if reason is not None and not settings.unsafe_sandbox():
        return _result("refused", f"sandbox unavailable: {reason}; generated code was not run", None, "", "", started)
    limits = jail.Limits(memory_bytes=memory_mb * 2**20, cpu_seconds=max(1, math.ceil(timeout_s) + 1),
                         processes=MAX_PROCESSES, file_bytes=FILE_LIMIT_BYTES)
    with tempfile.TemporaryDirectory(prefix="pruneboard-sandbox-") as tmp:  # 0700: only the caller's
        files = Path(tmp)
        (files / filename).write_text(source, encoding="utf-8")
        (files / "stdin.txt").write_text(stdin, encoding="utf-8")
        with open(files / "stdin.txt", "rb") as fin, open(files / "stdout", "wb") as fout, \
                open(files / "stderr", "wb") as ferr:
            streams = (fin, fout, ferr)
            if reason is None:
                outcome = _run_jailed(files / filename, limits, timeout_s, streams)
            else:
                logger.warning("PRUNEBOARD_UNSAFE_SANDBOX=1: running generated code WITHOUT the jail (%s)", reason)
                outcome = _run_unconfined(files, filename, limits, timeout_s, streams)
        stdout, stderr = _read(files / "stdout"), _read(files / "stderr")
    returncode, timed_out, setup_error = outcome
    if setup_error:
        return _result("error", f"sandbox setup failed: {_last_line(stderr) or setup_error}", returncode,
                       "", stderr, started)
    status, why = _classify(returncode, timed_out, stderr, timeout_s, memory_mb)
    return _result(status, why, returncode, stdout, stderr, started)


# --- running ----------------------------------------------------------------------------------


def _run_jailed(program: Path, limits: jail.Limits, timeout_s: float, streams) -> tuple[int | None, bool, str]:
    """(program's exit code or -signal, timed out, setup error or "")."""
    try:
        proc, jail_pid = jail.launch(limits, program, *streams)
    except OSError as exc:
        return None, False, str(exc)
    timed_out = False
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_jail(proc, jail_pid)
        returncode = proc.wait()
    _kill_group(proc.pid)  # bwrap itself is gone by now; nothing of the jail outlives its PID 1
    if jail_pid is None:
        return returncode, False, f"bwrap exited with {returncode} before starting the program"
    return _from_bwrap(returncode), timed_out, ""


def _run_unconfined(files: Path, filename: str, limits: jail.Limits, timeout_s: float,
                    streams) -> tuple[int | None, bool, str]:
    """The operator's opt-out: a plain child process with rlimits, in its own session."""
    executable, _ = jail.interpreter()

    def apply_limits() -> None:
        for item in limits.launcher_arg().split(","):
            name, value = item.split("=")
            if name != "RLIMIT_NPROC":  # counts all of this user's processes outside a user namespace
                resource.setrlimit(getattr(resource, name), (int(value), int(value)))

    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(files), "TMPDIR": str(files)}
    try:
        proc = subprocess.Popen([executable, "-I", "-S", "-B", filename], cwd=files, env=env, stdin=streams[0],
                                stdout=streams[1], stderr=streams[2], preexec_fn=apply_limits,
                                start_new_session=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, False, f"cannot start the interpreter: {exc}"
    timed_out = False
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        returncode = proc.wait()
    _kill_group(proc.pid)
    return returncode, timed_out, ""


def _kill_jail(proc: subprocess.Popen, jail_pid: int | None) -> None:
    """Kill the jail's PID 1 (the kernel then kills everything in its PID namespace), then bwrap."""
    if jail_pid is not None:
        try:
            os.kill(jail_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=_KILL_GRACE_S)  # bwrap exits once its child is gone
            return
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc.pid)  # --die-with-parent takes the jail down with bwrap


def _from_bwrap(returncode: int) -> int:
    """bwrap reports a child killed by signal N as 128 + N; give it back as -N (as subprocess does)."""
    if 128 < returncode < 128 + 65 and (returncode - 128) in {s.value for s in signal.Signals}:
        return -(returncode - 128)
    return returncode


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path) -> str:
    with open(path, "rb") as handle:
        return handle.read(OUTPUT_LIMIT_BYTES).decode("utf-8", "replace")


# --- the outcome ------------------------------------------------------------------------------


def _classify(returncode: int | None, timed_out: bool, stderr: str, timeout_s: float,
              memory_mb: int) -> tuple[Status, str]:
    last = _last_line(stderr)
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout", f"timed out after {timeout_s:g} s"
    if returncode is None:
        return "error", last or "the program did not start"
    if last.startswith("MemoryError") or "MemoryError" in last or (
            returncode == -signal.SIGKILL and "Cannot allocate memory" in stderr):
        return "memory", f"exceeded the {memory_mb} MiB memory limit"
    if returncode == 0:
        return "passed", ""
    if returncode == -signal.SIGXFSZ or "File too large" in last:
        return "error", "output or file size limit exceeded"
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        if -returncode in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
            return "memory" if "memory" in stderr.lower() else "error", f"killed by {name}"
        return "error", f"killed by {name}"
    return "failed", last or f"exit code {returncode}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:REASON_CHARS] if lines else ""


def _result(status: Status, reason: str, returncode: int | None, stdout: str, stderr: str,
            started: float) -> SandboxResult:
    return SandboxResult(status=status, reason=reason, returncode=returncode, stdout=stdout, stderr=stderr,
                         seconds=round(time.perf_counter() - started, 3))
