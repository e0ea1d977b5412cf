"""The party's own note of every sealed reply it sent: what its audit check holds the enclave's log against.

One JSON line per reply (job, run, object id, sealed size, SHA-256 of the sealed stream's header frame, the
same digest the enclave records as ``ciphertext_digest``), appended with one ``O_APPEND`` write to a file
only the party's user can read. It names no data: sizes and digests of ciphertext only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mpctrain.enclave.federated.errors import FederatedError

MAX_SENT_FILE_BYTES = 64 << 20
_FIELDS = ("job_id", "run_id", "object_id", "size", "ciphertext_digest")


class SentLogError(FederatedError):
    """The party's sent-updates file cannot be read as written by ``append_sent``."""


@dataclass(frozen=True)
class SentUpdate:
    job_id: str
    run_id: int
    object_id: str
    size: int
    ciphertext_digest: str


def append_sent(path: Path, update: SentUpdate) -> None:
    line = (json.dumps(asdict(update), sort_keys=True, separators=(",", ":")) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_sent(path: Path, job_id: str) -> list[SentUpdate]:
    """Every reply noted for ``job_id``; a missing file is none sent. Malformed lines raise ``SentLogError``."""
    try:
        if path.stat().st_size > MAX_SENT_FILE_BYTES:
            raise SentLogError(f"{path} is over {MAX_SENT_FILE_BYTES} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SentLogError(f"cannot read {path}: {exc}") from exc
    out = []
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or sorted(obj) != sorted(_FIELDS):
                raise ValueError("unexpected fields")
            update = SentUpdate(str(obj["job_id"]), int(obj["run_id"]), str(obj["object_id"]), int(obj["size"]),
                                str(obj["ciphertext_digest"]))
        except (ValueError, TypeError) as exc:
            raise SentLogError(f"{path} line {number} is not a sent-update record: {exc}") from None
        if update.job_id == job_id:
            out.append(update)
    return out
