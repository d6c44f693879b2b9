"""A loopback stand-in for the Hugging Face Hub, for tests: the real `huggingface_hub` client talks
HTTP to it (`HF_ENDPOINT=hub.url`, or `endpoint=hub.url`); nothing of the client is mocked.

It answers the endpoints huggingface_hub 2.4 calls to download and to upload:

* repo info `GET /api/{type}s/{repo}[/revision/{rev}]`, `POST .../paths-info/{rev}` (form `paths`),
  `GET .../tree/{rev}[/{path}]`;
* `HEAD`/`GET /[{type}s/]{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag` (git blob id, or
  the sha256 of LFS files, then also `X-Linked-Etag` and `X-Linked-Size`), `Content-Length`, and
  byte ranges; errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound,
  EntryNotFound, GatedRepo: 401 without a token, 403 with one that was not granted);
* uploads: `POST /api/repos/create`, `POST /api/validate-yaml` (a model card's front matter),
  `POST .../preupload/{rev}` (every file "regular", so its
  content comes inline) and `POST .../commit/{rev}` (NDJSON: header, file, deletedFile,
  deletedFolder), each a new commit on the branch; `files_at` reads back what was committed.

Knobs, per (repo, path): `corrupt` serves the file with its first byte flipped (same size),
`truncate` serves its first half (the response headers describe the half: only the stated hash
can tell), `fail` answers GET with 500. `require_token` refuses every request without a valid
token; gated repos always need one. `requests` logs (method, path) of every request.

Use it as a context manager, or through the `hub` fixture in tests/conftest.py.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeHub", "git_blob_id", "TEST_TOKEN"]

TEST_TOKEN = "hf_loopback_test_token"
LFS_SUFFIXES = (".parquet", ".zip", ".gz", ".arrow")
"""Stored as LFS files (the Hub's .gitattributes does so for these); others are plain git blobs."""
TYPE_PREFIXES = {"dataset": "datasets/", "space": "spaces/", "model": ""}


def git_blob_id(content: bytes) -> str:
    """The git object id of a file: sha1 of `blob <size>\\0` + content (the Hub's oid of non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    gated: bool = False
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeHub:
    """State and knobs of the loopback Hub; `start()` serves it on 127.0.0.1 at a free port."""

    def __init__(self, tokens: tuple[str, ...] = (TEST_TOKEN,), user: str = "tester"):
        self.tokens = set(tokens)
        self.user = user
        self.require_token = False
        self.corrupt: set[tuple[str, str]] = set()
        self.truncate: set[tuple[str, str]] = set()
        self.fail: set[tuple[str, str]] = set()
        self.requests: list[tuple[str, str]] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- content ---------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, *, repo_type: str = "dataset",
                 gated: bool = False, commit: str | None = None) -> str:
        """Create a repo whose `main` holds `files`; returns that commit (`commit` chooses its id, so a
        source pinned to a real commit resolves)."""
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                raise ValueError(f"{repo_type} {repo_id} exists")
            self._repos[key] = _Repo(repo_type, repo_id, gated=gated)
            return self.commit(repo_id, files or {}, "initial commit", repo_type=repo_type, commit_id=commit)

    def commit(self, repo_id: str, files: dict[str, bytes], message: str, *, repo_type: str = "dataset",
               branch: str = "main", deleted: tuple[str, ...] = (), commit_id: str | None = None) -> str:
        """A new commit on `branch`: its files plus `files`, less `deleted` (files or folders)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            parent = repo.branches.get(branch)
            tree = dict(repo.commits[parent]) if parent else {}
            for path in deleted:
                tree = {p: c for p, c in tree.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
            tree.update(files)
            repo.lfs.update(p for p in files if p.endswith(LFS_SUFFIXES))
            self._counter += 1
            sha = commit_id or hashlib.sha1(f"{repo_id}:{parent}:{message}:{self._counter}".encode()).hexdigest()
            repo.commits[sha] = tree
            repo.branches[branch] = sha
            return sha

    def files_at(self, repo_id: str, revision: str = "main", *, repo_type: str = "dataset") -> dict[str, bytes]:
        """The repo's files at a branch or commit (what uploads committed)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(revision)
            return dict(repo.commits[sha])

    def has_repo(self, repo_id: str, repo_type: str = "dataset") -> bool:
        return (repo_type, repo_id) in self._repos

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise _HubError(404, "RepoNotFound", f"Repository not found: {repo_type} {repo_id}") from None

    # --- request handling (called by the handler, under the lock) --------------------------------

    def _authorise(self, repo: _Repo | None, token: str | None, write: bool = False) -> None:
        """Writes and gated repos need a granted token; with `require_token`, every request does."""
        gated = repo is not None and repo.gated and not write
        if not (write or gated or self.require_token) or token in self.tokens:
            return
        code = "GatedRepo" if gated else None
        if token is None:
            raise _HubError(401, code, "Access to this repo is restricted: you must be authenticated")
        raise _HubError(403 if gated else 401, code, "Your token was not granted access to this repo")

    def _entry(self, repo: _Repo, path: str, content: bytes) -> dict[str, Any]:
        """A paths-info / tree entry; an LFS file's git oid is that of its pointer, as on the Hub."""
        if path not in repo.lfs:
            return {"type": "file", "path": path, "size": len(content), "oid": git_blob_id(content)}
        sha256 = hashlib.sha256(content).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n".encode()
        return {"type": "file", "path": path, "size": len(content), "oid": git_blob_id(pointer),
                "lfs": {"oid": sha256, "size": len(content), "pointerSize": len(pointer)}}

    def _listing(self, repo: _Repo, tree: dict[str, bytes], under: str, recursive: bool) -> list[dict[str, Any]]:
        """Tree entries below `under`: its files and folders (all levels when `recursive`)."""
        prefix = under.strip("/") + "/" if under.strip("/") else ""
        folders: dict[str, dict[str, Any]] = {}
        files = []
        for path in sorted(p for p in tree if p.startswith(prefix)):
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = prefix + "/".join(parts[:depth])
                folders.setdefault(folder, {"type": "directory", "path": folder,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if recursive or len(parts) == 1:
                files.append(self._entry(repo, path, tree[path]))
        return [*folders.values(), *files]

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Dispatch one request: (status, headers, body)."""
        split = urlsplit(url)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = parse_qs(split.query)
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        with self._lock:
            self.requests.append((method, split.path))
            try:
                if parts[:1] == ["api"]:
                    return self._api(method, parts[1:], query, headers, body, token)
                return self._resolve(method, parts, headers, token)
            except _HubError as error:
                response_headers = {"Content-Type": "application/json", "X-Error-Message": error.message}
                if error.code:
                    response_headers["X-Error-Code"] = error.code
                return error.status, response_headers, json.dumps({"error": error.message}).encode()

    def _api(self, method: str, parts: list[str], query: dict[str, list[str]], headers: dict[str, str],
             body: bytes, token: str | None) -> tuple[int, dict[str, str], bytes]:
        if parts == ["whoami-v2"] and method == "GET":
            self._authorise(None, token, write=True)
            return _json({"type": "user", "name": self.user, "auth": {"accessToken": {"role": "write"}}})
        if parts == ["repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"), token)
        if parts == ["validate-yaml"] and method == "POST":  # a model card's front matter, before its commit
            return self._validate_yaml(json.loads(body or b"{}"))
        if len(parts) < 3 or not parts[0].endswith("s"):
            raise _HubError(404, None, f"no such endpoint: /api/{'/'.join(parts)}")
        repo_type, repo_id, rest = parts[0][:-1], f"{parts[1]}/{parts[2]}", parts[3:]
        repo = self._repo(repo_type, repo_id)
        write = rest[:1] in (["preupload"], ["commit"])
        self._authorise(repo, token, write=write)
        action, revision, tail = (rest[0], rest[1], "/".join(rest[2:])) if len(rest) >= 2 else ("info", "main", "")
        sha = repo.resolve(revision)
        if sha is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        tree = repo.commits[sha]
        if action in ("info", "revision") and method == "GET":
            return _json({
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
                "sha": sha, "private": False, "disabled": False, "gated": "manual" if repo.gated else False,
                "lastModified": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "tags": [], "cardData": {},
                "siblings": [{"rfilename": path} for path in sorted(tree)],
            })
        if action == "paths-info" and method == "POST":
            wanted = parse_qs(body.decode()).get("paths", [])
            listing = self._listing(repo, tree, "", recursive=True)
            return _json([entry for entry in listing if entry["path"] in wanted])
        if action == "tree" and method == "GET":
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return _json(self._listing(repo, tree, tail, recursive))
        if action == "preupload" and method == "POST":
            files = json.loads(body)["files"]
            return _json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                     "oid": git_blob_id(tree[f["path"]]) if f["path"] in tree else None}
                                    for f in files], "commitOid": sha})
        if action == "commit" and method == "POST":
            return self._commit(repo, revision, body)
        raise _HubError(404, None, f"no such endpoint: {method} /api/{'/'.join(parts)}")

    def _create_repo(self, payload: dict[str, Any], token: str | None) -> tuple[int, dict[str, str], bytes]:
        self._authorise(None, token, write=True)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{self.url}/{TYPE_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            raise _HubError(409, None, f"You already created this {repo_type} repo: {url}")
        self.add_repo(repo_id, {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"},
                      repo_type=repo_type)
        # huggingface_hub 2.x sends `visibility`; older clients sent `private`
        self._repos[(repo_type, repo_id)].private = payload.get("visibility") == "private" or bool(payload.get("private"))
        return _json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    @staticmethod
    def _validate_yaml(payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        """400 with `errors` when a README's front matter is not a YAML mapping (as the Hub refuses it)."""
        import yaml

        content = payload.get("content") or ""
        if content.startswith("---"):
            try:
                if not isinstance(yaml.safe_load(content.split("---", 2)[1]) or {}, dict):
                    raise yaml.YAMLError("not a mapping")
            except yaml.YAMLError:
                return _json({"errors": [{"message": "invalid YAML front matter"}], "warnings": []}, status=400)
        return _json({"errors": [], "warnings": []})

    def repo_ids(self, repo_type: str = "model") -> set[str]:
        """Ids of the repos of one type that exist (created by uploads or `add_repo`)."""
        return {repo_id for kind, repo_id in self._repos if kind == repo_type}

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        return self._repo(repo_type, repo_id).private

    def _commit(self, repo: _Repo, revision: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, None, "a commit starts with its header line")
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:  # lfsFile: preupload never asks for LFS uploads here
                raise _HubError(400, None, f"unsupported commit operation {line['key']!r}")
        sha = self.commit(repo.repo_id, added, lines[0]["value"]["summary"], repo_type=repo.repo_type,
                          branch=revision, deleted=tuple(deleted))
        return _json({"success": True, "commitOid": sha, "hookOutput": "",
                      "commitUrl": f"{self.url}/{TYPE_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{sha}"})

    def _resolve(self, method: str, parts: list[str], headers: dict[str, str],
                 token: str | None) -> tuple[int, dict[str, str], bytes]:
        repo_type = "model"
        if parts[:1] in (["datasets"], ["spaces"]):
            repo_type, parts = parts[0][:-1], parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            raise _HubError(404, None, f"no such endpoint: /{'/'.join(parts)}")
        repo = self._repo(repo_type, f"{parts[0]}/{parts[1]}")
        self._authorise(repo, token)
        sha = repo.resolve(parts[3])
        if sha is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {parts[3]}")
        path = "/".join(parts[4:])
        content = repo.commits[sha].get(path)
        if content is None:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist at {sha}")
        key = (repo.repo_id, path)
        if method == "GET" and key in self.fail:
            raise _HubError(500, None, "Internal Error (the loopback hub's fail knob)")
        etag = hashlib.sha256(content).hexdigest() if path in repo.lfs else git_blob_id(content)
        served = content
        if key in self.corrupt:
            served = bytes([content[0] ^ 0xFF]) + content[1:] if content else b"\0"
        if key in self.truncate:
            served = content[: len(content) // 2]
        response_headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                            "Content-Type": "application/octet-stream"}
        if path in repo.lfs:
            response_headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(served))})
        status, body = 200, served
        start = _range_start(headers.get("range"))
        if start is not None and method == "GET" and 0 < start < len(served):
            status, body = 206, served[start:]
            response_headers["Content-Range"] = f"bytes {start}-{len(served) - 1}/{len(served)}"
        response_headers["Content-Length"] = str(len(body))
        return status, response_headers, body if method == "GET" else b""


def _range_start(value: str | None) -> int | None:
    if not value or not value.startswith("bytes="):
        return None
    first = value[6:].split(",")[0].split("-")[0]
    return int(first) if first.isdigit() else None


def _json(data: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, response_headers, payload = self.hub.handle(self.command, self.path, headers, body)
        self.send_response(status)
        response_headers.setdefault("Content-Length", str(len(payload)))
        for name, value in response_headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # requests are in hub.requests; stderr stays for the test's own output
