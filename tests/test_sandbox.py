"""backend.sandbox: timeouts, memory limit, no network, clean environment; the caller is unharmed."""
from __future__ import annotations

import os
import resource
import socket
import sys
import threading
import time

import pytest

from backend.sandbox import network_isolation_available, run_program

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")


@pytest.fixture(autouse=True)
def caller_state():
    """Every test checks the calling process keeps its limits, network namespace and cwd."""
    before = (resource.getrlimit(resource.RLIMIT_AS), os.readlink("/proc/self/ns/net"), os.getcwd(),
              os.getuid(), os.getpid())
    yield
    after = (resource.getrlimit(resource.RLIMIT_AS), os.readlink("/proc/self/ns/net"), os.getcwd(),
             os.getuid(), os.getpid())
    assert after == before


def test_passing_and_failing_programs():
    ok = run_program("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('fine')\n")
    assert ok.status == "passed" and ok.passed and ok.stdout == "fine\n" and ok.reason == ""
    bad = run_program("assert 1 + 1 == 3, 'wrong sum'\n")
    assert bad.status == "failed" and bad.reason == "AssertionError: wrong sum" and bad.returncode == 1
    syntax = run_program("def broken(:\n")
    assert syntax.status == "failed" and "SyntaxError" in syntax.reason


def test_stdin_and_clean_environment(monkeypatch):
    monkeypatch.setenv("PRUNEBOARD_SECRET", "do-not-leak")
    result = run_program(
        "import os, sys\nprint(input().upper())\nprint(sorted(os.environ))\nprint(os.getcwd())\n"
        "print('site' in sys.modules)\n",
        stdin="hello\n",
    )
    assert result.status == "passed", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "HELLO"
    assert "PRUNEBOARD_SECRET" not in lines[1] and "do-not-leak" not in result.stdout
    assert "pruneboard-sandbox-" in lines[2] and not os.path.exists(lines[2])  # removed afterwards
    assert lines[3] == "False"


def test_infinite_loop_is_killed_by_the_timeout():
    started = time.perf_counter()
    result = run_program("while True:\n    pass\n", timeout_s=1.5)
    assert result.status == "timeout" and "1.5" in result.reason
    assert time.perf_counter() - started < 10


def test_sleeping_child_process_is_killed_with_the_program():
    result = run_program("import subprocess, sys\n"
                         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                         "import time\ntime.sleep(60)\n", timeout_s=1)
    assert result.status == "timeout"


def test_memory_bomb_is_stopped_by_the_memory_limit():
    result = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))\n",
                         memory_mb=256, timeout_s=20)
    assert result.status == "memory", (result.status, result.reason, result.stderr[-500:])
    one_shot = run_program("x = bytearray(4 * 2**30)\n", memory_mb=256)
    assert one_shot.status == "memory"


def test_network_is_unreachable_from_inside_but_reachable_from_outside():
    assert network_isolation_available()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted: list[bool] = []

    def accept():
        server.settimeout(15)
        try:
            while True:
                conn, _ = server.accept()
                accepted.append(True)
                conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # from outside: works
        time.sleep(0.2)
        assert accepted == [True]
        probe = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            "print('connected')\n"
        )
        result = run_program(probe, timeout_s=10)
        assert result.status == "failed", result
        assert "connected" not in result.stdout
        assert any(word in result.reason for word in ("Network is unreachable", "Connection refused",
                                                      "timed out", "OSError"))
        time.sleep(0.2)
        assert accepted == [True]  # the sandboxed attempt never reached the listener
    finally:
        server.close()
        thread.join(timeout=20)


def test_cannot_write_outside_its_directory_when_started_as_root(tmp_path):
    from backend.sandbox import _interpreter

    if os.geteuid() != 0 or not _interpreter()[1]:
        pytest.skip("privilege drop applies to root with an interpreter that nobody can run")
    target = tmp_path / "owned.txt"
    os.chmod(tmp_path, 0o755)
    result = run_program(f"import os\nprint(os.getuid())\nopen({str(target)!r}, 'w').write('x')\n")
    assert result.status == "failed" and "PermissionError" in result.reason
    assert result.stdout.strip() == "65534" and not target.exists()


def test_output_flood_is_cut():
    result = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout_s=10)
    assert result.status in ("error", "timeout")
    assert len(result.stdout) <= 1 << 20
