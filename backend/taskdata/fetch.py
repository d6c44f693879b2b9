"""Download a task's data from the Hugging Face Hub into PRUNEBOARD_DATA_DIR, all or nothing.

`fetch_task(name)`:
1. resolves the source's revision to a commit (`HfApi.dataset_info(...).sha`) and asks the Hub for
   the stated hash of every file at that commit (`get_paths_info`: the sha256 of LFS files, the git
   blob id of the others);
2. downloads the files with `hf_hub_download` into a private work directory under
   `$PRUNEBOARD_HOME/cache/data-fetch/` and checks each against its stated hash and size, so a
   corrupt or truncated download is refused;
3. converts them to the task's local layout (`backend.taskdata.convert`) in the work directory and
   writes the manifest (`<folder>/<task>.manifest.json`: repo, revision asked, commit resolved,
   upstream hashes, sha256 of every written file, time, `verified`);
4. copies every file next to its target under a temporary name and only then renames them all into
   place, the manifest last. Any failure before the renames leaves the data dir as it was.

Errors are `DataFetchError`s carrying the CLI's exit code: 2 for an unknown task or a gated one
without a token (or refused by the Hub), 1 for a failed or corrupt download. huggingface_hub is
imported only here, and only when a fetch runs. A per-task lock keeps two workers of one host from
fetching the same task at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from common import settings
from backend.registry import UnknownName
from backend.taskdata.sources import SOURCES, HubSource, get_source
from backend.tasks import get_task

__all__ = ["DataFetchError", "UnknownDataTask", "TokenRequired", "DownloadFailed", "FetchOutcome", "FetchReport",
           "fetch_task", "fetch_tasks", "resolve_task_names", "check_tokens", "manifest_name", "manifest_path"]

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
_CHUNK = 1 << 20

Log = Callable[[str], None]


class DataFetchError(Exception):
    """A fetch that did not happen; `exit_code` is what `python -m jobs data fetch` returns."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, whatever the Hub said


class UnknownDataTask(DataFetchError):
    exit_code = 2


class TokenRequired(DataFetchError):
    """A gated dataset without a token, or whose terms the token's account has not accepted."""

    exit_code = 2


class DownloadFailed(DataFetchError):
    """The Hub, the network, a hash check or a conversion failed; nothing was written."""

    exit_code = 1


@dataclass(frozen=True)
class FetchOutcome:
    task: str
    status: Literal["fetched", "present", "no-data"]
    """fetched: downloaded now; present: the task's files were there already (not fetched without
    --force); no-data: the task needs none."""
    manifest_path: Path | None = None
    manifest: dict[str, Any] | None = field(default=None, compare=False)


def manifest_name(source: HubSource) -> str:
    """Beside the task's first file, relative to the data dir: e.g. `piqa/piqa.manifest.json`."""
    return (Path(source.outputs[0]).parent / f"{source.task}.manifest.json").as_posix()


def manifest_path(source: HubSource, data_dir: Path) -> Path:
    return data_dir / manifest_name(source)


def _work_root() -> Path:
    root = settings.cache_dir() / "data-fetch"
    root.mkdir(parents=True, exist_ok=True)
    return root


# --- choosing what to fetch ------------------------------------------------------------------------


def resolve_task_names(names: Iterable[str], every: bool = False) -> list[str]:
    """The tasks to fetch, in order, each once: `names`, or with `every` all tasks with a source.
    Raises UnknownDataTask (exit 2) naming the first unknown one."""
    chosen = list(SOURCES) if every else []
    for name in names:
        try:
            get_task(name)
        except UnknownName as exc:
            raise UnknownDataTask(str(exc)) from None
        chosen.append(name)
    if not chosen:
        raise UnknownDataTask("name the tasks to fetch, or --all")
    return list(dict.fromkeys(chosen))


def check_tokens(names: Iterable[str]) -> None:
    """Raise TokenRequired (exit 2) for the first gated task when there is no token, before anything
    is downloaded."""
    for name in names:
        source = get_source(name)
        if source is not None and source.gated and settings.hub_token() is None:
            raise TokenRequired(
                f"{name}: {source.repo_id} is gated: accept {source.gated}, then set HF_TOKEN to a token "
                "of that account (or log in with `hf auth login`) and run the fetch again")


# --- the fetch ---------------------------------------------------------------------------------------


@dataclass
class FetchReport:
    """What `fetch_tasks` did: an outcome per fetched (or present) task, an error per failed one."""

    data_dir: Path
    outcomes: list[FetchOutcome] = field(default_factory=list)
    failures: dict[str, DataFetchError] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return max((error.exit_code for error in self.failures.values()), default=0)

    def as_dict(self) -> dict[str, Any]:
        tasks = []
        for outcome in self.outcomes:
            manifest = outcome.manifest or {}
            tasks.append({
                "task": outcome.task, "status": outcome.status,
                "manifest": str(outcome.manifest_path) if outcome.manifest_path else None,
                **{key: manifest.get(key) for key in ("repo_id", "revision", "commit", "verified", "files")},
            })
        return {"data_dir": str(self.data_dir), "tasks": tasks,
                "failed": {task: str(error) for task, error in self.failures.items()}}


def fetch_tasks(names: Iterable[str], *, every: bool = False, force: bool = False, data_dir: Path | None = None,
                log: Log | None = None) -> FetchReport:
    """Fetch several tasks, each all or nothing. Unknown names, and a named gated task without a
    token, raise (exit 2) before anything is downloaded; a failed task is recorded and the others
    still run (with `every`, gated tasks without a token are among those)."""
    log = log or logger.info
    names = list(names)
    tasks = resolve_task_names(names, every)
    check_tokens(names)
    report = FetchReport(Path(data_dir) if data_dir is not None else settings.data_dir())
    for task in tasks:
        try:
            report.outcomes.append(fetch_task(task, report.data_dir, force=force, log=log))
        except DataFetchError as exc:
            report.failures[task] = exc
            log(f"not fetched: {exc}")  # messages start with the task
    return report


def fetch_task(name: str, data_dir: Path | None = None, *, force: bool = False, log: Log | None = None) -> FetchOutcome:
    """Fetch one task's data (see the module docstring); a task whose files are present is left
    alone unless `force`."""
    log = log or logger.info
    (name,) = resolve_task_names([name])
    source = get_source(name)
    if source is None:
        return FetchOutcome(name, "no-data")
    check_tokens([name])
    data_dir = Path(data_dir) if data_dir is not None else settings.data_dir()
    with _task_lock(name):  # a second worker waits, then finds the files present
        if not force and get_task(name).data_present(data_dir):
            return FetchOutcome(name, "present", *_existing_manifest(source, data_dir))
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_work_root()))
        try:
            staged, manifest = _download_and_convert(source, work, log)
            target = manifest_path(source, data_dir)
            _install(staged, data_dir)
            log(f"{name}: wrote {', '.join(source.outputs)} and {target.relative_to(data_dir)}")
            return FetchOutcome(name, "fetched", target, manifest)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _download_and_convert(source: HubSource, work: Path, log: Log) -> tuple[dict[str, Path], dict[str, Any]]:
    """Staged files {path relative to the data dir: file in `work`} (the manifest last) and the manifest."""
    commit, downloaded, upstream = _download(source, work / "download", log)
    out = work / "out"
    where = f"{source.repo_id}@{commit}"
    try:
        for conversion in source.conversions:
            targets = [out / t for t in conversion.targets]
            for target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
            conversion.write([downloaded[s] for s in conversion.sources], targets)
    except (ValueError, KeyError, TypeError, OSError) as exc:  # an upstream file not in its expected format
        raise DownloadFailed(f"{source.task}: converting {where} failed: {type(exc).__name__}: "
                             f"{_first_line(exc)}") from None
    staged = {rel: out / rel for rel in source.outputs}
    manifest = {
        "format": MANIFEST_FORMAT,
        "task": source.task,
        "repo_id": source.repo_id,
        "repo_type": source.repo_type,
        "revision": source.revision,
        "commit": commit,
        "verified": source.verified,
        "gated": source.gated is not None,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "upstream": upstream,
        "conversions": [{"sources": list(c.sources), "targets": list(c.targets), "note": c.note}
                        for c in source.conversions],
        "files": {rel: _hashes(path)[0] for rel, path in staged.items()},
    }
    staged[manifest_name(source)] = out / manifest_name(source)  # last: renamed into place last
    staged[manifest_name(source)].write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return staged, manifest


def _download(source: HubSource, folder: Path, log: Log) -> tuple[str, dict[str, Path], dict[str, Any]]:
    """(commit, {repo path: downloaded file}, {repo path: upstream record}), every file checked
    against the hash the Hub states for it at that commit."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError

    endpoint, token = settings.hub_endpoint(), settings.hub_token()
    try:
        api = HfApi(endpoint=endpoint, token=token)
        commit = api.dataset_info(source.repo_id, revision=source.revision).sha
        log(f"{source.task}: {source.repo_id}@{source.revision} is commit {commit}")
        stated = {info.path: info for info in api.get_paths_info(
            source.repo_id, list(source.files), repo_type=source.repo_type, revision=commit)}
        downloaded = {}
        for path in source.files:
            if not hasattr(stated.get(path), "blob_id"):  # absent, or a folder
                raise DownloadFailed(f"{source.task}: {path} is not a file of {source.repo_id} at {commit}")
            log(f"{source.task}: downloading {path}")
            downloaded[path] = Path(hf_hub_download(
                source.repo_id, path, repo_type=source.repo_type, revision=commit, endpoint=endpoint,
                token=token, local_dir=folder, cache_dir=folder / ".hf-cache"))
    except DataFetchError:
        raise
    except GatedRepoError as exc:
        raise TokenRequired(f"{source.task}: the Hub refused {source.repo_id} ({_first_line(exc)}): accept "
                            f"{source.gated or 'its access conditions'} with the account of HF_TOKEN") from None
    except Exception as exc:  # the network or the Hub failed, however it says so; nothing was written
        raise DownloadFailed(f"{source.task}: downloading {source.repo_id}@{source.revision} failed: "
                             f"{_first_line(exc)}") from None
    upstream = {path: _check_stated_hash(source.task, path, downloaded[path], stated[path]) for path in source.files}
    return commit, downloaded, upstream


def _check_stated_hash(task: str, path: str, local: Path, stated: Any) -> dict[str, Any]:
    """The downloaded file against the Hub's word: LFS files by sha256, others by git blob id (sha1 of
    `blob <size>\\0` + content), both by size. Returns the upstream record for the manifest."""
    sha256, git_sha1, size = _hashes(local, git=True)
    lfs = getattr(stated, "lfs", None)
    if lfs is not None:
        want_size, kind, want, got = lfs.size, "sha256", lfs.sha256, sha256
    else:
        want_size, kind, want, got = stated.size, "git blob id", stated.blob_id, git_sha1
    if size != want_size or got != want:
        raise DownloadFailed(
            f"{task}: {path} does not match the Hub's stated {kind} ({size} bytes, {got[:12]}... against "
            f"{want_size} bytes, {str(want)[:12]}...): corrupt or truncated download, nothing was written")
    return {"size": size, "sha256": sha256, "git_blob_id": git_sha1, "lfs": lfs is not None, "checked": kind}


def _hashes(path: Path, git: bool = False) -> tuple[str, str, int]:
    """(sha256, git blob id or "", size) of a file, read once."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {size}\0".encode()) if git else None
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha256.update(chunk)
            if blob is not None:
                blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest() if blob is not None else "", size


def _install(staged: dict[str, Path], data_dir: Path) -> None:
    """Copy each staged file next to its target under a temporary name; once all are copied, rename
    them into place in order (the manifest, last in `staged`, last). A failure while copying removes
    the copies and any folder it made, so the data dir is as before."""
    created: list[Path] = []
    copies: list[tuple[Path, Path]] = []
    try:
        for rel, source in staged.items():
            target = data_dir / rel
            for folder in reversed([target.parent, *target.parent.parents]):
                if not folder.exists():
                    folder.mkdir()
                    created.append(folder)
            handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".fetching", dir=target.parent)
            copies.append((Path(temporary), target))
            with os.fdopen(handle, "wb") as out, open(source, "rb") as inp:
                shutil.copyfileobj(inp, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
    except BaseException:
        for temporary, _ in copies:
            temporary.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    for temporary, target in copies:  # renames only: every file is whole before and after
        os.replace(temporary, target)


def _existing_manifest(source: HubSource, data_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    path = manifest_path(source, data_dir)
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None  # files put there by hand (e.g. ../shared/data): no manifest


@contextlib.contextmanager
def _task_lock(task: str) -> Iterator[None]:
    with open(_work_root() / f"{task}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
