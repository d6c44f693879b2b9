"""The jail that generated code runs in: a bubblewrap (`bwrap`) sandbox, built per run.

    launch(limits, program, stdin, stdout, stderr) -> (bwrap's process, the jail's PID 1 on the host)
    probe() -> None, or the one-line reason the jail cannot be built here (cached)

Inside the jail the program has

* fresh user, mount, PID, IPC, UTS, network (and, where the kernel has them, cgroup) namespaces:
  it sees only its own processes (`/proc` is the jail's), no network device but a loopback that is
  down; it runs as uid 1000 with no capabilities and no-new-privileges (bwrap sets it);
* a read-only view of what the interpreter needs and nothing else: the base interpreter's prefix
  (its stdlib), the system library directories and the loader cache. The project, the database,
  the PRUNEBOARD home, data and cache directories, the caller's home and the virtual environment
  are masked by empty tmpfs mounts wherever they fall inside those directories;
* a private, size-limited tmpfs `/tmp` with the program in `/tmp/work` (its working directory);
* a clean environment, a new session (no terminal), and resource limits set by a two-line
  launcher before the program starts (`LAUNCHER`): address space, CPU seconds, processes (counted
  in the jail's own user namespace), file size (which also bounds the captured output), open
  files, no core dumps.

The whole process tree dies with the jail's PID 1: when the program exits, or when the caller kills
that PID (its host pid comes through bwrap's `--info-fd`), every process the program started, a
`setsid()` daemon included, is killed by the kernel. bwrap's `--die-with-parent` covers a caller
that dies itself.

As any user but root, bwrap maps the caller to uid 1000 in a new user namespace (unprivileged user
namespaces: Debian's default) and the jail may not make further ones (`--disable-userns`). As root,
the caller writes the namespace's id maps itself (`--userns-block-fd`): root inside is root outside
only while bwrap sets the jail up, and the launcher then becomes uid 1000, which is `nobody`
outside, so RLIMIT_NPROC holds (the kernel exempts uid 0) and nothing of root's is the program's;
a user namespace the program might still make grants it nothing outside the jail. `probe()` builds
the jail once per interpreter and bwrap binary and caches the answer.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import select
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import settings

__all__ = ["Limits", "JAIL_WORKDIR", "LAUNCHER", "jail_command", "launch", "probe", "interpreter", "hidden_paths"]

logger = logging.getLogger(__name__)

JAIL_WORKDIR = "/tmp/work"
"""The program's working directory and HOME inside the jail (on the jail's private tmpfs)."""
JAIL_UID = 1000
SYSTEM_LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")
"""Shared libraries the interpreter and its extension modules link against (read-only)."""
LOADER_FILES = ("/etc/ld.so.cache",)
PROBE_TIMEOUT_S = 20.0
LAUNCHER = (
    "import os,resource,sys\n"
    "for item in sys.argv[1].split(','):\n"
    " name,value=item.split('=');value=int(value);resource.setrlimit(getattr(resource,name),(value,value))\n"
    "if os.getuid()==0:\n"
    " os.setgroups([]);os.setresgid(1000,1000,1000);os.setresuid(1000,1000,1000)\n"
    "os.execv(sys.executable,[sys.executable,'-I','-S','-B',sys.argv[2]])\n"
)
"""Runs first inside the jail: sets the limits (so they count only the jail's processes), leaves
the namespace's root (a caller running as root: see `_map_ids`) for uid 1000, then replaces itself
with the program's interpreter (`-I -S -B`: no environment, no site-packages)."""
OUTSIDE_UID = 65534
"""A caller running as root maps the jail's uid 1000 to `nobody` outside: the kernel exempts uid 0
from RLIMIT_NPROC, and nothing in the jail should own root's files."""


@dataclass(frozen=True)
class Limits:
    """What one program may use (each an rlimit, set inside the jail)."""

    memory_bytes: int
    """RLIMIT_AS, address space of each process."""
    cpu_seconds: int
    """RLIMIT_CPU, a backstop for the wall-clock timeout the caller enforces."""
    processes: int
    """RLIMIT_NPROC, processes and threads of the jail's user (only the jail's, in its namespace)."""
    file_bytes: int
    """RLIMIT_FSIZE: any file the program writes, its captured stdout and stderr included."""
    open_files: int = 64
    tmpfs_bytes: int = 16 * 2**20
    """Size of the jail's /tmp (the working directory is on it)."""

    def launcher_arg(self) -> str:
        pairs = {"RLIMIT_AS": self.memory_bytes, "RLIMIT_CPU": self.cpu_seconds, "RLIMIT_NPROC": self.processes,
                 "RLIMIT_FSIZE": self.file_bytes, "RLIMIT_NOFILE": self.open_files, "RLIMIT_CORE": 0}
        return ",".join(f"{name}={value}" for name, value in pairs.items())


def interpreter() -> tuple[str, str]:
    """(the base interpreter's real path, its prefix): a virtual environment's python runs from the
    base installation, whose prefix holds the standard library (never the environment's packages)."""
    executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return executable, os.path.realpath(sys.base_prefix)


def _stdlib_dirs() -> list[str]:
    """Where this interpreter found its standard library and extension modules."""
    import math  # an extension module where the stdlib has lib-dynload

    dirs = [os.path.dirname(os.__file__), os.path.realpath(sys.base_exec_prefix)]
    if getattr(math, "__file__", None):
        dirs.append(os.path.dirname(math.__file__))
    return [os.path.realpath(d) for d in dirs]


def hidden_paths() -> list[str]:
    """Directories the program must never see, even where they lie inside a read-only bind."""
    project = Path(__file__).resolve().parent.parent
    candidates = [project, settings.home(), settings.data_dir(), settings.model_cache_dir(), Path.home()]
    if os.path.realpath(sys.prefix) != os.path.realpath(sys.base_prefix):
        candidates.append(Path(sys.prefix))  # the virtual environment (the base prefix is bound)
    database = settings.database_url()
    if database.startswith("sqlite:///"):
        candidates.append(Path(database.removeprefix("sqlite:///")).parent)
    return sorted({os.path.realpath(p) for p in candidates})


def jail_command(limits: Limits, program_fd: int, info_fd: int, block_fd: int | None = None,
                 filename: str = "main.py") -> list[str]:
    """The bwrap argv that runs the program read from `program_fd` (copied to JAIL_WORKDIR/filename)
    with `limits`; bwrap writes the jail's host pid as JSON to `info_fd`. `block_fd` (callers
    running as root): bwrap waits on it until the caller mapped the jail's ids (`launch`). Raises
    OSError with a reason when the jail cannot be described here (no bwrap, an interpreter inside
    a directory it must hide)."""
    executable, prefix = interpreter()
    argv = [_bwrap(), "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if block_fd is None:  # unprivileged: bwrap maps the caller to JAIL_UID itself
        argv += ["--disable-userns", "--cap-drop", "ALL", "--uid", str(JAIL_UID), "--gid", str(JAIL_UID)]
    else:  # the launcher needs these two to leave the namespace's root; it drops them with it
        argv += ["--userns-block-fd", str(block_fd), "--cap-drop", "ALL", "--cap-add", "CAP_SETUID",
                 "--cap-add", "CAP_SETGID"]
    binds = _read_only_dirs(prefix, executable)
    for parent in _ancestors(source for source, target in binds if target is None):
        argv += ["--perms", "0755", "--dir", parent]  # bwrap would copy modes such as root's 0700
    for source, target in binds:
        argv += ["--symlink", target, source] if target is not None else ["--ro-bind", source, source]
    for path in LOADER_FILES:
        argv += ["--ro-bind-try", path, path]
    for path in hidden_paths():
        for source, target in binds:
            if target is not None:
                continue
            if path == source or path == prefix:
                raise OSError(f"the interpreter's directory {source} is also {path}, which the jail must hide")
            if _inside(path, source):
                argv += ["--tmpfs", path]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(limits.tmpfs_bytes), "--perms", "1777", "--tmpfs", "/tmp",
             "--perms", "0777", "--dir", JAIL_WORKDIR, "--chdir", JAIL_WORKDIR,
             "--perms", "0644", "--file", str(program_fd), f"{JAIL_WORKDIR}/{filename}",
             "--info-fd", str(info_fd), "--clearenv"]
    for name, value in _environment().items():
        argv += ["--setenv", name, value]
    return argv + ["--", executable, "-I", "-S", "-B", "-c", LAUNCHER, limits.launcher_arg(), filename]


def launch(limits: Limits, program: Path, stdin, stdout, stderr) -> tuple[subprocess.Popen, int | None]:
    """Start `program` in a new jail with the given streams; return bwrap's process and the host pid
    of the jail's PID 1 (None: bwrap did not build the jail; its stderr says why). Killing that
    pid kills everything in the jail. Raises OSError when bwrap cannot be started at all."""
    privileged = os.geteuid() == 0
    program_fd = os.open(program, os.O_RDONLY)
    info_read, info_write = os.pipe()
    block_read, block_write = os.pipe() if privileged else (None, None)
    inherited = tuple(fd for fd in (program_fd, info_write, block_read) if fd is not None)
    try:
        argv = jail_command(limits, program_fd, info_write, block_read, program.name)
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env={}, pass_fds=inherited,
                                start_new_session=True)
    except BaseException:
        for fd in (info_read, block_write):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in inherited:
            os.close(fd)
    try:
        pid = _child_pid(info_read)
        if pid is not None and block_write is not None:
            try:
                _map_ids(pid)
                os.write(block_write, b"1")
            except OSError:
                logger.warning("sandbox: could not map the jail's user ids", exc_info=True)
                _kill(pid)
                pid = None
    finally:
        os.close(info_read)
        if block_write is not None:
            os.close(block_write)
    return proc, pid


@functools.lru_cache(maxsize=8)
def _probe(bwrap: str | None, executable: str) -> str | None:
    if bwrap is None:
        return "bubblewrap is not installed (Debian: apt-get install bubblewrap; or set PRUNEBOARD_BWRAP)"
    with tempfile.TemporaryDirectory(prefix="pruneboard-jail-probe-") as tmp:
        program = Path(tmp) / "probe.py"
        program.write_text("import os\nassert os.getuid() == 1000\n", encoding="utf-8")
        try:
            proc, pid = launch(Limits(memory_bytes=256 * 2**20, cpu_seconds=10, processes=8, file_bytes=2**20),
                               program, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.PIPE)
            _, err = proc.communicate(timeout=PROBE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"the jail cannot be built here: {exc}"
    if pid is None or proc.returncode != 0:
        lines = [line.strip() for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
        detail = lines[-1][:200] if lines else f"exit code {proc.returncode}"
        reason = f"the jail cannot be built here (user namespaces off?): {detail}"
        logger.warning("sandbox: %s", reason)
        return reason
    return None


def probe() -> str | None:
    """None when the jail works here, else a one-line reason (cached per bwrap and interpreter)."""
    return _probe(_find_bwrap(), interpreter()[0])


# --- helpers ----------------------------------------------------------------------------------


def _find_bwrap() -> str | None:
    configured = settings.bwrap_path()
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin:" + os.environ.get("PATH", ""))


def _bwrap() -> str:
    found = _find_bwrap()
    if found is None:
        raise OSError("bubblewrap (bwrap) is not installed")
    return found


def _read_only_dirs(prefix: str, executable: str) -> list[tuple[str, str | None]]:
    """[(path, None)] to bind read-only at the same place, [(path, target)] symlinks to recreate
    (merged-/usr systems: /lib -> usr/lib). Nested paths are dropped (their parent is bound)."""
    wanted: list[tuple[str, str | None]] = [(prefix, None)]
    if not _inside(executable, prefix):
        wanted.append((os.path.dirname(executable), None))
    for stdlib in _stdlib_dirs():
        if not _inside(stdlib, prefix):
            wanted.append((stdlib, None))
    for path in SYSTEM_LIBRARY_DIRS:
        if os.path.islink(path):
            wanted.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            wanted.append((os.path.realpath(path), None))
    kept: list[tuple[str, str | None]] = []
    for path, target in wanted:
        if target is None and any(t is None and p != path and _inside(path, p) for p, t in wanted):
            continue
        if (path, target) not in kept:
            kept.append((path, target))
    return kept


def _child_pid(info_fd: int, timeout_s: float = PROBE_TIMEOUT_S) -> int | None:
    """The jail's PID 1 as bwrap reports it on --info-fd; None when bwrap ends (or stalls) first."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"}" not in data:
        ready, _, _ = select.select([info_fd], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(info_fd, 4096) if ready else b""
        if not chunk:
            return None
        data += chunk
    try:
        return int(json.loads(data.decode("utf-8"))["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _map_ids(pid: int) -> None:
    """As root: the namespace's root is root (bwrap sets the jail up with it), its uid and gid 1000
    are `nobody` outside (the launcher switches to them before the program starts)."""
    for kind in ("uid", "gid"):
        with open(f"/proc/{pid}/{kind}_map", "w", encoding="ascii") as handle:
            handle.write(f"0 0 1\n{JAIL_UID} {OUTSIDE_UID} 1\n")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _ancestors(paths) -> list[str]:
    """Every directory above `paths` but "/", outermost first."""
    found: list[str] = []
    for path in paths:
        for parent in reversed(Path(path).parents):
            if str(parent) != "/" and str(parent) not in found:
                found.append(str(parent))
    return sorted(found, key=lambda p: p.count("/"))


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _environment() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": JAIL_WORKDIR,
            "TMPDIR": "/tmp", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}
