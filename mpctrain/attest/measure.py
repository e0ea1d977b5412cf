"""Measurements of the aggregator code, so the simulated TEE reports something a party can recompute.

A real TEE measures the launched image; the simulated one measures the installed ``mpctrain`` Python
sources plus the aggregator configuration. Parties compute the same value from a checkout of the
release they expect and pin it in their policy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mpctrain.seal.binding import canonical

CODE_DOMAIN = b"mpctrain/v1/code-digest"
SIM_MEASUREMENT_DOMAIN = b"mpctrain/v1/sim-measurement"
MEASUREMENT_BYTES = 48


def default_package_dir() -> Path:
    """The directory of the ``mpctrain`` package this process imported."""
    import mpctrain

    return Path(mpctrain.__file__).resolve().parent


def read_sources(package_dir: Path) -> list[tuple[str, bytes]]:
    """Every ``.py`` file under ``package_dir`` as (sorted relative path, content), read once.

    ``__pycache__`` is skipped (it is derived, and differs between interpreters). Callers that go on to
    run the code (the enclave loading a consented ServerApp) use these bytes, never a second read.
    """
    root = package_dir.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"package directory {root} does not exist")
    paths = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*.py")
        if p.is_file() and "__pycache__" not in p.relative_to(root).parts
    )
    return [(rel, path.read_bytes()) for rel, path in paths]


def sources_digest(files: list[tuple[str, bytes]]) -> bytes:
    """SHA-384 over (path, content) pairs; each is length-prefixed, so renaming a file or moving bytes
    between files changes the digest."""
    h = hashlib.sha384(canonical(CODE_DOMAIN, len(files)))
    for rel, content in files:
        h.update(canonical(rel, content))
    return h.digest()


def code_digest(package_dir: Path | None = None) -> bytes:
    """SHA-384 over every ``.py`` file of the package (``read_sources``, ``sources_digest``)."""
    return sources_digest(read_sources(package_dir or default_package_dir()))


def sim_measurement(config_digest: bytes, *, package_dir: Path | None = None, code: bytes | None = None) -> bytes:
    """The 48-byte measurement a simulated enclave reports: SHA-384(domain ‖ code digest ‖ config digest).

    Pass ``code`` when the code digest is already known (it is the expensive part).
    """
    if code is None:
        code = code_digest(package_dir)
    return hashlib.sha384(canonical(SIM_MEASUREMENT_DOMAIN, code, config_digest)).digest()
