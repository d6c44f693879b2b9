"""Environment settings, read when asked (never at import) so tests and workers can override them."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_LEASE_SECONDS = 60
"""A running job whose worker misses heartbeats this long is requeued."""
DEFAULT_MAX_REQUEUES = 5
"""Lease expiries tolerated before a job is failed for good."""
DEFAULT_PORT = 7860
DEFAULT_TRACE_CAP_MB = 64.0
"""Compressed full-text traces stored per run before the rest are cut (PRUNEBOARD_TRACE_CAP_MB)."""


def home() -> Path:
    """PRUNEBOARD_HOME: database, model cache and exports (default ./var)."""
    return Path(os.environ.get("PRUNEBOARD_HOME", "var")).resolve()


def data_dir() -> Path:
    """PRUNEBOARD_DATA_DIR: local task data and calibration text (default $PRUNEBOARD_HOME/data)."""
    value = os.environ.get("PRUNEBOARD_DATA_DIR")
    return Path(value).resolve() if value else home() / "data"


def cache_dir() -> Path:
    return home() / "cache"


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or f"sqlite:///{home() / 'pruneboard.db'}"


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def lease_seconds() -> float:
    return float(os.environ.get("PRUNEBOARD_LEASE_SECONDS") or DEFAULT_LEASE_SECONDS)


def max_requeues() -> int:
    return _int_env("PRUNEBOARD_MAX_REQUEUES", DEFAULT_MAX_REQUEUES)


def local_workers() -> int:
    return _int_env("PRUNEBOARD_LOCAL_WORKERS", 1)


def allow_noop() -> bool:
    return os.environ.get("PRUNEBOARD_ALLOW_NOOP") == "1"


def server_port() -> int:
    return _int_env("GRADIO_SERVER_PORT", DEFAULT_PORT)


def model_cache_dir() -> Path:
    """PRUNEBOARD_CACHE_DIR: downloaded and converted models (default $PRUNEBOARD_HOME/cache)."""
    value = os.environ.get("PRUNEBOARD_CACHE_DIR")
    return Path(value).resolve() if value else cache_dir()


def trace_cap_bytes() -> int:
    """PRUNEBOARD_TRACE_CAP_MB: compressed trace bytes kept in full per run (default 64 MB)."""
    value = os.environ.get("PRUNEBOARD_TRACE_CAP_MB")
    megabytes = float(value) if value not in (None, "") else DEFAULT_TRACE_CAP_MB
    return max(int(megabytes * 1024 * 1024), 0)
