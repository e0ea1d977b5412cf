"""The collateral cache directory: atomic writes under the verifiers' cache names, and a manifest.

Each file is written to a temporary file in the same directory, fsynced, then renamed over the
target, so a verifier reading the cache never sees a half-written certificate or CRL. ``manifest.json``
lists every file this and earlier runs fetched: cache name → source URL, SHA-256, size, fetch time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mpctrain.attest.fetch.errors import FetchError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 4 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}(/[A-Za-z0-9][A-Za-z0-9._-]{0,199}){0,7}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class CacheStore:
    """Writes collateral under ``root`` by cache name; ``save_manifest()`` records what was written."""

    def __init__(self, root: str | Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.root = Path(root)
        self._clock = clock
        self.written: dict[str, dict[str, object]] = {}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FetchError(f"cannot create the cache directory {self.root}: {exc.strerror or exc}",
                             field="out", actual=str(self.root)) from exc

    def path(self, name: str) -> Path:
        """The file for a cache name; names are relative, plain and cannot leave ``root``."""
        if not _NAME.fullmatch(name) or any(part in (".", "..") for part in name.split("/")) or name == MANIFEST:
            raise FetchError("unsafe cache name", field="name", actual=name)
        return self.root / name

    def put(self, name: str, data: bytes, *, url: str) -> Path:
        """Atomically write ``data`` as ``name`` and remember it for the manifest."""
        target = self.path(name)
        _atomic_write(target, data)
        self.written[name] = {
            "url": url,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "fetched_at": _iso(self._clock()),
        }
        return target

    def save_manifest(self) -> Path:
        """Merge this run's entries into ``manifest.json`` (older entries for other names are kept)."""
        path = self.root / MANIFEST
        files: dict[str, object] = {}
        if path.is_file() and path.stat().st_size <= MAX_MANIFEST_BYTES:
            with contextlib.suppress(ValueError, UnicodeDecodeError, OSError):
                old = json.loads(path.read_bytes())
                if isinstance(old, dict) and isinstance(old.get("files"), dict):
                    files.update(old["files"])
        files.update(self.written)
        doc = {"version": MANIFEST_VERSION, "updated": _iso(self._clock()), "files": dict(sorted(files.items()))}
        _atomic_write(path, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")
        return path


def _atomic_write(target: Path, data: bytes) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise FetchError(f"cannot write {target}: {exc.strerror or exc}", field="out", actual=str(target)) from exc
