"""Cached collateral (VCEKs, CRLs, TCB info, RIMs) read from a directory so verification runs offline."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mpctrain.attest.errors import Malformed

MAX_COLLATERAL_BYTES = 4 << 20


class Collateral:
    """Named blobs; names are relative paths such as ``tdx/tcbinfo/<fmspc>.json``.

    Each backend documents the names it reads. An in-memory mapping and a directory can be layered:
    evidence-shipped blobs first, then the cache directory.
    """

    def __init__(self, blobs: Mapping[str, bytes] | None = None, directory: Path | None = None) -> None:
        self._blobs = dict(blobs or {})
        self._dir = Path(directory) if directory is not None else None

    @property
    def directory(self) -> Path | None:
        return self._dir

    def get(self, name: str) -> bytes | None:
        if name in self._blobs:
            return self._blobs[name]
        if self._dir is None:
            return None
        path = (self._dir / name).resolve()
        if self._dir.resolve() not in path.parents:
            raise Malformed("collateral name escapes the cache directory", field="name", actual=name)
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_COLLATERAL_BYTES:
            raise Malformed("collateral file too large", field=name, actual=path.stat().st_size)
        return path.read_bytes()

    def names(self, prefix: str = "") -> list[str]:
        found = {n for n in self._blobs if n.startswith(prefix)}
        if self._dir is not None and self._dir.is_dir():
            for p in self._dir.rglob("*"):
                if p.is_file():
                    rel = p.relative_to(self._dir).as_posix()
                    if rel.startswith(prefix):
                        found.add(rel)
        return sorted(found)

    def with_blobs(self, blobs: Mapping[str, bytes]) -> Collateral:
        merged = dict(self._blobs)
        merged.update(blobs)
        return Collateral(merged, self._dir)
