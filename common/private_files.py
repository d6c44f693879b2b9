"""Files that hold secrets or results (the database and its WAL, backups, worker token files) are
readable by their owner only (0600), whatever the process umask."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRIVATE_MODE", "make_private", "create_private", "write_private_text"]

PRIVATE_MODE = 0o600


def make_private(path: str | Path) -> None:
    """Restrict an existing file to its owner (missing files and files of other users are left)."""
    try:
        if os.stat(path).st_uid == os.geteuid():
            os.chmod(path, PRIVATE_MODE)
    except FileNotFoundError:
        pass


def create_private(path: str | Path) -> None:
    """Create `path` empty and 0600 unless it exists; an existing one is restricted (make_private)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE))
    except FileExistsError:
        make_private(path)


def write_private_text(path: str | Path, text: str) -> None:
    """Write a new file readable by its owner only; raises FileExistsError rather than overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
