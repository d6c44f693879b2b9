"""Hostile programs against the jail, each run from outside as a code task runs generated code:
`python -m jobs sandbox-run FILE --timeout S` in a subprocess. Each must be blocked and leave the
outside as it was: the database, a worker's token file and its command line and environment
unread, nothing written outside the jail, no process left behind, no connection to 127.0.0.1; a
fork bomb and a memory bomb stop at their limits, and a normal HumanEval solution still passes."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from backend.sandbox import jail_unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
SECRET = "pbw_" + "s3cret" * 8
JAIL_ARGV = b"\x00-I\x00-S\x00-B\x00main.py"
"""Part of every jailed program's command line (the launcher execs the interpreter so)."""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")


@pytest.fixture(autouse=True)
def jailed():
    reason = jail_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the jail cannot be built: {reason}")
        pytest.skip(reason)


def sandbox_run(tmp_path: Path, source: str, timeout: float = 5.0, **env: str) -> tuple[int, dict]:
    """Run `source` through the CLI; (exit code, the JSON line)."""
    program = tmp_path / f"prog-{uuid.uuid4().hex[:8]}.py"
    program.write_text(source, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "jobs", "sandbox-run", str(program), "--timeout", str(timeout)],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout + 60)
    lines = done.stdout.splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    return done.returncode, json.loads(lines[0])


def jail_processes() -> list[int]:
    """Host pids of jailed programs still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if JAIL_ARGV in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def secrets_outside(tmp_path):
    """A live database with a score, a worker token file (0600) and a worker process whose command
    line and environment hold the token, as on a worker host."""
    from db.schema import Job, WorkerToken
    from db.session import write_session

    with write_session() as session:
        session.add(WorkerToken(name="gpu-1", token_hash=hashlib.sha256(SECRET.encode()).hexdigest()))
        session.add(Job(config_hash="h", config_json="{}", model="m", paradigm="instruct", method="dense",
                        sparsity=0.0, submitter="alice"))
    database = Path(os.environ["PRUNEBOARD_HOME"]) / "pruneboard.db"
    token_file = tmp_path / "worker.token"
    token_file.write_text(SECRET)
    token_file.chmod(0o600)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--token", SECRET],
                              env={**os.environ, "PRUNEBOARD_WORKER_TOKEN": SECRET})
    deadline = time.monotonic() + 30  # its command line is readable once the interpreter has started
    while SECRET.encode() not in Path(f"/proc/{worker.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield {"database": database, "token_file": token_file, "worker_pid": worker.pid}
    finally:
        worker.kill()
        worker.wait()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reading_the_database_the_token_file_and_the_project_is_blocked(tmp_path, secrets_outside):
    database, token_file = secrets_outside["database"], secrets_outside["token_file"]
    before = digest(database)
    targets = [database, token_file, ROOT / "README.md", ROOT / "backend" / "settings.py",
               Path(os.environ["PRUNEBOARD_HOME"])]
    source = (
        "import os, sqlite3\n"
        f"targets = {[str(t) for t in targets]!r}\n"
        "for path in targets:\n"
        "    try:\n"
        "        data = open(path, 'rb').read() if not os.path.isdir(path) else str(os.listdir(path)).encode()\n"
        "        print('LEAKED', path, data[:200])\n"
        "    except OSError as exc:\n"
        "        print('blocked', path, type(exc).__name__)\n"
        "try:\n"
        f"    db = sqlite3.connect({str(database)!r})\n"
        "    db.execute(\"INSERT INTO worker_tokens (name, token_hash, created_at) VALUES ('evil', 'x', '2020-01-01')\")\n"
        "    db.execute('UPDATE jobs SET submitter = \"mallory\"')\n"
        "    db.commit()\n"
        "    print('WROTE the database')\n"
        "except Exception as exc:\n"
        "    print('blocked sqlite', type(exc).__name__)\n"
    )
    code, result = sandbox_run(tmp_path, source)
    assert code == 0 and result["status"] == "passed", result
    assert "LEAKED" not in result["stdout"] and "WROTE" not in result["stdout"], result["stdout"]
    assert result["stdout"].count("blocked") == len(targets) + 1
    assert SECRET not in json.dumps(result)
    assert digest(database) == before


def test_another_process_command_line_and_environment_are_out_of_sight(tmp_path, secrets_outside):
    pid = secrets_outside["worker_pid"]
    assert SECRET.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()  # there to be found outside
    source = (
        "import os\n"
        "found = []\n"
        f"for name in os.listdir('/proc') + ['{pid}', 'self/../{pid}']:\n"
        "    for part in ('cmdline', 'environ'):\n"
        "        try:\n"
        "            data = open(f'/proc/{name}/{part}', 'rb').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        if b'pbw_' in data:\n"
        "            found.append(data.decode('utf-8', 'replace'))\n"
        "print('FOUND' if found else 'nothing', found)\n"
        "print(sorted(n for n in os.listdir('/proc') if n.isdigit()))\n"
    )
    code, result = sandbox_run(tmp_path, source)
    assert code == 0 and result["status"] == "passed", result
    assert result["stdout"].startswith("nothing") and SECRET not in result["stdout"]
    assert result["stdout"].splitlines()[1] == "['1', '2']"  # only the jail's own processes


def test_writing_outside_the_work_dir_is_blocked(tmp_path):
    tag = uuid.uuid4().hex
    outside = [ROOT / f"escape-{tag}", Path(os.environ["PRUNEBOARD_HOME"]) / f"escape-{tag}",
               Path(sys.base_prefix) / f"escape-{tag}", Path("/tmp") / f"escape-{tag}", tmp_path / f"escape-{tag}"]
    source = (
        "import os\n"
        f"for path in {[str(p) for p in outside]!r} + ['/usr/lib/escape', '/etc/escape']:\n"
        "    try:\n"
        "        with open(path, 'w') as handle:\n"
        "            handle.write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('blocked', path, type(exc).__name__)\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print('inside', open('inside.txt').read())\n"
    )
    code, result = sandbox_run(tmp_path, source)
    assert code == 0 and result["status"] == "passed", result
    assert "inside fine" in result["stdout"]  # its own work dir is writable
    assert not any(path.exists() for path in outside)  # /tmp inside is the jail's own tmpfs


def test_a_setsid_grandchild_does_not_outlive_the_run(tmp_path):
    source = (
        "import os, sys, time\n"
        "if sys.argv[1:] == ['daemon']:\n"
        "    time.sleep(60)\n"
        "    sys.exit(0)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"  # re-exec'd, so the host would see it by its command line
        "        os.execv(sys.executable, [sys.executable, '-I', '-S', '-B', 'main.py', 'daemon'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)\n"
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]), 'processes; the daemon is left running')\n"
    )
    started = time.monotonic()
    code, result = sandbox_run(tmp_path, source, timeout=10)
    assert code == 0 and result["status"] == "passed", result
    assert int(result["stdout"].split()[0]) >= 3  # init, the program, its daemon (and a zombie)
    assert time.monotonic() - started < 9  # the run ended with its program, not at the timeout
    assert jail_processes() == []


def test_a_fork_bomb_stops_at_the_process_limit(tmp_path):
    counted = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "except OSError as exc:\n"
        "    print(children, exc.errno)\n"
    )
    code, result = sandbox_run(tmp_path, counted, timeout=10)
    assert code == 0 and result["status"] == "passed", result
    children, errno = map(int, result["stdout"].split())
    assert children < 16 and errno == 11  # EAGAIN: RLIMIT_NPROC of the jail
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    code, result = sandbox_run(tmp_path, bomb, timeout=2)
    assert code == 0 and result["status"] == "timeout", result
    assert time.monotonic() - started < 30
    assert jail_processes() == []


def test_a_memory_bomb_stops_at_the_memory_limit(tmp_path):
    code, result = sandbox_run(tmp_path, "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 2**20))\n")
    assert code == 0 and result["status"] == "memory", result
    assert "MemoryError" in result["stderr"]


def test_a_socket_to_localhost_reaches_nothing(tmp_path):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[bool] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(True)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        source = ("import socket\n"
                  f"socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
                  "print('connected')\n")
        code, result = sandbox_run(tmp_path, source)
        assert code == 0 and result["status"] == "failed", result
        assert "connected" not in result["stdout"]
        assert accepted == []
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the listener itself works
        time.sleep(0.5)
        assert accepted == [True]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_a_normal_humaneval_solution_still_passes(tmp_path):
    from backend.tasks._code import extract_code
    from backend.tasks.humaneval import humaneval_program

    doc = {
        "task_id": "HumanEval/0", "entry_point": "has_close_elements",
        "prompt": ("from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                   '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
                   '    given threshold.\n    """\n'),
        "test": ("def check(candidate):\n"
                 "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
                 "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n"
                 "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n"),
    }
    reply = ("```python\nimport hashlib\nfrom itertools import combinations\n\n"
             "def has_close_elements(numbers, threshold):\n"
             "    assert hashlib.md5(b'x').hexdigest()\n"
             "    return any(abs(a - b) < threshold for a, b in combinations(numbers, 2))\n```")
    code, result = sandbox_run(tmp_path, humaneval_program(doc, extract_code(reply, doc["entry_point"])), timeout=10)
    assert code == 0 and result == {"status": "passed", "exit_code": 0, "stdout": "", "stderr": ""}
    wrong = reply.replace("< threshold", "> threshold")
    code, result = sandbox_run(tmp_path, humaneval_program(doc, extract_code(wrong, doc["entry_point"])), timeout=10)
    assert code == 0 and result["status"] == "failed" and result["exit_code"] == 1


def test_the_command_refuses_without_a_jail_and_rejects_bad_input(tmp_path):
    code, result = sandbox_run(tmp_path, "print('x')\n", PRUNEBOARD_BWRAP=str(tmp_path / "no-bwrap"))
    assert code == 3 and result["status"] == "refused" and result["exit_code"] is None and result["stdout"] == ""
    for args in (["/nonexistent/prog.py"], [str(ROOT / "README.md"), "--timeout", "0"]):
        done = subprocess.run([sys.executable, "-m", "jobs", "sandbox-run", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and done.stdout == "" and done.stderr.startswith("error: ")
        assert len(done.stderr.strip().splitlines()) == 1
    code, result = sandbox_run(tmp_path, "import sys\nsys.stdout.write('y' * 300000)\nsys.exit(5)\n")
    assert code == 0 and result["status"] == "failed" and result["exit_code"] == 5
    assert 0 < len(result["stdout"]) <= 64 * 1024  # cut for the JSON line
