"""The installable package (pyproject.toml): the wheel's contents and metadata, and, in CI (CI=true,
or PRUNEBOARD_TEST_PACKAGE=1), `pip install .` into a fresh virtual environment whose `pruneboard`
command creates and migrates a database from an unrelated directory and runs a job."""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from jobs.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
TORCH_PIN = "torch==2.13.0"
"""The CPU build on this machine's disk; any other spec would pull CUDA wheels."""
in_ci = pytest.mark.skipif(os.environ.get("CI") != "true" and os.environ.get("PRUNEBOARD_TEST_PACKAGE") != "1",
                           reason="a fresh venv with every dependency: CI only (or PRUNEBOARD_TEST_PACKAGE=1)")


def source_copy(destination: Path) -> Path:
    """The checkout's files that git tracks or would (as a clean clone has them, without ignored
    ones); building the copy leaves no build/ or *.egg-info in the checkout."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def commands(help_text: str) -> set[str]:
    """The subcommands an argparse --help lists (one per line, indented four spaces)."""
    return set(re.findall(r"^    (\S+)", help_text, re.M))


def cli_commands() -> set[str]:
    return set(build_parser()._subparsers._group_actions[0].choices)  # what `python -m jobs` offers


def test_the_wheel_holds_the_packages_data_and_command(tmp_path):
    source = source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("pruneboard-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(info).decode())
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    migrations = {p.relative_to(ROOT).as_posix() for p in (ROOT / "db" / "migrations").rglob("*")
                  if p.is_file() and p.suffix in (".py", ".mako")}
    assert migrations <= names and "backend/references.yaml" in names and "jobs/cli.py" in names
    assert "ui/tabs/leaderboard.py" in names and not any(n.startswith("tests/") for n in names)
    assert "pruneboard = jobs.cli:main" in entry_points
    requires = metadata.get_all("Requires-Dist")
    base = [r for r in requires if "extra ==" not in r]
    assert TORCH_PIN in base and not any(r.startswith(("pytest", "playwright", "ray")) for r in base)
    assert any(r.startswith("pytest==") and 'extra == "dev"' in r for r in requires)
    assert any(r.startswith("ray==") and 'extra == "ray"' in r for r in requires)


def test_requirements_split_runtime_from_tests():
    def names(path: Path) -> set[str]:
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        return {re.split(r"[=<>\[ ]", line)[0].lower() for line in lines if line}

    runtime, dev = names(ROOT / "requirements.txt"), names(ROOT / "requirements-dev.txt")
    tools = {"pytest", "playwright", "import-linter"}  # tests, browser tests, the layering test
    assert not tools & runtime and dev == tools
    assert "requirements-dev.txt" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "pip install -r requirements.txt -r requirements-dev.txt && .venv/bin/python -m pytest" in readme


@in_ci
def test_pip_install_gives_a_working_pruneboard_command(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", TORCH_PIN, str(source_copy(tmp_path / "src"))],
                             capture_output=True, text=True, timeout=3000)
    assert install.returncode == 0, install.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "DATABASE_URL", "PRUNEBOARD_HOME", "VIRTUAL_ENV")}
    env.update(PRUNEBOARD_HOME=str(elsewhere / "home"), PRUNEBOARD_ALLOW_NOOP="1", PATH=f"{venv / 'bin'}:{env['PATH']}")

    def pruneboard(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["pruneboard", *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)

    status = pruneboard("status", "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    assert json.loads(status.stdout) == {"jobs": [], "workers": []}
    with sqlite3.connect(elsewhere / "home" / "pruneboard.db") as db:
        revision = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    newest = sorted((ROOT / "db" / "migrations" / "versions").glob("*.py"))[-1].name
    assert newest.startswith(revision) and {"jobs", "scores", "samples", "traces"} <= tables

    helped = pruneboard("--help")
    assert helped.stdout.startswith("usage: pruneboard") and commands(helped.stdout) == cli_commands()
    (elsewhere / "noop.yaml").write_text("model: builtin:noop\ntasks: [synthetic-mc]\n")
    submitted = pruneboard("submit", "noop.yaml", "--json")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert pruneboard("worker", "--drain").returncode == 0
    job = json.loads(pruneboard("status", str(json.loads(submitted.stdout)["id"]), "--json").stdout)["jobs"][0]
    assert job["state"] == "succeeded"
    where = subprocess.run(["python", "-c", "import jobs; print(jobs.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(venv) in where  # the installed code ran, not this checkout
