"""A tiny stand-in for the Hugging Face Hub (resolve and upload endpoints), for tests (no network needed).

``FakeHub(root)`` serves ``root/<org>/<name>/<path>`` as ``{url}/<org>/<name>/resolve/<revision>/<path>``
(HEAD and GET) with the headers ``huggingface_hub.hf_hub_download`` reads: ``X-Repo-Commit``, ``ETag`` (the
git blob sha1 for small files), ``X-Linked-Etag`` / ``X-Linked-Size`` (sha256 and size) for LFS-like files,
``Content-Length``, and ``Range`` requests (206). Errors carry the Hub's ``X-Error-Code`` so the client raises
the same exceptions it would against the Hub. ``root/_files/<name>`` is served as ``{url}/files/<name>`` for
plain URL downloads. Each repo has one fake commit; ``main`` and that commit are the valid revisions.

Point the client at it with ``HF_ENDPOINT`` (read at call time by avdit's hub module) or ``endpoint=``.
Test hooks: ``requests`` (every (method, path) served), ``corrupt[path] = bytes`` (GET bodies replaced, headers
unchanged: the transfer looks fine but the content is wrong), ``truncate[path] = n`` (GET sends only the
first n bytes, with an honest Content-Length, so the client sees fewer bytes than X-Linked-Size).

Uploads (what ``huggingface_hub``'s ``create_repo``, ``create_branch``, ``create_commit`` / ``upload_*`` call, so
the real client code runs; Xet is not offered, so the client takes the LFS route):

- ``POST /api/repos/create`` (409 when it exists), ``POST /api/models/<repo>/branch/<branch>``,
  ``GET /api/models/<repo>[/revision/<rev>]`` (repo info: sha, private, siblings);
- ``POST /api/validate-yaml``: the README's metadata must be a YAML mapping with a known ``license`` id
  (``other`` needs ``license_name``), string or list ``base_model`` and ``tags``, as the Hub checks;
- ``POST /api/models/<repo>/preupload/<rev>``: "lfs" for weights-like suffixes and binary samples, else
  "regular", with the oid of the file already at that path (so unchanged files are skipped);
- ``POST /<repo>.git/info/lfs/objects/batch``, then ``PUT /_lfs/<oid>`` (the sha256 is checked) and
  ``POST /_lfs/<oid>/verify``;
- ``POST /api/models/<repo>/commit/<rev>`` (NDJSON: header, file, lfsFile, deletedFile, deletedFolder): a new
  commit on the branch, served by ``resolve`` like any other.

Writes need an ``Authorization`` header (401 without, as on the Hub); a private repo is not found without one.
Repos made through the API live in memory (``repos``); ``add_file`` repos are served from disk as before.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
KNOWN_LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0",
                  "cc-by-nc-nd-4.0", "openrail", "creativeml-openrail-m", "bsd-3-clause", "other", "unknown"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


@dataclasses.dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """What the Hub calls the file's oid: sha256 for LFS files, the git blob sha1 for the others."""
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_sha1(self.data)


@dataclasses.dataclass
class Repo:
    """A repo made through the API: commits (oid -> files) and branches (name -> commit oid)."""

    private: bool
    commits: dict[str, dict[str, Blob]] = dataclasses.field(default_factory=dict)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    messages: dict[str, str] = dataclasses.field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.requests: list[tuple[str, str]] = []
        self.corrupt: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.authorization: list[str | None] = []  # the Authorization header of every request
        self.repos: dict[str, Repo] = {}  # repos made through the API
        self.lfs: dict[str, bytes] = {}  # LFS objects uploaded (oid -> bytes), shared by all repos
        self._commit_count = 0
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
                hub._serve(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                if urlsplit(self.path).path.startswith("/api/"):
                    hub._api_get(self)
                else:
                    hub._serve(self, body=True)

            def do_POST(self) -> None:  # noqa: N802
                hub._post(self)

            def do_PUT(self) -> None:  # noqa: N802
                hub._put(self)

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- repos ----------------------------------------------------------------------------------------------
    @staticmethod
    def commit(repo_id: str) -> str:
        return hashlib.sha1(f"commit {repo_id}".encode()).hexdigest()

    def add_file(self, repo_id: str, path: str, data: bytes) -> Path:
        dest = self.root / repo_id / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return dest

    def add_url_file(self, name: str, data: bytes) -> str:
        """Serve ``data`` as a plain file; returns the URL base to put in front of ``name``."""
        self.add_file("_files", name, data)
        return f"{self.url}/files"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.authorization.clear()

    def file_requests(self) -> list[tuple[str, str]]:
        """Requests for files (resolve or plain URLs). huggingface_hub may also make background API calls of
        its own (e.g. ``/api/agent-harnesses`` once a day), which are left out."""
        with self._lock:
            return [(m, p) for m, p in self.requests if "/resolve/" in p or p.startswith("/files/")]

    def gets(self, needle: str = "") -> int:
        """How many GET requests were served whose path, read as ``repo_id/path`` (the ``resolve/<revision>``
        part left out), contains ``needle``."""
        return sum(1 for m, p in self.file_requests() if m == "GET" and needle in re.sub(r"/resolve/[^/]+/", "/", p))

    # -- serving --------------------------------------------------------------------------------------------
    def _record(self, h: BaseHTTPRequestHandler) -> str:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append((h.command, path))
            self.authorization.append(h.headers.get("Authorization"))
        return path

    @staticmethod
    def _segments(h: BaseHTTPRequestHandler) -> list[str]:
        """The URL path's segments, each unquoted on its own: a revision may hold a quoted slash."""
        return [unquote(part) for part in urlsplit(h.path).path.strip("/").split("/")]

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        self._record(h)
        parts = self._segments(h)
        if parts[:1] == ["files"]:
            return self._send_file(h, self.root / "_files" / "/".join(parts[1:]), "/".join(parts[1:]), body,
                                   hub_headers={})
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(h, 404, "RepoNotFound", {})
        repo_id, revision, rel = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo_id in self.repos:
            return self._serve_api_repo(h, repo_id, revision, rel, body)
        repo_dir = self.root / repo_id
        if not repo_dir.is_dir():
            return self._error(h, 404, "RepoNotFound", {})
        commit = self.commit(repo_id)
        if revision not in ("main", commit):
            return self._error(h, 404, "RevisionNotFound", {})
        file = repo_dir / rel
        if not file.is_file():
            return self._error(h, 404, "EntryNotFound", {"X-Repo-Commit": commit})
        data = file.read_bytes()
        self._send_bytes(h, f"{repo_id}/{rel}", data, file.name.endswith(LFS_SUFFIXES), commit, body)

    def _serve_api_repo(self, h: BaseHTTPRequestHandler, repo_id: str, revision: str, rel: str, body: bool) -> None:
        repo = self.repos[repo_id]
        if repo.private and not h.headers.get("Authorization"):
            return self._error(h, 401, "RepoNotFound", {})
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", {})
        blob = repo.commits[commit].get(rel)
        if blob is None:
            return self._error(h, 404, "EntryNotFound", {"X-Repo-Commit": commit})
        self._send_bytes(h, f"{repo_id}/{rel}", blob.data, blob.lfs, commit, body)

    def _send_bytes(self, h: BaseHTTPRequestHandler, key: str, data: bytes, lfs: bool, commit: str,
                    body: bool) -> None:
        headers = {"X-Repo-Commit": commit}
        if lfs:
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._send_data(h, data, key, body, hub_headers=headers)

    def _send_file(self, h: BaseHTTPRequestHandler, file: Path, key: str, body: bool,
                   hub_headers: dict[str, str]) -> None:
        if not file.is_file():
            return self._error(h, 404, "EntryNotFound", {})
        self._send_data(h, file.read_bytes(), key, body, hub_headers)

    def _send_data(self, h: BaseHTTPRequestHandler, data: bytes, key: str, body: bool,
                   hub_headers: dict[str, str]) -> None:
        if body:
            data = self.corrupt.get(key, data)
            if key in self.truncate:
                data = data[: self.truncate[key]]
        status, extra = 200, {}
        rng = h.headers.get("Range")
        if body and rng and rng.startswith("bytes="):
            start_s, _, end_s = rng[len("bytes="):].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(data) - 1
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        h.send_response(status)
        for k, v in {**hub_headers, **extra}.items():
            h.send_header(k, v)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if body:
            h.wfile.write(data)

    # -- the upload API ---------------------------------------------------------------------------------------
    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    h.rfile.readline()
                    return out
                out += h.rfile.read(size)
                h.rfile.readline()
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _denied(self, h: BaseHTTPRequestHandler) -> bool:
        """Writes need a token, as on the Hub."""
        if h.headers.get("Authorization"):
            return False
        self._json(h, 401, {"error": "Invalid credentials in Authorization header"})
        return True

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, Blob], message: str) -> str:
        with self._lock:
            self._commit_count += 1
            listing = "|".join(f"{k}:{v.oid}" for k, v in sorted(files.items()))
            seed = f"{parent}|{self._commit_count}|{message}|{listing}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[oid] = files
        repo.messages[oid] = message
        return oid

    def _api_get(self, h: BaseHTTPRequestHandler) -> None:
        self._record(h)
        parts = self._segments(h)
        # /api/models/<org>/<name>[/revision/<rev>]
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = "/".join(parts[2:4])
            repo = self.repos.get(repo_id)
            if repo is None or (repo.private and not h.headers.get("Authorization")):
                return self._error(h, 401 if repo else 404, "RepoNotFound", {})
            revision = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
            commit = repo.resolve(revision)
            if commit is None:
                return self._error(h, 404, "RevisionNotFound", {})
            return self._json(h, 200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.private,
                                       "disabled": False, "gated": False,
                                       "siblings": [{"rfilename": f} for f in sorted(repo.commits[commit])]})
        self._error(h, 404, "RepoNotFound", {})

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        self._record(h)
        parts = self._segments(h)
        raw = self._read_body(h)
        if parts[:1] == ["_lfs"] and parts[-1:] == ["verify"]:
            oid = parts[1]
            want = json.loads(raw or b"{}")
            ok = oid in self.lfs and len(self.lfs[oid]) == want.get("size")
            return self._json(h, 200 if ok else 404, {"message": "ok" if ok else "object not found"})
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(h, json.loads(raw))
        if parts[:3] == ["api", "repos", "create"]:
            return self._create_repo(h, json.loads(raw))
        if parts[:2] == ["api", "validate-yaml"]:
            return self._validate_yaml(h, json.loads(raw))
        if len(parts) >= 6 and parts[:2] == ["api", "models"]:
            repo_id, action, rest = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
            repo = self.repos.get(repo_id)
            if self._denied(h):
                return None
            if repo is None:
                return self._error(h, 404, "RepoNotFound", {})
            if action == "branch":
                return self._create_branch(h, repo, rest, json.loads(raw or b"{}"))
            commit = repo.resolve(rest)
            if commit is None:
                return self._error(h, 404, "RevisionNotFound", {})
            if action == "preupload":
                return self._preupload(h, repo, commit, json.loads(raw))
            if action == "commit":
                return self._commit(h, repo_id, repo, rest, commit, raw)
        self._error(h, 404, "RepoNotFound", {})

    def _put(self, h: BaseHTTPRequestHandler) -> None:
        self._record(h)
        parts = self._segments(h)
        data = self._read_body(h)
        if parts[:1] != ["_lfs"] or len(parts) != 2:
            return self._error(h, 404, "EntryNotFound", {})
        if hashlib.sha256(data).hexdigest() != parts[1]:
            return self._json(h, 400, {"error": "the uploaded bytes do not match the oid"})
        with self._lock:
            self.lfs[parts[1]] = data
        h.send_response(200)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _create_repo(self, h: BaseHTTPRequestHandler, payload: dict[str, Any]) -> None:
        if self._denied(h):
            return
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.repos or (self.root / repo_id).is_dir():
            return self._json(h, 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        private = payload.get("private") is True or payload.get("visibility") == "private"
        repo = Repo(private=private)
        first = self._new_commit(repo, None, {".gitattributes": Blob(GITATTRIBUTES, lfs=False)}, "initial commit")
        repo.branches["main"] = first
        self.repos[repo_id] = repo
        self._json(h, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _create_branch(self, h: BaseHTTPRequestHandler, repo: Repo, branch: str, payload: dict[str, Any]) -> None:
        if branch in repo.branches:
            return self._json(h, 409, {"error": f"Branch {branch} already exists"})
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(h, 404, "RevisionNotFound", {})
        repo.branches[branch] = start
        self._json(h, 200, {})

    @staticmethod
    def _validate_yaml(h: BaseHTTPRequestHandler, payload: dict[str, Any]) -> None:
        content = str(payload.get("content", ""))
        errors: list[str] = []
        meta: Any = {}
        if content.startswith("---\n"):
            front = content[4:].split("\n---", 1)[0]
            try:
                meta = yaml.safe_load(front) or {}
            except yaml.YAMLError as err:
                errors.append(f"metadata is not YAML: {err}")
        if not isinstance(meta, dict):
            errors.append("metadata must be a mapping")
            meta = {}
        lic = meta.get("license")
        if lic is not None and lic not in KNOWN_LICENSES:
            errors.append(f'"license" must be a license identifier, got {lic!r}')
        if lic == "other" and not meta.get("license_name"):
            errors.append('"license_name" is required when "license" is other')
        for key in ("base_model", "tags"):
            value = meta.get(key)
            if value is not None and not (isinstance(value, str) or (isinstance(value, list) and all(
                    isinstance(v, str) for v in value))):
                errors.append(f'"{key}" must be a string or a list of strings')
        if errors:
            return FakeHub._json(h, 400, {"errors": [{"message": e} for e in errors]})
        FakeHub._json(h, 200, {"errors": [], "warnings": []})

    @staticmethod
    def _preupload(h: BaseHTTPRequestHandler, repo: Repo, commit: str, payload: dict[str, Any]) -> None:
        out = []
        for f in payload.get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            try:
                sample.decode("utf-8")
                binary = False
            except UnicodeDecodeError:
                binary = True
            lfs = f["path"].endswith(LFS_SUFFIXES) or binary
            existing = repo.commits[commit].get(f["path"])
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": existing.oid if existing is not None else None})
        FakeHub._json(h, 200, {"files": out, "commitOid": commit})

    def _lfs_batch(self, h: BaseHTTPRequestHandler, payload: dict[str, Any]) -> None:
        if self._denied(h):
            return
        objects = []
        for obj in payload.get("objects", []):
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs:  # already stored: no actions, the client skips the upload
                href = f"{self.url}/_lfs/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append(entry)
        self._json(h, 200, {"transfer": "basic", "objects": objects})

    def _commit(self, h: BaseHTTPRequestHandler, repo_id: str, repo: Repo, revision: str, head: str,
                raw: bytes) -> None:
        if revision not in repo.branches:
            return self._json(h, 400, {"error": f"can only commit to a branch, not {revision}"})
        files = dict(repo.commits[head])
        summary = ""
        for line in raw.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent and parent != head:
                    return self._json(h, 412, {"error": "parentCommit is not the head of the branch"})
            elif key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = self.lfs.get(value["oid"])
                if data is None:
                    return self._json(h, 422, {"error": f"LFS object {value['oid']} was never uploaded"})
                files[value["path"]] = Blob(data, lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {k: v for k, v in files.items() if not k.startswith(prefix)}
        oid = self._new_commit(repo, head, files, summary)
        repo.branches[revision] = oid
        self._json(h, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                            "pullRequestUrl": None})

    def files_at(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Test helper: the files of an API repo at a revision."""
        repo = self.repos[repo_id]
        commit = repo.resolve(revision)
        assert commit is not None, revision
        return {k: v.data for k, v in repo.commits[commit].items()}

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, status: int, code: str, headers: dict[str, str]) -> None:
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()


def stand_in_table(fake: FakeHub, table: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    """avdit's weights table (``avdit_cli.hub.WEIGHTS``) rewritten to fetch tiny stand-ins from ``fake``.

    Same repos, subfolders and file names; pinned Hub entries use the fake repo's commit; the real sizes and
    hashes are dropped, except that URL files that have a sha256 prefix (or git blob id) in the table get the
    stand-in's.
    Patch it in with ``monkeypatch.setattr(avdit_cli.hub, "WEIGHTS", stand_in_table(fake))``.
    """
    from avdit_cli import hub

    out = []
    for e in hub.WEIGHTS if table is None else table:
        if e.is_hub:
            files = tuple(dataclasses.replace(f, size=None, sha256=None) for f in e.files)
            rev = fake.commit(e.repo_id) if e.pinned else e.revision
            out.append(dataclasses.replace(e, files=files, revision=rev))
            continue
        files = []
        for f in e.files:
            served = fake.root / "_files" / f.name
            data = served.read_bytes() if served.is_file() else None
            prefix = hashlib.sha256(data).hexdigest()[:8] if data is not None and f.sha256 else None
            blob = git_blob_sha1(data) if data is not None and f.git_sha1 else None
            files.append(dataclasses.replace(f, size=None, sha256=prefix, git_sha1=blob))
        out.append(dataclasses.replace(e, files=tuple(files), url_base=f"{fake.url}/files"))
    return tuple(out)
