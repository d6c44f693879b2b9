"""Run untrusted generated code (a program and its tests) in a separate, confined process.

    run_program(source, stdin="", timeout_s=10, memory_mb=512) -> SandboxResult

The program never runs in the calling (worker) process: it is written to a fresh temporary
directory and executed by a separate Python interpreter (`-I -B -S`: no user site, no environment
variables, no `site`, so only the standard library is importable) with

* a wall-clock timeout: the whole process group is SIGKILLed when it passes (`RLIMIT_CPU` is a
  backstop for a CPU-bound child that escapes the group);
* a memory limit: `RLIMIT_AS` (address space) of `memory_mb`; also `RLIMIT_FSIZE` (files and
  captured output), `RLIMIT_NOFILE`, `RLIMIT_CORE` = 0, and `RLIMIT_NPROC` when privileges are dropped;
* no network: `unshare(CLONE_NEWNET)` in the child before exec, i.e. a fresh network namespace with
  only a loopback device that is down, so nothing - not even the host's 127.0.0.1 - is reachable.
  As root this is a plain `unshare`; otherwise an unprivileged user namespace is created with it
  (`CLONE_NEWUSER | CLONE_NEWNET`). Where neither is allowed (no namespaces, a restricted container,
  not Linux) the code is NOT run and the result is `error` with the reason: the sandbox fails closed.
  There is no fallback without network isolation;
* a clean environment (PATH, LANG, HOME/TMPDIR = the temporary directory) and that directory as the
  working directory, deleted afterwards;
* when started as root, the child drops to uid/gid `nobody` (65534) after unsharing, so it cannot
  write outside its temporary directory, provided an interpreter readable by `nobody` exists (the
  base interpreter, else `python3` on PATH or in /usr/local/bin, /usr/bin, /bin); otherwise it keeps the caller's user.

Statuses: `passed` (exit 0), `failed` (non-zero exit, e.g. an AssertionError: `reason` is the last
line of stderr), `timeout`, `memory` (MemoryError or killed while over the limit), `error` (could not
run: sandbox unavailable, output limit, killed by a signal).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["SandboxResult", "SandboxUnavailable", "Status", "run_program", "network_isolation_available"]

Status = Literal["passed", "failed", "timeout", "memory", "error"]

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
OUTPUT_LIMIT_BYTES = 1 << 20
"""Cap on stdout/stderr kept (the file size limit kills a child that writes more than 8x this)."""
REASON_CHARS = 300


class SandboxUnavailable(RuntimeError):
    """Network isolation cannot be set up here, so generated code must not run."""


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


def run_program(source: str, *, stdin: str = "", timeout_s: float = 10.0, memory_mb: int = 512,
                filename: str = "main.py") -> SandboxResult:
    """Run `source` as a Python program in the sandbox; never raises for anything the program does."""
    started = time.perf_counter()
    interpreter, drop = _interpreter()
    with tempfile.TemporaryDirectory(prefix="pruneboard-sandbox-") as tmp:
        workdir = Path(tmp)
        if drop:
            os.chmod(workdir, 0o777)
        program = workdir / filename
        program.write_text(source, encoding="utf-8")
        (workdir / "stdin.txt").write_text(stdin, encoding="utf-8")
        for path in (program, workdir / "stdin.txt"):
            os.chmod(path, 0o644)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp,
               "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}
        preexec = _Preexec(timeout_s, memory_mb, drop)
        with open(workdir / "stdin.txt", "rb") as fin, open(workdir / ".stdout", "wb") as fout, \
                open(workdir / ".stderr", "wb") as ferr:
            try:
                proc = subprocess.Popen(
                    [interpreter, "-I", "-B", "-S", filename], cwd=workdir, env=env, stdin=fin,
                    stdout=fout, stderr=ferr, preexec_fn=preexec, start_new_session=True, close_fds=True,
                )
            except subprocess.SubprocessError:
                return _result("error", _unavailable_reason(), None, "", "", started)
            except OSError as exc:
                return _result("error", f"cannot start the interpreter: {exc}", None, "", "", started)
            timed_out = False
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                returncode = proc.wait()
            _kill_group(proc.pid)  # stray children of a finished program
        stdout = _read(workdir / ".stdout")
        stderr = _read(workdir / ".stderr")
    status, reason = _classify(returncode, timed_out, stderr, timeout_s, memory_mb)
    return _result(status, reason, returncode, stdout, stderr, started)


def network_isolation_available() -> bool:
    """True when a child can be put into a fresh network namespace here."""
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:  # child: try, report through the exit code, never return
        try:
            _unshare_net()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


# --- the child side -------------------------------------------------------------------------------


def _libc():
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable("network namespaces need Linux")
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


_LIBC = None


def _unshare_net() -> None:
    libc = _LIBC or _libc()
    if libc.unshare(CLONE_NEWNET) == 0:
        return
    if os.geteuid() != 0 and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return
    err = ctypes.get_errno()
    raise SandboxUnavailable(f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")


class _Preexec:
    """Runs in the forked child before exec: new netns, limits, then (as root) become nobody."""

    def __init__(self, timeout_s: float, memory_mb: int, drop: bool):
        global _LIBC
        if _LIBC is None and sys.platform.startswith("linux"):
            _LIBC = _libc()  # resolve in the parent: nothing to load in the forked child
        self.cpu = max(1, math.ceil(timeout_s) + 1)
        self.memory = memory_mb * 2**20
        self.drop = drop

    def __call__(self) -> None:
        _unshare_net()
        resource.setrlimit(resource.RLIMIT_AS, (self.memory, self.memory))
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu, self.cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 * OUTPUT_LIMIT_BYTES, 8 * OUTPUT_LIMIT_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        if self.drop:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))


# --- the parent side ------------------------------------------------------------------------------


def _interpreter() -> tuple[str, bool]:
    """(python to run, whether to drop to nobody): as root, prefer one that nobody can execute."""
    candidates = [getattr(sys, "_base_executable", None) or sys.executable, shutil.which("python3"),
                  shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"), sys.executable]
    candidates = [c for c in candidates if c]
    if os.geteuid() == 0:
        for candidate in candidates:
            if _world_executable(candidate):
                return candidate, True
    return candidates[0], False


def _world_executable(path: str) -> bool:
    """Every directory on the way is world-searchable and the (resolved) file world-executable."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        for parent in [Path(path).absolute(), *Path(path).absolute().parents, *real.parents]:
            if parent.is_dir() and not parent.stat().st_mode & stat.S_IXOTH:
                return False
    except OSError:
        return False
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path) -> str:
    with open(path, "rb") as handle:
        return handle.read(OUTPUT_LIMIT_BYTES).decode("utf-8", "replace")


def _classify(returncode: int, timed_out: bool, stderr: str, timeout_s: float,
              memory_mb: int) -> tuple[Status, str]:
    last = _last_line(stderr)
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout", f"timed out after {timeout_s:g} s"
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


def _unavailable_reason() -> str:
    try:
        _libc()
    except SandboxUnavailable as exc:
        return f"sandbox unavailable: {exc}; generated code was not run"
    return ("sandbox unavailable: cannot create a network namespace (needs root or unprivileged user "
            "namespaces); generated code was not run")


def _result(status: Status, reason: str, returncode: int | None, stdout: str, stderr: str,
            started: float) -> SandboxResult:
    return SandboxResult(status=status, reason=reason, returncode=returncode, stdout=stdout, stderr=stderr,
                         seconds=round(time.perf_counter() - started, 3))
