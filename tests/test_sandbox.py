"""backend.sandbox in process: statuses, timeouts, limits, the jail's view, refusal where no jail can
be built and the operator's logged opt-out; the caller is unharmed. (Hostile programs run through
`python -m jobs sandbox-run`: tests/test_sandbox_hostile.py.)"""
from __future__ import annotations

import logging
import os
import resource
import sys
import time

import pytest

from backend import jail
from backend.sandbox import SandboxUnavailable, jail_unavailable_reason, require_jail, run_program

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")


@pytest.fixture(autouse=True)
def caller_state():
    """Every test checks the calling process keeps its limits, namespaces, cwd and ids."""
    def state():
        return (resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_NPROC),
                os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/pid"), os.getcwd(), os.getuid(),
                os.getpid())

    before = state()
    yield
    assert state() == before


@pytest.fixture
def jailed():
    """The jail must work here; under CI=true its absence is a failure (.ci/run installs bubblewrap)."""
    reason = jail_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the jail cannot be built: {reason}")
        pytest.skip(reason)


def test_passing_and_failing_programs(jailed):
    ok = run_program("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('fine')\n")
    assert ok.status == "passed" and ok.passed and ok.stdout == "fine\n" and ok.reason == ""
    bad = run_program("assert 1 + 1 == 3, 'wrong sum'\n")
    assert bad.status == "failed" and bad.reason == "AssertionError: wrong sum" and bad.returncode == 1
    syntax = run_program("def broken(:\n")
    assert syntax.status == "failed" and "SyntaxError" in syntax.reason
    exits = run_program("import sys\nsys.exit(7)\n")
    assert exits.status == "failed" and exits.returncode == 7


def test_stdin_clean_environment_and_the_jails_view(jailed, monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_SECRET", "do-not-leak")
    result = run_program(
        "import os, sys\nprint(input().upper())\nprint(sorted(os.environ))\nprint(os.getcwd())\n"
        "print('site' in sys.modules)\nprint(os.getuid(), os.getgid())\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())\n"
        "print(status['CapEff'].strip(), status['NoNewPrivs'].strip())\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n",
        stdin="hello\n",
    )
    assert result.status == "passed", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "HELLO"
    assert "PRUNEBOARD_SECRET" not in lines[1] and "do-not-leak" not in result.stdout
    assert lines[2] == jail.JAIL_WORKDIR
    assert lines[3] == "False"  # no site: only the standard library
    assert lines[4] == "1000 1000"
    assert lines[5] == "0000000000000000 1"  # no capabilities, no new privileges
    assert lines[6] == "['1', '2']"  # its own PID namespace: bwrap's init and the program


def test_infinite_loop_is_killed_by_the_timeout(jailed):
    started = time.perf_counter()
    result = run_program("while True:\n    pass\n", timeout_s=1.5)
    assert result.status == "timeout" and "1.5" in result.reason
    assert time.perf_counter() - started < 10


def test_sleeping_child_process_is_killed_with_the_program(jailed):
    result = run_program("import subprocess, sys\n"
                         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                         "import time\ntime.sleep(60)\n", timeout_s=1)
    assert result.status == "timeout"


def test_memory_bomb_is_stopped_by_the_memory_limit(jailed):
    result = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))\n",
                         memory_mb=256, timeout_s=20)
    assert result.status == "memory", (result.status, result.reason, result.stderr[-500:])
    one_shot = run_program("x = bytearray(4 * 2**30)\n", memory_mb=256)
    assert one_shot.status == "memory"


def test_output_flood_is_cut(jailed):
    result = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout_s=10)
    assert result.status in ("error", "timeout")
    assert len(result.stdout) <= 1 << 20


def test_the_standard_library_works_inside(jailed):
    result = run_program("import hashlib, json, math, re, collections, itertools, heapq, bisect, fractions, "
                         "decimal, datetime, random, string, functools, typing\n"
                         "print(hashlib.md5(b'abc').hexdigest(), math.comb(5, 2), json.dumps([1]))\n")
    assert result.status == "passed", result.stderr
    assert result.stdout.split() == ["900150983cd24fb0d6963f7d28e17f72", "10", "[1]"]


# --- where no jail can be built ---------------------------------------------------------------


def test_no_jail_means_refused_never_a_weaker_run(monkeypatch, tmp_path):
    marker = tmp_path / "ran"
    monkeypatch.setenv("PRUNEBOARD_BWRAP", str(tmp_path / "no-bwrap-here"))
    monkeypatch.delenv("PRUNEBOARD_UNSAFE_SANDBOX", raising=False)
    assert "bubblewrap is not installed" in jail_unavailable_reason()
    result = run_program(f"open({str(marker)!r}, 'w').write('x')\n")
    assert result.status == "refused" and "generated code was not run" in result.reason
    assert "\n" not in result.reason and not marker.exists()
    with pytest.raises(SandboxUnavailable, match="cannot run here"):
        require_jail()


def test_unsafe_opt_out_runs_without_the_jail_and_says_so(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PRUNEBOARD_BWRAP", str(tmp_path / "no-bwrap-here"))
    monkeypatch.setenv("PRUNEBOARD_UNSAFE_SANDBOX", "1")
    with caplog.at_level(logging.WARNING, logger="backend.sandbox"):
        require_jail()  # allowed, but logged
        result = run_program("print('ran anyway')\n", timeout_s=5)
    assert result.status == "passed" and result.stdout == "ran anyway\n"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("WITHOUT the jail" in w for w in warnings)


def test_a_code_task_job_fails_before_loading_its_model_without_a_jail(monkeypatch, tmp_path):
    from backend import pipeline
    from backend.config import validate_config

    monkeypatch.setenv("PRUNEBOARD_BWRAP", str(tmp_path / "no-bwrap-here"))
    monkeypatch.delenv("PRUNEBOARD_UNSAFE_SANDBOX", raising=False)
    monkeypatch.setattr("backend.models.loading.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    config = validate_config({"model": "builtin:tiny-llama", "tasks": ["humaneval"]})
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        pipeline.run(config, lambda event: None)


# --- what the jail shows ----------------------------------------------------------------------


def test_private_directories_inside_a_bound_prefix_are_masked(monkeypatch, tmp_path):
    prefix = tmp_path / "python"
    home = prefix / "pruneboard-home"  # e.g. a home that happens to lie under the interpreter's prefix
    home.mkdir(parents=True)
    monkeypatch.setattr(jail, "interpreter", lambda: (str(prefix / "bin" / "python3"), str(prefix)))
    monkeypatch.setenv("PRUNEBOARD_HOME", str(home))
    monkeypatch.setenv("PRUNEBOARD_BWRAP", sys.executable)  # any executable: the command is only built
    argv = jail.jail_command(jail.Limits(2**28, 5, 8, 2**20), program_fd=5, info_fd=6)
    assert ["--ro-bind", str(prefix), str(prefix)] == argv[argv.index(str(prefix)) - 1:argv.index(str(prefix)) + 2]
    assert argv[argv.index(str(home.resolve())) - 1] == "--tmpfs"  # mounted over after the bind
    assert argv.index(str(home.resolve())) > argv.index(str(prefix))
    monkeypatch.setenv("PRUNEBOARD_HOME", str(prefix))
    with pytest.raises(OSError, match="must hide"):
        jail.jail_command(jail.Limits(2**28, 5, 8, 2**20), program_fd=5, info_fd=6)
