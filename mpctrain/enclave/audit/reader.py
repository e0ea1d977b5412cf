"""Reading a log as numbered raw lines, bounded in size, exactly as stored (newline kept)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from mpctrain.enclave.audit.record import MAX_LINE_BYTES

RawLine = tuple[int, bytes]
"""(1-based line number, the line's bytes including its newline; the last may lack one when cut short)."""


def read_lines(path: str | os.PathLike[str], max_line: int = MAX_LINE_BYTES) -> Iterator[RawLine]:
    """Yield the file's lines; a line longer than ``max_line`` is yielded cut at that size (it fails parsing)."""
    with open(Path(path), "rb") as f:
        line_no = 0
        while True:
            raw = f.readline(max_line + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > max_line and not raw.endswith(b"\n"):
                while True:  # skip the rest of the oversized line
                    rest = f.readline(1 << 20)
                    if not rest or rest.endswith(b"\n"):
                        break
                raw = raw[:max_line] + b"\n"
            yield line_no, raw


def lines_from_bytes(blob: bytes) -> list[RawLine]:
    """Split a whole log held in memory (tests, a fetched stream) into numbered lines."""
    parts = [p + b"\n" for p in blob.split(b"\n")]
    parts[-1] = parts[-1][:-1]
    if not parts[-1]:
        parts.pop()
    return [(i + 1, p) for i, p in enumerate(parts)]


def renumber(lines: Iterable[bytes]) -> list[RawLine]:
    return [(i + 1, raw) for i, raw in enumerate(lines)]
