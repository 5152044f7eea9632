"""A tiny stand-in for the Hugging Face Hub's resolve endpoint, for tests (no network needed).

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
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.requests: list[tuple[str, str]] = []
        self.corrupt: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.authorization: list[str | None] = []  # the Authorization header of every request
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
                hub._serve(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._serve(self, body=True)

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
    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append((h.command, path))
            self.authorization.append(h.headers.get("Authorization"))
        parts = path.strip("/").split("/")
        if parts[:1] == ["files"]:
            return self._send_file(h, self.root / "_files" / "/".join(parts[1:]), "/".join(parts[1:]), body,
                                   hub_headers={})
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(h, 404, "RepoNotFound", {})
        repo_id, revision, rel = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
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
        headers = {"X-Repo-Commit": commit}
        if file.name.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._send_file(h, file, f"{repo_id}/{rel}", body, hub_headers=headers)

    def _send_file(self, h: BaseHTTPRequestHandler, file: Path, key: str, body: bool,
                   hub_headers: dict[str, str]) -> None:
        if not file.is_file():
            return self._error(h, 404, "EntryNotFound", {})
        data = file.read_bytes()
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
