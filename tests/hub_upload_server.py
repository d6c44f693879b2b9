"""A loopback server answering like the Hugging Face Hub for uploads: what `HfApi.create_repo`,
`upload_folder` and `create_commit` of huggingface_hub 2.4.0 send, and nothing else.

    with HubUploadServer(token="hf_test") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # before huggingface_hub reads it
        ...
        hub.files("owner/name")  # {path: bytes} of the repo's main branch

Endpoints (paths as the client builds them):
* `POST /api/repos/create` `{"name", "organization", "type", "visibility"}`: 200 `{"url"}`, 409 when
  the repo exists (the client's `exist_ok` accepts that).
* `POST /api/validate-yaml` `{"content", "repoType"}`: 400 with `errors` when the README's front
  matter is not a YAML mapping (the legacy commit path checks a README before committing).
* `POST /api/{type}s/{owner}/{name}/preupload/{revision}`: every file is "regular", so its bytes
  come inline (base64) in the commit.
* `POST /api/{type}s/{owner}/{name}/commit/{revision}`: NDJSON, a `header` line then `file` /
  `deletedFile` lines; `lfsFile` lines are refused (this server never asks for LFS).

Every request needs `Authorization: Bearer <token>` (401 otherwise); each one is recorded in
`requests` as (method, path). Written to be folded into the shared Hub test server later.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

__all__ = ["HubUploadServer"]


class HubUploadServer:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, dict[str, Any]] = {}
        """repo key "type:owner/name" -> {"private": bool, "files": {path: bytes}, "commits": [summary]}."""
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._http.serve_forever, name="hub-upload-server", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        return dict(self.repos[f"{repo_type}:{repo_id}"]["files"])

    def __enter__(self) -> HubUploadServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    # --- endpoints ----------------------------------------------------------------------------

    def create_repo(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        key = f"{repo_type}:{repo_id}"
        with self._lock:
            if key in self.repos:
                return 409, {"error": "You already created this repo", "url": self._url(repo_type, repo_id)}
            self.repos[key] = {"private": body.get("visibility") == "private", "files": {}, "commits": []}
        return 200, {"url": self._url(repo_type, repo_id), "name": repo_id}

    def preupload(self, repo: dict[str, Any], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": _git_oid(repo["files"][f["path"]]) if f["path"] in repo["files"] else None}
                 for f in body.get("files", [])]
        return 200, {"files": files, "commitOid": _head(repo)}

    def commit(self, repo: dict[str, Any], repo_type: str, repo_id: str, lines: list[dict[str, Any]]
               ) -> tuple[int, dict[str, Any]]:
        if not lines or lines[0].get("key") != "header":
            return 400, {"error": "the first line must be the commit header"}
        changes: dict[str, bytes | None] = {}
        for line in lines[1:]:
            value = line.get("value") or {}
            if line.get("key") == "file" and value.get("encoding") == "base64":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif line.get("key") == "deletedFile":
                changes[value["path"]] = None
            else:
                return 422, {"error": f"unsupported commit line {line.get('key')!r}"}
        with self._lock:
            for path, content in changes.items():
                if content is None:
                    repo["files"].pop(path, None)
                else:
                    repo["files"][path] = content
            repo["commits"].append(lines[0]["value"].get("summary", ""))
            oid = _head(repo)
        return 200, {"commitUrl": f"{self._url(repo_type, repo_id)}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": None}

    def validate_yaml(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        content = body.get("content") or ""
        if content.startswith("---"):
            front = content.split("---", 2)[1]
            try:
                if isinstance(yaml.safe_load(front) or {}, dict):
                    return 200, {"errors": [], "warnings": []}
            except yaml.YAMLError:
                pass
            return 400, {"errors": [{"message": "invalid YAML front matter"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo_id}"


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _head(repo: dict[str, Any]) -> str:
    """A commit id that changes with every commit."""
    return hashlib.sha1(f"{len(repo['commits'])}:{sorted(repo['files'])}".encode()).hexdigest()


def _handler(hub: HubUploadServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            hub.requests.append(("POST", self.path))
            if self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._answer(401, {"error": "Invalid credentials in Authorization header"})
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?", 1)[0]
            if path == "/api/repos/create":
                return self._answer(*hub.create_repo(json.loads(raw)))
            if path == "/api/validate-yaml":
                return self._answer(*hub.validate_yaml(json.loads(raw)))
            parts = path.split("/")  # "", "api", "models", owner, name, action, revision
            if len(parts) == 7 and parts[1] == "api" and parts[2].endswith("s"):
                repo_type, repo_id, action = parts[2][:-1], f"{parts[3]}/{parts[4]}", parts[5]
                repo = hub.repos.get(f"{repo_type}:{repo_id}")
                if repo is None:
                    return self._answer(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if action == "preupload":
                    return self._answer(*hub.preupload(repo, json.loads(raw)))
                if action == "commit":
                    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
                    return self._answer(*hub.commit(repo, repo_type, repo_id, lines))
            return self._answer(404, {"error": f"not served here: POST {path}"})

        def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
