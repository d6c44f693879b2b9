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
DATA_VOLUME = Path("/data")
"""A Hugging Face Space's persistent storage: the default home when it exists and is writable."""
DEFAULT_MAX_QUEUED_PER_USER = 5
DEFAULT_MAX_SUBMISSIONS_PER_DAY = 20
DEFAULT_SPACE_BACKUP_SECONDS = 600


def home() -> Path:
    """PRUNEBOARD_HOME: database, model cache and exports (default /data when that persistent volume
    exists and is writable, else ./var)."""
    value = os.environ.get("PRUNEBOARD_HOME")
    if value:
        return Path(value).resolve()
    if DATA_VOLUME.is_dir() and os.access(DATA_VOLUME, os.W_OK | os.X_OK):
        return DATA_VOLUME.resolve()
    return Path("var").resolve()


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
    """PRUNEBOARD_LOCAL_WORKERS: workers app.py starts (default 1; 0 in Space mode, GPUs are elsewhere)."""
    return _int_env("PRUNEBOARD_LOCAL_WORKERS", 0 if space_mode() else 1)


def allow_noop() -> bool:
    return os.environ.get("PRUNEBOARD_ALLOW_NOOP") == "1"


def auto_baselines() -> bool:
    """PRUNEBOARD_AUTO_BASELINES (default 1): submitting a pruned config queues its dense baseline."""
    return os.environ.get("PRUNEBOARD_AUTO_BASELINES", "1") != "0"


def prune_cache_enabled() -> bool:
    """PRUNEBOARD_PRUNE_CACHE=1: a worker keeps its last pruned model in memory and reuses it for a
    run with the same pruning (e.g. the same method in the other paradigm). Off by default: the
    copy costs as much memory as the model."""
    return os.environ.get("PRUNEBOARD_PRUNE_CACHE") == "1"


DEFAULT_EFFICIENCY_ITERATIONS = 10
"""Timed iterations per efficiency figure at least (LLM-Perf's minimum)."""
DEFAULT_EFFICIENCY_MIN_SECONDS = 10.0
"""Seconds per efficiency figure at least: iterations go on until both minimums are met."""
DEFAULT_EFFICIENCY_PROMPT_TOKENS = 256
DEFAULT_EFFICIENCY_NEW_TOKENS = 64


def efficiency_iterations() -> int:
    """PRUNEBOARD_EFFICIENCY_ITERATIONS (default 10): timed iterations per figure at least."""
    return max(_int_env("PRUNEBOARD_EFFICIENCY_ITERATIONS", DEFAULT_EFFICIENCY_ITERATIONS), 1)


def efficiency_min_seconds() -> float:
    """PRUNEBOARD_EFFICIENCY_MIN_SECONDS (default 10): seconds of timed iterations per figure at least."""
    value = os.environ.get("PRUNEBOARD_EFFICIENCY_MIN_SECONDS")
    return max(float(value), 0.0) if value not in (None, "") else DEFAULT_EFFICIENCY_MIN_SECONDS


def efficiency_prompt_tokens() -> int:
    """PRUNEBOARD_EFFICIENCY_PROMPT_TOKENS (default 256): the probe prompt's length (batch 1)."""
    return max(_int_env("PRUNEBOARD_EFFICIENCY_PROMPT_TOKENS", DEFAULT_EFFICIENCY_PROMPT_TOKENS), 1)


def efficiency_new_tokens() -> int:
    """PRUNEBOARD_EFFICIENCY_NEW_TOKENS (default 64): greedy tokens decoded per timed decode."""
    return max(_int_env("PRUNEBOARD_EFFICIENCY_NEW_TOKENS", DEFAULT_EFFICIENCY_NEW_TOKENS), 1)


def efficiency_dense_reference() -> bool:
    """PRUNEBOARD_EFFICIENCY_DENSE (default 1): a pruned run also measures the dense model, loaded
    again in the same process after the pruned one, so its measured speed-up is a ratio of two
    figures taken side by side; 0 skips it (the leaderboard then divides by the dense run's own
    figure, from another process or machine)."""
    return os.environ.get("PRUNEBOARD_EFFICIENCY_DENSE", "1") != "0"


def use_cuda() -> bool:
    """Whether models are loaded and pruned on CUDA: when torch sees a CUDA device, unless
    PRUNEBOARD_WORKER_DEVICE=cpu (a worker advertised as a CPU computes on its CPU, so a job that
    asked for a CPU runs on one; tests compare CUDA runs with CPU runs in one process this way)."""
    import torch

    return os.environ.get("PRUNEBOARD_WORKER_DEVICE", "").strip().lower() != "cpu" and torch.cuda.is_available()


def offload() -> str:
    """PRUNEBOARD_OFFLOAD: auto (default) | always | never. Where a run's weights live while it is
    pruned and evaluated (`backend.models.placement`): `auto` holds a model larger than the GPU on CPU,
    prunes it one block at a time on the GPU and spreads it over the GPUs for evaluation."""
    value = (os.environ.get("PRUNEBOARD_OFFLOAD") or "auto").strip().lower()
    if value not in ("auto", "always", "never"):
        raise ValueError(f"PRUNEBOARD_OFFLOAD must be auto, always or never, got {value!r}")
    return value


def seed_results() -> bool:
    """PRUNEBOARD_SEED_RESULTS (default 1): an empty database imports the shipped results snapshot
    (results/snapshot.jsonl.gz) when the app starts; 0 leaves it empty."""
    return os.environ.get("PRUNEBOARD_SEED_RESULTS", "1") != "0"


def results_repo() -> str | None:
    """PRUNEBOARD_RESULTS_REPO: a Hub dataset repo (owner/name) the app keeps its results in, so they
    survive a Space restart without persistent storage (`jobs.results_repo`)."""
    return os.environ.get("PRUNEBOARD_RESULTS_REPO") or None


def hub_token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` saved (huggingface_hub's order); None without either.
    Writes the results repo and pushed models; reads gated data and models."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token  # only when no token is in the environment

    return get_token()


HUB_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """HF_ENDPOINT (default the Hub), read when asked: huggingface_hub reads it once, at import, so a
    process that imported it earlier still follows a change (tests point it at a loopback server)."""
    return (os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT).rstrip("/")


def public_url() -> str | None:
    """PRUNEBOARD_PUBLIC_URL, else https://$SPACE_HOST on a Space: the app's address, for links back to
    a run from a published model card. None when neither is known."""
    value = os.environ.get("PRUNEBOARD_PUBLIC_URL")
    if value:
        return value.rstrip("/")
    host = os.environ.get("SPACE_HOST")
    return f"https://{host}" if host else None


def wandb_credentials() -> bool:
    """WANDB_API_KEY is set: finished runs are logged to Weights & Biases (with the wandb package
    installed; wandb itself reads WANDB_PROJECT, WANDB_ENTITY, ...)."""
    return bool(os.environ.get("WANDB_API_KEY"))


def trackio_project() -> str | None:
    """PRUNEBOARD_TRACKIO_PROJECT: log finished runs to this Trackio project (with the trackio
    package installed); PRUNEBOARD_TRACKIO_SPACE_ID optionally names the Space it syncs to."""
    return os.environ.get("PRUNEBOARD_TRACKIO_PROJECT") or None


def trackio_space_id() -> str | None:
    return os.environ.get("PRUNEBOARD_TRACKIO_SPACE_ID") or None


def results_push_seconds() -> float:
    """PRUNEBOARD_RESULTS_PUSH_SECONDS (default 600): the longest a finished run waits to be pushed."""
    return float(os.environ.get("PRUNEBOARD_RESULTS_PUSH_SECONDS") or 600)


def results_debounce_seconds() -> float:
    """PRUNEBOARD_RESULTS_DEBOUNCE_SECONDS (default 60): quiet time after the last finished run
    before the results are pushed (a burst of runs makes one push)."""
    return float(os.environ.get("PRUNEBOARD_RESULTS_DEBOUNCE_SECONDS") or 60)


def server_port() -> int:
    return _int_env("GRADIO_SERVER_PORT", DEFAULT_PORT)


def server_name() -> str:
    """GRADIO_SERVER_NAME: the address the app listens on (default 127.0.0.1, this machine only; in
    Space mode 0.0.0.0, where the platform's proxy connects). A server that remote workers reach over
    the network sets 0.0.0.0 (or `python app.py --host 0.0.0.0`)."""
    return os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if space_mode() else "127.0.0.1")


def model_cache_dir() -> Path:
    """PRUNEBOARD_CACHE_DIR: downloaded and converted models (default $PRUNEBOARD_HOME/cache)."""
    value = os.environ.get("PRUNEBOARD_CACHE_DIR")
    return Path(value).resolve() if value else cache_dir()


def trace_cap_bytes() -> int:
    """PRUNEBOARD_TRACE_CAP_MB: compressed trace bytes kept in full per run (default 64 MB)."""
    value = os.environ.get("PRUNEBOARD_TRACE_CAP_MB")
    megabytes = float(value) if value not in (None, "") else DEFAULT_TRACE_CAP_MB
    return max(int(megabytes * 1024 * 1024), 0)


# --- Hugging Face Space: login, admins, quotas, backups ------------------------------------------


def space_mode() -> bool:
    """Running on a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def require_login() -> bool:
    """Submitting needs a logged-in user: on a Space, or PRUNEBOARD_REQUIRE_LOGIN=1."""
    return space_mode() or os.environ.get("PRUNEBOARD_REQUIRE_LOGIN") == "1"


OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")
"""What a Space with `hf_oauth: true` gets from the platform (Gradio's real login needs them all)."""


def real_space_login() -> bool:
    """Hugging Face login can really happen here: a Space (SYSTEM=spaces, SPACE_ID) with the OAuth
    client variables. Anywhere else Gradio's login would sign every visitor in as the host's own
    Hugging Face account, so PruneBoard never offers it there."""
    return (os.environ.get("SYSTEM") == "spaces" and bool(os.environ.get("SPACE_ID"))
            and all(os.environ.get(name) for name in OAUTH_VARIABLES))


def admins() -> frozenset[str]:
    """PRUNEBOARD_ADMINS: comma-separated Hugging Face usernames (compared case-insensitively)."""
    return frozenset(n.strip().casefold() for n in os.environ.get("PRUNEBOARD_ADMINS", "").split(",") if n.strip())


def injected_identity() -> str | None:
    """PRUNEBOARD_TEST_IDENTITY: the username tests act as; ignored in Space mode (real OAuth there)."""
    return None if space_mode() else (os.environ.get("PRUNEBOARD_TEST_IDENTITY") or None)


def max_queued_per_user() -> int:
    """PRUNEBOARD_MAX_QUEUED_PER_USER: a user's queued or running jobs at once (0: no limit)."""
    return _int_env("PRUNEBOARD_MAX_QUEUED_PER_USER", DEFAULT_MAX_QUEUED_PER_USER)


def max_submissions_per_day() -> int:
    """PRUNEBOARD_MAX_SUBMISSIONS_PER_DAY: a user's submissions and retries in 24 hours (0: no limit)."""
    return _int_env("PRUNEBOARD_MAX_SUBMISSIONS_PER_DAY", DEFAULT_MAX_SUBMISSIONS_PER_DAY)


def backup_seconds() -> float:
    """PRUNEBOARD_BACKUP_SECONDS: interval of the online SQLite backup (default 600 in Space mode,
    else 0: off)."""
    value = os.environ.get("PRUNEBOARD_BACKUP_SECONDS")
    if value in (None, ""):
        return float(DEFAULT_SPACE_BACKUP_SECONDS if space_mode() else 0)
    return max(float(value), 0.0)


def backup_dir() -> Path:
    """PRUNEBOARD_BACKUP_DIR: where the SQLite backup is kept (default $PRUNEBOARD_HOME/backups)."""
    value = os.environ.get("PRUNEBOARD_BACKUP_DIR")
    return Path(value).resolve() if value else home() / "backups"


# --- the sandbox of generated code (backend.sandbox) ---------------------------------------------


def bwrap_path() -> str | None:
    """PRUNEBOARD_BWRAP: the bubblewrap binary that builds the jail (default: `bwrap` on PATH)."""
    return os.environ.get("PRUNEBOARD_BWRAP") or None


def unsafe_sandbox() -> bool:
    """PRUNEBOARD_UNSAFE_SANDBOX=1: where the jail cannot be built, run generated code anyway in a
    plain child process (limits, no namespaces), with a warning in the log. Off by default: code
    tasks are then refused."""
    return os.environ.get("PRUNEBOARD_UNSAFE_SANDBOX") == "1"


# --- bounds on one job of a user who is not an admin (jobs.limits) ---------------------------------

DEFAULT_WALL_MINUTES = 240.0
MAX_WALL_MINUTES = 1440.0
MAX_WORK_TOKENS = 100_000_000
"""About ten times the largest study preset (backend.work.work_tokens)."""


def default_wall_minutes() -> float:
    """PRUNEBOARD_DEFAULT_WALL_MINUTES: wall time given to a non-admin's job that names none (default 240)."""
    return float(os.environ.get("PRUNEBOARD_DEFAULT_WALL_MINUTES") or DEFAULT_WALL_MINUTES)


def max_wall_minutes() -> float:
    """PRUNEBOARD_MAX_WALL_MINUTES: the most wall time a non-admin's job may ask for (default 1440)."""
    return float(os.environ.get("PRUNEBOARD_MAX_WALL_MINUTES") or MAX_WALL_MINUTES)


def max_work_tokens() -> int:
    """PRUNEBOARD_MAX_WORK_TOKENS: the most estimated work (tokens generated, scored, calibrated on and
    trained on; backend.work) of a non-admin's job (default 100 million; 0: no limit)."""
    return _int_env("PRUNEBOARD_MAX_WORK_TOKENS", MAX_WORK_TOKENS)
