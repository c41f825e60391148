"""Built artefacts kept across processes: the user's cache folder, keyed by content, capped in size.

A process explaining one image pays for what it builds (ONNX Runtime's graphs of a plan take seconds
to export); the next process with the same model, plan and settings reads them back instead. Entries
hold plain bytes (ONNX protobuf) and a JSON manifest with each part's sha256, checked on every read:
nothing read here executes code, and a damaged or half-written entry is a miss, never a wrong answer.
The cache is best effort: a folder that cannot be written costs one warning, never the explanation.

The folder is `HYINF_CACHE_DIR`, else hyinf's folder in the user cache directory (`XDG_CACHE_HOME`
on Linux). `HYINF_CACHE_MB` caps its size (default 4096; 0 turns the cache off); the entries used
longest ago go first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import platformdirs

DIR_VAR, SIZE_VAR = "HYINF_CACHE_DIR", "HYINF_CACHE_MB"
DEFAULT_MB = 4096
MANIFEST = "manifest.json"
STALE_S = 3600  # an entry still without its manifest after this long was left by a killed process


class CacheWarning(UserWarning):
    """The disk cache could not be read or written; the run goes on without it."""


def content_key(*parts: Any) -> str:
    """The key of JSON-serializable `parts` (bytes are hashed as they are)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


class DiskCache:
    """Entries of named byte parts plus JSON metadata, in `folder`, at most `limit` bytes in all."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit = folder, limit

    @classmethod
    def default(cls) -> DiskCache | None:
        """The user's cache, or None where `HYINF_CACHE_MB` is 0."""
        text = os.environ.get(SIZE_VAR, str(DEFAULT_MB))
        try:
            megabytes = float(text)
        except ValueError:
            warnings.warn(f"{SIZE_VAR}={text!r} is not a number of megabytes; using {DEFAULT_MB}", CacheWarning, stacklevel=2)
            megabytes = DEFAULT_MB
        if megabytes <= 0:
            return None
        folder = Path(os.environ.get(DIR_VAR) or platformdirs.user_cache_dir("hyinf")).expanduser()
        return cls(folder, int(megabytes * 2**20))

    def _entry(self, kind: str, key: str) -> Path:
        return self.folder / kind / key

    def has(self, kind: str, key: str) -> bool:
        """Whether an entry is stored under `key` (`get` still checks it)."""
        return (self._entry(kind, key) / MANIFEST).is_file()

    def discard(self, kind: str, key: str) -> None:
        """Remove an entry its reader found unfit (the next `put` stores its replacement)."""
        shutil.rmtree(self._entry(kind, key), ignore_errors=True)

    def get(self, kind: str, key: str) -> tuple[dict[str, bytes], dict[str, Any]] | None:
        """The parts and metadata stored under `key`, or None when missing or damaged."""
        entry = self._entry(kind, key)
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            parts = {name: (entry / name).read_bytes() for name in manifest["parts"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if any(hashlib.sha256(data).hexdigest() != manifest["parts"][name] for name, data in parts.items()):
            warnings.warn(f"cache entry {entry} is damaged; it is rebuilt", CacheWarning, stacklevel=2)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        try:
            os.utime(entry / MANIFEST)  # used now: trimmed last
        except OSError:
            pass
        return parts, manifest["meta"]

    def put(self, kind: str, key: str, parts: dict[str, bytes], meta: dict[str, Any]) -> None:
        """Store an entry (written aside, then renamed into place: readers never see half of one)."""
        size = sum(len(p) for p in parts.values())
        if size > self.limit:
            return
        try:
            (self.folder / kind).mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".new-", dir=self.folder / kind))
            for name, data in parts.items():
                (staging / name).write_bytes(data)
            digests = {name: hashlib.sha256(data).hexdigest() for name, data in parts.items()}
            (staging / MANIFEST).write_text(json.dumps({"parts": digests, "meta": meta}))
            try:
                staging.rename(self._entry(kind, key))
            except OSError:  # another process stored the same entry first
                shutil.rmtree(staging, ignore_errors=True)
            self._trim()
        except OSError as e:
            warnings.warn(f"cannot write the cache in {self.folder} ({e.strerror or e}); "
                          f"set {DIR_VAR} to a writable folder or {SIZE_VAR}=0", CacheWarning, stacklevel=2)

    def _trim(self) -> None:
        """Remove the entries used longest ago until the cache fits its limit."""
        entries = []
        for entry in self.folder.glob("*/*"):
            try:
                files = [f.stat().st_size for f in entry.iterdir()]
                if not (entry / MANIFEST).exists():
                    if time.time() - entry.stat().st_mtime > STALE_S:
                        shutil.rmtree(entry, ignore_errors=True)
                    continue  # being written by another process
                entries.append(((entry / MANIFEST).stat().st_mtime, sum(files), entry))
            except OSError:  # removed by another process
                continue
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries):
            if total <= self.limit:
                break
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
