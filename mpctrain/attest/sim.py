"""Simulated TEE: a software "vendor root" certifies an attestation key that signs reports.

It exists so the whole protocol (nonce, binding, policy, sealing) runs on any laptop and in CI. It
protects nothing: whoever holds ``sim-root.key`` can forge reports. Its evidence goes through the same
``verify()`` path as SNP/TDX and is accepted only by a policy that lists ``sim`` in ``backends`` *and*
pins this root's SHA-256 in ``[sim] roots``; ``Policy.default()`` does neither.

Report layout (big-endian), signed by the attestation key (AK, Ed25519) over every byte before the
signature::

    0    4   magic  b"MSIM"
    4    2   version (1)
    6    2   flags: bit 0 debug; other bits must be zero
    8    8   timestamp, signed seconds since the Unix epoch
    16   48  measurement (see ``mpctrain.attest.measure.sim_measurement``)
    64   64  report_data
    128  1   n, number of TCB entries (0..16)
    129  ..  n x (name length u8 (1..32), name [a-z0-9_-], security version u32), names strictly ascending
    end-64   64  Ed25519 signature
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from mpctrain.attest.claims import CertSummary, Claims
from mpctrain.attest.collateral import Collateral
from mpctrain.attest.errors import (
    BadSignature,
    CertificateExpired,
    Malformed,
    PolicyViolation,
    UntrustedRoot,
)
from mpctrain.attest.evidence import Evidence
from mpctrain.attest.measure import MEASUREMENT_BYTES, sim_measurement
from mpctrain.attest.policy import BackendPolicy, PolicyError

KIND = "sim"
ROOT_CN = "mpctrain Simulated TEE Root"
AK_CN = "Simulated TEE AK"
ROOT_PEM = "sim-root.pem"
ROOT_KEY = "sim-root.key"
ROOT_VALIDITY = timedelta(days=3650)
AK_VALIDITY = timedelta(days=1)
BACKDATE = timedelta(minutes=5)

MAGIC = b"MSIM"
VERSION = 1
FLAG_DEBUG = 0x0001
REPORT_DATA_BYTES = 64
SIGNATURE_BYTES = 64
MAX_TCB_ENTRIES = 16
MAX_TCB_NAME = 32
MAX_TCB_VALUE = 0xFFFFFFFF
MAX_CERT_BYTES = 16 << 10
_HEADER = struct.Struct(">4sHHq48s64sB")
MIN_REPORT_BYTES = _HEADER.size + SIGNATURE_BYTES
MAX_REPORT_BYTES = _HEADER.size + MAX_TCB_ENTRIES * (1 + MAX_TCB_NAME + 4) + SIGNATURE_BYTES
_TCB_NAME = re.compile(rb"[a-z0-9_-]{1,32}")
KNOWN_OPTIONS = frozenset({"max_report_age_seconds"})


def check_options(options: Mapping[str, object]) -> None:
    """Validate the ``[sim]`` policy knobs (a ``PolicyError`` for an unknown key or a wrong value)."""
    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        raise PolicyError(f"unknown [sim] policy options {sorted(unknown)}; known: {sorted(KNOWN_OPTIONS)}")
    max_age = options.get("max_report_age_seconds")
    if max_age is not None and (not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 0):
        raise PolicyError(f"[sim].max_report_age_seconds must be a non-negative integer, got {max_age!r}")


class SimRootError(ValueError):
    """The simulated root's files are missing, unreadable or of the wrong type."""


class SimRootExists(SimRootError):
    """A root is already there; replacing it makes every policy that pins it refuse this TEE's evidence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        super().__init__(f"{directory} already holds a simulated root, which policies may pin; replace it only on "
                         "purpose (overwrite=True; the CLI: --force)")


# --------------------------------------------------------------------------- root


@dataclass(frozen=True)
class SimRoot:
    """The simulated vendor root CA: certificate and its private key."""

    cert: x509.Certificate
    key: Ed25519PrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def sha256(self) -> str:
        """What a policy pins in ``[sim] roots``."""
        return hashlib.sha256(self.der).hexdigest()

    @classmethod
    def generate(cls, *, now: datetime | None = None, validity: timedelta = ROOT_VALIDITY) -> SimRoot:
        key = Ed25519PrivateKey.generate()
        now = now or datetime.now(UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, None)
        )
        return cls(cert=cert, key=key)

    @classmethod
    def load(cls, directory: str | Path) -> SimRoot:
        directory = Path(directory)
        try:
            cert = x509.load_pem_x509_certificate((directory / ROOT_PEM).read_bytes())
            key = serialization.load_pem_private_key((directory / ROOT_KEY).read_bytes(), password=None)
        except OSError as exc:
            raise SimRootError(f"cannot read the simulated root in {directory}: {exc}; "
                               "create one with `mpctrain attest sim-root --out DIR`") from exc
        except (ValueError, x509.InvalidVersion) as exc:
            raise SimRootError(f"{directory} does not hold a PEM certificate and key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SimRootError(f"{directory / ROOT_KEY} is not an Ed25519 key")
        cert_key = cert.public_key()
        if not isinstance(cert_key, Ed25519PublicKey) or key.public_key() != cert_key:
            raise SimRootError(f"{directory / ROOT_KEY} does not belong to {directory / ROOT_PEM}")
        return cls(cert=cert, key=key)

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``sim-root.pem`` and ``sim-root.key`` (mode 0600); return the certificate's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pem_path, key_path = directory / ROOT_PEM, directory / ROOT_KEY
        if not overwrite and (pem_path.exists() or key_path.exists()):
            raise SimRootExists(directory)
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise SimRootError(f"cannot write {key_path}: {exc.strerror or exc} (a symlink is refused)") from exc
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, key_pem)
        finally:
            os.close(fd)
        pem_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return pem_path


def create_sim_root(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Create a simulated vendor root in ``out_dir``; return the path of ``sim-root.pem``.

    Pin it with ``root_pin(path)`` (SHA-256 of the DER) in a policy's ``[sim] roots``.
    """
    return SimRoot.generate().save(out_dir, overwrite=overwrite)


def root_pin(pem_path: str | Path) -> str:
    """SHA-256 (hex) of the DER of the certificate in ``pem_path``: the value a policy pins."""
    try:
        cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    except (OSError, ValueError, x509.InvalidVersion) as exc:
        raise SimRootError(f"cannot read certificate {pem_path}: {exc}") from exc
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class SimReport:
    """A parsed simulated report; ``signed`` is the exact byte range the signature covers."""

    version: int
    debug: bool
    timestamp: int
    measurement: bytes
    report_data: bytes
    tcb: dict[str, int] = field(default_factory=dict)
    signature: bytes = b""
    signed: bytes = b""


def encode_report_body(
    *, measurement: bytes, report_data: bytes, debug: bool, tcb: Mapping[str, int], timestamp: int
) -> bytes:
    """The signed part of a report, in the layout of the module docstring."""
    if len(measurement) != MEASUREMENT_BYTES:
        raise ValueError(f"measurement must be {MEASUREMENT_BYTES} bytes, got {len(measurement)}")
    if len(report_data) != REPORT_DATA_BYTES:
        raise ValueError(f"report_data must be {REPORT_DATA_BYTES} bytes, got {len(report_data)}")
    _check_tcb(tcb)
    out = bytearray(
        _HEADER.pack(MAGIC, VERSION, FLAG_DEBUG if debug else 0, timestamp, measurement, report_data, len(tcb))
    )
    for name in sorted(tcb):
        raw = name.encode()
        out += struct.pack(">B", len(raw)) + raw + struct.pack(">I", tcb[name])
    return bytes(out)


def parse_report(data: bytes) -> SimReport:
    """Parse strictly: any length, magic, version, flag or TCB encoding error is ``Malformed``."""
    if not isinstance(data, bytes | bytearray):
        raise Malformed("sim report must be bytes", field="data", actual=type(data).__name__)
    data = bytes(data)
    if len(data) < MIN_REPORT_BYTES:
        raise Malformed("sim report truncated", field="length", expected=f">={MIN_REPORT_BYTES}", actual=len(data))
    if len(data) > MAX_REPORT_BYTES:
        raise Malformed("sim report too long", field="length", expected=f"<={MAX_REPORT_BYTES}", actual=len(data))
    magic, version, flags, timestamp, measurement, report_data, n = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Malformed("not a simulated TEE report", field="magic", expected=MAGIC, actual=magic)
    if version != VERSION:
        raise Malformed("unsupported sim report version", field="version", expected=VERSION, actual=version)
    if flags & ~FLAG_DEBUG:
        raise Malformed("unknown flag bits set", field="flags", expected=f"&~{FLAG_DEBUG:#x}==0", actual=hex(flags))
    if n > MAX_TCB_ENTRIES:
        raise Malformed("too many TCB entries", field="tcb", expected=f"<={MAX_TCB_ENTRIES}", actual=n)
    end = len(data) - SIGNATURE_BYTES
    off = _HEADER.size
    tcb: dict[str, int] = {}
    previous = b""
    for _ in range(n):
        if off + 1 > end:
            raise Malformed("sim report truncated inside the TCB table", field="tcb", actual=len(data))
        name_len = data[off]
        if not 1 <= name_len <= MAX_TCB_NAME or off + 1 + name_len + 4 > end:
            raise Malformed("bad TCB entry length", field="tcb", actual=name_len)
        name = data[off + 1 : off + 1 + name_len]
        if not _TCB_NAME.fullmatch(name) or name <= previous:
            raise Malformed("TCB names must be [a-z0-9_-] and strictly ascending", field="tcb", actual=name)
        (value,) = struct.unpack_from(">I", data, off + 1 + name_len)
        tcb[name.decode()] = value
        previous = name
        off += 1 + name_len + 4
    if off != end:
        raise Malformed("sim report length does not match its TCB table", field="length",
                        expected=off + SIGNATURE_BYTES, actual=len(data))
    return SimReport(
        version=version,
        debug=bool(flags & FLAG_DEBUG),
        timestamp=timestamp,
        measurement=measurement,
        report_data=report_data,
        tcb=tcb,
        signature=data[end:],
        signed=data[:end],
    )


def _check_tcb(tcb: Mapping[str, int]) -> None:
    if len(tcb) > MAX_TCB_ENTRIES:
        raise ValueError(f"at most {MAX_TCB_ENTRIES} TCB components")
    for name, value in tcb.items():
        if not isinstance(name, str) or not _TCB_NAME.fullmatch(name.encode()):
            raise ValueError(f"TCB component name {name!r} must match [a-z0-9_-]{{1,32}}")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TCB_VALUE:
            raise ValueError(f"TCB value for {name!r} must be an integer in 0..{MAX_TCB_VALUE}")


# --------------------------------------------------------------------------- attester


class SimAttester:
    """Produces simulated CPU evidence; implements ``mpctrain.attest.backend.Attester``.

    At construction it makes a fresh attestation key, certified by the root for ``ak_validity``,
    and computes its measurement from the code in ``package_dir`` (default: the installed package)
    and ``config_digest``. ``debug`` and ``tcb`` exist so policy checks can be exercised.
    """

    kind = KIND

    def __init__(
        self,
        root: SimRoot | str | Path,
        *,
        config_digest: bytes,
        debug: bool = False,
        tcb: Mapping[str, int] | None = None,
        package_dir: Path | None = None,
        clock: Callable[[], datetime] | None = None,
        ak_validity: timedelta = AK_VALIDITY,
    ) -> None:
        if not isinstance(root, SimRoot):
            root = SimRoot.load(root)
        self.tcb = dict({"svn": 1} if tcb is None else tcb)
        _check_tcb(self.tcb)
        self.debug = debug
        self.config_digest = bytes(config_digest)
        self.measurement = sim_measurement(self.config_digest, package_dir=package_dir)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._ak = Ed25519PrivateKey.generate()
        now = self._clock()
        self.ak_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, AK_CN)]))
            .issuer_name(root.cert.subject)
            .public_key(self._ak.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ak_validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .sign(root.key, None)
        )
        self._certs = {
            "ak": self.ak_cert.public_bytes(serialization.Encoding.DER),
            "root": root.der,
        }

    def attest(self, report_data: bytes) -> Evidence:
        """Sign a report with ``report_data`` (exactly 64 bytes, the evidence binding)."""
        body = encode_report_body(
            measurement=self.measurement,
            report_data=bytes(report_data),
            debug=self.debug,
            tcb=self.tcb,
            timestamp=int(self._clock().timestamp()),
        )
        return Evidence(kind=KIND, data=body + self._ak.sign(body), certs=dict(self._certs))


# --------------------------------------------------------------------------- verifier


class SimVerifier:
    """Verifies simulated evidence; implements ``mpctrain.attest.backend.Verifier``.

    Order: strict parse, root pinned by the policy, AK issued by that root, validity of both
    certificates at ``at`` (± clock skew), AK signature over the report, report timestamp. Binding,
    debug, measurement and TCB minimums are checked afterwards by ``check_claims`` as for every backend.

    Policy options in ``[sim]``: ``max_report_age_seconds`` (reject reports older than this at ``at``).
    """

    kind = KIND

    def verify(self, evidence: Evidence, *, policy: BackendPolicy, at: datetime, collateral: Collateral) -> Claims:
        if evidence.kind != KIND:
            raise Malformed("not simulated evidence", field="kind", expected=KIND, actual=evidence.kind)
        check_options(policy.options)  # a policy file is checked when it loads; this covers a hand-made one
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        skew = timedelta(seconds=policy.clock_skew_seconds)
        report = parse_report(evidence.data)
        root_der = _cert_bytes(evidence, "root")
        ak_der = _cert_bytes(evidence, "ak")
        root_sha = hashlib.sha256(root_der).hexdigest()
        if not policy.roots:
            raise UntrustedRoot("the policy pins no simulated root: add its SHA-256 to [sim] roots",
                                field="root", actual=root_sha)
        if root_sha not in policy.roots:
            raise UntrustedRoot("simulated root is not pinned by the policy", field="root",
                                expected=list(policy.roots), actual=root_sha)
        root = _load_der(root_der, "root")
        ak = _load_der(ak_der, "ak")
        _check_issued(root, root, "root")
        _check_issued(ak, root, "ak")
        ak_key = _ed25519_public(ak)
        for name, cert in (("root", root), ("ak", ak)):
            if at + skew < cert.not_valid_before_utc:
                raise CertificateExpired(f"{name} certificate is not yet valid", field=f"{name}.not_before",
                                         expected=f"<={at.isoformat()}", actual=cert.not_valid_before_utc.isoformat())
            if at - skew > cert.not_valid_after_utc:
                raise CertificateExpired(f"{name} certificate has expired", field=f"{name}.not_after",
                                         expected=f">={at.isoformat()}", actual=cert.not_valid_after_utc.isoformat())
        try:
            ak_key.verify(report.signature, report.signed)
        except InvalidSignature as exc:
            raise BadSignature("sim report signature does not verify with the attestation key",
                               field="signature") from exc
        _check_timestamp(report.timestamp, ak, at, skew, policy.option("max_report_age_seconds"))
        return Claims(
            backend=KIND,
            measurement=report.measurement,
            report_data=report.report_data,
            debug=report.debug,
            tcb=dict(report.tcb),
            product="simulated",
            chain=(CertSummary.of(ak, hashlib.sha256(ak_der).hexdigest()), CertSummary.of(root, root_sha)),
            details={
                "version": report.version,
                "timestamp": datetime.fromtimestamp(report.timestamp, UTC).isoformat(),
                "root_sha256": root_sha,
                "ak_sha256": hashlib.sha256(ak_der).hexdigest(),
            },
        )


def _check_timestamp(ts: int, ak: x509.Certificate, at: datetime, skew: timedelta, max_age: object) -> None:
    try:
        when = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise Malformed("report timestamp out of range", field="timestamp", actual=ts) from exc
    if when > at + skew:
        raise PolicyViolation("report is dated after the verification time", field="timestamp",
                              expected=f"<={at.isoformat()}", actual=when.isoformat())
    if not ak.not_valid_before_utc - skew <= when <= ak.not_valid_after_utc + skew:
        raise CertificateExpired("report was signed outside the attestation key's validity", field="timestamp",
                                 actual=when.isoformat())
    if max_age is not None:
        if not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 0:
            raise PolicyViolation("[sim] max_report_age_seconds must be a non-negative integer",
                                  field="max_report_age_seconds", actual=max_age)
        if at - when > timedelta(seconds=max_age) + skew:
            raise PolicyViolation("report is older than the policy allows", field="timestamp",
                                  expected=f"age<={max_age}s", actual=when.isoformat())


def _cert_bytes(evidence: Evidence, name: str) -> bytes:
    raw = evidence.certs.get(name)
    if raw is None:
        raise Malformed(f"sim evidence lacks the {name!r} certificate", field=f"certs.{name}")
    if len(raw) > MAX_CERT_BYTES:
        raise Malformed("certificate too large", field=f"certs.{name}", expected=MAX_CERT_BYTES, actual=len(raw))
    return bytes(raw)


def _load_der(raw: bytes, name: str) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(raw)
        # names and times parse lazily: surface their errors here, typed, before any check uses them
        _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
    except (ValueError, x509.InvalidVersion) as exc:
        raise Malformed(f"{name} certificate is not DER X.509: {exc}", field=f"certs.{name}") from exc
    return cert


def _check_issued(cert: x509.Certificate, issuer: x509.Certificate, name: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError as exc:
        raise UntrustedRoot(f"{name} certificate was not issued by the pinned root: {exc}", field=f"{name}.issuer",
                            expected=issuer.subject.rfc4514_string(), actual=cert.issuer.rfc4514_string()) from exc
    except InvalidSignature as exc:
        raise BadSignature(f"{name} certificate signature does not verify with the pinned root",
                           field=f"{name}.signature") from exc
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise Malformed(f"{name} certificate uses an unsupported key type: {exc}", field=f"{name}.key") from exc


def _ed25519_public(cert: x509.Certificate) -> Ed25519PublicKey:
    try:
        key = cert.public_key()
    except ValueError as exc:
        raise Malformed(f"certificate public key cannot be read: {exc}", field="key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise Malformed("simulated TEE keys must be Ed25519", field="key", actual=type(key).__name__)
    return key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
