"""The reproducibility manifest stored with every run."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks, as manifests record data and weight files."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def project_commit() -> str:
    """The git commit of this checkout, with '+dirty' when files differ; for an installed package
    (no checkout around the code) "pruneboard==<version>"; 'unknown' otherwise."""
    if not (ROOT / ".git").exists():  # site-packages: a git repository around it is not this code's
        version = package_version("pruneboard")
        return f"pruneboard=={version}" if version != "absent" else "unknown"
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@functools.lru_cache(maxsize=1)
def _environment() -> tuple[tuple[str, str], ...]:
    # Versions cannot change inside a process; reading package metadata costs ~3 ms a package.
    return tuple({
        "project_commit": project_commit(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "lm_eval": package_version("lm-eval"),
        "platform": platform.platform(),
    }.items())


def environment() -> dict[str, Any]:
    """Project commit and library versions of this process."""
    return dict(_environment())
