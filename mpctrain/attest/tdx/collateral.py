"""Intel PCS collateral: signed TCB info and QE identity, CRLs, and the TCB level evaluation.

Signatures cover the exact text of the inner ``tcbInfo`` / ``enclaveIdentity`` object, so that
substring is cut out of the response as sent; nothing is re-serialised.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mpctrain.attest.errors import BadSignature, Malformed

MAX_JSON_BYTES = 1 << 20
MAX_LEVELS = 256

UP_TO_DATE = "UpToDate"
SW_HARDENING = "SWHardeningNeeded"
CONFIG_NEEDED = "ConfigurationNeeded"
CONFIG_AND_SW = "ConfigurationAndSWHardeningNeeded"
OUT_OF_DATE = "OutOfDate"
OUT_OF_DATE_CONFIG = "OutOfDateConfigurationNeeded"
REVOKED = "Revoked"
NO_MATCH = "NoMatchingTcbLevel"
TCB_STATUSES = (UP_TO_DATE, SW_HARDENING, CONFIG_NEEDED, CONFIG_AND_SW, OUT_OF_DATE, OUT_OF_DATE_CONFIG, REVOKED)
ALL_STATUSES = (*TCB_STATUSES, NO_MATCH)


@dataclass(frozen=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...]
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class IsvLevel:
    """One level of a QE identity or TDX module identity: ISVSVN threshold and its status."""

    isvsvn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModuleIdentity:
    """tcbInfo ``tdxModule`` (TDX 1.0) or one ``tdxModuleIdentities`` entry (``id`` like ``TDX_01``)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[IsvLevel, ...] = ()


@dataclass(frozen=True)
class TcbInfo:
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_evaluation_data_number: int
    tdx_module: ModuleIdentity | None
    module_identities: tuple[ModuleIdentity, ...]
    levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class QeIdentity:
    version: int
    tcb_evaluation_data_number: int
    issue_date: datetime
    next_update: datetime
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    levels: tuple[IsvLevel, ...]


# ---------------------------------------------------------------- signed JSON


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise Malformed("duplicate key in collateral JSON", field=k)
        out[k] = v
    return out


def split_signed_json(raw: bytes, inner: str, name: str) -> tuple[bytes, dict[str, Any], bytes]:
    """Return (exact inner object bytes, parsed inner object, raw r‖s signature)."""
    if len(raw) > MAX_JSON_BYTES:
        raise Malformed(f"{name} too large", field=name, expected=f"<={MAX_JSON_BYTES}", actual=len(raw))
    try:
        text = bytes(raw).decode("utf-8")
        decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)
        spans: dict[str, tuple[int, int, Any]] = {}
        ws = " \t\r\n"
        pos = len(text) - len(text.lstrip(ws))
        if text[pos : pos + 1] != "{":
            raise ValueError("not a JSON object")
        pos += 1
        while True:
            while text[pos] in ws:
                pos += 1
            if text[pos] == "}" and not spans:
                pos += 1
                break
            key, pos = json.decoder.scanstring(text, pos + 1) if text[pos] == '"' else (None, pos)
            if key is None:
                raise ValueError("expected a key")
            while text[pos] in ws:
                pos += 1
            if text[pos] != ":":
                raise ValueError("expected ':'")
            pos += 1
            while text[pos] in ws:
                pos += 1
            value, end = decoder.raw_decode(text, pos)
            if key in spans:
                raise Malformed("duplicate top-level key in collateral JSON", field=f"{name}.{key}")
            spans[key] = (pos, end, value)
            pos = end
            while text[pos] in ws:
                pos += 1
            if text[pos] == ",":
                pos += 1
                continue
            if text[pos] != "}":
                raise ValueError("expected ',' or '}'")
            pos += 1
            break
        if text[pos:].strip(ws):
            raise ValueError("data after the JSON object")
    except Malformed:
        raise
    except (UnicodeDecodeError, ValueError, IndexError, RecursionError) as exc:
        raise Malformed(f"{name} is not valid JSON: {exc}", field=name) from exc
    if inner not in spans or "signature" not in spans:
        raise Malformed(f"{name} lacks {inner!r} or 'signature'", field=name)
    start, end, obj = spans[inner]
    sig_hex = spans["signature"][2]
    if not isinstance(obj, dict) or not isinstance(sig_hex, str):
        raise Malformed(f"{name} has the wrong shape", field=name)
    try:
        sig = bytes.fromhex(sig_hex)
    except ValueError as exc:
        raise Malformed(f"{name} signature is not hex", field=f"{name}.signature") from exc
    if len(sig) != 64:
        raise Malformed(f"{name} signature must be 64 bytes r||s", field=f"{name}.signature", expected=64,
                        actual=len(sig))
    return text[start:end].encode("utf-8"), obj, sig


def verify_raw_p256(key: ec.EllipticCurvePublicKey, sig: bytes, message: bytes, name: str) -> None:
    """Verify a raw big-endian r‖s P-256/SHA-256 signature (Intel's format) with ``cryptography``."""
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature(f"{name} signature does not verify", field=f"{name}.signature") from exc


# ---------------------------------------------------------------- schema


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], name: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise Malformed(f"{name}.{key} missing or of the wrong type", field=f"{name}.{key}",
                        actual=type(value).__name__)
    return value


def _svn(value: Any, name: str, limit: int = 0xFFFF) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise Malformed(f"{name} is not an SVN", field=name, actual=value)
    return value


def _hex(obj: dict[str, Any], key: str, size: int, name: str) -> bytes:
    value = _get(obj, key, str, name)
    try:
        out = bytes.fromhex(value)
    except ValueError as exc:
        raise Malformed(f"{name}.{key} is not hex", field=f"{name}.{key}") from exc
    if len(out) != size:
        raise Malformed(f"{name}.{key} has the wrong size", field=f"{name}.{key}", expected=size, actual=len(out))
    return out


def _date(obj: dict[str, Any], key: str, name: str) -> datetime:
    value = _get(obj, key, str, name)
    try:
        out = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Malformed(f"{name}.{key} is not an ISO date", field=f"{name}.{key}", actual=value) from exc
    return out if out.tzinfo else out.replace(tzinfo=UTC)


def _status(obj: dict[str, Any], name: str) -> str:
    status = _get(obj, "tcbStatus", str, name)
    if status not in TCB_STATUSES:
        raise Malformed(f"{name}.tcbStatus unknown", field=f"{name}.tcbStatus", expected=list(TCB_STATUSES),
                        actual=status)
    return status


def _levels_list(obj: dict[str, Any], name: str) -> list[dict[str, Any]]:
    levels = _get(obj, "tcbLevels", list, name)
    if not levels or len(levels) > MAX_LEVELS or not all(isinstance(x, dict) for x in levels):
        raise Malformed(f"{name}.tcbLevels empty, too long or not objects", field=f"{name}.tcbLevels")
    return levels


def _advisories(level: dict[str, Any], name: str) -> tuple[str, ...]:
    ids = level.get("advisoryIDs", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise Malformed(f"{name}.advisoryIDs must be a list of strings", field=f"{name}.advisoryIDs")
    return tuple(ids)


def _isv_levels(obj: dict[str, Any], name: str) -> tuple[IsvLevel, ...]:
    out = []
    for i, lvl in enumerate(_levels_list(obj, name)):
        where = f"{name}.tcbLevels[{i}]"
        tcb = _get(lvl, "tcb", dict, where)
        out.append(IsvLevel(isvsvn=_svn(tcb.get("isvsvn"), f"{where}.isvsvn"),
                            tcb_date=_get(lvl, "tcbDate", str, where), status=_status(lvl, where),
                            advisory_ids=_advisories(lvl, where)))
    return tuple(out)


def _components(tcb: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    comps = _get(tcb, key, list, where)
    if len(comps) != 16 or not all(isinstance(c, dict) for c in comps):
        raise Malformed(f"{where}.{key} must list 16 components", field=f"{where}.{key}")
    return tuple(_svn(c.get("svn"), f"{where}.{key}.svn", 0xFF) for c in comps)


def _module(obj: dict[str, Any], name: str, with_levels: bool) -> ModuleIdentity:
    return ModuleIdentity(
        id=obj.get("id", "") if isinstance(obj.get("id", ""), str) else "",
        mrsigner=_hex(obj, "mrsigner", 48, name),
        attributes=_hex(obj, "attributes", 8, name),
        attributes_mask=_hex(obj, "attributesMask", 8, name),
        levels=_isv_levels(obj, name) if with_levels else (),
    )


def parse_tcb_info(obj: dict[str, Any]) -> TcbInfo:
    """Schema-check a TDX tcbInfo (v3) object; every field bounded and typed."""
    name = "tcb_info"
    if obj.get("id") != "TDX":
        raise Malformed("tcbInfo is not for TDX", field="tcb_info.id", expected="TDX", actual=obj.get("id"))
    version = _get(obj, "version", int, name)
    if version != 3:
        raise Malformed("unsupported tcbInfo version", field="tcb_info.version", expected=3, actual=version)
    levels = []
    for i, lvl in enumerate(_levels_list(obj, name)):
        where = f"{name}.tcbLevels[{i}]"
        tcb = _get(lvl, "tcb", dict, where)
        levels.append(TcbLevel(
            sgx_components=_components(tcb, "sgxtcbcomponents", where),
            pcesvn=_svn(tcb.get("pcesvn"), f"{where}.pcesvn"),
            tdx_components=_components(tcb, "tdxtcbcomponents", where),
            tcb_date=_get(lvl, "tcbDate", str, where),
            status=_status(lvl, where),
            advisory_ids=_advisories(lvl, where),
        ))
    module = obj.get("tdxModule")
    identities = obj.get("tdxModuleIdentities", [])
    if not isinstance(identities, list) or len(identities) > MAX_LEVELS or not all(
        isinstance(x, dict) for x in identities
    ):
        raise Malformed("tcbInfo.tdxModuleIdentities must be a list of objects", field="tcb_info.tdxModuleIdentities")
    return TcbInfo(
        version=version,
        issue_date=_date(obj, "issueDate", name),
        next_update=_date(obj, "nextUpdate", name),
        fmspc=_hex(obj, "fmspc", 6, name),
        pce_id=_hex(obj, "pceId", 2, name),
        tcb_evaluation_data_number=_svn(obj.get("tcbEvaluationDataNumber"), f"{name}.tcbEvaluationDataNumber",
                                        1 << 31),
        tdx_module=_module(module, f"{name}.tdxModule", False) if isinstance(module, dict) else None,
        module_identities=tuple(
            _module(m, f"{name}.tdxModuleIdentities[{i}]", True) for i, m in enumerate(identities)
        ),
        levels=tuple(levels),
    )


def parse_qe_identity(obj: dict[str, Any]) -> QeIdentity:
    """Schema-check a TD_QE enclaveIdentity (v2) object."""
    name = "qe_identity"
    if obj.get("id") != "TD_QE":
        raise Malformed("QE identity is not for the TD quoting enclave", field="qe_identity.id", expected="TD_QE",
                        actual=obj.get("id"))
    version = _get(obj, "version", int, name)
    if version != 2:
        raise Malformed("unsupported QE identity version", field="qe_identity.version", expected=2, actual=version)
    return QeIdentity(
        version=version,
        tcb_evaluation_data_number=_svn(obj.get("tcbEvaluationDataNumber"), f"{name}.tcbEvaluationDataNumber",
                                        1 << 31),
        issue_date=_date(obj, "issueDate", name),
        next_update=_date(obj, "nextUpdate", name),
        miscselect=int.from_bytes(_hex(obj, "miscselect", 4, name), "big"),
        miscselect_mask=int.from_bytes(_hex(obj, "miscselectMask", 4, name), "big"),
        attributes=_hex(obj, "attributes", 16, name),
        attributes_mask=_hex(obj, "attributesMask", 16, name),
        mrsigner=_hex(obj, "mrsigner", 32, name),
        isvprodid=_svn(obj.get("isvprodid"), f"{name}.isvprodid"),
        levels=_isv_levels(obj, name),
    )


# ---------------------------------------------------------------- CRLs


def load_crl(raw: bytes, name: str) -> x509.CertificateRevocationList:
    """A CRL as DER, PEM, or hex-encoded DER (Intel PCS returns each, depending on API version)."""
    data = bytes(raw)
    try:
        if data[:1] == b"\x30":
            crl = x509.load_der_x509_crl(data)  # never strip DER: its last bytes may look like whitespace
        else:
            data = data.strip()
            if data.startswith(b"-----BEGIN X509 CRL-----"):
                crl = x509.load_pem_x509_crl(data)
            else:
                crl = x509.load_der_x509_crl(binascii.unhexlify(data))
        # names, times and entries parse lazily: surface their errors here, typed, before any check uses them
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.signature_algorithm_oid)
        for entry in crl:
            _ = (entry.serial_number, entry.revocation_date_utc)
    except (ValueError, binascii.Error) as exc:
        raise Malformed(f"{name} is not a CRL: {exc}", field=name) from exc
    return crl


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class TcbEvaluation:
    """Outcome of matching the platform against tcbInfo (and the QE against its identity)."""

    status: str
    platform_status: str
    module_status: str | None
    qe_status: str | None
    tcb_date: str | None
    advisory_ids: tuple[str, ...]


def _isv_status(levels: tuple[IsvLevel, ...], isvsvn: int) -> IsvLevel | None:
    """Intel's rule: the first (highest) level whose ISVSVN the report reaches."""
    for lvl in levels:
        if isvsvn >= lvl.isvsvn:
            return lvl
    return None


def module_matches(module: ModuleIdentity, mrsignerseam: bytes, seam_attributes: bytes) -> bool:
    masked = bytes(a & m for a, m in zip(seam_attributes, module.attributes_mask, strict=True))
    expected = bytes(a & m for a, m in zip(module.attributes, module.attributes_mask, strict=True))
    return mrsignerseam == module.mrsigner and masked == expected


def _converge(platform: str, other: str | None) -> str:
    """Intel's convergence of the platform status with the TDX module's or QE's own status."""
    if other == REVOKED:
        return REVOKED
    if other == OUT_OF_DATE:
        if platform in (UP_TO_DATE, SW_HARDENING):
            return OUT_OF_DATE
        if platform in (CONFIG_NEEDED, CONFIG_AND_SW):
            return OUT_OF_DATE_CONFIG
    return platform


def find_module_identity(info: TcbInfo, tee_tcb_svn: bytes) -> ModuleIdentity | None:
    """TDX module identity rule: TEE_TCB_SVN[1] is the module's major version; ``TDX_%02X`` names it."""
    if tee_tcb_svn[1] == 0 or not info.module_identities:
        return info.tdx_module
    wanted = f"TDX_{tee_tcb_svn[1]:02X}"
    for ident in info.module_identities:
        if ident.id.upper() == wanted:
            return ident
    return None


def evaluate(
    info: TcbInfo,
    sgx_components: tuple[int, ...],
    pcesvn: int,
    tee_tcb_svn: bytes,
    qe: QeIdentity | None,
    qe_isvsvn: int,
) -> TcbEvaluation:
    """Intel's TDX TCB level matching.

    The first tcbLevel (they are ordered newest first) whose 16 SGX components and PCESVN are all
    <= the PCK certificate's, and whose 16 TDX components are <= TEE_TCB_SVN, gives the platform status.
    With a TDX module major version (TEE_TCB_SVN[1]) > 0 and ``tdxModuleIdentities`` present, the first
    two TDX components are judged by that module identity's own levels instead. Module and QE statuses
    then converge with the platform status (OutOfDate lowers, Revoked wins). No level: NoMatchingTcbLevel.
    """
    skip_module = tee_tcb_svn[1] > 0 and bool(info.module_identities)
    first_tdx = 2 if skip_module else 0
    platform: TcbLevel | None = None
    for lvl in info.levels:
        if (
            all(a >= b for a, b in zip(sgx_components, lvl.sgx_components, strict=True))
            and pcesvn >= lvl.pcesvn
            and all(tee_tcb_svn[i] >= lvl.tdx_components[i] for i in range(first_tdx, 16))
        ):
            platform = lvl
            break
    module_status: str | None = None
    advisories: list[str] = []
    if skip_module:
        ident = find_module_identity(info, tee_tcb_svn)
        mlvl = _isv_status(ident.levels, tee_tcb_svn[0]) if ident is not None else None
        module_status = mlvl.status if mlvl is not None else NO_MATCH
        if mlvl is not None:
            advisories += mlvl.advisory_ids
    qe_status: str | None = None
    if qe is not None:
        qlvl = _isv_status(qe.levels, qe_isvsvn)
        # Intel QVL: a QE below every level is out of date rather than unknown.
        qe_status = qlvl.status if qlvl is not None else OUT_OF_DATE
        if qlvl is not None:
            advisories += qlvl.advisory_ids
    if platform is None:
        status = REVOKED if REVOKED in (module_status, qe_status) else NO_MATCH
        return TcbEvaluation(status, NO_MATCH, module_status, qe_status, None, tuple(dict.fromkeys(advisories)))
    if module_status == NO_MATCH:
        status = NO_MATCH
    else:
        status = _converge(_converge(platform.status, module_status), qe_status)
    advisories = [*platform.advisory_ids, *advisories]
    return TcbEvaluation(status, platform.status, module_status, qe_status, platform.tcb_date,
                         tuple(dict.fromkeys(advisories)))
