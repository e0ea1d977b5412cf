"""Identity (Ed25519) and KEM (X25519, ML-KEM-768+X25519) keys, with strict private-key files.

Private key files are PKCS#8 PEM written atomically with mode 0600 and refused on load when group or
others have any access, like ssh does: a key another local user could read is no longer a secret.

The hybrid KEM key has no single PKCS#8 form in ``cryptography``, so its file is two standard PKCS#8
PEM blocks, ML-KEM-768 (seed form) first, then X25519; each block loads with OpenSSL on its own.
Its public key is the ML-KEM-768 encapsulation key (1184 bytes) followed by the X25519 key (32 bytes).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Literal, cast

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from mpctrain.seal.errors import BadSignature, InsecureKeyFile, KeyFormatError
from mpctrain.seal.paths import atomic_file

KemAlg = Literal["x25519", "mlkem768-x25519"]
KEM_ALGS: tuple[str, ...] = ("x25519", "mlkem768-x25519")

ED25519_PUBLIC_BYTES = 32
ED25519_PRIVATE_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
X25519_BYTES = 32
MLKEM768_PUBLIC_BYTES = 1184
MLKEM768_SEED_BYTES = 64
KEM_PUBLIC_BYTES = {"x25519": X25519_BYTES, "mlkem768-x25519": MLKEM768_PUBLIC_BYTES + X25519_BYTES}
KEM_PRIVATE_BYTES = {"x25519": X25519_BYTES, "mlkem768-x25519": MLKEM768_SEED_BYTES + X25519_BYTES}
MAX_KEY_FILE_BYTES = 64 * 1024

_PEM_BLOCK = re.compile(rb"-----BEGIN PRIVATE KEY-----\r?\n.+?-----END PRIVATE KEY-----\r?\n?", re.DOTALL)
_PKCS8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _key_id(public: bytes) -> str:
    return hashlib.sha256(public).digest()[:8].hex()


def public_key_id(public: bytes) -> str:
    """The short id (as ``IdentityKey.key_id``/``KemKey.key_id``) of raw public key bytes, e.g. from a .pub file."""
    return _key_id(bytes(public))


def write_private(path: str | os.PathLike[str], data: bytes, *, root: str | os.PathLike[str] | None = None) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (temp file in the same dir, then rename).

    With ``root`` (an output directory the caller chose), no directory between it and ``path`` may be a
    symbolic link (``LinkedPath``): a planted ``<root>/<job>`` link would otherwise redirect the write.
    """
    with atomic_file(path, root=root, suffix=".tmp") as f:
        f.write(data)


def _read_private(path: str | os.PathLike[str]) -> bytes:
    """Read a private key file after checking that only its owner can access it."""
    p = Path(path)
    if not stat.S_ISREG(os.stat(p).st_mode):  # before open(): a FIFO would block, a directory would not parse
        raise KeyFormatError(f"{p} is not a regular file")
    with open(p, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFormatError(f"{p} is not a regular file")
        if st.st_mode & 0o077:
            raise InsecureKeyFile(
                f"{p} has mode {stat.S_IMODE(st.st_mode):04o}; private keys must be 0600: run `chmod 600 {p}`"
            )
        data = f.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFormatError(f"{p} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")
    return data


def _load_pkcs8(block: bytes, where: str) -> object:
    try:
        return serialization.load_pem_private_key(block, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFormatError(f"{where}: not an unencrypted PKCS#8 PEM private key ({e})") from None


class IdentityKey:
    """An Ed25519 signing key: who a party or enclave is (stream headers, consents, receipts, requests)."""

    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise KeyFormatError(f"identity keys are Ed25519, got {type(key).__name__}")
        self._key = key

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, b: bytes) -> IdentityKey:
        """Load from the 32-byte raw Ed25519 seed."""
        if len(b) != ED25519_PRIVATE_BYTES:
            raise KeyFormatError(f"Ed25519 private key must be {ED25519_PRIVATE_BYTES} bytes, got {len(b)}")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(b)))

    def public_bytes(self) -> bytes:
        """The 32-byte raw public key."""
        return self._key.public_key().public_bytes_raw()

    def key_id(self) -> str:
        """Short stable name for logs and CLI output: hex of the first 8 bytes of SHA-256(public key)."""
        return _key_id(self.public_bytes())

    def sign(self, data: bytes) -> bytes:
        """Raw Ed25519 signature. Prefer :func:`mpctrain.seal.sign.sign_fields`, which domain-separates."""
        return self._key.sign(bytes(data))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as PKCS#8 PEM, mode 0600, atomically; creates the parent directory."""
        write_private(path, self._key.private_bytes(*_PKCS8))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IdentityKey:
        """Load a PKCS#8 PEM Ed25519 key; refuses files others can access and keys of another type."""
        key = _load_pkcs8(_read_private(path), str(path))
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise KeyFormatError(f"{path}: expected an Ed25519 identity key, found {type(key).__name__}")
        return cls(key)

    def __repr__(self) -> str:
        return f"IdentityKey(id={self.key_id()})"


_P25519 = 2**255 - 19
_Y_ORDER_8 = 0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7
# the y-coordinates of Ed25519's eight points of order 1, 2, 4 and 8 (the points libsodium refuses as keys)
_SMALL_ORDER_Y = frozenset({0, 1, _P25519 - 1, _Y_ORDER_8, _P25519 - _Y_ORDER_8})


def check_identity_public(public: bytes) -> None:
    """An Ed25519 public key fit to verify with: 32 bytes in canonical encoding, not a point of small order.

    A small-order key (the identity point, say) has signatures that verify for every message, so anyone
    could sign as its holder; a non-canonical encoding names the same point twice. Raises ``KeyFormatError``.
    """
    if len(public) != ED25519_PUBLIC_BYTES:
        raise KeyFormatError(f"Ed25519 public key must be 32 bytes, got {len(public)}")
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    if y >= _P25519 or y in _SMALL_ORDER_Y:
        raise KeyFormatError("weak Ed25519 public key (a point of small order, or a non-canonical encoding): "
                             "signatures under it would prove nothing; generate a real key")


def verify_signature(public: bytes, signature: bytes, data: bytes) -> None:
    """Verify a raw Ed25519 signature; raises :class:`BadSignature` (also for malformed or weak keys)."""
    try:
        check_identity_public(bytes(public))
    except KeyFormatError as exc:
        raise BadSignature(str(exc)) from None
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise BadSignature(f"Ed25519 signature must be 64 bytes, got {len(signature)}")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(bytes(public)).verify(bytes(signature), bytes(data))
    except (InvalidSignature, ValueError):
        raise BadSignature(
            f"signature does not verify under key {_key_id(bytes(public))}: wrong signer or modified data"
        ) from None


class KemKey:
    """An HPKE recipient key: X25519, or the ML-KEM-768 + X25519 hybrid for post-quantum protection."""

    __slots__ = ("_mlkem", "_x25519", "alg")

    def __init__(self, alg: str, x25519_key: x25519.X25519PrivateKey,
                 mlkem_key: mlkem.MLKEM768PrivateKey | None = None) -> None:
        if alg not in KEM_ALGS:
            raise KeyFormatError(f"unknown KEM algorithm {alg!r}; use one of {', '.join(KEM_ALGS)}")
        if (alg == "mlkem768-x25519") != (mlkem_key is not None):
            raise KeyFormatError(f"{alg} key needs {'an' if alg != 'x25519' else 'no'} ML-KEM-768 component")
        self.alg: KemAlg = cast(KemAlg, alg)
        self._x25519 = x25519_key
        self._mlkem = mlkem_key

    @classmethod
    def generate(cls, alg: str = "x25519") -> KemKey:
        if alg == "x25519":
            return cls(alg, x25519.X25519PrivateKey.generate())
        if alg == "mlkem768-x25519":
            return cls(alg, x25519.X25519PrivateKey.generate(), mlkem.MLKEM768PrivateKey.generate())
        raise KeyFormatError(f"unknown KEM algorithm {alg!r}; use one of {', '.join(KEM_ALGS)}")

    @classmethod
    def from_private_bytes(cls, alg: str, b: bytes) -> KemKey:
        """x25519: 32 raw bytes; mlkem768-x25519: 64-byte ML-KEM seed followed by 32 X25519 bytes."""
        if alg not in KEM_ALGS:
            raise KeyFormatError(f"unknown KEM algorithm {alg!r}; use one of {', '.join(KEM_ALGS)}")
        b = bytes(b)
        if len(b) != KEM_PRIVATE_BYTES[alg]:
            raise KeyFormatError(f"{alg} private key must be {KEM_PRIVATE_BYTES[alg]} bytes, got {len(b)}")
        if alg == "x25519":
            return cls(alg, x25519.X25519PrivateKey.from_private_bytes(b))
        return cls(alg, x25519.X25519PrivateKey.from_private_bytes(b[MLKEM768_SEED_BYTES:]),
                   mlkem.MLKEM768PrivateKey.from_seed_bytes(b[:MLKEM768_SEED_BYTES]))

    def private_bytes(self) -> bytes:
        """Raw private bytes in the :meth:`from_private_bytes` layout (for sealed storage, never for logs)."""
        raw = self._x25519.private_bytes_raw()
        return raw if self._mlkem is None else self._mlkem.private_bytes_raw() + raw

    def public_bytes(self) -> bytes:
        """x25519: 32 bytes; mlkem768-x25519: ML-KEM-768 encapsulation key (1184) ‖ X25519 (32)."""
        raw = self._x25519.public_key().public_bytes_raw()
        return raw if self._mlkem is None else self._mlkem.public_key().public_bytes_raw() + raw

    def key_id(self) -> str:
        return _key_id(self.public_bytes())

    def hpke_private_key(self) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
        """The object ``hpke.Suite.decrypt`` takes for this algorithm."""
        if self._mlkem is None:
            return self._x25519
        return hpke.MLKEM768X25519PrivateKey(self._mlkem, self._x25519)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write PKCS#8 PEM (two blocks for the hybrid, see module doc), mode 0600, atomically."""
        data = self._x25519.private_bytes(*_PKCS8)
        if self._mlkem is not None:
            data = self._mlkem.private_bytes(*_PKCS8) + data
        write_private(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KemKey:
        """Load a key written by :meth:`save`; the algorithm follows from the blocks found."""
        data = _read_private(path)
        blocks = _PEM_BLOCK.findall(data)
        if not blocks or len(blocks) > 2:
            raise KeyFormatError(f"{path}: expected 1 (x25519) or 2 (mlkem768-x25519) PKCS#8 PEM blocks, "
                                 f"found {len(blocks)}")
        keys = [_load_pkcs8(b, str(path)) for b in blocks]
        if not isinstance(keys[-1], x25519.X25519PrivateKey):
            raise KeyFormatError(f"{path}: expected an X25519 KEM key, found {type(keys[-1]).__name__}")
        if len(keys) == 1:
            return cls("x25519", keys[0])
        if not isinstance(keys[0], mlkem.MLKEM768PrivateKey):
            raise KeyFormatError(f"{path}: first block must be an ML-KEM-768 key, found {type(keys[0]).__name__}")
        return cls("mlkem768-x25519", keys[1], keys[0])

    def __repr__(self) -> str:
        return f"KemKey(alg={self.alg}, id={self.key_id()})"


def public_kem_key(alg: str, public: bytes) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
    """The ``cryptography`` public key object for raw ``public`` bytes of ``alg`` (see KemKey.public_bytes)."""
    if alg not in KEM_ALGS:
        raise KeyFormatError(f"unknown KEM algorithm {alg!r}; use one of {', '.join(KEM_ALGS)}")
    public = bytes(public)
    if len(public) != KEM_PUBLIC_BYTES[alg]:
        raise KeyFormatError(f"{alg} public key must be {KEM_PUBLIC_BYTES[alg]} bytes, got {len(public)}")
    try:
        if alg == "x25519":
            return x25519.X25519PublicKey.from_public_bytes(public)
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(public[:MLKEM768_PUBLIC_BYTES]),
            x25519.X25519PublicKey.from_public_bytes(public[MLKEM768_PUBLIC_BYTES:]),
        )
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFormatError(f"invalid {alg} public key: {e}") from None


def write_public_files(out_dir: str | os.PathLike[str], identity: IdentityKey, kem: KemKey) -> None:
    """Write ``identity.pub`` (hex) and ``kem.pub`` (``ALG HEX``): the files a party hands to others."""
    d = Path(out_dir)
    (d / "identity.pub").write_text(identity.public_bytes().hex() + "\n")
    (d / "kem.pub").write_text(f"{kem.alg} {kem.public_bytes().hex()}\n")


def _read_public_text(path: str | os.PathLike[str]) -> str:
    """A public key file's text, bounded: these files are handed between parties, so they are untrusted."""
    with open(path, "rb") as f:
        raw = f.read(4 * MAX_KEY_FILE_BYTES + 1)
    if len(raw) > 4 * MAX_KEY_FILE_BYTES:
        raise KeyFormatError(f"{path} is larger than {4 * MAX_KEY_FILE_BYTES} bytes: not a public key file")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFormatError(f"{path}: a public key file is ASCII text (hex)") from None


def load_identity_public(path: str | os.PathLike[str]) -> bytes:
    """Read an ``identity.pub`` file (64 hex characters)."""
    text = _read_public_text(path).strip()
    try:
        public = bytes.fromhex(text)
    except ValueError:
        raise KeyFormatError(f"{path}: expected 64 hex characters (an Ed25519 public key)") from None
    try:
        check_identity_public(public)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{path}: {exc}") from None
    return public


def load_kem_public(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    """Read a ``kem.pub`` file: ``ALG HEX``; returns (alg, raw public bytes), validated."""
    parts = _read_public_text(path).split()
    if len(parts) != 2:
        raise KeyFormatError(f"{path}: expected '<alg> <hex public key>'")
    alg, hex_public = parts
    try:
        public = bytes.fromhex(hex_public)
    except ValueError:
        raise KeyFormatError(f"{path}: public key is not hex") from None
    public_kem_key(alg, public)
    return alg, public
