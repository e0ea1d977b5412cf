"""Owner-only files written atomically, and never through a symbolic link below the directory a caller chose.

Plaintext outputs land in ``<outputs>/<job id>/``: someone who can write in ``<outputs>`` could plant
``<job id>`` as a link to a directory of theirs (or to one the party would not want overwritten). Each
directory under the chosen root is therefore opened relative to its parent with ``O_NOFOLLOW``, and the
file is created and renamed relative to that descriptor, so no path is looked up twice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mpctrain.seal.errors import SealError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LinkedPath(SealError):
    """A directory (or the file) on the way to an output is a symbolic link or not what it should be."""


def _open_root(root: Path, mode: int) -> int:
    """The chosen root itself is the caller's choice: created if missing and followed if it is a link."""
    root.mkdir(parents=True, exist_ok=True, mode=mode)
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _refuse(where: Path, what: str) -> LinkedPath:
    return LinkedPath(f"{where} is {what}; refusing to write through it (someone may have planted it to "
                      "redirect the write): remove it, or choose another output directory")


def open_dir_beneath(root: Path, parts: Sequence[str], mode: int = 0o700) -> int:
    """A descriptor of ``root/parts...``: each part is created (``mode``) if missing and must be a real
    directory, never a symbolic link, owned by this user and not writable by every user (a directory planted by
    another user, or one anyone may write to, would let them rename or replace the files written into it;
    group write is left to the user's umask, as many systems give each user a group of their own).
    The caller closes the descriptor."""
    fd = _open_root(root, mode)
    here = root
    try:
        for part in parts:
            if part in ("", ".", "..") or "/" in part:
                raise _refuse(here / part, "not a plain directory name")
            here = here / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    raise _refuse(here, "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory") \
                        from None
                raise
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & stat.S_IWOTH:
                raise _refuse(here, "a directory another user owns or may write to")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def atomic_file(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                suffix: str = ".partial") -> Iterator[IO[bytes]]:
    """A mode-0600 temporary file beside ``path``, renamed over it only if the block completes.

    With ``root``, ``path`` must lie beneath it and no directory between the two may be a link; without,
    only ``path``'s parent is used as it is. A link at ``path`` itself is replaced, never followed.
    """
    target = Path(path)
    if root is None:
        base, parts = target.parent, ()
    else:
        base = Path(root)
        try:
            parts = target.parent.relative_to(base).parts
        except ValueError:
            raise LinkedPath(f"{target} is not inside {base}") from None
    dfd = open_dir_beneath(base, parts)
    try:
        tmp = f".{target.name}.{secrets.token_hex(6)}{suffix}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o600)  # whatever the umask
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


__all__ = ["LinkedPath", "atomic_file", "open_dir_beneath"]
