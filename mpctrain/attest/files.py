"""Evidence from files as vendors' tools write them, so the CLI can verify evidence collected elsewhere.

Per kind (``--evidence`` is either the raw vendor format below or an ``Evidence`` JSON object):

- ``sim``: the report bytes; ``--certs``: the AK certificate and the root (PEM or DER; the
  self-signed one is the root) -> certs ``ak``, ``root``.
- ``snp``: the 1184-byte report; ``--certs``: the VCEK or VLEK (DER or PEM) -> ``vcek``/``vlek``; the
  ASK/ASVK + ARK PEM (one bundle or separate files) -> ``ask_ark``.
- ``tdx``: the quote; it carries its PCK chain, so no ``--certs`` (collateral comes from ``--collateral``).
- ``nvidia-gpu``: the SPDM transcript as hex text (or raw bytes); ``--certs``: the device chain PEM,
  leaf first -> ``chain``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from mpctrain.attest.errors import AttestationError, Malformed
from mpctrain.attest.evidence import MAX_EVIDENCE_BYTES, MAX_GPUS, Evidence, EvidenceBundle

KINDS = ("sim", "snp", "tdx", "nvidia-gpu")
MAX_CERT_FILE_BYTES = 1 << 20
MAX_CERT_FILES = 16
MAX_BUNDLE_FILE_BYTES = MAX_EVIDENCE_BYTES * (MAX_GPUS + 2) * 2  # JSON: base64 plus hex
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


class EvidenceFileError(AttestationError):
    """An evidence or certificate file cannot be read, or does not fit the evidence kind."""

    check = "evidence-file"


def load_evidence(kind: str, evidence_path: str | Path, cert_paths: Sequence[str | Path] = ()) -> Evidence:
    """Build ``Evidence(kind, data, certs)`` from an evidence file and certificate files."""
    if kind not in KINDS:
        raise EvidenceFileError(f"unknown evidence kind {kind!r}", field="kind", expected=list(KINDS), actual=kind)
    if len(cert_paths) > MAX_CERT_FILES:
        raise EvidenceFileError("too many certificate files", field="certs", expected=MAX_CERT_FILES,
                                actual=len(cert_paths))
    raw = _read(evidence_path, 2 * MAX_EVIDENCE_BYTES + 4096)
    if raw.lstrip()[:1] == b"{":
        evidence = _evidence_json(raw, kind, evidence_path)
    else:
        evidence = Evidence(kind=kind, data=_decode_data(kind, raw, evidence_path))
    if len(evidence.data) > MAX_EVIDENCE_BYTES:
        raise Malformed("evidence too large", field=str(evidence_path), expected=MAX_EVIDENCE_BYTES,
                        actual=len(evidence.data))
    certs = dict(evidence.certs)
    for name, blob in _classify(kind, [(Path(p), _certificates(p)) for p in cert_paths]).items():
        if name in certs:
            raise EvidenceFileError(f"certificate {name!r} given twice (in the evidence and in --certs)",
                                    field=f"certs.{name}")
        certs[name] = blob
    return Evidence(kind=kind, data=evidence.data, certs=certs)


def load_bundle(path: str | Path) -> EvidenceBundle:
    """An ``EvidenceBundle`` in its JSON form (``EvidenceBundle.to_json``)."""
    return EvidenceBundle.from_json(_read(path, MAX_BUNDLE_FILE_BYTES))


def _read(path: str | Path, limit: int) -> bytes:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise Malformed("file too large", field=str(path), expected=f"<={limit}", actual=size)
        return path.read_bytes()
    except OSError as exc:
        raise EvidenceFileError(f"cannot read {path}: {exc.strerror or exc}", field=str(path)) from exc


def _evidence_json(raw: bytes, kind: str, path: str | Path) -> Evidence:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; nesting bombs recurse
        raise Malformed(f"{path} starts like JSON but is not: {exc}", field=str(path)) from exc
    evidence = Evidence.from_json_obj(obj)
    if evidence.kind != kind:
        raise EvidenceFileError(f"{path} holds {evidence.kind!r} evidence, not {kind!r}", field="kind",
                                expected=kind, actual=evidence.kind)
    return evidence


def _decode_data(kind: str, raw: bytes, path: str | Path) -> bytes:
    if not raw:
        raise Malformed(f"{path} is empty", field=str(path))
    if kind == "nvidia-gpu":
        text = b"".join(raw.split())
        if text and all(c in b"0123456789abcdefABCDEF" for c in text):
            if len(text) % 2:
                raise Malformed(f"{path}: odd number of hex digits", field=str(path), actual=len(text))
            return bytes.fromhex(text.decode())
    return raw


def _certificates(path: str | Path) -> list[x509.Certificate]:
    raw = _read(path, MAX_CERT_FILE_BYTES)
    with warnings.catch_warnings():
        # AMD VCEKs have serial number 0, which cryptography accepts with a warning.
        warnings.simplefilter("ignore")
        try:
            if _PEM_CERT in raw:
                certs = x509.load_pem_x509_certificates(raw)
            else:
                certs = [x509.load_der_x509_certificate(raw)]
        except (ValueError, x509.InvalidVersion) as exc:
            raise Malformed(f"{path} is not a PEM or DER certificate: {exc}", field=str(path)) from exc
    return certs


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _classify(kind: str, files: list[tuple[Path, list[x509.Certificate]]]) -> dict[str, bytes]:
    """Name each certificate as the backend's verifier expects it."""
    if not files:
        return {}
    out: dict[str, bytes] = {}

    def put(name: str, blob: bytes, path: Path) -> None:
        if name in out:
            raise EvidenceFileError(f"two {name!r} certificates given (second one in {path})", field=f"certs.{name}")
        out[name] = blob

    if kind == "tdx":
        raise EvidenceFileError("TDX quotes carry their PCK chain; pass collateral with --collateral instead of "
                                "--certs", field="certs")
    if kind == "nvidia-gpu":
        put("chain", _pem([c for _, certs in files for c in certs]), files[0][0])
        return out
    issuers: list[x509.Certificate] = []
    for path, certs in files:
        for cert in certs:
            if kind == "sim":
                put("root" if cert.issuer == cert.subject else "ak", _der(cert), path)
            elif _cn(cert) in ("SEV-VCEK", "SEV-VLEK"):
                put(_cn(cert).removeprefix("SEV-").lower(), _der(cert), path)
            else:
                issuers.append(cert)
    if issuers:
        out["ask_ark"] = _pem(issuers)
    return out
