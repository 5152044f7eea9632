"""Per-file feature cache for evaluation.

A cache entry is keyed by the sha256 of the media file's *content* (so renaming or copying a file still hits),
the extractor (name + weights sha256) and the protocol dict (resolution, frames, flags, ...). Any change of
one of them is a different key, so features of different protocols are never mixed.

Layout: ``<root>/<key[:2]>/<key>.npy`` plus ``<key>.json`` with the key parts for inspection. Both are written
to a temporary file in the same folder and renamed, so an interrupted run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from avdit_cli.fileio import atomic_write, atomic_write_bytes, sha256_file
from avdit_cli.paths import avdit_home

def default_feature_dir() -> Path:
    return avdit_home() / "features"


class FeatureCache:
    """Content-addressed .npy cache with hit / miss counters (the counters are per instance)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_feature_dir()
        self.hits = 0
        self.misses = 0
        # (resolved path, mtime_ns, size) -> sha256, so one run does not re-hash the same file.
        self._content_hashes: dict[tuple[str, int, int], str] = {}

    def content_hash(self, path: str | os.PathLike[str]) -> str:
        p = Path(path).resolve()
        st = p.stat()
        memo_key = (str(p), st.st_mtime_ns, st.st_size)
        if memo_key not in self._content_hashes:
            self._content_hashes[memo_key] = sha256_file(p)
        return self._content_hashes[memo_key]

    def key(self, path: str | os.PathLike[str], key_parts: Mapping[str, Any]) -> str:
        """sha256 of the canonical JSON of {content sha256, key parts}."""
        payload = {"content_sha256": self.content_hash(path), "key_parts": dict(key_parts)}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get_or_compute(
        self, path: str | os.PathLike[str], key_parts: Mapping[str, Any], compute_fn: Callable[[], np.ndarray]
    ) -> np.ndarray:
        key = self.key(path, key_parts)
        entry = self.entry_path(key)
        if entry.is_file():
            try:
                value = np.load(entry, allow_pickle=False)
            except (OSError, ValueError):
                value = None  # unreadable entry (e.g. disk trouble): recompute and overwrite it
            if value is not None:
                self.hits += 1
                return value

        self.misses += 1
        value = np.asarray(compute_fn())
        entry.parent.mkdir(parents=True, exist_ok=True)
        def save(tmp: str) -> None:  # through a handle: np.save would append ".npy" to a bare path
            with open(tmp, "wb") as fh:
                np.save(fh, value, allow_pickle=False)

        atomic_write(entry, save)
        meta = {"source": str(Path(path)), "content_sha256": self.content_hash(path), "key_parts": dict(key_parts)}
        atomic_write_bytes(entry.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True).encode())
        return value


def cached(
    path: str | os.PathLike[str],
    key_parts: Mapping[str, Any],
    compute_fn: Callable[[], np.ndarray],
    cache: FeatureCache | None = None,
) -> np.ndarray:
    """Features of ``path`` from the cache, or ``compute_fn()`` stored under the key.

    ``key_parts`` must be JSON-serialisable, e.g. ``{"extractor": "i3d", "weights_sha256": ..., "protocol": {...}}``.
    Pass one ``FeatureCache`` for a whole run to share its content-hash memo and counters.
    """
    return (cache if cache is not None else FeatureCache()).get_or_compute(path, key_parts, compute_fn)
