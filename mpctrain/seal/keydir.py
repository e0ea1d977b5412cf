"""A party's key directory: ``identity.key`` and ``kem.key`` (private, 0600) beside ``identity.pub`` and ``kem.pub``.

Every command (``keys generate``, ``party run``, ``job``, ``audit``) uses this one naming scheme, so they all sign
with the key the manifest names. ``identity.pem``/``kem.pem``, which ``keys generate`` wrote before, are still
read, but only where no ``.key`` file is: two identities in one directory are an error, never a silent choice.

Creating keys holds an exclusive ``flock`` on ``<keys_dir>/.lock``: the pair is four files written one by
one, and two first runs at once (two ``party run``, or ``party run`` beside ``job propose``) would otherwise
each keep a different identity, or leave the identity of one beside the KEM key of the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mpctrain.seal.errors import SealError
from mpctrain.seal.keys import (
    IdentityKey,
    KemKey,
    load_identity_public,
    load_kem_public,
    public_key_id,
    write_public_files,
)

PRIVATE_FILES = ("identity.key", "kem.key")
LEGACY_FILES = ("identity.pem", "kem.pem")  # older `mpctrain keys generate`: read, never written
PUBLIC_FILES = ("identity.pub", "kem.pub")
LOCK_FILE = ".lock"  # flock'd while keys are created (never holds a key; safe to delete when no command runs)


class KeyDirError(SealError):
    """A key directory holds no key pair, half of one, or keys under both namings; the message says what to do."""


def _present(d: Path, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if (d / n).exists()]


def private_key_files(keys_dir: str | os.PathLike[str]) -> tuple[Path, Path] | None:
    """The (identity, KEM) private key files of ``keys_dir``; None when it holds neither file under either name."""
    d = Path(keys_dir)
    new, old = _present(d, PRIVATE_FILES), _present(d, LEGACY_FILES)
    if new and old:
        raise KeyDirError(_both_namings(d, new, old))
    names, pair = (new, PRIVATE_FILES) if new else (old, LEGACY_FILES)
    if not names:
        return None
    if len(names) == 1:
        other = next(n for n in pair if n not in names)
        raise KeyDirError(f"{d} holds {names[0]} but not the matching {other}: restore the missing file from a "
                          f"backup (`mpctrain keys generate --out {d} --force` makes a new identity instead, which "
                          "no existing job names)")
    return d / pair[0], d / pair[1]


def identity_key_file(keys_dir: str | os.PathLike[str]) -> Path | None:
    """The identity key file alone (an auditor needs no KEM key); None when there is none."""
    d = Path(keys_dir)
    new, old = _present(d, PRIVATE_FILES[:1]), _present(d, LEGACY_FILES[:1])
    if new and old:
        raise KeyDirError(_both_namings(d, _present(d, PRIVATE_FILES), _present(d, LEGACY_FILES)))
    return d / (new or old)[0] if new or old else None


def no_keys_message(keys_dir: str | os.PathLike[str], where: str = "keys_dir in the party profile") -> str:
    return (f"no keys in {keys_dir} (identity.key, kem.key): check {where}, or create this party's keys with "
            f"`mpctrain keys generate --out {keys_dir}`")


def load_pair(keys_dir: str | os.PathLike[str], where: str = "keys_dir in the party profile"
              ) -> tuple[IdentityKey, KemKey]:
    """Load the directory's pair; a directory without one is an error (``where`` names the setting to check)."""
    found = private_key_files(keys_dir)
    if found is None:
        raise KeyDirError(no_keys_message(keys_dir, where))
    return IdentityKey.load(found[0]), KemKey.load(found[1])


@contextmanager
def locked(keys_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``keys_dir`` (created 0700 if missing): another process creating keys there
    waits until this block ends, and then sees the finished pair."""
    d = Path(keys_dir)
    lock = d / LOCK_FILE
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise KeyDirError(f"cannot lock the key directory {d} ({lock}: {exc.strerror or exc}): check that it is a "
                          "directory you can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: a concurrent first run takes a moment, then we read its pair
        yield d
    finally:
        os.close(fd)


def generate_pair(keys_dir: str | os.PathLike[str], kem_alg: str = "x25519") -> tuple[IdentityKey, KemKey]:
    """Write a new pair and its public files; an older ``.pem`` pair there is removed, as it is no longer
    the identity the public files name (callers decide beforehand whether replacing keys is allowed).
    Holds the directory's lock, so the four files are always one pair."""
    with locked(keys_dir) as d:
        return _generate(d, kem_alg)


def load_or_generate_pair(keys_dir: str | os.PathLike[str], kem_alg: str = "x25519") -> tuple[IdentityKey, KemKey]:
    """The directory's pair, generated first when it holds none: a party's first run.

    A complete pair is loaded without the lock; otherwise the check and the creation happen under the
    directory's lock, so two first runs at once end with one identity (the second waits, then loads the pair
    the first wrote). Public files without private keys are refused: someone
    handed them out, and a new pair here would be an identity nobody knows.
    """
    d = Path(keys_dir)
    with contextlib.suppress(KeyDirError):  # half a pair may be a first run still writing: decided under the lock
        if private_key_files(d) is not None:  # lock-free when the pair is there: a key directory may be read-only
            return load_pair(d)
    with locked(d):
        if private_key_files(d) is not None:
            return load_pair(d)
        published = [n for n in PUBLIC_FILES if (d / n).exists()]
        if published:
            raise KeyDirError(f"{d} holds {', '.join(published)} but no private keys: restore identity.key and "
                              f"kem.key from a backup (or `mpctrain keys generate --out {d} --force` for a new "
                              "identity)")
        return _generate(d, kem_alg)


def _generate(d: Path, kem_alg: str) -> tuple[IdentityKey, KemKey]:
    """Write a new pair; the caller holds the directory's lock."""
    identity, kem = IdentityKey.generate(), KemKey.generate(kem_alg)
    identity.save(d / PRIVATE_FILES[0])
    kem.save(d / PRIVATE_FILES[1])
    write_public_files(d, identity, kem)
    for name in LEGACY_FILES:
        (d / name).unlink(missing_ok=True)
    return identity, kem


def _read_public(path: Path) -> tuple[str, bytes]:
    return ("ed25519", load_identity_public(path)) if path.name == "identity.pub" else load_kem_public(path)


def public_file_problems(keys_dir: str | os.PathLike[str], identity: IdentityKey, kem: KemKey) -> list[str]:
    """What is wrong with ``identity.pub``/``kem.pub`` next to these private keys, one line per file (empty: fine)."""
    d = Path(keys_dir)
    found = private_key_files(d)
    names = (found[0].name, found[1].name) if found else PRIVATE_FILES
    wanted = (("ed25519", identity.public_bytes()), (kem.alg, kem.public_bytes()))
    problems = []
    for pub, private, want in zip(PUBLIC_FILES, names, wanted, strict=True):
        if not (d / pub).exists():
            problems.append(f"{pub} is missing")
            continue
        try:
            alg, public = _read_public(d / pub)
        except (SealError, OSError) as exc:
            problems.append(f"{pub} is unreadable: {exc}")
            continue
        if (alg, public) != want:
            problems.append(f"{pub} names {alg} key {public_key_id(public)}, but {private} is {want[0]} key "
                            f"{public_key_id(want[1])}")
    return problems


def _pair_matches(d: Path, pair: tuple[str, str]) -> bool:
    """Whether ``pair`` (both files present, loadable) is the identity and KEM key the public files name."""
    try:
        identity, kem = IdentityKey.load(d / pair[0]), KemKey.load(d / pair[1])
        return (load_identity_public(d / "identity.pub") == identity.public_bytes()
                and load_kem_public(d / "kem.pub") == (kem.alg, kem.public_bytes()))
    except (SealError, OSError):
        return False


def _both_namings(d: Path, new: list[str], old: list[str]) -> str:
    """Which of the two pairs the public files name, and how to keep that one only."""
    head = (f"{d} holds keys under both namings ({', '.join(new + old)}): commands would sign with the .key pair "
            "whatever identity.pub says. ")
    new_ok, old_ok = _pair_matches(d, PRIVATE_FILES), _pair_matches(d, LEGACY_FILES)
    if new_ok:
        return head + (f"identity.pub and kem.pub belong to identity.key and kem.key{' (the same keys)' * old_ok}: "
                       f"remove {' and '.join(old)}")
    if old_ok:
        return head + ("identity.pub and kem.pub belong to identity.pem and kem.pem: move identity.key and kem.key "
                       "out of the directory, then rename identity.pem to identity.key and kem.pem to kem.key")
    return head + ("identity.pub and kem.pub belong to neither pair: keep the pair your job manifests name, move the "
                   "other away, then check with `mpctrain keys show`")
